//! Anomaly scans: robust statistics (median / MAD modified z-scores) over a
//! tenant's window, findings persisted with their evidence, each scan
//! audited in the ledger.
//!
//! # Series
//!
//! A scan of tenant T over `[from, to)` reads T's rows in the window (each
//! row's MAC checked; one that fails aborts the scan with `DATA_LOSS`) and
//! builds these series, each scored on its own:
//!
//! - `billing_amount_micros`: the amount of each billing event
//!   (`occurred_at` in the window), one series per tool and currency
//!   (amounts in different currencies are not comparable). Evidence: the
//!   event id.
//! - `run_duration_nanos`: the duration of each capsule run (`started_at`
//!   in the window), one series per tool. Evidence: the event id.
//! - `failure_rate`: per tool, the window is cut into 24-hour buckets from
//!   `from`; each bucket with at least one run gives the fraction of its
//!   runs whose outcome is `failed` (`refused` is a policy decision, not a
//!   tool failure, and counts in the total only). A tool's buckets are
//!   compared with each other, so a day on which a tool failed unusually
//!   often stands out against that tool's own normal, whatever that is;
//!   comparing across tools would flag tools that are merely different.
//!   Evidence: `bucket:<start>` (Unix nanoseconds of the bucket's start).
//!
//! # Score
//!
//! Iglewicz and Hoaglin's modified z-score, `M = 0.6745 (x − median) / MAD`,
//! with MAD the median of the absolute deviations from the median. When MAD
//! is 0 (more than half the values equal the median) the score uses the
//! mean absolute deviation instead: `M = (x − median) / (1.253314 · MeanAD)`
//! (1.253314 ≈ √(π/2) makes MeanAD a consistent estimator of σ, as 0.6745
//! does for MAD); when that is 0 too, every value equals the median and the
//! series has no outlier. A value is a finding when `|M|` is strictly above
//! the threshold (`SOMA_ANALYTICS_ANOMALY_THRESHOLD`, default 3.5, the
//! authors' recommendation). A series with fewer than
//! `SOMA_ANALYTICS_ANOMALY_MIN_SAMPLES` values (default 8) gives no finding:
//! a median of a handful of values is no baseline.
//!
//! # Audit
//!
//! The scan is a ledger-appended row of `anomaly_scans` (scan id, tenant,
//! window, threshold, minimum samples, finding count, and the SHA-256 of
//! the canonical list of its findings), written with its `anomaly_findings`
//! rows (each MACed) in the ledger writer's one transaction.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use soma_mesh::Caller;
use soma_proto::v1 as pb;
use soma_sign::{HmacKeyring, jcs};
use soma_store::Database;
use sqlx::Row as _;

use crate::db::on_pool;
use crate::error::AnalyticsError;
use crate::rows::{BillingEvent, CapsuleRun, EventRow, NewRow, Seal};
use crate::service::AnalyticsService;
use crate::validate;

/// Default `|M|` above which a value is a finding.
pub const DEFAULT_ANOMALY_THRESHOLD: f64 = 3.5;
/// Default smallest series that is scored.
pub const DEFAULT_ANOMALY_MIN_SAMPLES: usize = 8;

/// Iglewicz–Hoaglin's constant: the 0.75 quantile of the standard normal.
const MAD_SCALE: f64 = 0.6745;
/// √(π/2): scales the mean absolute deviation to σ for normal data.
const MEAN_AD_SCALE: f64 = 1.253_314;
/// Width of a failure-rate bucket.
const BUCKET_NANOS: i64 = 86_400 * 1_000_000_000;
/// Rows read per page while scanning.
const PAGE: i64 = 5_000;

/// Metric names as they appear in findings.
pub(crate) const METRIC_BILLING: &str = "billing_amount_micros";
pub(crate) const METRIC_DURATION: &str = "run_duration_nanos";
pub(crate) const METRIC_FAILURE_RATE: &str = "failure_rate";

/// Anomaly scan settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AnomalyConfig {
    /// `|M|` strictly above this is a finding.
    pub threshold: f64,
    /// Series with fewer values give no finding.
    pub min_samples: usize,
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        Self {
            threshold: DEFAULT_ANOMALY_THRESHOLD,
            min_samples: DEFAULT_ANOMALY_MIN_SAMPLES,
        }
    }
}

