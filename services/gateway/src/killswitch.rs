//! Kill switches: global, per tenant, per method.
//!
//! The database is the source of truth, so every gateway replica sharing it
//! agrees: each replica re-reads the engaged switches every poll interval
//! (at most 2 s, the promise to operators) into an in-memory snapshot that
//! the admission pipeline consults without touching the database. A switch
//! is set or cleared only through `SetKillSwitch`; each change is written
//! together with its audit row (who, when, why, request id) in one
//! transaction.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use soma_proto::v1::{KillSwitch, KillSwitchScope};
use soma_store::{Database, retry_on_pool};
use sqlx::Row as _;

use crate::error::GatewayError;

/// Retry-After of a switch set without one.
pub const DEFAULT_RETRY_AFTER_SECONDS: u32 = 60;

/// The switch that stops a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tripped {
    /// Its scope.
    pub scope: KillSwitchScope,
    /// Its target.
    pub target: String,
    /// Seconds the client should wait.
    pub retry_after_seconds: u32,
}

/// A change requested through `SetKillSwitch`, validated.
#[derive(Clone, Debug)]
pub struct Change {
    /// Scope (never UNSPECIFIED).
    pub scope: KillSwitchScope,
    /// Target: empty for GLOBAL, a tenant, or a full method path.
    pub target: String,
    /// Trip or clear.
    pub engaged: bool,
    /// Why.
    pub reason: String,
    /// Retry-After seconds.
    pub retry_after_seconds: u32,
    /// Subject who set it.
    pub set_by: String,
    /// Tenant of the setter.
    pub tenant: String,
    /// Request id of the change.
    pub request_id: String,
}

/// The kill switches of this gateway: the shared database and the local
/// snapshot.
#[derive(Clone, Debug)]
pub struct KillSwitches {
    db: Database,
    snapshot: Arc<RwLock<Arc<Vec<KillSwitch>>>>,
}

impl KillSwitches {
    /// Loads the current switches.
    pub async fn load(db: Database) -> Result<Self, GatewayError> {
        let this = Self {
            db,
            snapshot: Arc::new(RwLock::new(Arc::new(Vec::new()))),
        };
        this.refresh().await?;
        Ok(this)
    }

