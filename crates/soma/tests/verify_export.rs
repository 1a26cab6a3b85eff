//! `soma verify export`, the real binary against exports of a real
//! Analytics service over mTLS, on SQLite and PostgreSQL: a billing export
//! that is exactly a tenant's window, verified by three independent
//! verifiers (soma-sign, Python `cryptography`, the binary) and bound to a
//! checkpoint that verifies, with every unusable input given its own exit
//! status; and the export of audit events appended by two services
//! concurrently with billing events, which the store sweep checks with the
//! others. (Analytics' own export and audit-event tests live in
//! `services/analytics/tests/`; these drive the binary.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::ffi::OsStr;
use std::path::Path;

use base64::Engine as _;
use common::analytics::export::{Env, Kind, collect, event_ids, window};
use common::analytics::{
    AnalyticsKeys, OCCURRED_AT, audit, billing, billing_of, capsule_run_of, client, start_analytics, ts,
    ts_nanos,
};
use soma_ledger::CheckpointVerifier;
use soma_proto::v1 as pb;
use soma_testing::{Ca, python};

/// Start of the test window: 2026-09-21T14:13:20Z.
const T0: i64 = 1_790_000_000;
/// The window is one hour.
const WINDOW: i64 = 3600;

/// Runs a command and returns (exit code, stdout, stderr).
async fn run(program: &Path, args: &[&dyn AsRef<OsStr>]) -> (i32, String, String) {
    let output = tokio::process::Command::new(program)
        .args(args)
        .output()
        .await
        .unwrap();
    (
        output.status.code().unwrap(),
        String::from_utf8(output.stdout).unwrap(),
        String::from_utf8(output.stderr).unwrap(),
    )
}

/// `soma verify export FILE --signature SIG --public-key KEY`.
async fn soma_verify(file: &Path, sig: &Path, key: &Path) -> (i32, String, String) {
    run(
        Path::new(env!("CARGO_BIN_EXE_soma")),
        &[
            &"verify",
            &"export",
            &file,
            &"--signature",
            &sig,
            &"--public-key",
            &key,
        ],
    )
    .await
}

