//! The sandbox's measurements on billing events — the SHA-256 of the
//! WebAssembly module that ran and its peak linear memory — through the
//! real service over mTLS, on SQLite and PostgreSQL.
//!
//! A measured event recorded by the tool registry is exported with both
//! members, in a signed export bound to a checkpoint, and its leaf (which an
//! offline verifier recomputes from the exported object) is proven in the
//! tree. Rows written before the measurements existed — written here into
//! the schema of then, sealed as the code of then sealed them — keep
//! verifying unchanged after the upgrade: start-up verification, the sweep,
//! their exported objects (no new members), their proofs against the
//! checkpoint signed before. An attacker with write access to the database
//! cannot blank, change or add measurements, nor pass a new row off as an
//! old one: the sweep names the row and the export is refused. A digest
//! that is not 32 bytes, or a peak beyond i64, is refused naming its field.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::export::{Collected, Env, Kind, collect, event_ids, window};
use common::{
    AnalyticsKeys, OCCURRED_AT, PEAK_MEMORY_BYTES, WASM_MODULE, billing, blob, client, leaf_mac,
    module_sha256, row_mac, start_analytics, tamper, verify_proof,
};
use serde_json::{Value, json};
use soma_ledger::{Checkpoint, CheckpointSigner, CheckpointVerifier, CompactTree, Hash};
use soma_proto::v1 as pb;
use soma_proto::v1::analytics_client::AnalyticsClient;
use soma_sign::jcs;
use soma_store::Database;
use soma_testing::{Ca, Running, TD, exec, grpc_reason as reason, scalar};
use tonic::Code;
use tonic::transport::Channel;

/// The time of every event, Unix nanoseconds.
const AT_NANOS: i64 = OCCURRED_AT * 1_000_000_000;

/// [`OCCURRED_AT`] as exports write it.
const AT_TEXT: &str = "2026-09-21T14:13:20.000000000Z";

/// `(module)`: the smallest WebAssembly module, without a memory (so its
/// peak linear memory is 0).
const EMPTY_MODULE: &[u8] = b"\0asm\x01\0\0\0";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The recorder of every event: the tool registry.
fn registry_id() -> String {
    format!("spiffe://{TD}/svc/tool-registry")
}

/// The leaf an offline verifier recomputes from an exported billing row at
/// [`OCCURRED_AT`]: every member but `event_id`, `tenant` and
/// `ledger_index` is content, integers as decimal strings, the time as Unix
/// nanoseconds; the leaf is the RFC 9162 hash of the canonical `{content,
/// event_id, kind, tenant}`.
fn leaf_of(row: &Value) -> Hash {
    assert_eq!(row["occurred_at"], AT_TEXT, "{row}");
    let mut content = serde_json::Map::new();
    for (name, value) in row.as_object().unwrap() {
        let value = match (name.as_str(), value) {
            ("event_id" | "tenant" | "ledger_index", _) => continue,
            ("occurred_at", _) => Value::from(AT_NANOS.to_string()),
            (_, Value::Number(n)) => Value::from(n.to_string()),
            (_, other) => other.clone(),
        };
        content.insert(name.clone(), value);
    }
    soma_ledger::leaf_hash(
        &jcs::canonicalize(&json!({
            "kind": "billing_event",
            "event_id": row["event_id"],
            "tenant": row["tenant"],
            "content": content,
        }))
        .unwrap(),
    )
}