impl AnomalyConfig {
    /// Reads `SOMA_ANALYTICS_ANOMALY_THRESHOLD` (a finite number > 0) and
    /// `SOMA_ANALYTICS_ANOMALY_MIN_SAMPLES` (an integer ≥ 3: fewer values
    /// have no meaningful median absolute deviation).
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Self, AnalyticsError> {
        let mut config = Self::default();
        if let Some(v) = env("SOMA_ANALYTICS_ANOMALY_THRESHOLD").filter(|v| !v.is_empty()) {
            config.threshold = v
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|t| t.is_finite() && *t > 0.0)
                .ok_or_else(|| {
                    AnalyticsError::Config(format!(
                        "SOMA_ANALYTICS_ANOMALY_THRESHOLD: {v:?} is not a number above 0"
                    ))
                })?;
        }
        if let Some(v) = env("SOMA_ANALYTICS_ANOMALY_MIN_SAMPLES").filter(|v| !v.is_empty()) {
            config.min_samples = v
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n >= 3)
                .ok_or_else(|| {
                    AnalyticsError::Config(format!(
                        "SOMA_ANALYTICS_ANOMALY_MIN_SAMPLES: {v:?} is not an integer of at least 3"
                    ))
                })?;
        }
        Ok(config)
    }
}

/// Median of a sorted, non-empty slice (the mean of the middle two for an
/// even length).
fn median_sorted(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// The median and the modified z-score of every value, in input order;
/// `None` for an empty series or one with no spread at all.
pub(crate) fn modified_z_scores(values: &[f64]) -> Option<(f64, Vec<f64>)> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let median = median_sorted(&sorted);
    let mut deviations: Vec<f64> = values.iter().map(|x| (x - median).abs()).collect();
    deviations.sort_by(f64::total_cmp);
    let mad = median_sorted(&deviations);
    if mad > 0.0 {
        return Some((
            median,
            values.iter().map(|x| MAD_SCALE * (x - median) / mad).collect(),
        ));
    }
    let mean_ad = deviations.iter().sum::<f64>() / deviations.len() as f64;
    if mean_ad > 0.0 {
        return Some((
            median,
            values
                .iter()
                .map(|x| (x - median) / (MEAN_AD_SCALE * mean_ad))
                .collect(),
        ));
    }
    None
}

/// One series: its metric, tool, and `(evidence, value)` points.
#[derive(Debug, Default)]
struct Series {
    points: Vec<(String, f64)>,
}

