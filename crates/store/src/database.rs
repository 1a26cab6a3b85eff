//! [`Database`]: one handle over a SQLite file or a PostgreSQL server.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Connection, Executor};
use tracing::{debug, info, warn};

use crate::error::StoreError;
use crate::inline::InlineReader;
use crate::migrations::Migrations;
use crate::retry::Staleness;
use crate::settings::{Engine, StoreSettings};

/// How long a SQLite statement waits for another connection's write lock.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a SQLite migrator waits for another migrator to finish.
const SQLITE_MIGRATE_LOCK_WAIT: Duration = Duration::from_secs(60);

/// Connections per SQLite pool: WAL lets readers run beside the one writer.
const SQLITE_MAX_CONNECTIONS: u32 = 8;

/// Connections per PostgreSQL pool.
const POSTGRES_MAX_CONNECTIONS: u32 = 10;

/// How long connecting to PostgreSQL (and acquiring a pooled connection) may take.
const POSTGRES_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest database name: PostgreSQL's identifier limit, so a name can also
/// serve as a schema or database name there.
const MAX_NAME_LEN: usize = 63;

/// One sqlx-based handle over both engines. Cloning is cheap: clones share
/// the pool.
#[derive(Clone)]
pub struct Database {
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    Sqlite {
        pool: SqlitePool,
        /// The pool's options, reused for the migrator's own connection.
        options: SqliteConnectOptions,
        path: PathBuf,
        /// Point reads of the same file on the calling thread.
        inline: Arc<InlineReader>,
    },
    Postgres {
        pool: PgPool,
        /// The pool's options, reused for the migrator's own connection.
        options: PgConnectOptions,
        /// `host:port/database`, for messages (never the URL: it may carry a password).
        target: String,
        /// Which pooled connections are older than the last lost one.
        staleness: Arc<Staleness>,
    },
}

impl Database {
    /// Opens (creating when missing) the database of service `name`, e.g.
    /// `"analytics"`.
    ///
    /// SQLite: the file `data_dir/<name>.db`, the directory created with mode
    /// 0700, in WAL mode with foreign keys enforced, a busy timeout and full
    /// synchronous commits. PostgreSQL: the server and database of
    /// `database_url`; one connection is opened first, outside the pool, so
    /// that an unreachable server fails at once with its real cause instead
    /// of the pool's generic timeout.
    #[tracing::instrument(skip_all, fields(name = name, engine = %settings.engine()))]
    pub async fn connect(settings: &StoreSettings, name: &str) -> Result<Self, StoreError> {
        check_name(name)?;
        let inner = match &settings.database_url {
            None => connect_sqlite(&settings.data_dir, name).await?,
            Some(url) => connect_postgres(url).await?,
        };
        let database = Self { inner };
        info!(target_db = %database.target(), "database opened");
        Ok(database)
    }

    /// The engine behind this handle.
    pub fn engine(&self) -> Engine {
        match self.inner {
            Inner::Sqlite { .. } => Engine::Sqlite,
            Inner::Postgres { .. } => Engine::Postgres,
        }
    }

