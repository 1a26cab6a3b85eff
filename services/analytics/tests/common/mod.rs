//! Analytics' own builders, kept once: Analytics started in-process on
//! 127.0.0.1:0 with real mTLS on a real database (SQLite or PostgreSQL),
//! its keys, clients under any SPIFFE ID of the test's authority, the
//! requests the tests record, and its ledger's stored leaves.
//!
//! What is not Analytics' (the authority, per-engine stores, serving a
//! service, claims, SQL on either engine) comes from `soma-testing`. The
//! `soma` binary's tests (`crates/soma/tests`), which drive the binary
//! against a real Analytics, include this module from there.

#![allow(
    dead_code,
    reason = "each test binary uses a different subset of these builders"
)]

pub mod export;

use std::time::Duration;

use soma_analytics::AnalyticsConfig;
use soma_auth::{ClaimsSigner, ClaimsVerifier};
use soma_ledger::Hash;
use soma_mesh::ServiceKind;
use soma_proto::v1 as pb;
use soma_proto::v1::analytics_client::AnalyticsClient;
use soma_store::{Database, StoreSettings};
use soma_testing::{Ca, Running, TD};
use tonic::transport::Channel;

/// When the recorded events happened (2026-09-21T14:13:20Z), unless a test
/// says otherwise.
pub const OCCURRED_AT: i64 = 1_790_000_000;

/// The WebAssembly module the recorded billing events ran, in binary form:
/// `(module (memory 1))` (magic, version, and a memory section of one page).
pub const WASM_MODULE: &[u8] = b"\0asm\x01\0\0\0\x05\x03\x01\x00\x01";

/// The peak linear memory of [`WASM_MODULE`]'s execution: its one 64 KiB
/// page, which it never grows.
pub const PEAK_MEMORY_BYTES: u64 = 65_536;

/// The SHA-256 of [`WASM_MODULE`], as the sandbox reports it.
pub fn module_sha256() -> Vec<u8> {
    soma_sign::sha256(WASM_MODULE).to_vec()
}

/// Analytics key material that outlives one service instance (restarts),
/// or is written to files (`soma serve analytics`, `soma verify store`).
pub struct AnalyticsKeys {
    /// The row keyring as JSON.
    pub row_keys_json: Vec<u8>,
    /// The Ed25519 signing key (key id `analytics-1`), PKCS#8 PEM.
    pub signing_key_pem: String,
}

impl AnalyticsKeys {
    /// A fresh row keyring (`row-1`) and a fresh signing key.
    pub fn generate() -> Self {
        let (_, row_keys_json) = soma_sign::HmacKeyring::generate("row-1").unwrap();
        let (_, pkcs8) =
            soma_sign::Ed25519Signer::generate(soma_sign::KeyId::new("analytics-1").unwrap()).unwrap();
        Self {
            row_keys_json,
            signing_key_pem: soma_testing::pem("PRIVATE KEY", &pkcs8),
        }
    }

    /// A config over these keys (default settings otherwise).
    pub fn config(&self) -> AnalyticsConfig {
        AnalyticsConfig {
            row_keys: self.row_keys(),
            signing_key_pem: self.signing_key_pem.clone(),
            signing_key_id: "analytics-1".to_owned(),
            ledger_origin: format!("{TD}/analytics"),
            max_export_span: soma_analytics::DEFAULT_MAX_EXPORT_SPAN,
            drills: soma_analytics::DrillConfig::default(),
            anomaly: soma_analytics::AnomalyConfig::default(),
        }
    }

    /// The row keyring (to sweep the database directly).
    pub fn row_keys(&self) -> soma_sign::HmacKeyring {
        soma_sign::HmacKeyring::from_json(&self.row_keys_json).unwrap()
    }
}

/// A config over fresh keys.
pub fn analytics_config() -> AnalyticsConfig {
    AnalyticsKeys::generate().config()
}

/// Starts Analytics (identity `/svc/analytics` from `ca`) on the database
/// of `store` (SQLite or PostgreSQL, e.g. from `soma_store::testing::engines`)
/// with `config`, verifying claims envelopes signed by `claims` (as the
/// gateway `/svc/gateway`) when given.
pub async fn start_analytics(
    ca: &Ca,
    store: &StoreSettings,
    config: AnalyticsConfig,
    claims: Option<&ClaimsSigner>,
) -> Running {
    let identity = ca.store("/svc/analytics", Duration::from_secs(3600));
    let verifier = claims.map(|signer| {
        ClaimsVerifier::new(
            ca.id("/svc/gateway"),
            ca.id("/svc/analytics"),
            vec![(signer.key_id().to_owned(), signer.public_key())],
        )
    });
    let settings = soma_testing::settings(ServiceKind::Analytics, &[]);
    let db = Database::connect(store, "analytics").await.unwrap();
    db.migrate(&soma_analytics::MIGRATIONS).await.unwrap();
    let spec = soma_analytics::spec(db, &settings.limits, config).await.unwrap();
    soma_testing::serve(settings, identity, verifier, spec).await
}