/// The findings of one series.
fn score_series(metric: &str, tool: &str, series: &Series, config: &AnomalyConfig, out: &mut Vec<Finding>) {
    if series.points.len() < config.min_samples {
        return;
    }
    let values: Vec<f64> = series.points.iter().map(|(_, v)| *v).collect();
    let Some((median, scores)) = modified_z_scores(&values) else {
        return;
    };
    for ((event_id, value), score) in series.points.iter().zip(scores) {
        if score.abs() > config.threshold {
            out.push(Finding {
                finding_id: String::new(),
                scan_id: String::new(),
                tenant: String::new(),
                metric: metric.to_owned(),
                tool: tool.to_owned(),
                value: *value,
                baseline: median,
                score,
                evidence: event_id.clone(),
            });
        }
    }
}

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

    fn content(&self) -> Value {
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

    fn content(&self) -> Value {
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

/// Hex SHA-256 of the canonical JSON list of the findings (id and content).
pub(crate) fn findings_digest(findings: &[Finding]) -> Result<String, AnalyticsError> {
    let list: Vec<Value> = findings
        .iter()
        .map(|f| json!({"finding_id": f.finding_id, "content": f.content()}))
        .collect();
    let digest = soma_sign::sha256(&jcs::canonicalize(&Value::Array(list))?);
    Ok(hex(&digest))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    out
}

/// Inside the ledger writer's transaction `$tx`, inserts scan `$s` at
/// ledger index `$index` and every one of its findings.
macro_rules! insert_scan {
    ($tx:expr, $keys:expr, $s:expr, $index:expr) => {{
        let s: &$crate::anomaly::ScanRecord = $s;
        let seal = $crate::rows::EventRow::seal(s, $keys)?;
        sqlx::query(
            "INSERT INTO anomaly_scans (scan_id, tenant, window_from, window_to, threshold, min_samples, \
             finding_count, findings_digest, scanned_by, scanned_at, ledger_index, row_version, mac_key_id, mac) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
        )
        .bind(&s.scan_id)
        .bind(&s.tenant)
        .bind(s.window_from)
        .bind(s.window_to)
        .bind(s.threshold)
        .bind(s.min_samples)
        .bind(s.finding_count)
        .bind(&s.findings_digest)
        .bind(&s.scanned_by)
        .bind(s.scanned_at)
        .bind($index)
        .bind(seal.row_version)
        .bind(&seal.key_id)
        .bind(&seal.mac)
        .execute(&mut *$tx)
        .await?;
        for f in &s.findings {
            let seal = $crate::rows::EventRow::seal(f, $keys)?;
            sqlx::query(
                "INSERT INTO anomaly_findings (finding_id, scan_id, tenant, metric, tool, value, baseline, score, \
                 event_id, row_version, mac_key_id, mac) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
            )
            .bind(&f.finding_id)
            .bind(&f.scan_id)
            .bind(&f.tenant)
            .bind(&f.metric)
            .bind(&f.tool)
            .bind(f.value)
            .bind(f.baseline)
            .bind(f.score)
            .bind(&f.evidence)
            .bind(seal.row_version)
            .bind(&seal.key_id)
            .bind(&seal.mac)
            .execute(&mut *$tx)
            .await?;
        }
    }};
}

pub(crate) use insert_scan;

const SCAN_COLUMNS: &str = "scan_id, tenant, window_from, window_to, threshold, min_samples, finding_count, \
                            findings_digest, scanned_by, scanned_at, row_version, mac_key_id, mac";
const FINDING_COLUMNS: &str = "finding_id, scan_id, tenant, metric, tool, value, baseline, score, event_id, row_version, mac_key_id, mac";

macro_rules! seal_of {
    ($r:expr) => {
        Seal {
            row_version: $r.try_get::<i64, _>("row_version")?,
            key_id: $r.try_get::<String, _>("mac_key_id")?,
            mac: $r.try_get::<Vec<u8>, _>("mac")?,
        }
    };
}

macro_rules! scan_of {
    ($r:expr) => {
        ScanRecord {
            scan_id: $r.try_get("scan_id")?,
            tenant: $r.try_get("tenant")?,
            window_from: $r.try_get("window_from")?,
            window_to: $r.try_get("window_to")?,
            threshold: $r.try_get("threshold")?,
            min_samples: $r.try_get("min_samples")?,
            finding_count: $r.try_get("finding_count")?,
            findings_digest: $r.try_get("findings_digest")?,
            scanned_by: $r.try_get("scanned_by")?,
            scanned_at: $r.try_get("scanned_at")?,
            findings: Vec::new(),
        }
    };
}

macro_rules! finding_of {
    ($r:expr) => {
        Finding {
            finding_id: $r.try_get("finding_id")?,
            scan_id: $r.try_get("scan_id")?,
            tenant: $r.try_get("tenant")?,
            metric: $r.try_get("metric")?,
            tool: $r.try_get("tool")?,
            value: $r.try_get("value")?,
            baseline: $r.try_get("baseline")?,
            score: $r.try_get("score")?,
            evidence: $r.try_get("event_id")?,
        }
    };
}

/// One scan's audit row and its seal, by scan id (its findings not loaded).
pub(crate) async fn scan_row(
    db: &Database,
    scan_id: &str,
) -> Result<Option<(ScanRecord, Seal)>, AnalyticsError> {
    on_pool!(db, pool => {
        let row = sqlx::query(&format!("SELECT {SCAN_COLUMNS} FROM anomaly_scans WHERE scan_id = $1"))
            .bind(scan_id)
            .fetch_optional(pool)
            .await?;
        row.map(|r| -> Result<_, AnalyticsError> { Ok((scan_of!(r), seal_of!(r))) }).transpose()
    })
}

/// Every scan row and every finding row, for the sweep.
pub(crate) async fn all_rows(
    db: &Database,
) -> Result<(Vec<(ScanRecord, Seal)>, Vec<(Finding, Seal)>), AnalyticsError> {
    on_pool!(db, pool => {
        let scans = sqlx::query(&format!("SELECT {SCAN_COLUMNS} FROM anomaly_scans ORDER BY ledger_index"))
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| -> Result<_, AnalyticsError> { Ok((scan_of!(r), seal_of!(r))) })
            .collect::<Result<Vec<_>, _>>()?;
        let findings = sqlx::query(&format!("SELECT {FINDING_COLUMNS} FROM anomaly_findings ORDER BY finding_id"))
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| -> Result<_, AnalyticsError> { Ok((finding_of!(r), seal_of!(r))) })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((scans, findings))
    })
}