    /// Applies the pending migrations of `migrations`, in version order.
    ///
    /// Idempotent: applied versions are skipped after their checksum is
    /// compared, and a changed text for an applied version fails with
    /// [`StoreError::MigrationChanged`]. Safe under concurrent callers, in one
    /// process or several: each run holds an exclusive lock for its whole
    /// duration, so a second caller waits, then finds everything applied.
    ///
    /// - PostgreSQL: sqlx's advisory lock on the database. The migrator runs on
    ///   a connection of its own, closed afterwards, so that the session-level
    ///   lock is released even when a run fails before unlocking.
    /// - SQLite: sqlx takes no lock there, so the run happens inside one
    ///   `BEGIN IMMEDIATE` transaction (SQLite's write lock; each migration is
    ///   a savepoint within it). The whole run commits or nothing does.
    #[tracing::instrument(skip_all, fields(engine = %self.engine()))]
    pub async fn migrate(&self, migrations: &Migrations) -> Result<(), StoreError> {
        let migrator = migrations.migrator(self.engine()).await?;
        // `run_direct` rather than `run`: `run` is generic over `Acquire<'a>`,
        // which makes this future fail to be `Send` for every lifetime, so
        // services could not call `migrate` from a spawned task.
        match &self.inner {
            Inner::Sqlite { options, path, .. } => {
                let options = options.clone().busy_timeout(SQLITE_MIGRATE_LOCK_WAIT);
                let mut conn = SqliteConnection::connect_with(&options)
                    .await
                    .map_err(|source| connect_error(Engine::Sqlite, path.display().to_string(), source))?;
                let result = async {
                    let mut tx = conn
                        .begin_with("BEGIN IMMEDIATE")
                        .await
                        .map_err(|source| StoreError::Query { source })?;
                    migrator.run_direct(&mut *tx).await?;
                    tx.commit().await.map_err(|source| StoreError::Query { source })
                }
                .await;
                // On error the transaction was rolled back when dropped; closing
                // the connection then releases the file lock.
                if let Err(error) = conn.close().await {
                    debug!(%error, "closing the sqlite migration connection failed");
                }
                result?;
            }
            Inner::Postgres { options, target, .. } => {
                let mut conn = connect_pg_once(options, target).await?;
                let result = migrator.run_direct(&mut conn).await;
                // Ending the session releases the advisory lock in every case.
                if let Err(error) = conn.close().await {
                    debug!(%error, "closing the postgres migration connection failed");
                }
                result?;
            }
        }
        debug!(versions = migrations.0.len(), "migrations applied");
        Ok(())
    }

    /// The SQLite pool, when this is a SQLite database.
    pub fn as_sqlite(&self) -> Option<&SqlitePool> {
        match &self.inner {
            Inner::Sqlite { pool, .. } => Some(pool),
            Inner::Postgres { .. } => None,
        }
    }

    /// Read-only connections to the SQLite file for point reads on the
    /// calling thread ([`InlineReader`]), when this is a SQLite database.
    pub fn inline_reader(&self) -> Option<&InlineReader> {
        match &self.inner {
            Inner::Sqlite { inline, .. } => Some(inline),
            Inner::Postgres { .. } => None,
        }
    }

    /// The PostgreSQL pool, when this is a PostgreSQL database.
    pub fn as_postgres(&self) -> Option<&PgPool> {
        match &self.inner {
            Inner::Postgres { pool, .. } => Some(pool),
            Inner::Sqlite { .. } => None,
        }
    }

    /// Liveness query (`SELECT 1`) for readiness probes.
    #[tracing::instrument(skip_all, fields(engine = %self.engine()))]
    pub async fn ping(&self) -> Result<(), StoreError> {
        let result = match &self.inner {
            Inner::Sqlite { pool, .. } => pool.execute("SELECT 1").await.map(drop),
            Inner::Postgres { pool, .. } => pool.execute("SELECT 1").await.map(drop),
        };
        result.map_err(|source| StoreError::Query { source })
    }

    /// Closes the pool, waiting for checked-out connections to come back.
    /// Clones share the pool, so this closes it for all of them.
    pub async fn close(&self) {
        match &self.inner {
            Inner::Sqlite { pool, inline, .. } => {
                pool.close().await;
                inline.close();
            }
            Inner::Postgres { pool, .. } => pool.close().await,
        }
    }

    /// After a lost connection: every PostgreSQL connection opened before
    /// now is closed by the pool instead of being handed out again (see
    /// [`crate::Retrying`]). No effect on SQLite.
    pub(crate) fn mark_connections_stale(&self) {
        if let Inner::Postgres { staleness, .. } = &self.inner {
            staleness.mark();
        }
    }

    /// The SQLite file, or PostgreSQL's `host:port/database`.
    fn target(&self) -> String {
        match &self.inner {
            Inner::Sqlite { path, .. } => path.display().to_string(),
            Inner::Postgres { target, .. } => target.clone(),
        }
    }
}

