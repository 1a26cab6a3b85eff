//! Analytics: billing, capsule-run, drill, persona-regression, anomaly and
//! audit data in MACed rows and an RFC 9162 Merkle ledger with signed
//! checkpoints.
//!
//! Built: ingestion (`RecordCapsuleRun`, `RecordBillingEvent`), each event
//! and its leaf committed in one transaction by a group-committing writer
//! (`ledger`) that names no row kind: each table lives in one module of
//! `tables` and the writer inserts any of them through one trait;
//! start-up verification of the stored tree (writes refused on mismatch,
//! with the first bad index) and the row sweep (`VerifyStore`,
//! [`verify_store`]) in `integrity`; the ledger RPCs (`LedgerCheckpoint`,
//! `InclusionProof`, `ConsistencyProof`), tenant-scoped; persona
//! regressions (`TransitionPersonaRegression`: a state machine with
//! optimistic concurrency, each transition a ledger leaf committed with the
//! state update) and anomaly scans (`ScanAnomalies`: median/MAD modified
//! z-scores, findings MACed, each scan a ledger leaf); disaster-recovery
//! drills (`RecordDisasterDrill`, `DisasterDrillSummary`) with signed
//! webhook notifications delivered through an outbox; and exports
//! (`ExportCapsuleRuns`, `ExportBillingLedger`), streamed, signed over
//! their exact bytes and bound to a checkpoint, with `ListVerificationKeys`.
//!
//! Security-relevant defaults: billing is accepted only from the tool
//! registry's SPIFFE ID (the method policy), a tenant's claims never reach
//! another tenant's rows, and a row whose MAC fails is never served.

mod anomaly;
mod config;
mod convert;
mod drills;
mod error;
mod export;
mod integrity;
mod ledger;
mod metrics;
mod migrations;
mod regression;
mod service;
mod tables;
mod validate;
mod webhook;

pub use config::{
    AnalyticsConfig, AnomalyConfig, DEFAULT_ANOMALY_MIN_SAMPLES, DEFAULT_ANOMALY_THRESHOLD,
    DEFAULT_MAX_EXPORT_SPAN, DrillConfig,
};
pub use error::AnalyticsError;
pub use integrity::{StoreFailure, StoreReport, verify_store};
pub use migrations::MIGRATIONS;
pub use service::{AnalyticsService, spec};
