#![allow(clippy::unwrap_used, clippy::expect_used)]
//! DSSE v1: the pre-authentication encoding against the specification's own
//! example, Ed25519 envelopes from RFC 8032 keys, strict envelope parsing and
//! verification, and interop with Python `securesystemslib` both ways.

mod common;

use soma_sign::{DsseEnvelope, DsseSignature, Ed25519Signer, KeyId, SignError, pae};

const HELLO_TYPE: &str = "http://example.com/HelloWorld";

/// RFC 8032 §7.1 TEST 1 secret key (seed).
const RFC8032_TEST1_SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
/// RFC 8032 §7.1 TEST 1 public key.
const RFC8032_TEST1_PK: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
/// RFC 8032 §7.1 TEST 3 secret key (seed).
const RFC8032_TEST3_SEED: &str = "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7";
/// RFC 8032 §7.1 TEST 3 public key.
const RFC8032_TEST3_PK: &str = "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025";

fn signer(id: &str, seed_hex: &str) -> Ed25519Signer {
    // RFC 8410 OneAsymmetricKey v1: the fixed 16-byte header, then the seed.
    let der = [
        common::hex("302e020100300506032b657004220420"),
        common::hex(seed_hex),
    ]
    .concat();
    Ed25519Signer::from_pkcs8_der(KeyId::new(id).unwrap(), &der).unwrap()
}

#[test]
fn pae_matches_the_specification_example() {
    // protocol.md, "Test Vectors".
    assert_eq!(
        pae(HELLO_TYPE, b"hello world"),
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    );
    // LEN counts bytes, not characters: "é" is two bytes of UTF-8.
    assert_eq!(pae("é", b"\x00\xff"), b"DSSEv1 2 \xc3\xa9 2 \x00\xff");
    assert_eq!(pae("t", b""), b"DSSEv1 1 t 0 ");
    // The length of a body of ten bytes or more has no leading zeros and no padding.
    assert_eq!(
        pae("t", &[b'x'; 100]),
        [&b"DSSEv1 1 t 100 "[..], &[b'x'; 100]].concat()
    );
}

#[test]
fn specification_example_envelope_parses() {
    // protocol.md's result, as printed there (whitespace, no keyid). Its signature
    // is ECDSA P-256, so only the decoding is checked here.
    let text = br#"{"payload": "aGVsbG8gd29ybGQ=",
 "payloadType": "http://example.com/HelloWorld",
 "signatures": [{"sig": "A3JqsQGtVsJ2O2xqrI5IcnXip5GToJ3F+FnZ+O88SjtR6rDAajabZKciJTfUiHqJPcIAriEGAHTVeCUjW2JIZA=="}]}"#;
    let env = DsseEnvelope::from_json(text).unwrap();
    assert_eq!(env.payload, b"hello world");
    assert_eq!(env.payload_type, HELLO_TYPE);
    assert_eq!(env.signatures.len(), 1);
    assert_eq!(env.signatures[0].keyid, "");
    assert_eq!(
        common::to_hex(&env.signatures[0].sig),
        "03726ab101ad56c2763b6c6aac8e487275e2a79193a09dc5f859d9f8ef3c4a3b51eab0c06a369b64a7222537d4887a893dc200ae21060074d5782523\
         5b624864"
    );
}

#[test]
fn ed25519_envelopes_from_rfc8032_keys() {
    // Ed25519 is deterministic: these signatures of the example's PAE were
    // computed independently with Python `cryptography` (Ed25519PrivateKey)
    // from the RFC 8032 TEST 1 and TEST 3 secret keys.
    let rows = [
        (
            RFC8032_TEST1_SEED,
            RFC8032_TEST1_PK,
            "e031d7dd99f8aa904abc48fb99a13c3bdbbd6e35c49cf2cb9f25d5509d8f5c94\
             7c0d22dc2f7403a45bdf24e8f7a41fd23c7b25e898386e8c6c31be8abee60007",
        ),
        (
            RFC8032_TEST3_SEED,
            RFC8032_TEST3_PK,
            "c7fedb96cc5f53d14e32644d084d5f4008ea9d14b807ae171e01d0a8ce0fc539\
             04e2967c0b384b27f00c955ba4c21b1d24f5f19404b440805e5ffca05816d101",
        ),
    ];
    for (seed, pk, sig) in rows {
        let s = signer("rfc8032", seed);
        assert_eq!(common::to_hex(&s.public_key()), pk);
        let env = DsseEnvelope::sign(HELLO_TYPE, b"hello world".to_vec(), &s);
        assert_eq!(env.signatures.len(), 1);
        assert_eq!(env.signatures[0].keyid, "rfc8032");
        assert_eq!(common::to_hex(&env.signatures[0].sig), sig);
        env.verify_ed25519("rfc8032", &common::hex(pk)).unwrap();

        // The JSON form: canonical member order, standard padded base64, and back.
        let json = env.to_json();
        let b64_sig = base64_standard(&common::hex(sig));
        assert_eq!(
            String::from_utf8(json.clone()).unwrap(),
            format!(
                r#"{{"payload":"aGVsbG8gd29ybGQ=","payloadType":"{HELLO_TYPE}","signatures":[{{"keyid":"rfc8032","sig":"{b64_sig}"}}]}}"#
            )
        );
        assert_eq!(DsseEnvelope::from_json(&json).unwrap(), env);
    }
}

