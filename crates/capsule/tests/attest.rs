#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Attestations: the refusal table (one row per reason, each exact), t-of-n
//! counting with each key once, retired keys, signatures over other
//! payloads, malformed base64, and verification over the exact payload
//! bytes as sent.

mod common;

use base64::Engine as _;
use serde_json::{Value, json};
use soma_capsule::{
    AttestError, AttestationKey, Bundle, CAPSULE_REVIEW_PREDICATE_TYPE, DEFAULT_ALLOWED_PREDICATE_TYPES,
    PAYLOAD_TYPE, SLSA_PROVENANCE_PREDICATE_TYPE, STATEMENT_TYPE, ToolRef, attest, envelope_from_json,
    verify_attestation,
};
use soma_release::{Version, publisher_key_id};
use soma_sign::{DsseEnvelope, DsseSignature, Ed25519Signer, SignError, pae};

/// The instant of submission the table verifies at.
const AT: i64 = 1_750_000_000_000_000_000;

/// Signs `payload` as `payload_type` with each signer, keyid = publisher key id.
fn sign_raw(payload_type: &str, payload: &[u8], signers: &[&Ed25519Signer]) -> DsseEnvelope {
    let message = pae(payload_type, payload);
    DsseEnvelope {
        payload_type: payload_type.to_owned(),
        payload: payload.to_vec(),
        signatures: signers
            .iter()
            .map(|s| DsseSignature {
                keyid: publisher_key_id(&s.public_key()),
                sig: s.sign(&message).to_vec(),
            })
            .collect(),
    }
}

/// A statement about `digest_hex` as JSON text (not canonical: serde_json's own layout).
fn statement(type_: &str, digest_hex: &str, predicate_type: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "_type": type_,
        "subject": [{"name": "text-stats@1.0.0", "digest": {"sha256": digest_hex}}],
        "predicateType": predicate_type,
        "predicate": {"reviewer": "alice"},
    }))
    .unwrap()
}

/// Another bundle: the same capsule at another version.
fn other_bundle() -> Bundle {
    let example = common::example_bundle();
    Bundle::new(
        example.name(),
        "1.0.1",
        example.description(),
        example.tools(),
        Value::Object(example.input_schema().clone()),
        json!({}),
    )
    .unwrap()
}

struct Case {
    name: &'static str,
    envelope: DsseEnvelope,
    keys: Vec<AttestationKey>,
    threshold: usize,
    /// `Ok(())`: accepted; else the exact reason.
    expected: Result<(), &'static str>,
}

