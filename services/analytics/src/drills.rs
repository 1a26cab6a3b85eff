//! Disaster-recovery drills: RTO and RPO computed by the server, a verdict
//! against the region's objectives, per-region summaries, and signed
//! webhook notifications of failed drills (queued in the outbox of
//! [`crate::webhook`], in the drill's own transaction).
//!
//! **Computation.** RTO = `restored_at − started_at`, RPO = `started_at −
//! last_durable_write_at`, exact to the nanosecond. A drill fails when any
//! step failed, when its region has no objective (and there is no `*`
//! default), or when RTO or RPO is strictly greater than the objective; each
//! cause is one entry of `failure_reasons`, in that order. The objective
//! applied is stored with the row, so a later change of configuration never
//! rewrites history.
//!
//! **Objectives** come from [`DrillConfig`] (`SOMA_ANALYTICS_DRILL_OBJECTIVES`,
//! parsed in [`crate::config`]). A drill may carry its own targets
//! (`rto_target`, `rpo_target`): each tightens the region's objective when it
//! is stricter and is ignored when it is looser, so whoever records a drill
//! can hold it to a higher bar but never pass it below the operator's. The
//! objective applied (the stricter of the two) is the one stored, and a
//! failure reason says which one was exceeded ("the objective 15s" or "the
//! drill's target 0.001s"). A region without a configured objective fails
//! whatever targets the drill carries.
//!
//! **Tenancy.** A drill recorded through the gateway on behalf of a tenant
//! belongs to the verified claims' tenant; one recorded by a service over
//! mTLS without claims belongs to the operations tenant [`OPS_TENANT`]. A
//! summary asked with tenant claims covers that tenant's drills only; one
//! asked over mTLS without claims (an operator) covers every tenant's.
//!
//! **Percentiles** are nearest-rank: for `n` values sorted ascending, the
//! p-th percentile is the value of rank `⌈p·n/100⌉` (1-based, at least 1),
//! always one of the recorded values, never an interpolation.

use std::collections::BTreeMap;

use soma_mesh::Caller;
use soma_proto::v1 as pb;

use crate::config::DrillConfig;
use crate::convert::{duration_proto, timestamp_proto};
use crate::error::AnalyticsError;
use crate::ledger::Appended;
use crate::service::AnalyticsService;
use crate::tables::drills::{DrillRow, Objective, Step, drills_of};
use crate::tables::{self, EventRow as _};
use crate::validate::{self, invalid};

/// Tenant of drills recorded by a service without tenant claims.
pub(crate) const OPS_TENANT: &str = "ops";

/// Most steps one drill may carry.
const MAX_STEPS: usize = 256;
/// Longest step name, in characters.
const MAX_STEP_NAME: usize = 128;
/// Longest step detail, in characters.
const MAX_STEP_DETAIL: usize = 1024;

const NANOS_PER_SECOND: i64 = 1_000_000_000;

/// Most recent drills listed per region in a summary.
const RECENT: usize = 20;

/// Free text of a step: `1..=max` characters (empty allowed when `optional`),
/// no control characters.
fn step_text(
    field: &'static str,
    index: usize,
    value: &str,
    max: usize,
    optional: bool,
) -> Result<String, AnalyticsError> {
    if value.is_empty() && !optional {
        return Err(invalid(field, format!("step {index}: required")));
    }
    if value.chars().count() > max {
        return Err(invalid(
            field,
            format!("step {index}: longer than {max} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(
            field,
            format!("step {index}: control characters are not allowed"),
        ));
    }
    Ok(value.to_owned())
}

fn step_outcome(index: usize, value: i32) -> Result<&'static str, AnalyticsError> {
    match pb::StepOutcome::try_from(value) {
        Ok(pb::StepOutcome::Passed) => Ok("passed"),
        Ok(pb::StepOutcome::Failed) => Ok("failed"),
        Ok(pb::StepOutcome::Skipped) => Ok("skipped"),
        Ok(pb::StepOutcome::Unspecified) => Err(invalid("steps.outcome", format!("step {index}: required"))),
        Err(_) => Err(invalid(
            "steps.outcome",
            format!("step {index}: unknown value {value}"),
        )),
    }
}

