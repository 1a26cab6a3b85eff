//! The storage test harness: every storage test runs on each engine that
//! [`engines`] returns (enabled by the `testing` feature).
//!
//! SQLite always runs, in a fresh temporary directory. PostgreSQL runs when
//! `DATABASE_URL` is set, in a fresh database with a unique name created on
//! that server and dropped by [`TestDb::cleanup`].
//!
//! A missing PostgreSQL is an error, never a silent SQLite-only run, where it
//! matters: when `CI` is set (`.ci/run` exports `CI=1`) and `DATABASE_URL` is
//! unset or empty, [`engines`] panics; when `DATABASE_URL` is set and its
//! server refuses or does not answer within [`POSTGRES_ANSWER_TIMEOUT`],
//! [`engines`] panics too (with or without `CI`). Only a local run with
//! neither variable set runs SQLite alone, and says so loudly on stderr.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::postgres::PgConnection;
use sqlx::{Connection, Executor};
use tempfile::TempDir;

use crate::database::{Database, check_name};
use crate::settings::StoreSettings;

/// The environment variable naming the PostgreSQL server of the tests.
pub const DATABASE_URL_VAR: &str = "DATABASE_URL";

/// Set in CI, where skipping PostgreSQL is an error.
const CI_VAR: &str = "CI";

/// How long the `DATABASE_URL` server has to accept an admin connection
/// (TCP connect, TLS if asked, startup and authentication). Without a bound,
/// a server that accepts TCP but never answers (a stuck postmaster, a
/// half-open forward) would hang every storage test instead of failing it.
/// Generous, because a loaded CI machine is slow, and it only bounds a
/// failure: a healthy server answers in milliseconds.
pub const POSTGRES_ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest part of the service name kept in a test database's name.
const MAX_NAME_IN_DATABASE: usize = 24;

/// Distinguishes the databases one test process creates.
static SEQUENCE: AtomicU32 = AtomicU32::new(0);

/// The engines every storage test runs on, for the service database `name`:
/// SQLite in a fresh temporary directory, then (when `DATABASE_URL` is set)
/// PostgreSQL in a fresh uniquely-named database on that server.
///
/// When `DATABASE_URL` is unset or empty: panics if `CI` is set (non-empty);
/// otherwise returns SQLite only and says loudly on stderr that PostgreSQL
/// was skipped.
///
/// # Panics
/// On an invalid `name`; when the temporary directory cannot be created;
/// when `DATABASE_URL` is set and its server refuses the connection or does
/// not answer within [`POSTGRES_ANSWER_TIMEOUT`], or the test database cannot
/// be created; and as above.
pub async fn engines(name: &str) -> Vec<TestDb> {
    if let Err(error) = check_name(name) {
        panic!("soma_store::testing::engines: {error}");
    }
    let plan = postgres_plan(
        std::env::var(DATABASE_URL_VAR).ok().as_deref(),
        std::env::var_os(CI_VAR).is_some_and(|ci| !ci.is_empty()),
    );
    let mut engines = vec![TestDb::sqlite(name)];
    match plan {
        Ok(PostgresPlan::Use(url)) => engines.push(TestDb::postgres(name, &url).await),
        Ok(PostgresPlan::Skip) => warn_postgres_skipped(name),
        Err(reason) => panic!("soma_store::testing::engines: {reason}"),
    }
    engines
}

/// Whether a storage test runs on PostgreSQL too.
#[derive(Debug, PartialEq, Eq)]
enum PostgresPlan {
    /// Run on the server at this `DATABASE_URL` as well.
    Use(String),
    /// A local run without PostgreSQL: SQLite only, said loudly.
    Skip,
}

/// Decides from `DATABASE_URL` and whether `CI` is set; the `Err` is the
/// panic message. Kept apart from the environment so that the decision is
/// tested without mutating the process environment.
fn postgres_plan(database_url: Option<&str>, ci: bool) -> Result<PostgresPlan, String> {
    match database_url {
        Some(url) if !url.is_empty() => Ok(PostgresPlan::Use(url.to_owned())),
        _ if ci => Err(format!(
            "{CI_VAR} is set but {DATABASE_URL_VAR} is not: CI must run the storage tests on \
             PostgreSQL (set {DATABASE_URL_VAR}, e.g. postgres://postgres@127.0.0.1:5432/postgres)"
        )),
        _ => Ok(PostgresPlan::Skip),
    }
}

