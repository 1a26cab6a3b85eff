#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Interop with independent Python implementations: `rfc8785` canonicalises,
//! `securesystemslib` and plain `cryptography` sign DSSE envelopes that the
//! Rust side accepts as publications and verifies as stored releases; and a
//! Rust-signed release is verified over the PAE by `cryptography` and
//! `securesystemslib`, its payload re-canonicalised by `rfc8785` to the
//! same bytes. Runs under `soma_testing::python()` (set `SOMA_PYTHON`).

mod common;

use base64::Engine as _;
use soma_release::{
    Manifest, PAYLOAD_TYPE, PublisherKey, Stored, publisher_key_id, seal, sign_manifest, verify,
    verify_publication,
};
use soma_sign::{DsseEnvelope, Ed25519Signer, HmacKeyring, KeyId};

/// Python publishes: a module, its manifest canonicalised by `rfc8785.dumps`,
/// and two envelopes over it, one made by `securesystemslib.dsse.Envelope`
/// with a `CryptoSigner`, one by plain `cryptography` over a PAE built by hand
/// (URL-safe, unpadded base64, which DSSE verifiers must accept).
const PYTHON_PUBLISHES: &str = r#"
import base64, hashlib, json, sys
import rfc8785
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.dsse import Envelope
from securesystemslib.signer import CryptoSigner, SSlibKey

PAYLOAD_TYPE = sys.stdin.read().strip()
priv = Ed25519PrivateKey.generate()
pub = priv.public_key()
raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
spki = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
keyid = hashlib.sha256(spki).hexdigest()

# A WebAssembly module: header, then a custom section "py" with a payload.
body = b"\x02py" + bytes(range(200))
module = b"\x00asm\x01\x00\x00\x00" + b"\x00" + bytes([len(body) & 0x7f | 0x80, len(body) >> 7]) + body
manifest = {
    "tool": "py-echo.v2",
    "version": "3.1.4-beta.2+py.311",
    "module_sha256": hashlib.sha256(module).hexdigest(),
    "module_size": len(module),
    "entrypoint": "_start",
    "limits": {"fuel": 9007199254740991, "memory_bytes": 64 * 65536, "deadline_ms": 2500},
    "description": "Écho «Python» \u2028 tab\t quote\" backslash\\ ctrl\u0001 astral \U0001F680 ж",
}
payload = rfc8785.dumps(manifest)

key = SSlibKey.from_crypto(pub, keyid=keyid)
env = Envelope(payload=payload, payload_type=PAYLOAD_TYPE, signatures={})
env.sign(CryptoSigner(priv, key))
key.verify_signature(env.signatures[keyid], env.pae())

t = PAYLOAD_TYPE.encode()
pae = b"DSSEv1 %d %b %d %b" % (len(t), t, len(payload), payload)
b64u = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
plain = {"payload": b64u(payload), "payloadType": PAYLOAD_TYPE,
         "signatures": [{"keyid": keyid, "sig": b64u(priv.sign(pae))}]}

print(raw.hex())
print(keyid)
print(module.hex())
print(payload.hex())
print(json.dumps(env.to_dict()))
print(json.dumps(plain))
"#;

