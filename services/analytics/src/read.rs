//! Reading event rows back, with their seals. Callers check the seal
//! before serving a row as valid.

use soma_store::Database;
use sqlx::Row as _;

use crate::db::on_pool;
use crate::error::AnalyticsError;
use crate::rows::{BillingEvent, CapsuleRun, Seal};

const CAPSULE_RUN_COLUMNS: &str = "event_id, tenant, capsule_id, tool, run_id, outcome, started_at, duration_nanos, \
                                   recorded_by, row_version, mac_key_id, mac";
const BILLING_COLUMNS: &str = "event_id, tenant, tool, tool_version, currency, amount_micros, fuel_consumed, \
                               duration_micros, occurred_at, run_id, recorded_by, row_version, mac_key_id, mac";

macro_rules! seal_of {
    ($r:expr) => {
        Seal {
            row_version: $r.try_get::<i64, _>("row_version")?,
            key_id: $r.try_get::<String, _>("mac_key_id")?,
            mac: $r.try_get::<Vec<u8>, _>("mac")?,
        }
    };
}

macro_rules! capsule_run_of {
    ($r:expr) => {
        CapsuleRun {
            event_id: $r.try_get("event_id")?,
            tenant: $r.try_get("tenant")?,
            capsule_id: $r.try_get("capsule_id")?,
            tool: $r.try_get("tool")?,
            run_id: $r.try_get("run_id")?,
            outcome: $r.try_get("outcome")?,
            started_at: $r.try_get("started_at")?,
            duration_nanos: $r.try_get("duration_nanos")?,
            recorded_by: $r.try_get("recorded_by")?,
        }
    };
}

macro_rules! billing_of {
    ($r:expr) => {
        BillingEvent {
            event_id: $r.try_get("event_id")?,
            tenant: $r.try_get("tenant")?,
            tool: $r.try_get("tool")?,
            tool_version: $r.try_get("tool_version")?,
            currency: $r.try_get("currency")?,
            amount_micros: $r.try_get("amount_micros")?,
            fuel_consumed: $r.try_get("fuel_consumed")?,
            duration_micros: $r.try_get("duration_micros")?,
            occurred_at: $r.try_get("occurred_at")?,
            run_id: $r.try_get("run_id")?,
            recorded_by: $r.try_get("recorded_by")?,
        }
    };
}

/// Every capsule run, for the sweep.
pub(crate) async fn all_capsule_runs(db: &Database) -> Result<Vec<(CapsuleRun, Seal)>, AnalyticsError> {
    on_pool!(db, pool => {
        let rows = sqlx::query(&format!("SELECT {CAPSULE_RUN_COLUMNS} FROM capsule_runs ORDER BY ledger_index"))
            .fetch_all(pool)
            .await?;
        rows.iter()
            .map(|r| -> Result<_, AnalyticsError> { Ok((capsule_run_of!(r), seal_of!(r))) })
            .collect()
    })
}

/// Every billing event, for the sweep.
pub(crate) async fn all_billing_events(db: &Database) -> Result<Vec<(BillingEvent, Seal)>, AnalyticsError> {
    on_pool!(db, pool => {
        let rows = sqlx::query(&format!("SELECT {BILLING_COLUMNS} FROM billing_events ORDER BY ledger_index"))
            .fetch_all(pool)
            .await?;
        rows.iter()
            .map(|r| -> Result<_, AnalyticsError> { Ok((billing_of!(r), seal_of!(r))) })
            .collect()
    })
}

/// One capsule run by event id.
pub(crate) async fn capsule_run(
    db: &Database,
    event_id: &str,
) -> Result<Option<(CapsuleRun, Seal)>, AnalyticsError> {
    on_pool!(db, pool => {
        let row = sqlx::query(&format!("SELECT {CAPSULE_RUN_COLUMNS} FROM capsule_runs WHERE event_id = $1"))
            .bind(event_id)
            .fetch_optional(pool)
            .await?;
        row.map(|r| -> Result<_, AnalyticsError> { Ok((capsule_run_of!(r), seal_of!(r))) }).transpose()
    })
}

/// One billing event by event id.
pub(crate) async fn billing_event(
    db: &Database,
    event_id: &str,
) -> Result<Option<(BillingEvent, Seal)>, AnalyticsError> {
    on_pool!(db, pool => {
        let row = sqlx::query(&format!("SELECT {BILLING_COLUMNS} FROM billing_events WHERE event_id = $1"))
            .bind(event_id)
            .fetch_optional(pool)
            .await?;
        row.map(|r| -> Result<_, AnalyticsError> { Ok((billing_of!(r), seal_of!(r))) }).transpose()
    })
}

