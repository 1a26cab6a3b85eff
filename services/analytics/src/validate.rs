//! Request validation: every field checked before anything is written,
//! each refusal naming its field.

use soma_mesh::Caller;

use crate::error::AnalyticsError;

/// Capability an operator's claims need, beside `operator`, to reach a
/// tenant other than their own: least privilege among operator tokens. On a
/// tenant's claims it grants nothing.
pub(crate) const CROSS_TENANT_CAPABILITY: &str = "analytics:cross-tenant";

/// An `INVALID_ARGUMENT` refusal naming `field`.
pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> AnalyticsError {
    AnalyticsError::InvalidArgument {
        field,
        reason: reason.into(),
    }
}

/// An identifier: 1..=128 characters of `[A-Za-z0-9._:-]`.
pub(crate) fn identifier(field: &'static str, value: &str) -> Result<String, AnalyticsError> {
    if value.is_empty() {
        return Err(invalid(field, "required"));
    }
    if value.len() > 128 {
        return Err(invalid(field, "longer than 128 characters"));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-'))
    {
        return Err(invalid(
            field,
            "only letters, digits, '.', '_', ':' and '-' are allowed",
        ));
    }
    Ok(value.to_owned())
}

/// A release version as the tool registry names it (SemVer 2.0.0 text):
/// 1..=128 characters of `[A-Za-z0-9.+-]`, build metadata (`+…`) included.
pub(crate) fn version(field: &'static str, value: &str) -> Result<String, AnalyticsError> {
    if value.is_empty() {
        return Err(invalid(field, "required"));
    }
    if value.len() > 128 {
        return Err(invalid(field, "longer than 128 characters"));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'+' | b'-'))
    {
        return Err(invalid(
            field,
            "only letters, digits, '.', '+' and '-' are allowed",
        ));
    }
    Ok(value.to_owned())
}

/// Earliest and latest instants representable as i64 Unix nanoseconds.
const MIN_SECONDS: i64 = i64::MIN / 1_000_000_000 + 1;
const MAX_SECONDS: i64 = i64::MAX / 1_000_000_000 - 1;

/// A required timestamp, as Unix nanoseconds.
pub(crate) fn timestamp(
    field: &'static str,
    value: Option<&prost_types::Timestamp>,
) -> Result<i64, AnalyticsError> {
    let ts = value.ok_or_else(|| invalid(field, "required"))?;
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return Err(invalid(field, format!("nanos {} is outside 0..1e9", ts.nanos)));
    }
    if !(MIN_SECONDS..=MAX_SECONDS).contains(&ts.seconds) {
        return Err(invalid(
            field,
            format!(
                "seconds {} is outside the supported range (years 1678..2261)",
                ts.seconds
            ),
        ));
    }
    Ok(ts.seconds * 1_000_000_000 + i64::from(ts.nanos))
}

/// A required non-negative duration, as nanoseconds.
pub(crate) fn duration(
    field: &'static str,
    value: Option<&prost_types::Duration>,
) -> Result<i64, AnalyticsError> {
    let d = value.ok_or_else(|| invalid(field, "required"))?;
    if d.seconds < 0 || d.nanos < 0 {
        return Err(invalid(field, "must not be negative"));
    }
    if d.nanos >= 1_000_000_000 {
        return Err(invalid(field, format!("nanos {} is outside 0..1e9", d.nanos)));
    }
    d.seconds
        .checked_mul(1_000_000_000)
        .and_then(|s| s.checked_add(i64::from(d.nanos)))
        .ok_or_else(|| invalid(field, "too long"))
}

/// A count carried as u64 that must fit the database's i64.
pub(crate) fn count(field: &'static str, value: u64) -> Result<i64, AnalyticsError> {
    i64::try_from(value).map_err(|_| invalid(field, format!("{value} is too large")))
}

/// A SHA-256 digest: exactly 32 bytes.
pub(crate) fn sha256(field: &'static str, value: Vec<u8>) -> Result<Vec<u8>, AnalyticsError> {
    if value.len() == 32 {
        Ok(value)
    } else {
        Err(invalid(
            field,
            format!("a SHA-256 digest is 32 bytes, not {}", value.len()),
        ))
    }
}

/// An ISO 4217 currency code: three upper-case ASCII letters.
pub(crate) fn currency(field: &'static str, value: &str) -> Result<String, AnalyticsError> {
    if value.len() == 3 && value.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(value.to_owned())
    } else {
        Err(invalid(field, format!("{value:?} is not an ISO 4217 code")))
    }
}

/// An enum field: a known, non-zero value.
pub(crate) fn enum_value<E: TryFrom<i32>>(field: &'static str, value: i32) -> Result<E, AnalyticsError> {
    if value == 0 {
        return Err(invalid(field, "required"));
    }
    E::try_from(value).map_err(|_| invalid(field, format!("unknown value {value}")))
}

/// The tenant an ingested event belongs to: the verified claims' tenant
/// when the gateway forwarded a tenant request (a different tenant in the
/// body is refused), else the body's tenant (a service recording from
/// trusted metadata).
pub(crate) fn ingest_tenant(caller: &Caller, requested: &str) -> Result<String, AnalyticsError> {
    match &caller.claims {
        Some(claims) if requested.is_empty() || requested == claims.tenant => Ok(claims.tenant.clone()),
        Some(claims) => Err(AnalyticsError::PermissionDenied(format!(
            "the verified claims are for tenant {:?}, not {requested:?}",
            claims.tenant
        ))),
        None => identifier("tenant", requested),
    }
}

/// The tenant a read is scoped to: `Some(tenant)`, or `None` for every
/// tenant (an operator or service over mTLS without tenant claims, which
/// the method's policy already admitted).
///
/// Claims read their own tenant. Another tenant needs an operator's claims
/// (`operator`, which only an operator issuer's token sets) that also carry
/// [`CROSS_TENANT_CAPABILITY`]; tenant claims are refused with
/// `operator_required` whatever their scopes.
pub(crate) fn read_scope(caller: &Caller, requested: &str) -> Result<Option<String>, AnalyticsError> {
    match &caller.claims {
        Some(claims) if requested.is_empty() || requested == claims.tenant => Ok(Some(claims.tenant.clone())),
        Some(claims) if !claims.operator => Err(AnalyticsError::OperatorRequired(format!(
            "reading tenant {requested:?} needs an operator; tenant {:?} may read only its own data",
            claims.tenant
        ))),
        Some(claims) if claims.capabilities.iter().any(|c| c == CROSS_TENANT_CAPABILITY) => {
            Ok(Some(identifier("tenant", requested)?))
        }
        Some(_) => Err(AnalyticsError::PermissionDenied(format!(
            "reading tenant {requested:?} needs the capability {CROSS_TENANT_CAPABILITY:?}"
        ))),
        None if requested.is_empty() => Ok(None),
        None => Ok(Some(identifier("tenant", requested)?)),
    }
}

/// Who acts: the verified claims' subject, else the peer's SPIFFE ID
/// (never a field of the request).
pub(crate) fn actor(caller: &Caller) -> String {
    match &caller.claims {
        Some(claims) if !claims.subject.is_empty() => claims.subject.clone(),
        _ => caller.peer.spiffe_id.to_string(),
    }
}
