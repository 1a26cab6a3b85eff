//! The registry's tables: publisher keys, releases, content-addressed
//! modules and the outbox, for SQLite and PostgreSQL (each query written
//! once, see [`soma_store::on_pool`]).
//!
//! Rows are returned as they are stored; their MACs are checked by the
//! callers ([`crate::seal`]) before anything is trusted.

use serde_json::{Value, json};
use soma_store::{Database, Engine, Inline, on_pool, retry, retry_on_pool};
use sqlx::Row as _;

use crate::error::RegistryError;
use soma_sign::hex::encode as hex;

/// Release states as stored.
pub(crate) const ACTIVE: &str = "active";
/// See [`ACTIVE`].
pub(crate) const REVOKED: &str = "revoked";

/// A row of `publisher_keys`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PublisherKeyRow {
    pub key_id: String,
    pub name: String,
    pub public_key: Vec<u8>,
    pub added_at: i64,
    pub added_by: String,
    pub retired_at: Option<i64>,
    pub retired_by: String,
    pub retire_reason: String,
    pub mac_key_id: String,
    pub mac: Vec<u8>,
}

impl PublisherKeyRow {
    pub(crate) const TABLE: &'static str = "publisher_keys";

    /// The columns the row MAC covers.
    pub(crate) fn columns(&self) -> Value {
        json!({
            "key_id": self.key_id,
            "name": self.name,
            "public_key": hex(&self.public_key),
            "added_at": self.added_at.to_string(),
            "added_by": self.added_by,
            "retired_at": self.retired_at.map(|t| t.to_string()),
            "retired_by": self.retired_by,
            "retire_reason": self.retire_reason,
        })
    }
}

/// A row of `releases`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ReleaseRow {
    pub tool: String,
    pub version: String,
    /// The canonical manifest (the envelope's payload).
    pub manifest: Vec<u8>,
    pub manifest_sha256: Vec<u8>,
    pub module_sha256: Vec<u8>,
    pub module_size: i64,
    pub hmac_key_id: String,
    pub hmac: Vec<u8>,
    /// The DSSE envelope, JSON.
    pub envelope: Vec<u8>,
    pub publisher_key_id: String,
    pub state: String,
    pub published_at: i64,
    pub published_by: String,
    /// The tenant that owns the tool: the one that published its first
    /// release; only it publishes further versions and revokes.
    pub tenant: String,
    pub revoked_at: Option<i64>,
    pub revoked_by: String,
    pub revocation_reason: String,
    pub mac_key_id: String,
    pub mac: Vec<u8>,
}

impl ReleaseRow {
    pub(crate) const TABLE: &'static str = "releases";

    /// `tool@version`.
    pub(crate) fn name(&self) -> String {
        format!("{}@{}", self.tool, self.version)
    }

    /// The columns the row MAC covers: every column but the MAC itself.
    pub(crate) fn columns(&self) -> Value {
        json!({
            "tool": self.tool,
            "version": self.version,
            "manifest": hex(&self.manifest),
            "manifest_sha256": hex(&self.manifest_sha256),
            "module_sha256": hex(&self.module_sha256),
            "module_size": self.module_size.to_string(),
            "hmac_key_id": self.hmac_key_id,
            "hmac": hex(&self.hmac),
            "envelope": hex(&self.envelope),
            "publisher_key_id": self.publisher_key_id,
            "state": self.state,
            "published_at": self.published_at.to_string(),
            "published_by": self.published_by,
            "tenant": self.tenant,
            "revoked_at": self.revoked_at.map(|t| t.to_string()),
            "revoked_by": self.revoked_by,
            "revocation_reason": self.revocation_reason,
        })
    }
}

/// An event waiting in the outbox for Analytics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OutboxRow {
    pub seq: i64,
    pub kind: String,
    pub event_id: String,
    /// The encoded `RecordBillingEventRequest` or `RecordAuditEventRequest`.
    pub payload: Vec<u8>,
    pub created_at: i64,
    pub attempts: i64,
    pub mac_key_id: String,
    pub mac: Vec<u8>,
}