/// The series of one scan, keyed for a deterministic order.
#[derive(Debug, Default)]
struct Collected {
    /// (tool, currency) → amounts.
    billing: BTreeMap<(String, String), Series>,
    /// tool → durations.
    durations: BTreeMap<String, Series>,
    /// tool → bucket → (failed, total).
    buckets: BTreeMap<String, BTreeMap<i64, (u64, u64)>>,
}

/// Reads the tenant's billing events in the window, page by page, checking
/// every row's MAC.
async fn collect_billing(
    db: &Database,
    keys: &HmacKeyring,
    tenant: &str,
    from: i64,
    to: i64,
    out: &mut Collected,
) -> Result<u64, AnalyticsError> {
    let mut after: i64 = -1;
    let mut read = 0u64;
    loop {
        let page: Vec<(i64, BillingEvent, Seal)> = on_pool!(db, pool => sqlx::query(
            "SELECT ledger_index, event_id, tenant, tool, tool_version, currency, amount_micros, fuel_consumed, \
             duration_micros, occurred_at, run_id, recorded_by, row_version, mac_key_id, mac FROM billing_events \
             WHERE tenant = $1 AND occurred_at >= $2 AND occurred_at < $3 AND ledger_index > $4 \
             ORDER BY ledger_index LIMIT $5",
        )
        .bind(tenant)
        .bind(from)
        .bind(to)
        .bind(after)
        .bind(PAGE)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| -> Result<_, AnalyticsError> {
            Ok((
                r.try_get::<i64, _>("ledger_index")?,
                BillingEvent {
                    event_id: r.try_get("event_id")?,
                    tenant: r.try_get("tenant")?,
                    tool: r.try_get("tool")?,
                    tool_version: r.try_get("tool_version")?,
                    currency: r.try_get("currency")?,
                    amount_micros: r.try_get("amount_micros")?,
                    fuel_consumed: r.try_get("fuel_consumed")?,
                    duration_micros: r.try_get("duration_micros")?,
                    occurred_at: r.try_get("occurred_at")?,
                    run_id: r.try_get("run_id")?,
                    recorded_by: r.try_get("recorded_by")?,
                },
                seal_of!(r),
            ))
        })
        .collect::<Result<Vec<_>, _>>()?);
        let Some((last, _, _)) = page.last() else {
            return Ok(read);
        };
        after = *last;
        let full = page.len() as i64 == PAGE;
        for (_, row, seal) in page {
            row.check(keys, &seal)?;
            read += 1;
            out.billing
                .entry((row.tool, row.currency))
                .or_default()
                .points
                .push((row.event_id, row.amount_micros as f64));
        }
        if !full {
            return Ok(read);
        }
    }
}

