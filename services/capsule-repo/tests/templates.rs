//! ImportTemplate: only an attestation the operator-pinned catalogue's keys
//! verify (at its threshold) imports, as a PENDING submission recording its
//! source; an unknown catalogue, another key, a tampered bundle or a
//! missing release are refused with their reasons and write nothing; with
//! no catalogues file every import is refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Harness, attest, envelope_proto, example, example_at, with_tools};
use soma_capsule::{Bundle, ToolRef};
use soma_mesh::ServiceKind;
use soma_proto::v1 as pb;
use soma_sign::{DsseEnvelope, Ed25519Signer, KeyId};
use soma_testing::grpc_reason;
use tonic::Code;

fn import(catalogue: &str, bundle: &[u8], envelope: &DsseEnvelope) -> pb::ImportTemplateRequest {
    pb::ImportTemplateRequest {
        template: "text-stats-starter".into(),
        bundle: bundle.to_vec(),
        attestation: Some(envelope_proto(envelope)),
        catalogue: catalogue.into(),
    }
}

async fn rows(h: &Harness) -> [i64; 2] {
    [h.count("submissions").await, h.count("outbox").await]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_templates_the_pinned_catalogue_signed_are_imported() {
    let (catalogue_key, _) = Ed25519Signer::generate(KeyId::new("mao").unwrap()).unwrap();
    let catalogues = serde_json::json!({"catalogues": [
        {"name": "mao", "threshold": 1, "public_keys_pem": [catalogue_key.public_key_pem()]}
    ]})
    .to_string();
    for stores in soma_testing::engine_stores(&[ServiceKind::ToolRegistry, ServiceKind::CapsuleRepo]).await {
        let h = Harness::start(&stores, Some(catalogues.as_bytes())).await;
        let label = stores.label;
        let bundle = example();
        let signed = attest(&bundle, &[&catalogue_key]);
        let other = example_at("3.0.0");
        let module = bundle.tools()[0].module_sha256;
        let missing: Bundle = with_tools(
            "3.1.0",
            &[ToolRef {
                tool: "absent-tool".into(),
                version: soma_release::Version::parse("1.0.0").unwrap(),
                module_sha256: module,
            }],
        );

        let cases: Vec<(&str, pb::ImportTemplateRequest, (Code, &str))> = vec![
            (
                "unknown catalogue",
                import("elsewhere", bundle.canonical_bytes(), &signed),
                (Code::PermissionDenied, "catalogue_unknown"),
            ),
            (
                "signed by a registered publisher, not the catalogue",
                import("mao", bundle.canonical_bytes(), &attest(&bundle, &[&h.signer()])),
                (Code::PermissionDenied, "attestation_key_unknown"),
            ),
            (
                "bundle replaced after signing",
                import("mao", other.canonical_bytes(), &signed),
                (Code::InvalidArgument, "attestation_subject_mismatch"),
            ),
            (
                "bundle bytes not canonical",
                import("mao", &[bundle.canonical_bytes(), b"\n"].concat(), &signed),
                (Code::InvalidArgument, "bundle_not_canonical"),
            ),
            (
                "a pinned release is not in the registry",
                import(
                    "mao",
                    missing.canonical_bytes(),
                    &attest(&missing, &[&catalogue_key]),
                ),
                (Code::FailedPrecondition, "release_missing"),
            ),
        ];
        let before = rows(&h).await;
        for (name, request, expected) in cases {
            let status = h
                .gateway()
                .import_template(h.as_user("acme", "alice@acme", request))
                .await
                .unwrap_err();
            assert_eq!(
                (status.code(), grpc_reason(&status)),
                expected,
                "{label}: {name}: {status:?}"
            );
            assert_eq!(rows(&h).await, before, "{label}: {name}: a row was written");
        }

        let imported = h
            .gateway()
            .import_template(h.as_user(
                "acme",
                "alice@acme",
                import("mao", bundle.canonical_bytes(), &signed),
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(imported.state, pb::SubmissionState::Pending as i32, "{label}");
        assert_eq!(imported.source, "template:mao/text-stats-starter", "{label}");
        assert_eq!(imported.publisher, "catalogue:mao", "{label}");
        assert_eq!(imported.tenant, "acme", "{label}");
        assert_eq!(imported.submitter, "alice@acme", "{label}");
        assert_eq!(
            imported.bundle_sha256,
            soma_sign::sha256(bundle.canonical_bytes()).to_vec(),
            "{label}"
        );
        assert_eq!(
            imported.signer_key_ids,
            vec![soma_release::publisher_key_id(&catalogue_key.public_key())],
            "{label}"
        );
        assert_eq!(rows(&h).await, [before[0] + 1, before[1] + 1], "{label}");

        // A replica with no catalogues file: every import is refused.
        let (replica, mut bare) = h.replica(stores.of(ServiceKind::CapsuleRepo)).await;
        let status = bare
            .import_template(h.as_user(
                "acme",
                "alice@acme",
                import("mao", other.canonical_bytes(), &attest(&other, &[&catalogue_key])),
            ))
            .await
            .unwrap_err();
        assert_eq!(
            (status.code(), grpc_reason(&status)),
            (Code::PermissionDenied, "catalogue_unknown"),
            "{label}"
        );
        replica.stop().await;
        h.stop().await;
        stores.cleanup().await;
    }
}
