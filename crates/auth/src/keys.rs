//! PEM and SPKI handling for Ed25519 keys (RFC 7468, RFC 8410).

use base64::engine::Engine as _;
use base64::engine::general_purpose::STANDARD;

use crate::error::AuthError;

/// DER prefix of an Ed25519 `SubjectPublicKeyInfo` (RFC 8410 §4): SEQUENCE,
/// AlgorithmIdentifier { id-Ed25519 (1.3.101.112) }, BIT STRING of 33 bytes
/// (no unused bits, then the 32-byte key).
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Length of an Ed25519 public key.
pub(crate) const ED25519_PUBLIC_KEY_LEN: usize = 32;

/// The DER inside the first `label` block of `pem`. Text around the block is
/// ignored, as RFC 7468 allows; another block type is refused.
pub(crate) fn decode_pem(pem: &str, label: &'static str) -> Result<Vec<u8>, AuthError> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem
        .find(&begin)
        .ok_or(AuthError::InvalidPem("no block of the expected type"))?
        + begin.len();
    let len = pem[start..]
        .find(&end)
        .ok_or(AuthError::InvalidPem("block is not terminated"))?;
    let body: String = pem[start..start + len].split_ascii_whitespace().collect();
    STANDARD
        .decode(body)
        .map_err(|_| AuthError::InvalidPem("block is not valid base64"))
}

/// `der` as a PEM block, lines of 64 characters.
pub(crate) fn encode_pem(der: &[u8], label: &str) -> String {
    let body = STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    // Base64 output is ASCII, so every 64-byte chunk is valid UTF-8.
    for line in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

/// The DER `SubjectPublicKeyInfo` of an Ed25519 public key.
pub(crate) fn ed25519_spki_der(public_key: &[u8; ED25519_PUBLIC_KEY_LEN]) -> Vec<u8> {
    let mut der = Vec::with_capacity(ED25519_SPKI_PREFIX.len() + ED25519_PUBLIC_KEY_LEN);
    der.extend_from_slice(&ED25519_SPKI_PREFIX);
    der.extend_from_slice(public_key);
    der
}

/// The raw public key of an Ed25519 `SubjectPublicKeyInfo`. Any other
/// algorithm, parameters or length is refused.
pub(crate) fn ed25519_public_key_from_spki(der: &[u8]) -> Result<[u8; ED25519_PUBLIC_KEY_LEN], AuthError> {
    der.strip_prefix(ED25519_SPKI_PREFIX.as_slice())
        .and_then(|key| <[u8; ED25519_PUBLIC_KEY_LEN]>::try_from(key).ok())
        .ok_or_else(|| AuthError::InvalidKey("not an ed25519 subjectpublickeyinfo".to_owned()))
}
