#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Verification of stored releases and of publications: one row per
//! tampering, each asserting exactly the failures expected.

mod common;

use base64::Engine as _;
use common::{RFC8032_TEST1_PK, RFC8032_TEST1_SEED, RFC8032_TEST3_SEED, Release, publisher, signer};
use soma_release::{
    Manifest, PAYLOAD_TYPE, PublisherKey, ReleaseError, publisher_key_id, seal, sign_manifest,
    sign_manifest_with, verify, verify_publication,
};
use soma_sign::{DsseEnvelope, DsseSignature, Ed25519Signer, HmacKeyring, KeyId};

#[test]
fn publisher_key_id_is_the_spki_digest() {
    // SHA-256 of the RFC 8410 SubjectPublicKeyInfo DER of the RFC 8032 TEST 1
    // key, as Python `cryptography` encodes and hashlib digests it.
    let pk: [u8; 32] = common::hex(RFC8032_TEST1_PK).try_into().unwrap();
    assert_eq!(
        publisher_key_id(&pk),
        "06e3fd8fda29bb60ab59557de61edb0aecdb231134be30e75b455f8e1b792fa9"
    );
    let s = signer(RFC8032_TEST1_SEED);
    assert_eq!(
        publisher_key_id(&s.public_key()),
        common::to_hex(&soma_sign::sha256(&s.public_key_spki_der()))
    );
    let key = PublisherKey::from_pem(&s.public_key_pem()).unwrap();
    assert_eq!(key, PublisherKey::new(pk));
    assert_eq!(key.retired_at_nanos, None);
}

#[test]
fn seal_is_hmac_sha256_over_the_digest() {
    let (ring, _) = HmacKeyring::generate("r1").unwrap();
    let digest = soma_sign::sha256(b"{}");
    let (id, tag) = seal(&ring, &digest);
    assert_eq!(id.as_str(), "r1");
    ring.verify("r1", &digest, &tag).unwrap();
    // Over the 32 digest bytes, not their hex, not the manifest.
    assert!(
        ring.verify("r1", common::to_hex(&digest).as_bytes(), &tag)
            .is_err()
    );
    assert!(ring.verify("r1", b"{}", &tag).is_err());
}

#[test]
fn sign_manifest_from_pkcs8_pem() {
    let (generated, der) = Ed25519Signer::generate(KeyId::new("x").unwrap()).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
    let pem = format!("-----BEGIN PRIVATE KEY-----\n{b64}\n-----END PRIVATE KEY-----\n");
    let manifest = Manifest::new("echo", "1.0.0", "run", common::limits(), "", &common::module(1)).unwrap();
    let envelope = sign_manifest(&manifest, &pem).unwrap();
    let key = PublisherKey::new(generated.public_key());
    assert_eq!(envelope.payload_type, PAYLOAD_TYPE);
    assert_eq!(envelope.payload, manifest.canonical());
    assert_eq!(envelope.signatures.len(), 1);
    assert_eq!(envelope.signatures[0].keyid, key.key_id);
    assert_eq!(verify_publication(&envelope, &key, 0).unwrap(), manifest);
    // Deterministic: the same key signs the same manifest to the same envelope.
    assert_eq!(sign_manifest_with(&manifest, &generated), envelope);

    let err = sign_manifest(&manifest, &generated.public_key_pem()).unwrap_err();
    assert_eq!(err.reason(), "signing_key_invalid");
    let err = sign_manifest(&manifest, "not a pem").unwrap_err();
    assert_eq!(err.reason(), "signing_key_invalid");
}

struct Case<'a> {
    name: &'static str,
    release: Release,
    publisher: Option<PublisherKey>,
    keyring: &'a HmacKeyring,
    with_module: bool,
    expected: &'static [&'static str],
}

