//! The per-request context: who the verified caller is, for which tenant
//! and region, and the request id. It lives in a tokio task-local for the
//! duration of one request (never in a global), so concurrent requests of
//! different tenants cannot see each other's context.

use std::fmt::Write as _;
use std::sync::Arc;

use rand::RngCore as _;

tokio::task_local! {
    static CONTEXT: Arc<RequestContext>;
}

/// The header carrying the request id, in and out.
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Metadata carrying the moderation decision id to the backend.
pub const MODERATION_DECISION_METADATA: &str = "soma-moderation-decision";

/// A request id: a client-supplied `x-request-id` when well formed (1 to 128
/// bytes of `[A-Za-z0-9._:-]`), else a fresh random one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestId(String);

impl RequestId {
    /// Accepts a client-supplied id, or `None` when it is malformed.
    pub fn parse(value: &str) -> Option<Self> {
        let ok = !value.is_empty()
            && value.len() <= 128
            && value
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b':' | b'-'));
        ok.then(|| Self(value.to_owned()))
    }

    /// A fresh id: `req_` and 128 random bits in hex.
    pub fn mint() -> Self {
        let mut bytes = [0u8; 16];
        rand::rng().fill_bytes(&mut bytes);
        let mut s = String::with_capacity(36);
        s.push_str("req_");
        for b in bytes {
            // Writing to a String cannot fail.
            let _ = write!(s, "{b:02x}");
        }
        Self(s)
    }

    /// The id.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether `tenant` is a valid tenant name: 1 to 128 bytes of
/// `[A-Za-z0-9._-]`.
pub fn is_valid_tenant(tenant: &str) -> bool {
    !tenant.is_empty()
        && tenant.len() <= 128
        && tenant
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
}

/// The verified context of one admitted request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestContext {
    /// Request id.
    pub request_id: RequestId,
    /// Tenant (verified `tenant` claim).
    pub tenant: String,
    /// Subject (verified `sub` claim).
    pub subject: String,
    /// Region (verified `region` claim, allowed by residency).
    pub region: String,
    /// Capabilities (verified `scope` claim).
    pub capabilities: Vec<String>,
    /// Whether a second factor within the MFA window was verified.
    pub mfa: bool,
    /// Whether the caller is an operator: a token of an issuer configured
    /// as an operator issuer, carrying `"operator": true`. A tenant scope
    /// never sets it; only an operator acts beyond its own tenant.
    pub operator: bool,
    /// The moderation decision that admitted the request, if it was moderated.
    pub moderation: Option<Moderated>,
}

/// A moderation decision that admitted a request, bound to the exact
/// message it was made on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Moderated {
    /// The decision's id (`mod_…`), audited and forwarded.
    pub decision_id: String,
    /// SHA-256 of the RFC 8785 canonical form of the message's proto3 JSON
    /// (see [`crate::moderation::input_digest`]): a backend trusts the
    /// decision only for a message with this digest.
    pub input_sha256: [u8; 32],
}

impl RequestContext {
    /// The context of the request being served on this task, if any.
    pub fn current() -> Option<Arc<Self>> {
        CONTEXT.try_with(Arc::clone).ok()
    }

    /// Runs `f` with `context` as the current context.
    pub async fn scope<F: Future>(context: Arc<Self>, f: F) -> F::Output {
        CONTEXT.scope(context, f).await
    }
}

/// Milliseconds since the Unix epoch, for audit rows (0 before 1970,
/// saturating far in the future).
pub fn unix_millis() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}