fn base64_standard(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn base64_url_unpadded(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[test]
fn url_safe_and_unpadded_base64_are_accepted() {
    let s = signer("k", RFC8032_TEST1_SEED);
    // A payload whose base64 uses the two alphabet-specific characters and needs padding.
    let payload = vec![0xfb, 0xff, 0xfe, 0x3e, 0x3f];
    let env = DsseEnvelope::sign("application/x-test", payload.clone(), &s);
    let url = format!(
        r#"{{"payload":"{}","payloadType":"application/x-test","signatures":[{{"keyid":"k","sig":"{}"}}]}}"#,
        base64_url_unpadded(&payload),
        base64_url_unpadded(&env.signatures[0].sig)
    );
    assert!(url.contains('-') || url.contains('_'), "{url}");
    let parsed = DsseEnvelope::from_json(url.as_bytes()).unwrap();
    assert_eq!(parsed, env);
    parsed
        .verify_ed25519("k", &common::hex(RFC8032_TEST1_PK))
        .unwrap();
    // Written back, the envelope uses standard padded base64.
    assert!(
        String::from_utf8(parsed.to_json())
            .unwrap()
            .contains(&base64_standard(&payload))
    );
}

struct ParseCase {
    name: &'static str,
    json: &'static str,
    expected: &'static str,
}

#[test]
fn hostile_envelopes_are_refused() {
    let cases = [
        ParseCase {
            name: "not an object",
            json: r#"["aGk=","t",[]]"#,
            expected: r#"DsseEnvelopeFormat { reason: "the envelope is not a json object" }"#,
        },
        ParseCase {
            name: "unknown top-level member",
            json: r#"{"payload":"aGk=","payloadType":"t","signatures":[],"extra":1}"#,
            expected: r#"DsseUnknownMember { member: "extra" }"#,
        },
        ParseCase {
            name: "unknown signature member",
            json: r#"{"payload":"aGk=","payloadType":"t","signatures":[{"keyid":"k","sig":"aGk=","cert":""}]}"#,
            expected: r#"DsseUnknownMember { member: "cert" }"#,
        },
        ParseCase {
            name: "payload missing",
            json: r#"{"payloadType":"t","signatures":[]}"#,
            expected: r#"DsseMissingMember { member: "payload" }"#,
        },
        ParseCase {
            name: "payloadType missing",
            json: r#"{"payload":"aGk=","signatures":[]}"#,
            expected: r#"DsseMissingMember { member: "payloadType" }"#,
        },
        ParseCase {
            name: "signatures missing",
            json: r#"{"payload":"aGk=","payloadType":"t"}"#,
            expected: r#"DsseEnvelopeFormat { reason: "signatures is missing or not an array" }"#,
        },
        ParseCase {
            name: "signatures an object",
            json: r#"{"payload":"aGk=","payloadType":"t","signatures":{"keyid":"k","sig":"aGk="}}"#,
            expected: r#"DsseEnvelopeFormat { reason: "signatures is missing or not an array" }"#,
        },
        ParseCase {
            name: "signature a string",
            json: r#"{"payload":"aGk=","payloadType":"t","signatures":["aGk="]}"#,
            expected: r#"DsseEnvelopeFormat { reason: "a signature is not a json object" }"#,
        },
        ParseCase {
            name: "sig missing",
            json: r#"{"payload":"aGk=","payloadType":"t","signatures":[{"keyid":"k"}]}"#,
            expected: r#"DsseMissingMember { member: "sig" }"#,
        },
        ParseCase {
            name: "payload a number",
            json: r#"{"payload":5,"payloadType":"t","signatures":[]}"#,
            expected: r#"DsseMemberType { member: "payload" }"#,
        },
        ParseCase {
            name: "payloadType null",
            json: r#"{"payload":"aGk=","payloadType":null,"signatures":[]}"#,
            expected: r#"DsseMemberType { member: "payloadType" }"#,
        },
        ParseCase {
            name: "keyid a number",
            json: r#"{"payload":"aGk=","payloadType":"t","signatures":[{"keyid":1,"sig":"aGk="}]}"#,
            expected: r#"DsseMemberType { member: "keyid" }"#,
        },
        ParseCase {
            name: "payload not base64",
            json: r#"{"payload":"a*k=","payloadType":"t","signatures":[]}"#,
            expected: r#"DsseBase64 { member: "payload" }"#,
        },
        ParseCase {
            name: "payload mixing the two alphabets",
            json: r#"{"payload":"+_8=","payloadType":"t","signatures":[]}"#,
            expected: r#"DsseBase64 { member: "payload" }"#,
        },
        ParseCase {
            name: "payload with non-zero trailing bits",
            json: r#"{"payload":"aGl=","payloadType":"t","signatures":[]}"#,
            expected: r#"DsseBase64 { member: "payload" }"#,
        },
        ParseCase {
            name: "sig with a line break",
            json: r#"{"payload":"aGk=","payloadType":"t","signatures":[{"keyid":"k","sig":"aGk=\n"}]}"#,
            expected: r#"DsseBase64 { member: "sig" }"#,
        },
        ParseCase {
            name: "duplicate payload member",
            json: r#"{"payload":"aGk=","payload":"aGV5","payloadType":"t","signatures":[]}"#,
            expected: r#"DuplicateKey { key: "payload" }"#,
        },
        ParseCase {
            name: "lone surrogate in payloadType",
            json: r#"{"payload":"aGk=","payloadType":"\ud800","signatures":[]}"#,
            expected: r#"LoneSurrogate { offset: 33 }"#,
        },
        ParseCase {
            name: "trailing data",
            json: r#"{"payload":"aGk=","payloadType":"t","signatures":[]} {}"#,
            expected: r#"TrailingData { offset: 53 }"#,
        },
    ];
    for case in &cases {
        let err = DsseEnvelope::from_json(case.json.as_bytes()).unwrap_err();
        assert_eq!(format!("{err:?}"), case.expected, "case {}", case.name);
    }
    let err = DsseEnvelope::from_json(b"{\"payload\":\"\xff\"}").unwrap_err();
    assert!(matches!(err, SignError::InvalidUtf8 { offset: 12 }), "{err:?}");
    println!("dsse hostile envelope table: {} cases", cases.len() + 1);
}

struct VerifyCase {
    name: &'static str,
    envelope: DsseEnvelope,
    keyid: &'static str,
    public_key: Vec<u8>,
    expected: &'static str,
}

#[test]
fn verification_table() {
    let k1 = signer("k1", RFC8032_TEST1_SEED);
    let k3 = signer("k3", RFC8032_TEST3_SEED);
    let pk1 = common::hex(RFC8032_TEST1_PK);
    let pk3 = common::hex(RFC8032_TEST3_PK);
    let good = DsseEnvelope::sign("application/x-test", b"{\"a\":1}".to_vec(), &k1);
    let with = |f: &dyn Fn(&mut DsseEnvelope)| {
        let mut e = good.clone();
        f(&mut e);
        e
    };
    let other_sig = DsseEnvelope::sign("application/x-test", b"{\"a\":1}".to_vec(), &k3).signatures[0]
        .sig
        .clone();
    let cases = vec![
        VerifyCase {
            name: "valid",
            envelope: good.clone(),
            keyid: "k1",
            public_key: pk1.clone(),
            expected: "Ok(())",
        },
        VerifyCase {
            name: "payload changed",
            envelope: with(&|e| e.payload = b"{\"a\":2}".to_vec()),
            keyid: "k1",
            public_key: pk1.clone(),
            expected: "Err(SignatureMismatch)",
        },
        VerifyCase {
            name: "payload type changed (same bytes, another meaning)",
            envelope: with(&|e| e.payload_type = "application/x-other".to_owned()),
            keyid: "k1",
            public_key: pk1.clone(),
            expected: "Err(SignatureMismatch)",
        },
        VerifyCase {
            name: "signature over the bare payload instead of the PAE",
            envelope: with(&|e| e.signatures[0].sig = k1.sign(b"{\"a\":1}").to_vec()),
            keyid: "k1",
            public_key: pk1.clone(),
            expected: "Err(SignatureMismatch)",
        },
        VerifyCase {
            name: "signature made by another key under the same keyid",
            envelope: with(&|e| e.signatures[0].sig = other_sig.clone()),
            keyid: "k1",
            public_key: pk1.clone(),
            expected: "Err(SignatureMismatch)",
        },
        VerifyCase {
            name: "right keyid, wrong public key",
            envelope: good.clone(),
            keyid: "k1",
            public_key: pk3.clone(),
            expected: "Err(SignatureMismatch)",
        },
        VerifyCase {
            name: "no signature with the keyid",
            envelope: good.clone(),
            keyid: "k3",
            public_key: pk3.clone(),
            expected: r#"Err(DsseNoSignatureForKey { keyid: "k3" })"#,
        },
        VerifyCase {
            name: "no signatures at all",
            envelope: with(&|e| e.signatures.clear()),
            keyid: "k1",
            public_key: pk1.clone(),
            expected: r#"Err(DsseNoSignatureForKey { keyid: "k1" })"#,
        },
        VerifyCase {
            name: "two signatures with one keyid",
            envelope: with(&|e| e.signatures.push(e.signatures[0].clone())),
            keyid: "k1",
            public_key: pk1.clone(),
            expected: r#"Err(DsseAmbiguousKeyId { keyid: "k1" })"#,
        },
        VerifyCase {
            name: "a second signer beside the first",
            envelope: with(&|e| {
                e.signatures.push(DsseSignature {
                    keyid: "k3".to_owned(),
                    sig: other_sig.clone(),
                });
            }),
            keyid: "k3",
            public_key: pk3.clone(),
            expected: "Ok(())",
        },
        VerifyCase {
            name: "truncated signature",
            envelope: with(&|e| e.signatures[0].sig.truncate(63)),
            keyid: "k1",
            public_key: pk1.clone(),
            expected: "Err(SignatureLength { len: 63 })",
        },
        VerifyCase {
            name: "31-byte public key",
            envelope: good.clone(),
            keyid: "k1",
            public_key: pk1[..31].to_vec(),
            expected: "Err(PublicKeyLength { len: 31 })",
        },
        VerifyCase {
            name: "small-order public key (the identity point)",
            envelope: good.clone(),
            keyid: "k1",
            public_key: common::hex("0100000000000000000000000000000000000000000000000000000000000000"),
            expected: "Err(WeakPublicKey)",
        },
    ];
    for case in &cases {
        let got = case.envelope.verify_ed25519(case.keyid, &case.public_key);
        assert_eq!(format!("{got:?}"), case.expected, "case {}", case.name);
    }
    println!("dsse verification table: {} cases", cases.len());
}

#[test]
fn interop_python_securesystemslib_signs_rust_verifies() {
    // securesystemslib's own DSSE Envelope and CryptoSigner sign; its JSON is parsed and verified here.
    let script = r#"
import json, sys
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.dsse import Envelope
from securesystemslib.signer import CryptoSigner, SSlibKey
from cryptography.hazmat.primitives import serialization
priv = Ed25519PrivateKey.generate()
raw = priv.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
key = SSlibKey("py-key", "ed25519", "ed25519", {"public": raw.hex()})
signer = CryptoSigner(priv, key)
env = Envelope(payload=b'{"hello":"dsse"}', payload_type="application/vnd.example+json", signatures={})
env.sign(signer)
key.verify_signature(env.signatures["py-key"], env.pae())
print(raw.hex())
print(json.dumps(env.to_dict()))
"#;
    let out = common::run_python("securesystemslib", script, "");
    let mut lines = out.lines();
    let pk = common::hex(lines.next().unwrap());
    let env = DsseEnvelope::from_json(lines.next().unwrap().as_bytes()).unwrap();
    assert_eq!(env.payload, br#"{"hello":"dsse"}"#);
    assert_eq!(env.payload_type, "application/vnd.example+json");
    env.verify_ed25519("py-key", &pk).unwrap();
    let mut tampered = env.clone();
    tampered.payload_type = "application/vnd.other+json".to_owned();
    assert!(matches!(
        tampered.verify_ed25519("py-key", &pk),
        Err(SignError::SignatureMismatch)
    ));
}

#[test]
fn interop_rust_signs_python_securesystemslib_verifies() {
    let s = signer("rust-key", RFC8032_TEST1_SEED);
    let env = DsseEnvelope::sign("application/vnd.example+json", br#"{"from":"rust"}"#.to_vec(), &s);
    let script = r#"
import json, sys
from securesystemslib.dsse import Envelope
from securesystemslib.signer import SSlibKey
pk_hex, text = sys.stdin.read().split("\n", 1)
env = Envelope.from_dict(json.loads(text))
key = SSlibKey("rust-key", "ed25519", "ed25519", {"public": pk_hex})
key.verify_signature(env.signatures["rust-key"], env.pae())
# A changed payload type must fail under the same signature.
env.payload_type = "application/vnd.other+json"
try:
    key.verify_signature(env.signatures["rust-key"], env.pae())
    print("tampered envelope verified")
except Exception:
    print("ok", env.payload.decode())
"#;
    let stdin = format!(
        "{}\n{}",
        RFC8032_TEST1_PK,
        String::from_utf8(env.to_json()).unwrap()
    );
    let out = common::run_python("securesystemslib", script, &stdin);
    assert_eq!(out.trim(), r#"ok {"from":"rust"}"#);
}
