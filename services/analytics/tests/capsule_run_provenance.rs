//! The provenance of a capsule run — the capsule version and bundle digest
//! that ran, the installation's environment and revision, the moderation
//! decision that admitted the input — through the real service over mTLS,
//! on SQLite and PostgreSQL.
//!
//! A run recorded with its provenance is exported with all five members in
//! a signed export, its leaf proven; a run recorded without (the form of
//! before) keeps exactly its old members. Provenance given in part, or
//! malformed, is refused naming the field, and nothing is written. Write
//! access to the database cannot change, blank or add provenance: the
//! sweep names the row and the tenant's export is refused.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::export::{Collected, Env, collect, event_ids, window};
use common::{OCCURRED_AT, blob, capsule_run_of, tamper, verify_proof};
use serde_json::json;
use soma_proto::v1 as pb;
use soma_proto::v1::analytics_client::AnalyticsClient;
use soma_testing::{TD, grpc_reason as reason};
use tonic::Code;
use tonic::transport::Channel;

/// A bundle digest.
const BUNDLE: [u8; 32] = [0x5a; 32];

/// A run of acme with its provenance.
fn attributed(event_id: &str) -> pb::RecordCapsuleRunRequest {
    pb::RecordCapsuleRunRequest {
        capsule_version: "1.0.0".to_owned(),
        bundle_sha256: BUNDLE.to_vec(),
        environment: "production".to_owned(),
        installation_revision: 3,
        moderation_decision_id: "mod_01hzzzzzzzzzzzzzzzzzzzzzzz".to_owned(),
        ..capsule_run_of(event_id, "acme", "text-stats", OCCURRED_AT)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `tenant`'s capsule-run export of the runs' minute, as an operator asks.
async fn export(operator: &mut AnalyticsClient<Channel>, tenant: &str) -> Collected {
    let stream = operator
        .export_capsule_runs(window(tenant, OCCURRED_AT - 60, OCCURRED_AT + 60))
        .await
        .unwrap()
        .into_inner();
    collect(stream).await
}

async fn tree_size(operator: &mut AnalyticsClient<Channel>) -> u64 {
    operator
        .ledger_checkpoint(pb::LedgerCheckpointRequest {})
        .await
        .unwrap()
        .into_inner()
        .tree_size
}

#[tokio::test]
async fn a_run_is_exported_with_its_provenance_and_a_run_without_keeps_its_old_members() {
    for db in soma_store::testing::engines("capsule_run_provenance").await {
        let label = db.label;
        let env = Env::start(&db.settings, None).await;
        let mut gateway = env.client("/svc/gateway");
        gateway
            .record_capsule_run(capsule_run_of("r-old", "acme", "text-stats", OCCURRED_AT))
            .await
            .unwrap();
        gateway.record_capsule_run(attributed("r-new")).await.unwrap();
        // A retry of the same run is the same record.
        gateway.record_capsule_run(attributed("r-new")).await.unwrap();

        let mut operator = env.client("/operator/auditor");
        let collected = export(&mut operator, "acme").await;
        let document = collected.document();
        let (bytes, signature, _) = collected.signed();
        let key =
            soma_sign::ed25519_public_key_from_pem(&env.verification_key().await.public_key_pem).unwrap();
        soma_sign::verify_ed25519_strict(&key, &bytes, &signature.signature).unwrap();
        assert_eq!(event_ids(&document), ["r-old", "r-new"], "{label}");
        let rows = document["rows"].as_array().unwrap();
        let recorded_by = format!("spiffe://{TD}/svc/gateway");
        assert_eq!(
            rows[0],
            json!({
                "event_id": "r-old",
                "ledger_index": 0,
                "tenant": "acme",
                "capsule_id": "capsule-1",
                "tool": "text-stats",
                "run_id": "run-r-old",
                "outcome": "succeeded",
                "started_at": "2026-09-21T14:13:20.000000000Z",
                "duration_nanos": 2_000_000_500,
                "recorded_by": recorded_by,
            }),
            "{label}: the members of before, and no other"
        );
        assert_eq!(
            rows[1],
            json!({
                "event_id": "r-new",
                "ledger_index": 1,
                "tenant": "acme",
                "capsule_id": "capsule-1",
                "tool": "text-stats",
                "run_id": "run-r-new",
                "outcome": "succeeded",
                "started_at": "2026-09-21T14:13:20.000000000Z",
                "duration_nanos": 2_000_000_500,
                "recorded_by": recorded_by,
                "capsule_version": "1.0.0",
                "bundle_sha256": hex(&BUNDLE),
                "environment": "production",
                "installation_revision": 3,
                "moderation_decision_id": "mod_01hzzzzzzzzzzzzzzzzzzzzzzz",
            }),
            "{label}"
        );
        // Both leaves are in the tree the export is bound to.
        let checkpoint = operator
            .ledger_checkpoint(pb::LedgerCheckpointRequest {})
            .await
            .unwrap()
            .into_inner();
        let tree_size = checkpoint.tree_size;
        let root = checkpoint.root_hash;
        assert_eq!(document["checkpoint"]["tree_size"], tree_size, "{label}");
        assert_eq!(tree_size, 2, "{label}");
        for id in ["r-old", "r-new"] {
            let proof = common::inclusion_proof(&mut operator, id, tree_size).await;
            verify_proof(&proof, tree_size, &root);
        }
        let swept = operator
            .verify_store(pb::VerifyStoreRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!((swept.rows_checked, swept.failures.len()), (2, 0), "{label}");
        env.svc.stop().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn provenance_in_part_or_malformed_is_refused_naming_its_field() {
    struct Case {
        name: &'static str,
        request: pb::RecordCapsuleRunRequest,
        field: &'static str,
    }
    let with = |change: fn(&mut pb::RecordCapsuleRunRequest)| {
        let mut request = attributed("r-bad");
        change(&mut request);
        request
    };
    let cases = [
        Case {
            name: "no revision",
            request: with(|r| r.installation_revision = 0),
            field: "installation_revision",
        },
        Case {
            name: "no capsule version",
            request: with(|r| r.capsule_version.clear()),
            field: "capsule_version",
        },
        Case {
            name: "a version that is not SemVer",
            request: with(|r| r.capsule_version = "1.0 beta".to_owned()),
            field: "capsule_version",
        },
        Case {
            name: "a digest of 31 bytes",
            request: with(|r| r.bundle_sha256 = vec![1; 31]),
            field: "bundle_sha256",
        },
        Case {
            name: "no digest",
            request: with(|r| r.bundle_sha256.clear()),
            field: "bundle_sha256",
        },
        Case {
            name: "no environment",
            request: with(|r| r.environment.clear()),
            field: "environment",
        },
        Case {
            name: "an environment with a space",
            request: with(|r| r.environment = "prod uction".to_owned()),
            field: "environment",
        },
        Case {
            name: "no moderation decision",
            request: with(|r| r.moderation_decision_id.clear()),
            field: "moderation_decision_id",
        },
        Case {
            name: "only a decision",
            request: pb::RecordCapsuleRunRequest {
                moderation_decision_id: "mod_1".to_owned(),
                ..capsule_run_of("r-bad", "acme", "text-stats", OCCURRED_AT)
            },
            field: "installation_revision",
        },
    ];
    for db in soma_store::testing::engines("capsule_run_provenance_refused").await {
        let env = Env::start(&db.settings, None).await;
        let mut gateway = env.client("/svc/gateway");
        let mut operator = env.client("/operator/auditor");
        for case in &cases {
            let label = format!("{}: {}", db.label, case.name);
            let refused = gateway
                .record_capsule_run(case.request.clone())
                .await
                .unwrap_err();
            assert_eq!(refused.code(), Code::InvalidArgument, "{label}: {refused:?}");
            assert_eq!(reason(&refused), "invalid_argument", "{label}");
            assert!(
                refused.message().starts_with(&format!("{}: ", case.field)),
                "{label}: {}",
                refused.message()
            );
            assert_eq!(tree_size(&mut operator).await, 0, "{label}: nothing written");
        }
        env.svc.stop().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn provenance_changed_blanked_or_added_in_sql_is_caught_naming_the_row() {
    struct Case {
        name: &'static str,
        /// The tampering; `DIGEST` stands for another bundle's digest.
        sql: &'static str,
        /// The row it hits, and its ledger index.
        victim: (&'static str, u64),
    }
    let cases = [
        Case {
            name: "environment changed",
            sql: "UPDATE capsule_runs SET environment = 'staging' WHERE event_id = 'r-new'",
            victim: ("r-new", 1),
        },
        Case {
            name: "revision changed",
            sql: "UPDATE capsule_runs SET installation_revision = 2 WHERE event_id = 'r-new'",
            victim: ("r-new", 1),
        },
        Case {
            name: "bundle digest changed",
            sql: "UPDATE capsule_runs SET bundle_sha256 = DIGEST WHERE event_id = 'r-new'",
            victim: ("r-new", 1),
        },
        Case {
            name: "moderation decision changed",
            sql: "UPDATE capsule_runs SET moderation_decision_id = 'mod_other' WHERE event_id = 'r-new'",
            victim: ("r-new", 1),
        },
        Case {
            name: "provenance blanked at row version 1: a new run passed off as an old one",
            sql: "UPDATE capsule_runs SET capsule_version = NULL, bundle_sha256 = NULL, environment = NULL, \
                  installation_revision = NULL, moderation_decision_id = NULL, row_version = 1 \
                  WHERE event_id = 'r-new'",
            victim: ("r-new", 1),
        },
        Case {
            name: "provenance added to an old run at row version 2",
            sql: "UPDATE capsule_runs SET capsule_version = '1.0.0', bundle_sha256 = DIGEST, \
                  environment = 'production', installation_revision = 1, moderation_decision_id = 'mod_1', \
                  row_version = 2 WHERE event_id = 'r-old'",
            victim: ("r-old", 0),
        },
    ];
    for case in &cases {
        for db in soma_store::testing::engines("capsule_run_provenance_tamper").await {
            let label = format!("{}: {}", db.label, case.name);
            let env = Env::start(&db.settings, None).await;
            let mut gateway = env.client("/svc/gateway");
            gateway
                .record_capsule_run(capsule_run_of("r-old", "acme", "text-stats", OCCURRED_AT))
                .await
                .unwrap();
            gateway.record_capsule_run(attributed("r-new")).await.unwrap();
            let sql = env.sql(&db).await;
            let other = blob(&sql, &[0x11; 32]);
            tamper(&sql, &case.sql.replace("DIGEST", &other)).await;
            let (victim, index) = case.victim;

            let mut operator = env.client("/operator/auditor");
            let swept = operator
                .verify_store(pb::VerifyStoreRequest {})
                .await
                .unwrap()
                .into_inner();
            assert_eq!(swept.failures.len(), 1, "{label}: {:?}", swept.failures);
            let failure = &swept.failures[0];
            assert_eq!(
                (failure.table.as_str(), failure.primary_key.as_str()),
                ("capsule_runs", victim),
                "{label}"
            );
            assert!(
                failure.reason.contains(&format!("ledger index {index}")),
                "{label}: {}",
                failure.reason
            );
            let refused = export(&mut operator, "acme").await;
            let status = refused
                .error
                .as_ref()
                .unwrap_or_else(|| panic!("{label}: the export must be refused"));
            assert_eq!(status.code(), Code::DataLoss, "{label}: {status:?}");
            assert!(
                status.message().contains(&format!("capsule_runs/{victim}")),
                "{label}: {}",
                status.message()
            );
            assert!(refused.signature.is_none(), "{label}: no signature");
            sql.close().await;
            env.svc.stop().await;
            db.cleanup().await;
        }
    }
}