/// A span for failure reasons: whole seconds, or seconds with the
/// nanoseconds written out (trailing zeros trimmed).
fn span_text(nanos: i64) -> String {
    let (s, n) = (nanos / NANOS_PER_SECOND, nanos % NANOS_PER_SECOND);
    if n == 0 {
        format!("{s}s")
    } else {
        let fraction = format!("{n:09}");
        format!("{s}.{}s", fraction.trim_end_matches('0'))
    }
}

/// The limit applied: the configured objective, or the drill's own target
/// when that is stricter (a drill may tighten an objective, never loosen it).
fn stricter(configured: i64, target: Option<i64>) -> i64 {
    target.map_or(configured, |t| t.min(configured))
}

/// Validates a request and computes the drill's verdict; writes nothing.
fn drill_from_request(
    config: &DrillConfig,
    caller: &Caller,
    r: pb::RecordDisasterDrillRequest,
) -> Result<DrillRow, AnalyticsError> {
    let event_id = validate::identifier("event_id", &r.event_id)?;
    let region = validate::identifier("region", &r.region)?;
    let scenario = validate::identifier("scenario", &r.scenario)?;
    let started_at = validate::timestamp("started_at", r.started_at.as_ref())?;
    let failover_completed_at =
        validate::timestamp("failover_completed_at", r.failover_completed_at.as_ref())?;
    let restored_at = validate::timestamp("restored_at", r.restored_at.as_ref())?;
    let last_durable_write_at =
        validate::timestamp("last_durable_write_at", r.last_durable_write_at.as_ref())?;
    if failover_completed_at < started_at {
        return Err(invalid("failover_completed_at", "is before started_at"));
    }
    if restored_at < failover_completed_at {
        return Err(invalid("restored_at", "is before failover_completed_at"));
    }
    if last_durable_write_at > started_at {
        return Err(invalid("last_durable_write_at", "is after started_at"));
    }
    let rto_nanos = restored_at
        .checked_sub(started_at)
        .ok_or_else(|| invalid("restored_at", "too far after started_at"))?;
    let rpo_nanos = started_at
        .checked_sub(last_durable_write_at)
        .ok_or_else(|| invalid("last_durable_write_at", "too far before started_at"))?;
    if r.steps.is_empty() {
        return Err(invalid("steps", "at least one step is required"));
    }
    if r.steps.len() > MAX_STEPS {
        return Err(invalid("steps", format!("more than {MAX_STEPS} steps")));
    }
    let steps = r
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| -> Result<Step, AnalyticsError> {
            Ok(Step {
                name: step_text("steps.name", i, &s.name, MAX_STEP_NAME, false)?,
                outcome: step_outcome(i, s.outcome)?.to_owned(),
                detail: step_text("steps.detail", i, &s.detail, MAX_STEP_DETAIL, true)?,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let tenant = match &caller.claims {
        Some(claims) => claims.tenant.clone(),
        None => OPS_TENANT.to_owned(),
    };

    let rto_target = r
        .rto_target
        .as_ref()
        .map(|d| validate::duration("rto_target", Some(d)))
        .transpose()?;
    let rpo_target = r
        .rpo_target
        .as_ref()
        .map(|d| validate::duration("rpo_target", Some(d)))
        .transpose()?;

    let mut failure_reasons: Vec<String> = steps
        .iter()
        .filter(|s| s.outcome == "failed")
        .map(|s| format!("step {:?} failed", s.name))
        .collect();
    let configured = config.objective(&region);
    let objective = configured.map(|o| Objective {
        rto_nanos: stricter(o.rto_nanos, rto_target),
        rpo_nanos: stricter(o.rpo_nanos, rpo_target),
    });
    match (configured, objective) {
        (Some(configured), Some(applied)) => {
            let limit = |applied: i64, configured: i64| {
                if applied < configured {
                    format!("the drill's target {}", span_text(applied))
                } else {
                    format!("the objective {}", span_text(applied))
                }
            };
            if rto_nanos > applied.rto_nanos {
                failure_reasons.push(format!(
                    "rto {} exceeds {}",
                    span_text(rto_nanos),
                    limit(applied.rto_nanos, configured.rto_nanos)
                ));
            }
            if rpo_nanos > applied.rpo_nanos {
                failure_reasons.push(format!(
                    "rpo {} exceeds {}",
                    span_text(rpo_nanos),
                    limit(applied.rpo_nanos, configured.rpo_nanos)
                ));
            }
        }
        _ => failure_reasons.push("no objectives configured for region".to_owned()),
    }
    let passed = failure_reasons.is_empty();
    Ok(DrillRow {
        event_id,
        tenant,
        region,
        scenario,
        started_at,
        failover_completed_at,
        restored_at,
        last_durable_write_at,
        rto_nanos,
        rpo_nanos,
        objective,
        passed,
        failure_reasons,
        steps,
        recorded_by: caller.peer.spiffe_id.to_string(),
        notify: if passed {
            Vec::new()
        } else {
            config.webhooks.urls()
        },
    })
}

fn drill_proto(row: &DrillRow, appended: Appended) -> pb::DisasterDrill {
    pb::DisasterDrill {
        event_id: row.event_id.clone(),
        region: row.region.clone(),
        scenario: row.scenario.clone(),
        rto: Some(duration_proto(row.rto_nanos)),
        rpo: Some(duration_proto(row.rpo_nanos)),
        passed: row.passed,
        failure_reasons: row.failure_reasons.clone(),
        ledger: Some(pb::LedgerEntry {
            index: appended.index,
            leaf_hash: appended.leaf_hash.as_bytes().to_vec(),
        }),
    }
}

/// `RecordDisasterDrill`: validates, computes RTO, RPO and the verdict, and
/// appends the drill (with its outbox rows when it failed) to the ledger in
/// one transaction. Idempotent by event id: a retry of the same drill gets
/// the stored drill and its ledger entry back, even if the objectives have
/// changed since (the verdict recorded first stands).
pub(crate) async fn record_disaster_drill(
    svc: &AnalyticsService,
    caller: &Caller,
    request: pb::RecordDisasterDrillRequest,
) -> Result<pb::DisasterDrill, AnalyticsError> {
    let row = drill_from_request(&svc.drills, caller, request)?;
    let failed = !row.passed;
    match svc.ledger.append(row.clone()).await {
        Ok(appended) => {
            svc.drill_metrics.observe(&row);
            if failed {
                svc.drills.webhooks.wake();
            }
            Ok(drill_proto(&row, appended))
        }
        Err(AnalyticsError::EventIdConflict { event_id }) => {
            let Some((stored, seal)) = tables::find::<DrillRow>(&svc.db, &row.tenant, &event_id).await?
            else {
                return Err(AnalyticsError::EventIdConflict { event_id });
            };
            stored.check(&svc.keys, &seal)?;
            if !stored.same_facts(&row) {
                return Err(AnalyticsError::EventIdConflict { event_id });
            }
            let (index, _, leaf_hash) = svc.ledger.leaf_of(&row.tenant, &event_id).await?;
            if stored.leaf_hash()? != leaf_hash {
                return Err(AnalyticsError::RowIntegrity {
                    table: "ledger_leaves",
                    primary_key: event_id,
                });
            }
            Ok(drill_proto(&stored, Appended { index, leaf_hash }))
        }
        Err(e) => Err(e),
    }
}

/// The nearest-rank `p`-th percentile of `sorted` (ascending, not empty).
fn nearest_rank(sorted: &[i64], p: u64) -> i64 {
    let n = sorted.len() as u64;
    let rank = (p * n).div_ceil(100).max(1);
    let index = usize::try_from(rank - 1).unwrap_or(usize::MAX);
    sorted.get(index).or(sorted.last()).copied().unwrap_or(0)
}

/// `DisasterDrillSummary`: per region (or the one asked for), the count,
/// pass rate, nearest-rank p50/p95 of RTO and RPO, the start of the last
/// failed drill, and the last [`RECENT`] drills, newest first. Every row's MAC is checked; one that fails fails the
/// request (`DATA_LOSS`) rather than skewing the figures.
pub(crate) async fn disaster_drill_summary(
    svc: &AnalyticsService,
    caller: &Caller,
    request: pb::DisasterDrillSummaryRequest,
) -> Result<pb::DisasterDrillSummaryResponse, AnalyticsError> {
    let region = if request.region.is_empty() {
        None
    } else {
        Some(validate::identifier("region", &request.region)?)
    };
    let scope = validate::read_scope(caller, "")?;
    let rows = drills_of(&svc.db, region.as_deref(), scope.as_deref()).await?;

    #[derive(Default)]
    struct Acc {
        passed: u64,
        rto: Vec<i64>,
        rpo: Vec<i64>,
        last_failure: Option<i64>,
        /// The last [`RECENT`] drills, in ledger order.
        recent: std::collections::VecDeque<pb::DisasterDrill>,
    }
    let mut regions: BTreeMap<String, Acc> = BTreeMap::new();
    // Rows come in ledger order: the last ones are the most recent.
    for (row, seal) in rows {
        row.check(&svc.keys, &seal)?;
        let acc = regions.entry(row.region.clone()).or_default();
        acc.rto.push(row.rto_nanos);
        acc.rpo.push(row.rpo_nanos);
        if row.passed {
            acc.passed += 1;
        } else {
            acc.last_failure = acc.last_failure.max(Some(row.started_at));
        }
        let index = seal.ledger_index.ok_or_else(|| AnalyticsError::RowIntegrity {
            table: DrillRow::TABLE,
            primary_key: row.event_id.clone(),
        })?;
        let appended = Appended {
            index: crate::convert::to_u64(index)?,
            leaf_hash: row.leaf_hash()?,
        };
        if acc.recent.len() == RECENT {
            acc.recent.pop_front();
        }
        acc.recent.push_back(drill_proto(&row, appended));
    }
    let regions = regions
        .into_iter()
        .map(|(region, mut acc)| {
            acc.rto.sort_unstable();
            acc.rpo.sort_unstable();
            let count = acc.rto.len() as u64;
            pb::RegionDrillSummary {
                region,
                count,
                pass_rate: acc.passed as f64 / count as f64,
                rto_p50: Some(duration_proto(nearest_rank(&acc.rto, 50))),
                rto_p95: Some(duration_proto(nearest_rank(&acc.rto, 95))),
                rpo_p50: Some(duration_proto(nearest_rank(&acc.rpo, 50))),
                rpo_p95: Some(duration_proto(nearest_rank(&acc.rpo, 95))),
                last_failure_at: acc.last_failure.map(timestamp_proto),
                recent: acc.recent.into_iter().rev().collect(),
            }
        })
        .collect();
    Ok(pb::DisasterDrillSummaryResponse { regions })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles_are_recorded_values() {
        let values = [10, 20, 30, 40, 50, 60, 70, 80, 90, 100];
        assert_eq!(nearest_rank(&values, 50), 50);
        assert_eq!(nearest_rank(&values, 95), 100);
        assert_eq!(nearest_rank(&[7], 50), 7);
        assert_eq!(nearest_rank(&[7], 95), 7);
        assert_eq!(nearest_rank(&[1, 2, 3], 50), 2);
        assert_eq!(nearest_rank(&[1, 2, 3, 4], 50), 2);
        assert_eq!(nearest_rank(&[1, 2, 3, 4], 95), 4);
    }

    #[test]
    fn spans_print_exactly() {
        assert_eq!(span_text(900 * NANOS_PER_SECOND), "900s");
        assert_eq!(span_text(1_500_000_000), "1.5s");
        assert_eq!(span_text(1), "0.000000001s");
    }
}