/// Reads the tenant's capsule runs in the window, page by page, checking
/// every row's MAC.
async fn collect_runs(
    db: &Database,
    keys: &HmacKeyring,
    tenant: &str,
    from: i64,
    to: i64,
    out: &mut Collected,
) -> Result<u64, AnalyticsError> {
    let mut after: i64 = -1;
    let mut read = 0u64;
    loop {
        let page: Vec<(i64, CapsuleRun, Seal)> = on_pool!(db, pool => sqlx::query(
            "SELECT ledger_index, event_id, tenant, capsule_id, tool, run_id, outcome, started_at, duration_nanos, \
             recorded_by, row_version, mac_key_id, mac FROM capsule_runs \
             WHERE tenant = $1 AND started_at >= $2 AND started_at < $3 AND ledger_index > $4 \
             ORDER BY ledger_index LIMIT $5",
        )
        .bind(tenant)
        .bind(from)
        .bind(to)
        .bind(after)
        .bind(PAGE)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| -> Result<_, AnalyticsError> {
            Ok((
                r.try_get::<i64, _>("ledger_index")?,
                CapsuleRun {
                    event_id: r.try_get("event_id")?,
                    tenant: r.try_get("tenant")?,
                    capsule_id: r.try_get("capsule_id")?,
                    tool: r.try_get("tool")?,
                    run_id: r.try_get("run_id")?,
                    outcome: r.try_get("outcome")?,
                    started_at: r.try_get("started_at")?,
                    duration_nanos: r.try_get("duration_nanos")?,
                    recorded_by: r.try_get("recorded_by")?,
                },
                seal_of!(r),
            ))
        })
        .collect::<Result<Vec<_>, _>>()?);
        let Some((last, _, _)) = page.last() else {
            return Ok(read);
        };
        after = *last;
        let full = page.len() as i64 == PAGE;
        for (_, row, seal) in page {
            row.check(keys, &seal)?;
            read += 1;
            // started_at >= from, so the difference is non-negative and
            // within the window's span.
            let bucket = from.saturating_add((row.started_at - from) / BUCKET_NANOS * BUCKET_NANOS);
            let counts = out
                .buckets
                .entry(row.tool.clone())
                .or_default()
                .entry(bucket)
                .or_insert((0, 0));
            counts.1 += 1;
            if row.outcome == "failed" {
                counts.0 += 1;
            }
            out.durations
                .entry(row.tool)
                .or_default()
                .points
                .push((row.event_id, row.duration_nanos as f64));
        }
        if !full {
            return Ok(read);
        }
    }
}

static SCAN_COUNTER: AtomicU64 = AtomicU64::new(0);

fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_nanos()).ok())
        .unwrap_or(i64::MAX)
}

fn invalid(field: &'static str, reason: impl Into<String>) -> AnalyticsError {
    AnalyticsError::InvalidArgument {
        field,
        reason: reason.into(),
    }
}