/// One keyset page of an export: a tenant's rows with `ts` in
/// `[from, to)` and a ledger index below `below_index`, ordered by
/// `(ts, ledger_index)`, strictly after the position `after`.
#[derive(Clone, Debug)]
pub(crate) struct ExportPage<'a> {
    pub tenant: &'a str,
    /// Inclusive start, Unix nanoseconds.
    pub from: i64,
    /// Exclusive end, Unix nanoseconds.
    pub to: i64,
    /// Exclusive bound on the ledger index (the checkpoint's tree size).
    pub below_index: i64,
    /// Only this tool, when set.
    pub tool: Option<&'a str>,
    /// The `(ts, ledger_index)` of the last row of the previous page.
    pub after: Option<(i64, i64)>,
    /// Most rows returned.
    pub limit: i64,
}

/// A row read for an export: the row, its seal, its ledger index and the
/// hash of the ledger leaf at that index for the same event (`None` when
/// there is none).
pub(crate) type ExportRow<R> = (R, Seal, i64, Option<Vec<u8>>);

/// The WHERE/ORDER/LIMIT tail of an export page over the time column `ts`.
/// Placeholders: $1 tenant, $2 lower time bound, $3 `to`, $4 last ledger
/// index (or -1), $5 index bound, $6 tool (empty: any), $7 limit.
fn export_tail(ts: &str) -> String {
    format!(
        "WHERE e.tenant = $1 AND e.{ts} >= $2 AND e.{ts} < $3 AND (e.{ts} > $2 OR e.ledger_index > $4) \
         AND e.ledger_index < $5 AND ($6 = '' OR e.tool = $6) ORDER BY e.{ts}, e.ledger_index LIMIT $7"
    )
}

/// The leaf of the row's own ledger index, for the same event.
const EXPORT_LEAF: &str = "(SELECT l.leaf_hash FROM ledger_leaves l \
                           WHERE l.leaf_index = e.ledger_index AND l.event_id = e.event_id) AS leaf_hash";

fn page_bounds(page: &ExportPage<'_>) -> (i64, i64) {
    match page.after {
        Some((ts, index)) => (ts, index),
        None => (page.from, -1),
    }
}

/// A page of capsule runs for an export (time column `started_at`).
pub(crate) async fn export_capsule_runs_page(
    db: &Database,
    page: &ExportPage<'_>,
) -> Result<Vec<ExportRow<CapsuleRun>>, AnalyticsError> {
    let (lower, last_index) = page_bounds(page);
    let sql = format!(
        "SELECT {CAPSULE_RUN_COLUMNS}, ledger_index, {EXPORT_LEAF} FROM capsule_runs e {}",
        export_tail("started_at")
    );
    on_pool!(db, pool => {
        let rows = sqlx::query(&sql)
            .bind(page.tenant)
            .bind(lower)
            .bind(page.to)
            .bind(last_index)
            .bind(page.below_index)
            .bind(page.tool.unwrap_or(""))
            .bind(page.limit)
            .fetch_all(pool)
            .await?;
        rows.iter()
            .map(|r| -> Result<_, AnalyticsError> {
                Ok((
                    capsule_run_of!(r),
                    seal_of!(r),
                    r.try_get::<i64, _>("ledger_index")?,
                    r.try_get::<Option<Vec<u8>>, _>("leaf_hash")?,
                ))
            })
            .collect()
    })
}

/// A page of billing events for an export (time column `occurred_at`).
pub(crate) async fn export_billing_page(
    db: &Database,
    page: &ExportPage<'_>,
) -> Result<Vec<ExportRow<BillingEvent>>, AnalyticsError> {
    let (lower, last_index) = page_bounds(page);
    let sql = format!(
        "SELECT {BILLING_COLUMNS}, ledger_index, {EXPORT_LEAF} FROM billing_events e {}",
        export_tail("occurred_at")
    );
    on_pool!(db, pool => {
        let rows = sqlx::query(&sql)
            .bind(page.tenant)
            .bind(lower)
            .bind(page.to)
            .bind(last_index)
            .bind(page.below_index)
            .bind(page.tool.unwrap_or(""))
            .bind(page.limit)
            .fetch_all(pool)
            .await?;
        rows.iter()
            .map(|r| -> Result<_, AnalyticsError> {
                Ok((
                    billing_of!(r),
                    seal_of!(r),
                    r.try_get::<i64, _>("ledger_index")?,
                    r.try_get::<Option<Vec<u8>>, _>("leaf_hash")?,
                ))
            })
            .collect()
    })
}