/// Says on the process's real stderr that PostgreSQL was skipped. Written
/// with `io::stderr()` rather than `eprintln!` so that the test harness's
/// output capture does not hide it when the test passes.
fn warn_postgres_skipped(name: &str) {
    use std::io::Write as _;
    tracing::warn!(test = name, "{DATABASE_URL_VAR} is not set: PostgreSQL skipped");
    let _ = writeln!(
        std::io::stderr(),
        "\n!!! {DATABASE_URL_VAR} is not set: storage test '{name}' ran on SQLITE ONLY, POSTGRESQL WAS SKIPPED !!!\n"
    );
}

/// One engine's fresh, empty database for a test.
pub struct TestDb {
    /// Settings pointing at the fresh database (and a fresh data directory).
    pub settings: StoreSettings,
    /// `"sqlite"` or `"postgres"`.
    pub label: &'static str,
    /// The service database name passed to [`Database::connect`].
    name: String,
    /// The data directory; removed when dropped.
    data_dir: TempDir,
    /// The PostgreSQL database to drop at cleanup.
    postgres: Option<PostgresTestDatabase>,
}

struct PostgresTestDatabase {
    /// `DATABASE_URL`: where the test database is created and dropped from.
    admin_url: String,
    /// The test database's name.
    database: String,
}

impl TestDb {
    fn sqlite(name: &str) -> Self {
        let data_dir = fresh_dir();
        Self {
            settings: StoreSettings::sqlite(data_dir.path().join("data")),
            label: "sqlite",
            name: name.to_owned(),
            data_dir,
            postgres: None,
        }
    }

    async fn postgres(name: &str, admin_url: &str) -> Self {
        let database = unique_database_name(name);
        let mut admin = admin_connection(admin_url).await;
        // `database` is made only of [a-z0-9_], so quoting it is enough.
        if let Err(error) = admin
            .execute(format!("CREATE DATABASE \"{database}\"").as_str())
            .await
        {
            panic!("cannot create test database {database}: {}", chain(&error));
        }
        let _ = admin.close().await;
        let data_dir = fresh_dir();
        Self {
            settings: StoreSettings {
                data_dir: data_dir.path().join("data"),
                database_url: Some(
                    crate::with_database(admin_url, &database)
                        .unwrap_or_else(|e| panic!("DATABASE_URL is not a PostgreSQL URL: {e}")),
                ),
            },
            label: "postgres",
            name: name.to_owned(),
            data_dir,
            postgres: Some(PostgresTestDatabase {
                admin_url: admin_url.to_owned(),
                database,
            }),
        }
    }

    /// Opens the test database, as a service would with these settings.
    ///
    /// # Panics
    /// When [`Database::connect`] fails, with the whole error chain.
    pub async fn connect(&self) -> Database {
        match Database::connect(&self.settings, &self.name).await {
            Ok(database) => database,
            Err(error) => panic!("{}: {}", self.label, chain(&error)),
        }
    }

    /// Drops the PostgreSQL test database (closing any connection still in
    /// it) and removes the data directory.
    ///
    /// # Panics
    /// When the PostgreSQL test database cannot be dropped.
    pub async fn cleanup(self) {
        if let Some(pg) = &self.postgres {
            let mut admin = admin_connection(&pg.admin_url).await;
            let drop = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", pg.database);
            if let Err(error) = admin.execute(drop.as_str()).await {
                panic!("cannot drop test database {}: {}", pg.database, chain(&error));
            }
            let _ = admin.close().await;
        }
        if let Err(error) = self.data_dir.close() {
            panic!("cannot remove test data directory: {error}");
        }
    }
}

/// How long [`Interruption::kill_when_waiting`] waits for a service's
/// statement to reach the held lock before the test fails.
const WAIT_FOR_WAITER: Duration = Duration::from_secs(60);