impl OutboxRow {
    pub(crate) const TABLE: &'static str = "outbox";

    /// The columns the row MAC covers (delivery bookkeeping is not: it
    /// changes what is sent never).
    pub(crate) fn columns(&self) -> Value {
        outbox_columns(&self.kind, &self.event_id, &self.payload, self.created_at)
    }
}

/// The MACed columns of an outbox row.
pub(crate) fn outbox_columns(kind: &str, event_id: &str, payload: &[u8], created_at: i64) -> Value {
    json!({
        "kind": kind,
        "event_id": event_id,
        "payload": hex(payload),
        "created_at": created_at.to_string(),
    })
}

const PUBLISHER_COLUMNS: &str = "key_id, name, public_key, added_at, added_by, retired_at, retired_by, \
                                 retire_reason, mac_key_id, mac";
const RELEASE_COLUMNS: &str = "tool, version, manifest, manifest_sha256, module_sha256, module_size, \
                               hmac_key_id, hmac, envelope, publisher_key_id, state, published_at, \
                               published_by, tenant, revoked_at, revoked_by, revocation_reason, mac_key_id, mac";

/// Reads a `publisher_keys` row selected with [`PUBLISHER_COLUMNS`]
/// (a macro, so it expands once per engine's row type).
macro_rules! publisher_of {
    () => {
        |row| -> Result<PublisherKeyRow, sqlx::Error> {
            Ok(PublisherKeyRow {
                key_id: row.try_get(0)?,
                name: row.try_get(1)?,
                public_key: row.try_get(2)?,
                added_at: row.try_get(3)?,
                added_by: row.try_get(4)?,
                retired_at: row.try_get(5)?,
                retired_by: row.try_get(6)?,
                retire_reason: row.try_get(7)?,
                mac_key_id: row.try_get(8)?,
                mac: row.try_get(9)?,
            })
        }
    };
}

/// Reads a `releases` row selected with [`RELEASE_COLUMNS`].
macro_rules! release_of {
    () => {
        |row| -> Result<ReleaseRow, sqlx::Error> {
            Ok(ReleaseRow {
                tool: row.try_get(0)?,
                version: row.try_get(1)?,
                manifest: row.try_get(2)?,
                manifest_sha256: row.try_get(3)?,
                module_sha256: row.try_get(4)?,
                module_size: row.try_get(5)?,
                hmac_key_id: row.try_get(6)?,
                hmac: row.try_get(7)?,
                envelope: row.try_get(8)?,
                publisher_key_id: row.try_get(9)?,
                state: row.try_get(10)?,
                published_at: row.try_get(11)?,
                published_by: row.try_get(12)?,
                tenant: row.try_get(13)?,
                revoked_at: row.try_get(14)?,
                revoked_by: row.try_get(15)?,
                revocation_reason: row.try_get(16)?,
                mac_key_id: row.try_get(17)?,
                mac: row.try_get(18)?,
            })
        }
    };
}

/// An outbox event to insert, MAC made.
#[derive(Clone, Debug)]
pub(crate) struct NewOutbox {
    pub kind: &'static str,
    pub event_id: String,
    pub payload: Vec<u8>,
    pub created_at: i64,
    pub mac_key_id: String,
    pub mac: Vec<u8>,
}

const INSERT_OUTBOX: &str = "INSERT INTO outbox (kind, event_id, payload, created_at, next_attempt_at, \
                             mac_key_id, mac) VALUES ($1, $2, $3, $4, $4, $5, $6)";

/// `INSERT_OUTBOX` for `rows` rows in one statement (six parameters a row).
fn insert_outbox_rows(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO outbox (kind, event_id, payload, created_at, next_attempt_at, mac_key_id, mac) VALUES ",
    );
    for row in 0..rows {
        let p = row * 6;
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&format!(
            "(${}, ${}, ${}, ${}, ${}, ${}, ${})",
            p + 1,
            p + 2,
            p + 3,
            p + 4,
            p + 4,
            p + 5,
            p + 6
        ));
    }
    sql
}

