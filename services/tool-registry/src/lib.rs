//! ToolRegistry: signed tool releases, a WebAssembly sandbox that runs only
//! verified adapters, and billing from what the sandbox measured.
//!
//! A release is a manifest (RFC 8785 canonical JSON, signed by a registered
//! publisher's Ed25519 key as a DSSE envelope) and a WebAssembly module
//! (stored content-addressed by its SHA-256). The registry seals each
//! release (HMAC-SHA256 over the manifest digest, with a versioned key) and
//! MACs every row it keeps. `ExecuteTool` compiles and runs a release only
//! after its full verification, in the `soma-sandbox` (fuel, memory cap,
//! deadline, no imports), and bills every run through a durable outbox to
//! Analytics; publishing, revoking and publisher-key changes go the same
//! way as audit events.
//!
//! Modules: `releases` (publish, read, verify, revoke), `publishers`
//! (publisher keys), `execute` (verification cache, sandbox, billing),
//! `outbox` (delivery to Analytics), `store` (the tables, both engines),
//! `seal` (row MACs), `service` (the gRPC surface), `config`, `error`.
//!
//! Security-relevant defaults: the tenant of an execution comes only from
//! the gateway's verified claims; publisher keys are an operator's to add
//! and retire; a revoked release never runs again and revocation has no
//! undo; a row whose MAC fails is never trusted (`DATA_LOSS`).

pub mod config;
mod error;
mod execute;
mod json;
mod migrations;
mod outbox;
mod publishers;
mod releases;
mod seal;
mod service;
mod store;

use std::sync::Arc;

use soma_mesh::Caller;
use soma_proto::v1 as pb;
use soma_sandbox::{Sandbox, SandboxConfig};
use soma_sign::HmacKeyring;
use soma_store::Database;

pub use config::{Price, RegistryConfig};
pub use error::RegistryError;
pub use execute::REVALIDATE_AFTER;
pub use migrations::MIGRATIONS;
pub use service::{ToolRegistryService, spec};

/// The tool registry: its store, keys, sandbox and outbox.
#[derive(Clone, Debug)]
pub struct Registry {
    store: store::Store,
    keys: Arc<HmacKeyring>,
    sandbox: Sandbox,
    sandbox_config: Arc<SandboxConfig>,
    price: Price,
    max_module_bytes: u64,
    outbox: outbox::Outbox,
    verified: execute::VerifiedReleases,
    /// Serializes publishes in this process (PostgreSQL adds a lock per
    /// tool for replicas).
    publishing: Arc<tokio::sync::Mutex<()>>,
    /// Executions running at once, at most the sandbox's instances.
    running: Arc<tokio::sync::Semaphore>,
    running_limit: usize,
}

impl Registry {
    /// A registry over `db` (migrated) with `config`'s keys and prices and
    /// a sandbox built from `sandbox`.
    pub fn new(db: Database, config: RegistryConfig, sandbox: SandboxConfig) -> Result<Self, RegistryError> {
        let store = store::Store::new(db);
        let keys = Arc::new(config.keys);
        let running_limit = usize::try_from(sandbox.max_instances).unwrap_or(1).max(1);
        let engine = Sandbox::new(sandbox.clone()).map_err(|e| RegistryError::Sandbox(e.to_string()))?;
        Ok(Self {
            outbox: outbox::Outbox::new(store.clone(), Arc::clone(&keys)),
            store,
            keys,
            sandbox: engine,
            sandbox_config: Arc::new(sandbox),
            price: config.price,
            max_module_bytes: config.max_module_bytes,
            verified: execute::VerifiedReleases::default(),
            publishing: Arc::new(tokio::sync::Mutex::new(())),
            running: Arc::new(tokio::sync::Semaphore::new(running_limit)),
            running_limit,
        })
    }

