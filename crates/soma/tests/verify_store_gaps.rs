//! `soma verify store`, the real binary, against a database an attacker
//! with write access has tampered with, on SQLite (laid out as `soma up`
//! lays out its data directory) and on PostgreSQL: for each of
//! {`ledger_index` changed, row deleted, row duplicated at another index,
//! leaf tenant changed, leaf deleted, a row's tenant rewritten into another
//! tenant} it exits 1 and names the ledger index, where it used to
//! pass with 0 failed. Two tenants recording the same event id is two
//! records, and the sweep passes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::ffi::OsString;
use std::time::Duration;

use common::analytics::{AnalyticsKeys, billing, start_analytics, tamper};
use soma_proto::v1::analytics_client::AnalyticsClient;
use soma_store::{Database, StoreSettings};
use soma_testing::{Ca, channel};

/// What one run of the binary did.
#[derive(Debug)]
struct Outcome {
    code: i32,
    stdout: String,
}

/// `soma verify store` on the data directory `dir` (and `--database-url`
/// when the engine is PostgreSQL), without `DATABASE_URL` in its
/// environment.
async fn verify_store(dir: &std::path::Path, settings: &StoreSettings) -> Outcome {
    let mut args: Vec<OsString> = ["verify", "store", "--data-dir"].map(OsString::from).to_vec();
    args.push(dir.as_os_str().to_owned());
    if let Some(url) = &settings.database_url {
        args.push("--database-url".into());
        args.push(url.into());
    }
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_soma"))
        .args(&args)
        .env("RUST_LOG", "warn")
        .env_remove("DATABASE_URL")
        .output()
        .await
        .unwrap();
    Outcome {
        code: output.status.code().unwrap(),
        stdout: String::from_utf8(output.stdout).unwrap(),
    }
}

/// A `soma up` data directory holding the row keys.
fn data_dir(keys: &AnalyticsKeys, database_url: Option<String>) -> (tempfile::TempDir, StoreSettings) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("secrets")).unwrap();
    std::fs::write(
        dir.path().join("secrets").join("analytics-row-keys.json"),
        &keys.row_keys_json,
    )
    .unwrap();
    let settings = StoreSettings {
        data_dir: dir.path().join("db"),
        database_url,
    };
    (dir, settings)
}

#[tokio::test]
async fn verify_store_exits_non_zero_naming_the_ledger_index_of_every_gap() {
    struct Case {
        name: &'static str,
        sql: &'static str,
        /// The index the listing must name.
        index: u64,
    }
    let cases = [
        Case {
            name: "ledger_index changed past the tree size",
            sql: "UPDATE billing_events SET ledger_index = 1000 WHERE tenant = 'acme' AND event_id = 'a-2'",
            index: 2,
        },
        Case {
            name: "row deleted",
            sql: "DELETE FROM billing_events WHERE tenant = 'acme' AND event_id = 'a-2'",
            index: 2,
        },
        Case {
            name: "row duplicated at another index (the key constraint dropped)",
            sql: "CREATE TABLE billing_copy AS SELECT * FROM billing_events; \
                  DROP TABLE billing_events; \
                  ALTER TABLE billing_copy RENAME TO billing_events; \
                  INSERT INTO billing_events (event_id, tenant, tool, tool_version, currency, amount_micros, \
                  fuel_consumed, duration_micros, occurred_at, run_id, recorded_by, module_sha256, \
                  peak_memory_bytes, ledger_index, mac_scheme, row_version, mac_key_id, mac) \
                  SELECT event_id, tenant, tool, tool_version, currency, amount_micros, fuel_consumed, \
                  duration_micros, occurred_at, run_id, recorded_by, module_sha256, peak_memory_bytes, 5, \
                  mac_scheme, row_version, mac_key_id, mac \
                  FROM billing_events WHERE tenant = 'acme' AND event_id = 'a-2'",
            index: 5,
        },
        Case {
            name: "leaf tenant changed",
            sql: "UPDATE ledger_leaves SET tenant = 'globex' WHERE leaf_index = 3",
            index: 3,
        },
        Case {
            name: "leaf deleted",
            sql: "DELETE FROM ledger_leaves WHERE leaf_index = 2",
            index: 2,
        },
        Case {
            name: "a row's tenant rewritten into another tenant",
            sql: "UPDATE billing_events SET tenant = 'globex' WHERE tenant = 'acme' AND event_id = 'a-3'",
            index: 3,
        },
    ];
    for case in &cases {
        for db in soma_store::testing::engines("verify_store_gaps").await {
            let label = format!("{}: {}", db.label, case.name);
            let ca = Ca::new();
            let keys = AnalyticsKeys::generate();
            let (dir, settings) = data_dir(&keys, db.settings.database_url.clone());
            let svc = start_analytics(&ca, &settings, keys.config(), None).await;
            let mut registry = AnalyticsClient::new(channel(
                ca.store("/svc/tool-registry", Duration::from_secs(3600)),
                svc.addr,
                &svc.id,
            ));
            // acme's a-0..a-3 at indices 0..4; globex's g-0 at 4 and its own
            // a-2 (the same id, another record) at 5.
            for (i, (id, tenant)) in [
                ("a-0", "acme"),
                ("a-1", "acme"),
                ("a-2", "acme"),
                ("a-3", "acme"),
                ("g-0", "globex"),
                ("a-2", "globex"),
            ]
            .into_iter()
            .enumerate()
            {
                let recorded = registry
                    .record_billing_event(billing(id, tenant, 100 + i as i64))
                    .await
                    .unwrap()
                    .into_inner();
                assert_eq!(recorded.ledger.unwrap().index, i as u64, "{label}: {tenant}/{id}");
            }
            let clean = verify_store(dir.path(), &settings).await;
            assert_eq!(clean.code, 0, "{label}: {clean:?}");
            assert_eq!(clean.stdout, "6 rows checked, 0 failed\n", "{label}");

            let direct = Database::connect(&settings, "analytics").await.unwrap();
            tamper(&direct, case.sql).await;
            direct.close().await;

            let swept = verify_store(dir.path(), &settings).await;
            assert_eq!(swept.code, 1, "{label}: {swept:?}");
            let named = format!("ledger index {}", case.index);
            let lines: Vec<&str> = swept.stdout.lines().collect();
            assert!(
                lines[..lines.len() - 1].iter().any(|l| l.contains(&named)),
                "{label}: {}",
                swept.stdout
            );
            assert!(
                lines
                    .last()
                    .is_some_and(|l| l.ends_with(" failed") && !l.ends_with(" 0 failed")),
                "{label}: {}",
                swept.stdout
            );
            svc.stop().await;
            db.cleanup().await;
        }
    }
}