/// Advisory lock key held by [`TestDb::interrupt_commit`] (arbitrary; only
/// the test database's own sessions take it).
const COMMIT_HOLD_KEY: i64 = 0x50_4d_41_31;

impl TestDb {
    /// The PostgreSQL database's name, `None` on SQLite.
    pub fn postgres_database(&self) -> Option<&str> {
        self.postgres.as_ref().map(|pg| pg.database.as_str())
    }

    /// Terminates every backend of this PostgreSQL test database (every
    /// pooled connection of every service on it) from a separate admin
    /// connection, as a failover or a restart would, and returns how many
    /// were terminated. `None` on SQLite (nothing to terminate).
    ///
    /// # Panics
    /// When the admin connection or the query fails.
    pub async fn terminate_backends(&self) -> Option<u64> {
        let pg = self.postgres.as_ref()?;
        let mut admin = admin_connection(&pg.admin_url).await;
        let killed = terminate(&mut admin, &pg.database).await;
        let _ = admin.close().await;
        Some(killed)
    }

    /// Holds `LOCK TABLE <table> IN ACCESS EXCLUSIVE MODE` in an admin
    /// session on this test database, so that the next statement a service
    /// runs on `table` waits in flight on the server; see
    /// [`Interruption::kill_when_waiting`]. `table` must be a plain
    /// identifier of the service's schema. `None` on SQLite.
    ///
    /// # Panics
    /// When the admin session or the lock fails.
    pub async fn interrupt_statement(&self, table: &str) -> Option<Interruption> {
        let pg = self.postgres.as_ref()?;
        let mut admin = test_database_connection(pg).await;
        check_identifier(table);
        run(&mut admin, "BEGIN").await;
        run(
            &mut admin,
            &format!("LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"),
        )
        .await;
        Some(Interruption {
            admin,
            database: pg.database.clone(),
            cleanup: vec!["ROLLBACK".to_owned()],
        })
    }

    /// Makes the next transaction that inserts into `table` wait *in its
    /// `COMMIT`* on the server: a deferred constraint trigger on `table`
    /// takes an advisory lock that an admin session holds. Killing the
    /// backend then (see [`Interruption::kill_when_waiting`]) loses the
    /// connection during the commit, which did not happen (deferred
    /// triggers run before the commit record is written) — while the client
    /// cannot know. The trigger is dropped by [`Interruption::release`].
    /// A statement outside a transaction commits the same way (its implicit
    /// commit runs the trigger). `None` on SQLite.
    ///
    /// # Panics
    /// When the admin session or the DDL fails.
    pub async fn interrupt_commit(&self, table: &str) -> Option<Interruption> {
        let pg = self.postgres.as_ref()?;
        let mut admin = test_database_connection(pg).await;
        check_identifier(table);
        run(
            &mut admin,
            &format!(
                "CREATE OR REPLACE FUNCTION soma_test_hold_commit() RETURNS trigger LANGUAGE plpgsql AS \
                 $$ BEGIN PERFORM pg_advisory_xact_lock({COMMIT_HOLD_KEY}); RETURN NULL; END $$"
            ),
        )
        .await;
        run(
            &mut admin,
            &format!(
                "CREATE CONSTRAINT TRIGGER soma_test_hold_commit AFTER INSERT OR UPDATE ON {table} \
                 DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION soma_test_hold_commit()"
            ),
        )
        .await;
        run(&mut admin, &format!("SELECT pg_advisory_lock({COMMIT_HOLD_KEY})")).await;
        Some(Interruption {
            admin,
            database: pg.database.clone(),
            cleanup: vec![
                format!("SELECT pg_advisory_unlock({COMMIT_HOLD_KEY})"),
                format!("DROP TRIGGER soma_test_hold_commit ON {table}"),
            ],
        })
    }
}

/// An admin session holding a lock that a service's statement (or commit)
/// waits on, to lose that service's connection while the statement is in
/// flight: what a failover does to the queries running at that moment.
pub struct Interruption {
    admin: PgConnection,
    database: String,
    /// Run by [`Interruption::release`], in order.
    cleanup: Vec<String>,
}

