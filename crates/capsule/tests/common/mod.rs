//! Builders shared by the capsule tests: the example bundle, signers,
//! keys, hex, and scripts run under the interop Python (`soma_testing::python`).
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "each test binary uses a different subset of these helpers; a failed builder is a failed test"
)]

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use soma_capsule::{AttestationKey, Bundle};
use soma_sign::{Ed25519Signer, KeyId};

/// The example bundle in the repository: the text-stats capsule.
pub fn example_bundle_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("bundles/text-stats.capsule.json")
}

/// The example bundle's bytes, as stored.
pub fn example_bundle_bytes() -> Vec<u8> {
    std::fs::read(example_bundle_path()).unwrap()
}

/// The example bundle, parsed.
pub fn example_bundle() -> Bundle {
    Bundle::parse(&example_bundle_bytes()).unwrap()
}

/// The `text_stats` adapter the example bundle runs, compiled from its text.
pub fn text_stats_module() -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../sandbox/adapters/text_stats.wat");
    wat::parse_file(path).unwrap()
}

/// Decodes hex.
pub fn hex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length: {s}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Encodes lowercase hex.
pub fn to_hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// An Ed25519 signer from a 32-byte seed given as one repeated byte (PKCS#8 v1, RFC 8410).
pub fn signer(seed_byte: u8) -> Ed25519Signer {
    let der = [hex("302e020100300506032b657004220420"), vec![seed_byte; 32]].concat();
    Ed25519Signer::from_pkcs8_der(KeyId::new("publisher").unwrap(), &der).unwrap()
}

/// The registered, active key of `signer`.
pub fn key(signer: &Ed25519Signer) -> AttestationKey {
    AttestationKey::new(signer.public_key())
}

/// The signer's PKCS#8 v1 private key as PEM (what Python's `cryptography` loads).
pub fn private_pem(seed_byte: u8) -> String {
    use base64::Engine as _;
    let der = [hex("302e020100300506032b657004220420"), vec![seed_byte; 32]].concat();
    format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(der)
    )
}

/// Runs `script` under the interop interpreter with `stdin`, failing loudly if
/// a module of `modules` is not importable or the script fails; returns its standard output.
pub fn run_python(modules: &[&str], script: &str, stdin: &str) -> String {
    let py = soma_testing::python();
    for module in modules {
        let probe = Command::new(&py)
            .args(["-c", &format!("import {module}")])
            .output()
            .unwrap();
        assert!(
            probe.status.success(),
            "Python module {module} is not importable by {} (install scripts/requirements-interop.txt into \
             that environment, or run scripts/test.sh): {}",
            py.display(),
            String::from_utf8_lossy(&probe.stderr)
        );
    }
    let mut child = Command::new(&py)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