#[tokio::test]
async fn an_export_is_exactly_the_tenants_window_and_verifies_with_three_independent_verifiers() {
    for db in soma_store::testing::engines("analytics_export_window").await {
        let env = Env::start(&db.settings, None).await;
        let from = T0;
        let to = T0 + WINDOW;
        // Recorded out of time order, so the export's order (time, then
        // ledger index) differs from the ledger's.
        env.record_billing(vec![
            billing_of("b-acme-3", "acme", "summarize", 0, ts_nanos(to - 1, 999_999_999)),
            billing_of("b-acme-late", "acme", "summarize", 7, ts(to)),
            billing_of("b-acme-1", "acme", "summarize", 1_500_000, ts(from)),
            billing_of(
                "b-acme-early",
                "acme",
                "summarize",
                7,
                ts_nanos(from - 1, 999_999_999),
            ),
            billing_of("b-globex-1", "globex", "summarize", 9, ts(from + 5)),
        ])
        .await;
        env.record_billing(vec![billing_of(
            "b-acme-2",
            "acme",
            "translate",
            250,
            ts_nanos(from + 10, 123_456_789),
        )])
        .await;
        env.record_run_as_tenant("acme", capsule_run_of("r-acme-gw-2", "", "", from + 2))
            .await;
        env.record_run_as_tenant("acme", capsule_run_of("r-acme-gw-1", "", "summarize", from + 1))
            .await;
        env.record_run_as_tenant("globex", capsule_run_of("r-globex-gw", "", "summarize", from + 1))
            .await;
        env.record_run_as_registry(capsule_run_of("r-acme-tr-1", "acme", "translate", from + 3))
            .await;
        env.record_run_as_registry(capsule_run_of("r-acme-tr-out", "acme", "translate", to + 3))
            .await;

        // The verification key is the service's signing key.
        let key = env.verification_key().await;
        assert_eq!(key.key_id, "analytics-1");
        let public_key = soma_sign::ed25519_public_key_from_pem(&key.public_key_pem).unwrap();
        assert_eq!(public_key, env.config_public_key, "{}", db.label);

        let export = env
            .export(
                Kind::Billing,
                "/svc/gateway",
                env.as_tenant("acme", &["analytics:export"], window("", from, to)),
            )
            .await
            .unwrap();
        let document = export.document();
        let (bytes, signature, _) = export.signed();

        // Exactly acme's rows in [from, to), in time order.
        assert_eq!(
            event_ids(&document),
            ["b-acme-1", "b-acme-2", "b-acme-3"],
            "{}",
            db.label
        );
        assert_eq!(document["kind"], "billing_ledger");
        assert_eq!(document["tenant"], "acme");
        assert_eq!(document["from"], "2026-09-21T14:13:20.000000000Z");
        assert_eq!(document["to"], "2026-09-21T15:13:20.000000000Z");
        let rows = document["rows"].as_array().unwrap();
        let first = rows[0].clone();
        let first_index = first["ledger_index"].as_u64().unwrap();
        assert_eq!(
            first,
            serde_json::json!({
                "event_id": "b-acme-1",
                "ledger_index": first_index,
                "tenant": "acme",
                "tool": "summarize",
                "tool_version": "1.2.0",
                "amount_micros": 1_500_000,
                "currency": "EUR",
                "fuel_consumed": 1000,
                "duration_micros": 2500,
                "occurred_at": "2026-09-21T14:13:20.000000000Z",
                "run_id": "run-b-acme-1",
                "recorded_by": "spiffe://somastack.test/svc/tool-registry",
                "module_sha256": common::analytics::module_sha256()
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>(),
                "peak_memory_bytes": common::analytics::PEAK_MEMORY_BYTES,
            }),
            "{}",
            db.label
        );
        assert_eq!(rows[1]["occurred_at"], "2026-09-21T14:13:30.123456789Z");
        assert_eq!(rows[1]["amount_micros"], 250);
        assert_eq!(rows[2]["occurred_at"], "2026-09-21T15:13:19.999999999Z");
        assert_eq!(rows[2]["amount_micros"], 0);

        // The signature: soma-sign's strict verify over the exact bytes.
        assert_eq!(signature.key_id, "analytics-1");
        assert_eq!(signature.sha256, soma_sign::sha256(&bytes).to_vec());
        soma_sign::verify_ed25519_strict(&public_key, &bytes, &signature.signature).unwrap();
        let mut flipped = bytes.clone();
        flipped[10] ^= 0x01;
        assert!(soma_sign::verify_ed25519_strict(&public_key, &flipped, &signature.signature).is_err());

        // The checkpoint it was cut at verifies, and bounds every index.
        let checkpoint = signature.checkpoint.clone().unwrap();
        let verified = CheckpointVerifier::new(env.origin.clone(), &public_key)
            .unwrap()
            .verify(&checkpoint.note)
            .unwrap();
        assert_eq!(verified.tree_size(), checkpoint.tree_size);
        assert_eq!(
            verified.root().as_bytes().as_slice(),
            checkpoint.root_hash.as_slice()
        );
        assert_eq!(verified.origin(), checkpoint.origin);
        assert_eq!(document["checkpoint"]["tree_size"], checkpoint.tree_size);
        assert_eq!(document["checkpoint"]["origin"], checkpoint.origin);
        assert_eq!(document["checkpoint"]["root_hash"], verified.root().to_base64());
        assert_eq!(
            checkpoint.tree_size, 11,
            "every append so far is in the cut: {}",
            db.label
        );
        for row in rows {
            assert!(
                row["ledger_index"].as_u64().unwrap() < verified.tree_size(),
                "{row}"
            );
        }

        // Offline: Python `cryptography` and the `soma` binary.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("export.json");
        let sig = dir.path().join("export.sig");
        let pem = dir.path().join("analytics-1.pem");
        std::fs::write(&file, &bytes).unwrap();
        std::fs::write(
            &sig,
            format!(
                "{}\n",
                base64::engine::general_purpose::STANDARD.encode(&signature.signature)
            ),
        )
        .unwrap();
        std::fs::write(&pem, &key.public_key_pem).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/verify_export.py");
        let (code, stdout, stderr) = run(&python(), &[&script, &file, &sig, &pem]).await;
        assert_eq!(code, 0, "{stdout}{stderr}");
        let py: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        assert_eq!(
            py,
            serde_json::json!({"valid": true, "kind": "billing_ledger", "tenant": "acme", "rows": 3, "tree_size": 11})
        );
        let (code, stdout, stderr) = soma_verify(&file, &sig, &pem).await;
        assert_eq!((code, stdout.as_str()), (0, "valid\n"), "{stderr}");

        // One byte changed: both refuse it.
        let tampered = dir.path().join("tampered.json");
        let mut changed = bytes.clone();
        let at = changed.windows(7).position(|w| w == b"1500000").unwrap();
        changed[at] = b'2';
        std::fs::write(&tampered, &changed).unwrap();
        let (code, stdout, stderr) = run(&python(), &[&script, &tampered, &sig, &pem]).await;
        assert_eq!(code, 1, "{stdout}{stderr}");
        let (code, _, stderr) = soma_verify(&tampered, &sig, &pem).await;
        assert_eq!(code, 1, "{stderr}");
        assert!(stderr.starts_with("invalid: "), "{stderr}");

        // Unusable input: exit 2 with one line on stderr.
        let garbage = dir.path().join("garbage.sig");
        std::fs::write(&garbage, "this is not base64!\n").unwrap();
        let short = dir.path().join("short.sig");
        std::fs::write(
            &short,
            base64::engine::general_purpose::STANDARD.encode([7u8; 63]),
        )
        .unwrap();
        let bad_pem = dir.path().join("bad.pem");
        std::fs::write(
            &bad_pem,
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        )
        .unwrap();
        let missing = dir.path().join("missing.json");
        struct Case<'a> {
            name: &'static str,
            file: &'a Path,
            sig: &'a Path,
            key: &'a Path,
            expected: &'static str,
        }
        let cases = [
            Case {
                name: "garbage signature",
                file: &file,
                sig: &garbage,
                key: &pem,
                expected: "not standard base64",
            },
            Case {
                name: "63-byte signature",
                file: &file,
                sig: &short,
                key: &pem,
                expected: "63 bytes",
            },
            Case {
                name: "bad pem",
                file: &file,
                sig: &sig,
                key: &bad_pem,
                expected: "public key",
            },
            Case {
                name: "missing file",
                file: &missing,
                sig: &sig,
                key: &pem,
                expected: "missing.json",
            },
            Case {
                name: "missing key",
                file: &file,
                sig: &sig,
                key: &missing,
                expected: "missing.json",
            },
        ];
        for c in cases {
            let (code, stdout, stderr) = soma_verify(c.file, c.sig, c.key).await;
            assert_eq!(code, 2, "{}: {stdout}{stderr}", c.name);
            assert_eq!(stderr.lines().count(), 1, "{}: {stderr}", c.name);
            assert!(stderr.contains(c.expected), "{}: {stderr}", c.name);
        }

        // The tool filter.
        let mut only_translate = window("", from, to);
        only_translate.tool = "translate".to_owned();
        let export = env
            .export(
                Kind::Billing,
                "/svc/gateway",
                env.as_tenant("acme", &["analytics:export"], only_translate),
            )
            .await
            .unwrap();
        assert_eq!(event_ids(&export.document()), ["b-acme-2"]);
        let (bytes, signature, _) = export.signed();
        soma_sign::verify_ed25519_strict(&public_key, &bytes, &signature.signature).unwrap();

        // Capsule runs, and the service filter (the recorder's last path segment).
        struct Filter {
            service: &'static str,
            expected: &'static [&'static str],
        }
        for f in [
            Filter {
                service: "",
                expected: &["r-acme-gw-1", "r-acme-gw-2", "r-acme-tr-1"],
            },
            Filter {
                service: "gateway",
                expected: &["r-acme-gw-1", "r-acme-gw-2"],
            },
            Filter {
                service: "tool-registry",
                expected: &["r-acme-tr-1"],
            },
            Filter {
                service: "capsule-repo",
                expected: &[],
            },
        ] {
            let mut request = window("", from, to);
            request.service = f.service.to_owned();
            let export = env
                .export(
                    Kind::Runs,
                    "/svc/gateway",
                    env.as_tenant("acme", &["analytics:export"], request),
                )
                .await
                .unwrap();
            let document = export.document();
            assert_eq!(event_ids(&document), f.expected, "{} {:?}", db.label, f.service);
            assert_eq!(document["kind"], "capsule_runs");
            let (bytes, signature, _) = export.signed();
            soma_sign::verify_ed25519_strict(&public_key, &bytes, &signature.signature).unwrap();
            if f.service == "gateway" {
                let run = &document["rows"][0];
                assert_eq!(run["started_at"], "2026-09-21T14:13:21.000000000Z");
                assert_eq!(run["duration_nanos"], 2_000_000_500_i64);
                assert_eq!(run["outcome"], "succeeded");
                assert_eq!(run["recorded_by"], "spiffe://somastack.test/svc/gateway");
            }
        }

        env.svc.stop().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn an_audit_export_verifies_with_soma_verify_export() {
    for db in soma_store::testing::engines("analytics_audit_export_cli").await {
        let ca = Ca::new();
        let keys = AnalyticsKeys::generate();
        let svc = start_analytics(&ca, &db.settings, keys.config(), None).await;
        let (registry, repo, mut operator) = (
            client(&ca, &svc, "/svc/tool-registry"),
            client(&ca, &svc, "/svc/capsule-repo"),
            client(&ca, &svc, "/operator/auditor"),
        );

        let mut tasks = Vec::new();
        for i in 0..20 {
            let tenant = if i % 2 == 0 { "acme" } else { "" };
            let (mut r, mut c, mut b) = (registry.clone(), repo.clone(), registry.clone());
            let (a1, a2, bill) = (
                audit(&format!("reg-{i}"), tenant, "release.publish", OCCURRED_AT),
                audit(&format!("repo-{i}"), tenant, "release.publish", OCCURRED_AT),
                billing(&format!("bill-{i}"), "acme", 1250),
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
            let stream = operator
                .export_audit_events(window(tenant, 1_789_000_000, 1_791_000_000))
                .await
                .unwrap()
                .into_inner();
            let (mut bytes, signature, _) = collect(stream).await.signed();
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
            let (code, stdout, stderr) = soma_verify(&file, &sig, &pem).await;
            assert_eq!(code, 0, "{}: tenant {tenant:?}: {stdout}{stderr}", db.label);

            // One byte changed: refused.
            let last = bytes.len() - 3;
            bytes[last] ^= 1;
            std::fs::write(&file, &bytes).unwrap();
            let (code, stdout, stderr) = soma_verify(&file, &sig, &pem).await;
            assert_eq!(code, 1, "{}: tampered: {stdout}{stderr}", db.label);
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