// The connect options may hold a password: only the engine and target are shown.
impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database")
            .field("engine", &self.engine())
            .field("target", &self.target())
            .finish()
    }
}

/// A name becomes a file name and may become an identifier: only a safe,
/// short alphabet is accepted, so no path traversal or quoting is possible.
pub(crate) fn check_name(name: &str) -> Result<(), StoreError> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(StoreError::InvalidName {
            name: name.to_owned(),
        })
    }
}

async fn connect_sqlite(data_dir: &Path, name: &str) -> Result<Inner, StoreError> {
    create_data_dir(data_dir).await?;
    let path = data_dir.join(format!("{name}.db"));
    let options = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .foreign_keys(true)
        .busy_timeout(SQLITE_BUSY_TIMEOUT);
    // No ping before each acquire: a SQLite connection is a file handle in
    // this process, served by its own worker thread, and cannot be dropped by
    // a server; the ping would cost every query one more round trip to that
    // thread (a query on a broken connection fails and reports it anyway).
    let pool = SqlitePoolOptions::new()
        .max_connections(SQLITE_MAX_CONNECTIONS)
        .test_before_acquire(false)
        .connect_with(options.clone())
        .await
        .map_err(|source| connect_error(Engine::Sqlite, path.display().to_string(), source))?;
    let inline = Arc::new(InlineReader::new(&path));
    Ok(Inner::Sqlite {
        pool,
        options,
        path,
        inline,
    })
}

/// Creates `dir` (and its parents) with mode 0700: it holds every service's
/// data. An existing directory is left as it is, with a warning when others
/// can read it.
async fn create_data_dir(dir: &Path) -> Result<(), StoreError> {
    let io_error = |source| StoreError::DataDir {
        path: dir.to_owned(),
        source,
    };
    let mut builder = tokio::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    builder.mode(0o700);
    builder.create(dir).await.map_err(io_error)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = tokio::fs::metadata(dir)
            .await
            .map_err(io_error)?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            warn!(path = %dir.display(), mode = format!("{:o}", mode & 0o777), "data directory is accessible to other users");
        }
    }
    Ok(())
}

async fn connect_postgres(url: &str) -> Result<Inner, StoreError> {
    let (options, target) = pg_options(url)?;
    // The pool retries refused connections until its acquire timeout and then
    // reports only that it timed out; a direct first connection surfaces the
    // real cause (refused, unknown host, authentication failed, no database).
    let probe = connect_pg_once(&options, &target).await?;
    if let Err(error) = probe.close().await {
        debug!(%error, "closing the postgres probe connection failed");
    }
    let staleness = Staleness::new();
    let hook = Arc::clone(&staleness);
    let pool = PgPoolOptions::new()
        .max_connections(POSTGRES_MAX_CONNECTIONS)
        .acquire_timeout(POSTGRES_CONNECT_TIMEOUT)
        // A connection opened before a lost one was seen is closed rather
        // than handed out: after a failover it is dead, or it reaches a
        // server that is now read-only and still answers the ping.
        .before_acquire(move |_conn, meta| {
            let fresh = !hook.is_stale(meta.age);
            Box::pin(async move { Ok(fresh) })
        })
        .connect_with(options.clone())
        .await
        .map_err(|source| connect_error(Engine::Postgres, target.clone(), source))?;
    Ok(Inner::Postgres {
        pool,
        options,
        target,
        staleness,
    })
}