/// Checks a signed export offline: the signature over its exact bytes under
/// the listed key, its checkpoint's note under the same key and origin, and
/// the document bound to that checkpoint. The document and the verified
/// checkpoint.
async fn verified(
    operator: &mut AnalyticsClient<Channel>,
    origin: &str,
    collected: Collected,
) -> (Value, Checkpoint) {
    let document = collected.document();
    let (bytes, signature, _) = collected.signed();
    let keys = operator
        .list_verification_keys(pb::ListVerificationKeysRequest {})
        .await
        .unwrap()
        .into_inner()
        .keys;
    let key = soma_sign::ed25519_public_key_from_pem(&keys[0].public_key_pem).unwrap();
    soma_sign::verify_ed25519_strict(&key, &bytes, &signature.signature).unwrap();
    assert_eq!(signature.sha256, soma_sign::sha256(&bytes).to_vec());
    let note = signature.checkpoint.unwrap().note;
    let checkpoint = CheckpointVerifier::new(origin.to_owned(), &key)
        .unwrap()
        .verify(&note)
        .unwrap();
    assert_eq!(document["checkpoint"]["tree_size"], checkpoint.tree_size());
    assert_eq!(document["checkpoint"]["origin"], origin);
    assert_eq!(document["checkpoint"]["root_hash"], checkpoint.root().to_base64());
    (document, checkpoint)
}

/// Each exported row's leaf, recomputed from its object, is proven in the
/// checkpoint's tree at the row's index.
async fn prove_rows(operator: &mut AnalyticsClient<Channel>, document: &Value, checkpoint: &Checkpoint) {
    for row in document["rows"].as_array().unwrap() {
        let proof = common::inclusion_proof(
            operator,
            row["event_id"].as_str().unwrap(),
            checkpoint.tree_size(),
        )
        .await;
        assert_eq!(Some(proof.leaf_index), row["ledger_index"].as_u64(), "{row}");
        assert_eq!(proof.leaf_hash, leaf_of(row).as_bytes().to_vec(), "{row}");
        verify_proof(&proof, checkpoint.tree_size(), checkpoint.root().as_bytes());
    }
}

/// `tenant`'s billing export of the events' minute, as an operator over
/// mTLS asks for it.
async fn export(operator: &mut AnalyticsClient<Channel>, tenant: &str) -> Collected {
    let stream = operator
        .export_billing_ledger(window(tenant, OCCURRED_AT - 60, OCCURRED_AT + 60))
        .await
        .unwrap()
        .into_inner();
    collect(stream).await
}

