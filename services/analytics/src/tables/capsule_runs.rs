//! `capsule_runs`: one row per capsule run outcome, each a ledger leaf.

use serde_json::{Value as Json, json};
use soma_mesh::Caller;
use soma_proto::v1 as pb;

use super::row::{push_i64, push_int_member, push_string};
use super::{keyed_by, EventRow, Exported, Ledgered, Registration, Table, columns};
use crate::convert::push_rfc3339_nanos;
use crate::error::AnalyticsError;
use crate::validate;

/// The table's registration.
pub(crate) const TABLES: &[Registration] = &[Registration::of::<CapsuleRun>()];

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

impl CapsuleRun {
    /// `RecordCapsuleRun`'s row: every field checked, the recorder the
    /// caller's SPIFFE ID.
    pub(crate) fn from_request(caller: &Caller, r: pb::RecordCapsuleRunRequest) -> Result<Self, AnalyticsError> {
        let outcome = match validate::enum_value::<pb::RunOutcome>("outcome", r.outcome)? {
            pb::RunOutcome::Succeeded => "succeeded",
            pb::RunOutcome::Failed => "failed",
            pb::RunOutcome::Refused => "refused",
            pb::RunOutcome::Unspecified => return Err(validate::invalid("outcome", "required")),
        };
        Ok(Self {
            event_id: validate::identifier("event_id", &r.event_id)?,
            tenant: validate::ingest_tenant(caller, &r.tenant)?,
            capsule_id: validate::identifier("capsule_id", &r.capsule_id)?,
            tool: if r.tool.is_empty() {
                String::new()
            } else {
                validate::identifier("tool", &r.tool)?
            },
            run_id: validate::identifier("run_id", &r.run_id)?,
            outcome: outcome.to_owned(),
            started_at: validate::timestamp("started_at", r.started_at.as_ref())?,
            duration_nanos: validate::duration("duration", r.duration.as_ref())?,
            recorded_by: caller.peer.spiffe_id.to_string(),
        })
    }
}

impl EventRow for CapsuleRun {
    const TABLE: &'static str = "capsule_runs";
    const KIND: &'static str = "capsule_run";

    keyed_by!(event_id);

    fn content(&self) -> Json {
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

    fn write_content(&self, out: &mut Vec<u8>) -> Result<(), AnalyticsError> {
        // The members of `content` in RFC 8785 (byte) order.
        out.extend_from_slice(b"{\"capsule_id\":");
        push_string(out, &self.capsule_id);
        push_int_member(out, b",\"duration_nanos\":", self.duration_nanos);
        out.extend_from_slice(b",\"outcome\":");
        push_string(out, &self.outcome);
        out.extend_from_slice(b",\"recorded_by\":");
        push_string(out, &self.recorded_by);
        out.extend_from_slice(b",\"run_id\":");
        push_string(out, &self.run_id);
        push_int_member(out, b",\"started_at\":", self.started_at);
        out.extend_from_slice(b",\"tool\":");
        push_string(out, &self.tool);
        out.push(b'}');
        Ok(())
    }
}

impl Table for CapsuleRun {
    const KEY: &'static str = "event_id";
    columns! {
        event_id: text,
        tenant: text,
        capsule_id: text,
        tool: text,
        run_id: text,
        outcome: text,
        started_at: int,
        duration_nanos: int,
        recorded_by: text,
    }
    const LEDGERED: bool = true;
    const BULK: bool = true;
}

impl Ledgered for CapsuleRun {}

impl Exported for CapsuleRun {
    const EXPORT: &'static str = "capsule_runs";
    const TIME: &'static str = "started_at";
    const TOOL: Option<&'static str> = Some("tool");

    fn time(&self) -> i64 {
        self.started_at
    }

    fn recorded_by(&self) -> &str {
        &self.recorded_by
    }

    fn write_object(&self, ledger_index: i64, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"capsule_id\":");
        push_string(out, &self.capsule_id);
        out.extend_from_slice(b",\"duration_nanos\":");
        push_i64(out, self.duration_nanos);
        out.extend_from_slice(b",\"event_id\":");
        push_string(out, &self.event_id);
        out.extend_from_slice(b",\"ledger_index\":");
        push_i64(out, ledger_index);
        out.extend_from_slice(b",\"outcome\":");
        push_string(out, &self.outcome);
        out.extend_from_slice(b",\"recorded_by\":");
        push_string(out, &self.recorded_by);
        out.extend_from_slice(b",\"run_id\":");
        push_string(out, &self.run_id);
        out.extend_from_slice(b",\"started_at\":\"");
        push_rfc3339_nanos(out, self.started_at);
        out.extend_from_slice(b"\",\"tenant\":");
        push_string(out, &self.tenant);
        out.extend_from_slice(b",\"tool\":");
        push_string(out, &self.tool);
        out.push(b'}');
    }
}

#[cfg(test)]
mod tests {
    use super::CapsuleRun;
    use crate::convert::rfc3339_nanos;
    use crate::tables::Exported as _;

    /// The `serde_json::Value` object the direct writer replaces.
    fn capsule_run_object(r: &CapsuleRun, ledger_index: i64) -> serde_json::Value {
        serde_json::json!({
            "event_id": r.event_id,
            "ledger_index": ledger_index,
            "tenant": r.tenant,
            "capsule_id": r.capsule_id,
            "tool": r.tool,
            "run_id": r.run_id,
            "outcome": r.outcome,
            "started_at": rfc3339_nanos(r.started_at),
            "duration_nanos": r.duration_nanos,
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
                let run = CapsuleRun {
                    event_id: text.to_owned(),
                    tenant: format!("{text}x"),
                    capsule_id: format!("c{text}"),
                    tool: text.to_owned(),
                    run_id: "r".to_owned(),
                    outcome: "succeeded".to_owned(),
                    started_at: at,
                    duration_nanos: n,
                    recorded_by: text.to_owned(),
                };
                let mut out = Vec::new();
                run.write_object(i64::MAX - n, &mut out);
                assert_eq!(
                    String::from_utf8(out).unwrap(),
                    capsule_run_object(&run, i64::MAX - n).to_string()
                );
            }
        }
    }
}
