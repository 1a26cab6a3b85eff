//! `billing_events`: one row per billing event the tool registry records
//! from measured execution metadata, each a ledger leaf.

use serde_json::{Value as Json, json};
use soma_mesh::Caller;
use soma_proto::v1 as pb;

use super::{keyed_by, EventRow, Exported, Ledgered, Registration, Table, columns};
use crate::error::AnalyticsError;
use crate::validate;

/// The table's registration.
pub(crate) const TABLES: &[Registration] = &[Registration::of::<BillingEvent>()];

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

impl BillingEvent {
    /// `RecordBillingEvent`'s row: every field checked, the recorder the
    /// caller's SPIFFE ID.
    pub(crate) fn from_request(caller: &Caller, r: pb::RecordBillingEventRequest) -> Result<Self, AnalyticsError> {
        let amount = r.amount.as_ref().ok_or_else(|| validate::invalid("amount", "required"))?;
        if amount.micros < 0 {
            return Err(validate::invalid("amount.micros", "must not be negative"));
        }
        Ok(Self {
            event_id: validate::identifier("event_id", &r.event_id)?,
            tenant: validate::ingest_tenant(caller, &r.tenant)?,
            tool: validate::identifier("tool", &r.tool)?,
            tool_version: validate::identifier("tool_version", &r.tool_version)?,
            currency: validate::currency("amount.currency", &amount.currency)?,
            amount_micros: amount.micros,
            fuel_consumed: validate::count("fuel_consumed", r.fuel_consumed)?,
            duration_micros: validate::count("duration_micros", r.duration_micros)?,
            occurred_at: validate::timestamp("occurred_at", r.occurred_at.as_ref())?,
            run_id: validate::identifier("run_id", &r.run_id)?,
            recorded_by: caller.peer.spiffe_id.to_string(),
        })
    }
}

impl EventRow for BillingEvent {
    const TABLE: &'static str = "billing_events";
    const KIND: &'static str = "billing_event";

    keyed_by!(event_id);

    fn content(&self) -> Json {
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

    fn write_content(&self, out: &mut Vec<u8>) -> Result<(), AnalyticsError> {
        self.write_column_content(out);
        Ok(())
    }
}

impl Table for BillingEvent {
    const KEY: &'static str = "event_id";
    // In name order: the content and export objects are written column by
    // column (`Exported::COLUMNS_IN_NAME_ORDER`).
    columns! {
        amount_micros: int,
        currency: text,
        duration_micros: int,
        event_id: text,
        fuel_consumed: int,
        occurred_at: int,
        recorded_by: text,
        run_id: text,
        tenant: text,
        tool: text,
        tool_version: text,
    }
    const LEDGERED: bool = true;
    const BULK: bool = true;

    fn leaf_time(&self) -> Option<i64> {
        Some(self.occurred_at)
    }
}

impl Ledgered for BillingEvent {
    const TIME: &'static str = "occurred_at";

    fn time(&self) -> i64 {
        self.occurred_at
    }
}

impl Exported for BillingEvent {
    const EXPORT: &'static str = "billing_ledger";
    const TOOL: Option<&'static str> = Some("tool");

    fn recorded_by(&self) -> &str {
        &self.recorded_by
    }

    fn tool(&self) -> Option<&str> {
        Some(&self.tool)
    }
}