macro_rules! insert_outbox {
    ($tx:expr, $event:expr) => {
        sqlx::query(INSERT_OUTBOX)
            .bind($event.kind)
            .bind(&$event.event_id)
            .bind(&$event.payload)
            .bind($event.created_at)
            .bind(&$event.mac_key_id)
            .bind(&$event.mac)
            .execute(&mut *$tx)
            .await?
    };
}

/// Runs one write (`$write`, a query not yet executed) and, if it changed
/// exactly one row, inserts `$audit` into the outbox in the same
/// transaction and commits; evaluates to whether the row was written.
/// Nothing is committed when the write changed no row.
///
/// Retried on a new connection when the connection is lost: a loss before
/// `COMMIT` rolled the transaction back on the server, and every `$write`
/// is conditional (`ON CONFLICT DO NOTHING`, `WHERE ... IS NULL`, `WHERE
/// state = 'active'`), so a rerun after a `COMMIT` that did happen changes
/// no row and writes no second audit event. It then evaluates to `false`:
/// the caller looks its row up ([`Store::is_stored`]) before answering.
macro_rules! write_with_audit {
    ($db:expr, $operation:expr, $audit:expr, $write:expr) => {
        retry_on_pool!($db, $operation, RegistryError, pool => {
            let mut tx = pool.begin().await?;
            let written = $write.execute(&mut *tx).await?.rows_affected() == 1;
            if written {
                insert_outbox!(tx, $audit);
                tx.commit().await?;
            }
            written
        })?
    };
}

/// The tables, through one database handle.
#[derive(Clone, Debug)]
pub(crate) struct Store {
    db: Database,
}

impl Store {
    pub(crate) fn new(db: Database) -> Self {
        Self { db }
    }

    // ---- publisher keys ----

    #[tracing::instrument(skip_all)]
    pub(crate) async fn publisher_key(&self, key_id: &str) -> Result<Option<PublisherKeyRow>, RegistryError> {
        let sql = format!("SELECT {PUBLISHER_COLUMNS} FROM publisher_keys WHERE key_id = $1");
        retry_on_pool!(self.db, "publisher_key", RegistryError, pool => {
            sqlx::query(&sql)
                .bind(key_id)
                // All rows (at most one), so that the statement ends
                // before the connection goes back to the pool (see the
                // backlog query below).
                .fetch_all(pool)
                .await?
                .first()
                .map(publisher_of!())
                .transpose()?
        })
    }

    #[tracing::instrument(skip_all)]
    pub(crate) async fn publisher_keys(&self) -> Result<Vec<PublisherKeyRow>, RegistryError> {
        let sql = format!("SELECT {PUBLISHER_COLUMNS} FROM publisher_keys ORDER BY added_at, key_id");
        retry_on_pool!(self.db, "publisher_keys", RegistryError, pool => {
            sqlx::query(&sql)
                .fetch_all(pool)
                .await?
                .iter()
                .map(publisher_of!())
                .collect::<Result<Vec<_>, _>>()?
        })
    }

    /// Inserts a key and its audit event; `false` if the key id exists.
    #[tracing::instrument(skip_all)]
    pub(crate) async fn add_publisher_key(
        &self,
        key: &PublisherKeyRow,
        audit: &NewOutbox,
    ) -> Result<bool, RegistryError> {
        let sql = format!(
            "INSERT INTO publisher_keys ({PUBLISHER_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (key_id) DO NOTHING"
        );
        let written = write_with_audit!(
            self.db,
            "add_publisher_key",
            audit,
            sqlx::query(&sql)
                .bind(&key.key_id)
                .bind(&key.name)
                .bind(&key.public_key)
                .bind(key.added_at)
                .bind(&key.added_by)
                .bind(key.retired_at)
                .bind(&key.retired_by)
                .bind(&key.retire_reason)
                .bind(&key.mac_key_id)
                .bind(&key.mac)
        );
        Ok(written || self.is_stored(key).await?)
    }

