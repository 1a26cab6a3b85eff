//! Builders shared by the release tests: keys, a module, a sealed release,
//! hex, and scripts run under the interop Python (`soma_testing::python`).
#![allow(
    dead_code,
    reason = "each test binary uses a different subset of these helpers"
)]

use std::io::Write as _;
use std::process::{Command, Stdio};

use soma_release::{Limits, Manifest, PublisherKey, seal, sign_manifest_with};
use soma_sign::{DsseEnvelope, Ed25519Signer, HmacKeyring, KeyId};

/// RFC 8032 §7.1 TEST 1 secret key (seed).
pub const RFC8032_TEST1_SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
/// RFC 8032 §7.1 TEST 1 public key.
pub const RFC8032_TEST1_PK: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
/// RFC 8032 §7.1 TEST 3 secret key (seed).
pub const RFC8032_TEST3_SEED: &str = "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7";

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

/// An Ed25519 signer from a 32-byte seed (PKCS#8 v1, RFC 8410).
pub fn signer(seed_hex: &str) -> Ed25519Signer {
    let der = [hex("302e020100300506032b657004220420"), hex(seed_hex)].concat();
    Ed25519Signer::from_pkcs8_der(KeyId::new("publisher").unwrap(), &der).unwrap()
}

/// A small but real WebAssembly module: the header and one custom section
/// named `t` holding the byte `tag`, so that two modules can differ.
pub fn module(tag: u8) -> Vec<u8> {
    // \0asm, version 1, custom section id 0: name "t" and one payload byte.
    vec![
        0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, 0x00, 0x03, 0x01, b't', tag,
    ]
}

/// Ordinary limits: a million fuel, 16 pages, one and a half seconds.
pub fn limits() -> Limits {
    Limits {
        fuel: 1_000_000,
        memory_bytes: 16 * 65_536,
        deadline_ms: 1_500,
    }
}

/// One release as the registry stores it, owning every column.
#[derive(Debug, Clone)]
pub struct Release {
    pub manifest: Vec<u8>,
    pub manifest_sha256: Vec<u8>,
    pub hmac_key_id: String,
    pub hmac: Vec<u8>,
    pub envelope: DsseEnvelope,
    pub published_at_nanos: i64,
    pub revoked: bool,
    pub module: Vec<u8>,
}

impl Release {
    /// Publishes `version` of tool `echo` signed by `signer` and sealed with `keyring`.
    pub fn publish(version: &str, module: Vec<u8>, signer: &Ed25519Signer, keyring: &HmacKeyring) -> Self {
        let manifest = Manifest::new("echo", version, "run", limits(), "Echoes its input.", &module).unwrap();
        let envelope = sign_manifest_with(&manifest, signer);
        let digest = manifest.digest();
        let (key_id, tag) = seal(keyring, &digest);
        Self {
            manifest: manifest.canonical(),
            manifest_sha256: digest.to_vec(),
            hmac_key_id: key_id.to_string(),
            hmac: tag.to_vec(),
            envelope,
            published_at_nanos: 1_750_000_000_000_000_000,
            revoked: false,
            module,
        }
    }

    /// The borrowed view `soma_release::verify` reads, with the module.
    pub fn stored(&self) -> soma_release::Stored<'_> {
        soma_release::Stored {
            manifest: &self.manifest,
            manifest_sha256: &self.manifest_sha256,
            hmac_key_id: &self.hmac_key_id,
            hmac: &self.hmac,
            envelope: &self.envelope,
            published_at_nanos: self.published_at_nanos,
            revoked: self.revoked,
            module: Some(&self.module),
        }
    }
}

/// The publisher key of `signer`, active.
pub fn publisher(signer: &Ed25519Signer) -> PublisherKey {
    PublisherKey::new(signer.public_key())
}

/// Runs `script` under the interop interpreter with `stdin`, failing loudly if
/// `module` is not importable or the script fails; returns its standard output.
pub fn run_python(module: &str, script: &str, stdin: &str) -> String {
    let py = soma_testing::python();
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
