//! The export of audit events verifies offline with the `soma` binary
//! (`soma verify export`), after two services appended audit events
//! concurrently with billing events, on SQLite and PostgreSQL; and the
//! store sweep checks the audit rows with the others. (Analytics' own
//! audit-event tests live in `services/analytics/tests/audit_events.rs`;
//! this one drives the binary.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use base64::Engine as _;
use common::{AnalyticsKeys, Ca, channel, start_analytics};
use soma_proto::v1 as pb;
use soma_proto::v1::analytics_client::AnalyticsClient;

fn ts(seconds: i64) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos: 0 })
}

fn audit(event_id: &str, tenant: &str) -> pb::RecordAuditEventRequest {
    pb::RecordAuditEventRequest {
        event_id: event_id.to_owned(),
        tenant: tenant.to_owned(),
        action: "release.publish".to_owned(),
        subject: format!("tool:summarize@1.2.{event_id}"),
        details: Some(prost_types::Struct {
            fields: [(
                "digest".to_owned(),
                prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue("sha256:ab".to_owned())),
                },
            )]
            .into_iter()
            .collect(),
        }),
        occurred_at: ts(1_790_000_000),
    }
}

fn billing(event_id: &str) -> pb::RecordBillingEventRequest {
    pb::RecordBillingEventRequest {
        event_id: event_id.to_owned(),
        tenant: "acme".to_owned(),
        tool: "summarize".to_owned(),
        tool_version: "1.2.0".to_owned(),
        amount: Some(pb::Money {
            currency: "EUR".to_owned(),
            micros: 1250,
        }),
        fuel_consumed: 1000,
        duration_micros: 2500,
        occurred_at: ts(1_790_000_000),
        run_id: format!("run-{event_id}"),
    }
}

async fn soma(args: &[&dyn AsRef<std::ffi::OsStr>]) -> (i32, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_soma"))
        .args(args)
        .output()
        .await
        .unwrap();
    (
        output.status.code().unwrap(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

#[tokio::test]
async fn an_audit_export_verifies_with_soma_verify_export() {
    for db in soma_store::testing::engines("analytics_audit_export_cli").await {
        let ca = Ca::new();
        let keys = AnalyticsKeys::generate();
        let svc = start_analytics(&ca, &db.settings, keys.config(), None).await;
        let client = |path: &str| {
            AnalyticsClient::new(channel(
                ca.store(path, std::time::Duration::from_secs(3600)),
                svc.addr,
                &svc.id,
            ))
        };
        let (registry, repo, mut operator) = (
            client("/svc/tool-registry"),
            client("/svc/capsule-repo"),
            client("/operator/auditor"),
        );

        let mut tasks = Vec::new();
        for i in 0..20 {
            let tenant = if i % 2 == 0 { "acme" } else { "" };
            let (mut r, mut c, mut b) = (registry.clone(), repo.clone(), registry.clone());
            let (a1, a2, bill) = (
                audit(&format!("reg-{i}"), tenant),
                audit(&format!("repo-{i}"), tenant),
                billing(&format!("bill-{i}")),
            );
            tasks.push(tokio::spawn(async move {
                r.record_audit_event(a1).await.unwrap().into_inner()
            }));
            tasks.push(tokio::spawn(async move {
                c.record_audit_event(a2).await.unwrap().into_inner()
            }));
            tasks.push(tokio::spawn(async move {
                b.record_billing_event(bill).await.unwrap().into_inner()
            }));
        }
        let mut indices: Vec<u64> = Vec::new();
        for task in tasks {
            indices.push(task.await.unwrap().ledger.unwrap().index);
        }
        indices.sort_unstable();
        assert_eq!(indices, (0..60).collect::<Vec<u64>>(), "{}", db.label);

        let key = operator
            .list_verification_keys(pb::ListVerificationKeysRequest {})
            .await
            .unwrap()
            .into_inner()
            .keys
            .remove(0);
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("analytics-1.pem");
        std::fs::write(&pem, &key.public_key_pem).unwrap();
        for (tenant, rows) in [("acme", 20), ("", 20)] {
            let mut stream = operator
                .export_audit_events(pb::ExportRequest {
                    tenant: tenant.to_owned(),
                    from: ts(1_789_000_000),
                    to: ts(1_791_000_000),
                    tool: String::new(),
                    service: String::new(),
                })
                .await
                .unwrap()
                .into_inner();
            let (mut bytes, mut signature) = (Vec::new(), None);
            while let Some(chunk) = stream.message().await.unwrap() {
                bytes.extend_from_slice(&chunk.data);
                signature = chunk.signature.or(signature);
            }
            let signature = signature.expect("a signature message");
            let document: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(document["kind"], "audit_events");
            assert_eq!(document["tenant"], tenant);
            assert_eq!(document["rows"].as_array().unwrap().len(), rows, "{}", db.label);

            let file = dir.path().join("audit.json");
            let sig = dir.path().join("audit.sig");
            std::fs::write(&file, &bytes).unwrap();
            std::fs::write(
                &sig,
                base64::engine::general_purpose::STANDARD.encode(&signature.signature),
            )
            .unwrap();
            let (code, output) = soma(&[
                &"verify",
                &"export",
                &file,
                &"--signature",
                &sig,
                &"--public-key",
                &pem,
            ])
            .await;
            assert_eq!(code, 0, "{}: tenant {tenant:?}: {output}", db.label);

            // One byte changed: refused.
            let last = bytes.len() - 3;
            bytes[last] ^= 1;
            std::fs::write(&file, &bytes).unwrap();
            let (code, output) = soma(&[
                &"verify",
                &"export",
                &file,
                &"--signature",
                &sig,
                &"--public-key",
                &pem,
            ])
            .await;
            assert_eq!(code, 1, "{}: tampered: {output}", db.label);
        }

        // The sweep (`VerifyStore`, what `soma verify store` runs) checks the
        // audit rows with the others.
        let report = operator
            .verify_store(pb::VerifyStoreRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(report.rows_checked, 60, "{}", db.label);
        assert!(report.failures.is_empty(), "{}: {:?}", db.label, report.failures);
        svc.stop().await;
    }
}