impl Interruption {
    /// Waits until a backend of the test database other than this session
    /// waits for a lock (the service's statement is in flight), then
    /// terminates every backend of the database but this session, and
    /// returns how many it terminated. The lock is still held: the service's
    /// next attempt waits again until [`Interruption::release`].
    ///
    /// # Panics
    /// When no statement comes to wait within a minute, or a query fails.
    pub async fn kill_when_waiting(&mut self) -> u64 {
        let waited = tokio::time::timeout(WAIT_FOR_WAITER, async {
            loop {
                // Inside the lock's transaction, the activity statistics
                // are a snapshot taken once: drop it, to see the present.
                run(&mut self.admin, "SELECT pg_stat_clear_snapshot()").await;
                let waiting: i64 = match sqlx::query_scalar(
                    "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = $1 \
                     AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'",
                )
                .bind(&self.database)
                .fetch_one(&mut self.admin)
                .await
                {
                    Ok(n) => n,
                    Err(error) => panic!("pg_stat_activity: {}", chain(&error)),
                };
                if waiting > 0 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        if waited.is_err() {
            panic!("no statement of the service came to wait on the held lock");
        }
        terminate(&mut self.admin, &self.database).await
    }

    /// Releases the lock (and drops what [`TestDb::interrupt_commit`]
    /// created), then ends the admin session.
    ///
    /// # Panics
    /// When a cleanup statement fails.
    pub async fn release(mut self) {
        for sql in std::mem::take(&mut self.cleanup) {
            run(&mut self.admin, &sql).await;
        }
        let _ = self.admin.close().await;
    }
}

impl fmt::Debug for Interruption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Interruption")
            .field("database", &self.database)
            .finish_non_exhaustive()
    }
}

/// `SELECT pg_terminate_backend(pid)` for every backend of `database` but
/// the caller's own; how many were terminated.
async fn terminate(admin: &mut PgConnection, database: &str) -> u64 {
    match sqlx::query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(database)
    .execute(&mut *admin)
    .await
    {
        Ok(done) => done.rows_affected(),
        Err(error) => panic!("cannot terminate the backends of {database}: {}", chain(&error)),
    }
}

/// An admin session on the test database itself.
async fn test_database_connection(pg: &PostgresTestDatabase) -> PgConnection {
    let url = crate::with_database(&pg.admin_url, &pg.database)
        .unwrap_or_else(|e| panic!("DATABASE_URL is not a PostgreSQL URL: {e}"));
    admin_connection(&url).await
}

async fn run(conn: &mut PgConnection, sql: &str) {
    if let Err(error) = conn.execute(sql).await {
        panic!("{sql}: {}", chain(&error));
    }
}

/// A table name is spliced into DDL: only `[a-z0-9_]` is accepted.
fn check_identifier(table: &str) {
    assert!(
        !table.is_empty()
            && table
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
        "not a plain table name: {table:?}"
    );
}

impl fmt::Debug for TestDb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestDb")
            .field("label", &self.label)
            .field("name", &self.name)
            .field("settings", &self.settings)
            .field(
                "postgres_database",
                &self.postgres.as_ref().map(|pg| pg.database.as_str()),
            )
            .finish_non_exhaustive()
    }
}

/// The error and its sources on one line, for panic messages.
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn fresh_dir() -> TempDir {
    match tempfile::Builder::new().prefix("soma-store-test-").tempdir() {
        Ok(dir) => dir,
        Err(error) => panic!("cannot create a temporary directory: {error}"),
    }
}

async fn admin_connection(admin_url: &str) -> PgConnection {
    match connect_within(admin_url, POSTGRES_ANSWER_TIMEOUT).await {
        Ok(conn) => conn,
        Err(reason) => panic!("{reason}"),
    }
}

/// Connects to the `DATABASE_URL` server, or says why not: refused, failed,
/// or silent for `timeout`. The URL is not repeated in the message because
/// it may carry a password.
async fn connect_within(admin_url: &str, timeout: Duration) -> Result<PgConnection, String> {
    match tokio::time::timeout(timeout, PgConnection::connect(admin_url)).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(error)) => Err(format!(
            "cannot connect to the {DATABASE_URL_VAR} server: {}",
            chain(&error)
        )),
        Err(_) => Err(format!(
            "the {DATABASE_URL_VAR} server did not answer within {}s: is PostgreSQL up and \
             reachable?",
            timeout.as_secs_f64()
        )),
    }
}