    /// Re-reads the switches every `interval` until the returned task is
    /// aborted. A failed read keeps the previous snapshot and is logged.
    pub fn spawn_poller(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                if let Err(e) = this.refresh().await {
                    tracing::warn!(error = %e, "kill switches not refreshed; keeping the last snapshot");
                }
            }
        })
    }

    /// Reads every switch from the database into the snapshot; retried on
    /// a new connection when the connection is lost.
    pub async fn refresh(&self) -> Result<(), GatewayError> {
        let rows = retry_on_pool!(self.db, "kill_switches", GatewayError, pool => {
            sqlx::query(
                "SELECT scope, target, engaged, reason, set_by, set_at_ms, retry_after_seconds \
                 FROM kill_switches ORDER BY scope, target",
            )
            .fetch_all(pool)
            .await?
            .into_iter()
            .map(|row| -> Result<KillSwitch, GatewayError> {
                let scope: String = row.try_get(0)?;
                let scope = KillSwitchScope::from_str_name(&scope)
                    .filter(|s| *s != KillSwitchScope::Unspecified)
                    .ok_or_else(|| GatewayError::CorruptRow(format!("scope {scope:?}")))?;
                let engaged: i32 = row.try_get(2)?;
                let set_at_ms: i64 = row.try_get(5)?;
                let retry: i32 = row.try_get(6)?;
                Ok(KillSwitch {
                    scope: scope as i32,
                    target: row.try_get(1)?,
                    engaged: engaged == 1,
                    reason: row.try_get(3)?,
                    set_by: row.try_get(4)?,
                    set_at: Some(prost_types::Timestamp {
                        seconds: set_at_ms.div_euclid(1000),
                        nanos: i32::try_from(set_at_ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
                    }),
                    retry_after_seconds: u32::try_from(retry)
                        .map_err(|_| GatewayError::CorruptRow(format!("retry_after_seconds {retry}")))?,
                })
            })
            .collect::<Result<Vec<_>, _>>()?
        })?;
        let fresh = Arc::new(rows);
        match self.snapshot.write() {
            Ok(mut guard) => *guard = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        Ok(())
    }

    /// Every known switch (engaged or cleared), from the snapshot.
    pub fn list(&self) -> Arc<Vec<KillSwitch>> {
        match self.snapshot.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// The engaged switch that stops a request of `tenant` to `method`
    /// (`/pkg.Service/Method`), if any: global first, then tenant, then method.
    pub fn check(&self, tenant: &str, method: &str) -> Option<Tripped> {
        let all = self.list();
        let hit = |scope: KillSwitchScope, target: &str| {
            all.iter()
                .find(|s| s.engaged && s.scope == scope as i32 && s.target == target)
                .map(|s| Tripped {
                    scope,
                    target: s.target.clone(),
                    retry_after_seconds: s.retry_after_seconds,
                })
        };
        hit(KillSwitchScope::Global, "")
            .or_else(|| hit(KillSwitchScope::Tenant, tenant))
            .or_else(|| hit(KillSwitchScope::Method, method))
    }

    /// Writes a change and its audit row in one transaction, then refreshes
    /// this replica's snapshot at once. Returns the switch as stored.
    ///
    /// A lost connection before `COMMIT` is retried on a new connection
    /// (the server rolled the transaction back). One lost *during* `COMMIT`
    /// is not: the audit row has no unique key to look it up by (a request
    /// id is not enforced unique), so a rerun could write the change's
    /// audit row twice; the caller is told the database is unavailable
    /// ([`soma_store::StoreError::CommitOutcomeUnknown`]), never that the
    /// change was stored.
    pub async fn set(&self, change: Change) -> Result<KillSwitch, GatewayError> {
        let now_ms = crate::context::unix_millis();
        let scope_name = change.scope.as_str_name();
        let engaged = i32::from(change.engaged);
        let retry = i32::try_from(change.retry_after_seconds).unwrap_or(i32::MAX);
        retry_on_pool!(self.db, "set_kill_switch", GatewayError, pool => {
            let mut tx = pool.begin().await?;
            sqlx::query(
                "INSERT INTO kill_switches \
                 (scope, target, engaged, reason, set_by, set_at_ms, retry_after_seconds) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (scope, target) DO UPDATE SET engaged = excluded.engaged, \
                 reason = excluded.reason, set_by = excluded.set_by, set_at_ms = excluded.set_at_ms, \
                 retry_after_seconds = excluded.retry_after_seconds",
            )
            .bind(scope_name)
            .bind(&change.target)
            .bind(engaged)
            .bind(&change.reason)
            .bind(&change.set_by)
            .bind(now_ms)
            .bind(retry)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "INSERT INTO kill_switch_audit \
                 (scope, target, engaged, reason, set_by, tenant, request_id, set_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(scope_name)
            .bind(&change.target)
            .bind(engaged)
            .bind(&change.reason)
            .bind(&change.set_by)
            .bind(&change.tenant)
            .bind(&change.request_id)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?;
            soma_store::commit(tx).await?;
        })?;
        tracing::info!(
            scope = scope_name,
            target = %change.target,
            engaged = change.engaged,
            set_by = %change.set_by,
            reason = %change.reason,
            request_id = %change.request_id,
            "kill switch changed"
        );
        self.refresh().await?;
        Ok(KillSwitch {
            scope: change.scope as i32,
            target: change.target,
            engaged: change.engaged,
            reason: change.reason,
            set_by: change.set_by,
            set_at: Some(prost_types::Timestamp {
                seconds: now_ms.div_euclid(1000),
                nanos: i32::try_from(now_ms.rem_euclid(1000) * 1_000_000).unwrap_or(0),
            }),
            retry_after_seconds: change.retry_after_seconds,
        })
    }
}

/// `/metrics`: how many switches of each scope are engaged, and since when
/// the oldest of them (its `set_at`), read from the snapshot.
impl soma_mesh::MetricsSource for KillSwitches {
    fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        let switches = self.list();
        let scopes = [
            KillSwitchScope::Global,
            KillSwitchScope::Tenant,
            KillSwitchScope::Method,
        ];
        out.push_str("# HELP soma_kill_switches_engaged Kill switches engaged, by scope.\n");
        out.push_str("# TYPE soma_kill_switches_engaged gauge\n");
        let mut oldest = Vec::new();
        for scope in scopes {
            let engaged: Vec<&KillSwitch> = switches
                .iter()
                .filter(|s| s.engaged && s.scope == scope as i32)
                .collect();
            // `GLOBAL`, `TENANT`, `METHOD`: the enum's names without their prefix.
            let name = scope
                .as_str_name()
                .strip_prefix("KILL_SWITCH_SCOPE_")
                .unwrap_or(scope.as_str_name());
            let _ = writeln!(
                out,
                "soma_kill_switches_engaged{{scope=\"{name}\"}} {}",
                engaged.len()
            );
            if let Some(since) = engaged
                .iter()
                .filter_map(|s| s.set_at.as_ref())
                .map(|t| t.seconds)
                .min()
            {
                oldest.push((name, since));
            }
        }
        out.push_str(
            "# HELP soma_kill_switch_engaged_since_timestamp_seconds When the longest-engaged switch of a scope was set (Unix time).\n",
        );
        out.push_str("# TYPE soma_kill_switch_engaged_since_timestamp_seconds gauge\n");
        for (name, since) in oldest {
            let _ = writeln!(
                out,
                "soma_kill_switch_engaged_since_timestamp_seconds{{scope=\"{name}\"}} {since}"
            );
        }
    }
}
