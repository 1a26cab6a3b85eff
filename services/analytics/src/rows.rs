//! Event rows, their canonical content, their row MACs and their ledger
//! leaves.
//!
//! A row's MAC is HMAC-SHA256 over the RFC 8785 canonical form of
//! `{table, primary_key, tenant, row_version, key_id, content}`, computed
//! from application values (never from database text). Binding the table,
//! key and tenant means a valid row copied to another table, key or tenant
//! fails; binding the key id means a MAC cannot be replayed under another
//! key. Integers travel as decimal strings: RFC 8785 numbers are doubles,
//! and amounts must stay exact.

use serde_json::{Value, json};
use soma_ledger::Hash;
use soma_sign::{HmacKeyring, jcs};

use crate::error::AnalyticsError;

/// Version every row is written with (rows are never updated in place).
pub(crate) const ROW_VERSION: i64 = 1;

/// What the MAC of a stored row covers, and what its ledger leaf hashes.
pub(crate) trait EventRow {
    /// The table.
    const TABLE: &'static str;
    /// The ledger leaf kind.
    const KIND: &'static str;
    /// Primary key.
    fn event_id(&self) -> &str;
    /// Tenant the row belongs to.
    fn tenant(&self) -> &str;
    /// Every application field but the key and tenant.
    fn content(&self) -> Value;

    /// The bytes the row MAC covers.
    fn mac_message(&self, row_version: i64, key_id: &str) -> Result<Vec<u8>, AnalyticsError> {
        let message = json!({
            "table": Self::TABLE,
            "primary_key": self.event_id(),
            "tenant": self.tenant(),
            "row_version": row_version.to_string(),
            "key_id": key_id,
            "content": self.content(),
        });
        Ok(jcs::canonicalize(&message)?)
    }

    /// MACs the row with the keyring's primary key.
    fn seal(&self, keys: &HmacKeyring) -> Result<Seal, AnalyticsError> {
        let key_id = keys.primary().as_str().to_owned();
        let (_, tag) = keys.sign(&self.mac_message(ROW_VERSION, &key_id)?);
        Ok(Seal {
            row_version: ROW_VERSION,
            key_id,
            mac: tag.to_vec(),
        })
    }

    /// Checks a stored row's MAC.
    fn check(&self, keys: &HmacKeyring, seal: &Seal) -> Result<(), AnalyticsError> {
        let message = self.mac_message(seal.row_version, &seal.key_id)?;
        keys.verify(&seal.key_id, &message, &seal.mac)
            .map_err(|_| AnalyticsError::RowIntegrity {
                table: Self::TABLE,
                primary_key: self.event_id().to_owned(),
            })
    }

    /// The ledger leaf data: canonical `{kind, event_id, tenant, content}`.
    fn leaf_data(&self) -> Result<Vec<u8>, AnalyticsError> {
        let leaf = json!({
            "kind": Self::KIND,
            "event_id": self.event_id(),
            "tenant": self.tenant(),
            "content": self.content(),
        });
        Ok(jcs::canonicalize(&leaf)?)
    }

    /// The RFC 9162 leaf hash of [`EventRow::leaf_data`].
    fn leaf_hash(&self) -> Result<Hash, AnalyticsError> {
        Ok(soma_ledger::leaf_hash(&self.leaf_data()?))
    }
}

/// The integrity columns of a stored row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Seal {
    pub row_version: i64,
    pub key_id: String,
    pub mac: Vec<u8>,
}

/// A capsule run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CapsuleRun {
    pub event_id: String,
    pub tenant: String,
    pub capsule_id: String,
    pub tool: String,
    pub run_id: String,
    /// `succeeded`, `failed` or `refused`.
    pub outcome: String,
    /// Unix nanoseconds.
    pub started_at: i64,
    pub duration_nanos: i64,
    /// SPIFFE ID of the service that recorded it.
    pub recorded_by: String,
}