/// `ScanAnomalies`.
pub(crate) async fn scan_anomalies(
    svc: &AnalyticsService,
    caller: &Caller,
    request: pb::ScanAnomaliesRequest,
) -> Result<pb::ScanAnomaliesResponse, AnalyticsError> {
    // Every field is checked before anything is read or written.
    let tenant = validate::read_scope(caller, &request.tenant)?
        .ok_or_else(|| invalid("tenant", "required for a caller without tenant claims"))?;
    let from = validate::timestamp("from", request.from.as_ref())?;
    let to = validate::timestamp("to", request.to.as_ref())?;
    if to <= from {
        return Err(invalid("to", "must be after from"));
    }
    let span = u128::from((to - from).unsigned_abs());
    if span > svc.max_export_span.as_nanos() {
        return Err(invalid(
            "to",
            format!(
                "the window is longer than the maximum span of {}s",
                svc.max_export_span.as_secs()
            ),
        ));
    }
    let config = svc.anomaly;

    let mut collected = Collected::default();
    let bills = collect_billing(&svc.db, &svc.keys, &tenant, from, to, &mut collected).await?;
    let runs = collect_runs(&svc.db, &svc.keys, &tenant, from, to, &mut collected).await?;

    let mut findings = Vec::new();
    for ((tool, _currency), series) in &collected.billing {
        score_series(METRIC_BILLING, tool, series, &config, &mut findings);
    }
    for (tool, series) in &collected.durations {
        score_series(METRIC_DURATION, tool, series, &config, &mut findings);
    }
    for (tool, buckets) in &collected.buckets {
        let series = Series {
            points: buckets
                .iter()
                .map(|(start, (failed, total))| (format!("bucket:{start}"), *failed as f64 / *total as f64))
                .collect(),
        };
        score_series(METRIC_FAILURE_RATE, tool, &series, &config, &mut findings);
    }

    let scanned_by = crate::regression::actor(caller);
    let scanned_at = now_nanos();
    let nonce = SCAN_COUNTER.fetch_add(1, Ordering::Relaxed);
    let seed = jcs::canonicalize(&json!({
        "tenant": tenant,
        "from": from.to_string(),
        "to": to.to_string(),
        "by": scanned_by,
        "at": scanned_at.to_string(),
        "nonce": nonce.to_string(),
    }))?;
    let scan_id = format!("scan-{}", &hex(&soma_sign::sha256(&seed))[..32]);
    for (n, f) in findings.iter_mut().enumerate() {
        f.finding_id = format!("{scan_id}:{n}");
        f.scan_id.clone_from(&scan_id);
        f.tenant.clone_from(&tenant);
    }
    let record = ScanRecord {
        scan_id: scan_id.clone(),
        tenant: tenant.clone(),
        window_from: from,
        window_to: to,
        threshold: config.threshold,
        min_samples: i64::try_from(config.min_samples).unwrap_or(i64::MAX),
        finding_count: i64::try_from(findings.len()).unwrap_or(i64::MAX),
        findings_digest: findings_digest(&findings)?,
        scanned_by,
        scanned_at,
        findings: findings.clone(),
    };
    let appended = svc.ledger.append(NewRow::AnomalyScan(Box::new(record))).await?;
    tracing::info!(
        scan_id = %scan_id,
        tenant = %tenant,
        billing_events = bills,
        capsule_runs = runs,
        findings = findings.len(),
        index = appended.index,
        "anomaly scan recorded"
    );
    Ok(pb::ScanAnomaliesResponse {
        scan_id,
        findings: findings
            .into_iter()
            .map(|f| pb::AnomalyFinding {
                metric: f.metric,
                tool: f.tool,
                value: f.value,
                baseline: f.baseline,
                score: f.score,
                event_id: f.evidence,
            })
            .collect(),
        ledger: Some(pb::LedgerEntry {
            index: appended.index,
            leaf_hash: appended.leaf_hash.as_bytes().to_vec(),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::{AnomalyConfig, modified_z_scores};

    #[test]
    fn scores_follow_iglewicz_hoaglin() {
        // Median 3, deviations [2,1,0,1,97] → MAD 1.
        let (median, scores) = modified_z_scores(&[1.0, 2.0, 3.0, 4.0, 100.0]).unwrap();
        assert_eq!(median, 3.0);
        assert_eq!(scores, vec![-1.349, -0.6745, 0.0, 0.6745, 0.6745 * 97.0]);
    }

    #[test]
    fn zero_mad_falls_back_to_mean_absolute_deviation() {
        // Median 5, deviations [0,0,0,0,5] → MAD 0, MeanAD 1.
        let (median, scores) = modified_z_scores(&[5.0, 5.0, 5.0, 5.0, 10.0]).unwrap();
        assert_eq!(median, 5.0);
        assert_eq!(scores[4], 5.0 / 1.253_314);
        assert_eq!(scores[0], 0.0);
    }

    #[test]
    fn no_spread_no_scores() {
        assert_eq!(modified_z_scores(&[7.0; 10]), None);
        assert_eq!(modified_z_scores(&[]), None);
    }

    #[test]
    fn config_from_env() {
        let none = |_: &str| None;
        assert_eq!(AnomalyConfig::from_env(none).unwrap(), AnomalyConfig::default());
        let set = |k: &str| match k {
            "SOMA_ANALYTICS_ANOMALY_THRESHOLD" => Some("5.5".to_owned()),
            "SOMA_ANALYTICS_ANOMALY_MIN_SAMPLES" => Some("12".to_owned()),
            _ => None,
        };
        assert_eq!(
            AnomalyConfig::from_env(set).unwrap(),
            AnomalyConfig {
                threshold: 5.5,
                min_samples: 12
            }
        );
        for (var, bad) in [
            ("SOMA_ANALYTICS_ANOMALY_THRESHOLD", "0"),
            ("SOMA_ANALYTICS_ANOMALY_THRESHOLD", "NaN"),
            ("SOMA_ANALYTICS_ANOMALY_THRESHOLD", "-1"),
            ("SOMA_ANALYTICS_ANOMALY_MIN_SAMPLES", "2"),
            ("SOMA_ANALYTICS_ANOMALY_MIN_SAMPLES", "x"),
        ] {
            let env = |k: &str| (k == var).then(|| bad.to_owned());
            assert!(AnomalyConfig::from_env(env).is_err(), "{var}={bad}");
        }
    }
}
