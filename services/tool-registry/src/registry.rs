//! The registry itself: its store, keys, sandbox and outbox, and the
//! start-up re-MAC of rows sealed under a key that is no longer primary.

use std::sync::Arc;

use soma_sandbox::{Sandbox, SandboxConfig};
use soma_sign::HmacKeyring;
use soma_store::Database;

use crate::config::{Price, RegistryConfig};
use crate::error::RegistryError;
use crate::{execute, now_nanos, outbox, seal, store};

/// The tool registry: its store, keys, sandbox and outbox.
#[derive(Clone, Debug)]
pub struct Registry {
    pub(crate) store: store::Store,
    pub(crate) keys: Arc<HmacKeyring>,
    pub(crate) sandbox: Sandbox,
    pub(crate) sandbox_config: Arc<SandboxConfig>,
    pub(crate) price: Price,
    pub(crate) max_module_bytes: u64,
    pub(crate) outbox: outbox::Outbox,
    pub(crate) verified: execute::VerifiedReleases,
    /// Serializes publishes in this process (PostgreSQL adds a lock per
    /// tool for replicas).
    pub(crate) publishing: Arc<tokio::sync::Mutex<()>>,
    /// Executions running at once, at most the sandbox's instances.
    pub(crate) running: Arc<tokio::sync::Semaphore>,
    pub(crate) running_limit: usize,
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
    pub fn spawn_outbox(&self, analytics: impl Into<soma_mesh::MeshChannel>) -> tokio::task::JoinHandle<()> {
        self.outbox.spawn_deliverer(analytics.into())
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
