//! `capsule_runs`: one row per capsule run outcome, each a ledger leaf.

use serde_json::{Value as Json, json};
use soma_mesh::Caller;
use soma_proto::v1 as pb;

use super::{keyed_by, EventRow, Exported, Ledgered, Registration, Table, columns};
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
        self.write_column_content(out);
        Ok(())
    }
}

impl Table for CapsuleRun {
    const KEY: &'static str = "event_id";
    // In name order (`Exported::COLUMNS_IN_NAME_ORDER`).
    columns! {
        capsule_id: text,
        duration_nanos: int,
        event_id: text,
        outcome: text,
        recorded_by: text,
        run_id: text,
        started_at: int,
        tenant: text,
        tool: text,
    }
    const LEDGERED: bool = true;
    const BULK: bool = true;

    fn leaf_time(&self) -> Option<i64> {
        Some(self.started_at)
    }
}

impl Ledgered for CapsuleRun {
    const TIME: &'static str = "started_at";

    fn time(&self) -> i64 {
        self.started_at
    }
}

impl Exported for CapsuleRun {
    const EXPORT: &'static str = "capsule_runs";
    const TOOL: Option<&'static str> = Some("tool");

    fn recorded_by(&self) -> &str {
        &self.recorded_by
    }

    fn tool(&self) -> Option<&str> {
        Some(&self.tool)
    }
}