/// A second handle on the database Analytics uses on `store`, to look at
/// its rows or to tamper with them.
pub async fn database(store: &StoreSettings) -> Database {
    Database::connect(store, "analytics").await.unwrap()
}

/// A client of `svc` under the SPIFFE ID `path` of `ca`, over mTLS.
pub fn client(ca: &Ca, svc: &Running, path: &str) -> AnalyticsClient<Channel> {
    AnalyticsClient::new(soma_testing::channel(
        ca.store(path, Duration::from_secs(3600)),
        svc.addr,
        &svc.id,
    ))
}

/// A timestamp at whole seconds.
pub fn ts(seconds: i64) -> Option<prost_types::Timestamp> {
    ts_nanos(seconds, 0)
}

/// A timestamp with nanoseconds.
pub fn ts_nanos(seconds: i64, nanos: i32) -> Option<prost_types::Timestamp> {
    Some(prost_types::Timestamp { seconds, nanos })
}

/// A billing event of `tenant` for `micros` (tool `summarize`), at
/// [`OCCURRED_AT`].
pub fn billing(event_id: &str, tenant: &str, micros: i64) -> pb::RecordBillingEventRequest {
    billing_of(event_id, tenant, "summarize", micros, ts(OCCURRED_AT))
}

/// A billing event of `tenant` for `micros`, of `tool`, at `occurred_at`;
/// the execution ran [`WASM_MODULE`] and peaked at [`PEAK_MEMORY_BYTES`].
pub fn billing_of(
    event_id: &str,
    tenant: &str,
    tool: &str,
    micros: i64,
    occurred_at: Option<prost_types::Timestamp>,
) -> pb::RecordBillingEventRequest {
    pb::RecordBillingEventRequest {
        event_id: event_id.to_owned(),
        tenant: tenant.to_owned(),
        tool: tool.to_owned(),
        tool_version: "1.2.0".to_owned(),
        amount: Some(pb::Money {
            currency: "EUR".to_owned(),
            micros,
        }),
        fuel_consumed: 1000,
        duration_micros: 2500,
        occurred_at,
        run_id: format!("run-{event_id}"),
        peak_memory_bytes: PEAK_MEMORY_BYTES,
        module_sha256: module_sha256(),
    }
}

/// A succeeded capsule run of `tenant` (empty: the caller's claims say),
/// tool `summarize`, started 100 s after [`OCCURRED_AT`].
pub fn capsule_run(event_id: &str, tenant: &str) -> pb::RecordCapsuleRunRequest {
    capsule_run_of(event_id, tenant, "summarize", OCCURRED_AT + 100)
}

/// A succeeded capsule run of `tenant` and `tool`, started at `at` (whole
/// seconds), lasting 2.0000005 s.
pub fn capsule_run_of(event_id: &str, tenant: &str, tool: &str, at: i64) -> pb::RecordCapsuleRunRequest {
    pb::RecordCapsuleRunRequest {
        event_id: event_id.to_owned(),
        tenant: tenant.to_owned(),
        capsule_id: "capsule-1".to_owned(),
        tool: tool.to_owned(),
        run_id: format!("run-{event_id}"),
        outcome: pb::RunOutcome::Succeeded as i32,
        started_at: ts(at),
        duration: Some(prost_types::Duration {
            seconds: 2,
            nanos: 500,
        }),
        ..Default::default()
    }
}

/// An audit event of `tenant` (empty: platform-wide) with a few details.
pub fn audit(event_id: &str, tenant: &str, action: &str, at: i64) -> pb::RecordAuditEventRequest {
    use prost_types::value::Kind;
    let value = |kind| prost_types::Value { kind: Some(kind) };
    pb::RecordAuditEventRequest {
        event_id: event_id.to_owned(),
        tenant: tenant.to_owned(),
        action: action.to_owned(),
        subject: format!("tool:summarize@1.2.0/{event_id}"),
        details: Some(prost_types::Struct {
            fields: [
                ("version".to_owned(), value(Kind::StringValue("1.2.0".to_owned()))),
                ("attempt".to_owned(), value(Kind::NumberValue(3.0))),
                ("signed".to_owned(), value(Kind::BoolValue(true))),
                (
                    "reviewers".to_owned(),
                    value(Kind::ListValue(prost_types::ListValue {
                        values: vec![value(Kind::StringValue("ada".to_owned()))],
                    })),
                ),
            ]
            .into_iter()
            .collect(),
        }),
        occurred_at: ts(at),
    }
}

/// The inclusion proof of `event_id` at `tree_size` (0: the latest tree)
/// that `client` is given.
pub async fn inclusion_proof(
    client: &mut AnalyticsClient<Channel>,
    event_id: &str,
    tree_size: u64,
) -> pb::InclusionProofResponse {
    client
        .inclusion_proof(pb::InclusionProofRequest {
            event_id: event_id.to_owned(),
            tree_size,
        })
        .await
        .unwrap()
        .into_inner()
}

