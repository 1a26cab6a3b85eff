//! Audit events (`RecordAuditEvent`, `ExportAuditEvents`) through the real
//! service over mTLS, on SQLite and PostgreSQL: appended by two services
//! concurrently with billing events into one contiguous ledger, every row
//! verifying; tampering in SQL caught by the sweep; refused to tenants,
//! to callers the policy does not list, and for bad input, each with its
//! reason; exported tenant-scoped and signed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;

use common::export::{collect, window};
use common::{
    AnalyticsKeys, analytics_config, audit, billing, client, database, inclusion_proof, start_analytics, ts,
    verify_proof,
};
use soma_auth::ClaimsSigner;
use soma_ledger::CheckpointVerifier;
use soma_proto::v1 as pb;
use soma_testing::{Ca, exec, grpc_reason, scalar_text, tenant_request};
use tonic::Code;

const ACTIONS: [&str; 4] = [
    "release.publish",
    "release.revoke",
    "review.approve",
    "key.rotate",
];

#[tokio::test]
async fn audit_events_from_two_services_and_billing_events_share_one_contiguous_verified_ledger() {
    for db in soma_store::testing::engines("analytics_audit_ledger").await {
        let ca = Ca::new();
        let (claims, _) = ClaimsSigner::generate("gateway-1").unwrap();
        let config = analytics_config();
        let signer = soma_sign::Ed25519Signer::from_pkcs8_pem(
            soma_sign::KeyId::new("analytics-1").unwrap(),
            &config.signing_key_pem,
        )
        .unwrap();
        let verifier = CheckpointVerifier::new(config.ledger_origin.clone(), &signer.public_key()).unwrap();
        let svc = start_analytics(&ca, &db.settings, config, Some(&claims)).await;
        let registry = client(&ca, &svc, "/svc/tool-registry");
        let repo = client(&ca, &svc, "/svc/capsule-repo");
        let mut operator = client(&ca, &svc, "/operator/auditor");

        // 3 × 30 appends at once: two services' audit events (half of them
        // platform-wide) and the registry's billing events.
        const EACH: usize = 30;
        let mut tasks = Vec::new();
        for i in 0..EACH {
            let tenant = if i % 2 == 0 { "acme" } else { "" };
            let action = ACTIONS[i % ACTIONS.len()];
            let mut c = registry.clone();
            let request = audit(
                &format!("reg-audit-{i}"),
                tenant,
                action,
                1_790_000_000 + i as i64,
            );
            tasks.push(tokio::spawn(async move { c.record_audit_event(request).await }));
            let mut c = repo.clone();
            let request = audit(
                &format!("repo-audit-{i}"),
                tenant,
                action,
                1_790_000_000 + i as i64,
            );
            tasks.push(tokio::spawn(async move { c.record_audit_event(request).await }));
            let mut c = registry.clone();
            let request = billing(&format!("bill-{i}"), "acme", 1000 + i as i64);
            tasks.push(tokio::spawn(async move { c.record_billing_event(request).await }));
        }
        let mut indices = BTreeSet::new();
        let mut entries = Vec::new();
        for task in tasks {
            let response = task.await.unwrap().unwrap().into_inner();
            let ledger = response.ledger.unwrap();
            assert!(
                indices.insert(ledger.index),
                "{}: index {} twice",
                db.label,
                ledger.index
            );
            entries.push((response.event_id, ledger));
        }
        let total = (3 * EACH) as u64;
        assert_eq!(
            indices,
            (0..total).collect::<BTreeSet<_>>(),
            "{}: indices are contiguous",
            db.label
        );

        // Every row verifies: the sweep (over the RPC and the library) and,
        // for each audit event, its inclusion proof against the signed
        // checkpoint.
        let latest = operator
            .ledger_checkpoint(pb::LedgerCheckpointRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(latest.tree_size, total, "{}", db.label);
        verifier.verify(&latest.note).unwrap();
        let report = operator
            .verify_store(pb::VerifyStoreRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(report.rows_checked, total, "{}", db.label);
        assert!(report.failures.is_empty(), "{}: {:?}", db.label, report.failures);
        for (event_id, ledger) in entries.iter().filter(|(id, _)| id.contains("audit")) {
            let proof = inclusion_proof(&mut operator, event_id, 0).await;
            assert_eq!(proof.leaf_index, ledger.index);
            assert_eq!(proof.leaf_hash, ledger.leaf_hash);
            verify_proof(&proof, proof.tree_size, &latest.root_hash);
        }

        // The actor is the caller's SPIFFE ID, whatever the body says; a
        // platform-wide event has no tenant.
        let sql = database(&db.settings).await;
        assert_eq!(
            scalar_text(
                &sql,
                "SELECT actor FROM audit_events WHERE event_id = 'repo-audit-3'"
            )
            .await,
            format!("spiffe://{}/svc/capsule-repo", soma_testing::TD)
        );
        assert_eq!(
            scalar_text(
                &sql,
                "SELECT tenant FROM audit_events WHERE event_id = 'repo-audit-3'"
            )
            .await,
            ""
        );

        // Idempotent: a retry gets the same entry; other content under the
        // same id is refused and writes nothing.
        let mut c = registry.clone();
        let again = c
            .record_audit_event(audit("reg-audit-4", "acme", ACTIONS[0], 1_790_000_004))
            .await
            .unwrap()
            .into_inner();
        let first = entries.iter().find(|(id, _)| id == "reg-audit-4").unwrap();
        assert_eq!(again.ledger.as_ref(), Some(&first.1), "{}", db.label);
        let refused = c
            .record_audit_event(audit("reg-audit-4", "acme", "release.revoke", 1_790_000_004))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::AlreadyExists, "{}", db.label);
        assert_eq!(grpc_reason(&refused), "event_id_conflict");
        let after = operator
            .ledger_checkpoint(pb::LedgerCheckpointRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(after.tree_size, total, "{}", db.label);
        sql.close().await;
        svc.stop().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn an_audit_row_tampered_in_sql_is_caught_by_the_sweep() {
    struct Case {
        name: &'static str,
        sql: &'static str,
        event_id: &'static str,
        expected: &'static str,
    }
    let cases = [
        Case {
            name: "action rewritten",
            sql: "UPDATE audit_events SET action = 'release.publish' WHERE event_id = 'a-1'",
            event_id: "a-1",
            expected: "row mac",
        },
        Case {
            name: "details rewritten",
            sql: "UPDATE audit_events SET details = '{\"attempt\":4}' WHERE event_id = 'a-2'",
            event_id: "a-2",
            expected: "row mac",
        },
        Case {
            name: "actor rewritten",
            sql: "UPDATE audit_events SET actor = 'spiffe://somastack.test/svc/gateway' WHERE event_id = 'a-3'",
            event_id: "a-3",
            expected: "row mac",
        },
        Case {
            name: "moved to another tenant",
            sql: "UPDATE audit_events SET tenant = 'globex' WHERE event_id = 'a-4'",
            event_id: "a-4",
            expected: "row mac",
        },
        Case {
            name: "details not JSON",
            sql: "UPDATE audit_events SET details = 'not json' WHERE event_id = 'a-5'",
            event_id: "a-5",
            expected: "",
        },
    ];
    for db in soma_store::testing::engines("analytics_audit_tamper").await {
        let ca = Ca::new();
        let (claims, _) = ClaimsSigner::generate("gateway-1").unwrap();
        let keys = AnalyticsKeys::generate();
        let svc = start_analytics(&ca, &db.settings, keys.config(), Some(&claims)).await;
        // The service's database and row keys, to sweep it directly.
        let (sql, row_keys) = (database(&db.settings).await, keys.row_keys());
        let mut repo = client(&ca, &svc, "/svc/capsule-repo");
        for i in 0..6 {
            repo.record_audit_event(audit(&format!("a-{i}"), "acme", "release.revoke", 1_790_000_000))
                .await
                .unwrap();
        }
        let clean = soma_analytics::verify_store(&sql, &row_keys).await.unwrap();
        assert!(clean.failures.is_empty(), "{}: {:?}", db.label, clean.failures);

        for case in &cases {
            assert_eq!(exec(&sql, case.sql).await, 1, "{}: {}", db.label, case.name);
            let result = soma_analytics::verify_store(&sql, &row_keys).await;
            if case.expected.is_empty() {
                // A row that does not parse cannot be swept row by row: the
                // sweep fails as a whole, naming the row.
                let error = result.unwrap_err();
                assert!(
                    matches!(&error, soma_analytics::AnalyticsError::RowIntegrity { table: "audit_events", primary_key } if primary_key == case.event_id),
                    "{}: {}: {error:?}",
                    db.label,
                    case.name
                );
                continue;
            }
            let report = result.unwrap();
            let failure = report
                .failures
                .iter()
                .find(|f| f.primary_key == case.event_id)
                .unwrap_or_else(|| panic!("{}: {}: not caught: {:?}", db.label, case.name, report.failures));
            assert_eq!(failure.table, "audit_events", "{}: {}", db.label, case.name);
            assert!(
                failure.reason.starts_with(case.expected),
                "{}: {}: {}",
                db.label,
                case.name,
                failure.reason
            );
        }
        sql.close().await;
        svc.stop().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn tenants_unlisted_callers_and_bad_input_are_refused_with_their_reason() {
    for db in soma_store::testing::engines("analytics_audit_refusals").await {
        let ca = Ca::new();
        let (claims, _) = ClaimsSigner::generate("gateway-1").unwrap();
        let svc = start_analytics(&ca, &db.settings, analytics_config(), Some(&claims)).await;

        // Who may call: a tenant's claims never reach it (even with every
        // capability the edge knows), nor an operator or another workload.
        let every_capability = [
            "analytics:ingest",
            "analytics:export",
            "analytics:cross-tenant",
            "ops:store-verify",
            "ledger:read",
        ];
        let mut gateway = client(&ca, &svc, "/svc/gateway");
        let denied = gateway
            .record_audit_event(tenant_request(
                &claims,
                &svc.id,
                "acme",
                &every_capability,
                audit("t-1", "acme", "release.publish", 1_790_000_000),
            ))
            .await
            .unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied, "{}", db.label);
        assert_eq!(grpc_reason(&denied), "insufficient_scope", "{}", db.label);
        for path in ["/operator/auditor", "/svc/worker", "/tenant/acme"] {
            let denied = client(&ca, &svc, path)
                .record_audit_event(audit("t-2", "", "key.rotate", 1_790_000_000))
                .await
                .unwrap_err();
            assert_eq!(denied.code(), Code::PermissionDenied, "{}: {path}", db.label);
            assert_eq!(grpc_reason(&denied), "caller_not_allowed", "{}: {path}", db.label);
        }

        // What may be recorded: every hostile field refused, naming it.
        struct Case {
            name: &'static str,
            request: pb::RecordAuditEventRequest,
            field: &'static str,
        }
        let ok = || audit("e-1", "acme", "release.publish", 1_790_000_000);
        let number = |n: f64| prost_types::Struct {
            fields: [(
                "n".to_owned(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::NumberValue(n)),
                },
            )]
            .into_iter()
            .collect(),
        };
        let nested = (0..20).fold(prost_types::Struct::default(), |inner, _| prost_types::Struct {
            fields: [(
                "x".to_owned(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StructValue(inner)),
                },
            )]
            .into_iter()
            .collect(),
        });
        let big = prost_types::Struct {
            fields: [(
                "blob".to_owned(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue("x".repeat(17 * 1024))),
                },
            )]
            .into_iter()
            .collect(),
        };
        let cases = [
            Case {
                name: "no event id",
                request: pb::RecordAuditEventRequest {
                    event_id: String::new(),
                    ..ok()
                },
                field: "event_id",
            },
            Case {
                name: "event id with a slash",
                request: pb::RecordAuditEventRequest {
                    event_id: "a/b".to_owned(),
                    ..ok()
                },
                field: "event_id",
            },
            Case {
                name: "tenant with a space",
                request: pb::RecordAuditEventRequest {
                    tenant: "ac me".to_owned(),
                    ..ok()
                },
                field: "tenant",
            },
            Case {
                name: "no action",
                request: pb::RecordAuditEventRequest {
                    action: String::new(),
                    ..ok()
                },
                field: "action",
            },
            Case {
                name: "no subject",
                request: pb::RecordAuditEventRequest {
                    subject: String::new(),
                    ..ok()
                },
                field: "subject",
            },
            Case {
                name: "subject with a newline",
                request: pb::RecordAuditEventRequest {
                    subject: "tool\nforged line".to_owned(),
                    ..ok()
                },
                field: "subject",
            },
            Case {
                name: "details with NaN",
                request: pb::RecordAuditEventRequest {
                    details: Some(number(f64::NAN)),
                    ..ok()
                },
                field: "details",
            },
            Case {
                name: "details with infinity",
                request: pb::RecordAuditEventRequest {
                    details: Some(number(f64::INFINITY)),
                    ..ok()
                },
                field: "details",
            },
            Case {
                name: "details nested 20 deep",
                request: pb::RecordAuditEventRequest {
                    details: Some(nested),
                    ..ok()
                },
                field: "details",
            },
            Case {
                name: "details over 16 KiB",
                request: pb::RecordAuditEventRequest {
                    details: Some(big),
                    ..ok()
                },
                field: "details",
            },
            Case {
                name: "no time",
                request: pb::RecordAuditEventRequest {
                    occurred_at: None,
                    ..ok()
                },
                field: "occurred_at",
            },
            Case {
                name: "time out of range",
                request: pb::RecordAuditEventRequest {
                    occurred_at: ts(i64::MAX),
                    ..ok()
                },
                field: "occurred_at",
            },
        ];
        let mut registry = client(&ca, &svc, "/svc/tool-registry");
        for case in cases {
            let refused = registry.record_audit_event(case.request).await.unwrap_err();
            assert_eq!(
                refused.code(),
                Code::InvalidArgument,
                "{}: {}",
                db.label,
                case.name
            );
            assert_eq!(
                grpc_reason(&refused),
                "invalid_argument",
                "{}: {}",
                db.label,
                case.name
            );
            assert!(
                refused.message().starts_with(&format!("{}: ", case.field)),
                "{}: {}: {}",
                db.label,
                case.name,
                refused.message()
            );
        }
        let sql = database(&db.settings).await;
        assert_eq!(
            scalar_text(&sql, "SELECT CAST(COUNT(*) AS TEXT) FROM audit_events").await,
            "0",
            "{}",
            db.label
        );
        sql.close().await;
        svc.stop().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn audit_exports_are_tenant_scoped_and_signed() {
    for db in soma_store::testing::engines("analytics_audit_export").await {
        let ca = Ca::new();
        let (claims, _) = ClaimsSigner::generate("gateway-1").unwrap();
        let svc = start_analytics(&ca, &db.settings, analytics_config(), Some(&claims)).await;
        let mut repo = client(&ca, &svc, "/svc/capsule-repo");
        for (id, tenant) in [
            ("x-acme-1", "acme"),
            ("x-globex", "globex"),
            ("x-platform", ""),
            ("x-acme-2", "acme"),
        ] {
            repo.record_audit_event(audit(id, tenant, "install.create", 1_790_000_000))
                .await
                .unwrap();
        }
        let keys = client(&ca, &svc, "/operator/auditor")
            .list_verification_keys(pb::ListVerificationKeysRequest {})
            .await
            .unwrap()
            .into_inner();
        let public_key = soma_sign::ed25519_public_key_from_pem(&keys.keys[0].public_key_pem).unwrap();
        let window = |tenant: &str| window(tenant, 1_789_000_000, 1_791_000_000);
        let ids = |bytes: &[u8]| -> Vec<String> {
            let doc: serde_json::Value = serde_json::from_slice(bytes).unwrap();
            assert_eq!(doc["kind"], "audit_events");
            doc["rows"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["event_id"].as_str().unwrap().to_owned())
                .collect()
        };

        // A tenant through the gateway: its own events only, whatever it asks.
        let mut gateway = client(&ca, &svc, "/svc/gateway");
        let stream = gateway
            .export_audit_events(tenant_request(
                &claims,
                &svc.id,
                "acme",
                &["analytics:export"],
                window(""),
            ))
            .await
            .unwrap()
            .into_inner();
        let (bytes, signature, _) = collect(stream).await.signed();
        soma_sign::verify_ed25519_strict(&public_key, &bytes, &signature.signature).unwrap();
        assert_eq!(ids(&bytes), ["x-acme-1", "x-acme-2"], "{}", db.label);
        let denied = gateway
            .export_audit_events(tenant_request(
                &claims,
                &svc.id,
                "acme",
                &["analytics:export"],
                window("globex"),
            ))
            .await
            .unwrap_err();
        assert_eq!(denied.code(), Code::PermissionDenied, "{}", db.label);
        // A tenant's claims never read another tenant: that takes an operator.
        assert_eq!(grpc_reason(&denied), "operator_required", "{}", db.label);

        // An operator: the tenant it names, or the platform-wide events.
        let mut operator = client(&ca, &svc, "/operator/auditor");
        for (tenant, expected) in [("globex", vec!["x-globex"]), ("", vec!["x-platform"])] {
            let stream = operator
                .export_audit_events(window(tenant))
                .await
                .unwrap()
                .into_inner();
            let (bytes, signature, _) = collect(stream).await.signed();
            soma_sign::verify_ed25519_strict(&public_key, &bytes, &signature.signature).unwrap();
            assert_eq!(ids(&bytes), expected, "{}: tenant {tenant:?}", db.label);
        }

        // Audit events have no tool to filter by.
        let refused = operator
            .export_audit_events(pb::ExportRequest {
                tool: "summarize".to_owned(),
                ..window("acme")
            })
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Code::InvalidArgument, "{}", db.label);
        assert_eq!(grpc_reason(&refused), "invalid_argument", "{}", db.label);
        svc.stop().await;
        db.cleanup().await;
    }
}
