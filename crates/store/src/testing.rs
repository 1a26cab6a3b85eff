//! The storage test harness: every storage test runs on each engine that
//! [`engines`] returns (enabled by the `testing` feature).
//!
//! SQLite always runs, in a fresh temporary directory. PostgreSQL runs when
//! `DATABASE_URL` is set, in a fresh database with a unique name created on
//! that server and dropped by [`TestDb::cleanup`]. When `DATABASE_URL` is
//! unset and `CI` is set, [`engines`] panics: CI must test PostgreSQL.

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::postgres::PgConnection;
use sqlx::{Connection, Executor};
use tempfile::TempDir;

use crate::database::{Database, check_name};
use crate::settings::StoreSettings;

/// The environment variable naming the PostgreSQL server of the tests.
pub const DATABASE_URL_VAR: &str = "DATABASE_URL";

/// Set in CI, where skipping PostgreSQL is an error.
const CI_VAR: &str = "CI";

/// Longest part of the service name kept in a test database's name.
const MAX_NAME_IN_DATABASE: usize = 24;

/// Distinguishes the databases one test process creates.
static SEQUENCE: AtomicU32 = AtomicU32::new(0);

/// The engines every storage test runs on, for the service database `name`:
/// SQLite in a fresh temporary directory, then (when `DATABASE_URL` is set)
/// PostgreSQL in a fresh uniquely-named database on that server.
///
/// When `DATABASE_URL` is unset: panics if `CI` is set; otherwise returns
/// SQLite only and says loudly on stderr that PostgreSQL was skipped.
///
/// # Panics
/// On an invalid `name`, when the temporary directory or the PostgreSQL test
/// database cannot be created, and as above.
pub async fn engines(name: &str) -> Vec<TestDb> {
    if let Err(error) = check_name(name) {
        panic!("soma_store::testing::engines: {error}");
    }
    let mut engines = vec![TestDb::sqlite(name)];
    match std::env::var(DATABASE_URL_VAR) {
        Ok(url) if !url.is_empty() => engines.push(TestDb::postgres(name, &url).await),
        _ if std::env::var_os(CI_VAR).is_some() => {
            panic!(
                "{CI_VAR} is set but {DATABASE_URL_VAR} is not: CI must run the storage tests on PostgreSQL"
            )
        }
        _ => warn_postgres_skipped(name),
    }
    engines
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
            settings: StoreSettings {
                data_dir: data_dir.path().join("data"),
                database_url: None,
            },
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
                database_url: Some(with_database(admin_url, &database)),
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
    match PgConnection::connect(admin_url).await {
        Ok(conn) => conn,
        Err(error) => panic!(
            "cannot connect to the {DATABASE_URL_VAR} server: {}",
            chain(&error)
        ),
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

/// `url` with its database path replaced by `database`; the scheme,
/// authority and query are kept as they are.
fn with_database(url: &str, database: &str) -> String {
    let authority_start = url.find("://").map_or(0, |i| i + 3);
    let (head, rest) = url.split_at(authority_start);
    let authority_len = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_len);
    let query = tail.find('?').map_or("", |i| &tail[i..]);
    format!("{head}{authority}/{database}{query}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn with_database_replaces_only_the_path() {
        struct Case {
            name: &'static str,
            input: &'static str,
            expected: &'static str,
        }
        let cases = [
            Case {
                name: "path",
                input: "postgres://postgres@127.0.0.1:5432/postgres",
                expected: "postgres://postgres@127.0.0.1:5432/t1",
            },
            Case {
                name: "no path",
                input: "postgres://u:p@h:1",
                expected: "postgres://u:p@h:1/t1",
            },
            Case {
                name: "query kept",
                input: "postgresql://u@h/db?sslmode=disable&application_name=x",
                expected: "postgresql://u@h/t1?sslmode=disable&application_name=x",
            },
            Case {
                name: "query without path",
                input: "postgres://h?sslmode=disable",
                expected: "postgres://h/t1?sslmode=disable",
            },
        ];
        for case in cases {
            assert_eq!(with_database(case.input, "t1"), case.expected, "{}", case.name);
        }
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
