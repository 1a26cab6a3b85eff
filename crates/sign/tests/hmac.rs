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

#[test]
fn rotation_keeps_old_tags_until_retired() {
    let (mut ring, _) = HmacKeyring::generate("k1").unwrap();
    let msg = b"manifest digest";
    let (id1, tag1) = ring.sign(msg);
    assert_eq!(id1.as_str(), "k1");

    ring.add_generated("k2").unwrap();
    // Added, not yet primary: k1 still signs, k2 already verifies its own tags.
    assert_eq!(ring.primary().as_str(), "k1");
    assert_eq!(ring.sign(msg), (id1.clone(), tag1));

    ring.promote("k2").unwrap();
    let (id2, tag2) = ring.sign(msg);
    assert_eq!(id2.as_str(), "k2");
    assert_ne!(tag2, tag1, "two generated keys share a secret");
    ring.verify("k2", msg, &tag2).unwrap();
    // The tag k1 made before the rotation keeps verifying after k2 is promoted.
    ring.verify("k1", msg, &tag1).unwrap();
    assert_eq!(
        ring.keys()
            .into_iter()
            .map(|(id, status, primary)| (id.to_string(), status, primary))
            .collect::<Vec<_>>(),
        vec![
            ("k1".to_owned(), KeyStatus::Enabled, false),
            ("k2".to_owned(), KeyStatus::Enabled, true),
        ]
    );

    ring.retire("k1").unwrap();
    // After k1 is retired its tags no longer verify.
    assert_eq!(
        format!("{:?}", ring.verify("k1", msg, &tag1)),
        r#"Err(RetiredKeyId { id: "k1" })"#
    );
    ring.verify("k2", msg, &tag2).unwrap();
    assert_eq!(ring.status("k1"), Some(KeyStatus::Retired));

    // The written document carries the rotation, and loads back to the same keyring.
    let reloaded = HmacKeyring::from_json(&ring.to_json()).unwrap();
    assert_eq!(reloaded.keys(), ring.keys());
    assert_eq!(reloaded.sign(msg), (id2, tag2));
    assert!(reloaded.verify("k1", msg, &tag1).is_err());
}

struct RotationCase {
    name: &'static str,
    step: fn(&mut HmacKeyring) -> Result<(), SignError>,
    expected: &'static str,
}

#[test]
fn rotation_refusals_table() {
    // Keyring before each case: k1 primary, k2 enabled, k0 retired.
    let s = [3u8; 32];
    let json = keyring_json(
        "k1",
        &[
            ("k0", &s, "retired"),
            ("k1", &s, "enabled"),
            ("k2", &s, "enabled"),
        ],
    );
    let cases = [
        RotationCase {
            name: "add an id already present",
            step: |r| r.add_generated("k2"),
            expected: r#"Err(DuplicateKeyId { id: "k2" })"#,
        },
        RotationCase {
            name: "add an id already present, retired",
            step: |r| r.add_generated("k0"),
            expected: r#"Err(DuplicateKeyId { id: "k0" })"#,
        },
        RotationCase {
            name: "add an invalid id",
            step: |r| r.add_generated("k/3"),
            expected: r#"Err(InvalidKeyId { id: "k/3" })"#,
        },
        RotationCase {
            name: "promote an unknown key",
            step: |r| r.promote("k9"),
            expected: r#"Err(UnknownKeyId { id: "k9" })"#,
        },
        RotationCase {
            name: "promote a retired key (retiring is final)",
            step: |r| r.promote("k0"),
            expected: r#"Err(RetiredKeyId { id: "k0" })"#,
        },
        RotationCase {
            name: "retire the primary",
            step: |r| r.retire("k1"),
            expected: r#"Err(RetirePrimary { id: "k1" })"#,
        },
        RotationCase {
            name: "retire an unknown key",
            step: |r| r.retire("k9"),
            expected: r#"Err(UnknownKeyId { id: "k9" })"#,
        },
        RotationCase {
            name: "promote the primary again",
            step: |r| r.promote("k1"),
            expected: "Ok(())",
        },
        RotationCase {
            name: "retire a retired key again",
            step: |r| r.retire("k0"),
            expected: "Ok(())",
        },
    ];
    for case in &cases {
        let mut ring = HmacKeyring::from_json(&json).unwrap();
        let before = ring.keys();
        let got = (case.step)(&mut ring);
        assert_eq!(format!("{got:?}"), case.expected, "case {}", case.name);
        // A refused or no-op step leaves the keyring as it was.
        assert_eq!(ring.keys(), before, "case {}", case.name);
        assert_eq!(ring.primary().as_str(), "k1", "case {}", case.name);
    }

    // Retire, then try to bring the key back: refused, and it stays retired.
    let mut ring = HmacKeyring::from_json(&json).unwrap();
    ring.retire("k2").unwrap();
    assert_eq!(
        format!("{:?}", ring.promote("k2")),
        r#"Err(RetiredKeyId { id: "k2" })"#
    );
    assert_eq!(ring.status("k2"), Some(KeyStatus::Retired));
    println!("hmac rotation refusals: {} cases", cases.len() + 1);
}

#[test]
fn to_json_round_trip_keeps_secrets_ids_and_statuses() {
    let k0 = [0x5a_u8; 32];
    let k1 = [0xa5_u8; 48];
    let json = keyring_json("k1", &[("k0", &k0, "retired"), ("k1", &k1, "enabled")]);
    let ring = HmacKeyring::from_json(&json).unwrap();
    let written = ring.to_json();
    // The same document, member for member (the input was already in id order).
    let a: serde_json::Value = serde_json::from_slice(&json).unwrap();
    let b: serde_json::Value = serde_json::from_slice(&written).unwrap();
    assert_eq!(a, b);
    let again = HmacKeyring::from_json(&written).unwrap();
    assert_eq!(again.keys(), ring.keys());
    assert_eq!(again.sign(b"m"), ring.sign(b"m"));
    assert_eq!(again.to_json(), written);

    // A generated key survives the round trip with its secret.
    let mut ring = again;
    ring.add_generated("k2").unwrap();
    ring.promote("k2").unwrap();
    let (id, tag) = ring.sign(b"m");
    let reloaded = HmacKeyring::from_json(&ring.to_json()).unwrap();
    reloaded.verify(id.as_str(), b"m", &tag).unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&ring.to_json()).unwrap();
    assert_eq!(doc["primary"], "k2");
    assert_eq!(
        STANDARD
            .decode(doc["keys"][2]["secret"].as_str().unwrap())
            .unwrap()
            .len(),
        32
    );
    // Debug still hides every secret.
    let debug = format!("{reloaded:?}");
    for key in doc["keys"].as_array().unwrap() {
        assert!(!debug.contains(key["secret"].as_str().unwrap()), "{debug}");
    }
}
