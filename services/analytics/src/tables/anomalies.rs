//! `anomaly_scans` (one ledger leaf per scan) and `anomaly_findings` (each
//! MACed, bound to its scan's leaf through the scan's findings digest),
//! written in one transaction.

use serde_json::{Value as Json, json};
use soma_ledger::Hash;
use soma_sign::{HmacKeyring, jcs};

use super::{EventRow, Ledgered, Registration, Table, Write, columns, keyed_by};
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

    keyed_by!(finding_id);

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
    columns! {
        finding_id: text,
        scan_id: text,
        tenant: text,
        metric: text,
        tool: text,
        value: real,
        baseline: real,
        score: real,
        evidence as event_id: text,
    }
    const LEDGERED: bool = false;
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

    keyed_by!(scan_id);

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
    columns! {
        scan_id: text,
        tenant: text,
        window_from: int,
        window_to: int,
        threshold: real,
        min_samples: int,
        finding_count: int,
        findings_digest: text,
        scanned_by: text,
        scanned_at: int,
        // Not a column: a scan read back has its findings unloaded.
        ; findings: Vec::new()
    }
    const LEDGERED: bool = true;

    fn leaf_time(&self) -> Option<i64> {
        Some(self.scanned_at)
    }
}

impl Ledgered for ScanRecord {
    const TIME: &'static str = "scanned_at";

    fn time(&self) -> i64 {
        self.scanned_at
    }

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