    /// Whether `key` is stored exactly as given (every column and the MAC,
    /// which covers its timestamps and actor): then it was this request's
    /// write, committed before its connection was lost and found by the
    /// rerun. Another request's row differs.
    async fn is_stored(&self, key: &PublisherKeyRow) -> Result<bool, RegistryError> {
        Ok(self.publisher_key(&key.key_id).await?.as_ref() == Some(key))
    }

    /// Retires a key still in service, with its audit event; `false` if it
    /// was retired meanwhile.
    #[tracing::instrument(skip_all)]
    pub(crate) async fn retire_publisher_key(
        &self,
        key: &PublisherKeyRow,
        audit: &NewOutbox,
    ) -> Result<bool, RegistryError> {
        let written = write_with_audit!(
            self.db,
            "retire_publisher_key",
            audit,
            sqlx::query(
                "UPDATE publisher_keys SET retired_at = $2, retired_by = $3, retire_reason = $4, \
                 mac_key_id = $5, mac = $6 WHERE key_id = $1 AND retired_at IS NULL",
            )
            .bind(&key.key_id)
            .bind(key.retired_at)
            .bind(&key.retired_by)
            .bind(&key.retire_reason)
            .bind(&key.mac_key_id)
            .bind(&key.mac)
        );
        Ok(written || self.is_stored(key).await?)
    }

    // ---- releases and modules ----