impl EventRow for CapsuleRun {
    const TABLE: &'static str = "capsule_runs";
    const KIND: &'static str = "capsule_run";

    fn event_id(&self) -> &str {
        &self.event_id
    }

    fn tenant(&self) -> &str {
        &self.tenant
    }

    fn content(&self) -> Value {
        json!({
            "capsule_id": self.capsule_id,
            "tool": self.tool,
            "run_id": self.run_id,
            "outcome": self.outcome,
            "started_at": self.started_at.to_string(),
            "duration_nanos": self.duration_nanos.to_string(),
            "recorded_by": self.recorded_by,
        })
    }
}

/// A billing event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BillingEvent {
    pub event_id: String,
    pub tenant: String,
    pub tool: String,
    pub tool_version: String,
    /// ISO 4217.
    pub currency: String,
    pub amount_micros: i64,
    pub fuel_consumed: i64,
    pub duration_micros: i64,
    /// Unix nanoseconds.
    pub occurred_at: i64,
    pub run_id: String,
    pub recorded_by: String,
}

impl EventRow for BillingEvent {
    const TABLE: &'static str = "billing_events";
    const KIND: &'static str = "billing_event";

    fn event_id(&self) -> &str {
        &self.event_id
    }

    fn tenant(&self) -> &str {
        &self.tenant
    }

    fn content(&self) -> Value {
        json!({
            "tool": self.tool,
            "tool_version": self.tool_version,
            "currency": self.currency,
            "amount_micros": self.amount_micros.to_string(),
            "fuel_consumed": self.fuel_consumed.to_string(),
            "duration_micros": self.duration_micros.to_string(),
            "occurred_at": self.occurred_at.to_string(),
            "run_id": self.run_id,
            "recorded_by": self.recorded_by,
        })
    }
}

/// A row waiting to be appended.
#[derive(Clone, Debug)]
pub(crate) enum NewRow {
    CapsuleRun(CapsuleRun),
    Billing(BillingEvent),
    /// A persona regression's transition; its commit also moves the
    /// regression's state row, guarded by the version it moves from.
    RegressionTransition(crate::regression::Transition),
    /// An anomaly scan's audit entry, committed with its findings.
    AnomalyScan(Box<crate::anomaly::ScanRecord>),
    /// A disaster-recovery drill, committed with its webhook outbox rows.
    Drill(Box<crate::drills::PendingDrill>),
}

impl NewRow {
    pub(crate) fn event_id(&self) -> &str {
        match self {
            Self::CapsuleRun(r) => r.event_id(),
            Self::Billing(r) => r.event_id(),
            Self::RegressionTransition(r) => r.event_id(),
            Self::AnomalyScan(r) => r.event_id(),
            Self::Drill(d) => d.row.event_id(),
        }
    }

    pub(crate) fn tenant(&self) -> &str {
        match self {
            Self::CapsuleRun(r) => r.tenant(),
            Self::Billing(r) => r.tenant(),
            Self::RegressionTransition(r) => r.tenant(),
            Self::AnomalyScan(r) => r.tenant(),
            Self::Drill(d) => d.row.tenant(),
        }
    }

    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Self::CapsuleRun(_) => CapsuleRun::KIND,
            Self::Billing(_) => BillingEvent::KIND,
            Self::RegressionTransition(_) => crate::regression::Transition::KIND,
            Self::AnomalyScan(_) => crate::anomaly::ScanRecord::KIND,
            Self::Drill(_) => crate::drills::DrillRow::KIND,
        }
    }

    pub(crate) fn leaf_hash(&self) -> Result<Hash, AnalyticsError> {
        match self {
            Self::CapsuleRun(r) => r.leaf_hash(),
            Self::Billing(r) => r.leaf_hash(),
            Self::RegressionTransition(r) => r.leaf_hash(),
            Self::AnomalyScan(r) => r.leaf_hash(),
            Self::Drill(d) => d.row.leaf_hash(),
        }
    }
}
