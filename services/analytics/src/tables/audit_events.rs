//! `audit_events`: what the services did that must stay on record — a
//! release published or revoked, a review, an install, a key rotation —
//! each a ledger leaf with a row MAC, exported signed like the others.
//!
//! **Who records.** `RecordAuditEvent` admits the four services' SPIFFE IDs
//! only and names no tenant capability, so a tenant's claims never reach it
//! (the mesh refuses them with `insufficient_scope`). The actor is the
//! verified claims' subject when claims came with the call, else the
//! caller's SPIFFE ID: never a field of the request.
//!
//! **Tenancy.** An event belongs to the tenant the request names, or to no
//! tenant (empty: platform-wide, e.g. a key rotation). A platform-wide
//! event is exported to a caller without tenant claims who names no tenant.
//!
//! **Details** are a JSON object (`google.protobuf.Struct`), stored as its
//! RFC 8785 canonical form and MACed as JSON: at most
//! [`MAX_DETAILS_BYTES`] canonical bytes, finite numbers only.
//!
//! Idempotent by event id like the other kinds: a retry with the same
//! content gets the same ledger entry; other content is `ALREADY_EXISTS`.

use serde_json::{Map, Value as Json, json};
use soma_mesh::Caller;
use soma_proto::v1 as pb;
use soma_sign::jcs;

use super::{keyed_by, Column, EventRow, Exported, Get, Ledgered, Registration, Table, Value, int, text};
use crate::error::AnalyticsError;
use crate::validate::{self, invalid};

/// The table's registration.
pub(crate) const TABLES: &[Registration] = &[Registration::of::<AuditEvent>()];

/// Longest canonical `details`, in bytes.
pub(crate) const MAX_DETAILS_BYTES: usize = 16 * 1024;

/// Longest `subject`, in characters.
const MAX_SUBJECT_CHARS: usize = 256;

/// Deepest nesting of `details`.
const MAX_DETAILS_DEPTH: usize = 16;

/// An audit event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct AuditEvent {
    pub event_id: String,
    /// Empty for a platform-wide event.
    pub tenant: String,
    /// Claims subject, or the caller's SPIFFE ID.
    pub actor: String,
    /// What was done, e.g. `release.publish`.
    pub action: String,
    /// What it was done to, e.g. `tool:summarize@1.2.0`.
    pub subject: String,
    /// A JSON object.
    pub details: Json,
    /// `details` as stored: its RFC 8785 canonical form.
    pub details_json: String,
    /// Unix nanoseconds.
    pub occurred_at: i64,
    /// SPIFFE ID of the service that recorded it.
    pub recorded_by: String,
}

impl AuditEvent {
    /// `RecordAuditEvent`'s row: every field checked.
    pub(crate) fn from_request(caller: &Caller, r: pb::RecordAuditEventRequest) -> Result<Self, AnalyticsError> {
        let tenant = match &caller.claims {
            Some(_) => validate::ingest_tenant(caller, &r.tenant)?,
            None if r.tenant.is_empty() => String::new(),
            None => validate::identifier("tenant", &r.tenant)?,
        };
        if r.subject.is_empty() {
            return Err(invalid("subject", "required"));
        }
        if r.subject.chars().count() > MAX_SUBJECT_CHARS {
            return Err(invalid("subject", format!("longer than {MAX_SUBJECT_CHARS} characters")));
        }
        if r.subject.chars().any(char::is_control) {
            return Err(invalid("subject", "control characters are not allowed"));
        }
        let details = match r.details {
            Some(s) => object(s, 0)?,
            None => Json::Object(Map::new()),
        };
        let details_json = canonical(&details).map_err(|e| invalid("details", e.to_string()))?;
        if details_json.len() > MAX_DETAILS_BYTES {
            return Err(invalid(
                "details",
                format!("{} canonical bytes, more than {MAX_DETAILS_BYTES}", details_json.len()),
            ));
        }
        Ok(Self {
            event_id: validate::identifier("event_id", &r.event_id)?,
            tenant,
            actor: validate::actor(caller),
            action: validate::identifier("action", &r.action)?,
            subject: r.subject,
            details,
            details_json,
            occurred_at: validate::timestamp("occurred_at", r.occurred_at.as_ref())?,
            recorded_by: caller.peer.spiffe_id.to_string(),
        })
    }
}

/// RFC 8785 canonical JSON text.
pub(crate) fn canonical(value: &Json) -> Result<String, AnalyticsError> {
    // RFC 8785 output is UTF-8 by construction.
    String::from_utf8(jcs::canonicalize(value)?).map_err(|_| AnalyticsError::Config("non-UTF-8 JSON".to_owned()))
}

