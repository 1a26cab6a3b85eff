//! SubmitCapsule: the attestation table — each refusal with its exact code
//! and reason and nothing written (rows counted before and after) — then a
//! verified submission, its provenance, and the same version again; the
//! tenant and submitter come from the claims alone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{
    Harness, OPERATOR, Publisher, attest, example, example_at, signer_of, submit_request, with_tools,
};
use serde_json::json;
use soma_capsule::{Bundle, CAPSULE_REVIEW_PREDICATE_TYPE, PAYLOAD_TYPE, STATEMENT_TYPE, ToolRef};
use soma_mesh::ServiceKind;
use soma_proto::v1 as pb;
use soma_sign::{DsseEnvelope, DsseSignature, Ed25519Signer, pae};
use soma_testing::grpc_reason;
use tonic::Code;

/// Signs `payload` as `payload_type` with each signer (keyid: its publisher key id).
fn sign_raw(payload_type: &str, payload: &[u8], signers: &[&Ed25519Signer]) -> DsseEnvelope {
    let message = pae(payload_type, payload);
    DsseEnvelope {
        payload_type: payload_type.to_owned(),
        payload: payload.to_vec(),
        signatures: signers
            .iter()
            .map(|s| DsseSignature {
                keyid: soma_release::publisher_key_id(&s.public_key()),
                sig: s.sign(&message).to_vec(),
            })
            .collect(),
    }
}

/// An in-toto statement about `digest_hex` with `_type` `type_`.
fn statement(type_: &str, digest_hex: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "_type": type_,
        "subject": [{"name": "text-stats@1.0.0", "digest": {"sha256": digest_hex}}],
        "predicateType": CAPSULE_REVIEW_PREDICATE_TYPE,
        "predicate": {"reviewer": "publisher"},
    }))
    .unwrap()
}

fn tool(name: &str, module_sha256: [u8; 32]) -> ToolRef {
    ToolRef {
        tool: name.to_owned(),
        version: soma_release::Version::parse("1.0.0").unwrap(),
        module_sha256,
    }
}

