//! Analytics: billing and capsule-run events in MACed rows and an RFC 9162
//! Merkle ledger with signed checkpoints.
//!
//! Built: ingestion (`RecordCapsuleRun`, `RecordBillingEvent`), each event
//! and its leaf committed in one transaction by a group-committing writer;
//! start-up verification of the stored tree (writes refused on mismatch,
//! with the first bad index); the ledger RPCs (`LedgerCheckpoint`,
//! `InclusionProof`, `ConsistencyProof`), tenant-scoped; and the row sweep
//! (`VerifyStore`); persona regressions (`TransitionPersonaRegression`: a
//! state machine with optimistic concurrency, each transition a ledger leaf
//! committed with the state update) and anomaly scans (`ScanAnomalies`:
//! median/MAD modified z-scores, findings MACed, each scan a ledger leaf);
//! disaster-recovery drills (`RecordDisasterDrill`, `DisasterDrillSummary`)
//! with signed webhook notifications delivered through an outbox; and
//! exports (`ExportCapsuleRuns`, `ExportBillingLedger`), streamed, signed over
//! their exact bytes and bound to a checkpoint, with `ListVerificationKeys`.
//!
//! Security-relevant defaults: billing is accepted only from the tool
//! registry's SPIFFE ID (the method policy), a tenant's claims never reach
//! another tenant's rows, and a row whose MAC fails is never served.

mod anomaly;
mod db;
mod drills;
mod error;
mod export;
mod ledger;
mod read;
mod regression;
mod rows;
mod service;
mod validate;
mod webhook;

use std::path::PathBuf;
use std::sync::Arc;

use soma_ledger::CheckpointSigner;
use soma_mesh::{Limits, Readiness, ServiceSpec};
use soma_proto::v1::analytics_server::AnalyticsServer;
use soma_sign::HmacKeyring;
use soma_store::{Database, Migration, Migrations};
use tonic::service::Routes;

pub use anomaly::{AnomalyConfig, DEFAULT_ANOMALY_MIN_SAMPLES, DEFAULT_ANOMALY_THRESHOLD};
pub use drills::DrillConfig;
pub use error::AnalyticsError;
pub use service::AnalyticsService;

/// The service's migrations.
pub static MIGRATIONS: Migrations = Migrations(&[
    Migration {
        version: 1,
        description: "ledger and events",
        sqlite: include_str!("../migrations/sqlite/0001_ledger_and_events.sql"),
        postgres: include_str!("../migrations/postgres/0001_ledger_and_events.sql"),
    },
    Migration {
        version: 2,
        description: "disaster-recovery drills and webhook outbox",
        sqlite: include_str!("../migrations/sqlite/0002_drills.sql"),
        postgres: include_str!("../migrations/postgres/0002_drills.sql"),
    },
    Migration {
        version: 3,
        description: "persona regressions and anomaly scans",
        sqlite: include_str!("../migrations/sqlite/0003_regressions_anomalies.sql"),
        postgres: include_str!("../migrations/postgres/0003_regressions_anomalies.sql"),
    },
    Migration {
        version: 4,
        description: "export keyset indexes",
        sqlite: include_str!("../migrations/sqlite/0004_export_keyset_indexes.sql"),
        postgres: include_str!("../migrations/postgres/0004_export_keyset_indexes.sql"),
    },
]);

/// Analytics' own settings: its keys, read from files so that rotation is
/// a file change.
#[derive(Debug)]
pub struct AnalyticsConfig {
    /// Row MAC keys (versioned; the primary signs).
    pub row_keys: HmacKeyring,
    /// Ed25519 key (PKCS#8 PEM) that signs checkpoints and exports.
    pub signing_key_pem: String,
    /// Id of that key.
    pub signing_key_id: String,
    /// Checkpoint origin, e.g. `somastack.local/analytics`.
    pub ledger_origin: String,
    /// Longest `[from, to)` window one export may span.
    pub max_export_span: std::time::Duration,
    /// Drill objectives and webhook receivers.
    pub drills: DrillConfig,
    /// Anomaly scan threshold and minimum sample size.
    pub anomaly: AnomalyConfig,
}