async fn sweep(operator: &mut AnalyticsClient<Channel>) -> pb::VerifyStoreResponse {
    operator
        .verify_store(pb::VerifyStoreRequest {})
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn a_measured_event_is_exported_with_both_members_and_its_leaf_proven() {
    for db in soma_store::testing::engines("billing_fields_round_trip").await {
        let label = db.label;
        let env = Env::start(&db.settings, None).await;
        // Three executions: the module of the common builder, a module
        // without memory, and the largest peak the service accepts.
        let mut without_memory = billing("m-empty", "acme", 20);
        without_memory.module_sha256 = soma_sign::sha256(EMPTY_MODULE).to_vec();
        without_memory.peak_memory_bytes = 0;
        let mut largest = billing("m-largest", "acme", 30);
        largest.peak_memory_bytes = u64::try_from(i64::MAX).unwrap();
        for event in [billing("m-one-page", "acme", 10), without_memory, largest] {
            env.record_billing(vec![event]).await;
        }

        let collected = env
            .export(
                Kind::Billing,
                "/svc/gateway",
                env.as_tenant(
                    "acme",
                    &["analytics:export"],
                    window("", OCCURRED_AT, OCCURRED_AT + 1),
                ),
            )
            .await
            .unwrap();
        let bytes = collected.bytes();
        let mut operator = env.client("/operator/auditor");
        let (document, checkpoint) = verified(&mut operator, &env.origin, collected).await;
        assert_eq!(
            event_ids(&document),
            ["m-one-page", "m-empty", "m-largest"],
            "{label}"
        );
        let rows = document["rows"].as_array().unwrap();
        assert_eq!(
            rows[0],
            json!({
                "event_id": "m-one-page",
                "ledger_index": 0,
                "tenant": "acme",
                "tool": "summarize",
                "tool_version": "1.2.0",
                "amount_micros": 10,
                "currency": "EUR",
                "fuel_consumed": 1000,
                "duration_micros": 2500,
                "occurred_at": AT_TEXT,
                "run_id": "run-m-one-page",
                "recorded_by": registry_id(),
                "module_sha256": hex(&module_sha256()),
                "peak_memory_bytes": PEAK_MEMORY_BYTES,
            }),
            "{label}"
        );
        assert_eq!(
            rows[0]["module_sha256"],
            hex(&soma_sign::sha256(WASM_MODULE)),
            "{label}: lowercase hex of the module's SHA-256"
        );
        assert_eq!(
            (&rows[1]["module_sha256"], &rows[1]["peak_memory_bytes"]),
            (&json!(hex(&soma_sign::sha256(EMPTY_MODULE))), &json!(0)),
            "{label}"
        );
        // The largest peak travels exactly, as the other integers do.
        let text = String::from_utf8(bytes).unwrap();
        assert!(
            text.contains(r#""peak_memory_bytes":9223372036854775807,"#),
            "{label}: {text}"
        );
        assert_eq!(checkpoint.tree_size(), 3, "{label}");
        prove_rows(&mut operator, &document, &checkpoint).await;

        let swept = sweep(&mut operator).await;
        assert_eq!(
            (swept.rows_checked, swept.failures.len()),
            (3, 0),
            "{label}: {:?}",
            swept.failures
        );
        env.svc.stop().await;
        db.cleanup().await;
    }
}

/// A billing event as the code before the measurements wrote it.
struct Before {
    event_id: &'static str,
    tenant: &'static str,
    micros: i64,
}

/// acme's o-0 and o-1, globex's o-2, at indices 0, 1, 2.
const BEFORE: [Before; 3] = [
    Before {
        event_id: "o-0",
        tenant: "acme",
        micros: 100,
    },
    Before {
        event_id: "o-1",
        tenant: "acme",
        micros: 101,
    },
    Before {
        event_id: "o-2",
        tenant: "globex",
        micros: 102,
    },
];

/// The content the code of before sealed and hashed: eleven columns less
/// the key and the tenant, integers as decimal strings.
fn content_before(b: &Before) -> Value {
    json!({
        "tool": "summarize",
        "tool_version": "1.2.0",
        "currency": "EUR",
        "amount_micros": b.micros.to_string(),
        "fuel_consumed": "1000",
        "duration_micros": "2500",
        "occurred_at": AT_NANOS.to_string(),
        "run_id": format!("run-{}", b.event_id),
        "recorded_by": registry_id(),
    })
}

/// The export object of a row of before at `index`, as the code of before
/// wrote it.
fn object_before(b: &Before, index: u64) -> Value {
    json!({
        "event_id": b.event_id,
        "ledger_index": index,
        "tenant": b.tenant,
        "tool": "summarize",
        "tool_version": "1.2.0",
        "amount_micros": b.micros,
        "currency": "EUR",
        "fuel_consumed": 1000,
        "duration_micros": 2500,
        "occurred_at": AT_TEXT,
        "run_id": format!("run-{}", b.event_id),
        "recorded_by": registry_id(),
    })
}

/// Writes [`BEFORE`] into a database of the schema of before (migrations 1
/// to 6) as its ledger writer did: each leaf with its event time and its
/// MAC, each row sealed under scheme 2 at row version 1 binding its index,
/// the head, and the checkpoint signed at size 3. The checkpoint's root.
async fn write_before(db: &soma_store::testing::TestDb, keys: &AnalyticsKeys) -> Hash {
    let old = Database::connect(&db.settings, "analytics").await.unwrap();
    old.migrate(&soma_store::Migrations(&soma_analytics::MIGRATIONS.0[..6]))
        .await
        .unwrap();
    let row_keys = keys.row_keys();
    let mut hashes = Vec::new();
    for (index, b) in (0i64..).zip(&BEFORE) {
        let content = content_before(b);
        let leaf = soma_ledger::leaf_hash(
            &jcs::canonicalize(&json!({
                "kind": "billing_event",
                "event_id": b.event_id,
                "tenant": b.tenant,
                "content": content,
            }))
            .unwrap(),
        );
        hashes.push(leaf);
        let leaf_seal = leaf_mac(
            &row_keys,
            index,
            (b.event_id, b.tenant, "billing_event"),
            AT_NANOS,
            &leaf,
        );
        exec(
            &old,
            &format!(
                "INSERT INTO ledger_leaves (leaf_index, event_id, tenant, kind, leaf_hash, appended_at, event_time, \
                 mac_scheme, mac_key_id, mac) VALUES ({index}, '{}', '{}', 'billing_event', {}, 1, {AT_NANOS}, 2, \
                 'row-1', {})",
                b.event_id,
                b.tenant,
                blob(&old, leaf.as_bytes()),
                blob(&old, &leaf_seal)
            ),
        )
        .await;
        let mac = row_mac(
            &row_keys,
            ("billing_events", b.event_id, b.tenant),
            1,
            Some(index),
            &content,
        );
        exec(
            &old,
            &format!(
                "INSERT INTO billing_events (event_id, tenant, tool, tool_version, currency, amount_micros, \
                 fuel_consumed, duration_micros, occurred_at, run_id, recorded_by, ledger_index, mac_scheme, \
                 row_version, mac_key_id, mac) VALUES ('{id}', '{}', 'summarize', '1.2.0', 'EUR', {}, 1000, 2500, \
                 {AT_NANOS}, 'run-{id}', '{}', {index}, 2, 1, 'row-1', {})",
                b.tenant,
                b.micros,
                registry_id(),
                blob(&old, &mac),
                id = b.event_id,
            ),
        )
        .await;
    }
    let tree = CompactTree::from_leaves(&hashes).unwrap();
    let frontier: Vec<u8> = tree
        .frontier()
        .iter()
        .flat_map(|h| h.as_bytes().to_vec())
        .collect();
    let config = keys.config();
    let signer =
        CheckpointSigner::from_pkcs8_pem(config.ledger_origin.clone(), &config.signing_key_pem).unwrap();
    let note = signer.sign(&Checkpoint::new(config.ledger_origin.clone(), 3, tree.root()).unwrap());
    exec(
        &old,
        &format!(
            "UPDATE ledger_head SET tree_size = 3, root = {}, frontier = {} WHERE id = 1",
            blob(&old, tree.root().as_bytes()),
            blob(&old, &frontier)
        ),
    )
    .await;
    exec(
        &old,
        &format!(
            "INSERT INTO ledger_checkpoints (tree_size, root, note, key_id, created_at) \
             VALUES (3, {}, '{note}', 'analytics-1', 1)",
            blob(&old, tree.root().as_bytes())
        ),
    )
    .await;
    old.close().await;
    tree.root()
}

/// The rows of before, then the service of now on the same database, which
/// records acme's m-0 (index 3) and globex's m-1 (index 4) with their
/// measurements.
struct Upgraded {
    ca: Ca,
    svc: Running,
    keys: AnalyticsKeys,
    /// The root of the checkpoint signed before the upgrade (size 3).
    root_before: Hash,
    /// A second handle on the database, to look at rows or tamper with them.
    sql: Database,
    operator: AnalyticsClient<Channel>,
    registry: AnalyticsClient<Channel>,
}

impl Upgraded {
    async fn start(db: &soma_store::testing::TestDb) -> Self {
        let keys = AnalyticsKeys::generate();
        let root_before = write_before(db, &keys).await;
        let ca = Ca::new();
        // Migration 7, start-up verification and the re-seal run here.
        let svc = start_analytics(&ca, &db.settings, keys.config(), None).await;
        let mut registry = client(&ca, &svc, "/svc/tool-registry");
        for (index, (id, tenant)) in [(3u64, ("m-0", "acme")), (4, ("m-1", "globex"))] {
            let recorded = registry
                .record_billing_event(billing(id, tenant, 200))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(recorded.ledger.unwrap().index, index, "{id}");
        }
        Self {
            operator: client(&ca, &svc, "/operator/auditor"),
            sql: common::database(&db.settings).await,
            ca,
            svc,
            keys,
            root_before,
            registry,
        }
    }

    fn origin(&self) -> String {
        format!("{TD}/analytics")
    }

    async fn stop(self) {
        self.sql.close().await;
        self.svc.stop().await;
    }
}

#[tokio::test]
async fn rows_written_before_the_measurements_keep_verifying_unchanged() {
    for db in soma_store::testing::engines("billing_fields_before").await {
        let label = db.label;
        let mut up = Upgraded::start(&db).await;
        let origin = up.origin();

        // Stored as they were: no measurements, row version 1; the new rows
        // carry both, at row version 2.
        assert_eq!(
            scalar(
                &up.sql,
                "SELECT COUNT(*) FROM billing_events WHERE module_sha256 IS NULL \
                 AND peak_memory_bytes IS NULL AND row_version = 1 AND mac_scheme = 2 AND event_id LIKE 'o-%'"
            )
            .await,
            3,
            "{label}"
        );
        assert_eq!(
            scalar(
                &up.sql,
                &format!(
                    "SELECT COUNT(*) FROM billing_events WHERE module_sha256 = {} \
                     AND peak_memory_bytes = {PEAK_MEMORY_BYTES} AND row_version = 2 AND event_id LIKE 'm-%'",
                    blob(&up.sql, &module_sha256())
                )
            )
            .await,
            2,
            "{label}"
        );

        let swept = sweep(&mut up.operator).await;
        assert_eq!(
            (swept.rows_checked, swept.failures.len()),
            (5, 0),
            "{label}: {:?}",
            swept.failures
        );
        let direct = soma_analytics::verify_store(&up.sql, &up.keys.row_keys())
            .await
            .unwrap();
        assert!(direct.failures.is_empty(), "{label}: {:?}", direct.failures);

        // acme's export: the rows of before exactly as the code of before
        // exported them, the new one with its measurements; every leaf
        // recomputed from its object is proven.
        let collected = export(&mut up.operator, "acme").await;
        let (document, checkpoint) = verified(&mut up.operator, &origin, collected).await;
        assert_eq!(event_ids(&document), ["o-0", "o-1", "m-0"], "{label}");
        let rows = document["rows"].as_array().unwrap();
        assert_eq!(rows[0], object_before(&BEFORE[0], 0), "{label}");
        assert_eq!(rows[1], object_before(&BEFORE[1], 1), "{label}");
        assert_eq!(rows[2]["module_sha256"], hex(&module_sha256()), "{label}");
        assert_eq!(rows[2]["peak_memory_bytes"], PEAK_MEMORY_BYTES, "{label}");
        assert_eq!(checkpoint.tree_size(), 5, "{label}");
        prove_rows(&mut up.operator, &document, &checkpoint).await;

        // The rows of before are proven against the checkpoint signed
        // before the upgrade, too.
        for (index, b) in BEFORE.iter().enumerate() {
            let proof = common::inclusion_proof(&mut up.operator, b.event_id, 3).await;
            assert_eq!(proof.leaf_index, index as u64, "{label}");
            verify_proof(&proof, 3, up.root_before.as_bytes());
        }

        // The same event recorded again with measurements is other content
        // under its id: a conflict, and the row of before stays as it was.
        let conflict = up
            .registry
            .record_billing_event(billing("o-0", "acme", 100))
            .await
            .unwrap_err();
        assert_eq!(conflict.code(), Code::AlreadyExists, "{label}: {conflict:?}");

        // A restart verifies the mixed ledger at start-up, and appends.
        up.svc.stop().await;
        up.svc = start_analytics(&up.ca, &db.settings, up.keys.config(), None).await;
        up.operator = client(&up.ca, &up.svc, "/operator/auditor");
        up.registry = client(&up.ca, &up.svc, "/svc/tool-registry");
        let recorded = up
            .registry
            .record_billing_event(billing("m-2", "globex", 7))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(recorded.ledger.unwrap().index, 5, "{label}");
        let collected = export(&mut up.operator, "globex").await;
        let (document, checkpoint) = verified(&mut up.operator, &origin, collected).await;
        assert_eq!(event_ids(&document), ["o-2", "m-1", "m-2"], "{label}");
        assert_eq!(document["rows"][0], object_before(&BEFORE[2], 2), "{label}");
        prove_rows(&mut up.operator, &document, &checkpoint).await;
        let swept = sweep(&mut up.operator).await;
        assert_eq!(
            (swept.rows_checked, swept.failures.len()),
            (6, 0),
            "{label}: {:?}",
            swept.failures
        );
        up.stop().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn measurements_blanked_changed_or_added_in_sql_are_caught_naming_the_row() {
    struct Case {
        name: &'static str,
        /// The tampering; `DIGEST` stands for another module's digest.
        sql: &'static str,
        /// acme's row it hits, and its ledger index.
        victim: (&'static str, u64),
    }
    let cases = [
        Case {
            name: "module digest blanked",
            sql: "UPDATE billing_events SET module_sha256 = NULL WHERE event_id = 'm-0'",
            victim: ("m-0", 3),
        },
        Case {
            name: "peak memory blanked",
            sql: "UPDATE billing_events SET peak_memory_bytes = NULL WHERE event_id = 'm-0'",
            victim: ("m-0", 3),
        },
        Case {
            name: "both blanked",
            sql: "UPDATE billing_events SET module_sha256 = NULL, peak_memory_bytes = NULL \
                  WHERE event_id = 'm-0'",
            victim: ("m-0", 3),
        },
        Case {
            name: "both blanked at row version 1: a new row passed off as an old one",
            sql: "UPDATE billing_events SET module_sha256 = NULL, peak_memory_bytes = NULL, row_version = 1 \
                  WHERE event_id = 'm-0'",
            victim: ("m-0", 3),
        },
        Case {
            name: "module digest changed",
            sql: "UPDATE billing_events SET module_sha256 = DIGEST WHERE event_id = 'm-0'",
            victim: ("m-0", 3),
        },
        Case {
            name: "peak memory changed",
            sql: "UPDATE billing_events SET peak_memory_bytes = peak_memory_bytes + 1 WHERE event_id = 'm-0'",
            victim: ("m-0", 3),
        },
        Case {
            name: "row version 1 on a measured row",
            sql: "UPDATE billing_events SET row_version = 1 WHERE event_id = 'm-0'",
            victim: ("m-0", 3),
        },
        Case {
            name: "measurements added to an old row",
            sql: "UPDATE billing_events SET module_sha256 = DIGEST, peak_memory_bytes = 65536 \
                  WHERE event_id = 'o-1'",
            victim: ("o-1", 1),
        },
        Case {
            name: "measurements added to an old row at row version 2",
            sql: "UPDATE billing_events SET module_sha256 = DIGEST, peak_memory_bytes = 65536, row_version = 2 \
                  WHERE event_id = 'o-1'",
            victim: ("o-1", 1),
        },
    ];
    for case in &cases {
        for db in soma_store::testing::engines("billing_fields_tamper").await {
            let label = format!("{}: {}", db.label, case.name);
            let mut up = Upgraded::start(&db).await;
            let origin = up.origin();
            let other = blob(&up.sql, &soma_sign::sha256(EMPTY_MODULE));
            tamper(&up.sql, &case.sql.replace("DIGEST", &other)).await;
            let (victim, index) = case.victim;
            let named = format!("ledger index {index}");

            // The sweep names the row, once.
            let swept = sweep(&mut up.operator).await;
            assert_eq!(swept.failures.len(), 1, "{label}: {:?}", swept.failures);
            let failure = &swept.failures[0];
            assert_eq!(
                (failure.table.as_str(), failure.primary_key.as_str()),
                ("billing_events", victim),
                "{label}"
            );
            assert!(
                failure.reason.starts_with("row mac: ") && failure.reason.contains(&named),
                "{label}: {}",
                failure.reason
            );

            // acme's export is refused, naming the row and its index, with
            // no signature; so is the row's proof.
            let refused = export(&mut up.operator, "acme").await;
            let status = refused
                .error
                .as_ref()
                .unwrap_or_else(|| panic!("{label}: the export must be refused"));
            assert_eq!(status.code(), Code::DataLoss, "{label}: {status:?}");
            assert_eq!(reason(status), "row_integrity", "{label}: {status:?}");
            assert!(
                status.message().contains(&format!("billing_events/{victim}"))
                    && status.message().contains(&named),
                "{label}: {}",
                status.message()
            );
            assert!(refused.signature.is_none(), "{label}: no signature");
            let proof = up
                .operator
                .inclusion_proof(pb::InclusionProofRequest {
                    event_id: victim.to_owned(),
                    tree_size: 0,
                })
                .await
                .unwrap_err();
            assert_eq!(proof.code(), Code::DataLoss, "{label}: {proof:?}");

            // globex's rows, old and new, are intact: its export verifies.
            let collected = export(&mut up.operator, "globex").await;
            let (document, _) = verified(&mut up.operator, &origin, collected).await;
            assert_eq!(event_ids(&document), ["o-2", "m-1"], "{label}");
            up.stop().await;
            db.cleanup().await;
        }
    }
}

#[tokio::test]
async fn a_digest_that_is_not_32_bytes_or_a_peak_beyond_i64_is_refused_naming_its_field() {
    struct Case {
        name: &'static str,
        request: pb::RecordBillingEventRequest,
        field: &'static str,
    }
    let with = |f: &dyn Fn(&mut pb::RecordBillingEventRequest)| {
        let mut r = billing("bad-1", "acme", 10);
        f(&mut r);
        r
    };
    let digest = module_sha256();
    let cases = [
        Case {
            name: "a digest of 31 bytes",
            request: with(&|r| r.module_sha256 = digest[..31].to_vec()),
            field: "module_sha256",
        },
        Case {
            name: "a digest of 33 bytes",
            request: with(&|r| r.module_sha256 = [digest.as_slice(), &[0]].concat()),
            field: "module_sha256",
        },
        Case {
            name: "no digest",
            request: with(&|r| r.module_sha256.clear()),
            field: "module_sha256",
        },
        Case {
            name: "a peak of 2^63 bytes",
            request: with(&|r| r.peak_memory_bytes = 1 << 63),
            field: "peak_memory_bytes",
        },
        Case {
            name: "a peak of 2^64 - 1 bytes",
            request: with(&|r| r.peak_memory_bytes = u64::MAX),
            field: "peak_memory_bytes",
        },
    ];
    for db in soma_store::testing::engines("billing_fields_invalid").await {
        let label = db.label;
        let ca = Ca::new();
        let svc = start_analytics(&ca, &db.settings, common::analytics_config(), None).await;
        let mut registry = client(&ca, &svc, "/svc/tool-registry");
        for case in &cases {
            let refused = registry
                .record_billing_event(case.request.clone())
                .await
                .unwrap_err();
            assert_eq!(
                (refused.code(), reason(&refused)),
                (Code::InvalidArgument, "invalid_argument"),
                "{label}: {}: {refused:?}",
                case.name
            );
            assert!(
                refused.message().starts_with(&format!("{}: ", case.field)),
                "{label}: {}: {}",
                case.name,
                refused.message()
            );
        }
        // Nothing was written.
        let sql = common::database(&db.settings).await;
        assert_eq!(
            scalar(&sql, "SELECT COUNT(*) FROM billing_events").await,
            0,
            "{label}"
        );
        assert_eq!(
            scalar(&sql, "SELECT COUNT(*) FROM ledger_leaves").await,
            0,
            "{label}"
        );
        sql.close().await;
        svc.stop().await;
        db.cleanup().await;
    }
}