struct Case {
    name: &'static str,
    request: pb::SubmitCapsuleRequest,
    expected: (Code, &'static str),
}

async fn rows(h: &Harness) -> [i64; 3] {
    [
        h.count("submissions").await,
        h.count("review_history").await,
        h.count("outbox").await,
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_attestation_refusal_has_its_reason_and_writes_nothing() {
    for stores in soma_testing::engine_stores(&[ServiceKind::ToolRegistry, ServiceKind::CapsuleRepo]).await {
        let h = Harness::start(&stores, None).await;
        let label = stores.label;
        let good = h.signer();
        let bundle = example();
        let digest_hex = bundle.digest_hex();

        // A publisher whose one key was retired; one never registered.
        let retired = Publisher::generate("retired-pub");
        h.registry.register(&retired).await;
        h.registry
            .client(OPERATOR)
            .retire_publisher_key(pb::RetirePublisherKeyRequest {
                key_id: retired.key_id.clone(),
                reason: "compromised".into(),
            })
            .await
            .unwrap();
        let stranger = signer_of(&Publisher::generate("stranger"));
        // A 2-of-3 publisher.
        let trio: Vec<Publisher> = (0..3).map(|_| Publisher::generate("trio")).collect();
        for key in &trio {
            h.registry.register(key).await;
        }
        let set = h
            .client(OPERATOR)
            .set_publisher_threshold(pb::SetPublisherThresholdRequest {
                publisher: "trio".into(),
                threshold: 2,
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((set.publisher.as_str(), set.threshold), ("trio", 2), "{label}");
        let trio: Vec<Ed25519Signer> = trio.iter().map(signer_of).collect();

        // Releases: one revoked, one absent, one of another module.
        h.registry
            .publish(
                h.publisher
                    .release("revoked-tool", "1.0.0", &common::registry::adapter("text_stats")),
            )
            .await
            .unwrap();
        h.revoke("revoked-tool", "1.0.0").await;
        let module = bundle.tools()[0].module_sha256;
        let missing = with_tools("1.0.1", &[tool("absent-tool", module)]);
        let revoked = with_tools("1.0.2", &[tool("revoked-tool", module)]);
        let other_module = with_tools("1.0.3", &[tool(common::TOOL, [7; 32])]);

        let other = example_at("9.9.9");
        let good_envelope = attest(&bundle, &[&good]);
        let mut over_other_payload = attest(&other, &[&good]);
        over_other_payload.payload = good_envelope.payload.clone();
        let mut twice = attest(&bundle, &[&trio[0]]);
        twice.signatures.push(twice.signatures[0].clone());

        let case = |name, bundle: &Bundle, envelope: DsseEnvelope, expected| Case {
            name,
            request: submit_request(bundle, &envelope),
            expected,
        };
        let cases = vec![
            case(
                "statement _type is not in-toto Statement v1",
                &bundle,
                sign_raw(
                    PAYLOAD_TYPE,
                    &statement("https://in-toto.io/Statement/v0.1", &digest_hex),
                    &[&good],
                ),
                (Code::InvalidArgument, "attestation_statement_type"),
            ),
            case(
                "payloadType is not in-toto",
                &bundle,
                sign_raw(
                    "application/json",
                    &statement(STATEMENT_TYPE, &digest_hex),
                    &[&good],
                ),
                (Code::InvalidArgument, "attestation_payload_type"),
            ),
            case(
                "subject digest is another bundle's",
                &bundle,
                sign_raw(
                    PAYLOAD_TYPE,
                    &statement(STATEMENT_TYPE, &other.digest_hex()),
                    &[&good],
                ),
                (Code::InvalidArgument, "attestation_subject_mismatch"),
            ),
            case(
                "signed by an unregistered key",
                &bundle,
                attest(&bundle, &[&stranger]),
                (Code::PermissionDenied, "attestation_key_unknown"),
            ),
            case(
                "signed by a retired key",
                &bundle,
                attest(&bundle, &[&signer_of(&retired)]),
                (Code::PermissionDenied, "attestation_key_retired"),
            ),
            case(
                "2-of-3 publisher, one signature",
                &bundle,
                attest(&bundle, &[&trio[0]]),
                (Code::PermissionDenied, "attestation_below_threshold"),
            ),
            case(
                "2-of-3 publisher, one key signing twice counts once",
                &bundle,
                twice,
                (Code::PermissionDenied, "attestation_below_threshold"),
            ),
            case(
                "signature over another payload",
                &bundle,
                over_other_payload,
                (Code::PermissionDenied, "attestation_signature_invalid"),
            ),
            case(
                "a pinned release is not in the registry",
                &missing,
                attest(&missing, &[&good]),
                (Code::FailedPrecondition, "release_missing"),
            ),
            case(
                "a pinned release is revoked",
                &revoked,
                attest(&revoked, &[&good]),
                (Code::FailedPrecondition, "release_revoked"),
            ),
            case(
                "a pinned release holds another module",
                &other_module,
                attest(&other_module, &[&good]),
                (Code::FailedPrecondition, "release_digest_mismatch"),
            ),
            Case {
                name: "capsule name differs from the bundle's",
                request: pb::SubmitCapsuleRequest {
                    capsule: "other".into(),
                    ..submit_request(&bundle, &good_envelope)
                },
                expected: (Code::InvalidArgument, "capsule_mismatch"),
            },
            Case {
                name: "bundle not canonical (a space added)",
                request: pb::SubmitCapsuleRequest {
                    bundle: [b" ".as_slice(), bundle.canonical_bytes()].concat(),
                    ..submit_request(&bundle, &good_envelope)
                },
                expected: (Code::InvalidArgument, "bundle_not_canonical"),
            },
            Case {
                name: "no attestation",
                request: pb::SubmitCapsuleRequest {
                    attestation: None,
                    ..submit_request(&bundle, &good_envelope)
                },
                expected: (Code::InvalidArgument, "attestation_missing"),
            },
        ];

        let before = rows(&h).await;
        for case in cases {
            let status = h
                .submit_request("acme", "alice@acme", case.request)
                .await
                .unwrap_err();
            assert_eq!(
                (status.code(), grpc_reason(&status)),
                case.expected,
                "{label}: {}: {status:?}",
                case.name
            );
            assert_eq!(
                rows(&h).await,
                before,
                "{label}: {}: a row was written",
                case.name
            );
        }

        // Malformed base64 exists only in the JSON form of an envelope (the
        // proto carries bytes): the JSON parser refuses it with its reason,
        // and nothing reaches the repository.
        let mut json: serde_json::Value = serde_json::from_slice(&good_envelope.to_json()).unwrap();
        json["signatures"][0]["sig"] = json!("not base64!");
        let err = soma_capsule::envelope_from_json(&serde_json::to_vec(&json).unwrap()).unwrap_err();
        assert_eq!(err.reason(), "attestation_malformed_base64", "{label}");
        assert_eq!(rows(&h).await, before, "{label}");

        // Without claims (an operator's SVID, not the gateway): refused.
        let status = h
            .client(OPERATOR)
            .submit_capsule(submit_request(&bundle, &good_envelope))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{label}: {status:?}");
        assert_eq!(rows(&h).await, before, "{label}");

        // Verified: stored with its provenance, one audit event.
        let submission = h
            .submit("acme", "alice@acme", &bundle, &good_envelope)
            .await
            .unwrap();
        assert_eq!(submission.tenant, "acme", "{label}");
        assert_eq!(submission.submitter, "alice@acme", "{label}");
        assert_eq!(submission.publisher, "acme-tools", "{label}");
        assert_eq!(
            submission.signer_key_ids,
            vec![h.publisher.key_id.clone()],
            "{label}"
        );
        assert_eq!(submission.source, "submission", "{label}");
        assert_eq!(submission.state, pb::SubmissionState::Pending as i32, "{label}");
        assert_eq!(submission.bundle_sha256, bundle.digest().to_vec(), "{label}");
        assert_eq!(submission.bundle, bundle.canonical_bytes(), "{label}");
        assert_eq!(submission.submission_id.len(), 32, "{label}");
        assert_eq!(
            rows(&h).await,
            [before[0] + 1, before[1], before[2] + 1],
            "{label}"
        );

        // The same capsule and version again: ALREADY_EXISTS, nothing written.
        let status = h
            .submit("acme", "alice@acme", &bundle, &good_envelope)
            .await
            .unwrap_err();
        assert_eq!(
            (status.code(), grpc_reason(&status)),
            (Code::AlreadyExists, "submission_exists"),
            "{label}"
        );
        // Another tenant holds its own ids and versions.
        h.submit("globex", "carol@globex", &bundle, &good_envelope)
            .await
            .unwrap();

        // 2 of 3 distinct keys meet the trio's threshold.
        let two = example_at("2.0.0");
        let submission = h
            .submit("acme", "alice@acme", &two, &attest(&two, &[&trio[0], &trio[1]]))
            .await
            .unwrap();
        assert_eq!(submission.publisher, "trio", "{label}");
        assert_eq!(submission.signer_key_ids.len(), 2, "{label}");

        // Keys of two publishers in one attestation: refused.
        let mixed = example_at("2.0.1");
        let status = h
            .submit(
                "acme",
                "alice@acme",
                &mixed,
                &attest(&mixed, &[&trio[0], &trio[1], &good]),
            )
            .await
            .unwrap_err();
        assert_eq!(
            (status.code(), grpc_reason(&status)),
            (Code::PermissionDenied, "attestation_publishers_mixed"),
            "{label}"
        );

        // The threshold is an operator's: a tenant's claims are refused.
        let status = h
            .gateway()
            .set_publisher_threshold(h.as_user(
                "acme",
                "alice@acme",
                pb::SetPublisherThresholdRequest {
                    publisher: "acme-tools".into(),
                    threshold: 1,
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{label}: {status:?}");

        // A threshold lowered in SQL (2 → 1) is not trusted: the row fails
        // its MAC, a one-signature attestation of the trio is refused
        // DATA_LOSS (never accepted at the lowered threshold), nothing is
        // written, and the sweep names the row.
        assert!(
            soma_capsule_repo::verify_store(&h.db, &h.keys())
                .await
                .unwrap()
                .failures
                .is_empty(),
            "{label}"
        );
        let lowered = soma_testing::exec(
            &h.db,
            "UPDATE publisher_thresholds SET threshold = 1 WHERE publisher = 'trio'",
        )
        .await;
        assert_eq!(lowered, 1, "{label}");
        let before = h.count("submissions").await;
        let one = example_at("9.9.9");
        let status = h
            .submit("acme", "alice@acme", &one, &attest(&one, &[&trio[0]]))
            .await
            .unwrap_err();
        assert_eq!(
            (status.code(), grpc_reason(&status)),
            (Code::DataLoss, "row_integrity"),
            "{label}: {status:?}"
        );
        assert_eq!(h.count("submissions").await, before, "{label}: nothing written");
        let report = soma_capsule_repo::verify_store(&h.db, &h.keys()).await.unwrap();
        assert!(
            report
                .failures
                .iter()
                .any(|f| (f.table.as_str(), f.primary_key.as_str()) == ("publisher_thresholds", "trio")),
            "{label}: {:?}",
            report.failures
        );

        h.stop().await;
        stores.cleanup().await;
    }
}