#[test]
fn attestation_table() {
    let bundle = common::example_bundle();
    let digest = bundle.digest();
    let digest_hex = bundle.digest_hex();
    let (a, b, c, d) = (
        common::signer(1),
        common::signer(2),
        common::signer(3),
        common::signer(4),
    );
    let registered = vec![common::key(&a), common::key(&b), common::key(&c)];
    let review = json!({"reviewer": "alice", "notes": "read every line"});
    let good = |signers: &[&Ed25519Signer]| {
        attest(&bundle, CAPSULE_REVIEW_PREDICATE_TYPE, review.clone(), signers).unwrap()
    };
    let raw = |payload: &[u8], signers: &[&Ed25519Signer]| sign_raw(PAYLOAD_TYPE, payload, signers);
    let retired = |signer: &Ed25519Signer, at: i64| AttestationKey {
        retired_at_nanos: Some(at),
        ..common::key(signer)
    };

    // A's signature over another bundle's statement, carried in an envelope about this one.
    let this_payload = good(&[&b]).payload;
    let mut over_other_payload = good(&[&b]);
    over_other_payload.signatures = attest(
        &other_bundle(),
        CAPSULE_REVIEW_PREDICATE_TYPE,
        review.clone(),
        &[&a],
    )
    .unwrap()
    .signatures;
    let mut over_other_and_valid = over_other_payload.clone();
    over_other_and_valid
        .signatures
        .push(good(&[&b]).signatures[0].clone());

    // Valid JSON, not canonical: whitespace, members out of order, an escape.
    let loose = format!(
        "{{\n  \"predicateType\" : \"{CAPSULE_REVIEW_PREDICATE_TYPE}\",\n  \"_type\": \"https://in-toto.io/Statement/v1\",\n  \
         \"subject\": [ {{ \"digest\": {{ \"sha256\": \"{digest_hex}\" }}, \"name\": \"text-\\u0073tats@1.0.0\" }} ],\n  \
         \"predicate\": {{ \"score\": 1.50 }}\n}}\n"
    );
    let mut whitespace_changed = raw(loose.as_bytes(), &[&a, &b]);
    whitespace_changed.payload = loose.replace("\n  ", "\n    ").into_bytes();

    let mut short_sig = good(&[&a]);
    short_sig.signatures[0].sig.pop();
    let mut empty_keyid = good(&[&a]);
    empty_keyid.signatures[0].keyid = String::new();
    let mut keyid_of_a_on_b = good(&[&b]);
    keyid_of_a_on_b.signatures[0].keyid = publisher_key_id(&a.public_key());
    let repointed = AttestationKey {
        key_id: publisher_key_id(&a.public_key()),
        public_key: b.public_key(),
        retired_at_nanos: None,
    };

    let statement_with = |edit: &dyn Fn(&mut Value)| {
        let mut v: Value = serde_json::from_slice(&statement(
            STATEMENT_TYPE,
            &digest_hex,
            CAPSULE_REVIEW_PREDICATE_TYPE,
        ))
        .unwrap();
        edit(&mut v);
        serde_json::to_vec(&v).unwrap()
    };
    let other_hex = "11".repeat(32);

    let two = 2;
    let cases = vec![
        // ---- accepted ----
        Case {
            name: "2-of-3 with two distinct keys",
            envelope: good(&[&a, &b]),
            keys: registered.clone(),
            threshold: two,
            expected: Ok(()),
        },
        Case {
            name: "3 of 3 signing, 2 required",
            envelope: good(&[&c, &a, &b]),
            keys: registered.clone(),
            threshold: two,
            expected: Ok(()),
        },
        Case {
            name: "1-of-3",
            envelope: good(&[&c]),
            keys: registered.clone(),
            threshold: 1,
            expected: Ok(()),
        },
        Case {
            name: "an unknown key beside two known ones",
            envelope: good(&[&d, &a, &b]),
            keys: registered.clone(),
            threshold: two,
            expected: Ok(()),
        },
        Case {
            name: "slsa provenance predicate",
            envelope: attest(
                &bundle,
                SLSA_PROVENANCE_PREDICATE_TYPE,
                json!({"buildDefinition": {}}),
                &[&a, &b],
            )
            .unwrap(),
            keys: registered.clone(),
            threshold: two,
            expected: Ok(()),
        },
        Case {
            name: "key retired after the submission still counts",
            envelope: good(&[&a, &b]),
            keys: vec![retired(&a, AT + 1), common::key(&b)],
            threshold: two,
            expected: Ok(()),
        },
        Case {
            name: "non-canonical but valid json payload, verified as sent",
            envelope: raw(loose.as_bytes(), &[&a, &b]),
            keys: registered.clone(),
            threshold: two,
            expected: Ok(()),
        },
        Case {
            name: "the bundle digest in the second subject",
            envelope: raw(
                &statement_with(&|v| {
                    v["subject"] = json!([{"name": "x", "digest": {"sha256": other_hex}},
                                          {"digest": {"sha512": "ab", "sha256": digest_hex}}]);
                }),
                &[&a, &b],
            ),
            keys: registered.clone(),
            threshold: two,
            expected: Ok(()),
        },
        Case {
            name: "no predicate (read as empty), unknown members ignored",
            envelope: raw(
                &statement_with(&|v| {
                    v.as_object_mut().unwrap().remove("predicate");
                    v["extension"] = json!({"x": 1});
                }),
                &[&a],
            ),
            keys: registered.clone(),
            threshold: 1,
            expected: Ok(()),
        },
        // ---- refused: the envelope and its signatures ----
        Case {
            name: "threshold zero",
            envelope: good(&[&a, &b]),
            keys: registered.clone(),
            threshold: 0,
            expected: Err("attestation_threshold_invalid"),
        },
        Case {
            name: "wrong payloadType, validly signed",
            envelope: sign_raw("application/json", &this_payload, &[&a, &b]),
            keys: registered.clone(),
            threshold: two,
            expected: Err("attestation_payload_type"),
        },
        Case {
            name: "the release payload type",
            envelope: sign_raw(soma_release::PAYLOAD_TYPE, &this_payload, &[&a, &b]),
            keys: registered.clone(),
            threshold: two,
            expected: Err("attestation_payload_type"),
        },
        Case {
            name: "no signature",
            envelope: raw(&this_payload, &[]),
            keys: registered.clone(),
            threshold: 1,
            expected: Err("attestation_key_unknown"),
        },
        Case {
            name: "only an unregistered key",
            envelope: good(&[&d]),
            keys: registered.clone(),
            threshold: 1,
            expected: Err("attestation_key_unknown"),
        },
        Case {
            name: "empty keyid",
            envelope: empty_keyid,
            keys: registered.clone(),
            threshold: 1,
            expected: Err("attestation_key_unknown"),
        },
        Case {
            name: "registered id re-pointed at another key",
            envelope: keyid_of_a_on_b,
            keys: vec![repointed],
            threshold: 1,
            expected: Err("attestation_key_unknown"),
        },
        Case {
            name: "one key signing twice, 2 required",
            envelope: good(&[&a, &a]),
            keys: registered.clone(),
            threshold: two,
            expected: Err("attestation_below_threshold"),
        },
        Case {
            name: "one known and one unknown key, 2 required",
            envelope: good(&[&a, &d]),
            keys: registered.clone(),
            threshold: two,
            expected: Err("attestation_below_threshold"),
        },
        Case {
            name: "two signatures, three required",
            envelope: good(&[&a, &b]),
            keys: registered.clone(),
            threshold: 3,
            expected: Err("attestation_below_threshold"),
        },
        Case {
            name: "retired key excluded, it is why the threshold is missed",
            envelope: good(&[&a, &b]),
            keys: vec![retired(&a, AT), common::key(&b), common::key(&c)],
            threshold: two,
            expected: Err("attestation_key_retired"),
        },
        Case {
            name: "only a retired key",
            envelope: good(&[&c]),
            keys: vec![retired(&c, AT - 1)],
            threshold: 1,
            expected: Err("attestation_key_retired"),
        },
        Case {
            name: "a retired key that would not have sufficed either",
            envelope: good(&[&a]),
            keys: vec![retired(&a, AT), common::key(&b), common::key(&c)],
            threshold: two,
            expected: Err("attestation_below_threshold"),
        },
        Case {
            name: "a signature over another payload, alone",
            envelope: over_other_payload,
            keys: registered.clone(),
            threshold: 1,
            expected: Err("attestation_signature_invalid"),
        },
        Case {
            name: "a signature over another payload beside a valid one, 2 required",
            envelope: over_other_and_valid,
            keys: registered.clone(),
            threshold: two,
            expected: Err("attestation_below_threshold"),
        },
        Case {
            name: "payload whitespace changed after signing",
            envelope: whitespace_changed,
            keys: registered.clone(),
            threshold: two,
            expected: Err("attestation_signature_invalid"),
        },
        Case {
            name: "a signature one byte short",
            envelope: short_sig,
            keys: registered.clone(),
            threshold: 1,
            expected: Err("attestation_signature_invalid"),
        },
        Case {
            name: "signatures checked before the statement is read",
            envelope: raw(b"not json", &[&a]),
            keys: registered.clone(),
            threshold: two,
            expected: Err("attestation_below_threshold"),
        },
        // ---- refused: the statement (validly signed) ----
        Case {
            name: "wrong _type (v0.1)",
            envelope: raw(
                &statement(
                    "https://in-toto.io/Statement/v0.1",
                    &digest_hex,
                    CAPSULE_REVIEW_PREDICATE_TYPE,
                ),
                &[&a, &b],
            ),
            keys: registered.clone(),
            threshold: two,
            expected: Err("attestation_statement_type"),
        },
        Case {
            name: "no _type",
            envelope: raw(
                &statement_with(&|v| {
                    v.as_object_mut().unwrap().remove("_type");
                }),
                &[&a, &b],
            ),
            keys: registered.clone(),
            threshold: two,
            expected: Err("attestation_statement_type"),
        },
        Case {
            name: "predicate type not allowed",
            envelope: attest(&bundle, "https://example.com/anything/v1", json!({}), &[&a, &b]).unwrap(),
            keys: registered.clone(),
            threshold: two,
            expected: Err("attestation_predicate_type"),
        },
        Case {
            name: "subject digest is another bundle's",
            envelope: attest(
                &other_bundle(),
                CAPSULE_REVIEW_PREDICATE_TYPE,
                review.clone(),
                &[&a, &b],
            )
            .unwrap(),
            keys: registered.clone(),
            threshold: two,
            expected: Err("attestation_subject_mismatch"),
        },
        Case {
            name: "subject with sha512 only",
            envelope: raw(
                &statement_with(&|v| v["subject"][0]["digest"] = json!({"sha512": "00"})),
                &[&a, &b],
            ),
            keys: registered.clone(),
            threshold: two,
            expected: Err("attestation_subject_mismatch"),
        },
        Case {
            name: "payload not json",
            envelope: raw(b"{\"_type\":", &[&a, &b]),
            keys: registered.clone(),
            threshold: two,
            expected: Err("attestation_malformed"),
        },
        Case {
            name: "duplicate member in the statement",
            envelope: raw(
                format!("{{\"_type\":\"{STATEMENT_TYPE}\",\"_type\":\"{STATEMENT_TYPE}\"}}").as_bytes(),
                &[&a, &b],
            ),
            keys: registered.clone(),
            threshold: two,
            expected: Err("attestation_malformed"),
        },
        Case {
            name: "empty subject list",
            envelope: raw(&statement_with(&|v| v["subject"] = json!([])), &[&a, &b]),
            keys: registered.clone(),
            threshold: two,
            expected: Err("attestation_malformed"),
        },
        Case {
            name: "uppercase sha256",
            envelope: raw(
                &statement_with(&|v| v["subject"][0]["digest"]["sha256"] = json!(digest_hex.to_uppercase())),
                &[&a, &b],
            ),
            keys: registered.clone(),
            threshold: two,
            expected: Err("attestation_malformed"),
        },
        Case {
            name: "subject without digest",
            envelope: raw(
                &statement_with(&|v| v["subject"] = json!([{"name": "text-stats@1.0.0"}])),
                &[&a, &b],
            ),
            keys: registered.clone(),
            threshold: two,
            expected: Err("attestation_malformed"),
        },
        Case {
            name: "predicateType missing",
            envelope: raw(
                &statement_with(&|v| {
                    v.as_object_mut().unwrap().remove("predicateType");
                }),
                &[&a, &b],
            ),
            keys: registered.clone(),
            threshold: two,
            expected: Err("attestation_malformed"),
        },
        Case {
            name: "predicate an array",
            envelope: raw(&statement_with(&|v| v["predicate"] = json!([])), &[&a, &b]),
            keys: registered.clone(),
            threshold: two,
            expected: Err("attestation_malformed"),
        },
    ];
    let mut failures = Vec::new();
    for case in &cases {
        let got = verify_attestation(
            &case.envelope,
            &digest,
            &case.keys,
            case.threshold,
            &DEFAULT_ALLOWED_PREDICATE_TYPES,
            AT,
        );
        let got_reason = got.as_ref().map(|_| ()).map_err(AttestError::reason);
        if got_reason != case.expected {
            failures.push(format!(
                "{}: got {got:?}, expected {:?}",
                case.name, case.expected
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn accepted_statement_and_reasons_in_detail() {
    let bundle = common::example_bundle();
    let (a, b, c) = (common::signer(1), common::signer(2), common::signer(3));
    let keys = [common::key(&a), common::key(&b), common::key(&c)];
    let predicate = json!({"reviewer": "alice", "score": 0.5});
    let envelope = attest(
        &bundle,
        CAPSULE_REVIEW_PREDICATE_TYPE,
        predicate.clone(),
        &[&a, &c],
    )
    .unwrap();

    // The envelope survives its JSON form, keyids are the publisher key ids.
    let envelope = envelope_from_json(&envelope.to_json()).unwrap();
    assert_eq!(envelope.payload_type, "application/vnd.in-toto+json");
    assert_eq!(envelope.signatures[0].keyid, keys[0].key_id);
    assert_eq!(envelope.signatures[1].keyid, keys[2].key_id);
    let statement = verify_attestation(
        &envelope,
        &bundle.digest(),
        &keys,
        2,
        &DEFAULT_ALLOWED_PREDICATE_TYPES,
        AT,
    )
    .unwrap();
    assert_eq!(statement.predicate_type(), CAPSULE_REVIEW_PREDICATE_TYPE);
    assert_eq!(Value::Object(statement.predicate().clone()), predicate);
    let [subject] = statement.subjects() else {
        panic!("one subject")
    };
    assert_eq!(subject.name(), Some("text-stats@1.0.0"));
    assert_eq!(subject.sha256(), Some(&bundle.digest()));
    assert_eq!(subject.digest()["sha256"], bundle.digest_hex());

    // The payload attest writes is the canonical statement, members sorted.
    let expected = format!(
        "{{\"_type\":\"{STATEMENT_TYPE}\",\"predicate\":{{\"reviewer\":\"alice\",\"score\":0.5}},\
         \"predicateType\":\"{CAPSULE_REVIEW_PREDICATE_TYPE}\",\"subject\":[{{\"digest\":{{\"sha256\":\"{}\"}},\
         \"name\":\"text-stats@1.0.0\"}}]}}",
        bundle.digest_hex()
    );
    assert_eq!(String::from_utf8(envelope.payload.clone()).unwrap(), expected);

    // Only the listed predicate types are allowed; an empty list allows none.
    let err = verify_attestation(&envelope, &bundle.digest(), &keys, 2, &[], AT).unwrap_err();
    assert_eq!(err.reason(), "attestation_predicate_type");

    // Below threshold says how many counted; a signature over another payload keeps the verifier's reason.
    let err = verify_attestation(
        &envelope,
        &bundle.digest(),
        &keys,
        3,
        &DEFAULT_ALLOWED_PREDICATE_TYPES,
        AT,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            AttestError::BelowThreshold {
                valid: 2,
                threshold: 3
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "attestation has 2 valid signatures of distinct keys, 3 required"
    );
    let mut tampered = envelope.clone();
    tampered.payload.push(b' ');
    let err = verify_attestation(
        &tampered,
        &bundle.digest(),
        &keys,
        1,
        &DEFAULT_ALLOWED_PREDICATE_TYPES,
        AT,
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            AttestError::SignatureInvalid {
                source: SignError::SignatureMismatch
            }
        ),
        "{err:?}"
    );
}

#[test]
fn malformed_envelopes() {
    let bundle = common::example_bundle();
    let a = common::signer(1);
    let json = String::from_utf8(
        attest(&bundle, CAPSULE_REVIEW_PREDICATE_TYPE, json!({}), &[&a])
            .unwrap()
            .to_json(),
    )
    .unwrap();
    let doc: Value = serde_json::from_str(&json).unwrap();
    let payload = doc["payload"].as_str().unwrap().to_owned();
    let sig = doc["signatures"][0]["sig"].as_str().unwrap().to_owned();

    let cases: Vec<(&str, String, &str)> = vec![
        (
            "payload with a character outside base64",
            json.replace(&payload, &format!("{payload}*")),
            "attestation_malformed_base64",
        ),
        (
            "payload mixing both alphabets",
            json.replace(&payload, &format!("-+{}", &payload[2..])),
            "attestation_malformed_base64",
        ),
        (
            "sig not base64",
            json.replace(&sig, "%%%%"),
            "attestation_malformed_base64",
        ),
        (
            "sig with non-zero trailing bits",
            json.replace(&sig, &format!("{}B==", &sig[..sig.len() - 3])),
            "attestation_malformed_base64",
        ),
        (
            "unknown envelope member",
            json.replacen('{', "{\"extra\":1,", 1),
            "attestation_envelope_invalid",
        ),
        (
            "payload not a string",
            json.replace(&format!("\"{payload}\""), "7"),
            "attestation_envelope_invalid",
        ),
        (
            "signatures missing",
            json.replace("\"signatures\"", "\"signature\""),
            "attestation_envelope_invalid",
        ),
        ("not json", "payload".to_owned(), "attestation_envelope_invalid"),
    ];
    for (name, text, reason) in cases {
        let err = envelope_from_json(text.as_bytes()).unwrap_err();
        assert_eq!(err.reason(), reason, "{name}: {err:?}");
    }

    // URL-safe unpadded base64 is DSSE too, and verifies.
    let url_safe = |s: &str| {
        let bytes = base64::engine::general_purpose::STANDARD.decode(s).unwrap();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    };
    let text = json
        .replace(&payload, &url_safe(&payload))
        .replace(&sig, &url_safe(&sig));
    let envelope = envelope_from_json(text.as_bytes()).unwrap();
    verify_attestation(
        &envelope,
        &bundle.digest(),
        &[common::key(&a)],
        1,
        &DEFAULT_ALLOWED_PREDICATE_TYPES,
        AT,
    )
    .unwrap();
}

#[test]
fn attest_refusals() {
    let bundle = common::example_bundle();
    let a = common::signer(1);
    let cases: Vec<(&str, Result<DsseEnvelope, AttestError>, &str)> = vec![
        (
            "no signer",
            attest(&bundle, CAPSULE_REVIEW_PREDICATE_TYPE, json!({}), &[]),
            "attestation_no_signer",
        ),
        (
            "empty predicate type",
            attest(&bundle, "", json!({}), &[&a]),
            "attestation_predicate_invalid",
        ),
        (
            "predicate an array",
            attest(&bundle, CAPSULE_REVIEW_PREDICATE_TYPE, json!([]), &[&a]),
            "attestation_predicate_invalid",
        ),
        (
            "predicate null",
            attest(&bundle, CAPSULE_REVIEW_PREDICATE_TYPE, Value::Null, &[&a]),
            "attestation_predicate_invalid",
        ),
    ];
    for (name, got, reason) in cases {
        assert_eq!(got.unwrap_err().reason(), reason, "{name}");
    }

    // A predicate nested past the canonicaliser's depth is refused, not signed half-written.
    let mut deep = json!({});
    for _ in 0..200 {
        deep = json!({ "d": deep });
    }
    let err = attest(&bundle, CAPSULE_REVIEW_PREDICATE_TYPE, deep, &[&a]).unwrap_err();
    assert_eq!(err.reason(), "attestation_predicate_invalid");

    // A bundle built in code attests the same way as one read from its file.
    let tools = [ToolRef {
        tool: "text-stats".to_owned(),
        version: Version::parse("1.0.0").unwrap(),
        module_sha256: [9; 32],
    }];
    let built = Bundle::new(
        "scratch",
        "0.0.1",
        "",
        &tools,
        json!({"type": "object"}),
        json!({}),
    )
    .unwrap();
    let envelope = attest(&built, CAPSULE_REVIEW_PREDICATE_TYPE, json!({}), &[&a]).unwrap();
    let statement = verify_attestation(
        &envelope,
        &built.digest(),
        &[common::key(&a)],
        1,
        &DEFAULT_ALLOWED_PREDICATE_TYPES,
        AT,
    )
    .unwrap();
    assert_eq!(statement.subjects()[0].name(), Some("scratch@0.0.1"));
}