#[test]
fn stored_release_tampering_table() {
    let alice = signer(RFC8032_TEST1_SEED);
    let mallory = signer(RFC8032_TEST3_SEED);
    let (mut ring, _) = HmacKeyring::generate("r1").unwrap();
    ring.add_generated("r2").unwrap();
    let a = Release::publish("1.0.0", common::module(1), &alice, &ring);
    let b = Release::publish("1.1.0", common::module(2), &alice, &ring);
    // The same keyring after a rotation that retired the key `a` was sealed with.
    let mut rotated = HmacKeyring::from_json(&ring.to_json()).unwrap();
    rotated.promote("r2").unwrap();
    rotated.retire("r1").unwrap();

    let alice_key = publisher(&alice);
    let with = |f: &dyn Fn(&mut Release)| {
        let mut r = a.clone();
        f(&mut r);
        r
    };
    let description_at = a.manifest.windows(6).position(|w| w == b"Echoes").unwrap();
    let row = |name, release, expected| Case {
        name,
        release,
        publisher: Some(alice_key.clone()),
        keyring: &ring,
        with_module: true,
        expected,
    };

    let cases = vec![
        row("valid", a.clone(), &[]),
        Case {
            with_module: false,
            ..row("valid, manifest part only", a.clone(), &[])
        },
        row(
            "manifest byte changed (still a valid manifest)",
            with(&|r| r.manifest[description_at + 5] = b'r'),
            &["manifest_digest", "registry_hmac", "envelope_payload"],
        ),
        row(
            "manifest byte changed and its stored digest updated",
            with(&|r| {
                r.manifest[description_at + 5] = b'r';
                r.manifest_sha256 = soma_sign::sha256(&r.manifest).to_vec();
            }),
            &["registry_hmac", "envelope_payload"],
        ),
        row(
            "manifest byte changed into invalid json",
            with(&|r| r.manifest[0] = b'['),
            &[
                "manifest_invalid",
                "manifest_digest",
                "registry_hmac",
                "envelope_payload",
            ],
        ),
        row(
            "stored digest changed",
            with(&|r| r.manifest_sha256[0] ^= 0x80),
            &["manifest_digest"],
        ),
        row(
            "stored digest truncated",
            with(&|r| r.manifest_sha256.truncate(31)),
            &["manifest_digest"],
        ),
        row(
            "module byte changed",
            with(&|r| *r.module.last_mut().unwrap() ^= 1),
            &["module_digest"],
        ),
        row(
            "module truncated",
            with(&|r| {
                r.module.pop();
            }),
            &["module_size", "module_digest"],
        ),
        row("hmac changed", with(&|r| r.hmac[31] ^= 1), &["registry_hmac"]),
        row(
            "hmac truncated",
            with(&|r| r.hmac.truncate(16)),
            &["registry_hmac"],
        ),
        row(
            "hmac key id changed to another enabled key",
            with(&|r| r.hmac_key_id = "r2".to_owned()),
            &["registry_hmac"],
        ),
        row(
            "hmac key id changed to an unknown key",
            with(&|r| r.hmac_key_id = "r9".to_owned()),
            &["registry_hmac"],
        ),
        Case {
            keyring: &rotated,
            ..row("hmac key retired since", a.clone(), &["registry_hmac"])
        },
        row(
            "envelope signed by another key (its own keyid)",
            with(&|r| {
                let m = Manifest::parse(&r.manifest).unwrap();
                r.envelope = sign_manifest_with(&m, &mallory);
            }),
            &["publisher_unknown"],
        ),
        row(
            "envelope signed by another key under the publisher's keyid",
            with(&|r| {
                let m = Manifest::parse(&r.manifest).unwrap();
                r.envelope = sign_manifest_with(&m, &mallory);
                r.envelope.signatures[0].keyid = publisher(&alice).key_id;
            }),
            &["publisher_signature"],
        ),
        Case {
            publisher: None,
            ..row(
                "publisher key unknown to the registry",
                a.clone(),
                &["publisher_unknown"],
            )
        },
        Case {
            // The publisher row's public key replaced by the attacker's, its id kept.
            publisher: Some(PublisherKey {
                public_key: mallory.public_key(),
                ..alice_key.clone()
            }),
            ..row(
                "publisher row re-pointed at another key",
                with(&|r| {
                    let m = Manifest::parse(&r.manifest).unwrap();
                    r.envelope = sign_manifest_with(&m, &mallory);
                    r.envelope.signatures[0].keyid = publisher(&alice).key_id;
                }),
                &["publisher_unknown"],
            )
        },
        Case {
            publisher: Some(PublisherKey {
                retired_at_nanos: Some(a.published_at_nanos),
                ..alice_key.clone()
            }),
            ..row(
                "publisher key retired at publication",
                a.clone(),
                &["publisher_retired"],
            )
        },
        Case {
            publisher: Some(PublisherKey {
                retired_at_nanos: Some(a.published_at_nanos - 1),
                ..alice_key.clone()
            }),
            ..row(
                "publisher key retired before publication",
                a.clone(),
                &["publisher_retired"],
            )
        },
        Case {
            publisher: Some(PublisherKey {
                retired_at_nanos: Some(a.published_at_nanos + 1),
                ..alice_key.clone()
            }),
            ..row("publisher key retired after publication", a.clone(), &[])
        },
        row(
            "mix-and-match: another release's envelope",
            with(&|r| r.envelope = b.envelope.clone()),
            &["envelope_payload"],
        ),
        row(
            "mix-and-match: another release's module",
            with(&|r| r.module = b.module.clone()),
            &["module_digest"],
        ),
        row(
            "mix-and-match: another release's manifest, digest and seal",
            with(&|r| {
                r.manifest = b.manifest.clone();
                r.manifest_sha256 = b.manifest_sha256.clone();
                r.hmac = b.hmac.clone();
            }),
            &["envelope_payload", "module_digest"],
        ),
        row(
            "mix-and-match: another release's seal",
            with(&|r| r.hmac = b.hmac.clone()),
            &["registry_hmac"],
        ),
        row("revoked", with(&|r| r.revoked = true), &["revoked"]),
        row(
            "envelope of another payload type, validly signed",
            with(&|r| {
                r.envelope = DsseEnvelope::sign("application/json", r.manifest.clone(), &alice);
                r.envelope.signatures[0].keyid = publisher(&alice).key_id;
            }),
            &["envelope_payload_type"],
        ),
        row(
            "a second signature beside the publisher's",
            with(&|r| {
                let extra = DsseEnvelope::sign(PAYLOAD_TYPE, r.manifest.clone(), &mallory);
                r.envelope.signatures.push(extra.signatures[0].clone());
            }),
            &["envelope_signature_count"],
        ),
        row(
            "no signature at all",
            with(&|r| r.envelope.signatures.clear()),
            &["envelope_signature_count", "publisher_unknown"],
        ),
        row(
            "several at once",
            with(&|r| {
                r.revoked = true;
                r.hmac[0] ^= 1;
                r.module[0] ^= 1;
            }),
            &["registry_hmac", "module_digest", "revoked"],
        ),
    ];
    for case in &cases {
        let mut stored = case.release.stored();
        if !case.with_module {
            stored.module = None;
        }
        let failures = verify(&stored, case.publisher.as_ref(), case.keyring);
        let names: Vec<&str> = failures.iter().map(|f| f.name()).collect();
        assert_eq!(names, case.expected, "case {}: {failures:?}", case.name);
        // Every failure carries a lowercase message.
        for f in &failures {
            let message = f.to_string();
            assert_eq!(message, message.to_lowercase(), "case {}", case.name);
        }
    }
    println!("stored release tampering table: {} cases", cases.len());
}