    /// Re-MACs, under the keyring's primary, every row MACed with another
    /// key, once it verifies under that key: after `soma release key
    /// promote` and a restart, the old key can be retired without making a
    /// row unverifiable. A row that does not verify is reported and left as
    /// it is (never re-MACed over a tampering). The release seals
    /// (`hmac_key_id`) stay what they are: a release keeps the seal it was
    /// published with, and retiring its key retires it.
    pub async fn reseal(&self) -> Result<Resealed, RegistryError> {
        use store::{OutboxRow, PublisherKeyRow, ReleaseRow, Remac};
        let primary = self.keys.primary().to_string();
        let mut done = Resealed::default();
        for row in self.store.publisher_keys().await? {
            if row.mac_key_id == primary {
                continue;
            }
            let columns = row.columns();
            self.remac_one(
                &mut done,
                PublisherKeyRow::TABLE,
                &row.key_id,
                &columns,
                &row.mac_key_id,
                &row.mac,
                Remac::PublisherKey(&row.key_id),
            )
            .await?;
        }
        for row in self.store.releases(None).await? {
            if row.mac_key_id == primary {
                continue;
            }
            let columns = row.columns();
            let name = row.name();
            self.remac_one(
                &mut done,
                ReleaseRow::TABLE,
                &name,
                &columns,
                &row.mac_key_id,
                &row.mac,
                Remac::Release(&row.tool, &row.version),
            )
            .await?;
        }
        for row in self.store.outbox().await? {
            if row.mac_key_id == primary {
                continue;
            }
            let columns = row.columns();
            self.remac_one(
                &mut done,
                OutboxRow::TABLE,
                &row.event_id,
                &columns,
                &row.mac_key_id,
                &row.mac,
                Remac::Outbox(row.seq),
            )
            .await?;
        }
        if done.resealed > 0 || !done.failed.is_empty() {
            tracing::info!(
                resealed = done.resealed,
                failed = done.failed.len(),
                primary,
                "rows re-MACed under the primary key"
            );
        }
        Ok(done)
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one row's identity, content and old MAC"
    )]
    async fn remac_one(
        &self,
        done: &mut Resealed,
        table: &'static str,
        key: &str,
        columns: &serde_json::Value,
        mac_key_id: &str,
        mac: &[u8],
        which: store::Remac<'_>,
    ) -> Result<(), RegistryError> {
        if seal::check(&self.keys, table, key, columns, mac_key_id, mac).is_err() {
            tracing::error!(table, key, mac_key_id, "row fails its MAC: not re-MACed");
            done.failed.push(format!("{table}/{key}"));
            return Ok(());
        }
        let (new_key, new_mac) = seal::mac(&self.keys, table, columns)?;
        if self.store.remac(which, mac, new_key.as_str(), &new_mac).await? {
            done.resealed += 1;
        }
        Ok(())
    }

    /// The sandbox (its counters prove what was compiled and run).
    pub fn sandbox(&self) -> &Sandbox {
        &self.sandbox
    }

    /// Starts delivering the outbox to Analytics over `analytics`.
    pub fn spawn_outbox(&self, analytics: soma_mesh::MeshChannel) -> tokio::task::JoinHandle<()> {
        self.outbox.spawn_deliverer(analytics)
    }

    /// Events waiting for Analytics, and the oldest one's age in
    /// nanoseconds.
    pub async fn outbox_backlog(&self) -> Result<(u64, Option<i64>), RegistryError> {
        let (count, oldest) = self.store.backlog().await?;
        Ok((
            u64::try_from(count).unwrap_or(0),
            oldest.map(|t| now_nanos().saturating_sub(t)),
        ))
    }
}

/// What [`Registry::reseal`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resealed {
    /// Rows re-MACed under the primary key.
    pub resealed: u64,
    /// `table/key` of rows that failed their MAC and were left alone.
    pub failed: Vec<String>,
}

/// Who acts, as the registry records it.
#[derive(Clone, Debug)]
pub struct Actor {
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
    pub fn of(caller: &Caller) -> Self {
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
                operator: caller.is_operator(),
                ..Self::service(caller.peer.spiffe_id.to_string())
            },
        }
    }

    /// An actor with no tenant claims (an operator's SVID, the CLI).
    pub fn service(id: String) -> Self {
        Self {
            id,
            tenant: String::new(),
            tenant_claims: false,
            operator: false,
            request_id: String::new(),
        }
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
