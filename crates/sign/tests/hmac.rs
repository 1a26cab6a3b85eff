#![allow(clippy::unwrap_used, clippy::expect_used)]
//! HMAC-SHA256 keyrings: Wycheproof vectors, rotation rules and hostile tags.

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use soma_sign::{HmacKeyring, KeyStatus, SignError};

fn keyring_json(primary: &str, keys: &[(&str, &[u8], &str)]) -> Vec<u8> {
    let keys: Vec<serde_json::Value> = keys
        .iter()
        .map(|(id, secret, status)| serde_json::json!({"id": id, "secret": STANDARD.encode(secret), "status": status}))
        .collect();
    serde_json::to_vec(&serde_json::json!({"primary": primary, "keys": keys})).unwrap()
}

#[test]
fn wycheproof_hmac_sha256() {
    let doc = common::vector_json("wycheproof/hmac_sha256_test.json");
    let (mut valid_ok, mut invalid_rejected, mut truncated_rejected, mut short_key_rejected) = (0, 0, 0, 0);
    let mut total = 0;
    for group in doc["testGroups"].as_array().unwrap() {
        let tag_size = group["tagSize"].as_u64().unwrap();
        for t in group["tests"].as_array().unwrap() {
            total += 1;
            let id = t["tcId"].as_u64().unwrap();
            let key = common::hex(t["key"].as_str().unwrap());
            let msg = common::hex(t["msg"].as_str().unwrap());
            let tag = common::hex(t["tag"].as_str().unwrap());
            let result = t["result"].as_str().unwrap();
            let json = keyring_json("w", &[("w", &key, "enabled")]);
            if key.len() < 32 {
                // SomaStack refuses secrets shorter than the hash output: such a key never loads.
                let err = HmacKeyring::from_json(&json).unwrap_err();
                assert!(
                    matches!(&err, SignError::SecretTooShort { id, len } if id == "w" && *len == key.len()),
                    "tcId {id}: {err:?}"
                );
                short_key_rejected += 1;
                continue;
            }
            let ring = HmacKeyring::from_json(&json).unwrap();
            let outcome = ring.verify("w", &msg, &tag);
            if tag_size == 128 {
                // Truncated tags: always refused, for their length, valid or not.
                assert!(
                    matches!(outcome, Err(SignError::TagLength { len: 16 })),
                    "tcId {id}: {outcome:?}"
                );
                truncated_rejected += 1;
            } else if result == "valid" {
                assert!(outcome.is_ok(), "tcId {id} valid but rejected: {outcome:?}");
                // The signing side produces the same tag.
                assert_eq!(ring.sign(&msg).1.to_vec(), tag, "tcId {id}");
                valid_ok += 1;
            } else {
                assert_eq!(result, "invalid", "tcId {id}");
                assert!(
                    matches!(outcome, Err(SignError::TagMismatch | SignError::TagLength { .. })),
                    "tcId {id} invalid but: {outcome:?}"
                );
                invalid_rejected += 1;
            }
        }
    }
    println!(
        "wycheproof hmac-sha256: {total} cases: {valid_ok} valid verified, {invalid_rejected} invalid rejected, \
         {truncated_rejected} truncated-tag cases rejected, {short_key_rejected} cases with keys < 32 bytes refused at load"
    );
    assert_eq!(total, 174);
    assert_eq!(valid_ok, 30);
    assert_eq!(invalid_rejected, 54);
    assert_eq!(truncated_rejected, 84);
    assert_eq!(short_key_rejected, 6);
}

