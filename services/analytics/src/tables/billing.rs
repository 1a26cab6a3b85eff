//! `billing_events`: one row per billing event the tool registry records
//! from measured execution metadata, each a ledger leaf.

use serde_json::{Value as Json, json};
use soma_mesh::Caller;
use soma_proto::v1 as pb;

use super::row::{push_i64, push_int_member, push_string};
use super::{keyed_by, EventRow, Exported, Ledgered, Registration, Table, columns};
use crate::convert::push_rfc3339_nanos;
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
        // The members of `content` in RFC 8785 (byte) order.
        push_int_member(out, b"{\"amount_micros\":", self.amount_micros);
        out.extend_from_slice(b",\"currency\":");
        push_string(out, &self.currency);
        push_int_member(out, b",\"duration_micros\":", self.duration_micros);
        push_int_member(out, b",\"fuel_consumed\":", self.fuel_consumed);
        push_int_member(out, b",\"occurred_at\":", self.occurred_at);
        out.extend_from_slice(b",\"recorded_by\":");
        push_string(out, &self.recorded_by);
        out.extend_from_slice(b",\"run_id\":");
        push_string(out, &self.run_id);
        out.extend_from_slice(b",\"tool\":");
        push_string(out, &self.tool);
        out.extend_from_slice(b",\"tool_version\":");
        push_string(out, &self.tool_version);
        out.push(b'}');
        Ok(())
    }
}

impl Table for BillingEvent {
    const KEY: &'static str = "event_id";
    columns! {
        event_id: text,
        tenant: text,
        tool: text,
        tool_version: text,
        currency: text,
        amount_micros: int,
        fuel_consumed: int,
        duration_micros: int,
        occurred_at: int,
        run_id: text,
        recorded_by: text,
    }
    const LEDGERED: bool = true;
    const BULK: bool = true;
}

impl Ledgered for BillingEvent {}

impl Exported for BillingEvent {
    const EXPORT: &'static str = "billing_ledger";
    const TIME: &'static str = "occurred_at";
    const TOOL: Option<&'static str> = Some("tool");

    fn time(&self) -> i64 {
        self.occurred_at
    }

    fn recorded_by(&self) -> &str {
        &self.recorded_by
    }

    fn write_object(&self, ledger_index: i64, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"amount_micros\":");
        push_i64(out, self.amount_micros);
        out.extend_from_slice(b",\"currency\":");
        push_string(out, &self.currency);
        out.extend_from_slice(b",\"duration_micros\":");
        push_i64(out, self.duration_micros);
        out.extend_from_slice(b",\"event_id\":");
        push_string(out, &self.event_id);
        out.extend_from_slice(b",\"fuel_consumed\":");
        push_i64(out, self.fuel_consumed);
        out.extend_from_slice(b",\"ledger_index\":");
        push_i64(out, ledger_index);
        out.extend_from_slice(b",\"occurred_at\":\"");
        push_rfc3339_nanos(out, self.occurred_at);
        out.extend_from_slice(b"\",\"recorded_by\":");
        push_string(out, &self.recorded_by);
        out.extend_from_slice(b",\"run_id\":");
        push_string(out, &self.run_id);
        out.extend_from_slice(b",\"tenant\":");
        push_string(out, &self.tenant);
        out.extend_from_slice(b",\"tool\":");
        push_string(out, &self.tool);
        out.extend_from_slice(b",\"tool_version\":");
        push_string(out, &self.tool_version);
        out.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use super::BillingEvent;
    use crate::convert::rfc3339_nanos;
    use crate::tables::Exported as _;

    /// The `serde_json::Value` object the direct writer replaces.
    fn billing_object(r: &BillingEvent, ledger_index: i64) -> serde_json::Value {
        serde_json::json!({
            "event_id": r.event_id,
            "ledger_index": ledger_index,
            "tenant": r.tenant,
            "tool": r.tool,
            "tool_version": r.tool_version,
            "amount_micros": r.amount_micros,
            "currency": r.currency,
            "fuel_consumed": r.fuel_consumed,
            "duration_micros": r.duration_micros,
            "occurred_at": rfc3339_nanos(r.occurred_at),
            "run_id": r.run_id,
            "recorded_by": r.recorded_by,
        })
    }

    #[test]
    fn export_objects_are_the_bytes_serde_json_writes() {
        let texts = ["acme", "", "q\"b\\s/", "\u{0}\u{1f}\u{7f}\n\t", "é 漢 \u{10348}"];
        let times = [0, -1, 1_709_251_199_000_000_001, i64::MAX, i64::MIN];
        for text in texts {
            for (n, at) in times.into_iter().enumerate() {
                let n = i64::try_from(n).unwrap() * 1_000_003;
                let bill = BillingEvent {
                    event_id: format!("e{text}"),
                    tenant: text.to_owned(),
                    tool: format!("{text}t"),
                    tool_version: "1.0".to_owned(),
                    currency: "EUR".to_owned(),
                    amount_micros: n,
                    fuel_consumed: n + 1,
                    duration_micros: n + 2,
                    occurred_at: at,
                    run_id: text.to_owned(),
                    recorded_by: format!("spiffe://td/svc/{text}"),
                };
                let mut out = Vec::new();
                bill.write_object(n + 7, &mut out);
                assert_eq!(
                    String::from_utf8(out).unwrap(),
                    billing_object(&bill, n + 7).to_string()
                );
            }
        }
    }
}
