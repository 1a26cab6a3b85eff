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
//! Active/standby (PostgreSQL): several instances may run on one database,
//! and exactly one of them writes — the one whose ledger writer holds the
//! ledger writer's lease, a session-level advisory lock held by the very
//! session every commit goes to (`ledger::lease`). It fences every write,
//! not only the start: a writer whose session died commits nothing more,
//! and another instance gets the lock only once that session is gone. An
//! instance without the lease is a standby: its health is NOT_SERVING, its
//! `/readyz` answers 503 `not ready: standby: …`, its webhook deliveries
//! pause, and every method the proto does not declare `read_only` is
//! refused UNAVAILABLE with reason `standby` (logged, nothing written).
//! A standby does answer the read-only methods (checkpoints, proofs,
//! exports, summaries, the store sweep): a read on it is caught up from the
//! database with every leaf row's MAC checked, exactly as on any instance
//! that did not append the leaves itself, so it is as trustworthy as on the
//! writer; clients that follow health (the gateway, the outboxes) send
//! everything to the writer anyway. The standby asks for the lease every
//! 200 ms; the one that gets it takes the ledger over — its view caught up
//! with every leaf stored and checked to recompute the head's root, the
//! latest checkpoint read — before its first append. On SQLite (embedded,
//! one instance) the writer always writes.
//!
//! Security-relevant defaults: billing is accepted only from the tool
//! registry's SPIFFE ID (the method policy), a tenant's claims never reach
//! another tenant's rows, a row whose MAC fails is never served, and on
//! PostgreSQL nothing is written without the lease.

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
