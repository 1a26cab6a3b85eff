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

use serde_json::json;
use soma_mesh::Caller;
use soma_proto::v1 as pb;
use soma_sign::{HmacKeyring, jcs};
use soma_store::Database;

use crate::config::AnomalyConfig;
use crate::convert::{hex, now_nanos};
use crate::error::AnalyticsError;
use crate::service::AnalyticsService;
use crate::tables::anomalies::{Finding, ScanRecord, findings_digest};
use crate::tables::billing::BillingEvent;
use crate::tables::capsule_runs::CapsuleRun;
use crate::tables::{self, Exported};
use crate::validate::{self, actor, invalid};

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

/// Reads the tenant's rows of `T` in the window, page by page in ledger
/// order, checking every row's MAC before `each` sees it; returns how many
/// were read.
async fn collect<T: Exported>(
    db: &Database,
    keys: &HmacKeyring,
    tenant: &str,
    window: (i64, i64),
    mut each: impl FnMut(T),
) -> Result<u64, AnalyticsError> {
    let mut after: i64 = -1;
    let mut read = 0u64;
    loop {
        let page = tables::window::<T>(db, tenant, window, after, PAGE).await?;
        let Some((last, _, _)) = page.last() else {
            return Ok(read);
        };
        after = *last;
        let full = page.len() as i64 == PAGE;
        for (_, row, seal) in page {
            row.check(keys, &seal)?;
            read += 1;
            each(row);
        }
        if !full {
            return Ok(read);
        }
    }
}

impl Collected {
    /// A billing event's amount, in its tool's and currency's series.
    fn billing(&mut self, row: BillingEvent) {
        self.billing
            .entry((row.tool, row.currency))
            .or_default()
            .points
            .push((row.event_id, row.amount_micros as f64));
    }

    /// A capsule run's duration, and its outcome in its tool's 24-hour
    /// bucket counted from `from`.
    fn run(&mut self, from: i64, row: CapsuleRun) {
        // started_at >= from, so the difference is non-negative and
        // within the window's span.
        let bucket = from.saturating_add((row.started_at - from) / BUCKET_NANOS * BUCKET_NANOS);
        let counts = self
            .buckets
            .entry(row.tool.clone())
            .or_default()
            .entry(bucket)
            .or_insert((0, 0));
        counts.1 += 1;
        if row.outcome == "failed" {
            counts.0 += 1;
        }
        self.durations
            .entry(row.tool)
            .or_default()
            .points
            .push((row.event_id, row.duration_nanos as f64));
    }
}

static SCAN_COUNTER: AtomicU64 = AtomicU64::new(0);

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
    let bills = collect(&svc.db, &svc.keys, &tenant, (from, to), |row| {
        collected.billing(row);
    })
    .await?;
    let runs = collect(&svc.db, &svc.keys, &tenant, (from, to), |row| {
        collected.run(from, row);
    })
    .await?;

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

    let scanned_by = actor(caller);
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
    let appended = svc.ledger.append(record).await?;
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
    use super::modified_z_scores;

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
}
