//! `soma verify store` and `soma verify ledger`, the real binary against a
//! real Analytics service over mTLS: the store sweep on SQLite (laid out as
//! `soma up` lays out its data directory) and on PostgreSQL, agreeing with
//! the `VerifyStore` RPC, catching an `UPDATE` made in SQL and refusing a
//! missing database without creating one; and ledger proofs fetched over
//! gRPC, checked offline in snake_case and in proto3 JSON, with every
//! tampering and every unusable input given its own exit status.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use common::analytics::{AnalyticsKeys, billing, capsule_run, client, start_analytics};
use serde_json::{Value, json};
use soma_proto::v1 as pb;
use soma_store::{Database, StoreSettings};
use soma_testing::{Ca, exec};

/// What one run of the binary did.
#[derive(Debug)]
struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

/// Runs `soma` with `args`; `DATABASE_URL` is removed from its environment
/// unless `database_url_env` gives it a value.
async fn soma(args: &[OsString], database_url_env: Option<&str>) -> Outcome {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_soma"));
    command.args(args).env("RUST_LOG", "warn");
    match database_url_env {
        Some(url) => command.env("DATABASE_URL", url),
        None => command.env_remove("DATABASE_URL"),
    };
    let output = command.output().await.unwrap();
    Outcome {
        code: output.status.code().unwrap(),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

fn args(items: &[&dyn AsRef<std::ffi::OsStr>]) -> Vec<OsString> {
    items.iter().map(|s| s.as_ref().to_owned()).collect()
}

/// A `soma up` data directory: the row keys under `secrets/`, the database
/// settings of the analytics service (SQLite under `db/`, or PostgreSQL).
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

/// The listing `soma verify store` prints for a `VerifyStore` answer.
fn listing(report: &pb::VerifyStoreResponse) -> String {
    let mut text = String::new();
    for f in &report.failures {
        text.push_str(&format!("{}/{}: {}\n", f.table, f.primary_key, f.reason));
    }
    text.push_str(&format!(
        "{} rows checked, {} failed\n",
        report.rows_checked,
        report.failures.len()
    ));
    text
}

#[tokio::test]
async fn verify_store_agrees_with_the_rpc_and_names_a_row_updated_in_sql() {
    for db in soma_store::testing::engines("verify_cli_store").await {
        let ca = Ca::new();
        let keys = AnalyticsKeys::generate();
        let (dir, settings) = data_dir(&keys, db.settings.database_url.clone());
        let svc = start_analytics(&ca, &settings, keys.config(), None).await;
        let mut registry = client(&ca, &svc, "/svc/tool-registry");
        let mut operator = client(&ca, &svc, "/operator/auditor");
        for i in 0..4 {
            registry
                .record_billing_event(billing(&format!("bill-{i}"), "acme", 1000 + i))
                .await
                .unwrap();
            registry
                .record_capsule_run(capsule_run(&format!("run-{i}"), "acme"))
                .await
                .unwrap();
        }

        // How this engine's database is named on the command line: SQLite
        // by the data directory alone, PostgreSQL by --database-url.
        let mut store_args = args(&[&"verify", &"store", &"--data-dir", &dir.path()]);
        if let Some(url) = &settings.database_url {
            store_args.extend(args(&[&"--database-url", url]));
        }

        let clean = soma(&store_args, None).await;
        assert_eq!(clean.code, 0, "{}: {clean:?}", db.label);
        assert_eq!(clean.stdout, "8 rows checked, 0 failed\n", "{}", db.label);
        let rpc = operator
            .verify_store(pb::VerifyStoreRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(clean.stdout, listing(&rpc), "{}", db.label);

        // Someone with SQL access raises an amount.
        let direct = Database::connect(&settings, "analytics").await.unwrap();
        assert_eq!(
            exec(
                &direct,
                "UPDATE billing_events SET amount_micros = 100000000 WHERE event_id = 'bill-2'"
            )
            .await,
            1
        );
        let tampered = soma(&store_args, None).await;
        assert_eq!(tampered.code, 1, "{}: {tampered:?}", db.label);
        let lines: Vec<&str> = tampered.stdout.lines().collect();
        assert_eq!(lines.len(), 2, "{}: {tampered:?}", db.label);
        assert!(
            lines[0].starts_with("billing_events/bill-2: row mac: "),
            "{}: {tampered:?}",
            db.label
        );
        assert_eq!(lines[1], "8 rows checked, 1 failed", "{}", db.label);
        let rpc = operator
            .verify_store(pb::VerifyStoreRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(tampered.stdout, listing(&rpc), "{}", db.label);

        if let Some(url) = &settings.database_url {
            // DATABASE_URL is used without --database-url, and the flag
            // wins over it.
            let from_env = soma(
                &args(&[&"verify", &"store", &"--data-dir", &dir.path()]),
                Some(url),
            )
            .await;
            assert_eq!(from_env.code, 1, "{from_env:?}");
            assert_eq!(from_env.stdout, tampered.stdout);
            let unreachable = "postgres://postgres@127.0.0.1:1/nothing";
            let flag_wins = soma(&store_args, Some(unreachable)).await;
            assert_eq!(flag_wins.code, 1, "{flag_wins:?}");
            assert_eq!(flag_wins.stdout, tampered.stdout);
            let unusable = soma(
                &args(&[&"verify", &"store", &"--data-dir", &dir.path()]),
                Some(unreachable),
            )
            .await;
            assert_eq!(unusable.code, 2, "{unusable:?}");
            assert!(
                unusable.stderr.contains("opening the analytics database"),
                "{unusable:?}"
            );
        }

        // Another keyring verifies none of the rows.
        let other = dir.path().join("other-keys.json");
        std::fs::write(&other, AnalyticsKeys::generate().row_keys_json).unwrap();
        let mut other_args = store_args.clone();
        other_args.extend(args(&[&"--row-keys", &other]));
        let wrong_keys = soma(&other_args, None).await;
        assert_eq!(wrong_keys.code, 1, "{}: {wrong_keys:?}", db.label);
        assert!(
            wrong_keys.stdout.ends_with("8 rows checked, 8 failed\n"),
            "{}: {wrong_keys:?}",
            db.label
        );

        direct.close().await;
        svc.stop().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn verify_store_refuses_unusable_input_and_creates_nothing() {
    let keys = AnalyticsKeys::generate();
    let (dir, _) = data_dir(&keys, None);

    // No database: refused before connecting, nothing created.
    let missing = soma(&args(&[&"verify", &"store", &"--data-dir", &dir.path()]), None).await;
    assert_eq!(missing.code, 2, "{missing:?}");
    let expected = format!(
        "soma: no analytics database at {}\n",
        dir.path().join("db").join("analytics.db").display()
    );
    assert!(missing.stderr.ends_with(&expected), "{missing:?}");
    assert_eq!(missing.stdout, "");
    assert!(!dir.path().join("db").exists());

    // No row keys.
    let nowhere = tempfile::tempdir().unwrap();
    let no_keys = soma(
        &args(&[&"verify", &"store", &"--data-dir", &nowhere.path()]),
        None,
    )
    .await;
    assert_eq!(no_keys.code, 2, "{no_keys:?}");
    let expected = format!(
        "soma: row keys: cannot read hmac keyring {}: ",
        nowhere
            .path()
            .join("secrets")
            .join("analytics-row-keys.json")
            .display()
    );
    assert!(no_keys.stderr.starts_with(&expected), "{no_keys:?}");
    assert_eq!(std::fs::read_dir(nowhere.path()).unwrap().count(), 0);

    // A database the service never migrated: the sweep cannot run, and no
    // migration is applied behind the operator's back.
    std::fs::create_dir_all(dir.path().join("db")).unwrap();
    let settings = StoreSettings::sqlite(dir.path().join("db"));
    Database::connect(&settings, "analytics")
        .await
        .unwrap()
        .close()
        .await;
    let unmigrated = soma(&args(&[&"verify", &"store", &"--data-dir", &dir.path()]), None).await;
    assert_eq!(unmigrated.code, 2, "{unmigrated:?}");
    assert!(
        unmigrated.stderr.contains("sweeping the analytics database"),
        "{unmigrated:?}"
    );
    let db = Database::connect(&settings, "analytics").await.unwrap();
    let tables: i64 = {
        use sqlx::Row as _;
        sqlx::query("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'")
            .fetch_one(db.as_sqlite().unwrap())
            .await
            .unwrap()
            .get(0)
    };
    assert_eq!(tables, 0);
    db.close().await;
}

/// The proto3 JSON form of an inclusion proof, as grpcurl prints it:
/// camelCase, 64-bit integers as strings, zero values left out.
fn inclusion_proto3(p: &pb::InclusionProofResponse) -> Value {
    let mut object = serde_json::Map::new();
    if p.leaf_index != 0 {
        object.insert("leafIndex".into(), json!(p.leaf_index.to_string()));
    }
    object.insert("treeSize".into(), json!(p.tree_size.to_string()));
    object.insert("leafHash".into(), json!(b64(&p.leaf_hash)));
    if !p.proof.is_empty() {
        object.insert(
            "proof".into(),
            json!(p.proof.iter().map(|h| b64(h)).collect::<Vec<_>>()),
        );
    }
    if let Some(cp) = &p.checkpoint {
        object.insert(
            "checkpoint".into(),
            json!({
                "origin": cp.origin,
                "treeSize": cp.tree_size.to_string(),
                "rootHash": b64(&cp.root_hash),
                "note": cp.note,
                "keyId": cp.key_id,
            }),
        );
    }
    Value::Object(object)
}

fn inclusion_snake(event_id: &str, p: &pb::InclusionProofResponse) -> Value {
    json!({
        "event_id": event_id,
        "leaf_index": p.leaf_index,
        "tree_size": p.tree_size,
        "leaf_hash": b64(&p.leaf_hash),
        "proof": p.proof.iter().map(|h| b64(h)).collect::<Vec<_>>(),
    })
}

fn consistency_snake(p: &pb::ConsistencyProofResponse) -> Value {
    json!({
        "from_size": p.from_size,
        "to_size": p.to_size,
        "proof": p.proof.iter().map(|h| b64(h)).collect::<Vec<_>>(),
    })
}

fn consistency_proto3(p: &pb::ConsistencyProofResponse) -> Value {
    json!({
        "fromSize": p.from_size.to_string(),
        "toSize": p.to_size.to_string(),
        "proof": p.proof.iter().map(|h| b64(h)).collect::<Vec<_>>(),
    })
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn write(dir: &Path, name: &str, content: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).unwrap();
    path
}

#[tokio::test]
async fn verify_ledger_checks_proofs_fetched_over_grpc_offline() {
    for db in soma_store::testing::engines("verify_cli_ledger").await {
        let ca = Ca::new();
        let keys = AnalyticsKeys::generate();
        let config = keys.config();
        let origin = config.ledger_origin.clone();
        let public_pem = soma_sign::Ed25519Signer::from_pkcs8_pem(
            soma_sign::KeyId::new("analytics-1").unwrap(),
            &config.signing_key_pem,
        )
        .unwrap()
        .public_key_pem();
        let svc = start_analytics(&ca, &db.settings, config, None).await;
        let mut registry = client(&ca, &svc, "/svc/tool-registry");
        let mut operator = client(&ca, &svc, "/operator/auditor");

        for i in 0..5 {
            registry
                .record_billing_event(billing(&format!("bill-{i}"), "acme", 10 + i))
                .await
                .unwrap();
        }
        let small = operator
            .ledger_checkpoint(pb::LedgerCheckpointRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(small.tree_size, 5);
        for i in 5..11 {
            registry
                .record_billing_event(billing(&format!("bill-{i}"), "globex", 10 + i))
                .await
                .unwrap();
        }
        let large = operator
            .ledger_checkpoint(pb::LedgerCheckpointRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(large.tree_size, 11);
        let inclusion = |event_id: &str, tree_size: u64| {
            let mut operator = operator.clone();
            let event_id = event_id.to_owned();
            async move {
                operator
                    .inclusion_proof(pb::InclusionProofRequest { event_id, tree_size })
                    .await
                    .unwrap()
                    .into_inner()
            }
        };
        let bill2 = inclusion("bill-2", 0).await;
        assert_eq!((bill2.leaf_index, bill2.tree_size), (2, 11));
        let bill0 = inclusion("bill-0", 0).await;
        let bill3_at_5 = inclusion("bill-3", 5).await;
        assert_eq!(bill3_at_5.tree_size, 5);
        let consistency = operator
            .consistency_proof(pb::ConsistencyProofRequest {
                from_size: 5,
                to_size: 11,
            })
            .await
            .unwrap()
            .into_inner();

        let tmp = tempfile::tempdir().unwrap();
        let t = tmp.path();
        let key = write(t, "key.pem", &public_pem);
        let (_, other_pkcs8) =
            soma_sign::Ed25519Signer::generate(soma_sign::KeyId::new("analytics-1").unwrap()).unwrap();
        let other_key = write(
            t,
            "other.pem",
            soma_sign::Ed25519Signer::from_pkcs8_der(soma_sign::KeyId::new("x").unwrap(), &other_pkcs8)
                .unwrap()
                .public_key_pem(),
        );
        let small_note = write(t, "small.note", &small.note);
        let large_note = write(t, "large.note", &large.note);
        // The same note with its size raised: the signature no longer covers it.
        let forged_note = write(t, "forged.note", large.note.replacen("\n11\n", "\n12\n", 1));
        let incl_snake = write(t, "incl.json", inclusion_snake("bill-2", &bill2).to_string());
        let incl_proto3 = write(t, "incl3.json", inclusion_proto3(&bill2).to_string());
        let incl0_proto3 = write(t, "incl0.json", inclusion_proto3(&bill0).to_string());
        assert!(
            !std::fs::read_to_string(&incl0_proto3)
                .unwrap()
                .contains("leafIndex")
        );
        let incl_at_5 = write(
            t,
            "incl5.json",
            inclusion_snake("bill-3", &bill3_at_5).to_string(),
        );
        let mut flipped = bill2.clone();
        flipped.proof[1][7] ^= 0x01;
        let incl_flipped = write(t, "incl-flipped.json", inclusion_proto3(&flipped).to_string());
        let mut wrong_leaf = bill2.clone();
        wrong_leaf.leaf_hash[0] ^= 0x80;
        let incl_wrong_leaf = write(
            t,
            "incl-leaf.json",
            inclusion_snake("bill-2", &wrong_leaf).to_string(),
        );
        let cons_snake = write(t, "cons.json", consistency_snake(&consistency).to_string());
        let cons_proto3 = write(t, "cons3.json", consistency_proto3(&consistency).to_string());
        let mut cons_bad = consistency.clone();
        cons_bad.proof[0][31] ^= 0x01;
        let cons_flipped = write(t, "cons-flipped.json", consistency_snake(&cons_bad).to_string());
        let garbage = write(t, "garbage.json", "{\"leaf_index\": 2, \"proof\": [");
        let not_pem = write(t, "not.pem", "not a key");

        let incl = |note: &Path, key: &Path, proof: &Path| {
            args(&[
                &"verify",
                &"ledger",
                &"--checkpoint",
                &note,
                &"--public-key",
                &key,
                &"--inclusion",
                &proof,
            ])
        };
        let cons = |previous: &Path, note: &Path, key: &Path, proof: &Path| {
            args(&[
                &"verify",
                &"ledger",
                &"--checkpoint",
                &note,
                &"--public-key",
                &key,
                &"--consistency",
                &proof,
                &"--previous-checkpoint",
                &previous,
            ])
        };
        let with = |mut base: Vec<OsString>, extra: &[&str]| {
            base.extend(extra.iter().map(OsString::from));
            base
        };

        struct Case {
            name: &'static str,
            input: Vec<OsString>,
            /// Exit status, and the start of the line it prints.
            expected: (i32, String),
        }
        let root_large = large.root_hash.clone();
        let valid_incl = format!(
            "valid: leaf 2 {} (event bill-2) is in {origin} at tree size 11, root {}",
            b64(&bill2.leaf_hash),
            b64(&root_large)
        );
        let cases = vec![
            Case {
                name: "inclusion, snake_case",
                input: incl(&large_note, &key, &incl_snake),
                expected: (0, valid_incl.clone()),
            },
            Case {
                name: "inclusion, proto3 JSON with its checkpoint",
                input: incl(&large_note, &key, &incl_proto3),
                expected: (0, valid_incl.replace(" (event bill-2)", "")),
            },
            Case {
                name: "inclusion of leaf 0, its index left out as proto3 JSON does",
                input: incl(&large_note, &key, &incl0_proto3),
                expected: (0, "valid: leaf 0 ".to_owned()),
            },
            Case {
                name: "inclusion at an earlier checkpoint",
                input: incl(&small_note, &key, &incl_at_5),
                expected: (0, "valid: leaf 3 ".to_owned()),
            },
            Case {
                name: "inclusion with the origin given",
                input: with(incl(&large_note, &key, &incl_snake), &["--origin", &origin]),
                expected: (0, valid_incl.clone()),
            },
            Case {
                name: "consistency, snake_case",
                input: cons(&small_note, &large_note, &key, &cons_snake),
                expected: (
                    0,
                    format!(
                        "valid: {origin} at tree size 11 (root {}) extends tree size 5 (root {})",
                        b64(&root_large),
                        b64(&small.root_hash)
                    ),
                ),
            },
            Case {
                name: "consistency, proto3 JSON",
                input: cons(&small_note, &large_note, &key, &cons_proto3),
                expected: (0, format!("valid: {origin} at tree size 11 ")),
            },
            Case {
                name: "a flipped inclusion proof byte",
                input: incl(&large_note, &key, &incl_flipped),
                expected: (1, "invalid: inclusion proof: computed root ".to_owned()),
            },
            Case {
                name: "another leaf hash",
                input: incl(&large_note, &key, &incl_wrong_leaf),
                expected: (1, "invalid: inclusion proof: computed root ".to_owned()),
            },
            Case {
                name: "a flipped consistency proof byte",
                input: cons(&small_note, &large_note, &key, &cons_flipped),
                expected: (1, "invalid: consistency proof: computed root ".to_owned()),
            },
            Case {
                name: "a proof for another tree size",
                input: incl(&small_note, &key, &incl_snake),
                expected: (
                    1,
                    "invalid: the proof is for tree size 11, the checkpoint is of size 5".to_owned(),
                ),
            },
            Case {
                name: "a checkpoint signed by another key",
                input: incl(&large_note, &other_key, &incl_snake),
                expected: (
                    1,
                    format!(
                        "invalid: checkpoint {}: no signature by key {origin} carries the expected key id",
                        large_note.display()
                    ),
                ),
            },
            Case {
                name: "a note whose size was edited",
                input: incl(&forged_note, &key, &incl_snake),
                expected: (
                    1,
                    format!(
                        "invalid: checkpoint {}: signature by key {origin} does not verify",
                        forged_note.display()
                    ),
                ),
            },
            Case {
                name: "another origin expected",
                input: with(
                    incl(&large_note, &key, &incl_snake),
                    &["--origin", "elsewhere/analytics"],
                ),
                expected: (
                    1,
                    format!(
                        "invalid: checkpoint {}: note is not signed by key elsewhere/analytics",
                        large_note.display()
                    ),
                ),
            },
            Case {
                name: "a previous checkpoint larger than the current one",
                input: cons(&large_note, &small_note, &key, &cons_snake),
                expected: (
                    1,
                    "invalid: a checkpoint with a smaller size is refused: \
                     checkpoint tree size went back from 11 to 5"
                        .to_owned(),
                ),
            },
            Case {
                name: "a consistency proof between other sizes",
                input: cons(&small_note, &small_note, &key, &cons_snake),
                expected: (
                    1,
                    "invalid: the proof is from tree size 5 to 11, the checkpoints are of sizes 5 and 5"
                        .to_owned(),
                ),
            },
            Case {
                name: "garbage inclusion JSON",
                input: incl(&large_note, &key, &garbage),
                expected: (
                    2,
                    format!("soma: inclusion proof {}: not JSON: ", garbage.display()),
                ),
            },
            Case {
                name: "garbage consistency JSON",
                input: cons(&small_note, &large_note, &key, &garbage),
                expected: (
                    2,
                    format!("soma: consistency proof {}: not JSON: ", garbage.display()),
                ),
            },
            Case {
                name: "a consistency proof given as an inclusion proof",
                input: incl(&large_note, &key, &cons_snake),
                expected: (
                    2,
                    format!(
                        "soma: inclusion proof {}: unknown field \"from_size\"",
                        cons_snake.display()
                    ),
                ),
            },
            Case {
                name: "a key that is not PEM",
                input: incl(&large_note, &not_pem, &incl_snake),
                expected: (2, format!("soma: public key {}: ", not_pem.display())),
            },
            Case {
                name: "a proof file given as the note",
                input: incl(&incl_snake, &key, &incl_snake),
                expected: (2, format!("soma: checkpoint {}: ", incl_snake.display())),
            },
            Case {
                name: "a missing proof file",
                input: incl(&large_note, &key, &t.join("absent.json")),
                expected: (2, "soma: inclusion proof ".to_owned()),
            },
            Case {
                name: "no proof at all (usage)",
                input: args(&[
                    &"verify",
                    &"ledger",
                    &"--checkpoint",
                    &large_note,
                    &"--public-key",
                    &key,
                ]),
                expected: (
                    2,
                    "error: the following required arguments were not provided".to_owned(),
                ),
            },
            Case {
                name: "consistency without the previous checkpoint (usage)",
                input: args(&[
                    &"verify",
                    &"ledger",
                    &"--checkpoint",
                    &large_note,
                    &"--public-key",
                    &key,
                    &"--consistency",
                    &cons_snake,
                ]),
                expected: (
                    2,
                    "error: the following required arguments were not provided".to_owned(),
                ),
            },
        ];
        for case in cases {
            let out = soma(&case.input, None).await;
            let (code, start) = &case.expected;
            assert_eq!(out.code, *code, "{} / {}: {out:?}", db.label, case.name);
            let printed = if *code == 0 { &out.stdout } else { &out.stderr };
            assert!(
                printed.lines().any(|line| line.starts_with(start.as_str())),
                "{} / {}: expected a line starting {start:?}, got {out:?}",
                db.label,
                case.name
            );
            if *code != 0 {
                assert_eq!(out.stdout, "", "{} / {}", db.label, case.name);
            }
        }

        svc.stop().await;
        db.cleanup().await;
    }
}