    #[tracing::instrument(skip_all)]
    pub(crate) async fn release(
        &self,
        tool: &str,
        version: &str,
    ) -> Result<Option<ReleaseRow>, RegistryError> {
        static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            format!("SELECT {RELEASE_COLUMNS} FROM releases WHERE tool = $1 AND version = $2")
        });
        // On SQLite, on this thread: a point read by the primary key (see
        // `soma_store::InlineReader`).
        if let Some(inline) = self.db.inline_reader()
            && let Inline::Done(row) = inline.read_one(SQL.as_str(), &[tool, version], |row| {
                row.map(release_of!()).transpose()
            })
        {
            return Ok(row?);
        }
        retry_on_pool!(self.db, "release", RegistryError, pool => {
            sqlx::query(SQL.as_str())
                .bind(tool)
                .bind(version)
                // All rows (at most one), so that the statement ends
                // before the connection goes back to the pool (see the
                // backlog query below).
                .fetch_all(pool)
                .await?
                .first()
                .map(release_of!())
                .transpose()?
        })
    }

    /// Every release of `tool`, or every release when `tool` is `None`.
    #[tracing::instrument(skip_all)]
    pub(crate) async fn releases(&self, tool: Option<&str>) -> Result<Vec<ReleaseRow>, RegistryError> {
        let filter = if tool.is_some() { "WHERE tool = $1" } else { "" };
        let sql = format!("SELECT {RELEASE_COLUMNS} FROM releases {filter} ORDER BY tool, published_at");
        retry_on_pool!(self.db, "releases", RegistryError, pool => {
            let mut query = sqlx::query(&sql);
            if let Some(tool) = tool {
                query = query.bind(tool);
            }
            query
                .fetch_all(pool)
                .await?
                .iter()
                .map(release_of!())
                .collect::<Result<Vec<_>, _>>()?
        })
    }

    /// The stored bytes of a module, as stored (the caller re-hashes them).
    #[tracing::instrument(skip_all)]
    pub(crate) async fn module(&self, sha256: &[u8]) -> Result<Option<Vec<u8>>, RegistryError> {
        retry_on_pool!(self.db, "module", RegistryError, pool => {
            // All rows (at most one): see `release`.
            match sqlx::query("SELECT bytes FROM modules WHERE sha256 = $1")
                .bind(sha256)
                .fetch_all(pool)
                .await?
                .first()
            {
                Some(row) => Some(row.try_get::<Vec<u8>, _>(0)?),
                None => None,
            }
        })
    }

    /// Writes a release, its module (once per digest) and its audit event
    /// in one transaction, after `check` has seen the tool's releases
    /// inside it. Publishes of one tool are serialized: by the caller's
    /// lock within a process, and on PostgreSQL by an advisory lock on the
    /// tool for the transaction (replicas sharing the database).
    ///
    /// Retried on a new connection when the connection is lost, the commit
    /// included: a publish is idempotent by tool and version, so a rerun
    /// after a `COMMIT` that did happen finds the same release through
    /// `check` and answers it as [`Published::Existing`], having written
    /// nothing (its audit event was written once, by that commit).
    #[tracing::instrument(skip_all)]
    pub(crate) async fn publish<F>(
        &self,
        release: &ReleaseRow,
        module: &[u8],
        audit: &NewOutbox,
        check: F,
    ) -> Result<Published, RegistryError>
    where
        F: Fn(&[ReleaseRow]) -> Result<Option<ReleaseRow>, RegistryError>,
    {
        let select = format!("SELECT {RELEASE_COLUMNS} FROM releases WHERE tool = $1");
        let insert = format!(
            "INSERT INTO releases ({RELEASE_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, \
             $12, $13, $14, $15, $16, $17, $18, $19)"
        );
        let postgres = self.db.engine() == Engine::Postgres;
        retry_on_pool!(self.db, "publish", RegistryError, pool => {
            let mut tx = pool.begin().await?;
            if postgres {
                sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
                    .bind(&release.tool)
                    .execute(&mut *tx)
                    .await?;
            }
            let existing = sqlx::query(&select)
                .bind(&release.tool)
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(release_of!())
                .collect::<Result<Vec<_>, _>>()?;
            match check(&existing)? {
                Some(same) => Published::Existing(Box::new(same)),
                None => {
                    sqlx::query(
                        "INSERT INTO modules (sha256, size, bytes) VALUES ($1, $2, $3) \
                         ON CONFLICT (sha256) DO NOTHING",
                    )
                    .bind(&release.module_sha256)
                    .bind(release.module_size)
                    .bind(module)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query(&insert)
                        .bind(&release.tool)
                        .bind(&release.version)
                        .bind(&release.manifest)
                        .bind(&release.manifest_sha256)
                        .bind(&release.module_sha256)
                        .bind(release.module_size)
                        .bind(&release.hmac_key_id)
                        .bind(&release.hmac)
                        .bind(&release.envelope)
                        .bind(&release.publisher_key_id)
                        .bind(&release.state)
                        .bind(release.published_at)
                        .bind(&release.published_by)
                        .bind(&release.tenant)
                        .bind(release.revoked_at)
                        .bind(&release.revoked_by)
                        .bind(&release.revocation_reason)
                        .bind(&release.mac_key_id)
                        .bind(&release.mac)
                        .execute(&mut *tx)
                        .await?;
                    insert_outbox!(tx, audit);
                    tx.commit().await?;
                    Published::New
                }
            }
        })
    }

    /// Marks an active release revoked, with its audit event; `false` if it
    /// was no longer active.
    #[tracing::instrument(skip_all)]
    pub(crate) async fn revoke(
        &self,
        release: &ReleaseRow,
        audit: &NewOutbox,
    ) -> Result<bool, RegistryError> {
        let written = write_with_audit!(
            self.db,
            "revoke",
            audit,
            sqlx::query(
                "UPDATE releases SET state = $3, revoked_at = $4, revoked_by = $5, revocation_reason = $6, \
                 mac_key_id = $7, mac = $8 WHERE tool = $1 AND version = $2 AND state = 'active'",
            )
            .bind(&release.tool)
            .bind(&release.version)
            .bind(&release.state)
            .bind(release.revoked_at)
            .bind(&release.revoked_by)
            .bind(&release.revocation_reason)
            .bind(&release.mac_key_id)
            .bind(&release.mac)
        );
        // Stored exactly as given (the MAC covers the revocation's time and
        // actor): this request's revocation, committed before its
        // connection was lost.
        Ok(written || self.release(&release.tool, &release.version).await?.as_ref() == Some(release))
    }

    /// Replaces the MAC of one row, if it still holds `old_mac` (a row
    /// changed meanwhile is left alone). `table` is one of the three MACed
    /// tables, `key` its key columns' values. Retried on a new connection
    /// when the connection is lost: guarded by the old MAC, a rerun changes
    /// no row twice (after a commit that did happen it reports the row as
    /// changed meanwhile, which only leaves it out of a count).
    #[tracing::instrument(skip_all)]
    pub(crate) async fn remac(
        &self,
        table: Remac<'_>,
        old_mac: &[u8],
        mac_key_id: &str,
        mac: &[u8],
    ) -> Result<bool, RegistryError> {
        let (sql, keys): (&str, Vec<&str>) = match &table {
            Remac::PublisherKey(key_id) => (
                "UPDATE publisher_keys SET mac_key_id = $1, mac = $2 WHERE mac = $3 AND key_id = $4",
                vec![*key_id],
            ),
            Remac::Release(tool, version) => (
                "UPDATE releases SET mac_key_id = $1, mac = $2 WHERE mac = $3 AND tool = $4 AND version = $5",
                vec![*tool, *version],
            ),
            Remac::Outbox(_) => (
                "UPDATE outbox SET mac_key_id = $1, mac = $2 WHERE mac = $3 AND seq = $4",
                Vec::new(),
            ),
        };
        retry_on_pool!(self.db, "remac", RegistryError, pool => {
            let mut query = sqlx::query(sql).bind(mac_key_id).bind(mac).bind(old_mac);
            if let Remac::Outbox(seq) = table {
                query = query.bind(seq);
            }
            for key in &keys {
                query = query.bind(*key);
            }
            query.execute(pool).await?.rows_affected() == 1
        })
    }

    /// Every outbox row.
    #[tracing::instrument(skip_all)]
    pub(crate) async fn outbox(&self) -> Result<Vec<OutboxRow>, RegistryError> {
        self.due(i64::MAX, i64::MAX).await
    }

    // ---- outbox ----

    /// Writes `events` all or none: one `INSERT` of every row, which is
    /// atomic on its own (one round trip to the database, no `BEGIN` and
    /// `COMMIT` around it).
    ///
    /// Retried on a new connection when the connection is lost; as the
    /// statement is its own commit, its outcome is then unknown, so each
    /// rerun first looks the first event up by its kind and event id (a
    /// fresh id per event): found, the statement committed (all or none)
    /// and nothing is written again.
    #[tracing::instrument(skip_all)]
    pub(crate) async fn enqueue_all(&self, events: &[NewOutbox]) -> Result<(), RegistryError> {
        let Some(first) = events.first() else {
            return Ok(());
        };
        let sql = insert_outbox_rows(events.len());
        let mut rerun = false;
        retry!(self.db, "outbox_enqueue", RegistryError, {
            if std::mem::replace(&mut rerun, true) && self.enqueued(first).await? {
                return Ok(());
            }
            on_pool!(self.db, pool => {
                let mut query = sqlx::query(&sql);
                for event in events {
                    query = query
                        .bind(event.kind)
                        .bind(&event.event_id)
                        .bind(&event.payload)
                        .bind(event.created_at)
                        .bind(&event.mac_key_id)
                        .bind(&event.mac);
                }
                query.execute(pool).await?;
            });
            Ok(())
        })
    }

    /// Whether the outbox holds `event` (by kind and event id).
    async fn enqueued(&self, event: &NewOutbox) -> Result<bool, RegistryError> {
        Ok(on_pool!(self.db, pool => {
            !sqlx::query("SELECT 1 FROM outbox WHERE kind = $1 AND event_id = $2")
                .bind(event.kind)
                .bind(&event.event_id)
                .fetch_all(pool)
                .await?
                .is_empty()
        }))
    }

    /// Up to `limit` events due at `now`, oldest first.
    #[tracing::instrument(skip_all)]
    pub(crate) async fn due(&self, now: i64, limit: i64) -> Result<Vec<OutboxRow>, RegistryError> {
        retry_on_pool!(self.db, "outbox_due", RegistryError, pool => {
            sqlx::query(
                "SELECT seq, kind, event_id, payload, created_at, attempts, mac_key_id, mac FROM outbox \
                 WHERE next_attempt_at <= $1 ORDER BY seq LIMIT $2",
            )
            .bind(now)
            .bind(limit)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| -> Result<OutboxRow, sqlx::Error> {
                Ok(OutboxRow {
                    seq: row.try_get(0)?,
                    kind: row.try_get(1)?,
                    event_id: row.try_get(2)?,
                    payload: row.try_get(3)?,
                    created_at: row.try_get(4)?,
                    attempts: row.try_get(5)?,
                    mac_key_id: row.try_get(6)?,
                    mac: row.try_get(7)?,
                })
            })
            .collect::<Result<Vec<_>, _>>()?
        })
    }

    /// Forgets delivered events. Retried on a new connection when the
    /// connection is lost: deleting by sequence number twice deletes once.
    #[tracing::instrument(skip_all)]
    pub(crate) async fn delivered(&self, seqs: &[i64]) -> Result<(), RegistryError> {
        if seqs.is_empty() {
            return Ok(());
        }
        let list = seqs.iter().map(i64::to_string).collect::<Vec<_>>().join(", ");
        let sql = format!("DELETE FROM outbox WHERE seq IN ({list})");
        retry_on_pool!(self.db, "outbox_delivered", RegistryError, pool => {
            sqlx::query(&sql).execute(pool).await?;
        })
    }

    /// Puts an event off until `next_attempt_at`, noting why. Not retried:
    /// run twice it would count two attempts; a lost connection fails it,
    /// and the deliverer's next round tries the event again.
    #[tracing::instrument(skip_all)]
    pub(crate) async fn retry_later(
        &self,
        seq: i64,
        next_attempt_at: i64,
        error: &str,
    ) -> Result<(), RegistryError> {
        on_pool!(self.db, pool => {
            sqlx::query(
                "UPDATE outbox SET attempts = attempts + 1, next_attempt_at = $2, last_error = $3 WHERE seq = $1",
            )
            .bind(seq)
            .bind(next_attempt_at)
            .bind(error)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Events waiting, and the oldest one's creation time.
    ///
    /// Read with `fetch_all`, not `fetch_one`: SQLite's statement then runs
    /// to its end and is reset before the connection goes back to the pool.
    /// A statement left at its first row keeps the connection's read
    /// snapshot open, and the next transaction on that connection that
    /// reads, then writes, fails its first write with `SQLITE_BUSY` once
    /// another connection has written since (the deliverer calls this after
    /// every round, so it would be often).
    #[tracing::instrument(skip_all)]
    pub(crate) async fn backlog(&self) -> Result<(i64, Option<i64>), RegistryError> {
        retry_on_pool!(self.db, "outbox_backlog", RegistryError, pool => {
            let rows = sqlx::query("SELECT COUNT(*), MIN(created_at) FROM outbox")
                .fetch_all(pool)
                .await?;
            let row = rows.first().ok_or(sqlx::Error::RowNotFound)?;
            (row.try_get::<i64, _>(0)?, row.try_get::<Option<i64>, _>(1)?)
        })
    }
}

/// A row whose MAC is replaced.
#[derive(Debug)]
pub(crate) enum Remac<'a> {
    /// `publisher_keys`, by key id.
    PublisherKey(&'a str),
    /// `releases`, by tool and version.
    Release(&'a str, &'a str),
    /// `outbox`, by sequence number.
    Outbox(i64),
}

/// What a publish found.
#[derive(Debug)]
pub(crate) enum Published {
    /// Written now.
    New,
    /// The same release was already there (an idempotent retry).
    Existing(Box<ReleaseRow>),
}