/// RFC 4231 test case 2 is keyed with a 4-byte secret; case 6 uses a 131-byte key, which fits the keyring.
#[test]
fn rfc4231_case_6_long_key() {
    let key = [0xaa_u8; 131];
    let msg = b"Test Using Larger Than Block-Size Key - Hash Key First";
    let tag = common::hex("60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
    let ring = HmacKeyring::from_json(&keyring_json("k", &[("k", &key, "enabled")])).unwrap();
    assert_eq!(ring.sign(msg).1.to_vec(), tag);
    ring.verify("k", msg, &tag).unwrap();
}

struct Case {
    name: &'static str,
    key_id: &'static str,
    tag: Vec<u8>,
    expected: Result<(), SignError>,
}

#[test]
fn verify_table() {
    let k1 = [1u8; 32];
    let k2 = [2u8; 40];
    let k0 = [9u8; 32];
    let ring = HmacKeyring::from_json(&keyring_json(
        "k2",
        &[
            ("k0", &k0, "retired"),
            ("k1", &k1, "enabled"),
            ("k2", &k2, "enabled"),
        ],
    ))
    .unwrap();
    let msg = b"capsule digest sha256:abc";
    let (primary, tag2) = ring.sign(msg);
    assert_eq!(primary.as_str(), "k2", "primary signs");
    assert_eq!(ring.primary().as_str(), "k2");
    let tag_with = |secret: &[u8]| {
        let single = HmacKeyring::from_json(&keyring_json("x", &[("x", secret, "enabled")])).unwrap();
        single.sign(msg).1.to_vec()
    };
    let tag1 = tag_with(&k1);
    let tag0 = tag_with(&k0);
    let mut flipped = tag2.to_vec();
    flipped[31] ^= 1;
    let mut long = tag2.to_vec();
    long.push(0);

    let cases = [
        Case {
            name: "primary tag verifies",
            key_id: "k2",
            tag: tag2.to_vec(),
            expected: Ok(()),
        },
        Case {
            name: "older enabled key still verifies",
            key_id: "k1",
            tag: tag1.clone(),
            expected: Ok(()),
        },
        Case {
            name: "unknown key",
            key_id: "k9",
            tag: tag2.to_vec(),
            expected: Err(SignError::UnknownKeyId { id: "k9".into() }),
        },
        Case {
            name: "retired key with its own correct tag",
            key_id: "k0",
            tag: tag0,
            expected: Err(SignError::RetiredKeyId { id: "k0".into() }),
        },
        Case {
            name: "wrong tag (one bit)",
            key_id: "k2",
            tag: flipped,
            expected: Err(SignError::TagMismatch),
        },
        Case {
            name: "right tag under the wrong key id",
            key_id: "k1",
            tag: tag2.to_vec(),
            expected: Err(SignError::TagMismatch),
        },
        Case {
            name: "31-byte tag (truncated prefix)",
            key_id: "k2",
            tag: tag2[..31].to_vec(),
            expected: Err(SignError::TagLength { len: 31 }),
        },
        Case {
            name: "33-byte tag",
            key_id: "k2",
            tag: long,
            expected: Err(SignError::TagLength { len: 33 }),
        },
        Case {
            name: "16-byte tag",
            key_id: "k2",
            tag: tag2[..16].to_vec(),
            expected: Err(SignError::TagLength { len: 16 }),
        },
        Case {
            name: "empty tag",
            key_id: "k2",
            tag: Vec::new(),
            expected: Err(SignError::TagLength { len: 0 }),
        },
        Case {
            name: "empty key id",
            key_id: "",
            tag: tag2.to_vec(),
            expected: Err(SignError::UnknownKeyId { id: String::new() }),
        },
    ];
    for case in &cases {
        let got = ring.verify(case.key_id, msg, &case.tag);
        assert_eq!(
            format!("{got:?}"),
            format!("{:?}", case.expected),
            "case {}",
            case.name
        );
    }
    assert_eq!(ring.status("k0"), Some(KeyStatus::Retired));
    assert_eq!(ring.status("k1"), Some(KeyStatus::Enabled));
    assert_eq!(ring.status("nope"), None);
    println!("hmac verify table: {} cases", cases.len());
}

struct LoadCase {
    name: &'static str,
    json: Vec<u8>,
    expected: &'static str,
}

#[test]
fn keyring_load_table() {
    let s = [7u8; 32];
    let cases = [
        LoadCase {
            name: "primary missing",
            json: keyring_json("k2", &[("k1", &s, "enabled")]),
            expected: r#"PrimaryMissing { id: "k2" }"#,
        },
        LoadCase {
            name: "primary retired",
            json: keyring_json("k1", &[("k1", &s, "retired")]),
            expected: r#"PrimaryRetired { id: "k1" }"#,
        },
        LoadCase {
            name: "duplicate id",
            json: keyring_json("k1", &[("k1", &s, "enabled"), ("k1", &s, "retired")]),
            expected: r#"DuplicateKeyId { id: "k1" }"#,
        },
        LoadCase {
            name: "empty id",
            json: keyring_json("k1", &[("", &s, "enabled")]),
            expected: r#"InvalidKeyId { id: "" }"#,
        },
        LoadCase {
            name: "id with slash",
            json: keyring_json("k1", &[("../k1", &s, "enabled")]),
            expected: r#"InvalidKeyId { id: "../k1" }"#,
        },
        LoadCase {
            name: "id with space",
            json: keyring_json("k1", &[("k 1", &s, "enabled")]),
            expected: r#"InvalidKeyId { id: "k 1" }"#,
        },
        LoadCase {
            name: "31-byte secret",
            json: keyring_json("k1", &[("k1", &[7u8; 31], "enabled")]),
            expected: r#"SecretTooShort { id: "k1", len: 31 }"#,
        },
        LoadCase {
            name: "secret not base64",
            json: br#"{"primary":"k1","keys":[{"id":"k1","secret":"not*base64!","status":"enabled"}]}"#.to_vec(),
            expected: r#"SecretNotBase64 { id: "k1" }"#,
        },
        LoadCase {
            name: "url-safe base64 secret",
            json: br#"{"primary":"k1","keys":[{"id":"k1","secret":"______________________________________________8=","status":"enabled"}]}"#.to_vec(),
            expected: r#"SecretNotBase64 { id: "k1" }"#,
        },
    ];
    for case in &cases {
        let err = HmacKeyring::from_json(&case.json).unwrap_err();
        assert_eq!(format!("{err:?}"), case.expected, "case {}", case.name);
    }
    // Shape errors come from the JSON decoder, kept as the source.
    for (name, json) in [
        (
            "unknown status",
            &br#"{"primary":"k1","keys":[{"id":"k1","secret":"AA==","status":"paused"}]}"#[..],
        ),
        ("unknown field", br#"{"primary":"k1","keys":[],"extra":1}"#),
        ("missing keys", br#"{"primary":"k1"}"#),
        ("not json", b"primary=k1"),
    ] {
        let err = HmacKeyring::from_json(json).unwrap_err();
        assert!(matches!(err, SignError::KeyringFormat { .. }), "{name}: {err:?}");
    }
}

#[test]
fn generate_load_and_debug_hide_secrets() {
    let (ring, json) = HmacKeyring::generate("2025-01.a").unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&json).unwrap();
    let secret_b64 = doc["keys"][0]["secret"].as_str().unwrap().to_owned();
    assert_eq!(STANDARD.decode(&secret_b64).unwrap().len(), 32);
    assert_eq!(doc["primary"], "2025-01.a");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("hmac.json");
    std::fs::write(&path, &json).unwrap();
    let loaded = HmacKeyring::load(&path).unwrap();
    let (id, tag) = ring.sign(b"m");
    loaded.verify(id.as_str(), b"m", &tag).unwrap();

    let debug = format!("{loaded:?}");
    assert!(debug.contains("2025-01.a"), "{debug}");
    assert!(!debug.contains(&secret_b64), "debug leaks the secret: {debug}");

    // Two generations never share a secret.
    let (_, json2) = HmacKeyring::generate("2025-01.a").unwrap();
    assert_ne!(json, json2);

    let err = HmacKeyring::load(dir.path().join("missing.json")).unwrap_err();
    assert!(matches!(err, SignError::KeyringRead { .. }), "{err:?}");
    let err = HmacKeyring::generate("bad id").unwrap_err();
    assert!(matches!(err, SignError::InvalidKeyId { .. }), "{err:?}");
}
