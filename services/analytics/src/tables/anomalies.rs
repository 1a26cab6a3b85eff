//! `anomaly_scans` (one ledger leaf per scan) and `anomaly_findings` (each
//! MACed, bound to its scan's leaf through the scan's findings digest),
//! written in one transaction.

use serde_json::{Value as Json, json};
use soma_ledger::Hash;
use soma_sign::{HmacKeyring, jcs};

use super::{Column, EventRow, Get, Ledgered, Registration, Table, Value, Write, int, real, text};
use crate::convert::hex;
use crate::error::AnalyticsError;

/// The tables' registrations.
pub(crate) const TABLES: &[Registration] = &[Registration::of::<ScanRecord>(), Registration::of::<Finding>()];

/// A finding: the row of `anomaly_findings`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Finding {
    /// `<scan_id>:<n>`.
    pub finding_id: String,
    pub scan_id: String,
    pub tenant: String,
    pub metric: String,
    pub tool: String,
    pub value: f64,
    /// The series' median.
    pub baseline: f64,
    /// Modified z-score.
    pub score: f64,
    /// The event (or `bucket:<start>`) the value came from (column
    /// `event_id`).
    pub evidence: String,
}

impl EventRow for Finding {
    const TABLE: &'static str = "anomaly_findings";
    // Never appended itself: the scan's leaf binds it through its digest.
    const KIND: &'static str = "anomaly_finding";

    fn event_id(&self) -> &str {
        &self.finding_id
    }

    fn tenant(&self) -> &str {
        &self.tenant
    }

    fn content(&self) -> Json {
        // Doubles are JSON numbers: RFC 8785 prints each finite double one
        // way (ECMAScript's shortest round trip), so the MAC is exact.
        json!({
            "scan_id": self.scan_id,
            "metric": self.metric,
            "tool": self.tool,
            "value": self.value,
            "baseline": self.baseline,
            "score": self.score,
            "event_id": self.evidence,
        })
    }
}

impl Table for Finding {
    const KEY: &'static str = "finding_id";
    const COLUMNS: &'static [Column] = &[
        text("finding_id"),
        text("scan_id"),
        text("tenant"),
        text("metric"),
        text("tool"),
        real("value"),
        real("baseline"),
        real("score"),
        text("event_id"),
    ];
    const LEDGERED: bool = false;

    fn values(&self) -> Vec<Value<'_>> {
        vec![
            Value::Text(&self.finding_id),
            Value::Text(&self.scan_id),
            Value::Text(&self.tenant),
            Value::Text(&self.metric),
            Value::Text(&self.tool),
            Value::Real(self.value),
            Value::Real(self.baseline),
            Value::Real(self.score),
            Value::Text(&self.evidence),
        ]
    }

    fn from_row<R: Get>(r: &R) -> Result<Self, AnalyticsError> {
        Ok(Self {
            finding_id: r.text("finding_id")?,
            scan_id: r.text("scan_id")?,
            tenant: r.text("tenant")?,
            metric: r.text("metric")?,
            tool: r.text("tool")?,
            value: r.real("value")?,
            baseline: r.real("baseline")?,
            score: r.real("score")?,
            evidence: r.text("event_id")?,
        })
    }
}

/// A scan's audit row (`anomaly_scans`), appended to the ledger, and the
/// findings written with it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ScanRecord {
    pub scan_id: String,
    pub tenant: String,
    pub window_from: i64,
    pub window_to: i64,
    pub threshold: f64,
    pub min_samples: i64,
    pub finding_count: i64,
    /// Hex SHA-256 of the canonical list of the findings' contents.
    pub findings_digest: String,
    pub scanned_by: String,
    pub scanned_at: i64,
    /// Not part of the row's content (the digest binds them).
    pub findings: Vec<Finding>,
}

impl EventRow for ScanRecord {
    const TABLE: &'static str = "anomaly_scans";
    const KIND: &'static str = "anomaly_scan";

    fn event_id(&self) -> &str {
        &self.scan_id
    }

    fn tenant(&self) -> &str {
        &self.tenant
    }

    fn content(&self) -> Json {
        json!({
            "window_from": self.window_from.to_string(),
            "window_to": self.window_to.to_string(),
            "threshold": self.threshold,
            "min_samples": self.min_samples.to_string(),
            "finding_count": self.finding_count.to_string(),
            "findings_digest": self.findings_digest,
            "scanned_by": self.scanned_by,
            "scanned_at": self.scanned_at.to_string(),
        })
    }
}

impl Table for ScanRecord {
    const KEY: &'static str = "scan_id";
    const COLUMNS: &'static [Column] = &[
        text("scan_id"),
        text("tenant"),
        int("window_from"),
        int("window_to"),
        real("threshold"),
        int("min_samples"),
        int("finding_count"),
        text("findings_digest"),
        text("scanned_by"),
        int("scanned_at"),
    ];
    const LEDGERED: bool = true;

    fn values(&self) -> Vec<Value<'_>> {
        vec![
            Value::Text(&self.scan_id),
            Value::Text(&self.tenant),
            Value::Int(self.window_from),
            Value::Int(self.window_to),
            Value::Real(self.threshold),
            Value::Int(self.min_samples),
            Value::Int(self.finding_count),
            Value::Text(&self.findings_digest),
            Value::Text(&self.scanned_by),
            Value::Int(self.scanned_at),
        ]
    }

    /// The scan's own row; its findings are not loaded.
    fn from_row<R: Get>(r: &R) -> Result<Self, AnalyticsError> {
        Ok(Self {
            scan_id: r.text("scan_id")?,
            tenant: r.text("tenant")?,
            window_from: r.int("window_from")?,
            window_to: r.int("window_to")?,
            threshold: r.real("threshold")?,
            min_samples: r.int("min_samples")?,
            finding_count: r.int("finding_count")?,
            findings_digest: r.text("findings_digest")?,
            scanned_by: r.text("scanned_by")?,
            scanned_at: r.int("scanned_at")?,
            findings: Vec::new(),
        })
    }
}

impl Ledgered for ScanRecord {
    /// Every finding of the scan.
    fn dependents(
        &self,
        keys: &HmacKeyring,
        _ledger_index: i64,
        _leaf_hash: &Hash,
        _now: i64,
    ) -> Result<Vec<Write<'static>>, AnalyticsError> {
        self.findings.iter().map(|f| Write::sealed(f, keys)).collect()
    }
}

/// Hex SHA-256 of the canonical JSON list of the findings (id and content).
pub(crate) fn findings_digest(findings: &[Finding]) -> Result<String, AnalyticsError> {
    let list: Vec<Json> = findings
        .iter()
        .map(|f| json!({"finding_id": f.finding_id, "content": f.content()}))
        .collect();
    let digest = soma_sign::sha256(&jcs::canonicalize(&Json::Array(list))?);
    Ok(hex(&digest))
}
