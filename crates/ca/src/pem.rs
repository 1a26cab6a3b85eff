//! PEM encoding (RFC 7468): base64 of the DER, 64 characters a line.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// The label of an X.509 certificate block.
pub(crate) const CERTIFICATE: &str = "CERTIFICATE";

/// The label of a PKCS#8 private key block.
pub(crate) const PRIVATE_KEY: &str = "PRIVATE KEY";

/// Appends one PEM block holding `der` to `out`.
pub(crate) fn encode_into(out: &mut String, label: &str, der: &[u8]) {
    let body = STANDARD.encode(der);
    out.push_str("-----BEGIN ");
    out.push_str(label);
    out.push_str("-----\n");
    // Base64 output is ASCII, so splitting the bytes every 64 never cuts a
    // character in two.
    for line in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str("-----END ");
    out.push_str(label);
    out.push_str("-----\n");
}

/// One PEM block holding `der`.
pub(crate) fn encode(label: &str, der: &[u8]) -> String {
    let mut out = String::new();
    encode_into(&mut out, label, der);
    out
}