/// A `google.protobuf.Struct` as a JSON object.
fn object(s: prost_types::Struct, depth: usize) -> Result<Json, AnalyticsError> {
    if depth > MAX_DETAILS_DEPTH {
        return Err(invalid("details", format!("nested deeper than {MAX_DETAILS_DEPTH}")));
    }
    s.fields
        .into_iter()
        .map(|(k, v)| Ok((k, value(v, depth + 1)?)))
        .collect::<Result<Map<_, _>, AnalyticsError>>()
        .map(Json::Object)
}

fn value(v: prost_types::Value, depth: usize) -> Result<Json, AnalyticsError> {
    use prost_types::value::Kind;
    Ok(match v.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => Json::Bool(b),
        Some(Kind::StringValue(s)) => Json::String(s),
        Some(Kind::NumberValue(n)) => serde_json::Number::from_f64(n)
            .map(Json::Number)
            .ok_or_else(|| invalid("details", format!("{n} is not a finite number")))?,
        Some(Kind::StructValue(s)) => object(s, depth)?,
        Some(Kind::ListValue(l)) => {
            if depth > MAX_DETAILS_DEPTH {
                return Err(invalid("details", format!("nested deeper than {MAX_DETAILS_DEPTH}")));
            }
            Json::Array(
                l.values
                    .into_iter()
                    .map(|v| value(v, depth + 1))
                    .collect::<Result<_, _>>()?,
            )
        }
    })
}

impl EventRow for AuditEvent {
    const TABLE: &'static str = "audit_events";
    const KIND: &'static str = "audit_event";

    keyed_by!(event_id);

    fn content(&self) -> Json {
        json!({
            "actor": self.actor,
            "action": self.action,
            "subject": self.subject,
            "details": self.details,
            "occurred_at": self.occurred_at.to_string(),
            "recorded_by": self.recorded_by,
        })
    }

    fn write_content(&self, out: &mut Vec<u8>) -> Result<(), AnalyticsError> {
        // `details_json` is the canonical form of `details`, and a
        // canonical value nested in a canonical object is canonical.
        self.write_column_content(out);
        Ok(())
    }
}

impl Table for AuditEvent {
    const KEY: &'static str = "event_id";
    // In name order (`Exported::COLUMNS_IN_NAME_ORDER`).
    const COLUMNS: &'static [Column] = &[
        text("action"),
        text("actor"),
        text("details"),
        text("event_id"),
        int("occurred_at"),
        text("recorded_by"),
        text("subject"),
        text("tenant"),
    ];
    const LEDGERED: bool = true;

    fn values(&self) -> Vec<Value<'_>> {
        vec![
            Value::Text(&self.action),
            Value::Text(&self.actor),
            Value::Text(&self.details_json),
            Value::Text(&self.event_id),
            Value::Int(self.occurred_at),
            Value::Text(&self.recorded_by),
            Value::Text(&self.subject),
            Value::Text(&self.tenant),
        ]
    }

    fn from_row<R: Get>(r: &R) -> Result<Self, AnalyticsError> {
        let event_id = r.text("event_id")?;
        // Details that do not parse as a JSON object were not written by
        // this service: the row fails its integrity check.
        let corrupt = || AnalyticsError::RowIntegrity {
            table: Self::TABLE,
            primary_key: event_id.clone(),
        };
        let details = serde_json::from_str::<Json>(&r.text("details")?)
            .ok()
            .filter(Json::is_object)
            .ok_or_else(corrupt)?;
        let details_json = canonical(&details).map_err(|_| corrupt())?;
        Ok(Self {
            tenant: r.text("tenant")?,
            actor: r.text("actor")?,
            action: r.text("action")?,
            subject: r.text("subject")?,
            details,
            details_json,
            occurred_at: r.int("occurred_at")?,
            recorded_by: r.text("recorded_by")?,
            event_id,
        })
    }

    fn leaf_time(&self) -> Option<i64> {
        Some(self.occurred_at)
    }
}

impl Ledgered for AuditEvent {
    const TIME: &'static str = "occurred_at";

    fn time(&self) -> i64 {
        self.occurred_at
    }
}

impl Exported for AuditEvent {
    const EXPORT: &'static str = "audit_events";
    const TOOL: Option<&'static str> = None;
    const PLATFORM_WIDE: bool = true;
    const JSON_COLUMNS: &'static [&'static str] = &["details"];

    fn recorded_by(&self) -> &str {
        &self.recorded_by
    }
}