/// `soma_test_<name>_<pid>_<seq>_<nanos>`: unique across concurrent test
/// processes and tests, at most 63 bytes, only `[a-z0-9_]`.
fn unique_database_name(name: &str) -> String {
    let name: String = name
        .chars()
        .take(MAX_NAME_IN_DATABASE)
        .map(|c| if c == '-' { '_' } else { c })
        .collect();
    let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("soma_test_{name}_{}_{seq}_{nanos:08x}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_is_required_under_ci_and_optional_only_locally() {
        struct Case {
            name: &'static str,
            database_url: Option<&'static str>,
            ci: bool,
            expected: Result<PostgresPlan, &'static str>,
        }
        const URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";
        let missing = "CI is set but DATABASE_URL is not: CI must run the storage tests on \
                       PostgreSQL (set DATABASE_URL, e.g. postgres://postgres@127.0.0.1:5432/postgres)";
        let cases = [
            Case {
                name: "ci, url set",
                database_url: Some(URL),
                ci: true,
                expected: Ok(PostgresPlan::Use(URL.to_owned())),
            },
            Case {
                name: "local, url set",
                database_url: Some(URL),
                ci: false,
                expected: Ok(PostgresPlan::Use(URL.to_owned())),
            },
            Case {
                name: "ci, url unset",
                database_url: None,
                ci: true,
                expected: Err(missing),
            },
            Case {
                name: "ci, url empty",
                database_url: Some(""),
                ci: true,
                expected: Err(missing),
            },
            Case {
                name: "local, url unset",
                database_url: None,
                ci: false,
                expected: Ok(PostgresPlan::Skip),
            },
            Case {
                name: "local, url empty",
                database_url: Some(""),
                ci: false,
                expected: Ok(PostgresPlan::Skip),
            },
        ];
        for case in cases {
            let expected = case.expected.map_err(str::to_owned);
            assert_eq!(
                postgres_plan(case.database_url, case.ci),
                expected,
                "{}",
                case.name
            );
        }
    }

    /// A server that accepts TCP but never speaks (the kernel completes the
    /// handshake into the listen backlog; nobody reads) is an error, not a
    /// hang. Without the timeout this test never returns.
    #[tokio::test]
    async fn a_silent_postgres_server_is_an_error_not_a_hang() {
        let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = silent.local_addr().expect("local addr").port();
        let url = format!("postgres://postgres@127.0.0.1:{port}/postgres?sslmode=disable");
        let started = std::time::Instant::now();
        let Err(reason) = connect_within(&url, Duration::from_secs(1)).await else {
            panic!("a silent server must not yield a connection");
        };
        eprintln!("silent server refused after {:?}", started.elapsed());
        assert_eq!(
            reason,
            "the DATABASE_URL server did not answer within 1s: is PostgreSQL up and reachable?"
        );
        drop(silent);
    }

    /// A port nobody listens on is refused at once, with the cause kept.
    #[tokio::test]
    async fn a_refused_postgres_connection_is_an_error_with_its_cause() {
        // Bind then drop: the port was free a moment ago and is closed now.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("bind")
            .port();
        let url = format!("postgres://postgres@127.0.0.1:{port}/postgres?sslmode=disable");
        let Err(reason) = connect_within(&url, POSTGRES_ANSWER_TIMEOUT).await else {
            panic!("a closed port must not yield a connection");
        };
        assert!(
            reason.starts_with("cannot connect to the DATABASE_URL server: ")
                && reason.contains("onnection refused"),
            "{reason}"
        );
    }

    #[test]
    fn database_names_are_unique_and_valid_identifiers() {
        let a = unique_database_name("a-very-long-service-name-that-goes-on-and-on");
        let b = unique_database_name("a-very-long-service-name-that-goes-on-and-on");
        assert_ne!(a, b);
        for n in [&a, &b] {
            assert!(n.len() <= 63, "{n}");
            assert!(
                n.bytes()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_'),
                "{n}"
            );
        }
    }
}