/// The URL of database `name` on the PostgreSQL server of `server_url`
/// (the same user, host, port and parameters: [`with_database`]), created
/// when it does not exist yet. `name` must be a valid database name for a
/// service (`[a-z0-9_-]`, at most 63 bytes). Several callers at once are
/// safe: a database another caller created meanwhile is taken as it is.
pub async fn ensure_postgres_database(server_url: &str, name: &str) -> Result<String, StoreError> {
    check_name(name)?;
    let url = with_database(server_url, name)?;
    let (options, target) = pg_options(server_url)?;
    let mut conn = connect_pg_once(&options, &target).await?;
    let query = |source| StoreError::Query { source };
    let exists = sqlx::query("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(name)
        .fetch_all(&mut conn)
        .await
        .map_err(query)?;
    if exists.is_empty() {
        // `name` is made only of [a-z0-9_-], so quoting it is enough.
        match conn.execute(format!("CREATE DATABASE \"{name}\"").as_str()).await {
            Ok(_) => info!(database = name, server = %target, "database created"),
            // 42P04 duplicate_database: created by another caller meanwhile.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(source) => return Err(query(source)),
        }
    }
    if let Err(error) = conn.close().await {
        debug!(%error, "closing the postgres connection failed");
    }
    Ok(url)
}

/// `url` (a `postgres://` or `postgresql://` URL) with its database, the
/// path, replaced by `name`; user, host, port and query parameters kept.
pub fn with_database(url: &str, name: &str) -> Result<String, StoreError> {
    let invalid = || StoreError::InvalidDatabaseUrl { source: None };
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .ok_or_else(invalid)?;
    let scheme = &url[..url.len() - rest.len()];
    let (before_query, query) = match rest.split_once('?') {
        Some((before, query)) => (before, Some(query)),
        None => (rest, None),
    };
    let authority = before_query.split_once('/').map_or(before_query, |(a, _)| a);
    if authority.is_empty() {
        return Err(invalid());
    }
    let mut out = format!("{scheme}{authority}/{name}");
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    Ok(out)
}

/// The connect options of a PostgreSQL URL, and the `host:port/database`
/// that names it in messages (never the URL: it may carry a password).
fn pg_options(url: &str) -> Result<(PgConnectOptions, String), StoreError> {
    // sqlx parses any scheme as PostgreSQL; a MySQL or SQLite URL given here
    // by mistake must not be read as one.
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(StoreError::InvalidDatabaseUrl { source: None });
    }
    let options: PgConnectOptions = url
        .parse()
        .map_err(|source| StoreError::InvalidDatabaseUrl { source: Some(source) })?;
    let target = format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or(options.get_username())
    );
    Ok((options, target))
}

/// One PostgreSQL connection, outside any pool, bounded in time.
async fn connect_pg_once(options: &PgConnectOptions, target: &str) -> Result<PgConnection, StoreError> {
    match tokio::time::timeout(POSTGRES_CONNECT_TIMEOUT, PgConnection::connect_with(options)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(source)) => Err(connect_error(Engine::Postgres, target.to_owned(), source)),
        Err(_elapsed) => Err(StoreError::ConnectTimeout {
            engine: Engine::Postgres,
            target: target.to_owned(),
            timeout: POSTGRES_CONNECT_TIMEOUT,
        }),
    }
}

fn connect_error(engine: Engine, target: String, source: sqlx::Error) -> StoreError {
    StoreError::Connect {
        engine,
        target,
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_database_replaces_only_the_path() {
        let cases = [
            (
                "postgres://postgres@127.0.0.1:5432/postgres",
                "postgres://postgres@127.0.0.1:5432/soma_analytics",
            ),
            (
                "postgresql://u:p%2Fw@db:6432",
                "postgresql://u:p%2Fw@db:6432/soma_analytics",
            ),
            (
                "postgres://u@h:1/x?sslmode=disable&connect_timeout=2",
                "postgres://u@h:1/soma_analytics?sslmode=disable&connect_timeout=2",
            ),
            ("postgres://u@h/", "postgres://u@h/soma_analytics"),
            (
                "postgres://h?sslmode=disable",
                "postgres://h/soma_analytics?sslmode=disable",
            ),
        ];
        for (url, expected) in cases {
            assert_eq!(with_database(url, "soma_analytics").unwrap(), expected, "{url}");
        }
        for bad in ["mysql://u@h/x", "postgres:///x", "postgres://", "h:5432/x"] {
            assert!(
                matches!(
                    with_database(bad, "x"),
                    Err(StoreError::InvalidDatabaseUrl { .. })
                ),
                "{bad}"
            );
        }
    }
}