/// Verifies `proof` offline (RFC 9162): its leaf, at its index, is in the
/// tree of `tree_size` leaves whose root is `root`.
pub fn verify_proof(proof: &pb::InclusionProofResponse, tree_size: u64, root: &[u8]) {
    let path: Vec<Hash> = proof.proof.iter().map(|h| Hash::from_slice(h).unwrap()).collect();
    soma_ledger::verify_inclusion(
        &Hash::from_slice(&proof.leaf_hash).unwrap(),
        proof.leaf_index,
        tree_size,
        &path,
        &Hash::from_slice(root).unwrap(),
    )
    .unwrap();
}

/// The leaf hashes stored in the ledger, in leaf order (to recompute the
/// root independently of the service).
pub async fn leaf_hashes(sql: &Database) -> Vec<Hash> {
    use sqlx::Row as _;
    let q = "SELECT leaf_hash FROM ledger_leaves ORDER BY leaf_index";
    let rows: Vec<Vec<u8>> = match (sql.as_sqlite(), sql.as_postgres()) {
        (Some(p), _) => sqlx::query(q)
            .fetch_all(p)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect(),
        (None, Some(p)) => sqlx::query(q)
            .fetch_all(p)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect(),
        _ => unreachable!("a database is either SQLite or PostgreSQL"),
    };
    rows.iter().map(|b| Hash::from_slice(b).unwrap()).collect()
}

/// The row MAC a row of `table` is sealed with, computed here from the
/// canonical form (serde_json, RFC 8785) rather than by the service:
/// HMAC-SHA256 under `keys`' primary key (`row-1`) over `{content, key_id,
/// [ledger_index, mac_scheme,] primary_key, row_version, table, tenant}`,
/// with integers as decimal strings. `ledger_index` `Some` is scheme 2
/// (which binds the index and the scheme), `None` scheme 1 (rows sealed
/// before scheme 2).
pub fn row_mac(
    keys: &soma_sign::HmacKeyring,
    (table, key, tenant): (&str, &str, &str),
    row_version: i64,
    ledger_index: Option<i64>,
    content: &serde_json::Value,
) -> Vec<u8> {
    let mut message = serde_json::json!({
        "table": table,
        "primary_key": key,
        "tenant": tenant,
        "row_version": row_version.to_string(),
        "key_id": keys.primary().as_str(),
        "content": content,
    });
    if let Some(index) = ledger_index {
        message["ledger_index"] = index.to_string().into();
        message["mac_scheme"] = "2".into();
    }
    keys.sign(&soma_sign::jcs::canonicalize(&message).unwrap())
        .1
        .to_vec()
}

/// The MAC of a sealed `ledger_leaves` row, computed here likewise:
/// HMAC-SHA256 over `{event_id, event_time, key_id, kind, leaf_hash (hex),
/// leaf_index, mac_scheme: "2", table: "ledger_leaves", tenant}`.
pub fn leaf_mac(
    keys: &soma_sign::HmacKeyring,
    index: i64,
    (event_id, tenant, kind): (&str, &str, &str),
    event_time: i64,
    leaf_hash: &Hash,
) -> Vec<u8> {
    let hash: String = leaf_hash.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
    let message = serde_json::json!({
        "table": "ledger_leaves",
        "mac_scheme": "2",
        "leaf_index": index.to_string(),
        "event_id": event_id,
        "tenant": tenant,
        "kind": kind,
        "event_time": event_time.to_string(),
        "leaf_hash": hash,
        "key_id": keys.primary().as_str(),
    });
    keys.sign(&soma_sign::jcs::canonicalize(&message).unwrap())
        .1
        .to_vec()
}

/// A byte string as an SQL literal of the engine of `db`.
pub fn blob(db: &Database, bytes: &[u8]) -> String {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    if db.as_sqlite().is_some() {
        format!("X'{hex}'")
    } else {
        format!("'\\x{hex}'::bytea")
    }
}

/// Runs `sql` as an attacker with write access would: with the foreign
/// keys that would stop it out of the way, on one connection.
pub async fn tamper(db: &Database, sql: &str) {
    match (db.as_sqlite(), db.as_postgres()) {
        (Some(pool), _) => {
            let sql = format!("PRAGMA foreign_keys = OFF; {sql}; PRAGMA foreign_keys = ON;");
            sqlx::raw_sql(&sql).execute(pool).await.unwrap();
        }
        (None, Some(pool)) => {
            let sql = format!(
                "SET session_replication_role = replica; {sql}; SET session_replication_role = DEFAULT;"
            );
            sqlx::raw_sql(&sql).execute(pool).await.unwrap();
        }
        _ => unreachable!("a database is either SQLite or PostgreSQL"),
    }
}