#[test]
fn python_publishes_rust_verifies() {
    let out = common::run_python("securesystemslib", PYTHON_PUBLISHES, PAYLOAD_TYPE);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 6, "{out}");
    let public_key: [u8; 32] = common::hex(lines[0]).try_into().unwrap();
    let module = common::hex(lines[2]);
    let payload = common::hex(lines[3]);

    // The key id both sides derive from the key.
    let key = PublisherKey::new(public_key);
    assert_eq!(key.key_id, lines[1]);
    assert_eq!(publisher_key_id(&public_key), lines[1]);

    // rfc8785's bytes are already canonical here: parsed, and written back identically.
    let manifest = Manifest::parse(&payload).unwrap();
    assert_eq!(manifest.canonical(), payload);
    assert_eq!(manifest.tool(), "py-echo.v2");
    assert_eq!(manifest.limits().fuel, 9_007_199_254_740_991);
    assert!(manifest.description().contains('🚀'));
    manifest.check_module(&module).unwrap();

    let (ring, _) = HmacKeyring::generate("registry-1").unwrap();
    for (name, json) in [("securesystemslib", lines[4]), ("cryptography", lines[5])] {
        let envelope = DsseEnvelope::from_json(json.as_bytes()).unwrap();
        let published = verify_publication(&envelope, &key, 1).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(published, manifest, "{name}");

        // Stored as the registry stores it, and verified as VerifyRelease does.
        let digest = published.digest();
        let (hmac_key_id, hmac) = seal(&ring, &digest);
        let canonical = published.canonical();
        let stored = Stored {
            manifest: &canonical,
            manifest_sha256: &digest,
            hmac_key_id: hmac_key_id.as_str(),
            hmac: &hmac,
            envelope: &envelope,
            published_at_nanos: 1,
            revoked: false,
            module: Some(&module),
        };
        let failures = verify(&stored, Some(&key), &ring);
        assert!(failures.is_empty(), "{name}: {failures:?}");

        // And a Python-signed envelope with its payload changed by one byte fails, naming why.
        let mut tampered = envelope.clone();
        tampered.payload[2] ^= 1;
        let err = verify_publication(&tampered, &key, 1).unwrap_err();
        assert_eq!(err.reason(), "signature_invalid", "{name}");
    }
}

/// Python checks a Rust publication: `cryptography` verifies the Ed25519
/// signature over a PAE it builds itself, `securesystemslib` verifies the
/// envelope, the keyid is the SHA-256 of the key's SPKI DER, and `rfc8785`
/// re-canonicalises the payload to the same bytes.
const PYTHON_VERIFIES: &str = r#"
import base64, hashlib, json, sys
import rfc8785
from cryptography.hazmat.primitives import serialization
from securesystemslib.dsse import Envelope
from securesystemslib.signer import SSlibKey

PAYLOAD_TYPE, pem, text = sys.stdin.read().split("\n\n", 2)
pub = serialization.load_pem_public_key(pem.encode())
spki = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
keyid = hashlib.sha256(spki).hexdigest()

doc = json.loads(text)
assert doc["payloadType"] == PAYLOAD_TYPE, doc["payloadType"]
payload = base64.b64decode(doc["payload"], validate=True)
[sig] = doc["signatures"]
assert sig["keyid"] == keyid, (sig["keyid"], keyid)
t = PAYLOAD_TYPE.encode()
pae = b"DSSEv1 %d %b %d %b" % (len(t), t, len(payload), payload)
pub.verify(base64.b64decode(sig["sig"], validate=True), pae)

env = Envelope.from_dict(json.loads(text))
SSlibKey.from_crypto(pub, keyid=keyid).verify_signature(env.signatures[keyid], env.pae())

manifest = json.loads(payload)
assert rfc8785.dumps(manifest) == payload, "payload is not rfc8785's canonical form"
print("verified", manifest["tool"], manifest["version"], manifest["limits"]["memory_bytes"])
"#;

#[test]
fn rust_publishes_python_verifies() {
    let (signer, der) = Ed25519Signer::generate(KeyId::new("unused").unwrap()).unwrap();
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(&der)
    );
    let module = common::module(7);
    let manifest = Manifest::new(
        "rust-echo",
        "0.9.0-rc.1+sha.5114f85",
        "run",
        soma_release::Limits {
            fuel: 5_000_000,
            memory_bytes: 256 * 65_536,
            deadline_ms: 750,
        },
        "Rust «écho» \u{2028} \"quoted\" \\ \u{7f} \u{1} 𝄞 — €",
        &module,
    )
    .unwrap();
    let envelope = sign_manifest(&manifest, &pem).unwrap();
    let stdin = format!(
        "{PAYLOAD_TYPE}\n\n{}\n{}",
        signer.public_key_pem(),
        String::from_utf8(envelope.to_json()).unwrap()
    );
    let out = common::run_python("securesystemslib", PYTHON_VERIFIES, &stdin);
    assert_eq!(out.trim(), "verified rust-echo 0.9.0-rc.1+sha.5114f85 16777216");
}
