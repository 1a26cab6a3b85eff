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
