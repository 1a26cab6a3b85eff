//! `capsule_runs`: one row per capsule run outcome, each a ledger leaf.
//!
//! # Content versions
//!
//! A run recorded by the gateway's `RunCapsule` names what ran and why it
//! was allowed to: the capsule version, the bundle digest, the environment
//! and installation revision, and the moderation decision that admitted
//! its input. Runs recorded before carry none of these and keep verifying
//! exactly as they were sealed, appended and exported, the way
//! `tables::billing` keeps its unmeasured rows: the `row_version` both MAC
//! schemes bind names the content a row was sealed with.
//!
//! - **[`UNATTRIBUTED`]** (1): the nine original columns; the five new ones
//!   NULL (members the row does not have: content, leaf and export object
//!   are byte for byte what they were). A caller that sends none of the new
//!   fields still records such a run.
//! - **[`ATTRIBUTED`]** (2): all five new members present (the digest 32
//!   bytes, the revision at least 1).
//!
//! A row is admitted only at the version whose members it has; a request
//! with some of the new fields and not the others is refused, naming the
//! first one missing.

use serde_json::{Value as Json, json};
use soma_mesh::Caller;
use soma_proto::v1 as pb;

use super::row::ROW_VERSION;
use super::{EventRow, Exported, Ledgered, Registration, Table, columns, keyed_by};
use crate::convert::hex;
use crate::error::AnalyticsError;
use crate::validate;

/// Content version of a run without its provenance.
pub(crate) const UNATTRIBUTED: i64 = ROW_VERSION;

/// Content version of a run with its provenance (capsule version, bundle
/// digest, environment, installation revision, moderation decision).
pub(crate) const ATTRIBUTED: i64 = 2;

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
    /// Capsule version that ran; `None` in a row of version [`UNATTRIBUTED`].
    pub capsule_version: Option<String>,
    /// SHA-256 of the bundle that ran (32 bytes).
    pub bundle_sha256: Option<Vec<u8>>,
    /// Environment of the installation.
    pub environment: Option<String>,
    /// Installation revision that ran.
    pub installation_revision: Option<i64>,
    /// Moderation decision that admitted the run's input.
    pub moderation_decision_id: Option<String>,
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
        Self {
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
            capsule_version: None,
            bundle_sha256: None,
            environment: None,
            installation_revision: None,
            moderation_decision_id: None,
        }
        .attributed(r.capsule_version, r.bundle_sha256, r.environment, r.installation_revision, r.moderation_decision_id)
    }

    /// The run with its provenance, when the request carries any of it
    /// (then all of it, each field checked).
    fn attributed(
        mut self,
        capsule_version: String,
        bundle_sha256: Vec<u8>,
        environment: String,
        installation_revision: u64,
        moderation_decision_id: String,
    ) -> Result<Self, AnalyticsError> {
        if capsule_version.is_empty()
            && bundle_sha256.is_empty()
            && environment.is_empty()
            && installation_revision == 0
            && moderation_decision_id.is_empty()
        {
            return Ok(self);
        }
        if installation_revision == 0 {
            return Err(validate::invalid("installation_revision", "required with the run's provenance"));
        }
        self.capsule_version = Some(validate::version("capsule_version", &capsule_version)?);
        self.bundle_sha256 = Some(validate::sha256("bundle_sha256", bundle_sha256)?);
        self.environment = Some(validate::identifier("environment", &environment)?);
        self.installation_revision = Some(validate::count("installation_revision", installation_revision)?);
        self.moderation_decision_id = Some(validate::identifier("moderation_decision_id", &moderation_decision_id)?);
        Ok(self)
    }

    /// The content version of the row's members (see the module doc).
    fn content_version(&self) -> Option<i64> {
        match (
            &self.capsule_version,
            &self.bundle_sha256,
            &self.environment,
            self.installation_revision,
            &self.moderation_decision_id,
        ) {
            (None, None, None, None, None) => Some(UNATTRIBUTED),
            (Some(_), Some(digest), Some(_), Some(revision), Some(_)) if digest.len() == 32 && revision >= 1 => {
                Some(ATTRIBUTED)
            }
            _ => None,
        }
    }
}

impl EventRow for CapsuleRun {
    const TABLE: &'static str = "capsule_runs";
    const KIND: &'static str = "capsule_run";

    keyed_by!(event_id);

    fn content(&self) -> Json {
        let mut content = json!({
            "capsule_id": self.capsule_id,
            "tool": self.tool,
            "run_id": self.run_id,
            "outcome": self.outcome,
            "started_at": self.started_at.to_string(),
            "duration_nanos": self.duration_nanos.to_string(),
            "recorded_by": self.recorded_by,
        });
        if let Some(version) = &self.capsule_version {
            content["capsule_version"] = json!(version);
        }
        if let Some(digest) = &self.bundle_sha256 {
            content["bundle_sha256"] = json!(hex(digest));
        }
        if let Some(environment) = &self.environment {
            content["environment"] = json!(environment);
        }
        if let Some(revision) = self.installation_revision {
            content["installation_revision"] = json!(revision.to_string());
        }
        if let Some(decision) = &self.moderation_decision_id {
            content["moderation_decision_id"] = json!(decision);
        }
        content
    }

    fn write_content(&self, out: &mut Vec<u8>) -> Result<(), AnalyticsError> {
        self.write_column_content(out);
        Ok(())
    }

    /// [`ATTRIBUTED`] for a run with its provenance, [`UNATTRIBUTED`]
    /// without; a row of no version is sealed as [`ATTRIBUTED`] and fails.
    fn new_row_version(&self) -> i64 {
        self.content_version().unwrap_or(ATTRIBUTED)
    }

    fn content_is_of(&self, row_version: i64) -> bool {
        self.content_version() == Some(row_version)
    }
}

impl Table for CapsuleRun {
    const KEY: &'static str = "event_id";
    // In name order (`Exported::COLUMNS_IN_NAME_ORDER`).
    columns! {
        bundle_sha256: opt_bytes,
        capsule_id: text,
        capsule_version: opt_text,
        duration_nanos: int,
        environment: opt_text,
        event_id: text,
        installation_revision: opt_int,
        moderation_decision_id: opt_text,
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