impl AnalyticsConfig {
    /// Reads `SOMA_ANALYTICS_ROW_KEYS_FILE`, `SOMA_ANALYTICS_SIGNING_KEY_FILE`,
    /// `SOMA_ANALYTICS_SIGNING_KEY_ID` (default `analytics-1`) and
    /// `SOMA_ANALYTICS_LEDGER_ORIGIN` (default `<trust domain>/analytics`).
    pub fn from_env(
        env: impl Fn(&str) -> Option<String>,
        trust_domain: &str,
    ) -> Result<Self, AnalyticsError> {
        let file = |var: &str| -> Result<PathBuf, AnalyticsError> {
            env(var)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .ok_or_else(|| AnalyticsError::Config(format!("{var} is not set")))
        };
        let keys_path = file("SOMA_ANALYTICS_ROW_KEYS_FILE")?;
        let row_keys = HmacKeyring::load(&keys_path)
            .map_err(|e| AnalyticsError::Config(format!("{}: {e}", keys_path.display())))?;
        let signing_path = file("SOMA_ANALYTICS_SIGNING_KEY_FILE")?;
        let signing_key_pem = std::fs::read_to_string(&signing_path)
            .map_err(|e| AnalyticsError::Config(format!("{}: {e}", signing_path.display())))?;
        let config = Self {
            row_keys,
            signing_key_pem,
            signing_key_id: env("SOMA_ANALYTICS_SIGNING_KEY_ID")
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| "analytics-1".to_owned()),
            ledger_origin: env("SOMA_ANALYTICS_LEDGER_ORIGIN")
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| format!("{trust_domain}/analytics")),
            max_export_span: match env("SOMA_ANALYTICS_MAX_EXPORT_SPAN").filter(|v| !v.is_empty()) {
                Some(v) => parse_span(&v)?,
                None => DEFAULT_MAX_EXPORT_SPAN,
            },
            drills: DrillConfig::from_env(&env)?,
            anomaly: AnomalyConfig::from_env(&env)?,
        };
        // Fail now, before any port is bound, if the key does not load.
        CheckpointSigner::from_pkcs8_pem(config.ledger_origin.clone(), &config.signing_key_pem)
            .map_err(|e| AnalyticsError::Config(format!("{}: {e}", signing_path.display())))?;
        Ok(config)
    }
}

/// Default longest export window: 31 days.
pub const DEFAULT_MAX_EXPORT_SPAN: std::time::Duration = std::time::Duration::from_secs(31 * 24 * 3600);

/// Parses a span such as `31d` or `744h` (seconds, minutes, hours, days).
fn parse_span(value: &str) -> Result<std::time::Duration, AnalyticsError> {
    let bad = || {
        AnalyticsError::Config(format!(
            "SOMA_ANALYTICS_MAX_EXPORT_SPAN: {value:?} is not like 31d or 12h"
        ))
    };
    let (number, unit) = value.split_at(value.len().saturating_sub(1));
    let n: u64 = number.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        _ => None,
    }
    .filter(|s| *s > 0)
    .ok_or_else(bad)?;
    Ok(std::time::Duration::from_secs(secs))
}

/// The service as the mesh runtime serves it: verifies the stored ledger
/// and starts its writer first.
pub async fn spec(
    db: Database,
    limits: &Limits,
    config: AnalyticsConfig,
) -> Result<ServiceSpec, AnalyticsError> {
    let signer = CheckpointSigner::from_pkcs8_pem(config.ledger_origin.clone(), &config.signing_key_pem)?;
    let keys = Arc::new(config.row_keys);
    let ledger = ledger::Ledger::open(
        db.clone(),
        Arc::clone(&keys),
        signer,
        config.signing_key_id.clone(),
    )
    .await?;
    let export_signer = soma_sign::Ed25519Signer::from_pkcs8_pem(
        soma_sign::KeyId::new(config.signing_key_id.clone())?,
        &config.signing_key_pem,
    )?;
    // Delivers pending webhook notifications, including those left by an
    // earlier run; it ends when the service is dropped.
    webhook::spawn(db.clone(), Arc::clone(&keys), &config.drills.webhooks);
    let service = AnalyticsService {
        db: db.clone(),
        ledger: ledger.clone(),
        keys,
        signer: Arc::new(export_signer),
        max_export_span: config.max_export_span,
        drills: config.drills,
        anomaly: config.anomaly,
    };
    let server = AnalyticsServer::new(service)
        .max_decoding_message_size(limits.max_recv_message_bytes)
        .max_encoding_message_size(limits.max_send_message_bytes);
    let database = Readiness::of_database(db);
    let readiness = Readiness::new(move || {
        let database = database.clone();
        let ledger = ledger.clone();
        async move {
            database.check().await?;
            match ledger.health().await {
                ledger::Health::Sound => Ok(()),
                ledger::Health::Corrupt {
                    first_bad_index,
                    reason,
                } => Err(format!(
                    "ledger integrity check failed at index {first_bad_index}: {reason}"
                )),
            }
        }
    });
    Ok(ServiceSpec {
        name: "somastack.v1.Analytics",
        routes: Routes::new(server),
        readiness,
    })
}

/// The result of a sweep of every Analytics row (the `VerifyStore` RPC and
/// `soma verify store`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreReport {
    /// Rows checked, failed or not.
    pub rows_checked: u64,
    /// The rows that failed, in sweep order.
    pub failures: Vec<StoreFailure>,
}

/// One row that failed the sweep.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreFailure {
    /// Table of the row, e.g. `billing_events`.
    pub table: String,
    /// The row's primary key.
    pub primary_key: String,
    /// Why it failed (a MAC that does not verify, a leaf that differs).
    pub reason: String,
}

/// Sweeps every Analytics row: each row's MAC under `keys` (the primary or
/// an older enabled version; unknown and retired key ids fail), and each
/// ledgered row's leaf recomputed and compared with the stored leaf. Only
/// reads; the database must already carry the service's migrations.
pub async fn verify_store(db: &Database, keys: &HmacKeyring) -> Result<StoreReport, AnalyticsError> {
    let (rows_checked, failures) = ledger::sweep(db, keys).await?;
    Ok(StoreReport {
        rows_checked,
        failures: failures
            .into_iter()
            .map(|(table, primary_key, reason)| StoreFailure {
                table,
                primary_key,
                reason,
            })
            .collect(),
    })
}
