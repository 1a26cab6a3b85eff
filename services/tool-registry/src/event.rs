//! Times, ids and audit events as the registry writes them.

use soma_proto::json;
use soma_proto::v1 as pb;

/// Now, Unix nanoseconds.
pub(crate) fn now_nanos() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_nanos()).unwrap_or(i64::MAX)
}

/// Unix nanoseconds as a protobuf timestamp.
pub(crate) fn timestamp(nanos: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: nanos.div_euclid(1_000_000_000),
        nanos: i32::try_from(nanos.rem_euclid(1_000_000_000)).unwrap_or(0),
    }
}

/// `<prefix>-` and 128 random bits in hex: an event id no one can guess
/// or collide with.
pub(crate) fn random_id(prefix: &str) -> String {
    let bits: u128 = rand::random();
    format!("{prefix}-{bits:032x}")
}

/// An audit event for Analytics.
pub(crate) fn audit_event(
    tenant: &str,
    action: &str,
    subject: &str,
    details: serde_json::Value,
    now: i64,
) -> pb::RecordAuditEventRequest {
    pb::RecordAuditEventRequest {
        event_id: random_id("audit"),
        tenant: tenant.to_owned(),
        action: action.to_owned(),
        subject: subject.to_owned(),
        details: json::to_struct(&details).ok().flatten(),
        occurred_at: Some(timestamp(now)),
    }
}