#[test]
fn failure_sources_name_the_reason() {
    let alice = signer(RFC8032_TEST1_SEED);
    let (ring, _) = HmacKeyring::generate("r1").unwrap();
    let mut r = Release::publish("1.0.0", common::module(1), &alice, &ring);
    r.manifest.push(b' ');
    r.hmac_key_id = "gone".to_owned();
    let failures = verify(&r.stored(), Some(&publisher(&alice)), &ring);
    let sources: Vec<String> = failures
        .iter()
        .map(|f| {
            std::error::Error::source(f)
                .map(ToString::to_string)
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(
        sources,
        [
            "manifest is not in rfc 8785 canonical form",
            "",
            r#"unknown key id "gone""#,
            ""
        ]
    );
}

struct PublicationCase {
    name: &'static str,
    envelope: DsseEnvelope,
    publisher: PublisherKey,
    at_nanos: i64,
    expected: Result<(), &'static str>,
}

#[test]
fn publication_table() {
    let alice = signer(RFC8032_TEST1_SEED);
    let mallory = signer(RFC8032_TEST3_SEED);
    let key = publisher(&alice);
    let manifest = Manifest::new("echo", "2.0.0", "run", common::limits(), "x", &common::module(3)).unwrap();
    let good = sign_manifest_with(&manifest, &alice);
    let signed_payload = |payload: &[u8], payload_type: &str| {
        let mut e = DsseEnvelope::sign(payload_type, payload.to_vec(), &alice);
        e.signatures[0].keyid.clone_from(&key.key_id);
        e
    };
    let with = |f: &dyn Fn(&mut DsseEnvelope)| {
        let mut e = good.clone();
        f(&mut e);
        e
    };
    let pretty = String::from_utf8(manifest.canonical())
        .unwrap()
        .replace(',', ", ");
    let unknown_member =
        String::from_utf8(manifest.canonical())
            .unwrap()
            .replacen('{', r#"{"author":"m","#, 1);
    let row = |name, envelope, expected| PublicationCase {
        name,
        envelope,
        publisher: key.clone(),
        at_nanos: 100,
        expected,
    };
    let cases = vec![
        row("valid", good.clone(), Ok(())),
        row(
            "another payload type",
            signed_payload(&manifest.canonical(), "application/vnd.in-toto+json"),
            Err("envelope_payload_type"),
        ),
        row(
            "no signature",
            with(&|e| e.signatures.clear()),
            Err("envelope_signature_count"),
        ),
        row(
            "two signatures",
            with(&|e| e.signatures.push(e.signatures[0].clone())),
            Err("envelope_signature_count"),
        ),
        row(
            "keyid of another key",
            sign_manifest_with(&manifest, &mallory),
            Err("publisher_unknown"),
        ),
        row(
            "keyid absent",
            with(&|e| e.signatures[0].keyid.clear()),
            Err("publisher_unknown"),
        ),
        PublicationCase {
            publisher: PublisherKey {
                key_id: "k1".to_owned(),
                ..key.clone()
            },
            ..row(
                "publisher key id not derived from the key",
                with(&|e| e.signatures[0].keyid = "k1".to_owned()),
                Err("publisher_unknown"),
            )
        },
        PublicationCase {
            publisher: PublisherKey {
                retired_at_nanos: Some(100),
                ..key.clone()
            },
            ..row(
                "publisher key retired at that instant",
                good.clone(),
                Err("publisher_retired"),
            )
        },
        PublicationCase {
            publisher: PublisherKey {
                retired_at_nanos: Some(101),
                ..key.clone()
            },
            ..row("publisher key retired later", good.clone(), Ok(()))
        },
        row(
            "payload changed after signing",
            with(&|e| e.payload[1] ^= 1),
            Err("signature_invalid"),
        ),
        row(
            "signature by another key under the publisher's keyid",
            with(&|e| {
                e.signatures[0] = DsseSignature {
                    keyid: key.key_id.clone(),
                    sig: sign_manifest_with(&manifest, &mallory).signatures[0].sig.clone(),
                };
            }),
            Err("signature_invalid"),
        ),
        row(
            "validly signed, not canonical",
            signed_payload(pretty.as_bytes(), PAYLOAD_TYPE),
            Err("manifest_not_canonical"),
        ),
        row(
            "validly signed, unknown member",
            signed_payload(unknown_member.as_bytes(), PAYLOAD_TYPE),
            Err("manifest_unknown_field"),
        ),
        row(
            "validly signed, not json",
            signed_payload(b"echo 2.0.0", PAYLOAD_TYPE),
            Err("manifest_invalid_json"),
        ),
    ];
    for case in &cases {
        let got = verify_publication(&case.envelope, &case.publisher, case.at_nanos);
        match (&got, case.expected) {
            (Ok(m), Ok(())) => assert_eq!(m, &manifest, "case {}", case.name),
            (Err(e), Err(reason)) => assert_eq!(e.reason(), reason, "case {}: {e}", case.name),
            _ => panic!("case {}: got {got:?}, expected {:?}", case.name, case.expected),
        }
    }
    // The signature error keeps the strict verifier's reason as its source.
    let err = verify_publication(&with(&|e| e.signatures[0].sig[63] ^= 0x80), &key, 0).unwrap_err();
    assert!(matches!(err, ReleaseError::SignatureInvalid { .. }), "{err:?}");
    assert_eq!(
        std::error::Error::source(&err).unwrap().to_string(),
        "ed25519 signature s is not reduced modulo the group order"
    );
    println!("publication table: {} cases", cases.len());
}
