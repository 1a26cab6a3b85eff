//! CapsuleRepo: attested capsule submissions, reviews with an append-only
//! history, per-tenant installations with rollback, verified template
//! import, and the resolution of an installed capsule for a run.
//!
//! A submission is a canonical capsule bundle (`soma-capsule`) with a DSSE
//! / in-toto attestation over its digest, verified t-of-n against the
//! publisher keys the ToolRegistry holds (fetched over mTLS) and the
//! publisher's threshold kept here; every tool release the bundle pins is
//! checked with the ToolRegistry (present, not revoked, the same module
//! digest) before a byte is written. Reviews move a submission through
//! `pending → in_review → approved | rejected | changes_requested`, each
//! transition one append-only history row whose MAC chains the row before
//! it. Installations keep one row per tenant, environment and capsule and
//! one revision row per create, update and rollback; a revision becomes
//! active only once the ToolRegistry verified every release of its bundle.
//! Every change is an audit event delivered to Analytics through a durable
//! outbox.
//!
//! Modules: `submissions` (submit, import, read), `reviews` (transitions
//! and the chained history), `installations` (create, update, rollback,
//! list), `resolve` (what the gateway runs), `thresholds` (publisher
//! thresholds), `registry` (the ToolRegistry client), `integrity` (the
//! store sweep), `outbox` (delivery to Analytics), `store` (the tables,
//! both engines), `seal` (row MACs), `service` (the gRPC surface),
//! `config`, `error`.
//!
//! Security-relevant defaults: the tenant, the submitter and the reviewer
//! come only from the gateway's verified claims, never from a request
//! field; another tenant's submission or installation is `NOT_FOUND`, the
//! same answer as one that does not exist; a submitter never reviews their
//! own submission; template import trusts only the operator-pinned
//! catalogue keys (none configured: every import refused); a row whose MAC
//! fails, or a history whose chain is broken, is never trusted
//! (`DATA_LOSS`).

mod bundles;
pub mod config;
mod error;
mod installations;
mod integrity;
mod migrations;
mod outbox;
mod registry;
mod resolve;
mod reviews;
mod seal;
mod service;
mod store;
mod submissions;
mod thresholds;

use std::sync::Arc;

use soma_mesh::{Caller, MeshChannel};
use soma_proto::json;
use soma_proto::v1 as pb;
use soma_sign::HmacKeyring;
use soma_store::Database;

pub use config::{CapsuleRepoConfig, Catalogue};
pub use error::RepoError;
pub use integrity::{StoreFailure, StoreReport, verify_store};
pub use migrations::MIGRATIONS;
pub use service::{CapsuleRepoService, spec};

/// The capsule repository: its store, keys, catalogues, outbox and the
/// ToolRegistry it asks about releases and publisher keys.
#[derive(Clone, Debug)]
pub struct Repo {
    store: store::Store,
    keys: Arc<HmacKeyring>,
    catalogues: Arc<Vec<Catalogue>>,
    outbox: outbox::Outbox,
    registry: registry::Registry,
    /// The parses of installed bundles, by their bytes' digest.
    bundles: bundles::ParsedBundles,
}

impl Repo {
    /// A repository over `db` (migrated) with `config`'s keys and
    /// catalogues, asking the ToolRegistry over `tool_registry` (without
    /// one, every call that needs the registry is refused `UNAVAILABLE`).
    pub fn new(db: Database, config: CapsuleRepoConfig, tool_registry: Option<MeshChannel>) -> Self {
        let store = store::Store::new(db);
        let keys = Arc::new(config.keys);
        Self {
            outbox: outbox::Outbox::new(store.clone(), Arc::clone(&keys)),
            store,
            keys,
            catalogues: Arc::new(config.catalogues),
            registry: registry::Registry::new(tool_registry),
            bundles: bundles::ParsedBundles::default(),
        }
    }

    /// Starts delivering the outbox to Analytics over `analytics`.
    pub fn spawn_outbox(&self, analytics: impl Into<MeshChannel>) -> tokio::task::JoinHandle<()> {
        self.outbox.spawn_deliverer(analytics.into())
    }

    /// The outbox's backlog and delivery counts, for `/metrics`.
    pub(crate) fn outbox_metrics(&self) -> Arc<soma_mesh::OutboxMetrics> {
        self.outbox.metrics()
    }

    /// Audit events waiting for Analytics.
    pub async fn outbox_backlog(&self) -> Result<u64, RepoError> {
        let (count, _) = self.store.backlog().await?;
        Ok(u64::try_from(count).unwrap_or(0))
    }
}

/// Who acts, as the repository records it.
#[derive(Clone, Debug)]
pub(crate) struct Actor {
    /// The verified claims' subject, else the caller's SPIFFE ID.
    pub id: String,
    /// The verified claims' tenant; empty without claims.
    pub tenant: String,
    /// Whether the call carries the gateway's verified tenant claims.
    pub tenant_claims: bool,
    /// Whether the caller is an operator (an operator SVID, or claims
    /// sealed as an operator's).
    pub operator: bool,
    /// Request id, for correlation.
    pub request_id: String,
}

impl Actor {
    /// The actor of a verified caller.
    pub(crate) fn of(caller: &Caller) -> Self {
        match &caller.claims {
            Some(claims) => Self {
                id: if claims.subject.is_empty() {
                    caller.peer.spiffe_id.to_string()
                } else {
                    claims.subject.clone()
                },
                tenant: claims.tenant.clone(),
                tenant_claims: true,
                operator: caller.is_operator(),
                request_id: claims.request_id.clone(),
            },
            None => Self {
                id: caller.peer.spiffe_id.to_string(),
                tenant: String::new(),
                tenant_claims: false,
                operator: caller.is_operator(),
                request_id: String::new(),
            },
        }
    }

    /// The tenant of a call that acts for one: the verified claims' tenant.
    pub(crate) fn require_tenant(&self, what: &str) -> Result<&str, RepoError> {
        if !self.tenant_claims || self.tenant.is_empty() {
            return Err(RepoError::ClaimsRequired(format!(
                "{what} acts for a tenant: the call needs the gateway's verified claims"
            )));
        }
        Ok(&self.tenant)
    }

    /// The tenant whose rows this caller may read: its own, or any
    /// (`None`) for an operator.
    pub(crate) fn read_scope(&self) -> Result<Option<&str>, RepoError> {
        if self.operator {
            return Ok(None);
        }
        self.require_tenant("this call").map(Some)
    }
}

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

/// 128 random bits in lowercase hex: an id no one can guess or collide
/// with.
pub(crate) fn random_id() -> String {
    let bits: u128 = rand::random();
    format!("{bits:032x}")
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
        event_id: format!("audit-{}", random_id()),
        tenant: tenant.to_owned(),
        action: action.to_owned(),
        subject: subject.to_owned(),
        details: json::to_struct(&details).ok().flatten(),
        occurred_at: Some(timestamp(now)),
    }
}
