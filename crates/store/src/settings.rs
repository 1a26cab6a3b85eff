//! Where a service's data lives.

use std::fmt;
use std::path::PathBuf;

/// Where a service's data lives: the SQLite file `data_dir/<name>.db` when
/// `database_url` is `None` (the embedded default, no server needed),
/// PostgreSQL when it is `Some` (production; e.g. from `DATABASE_URL`).
#[derive(Clone, PartialEq, Eq)]
pub struct StoreSettings {
    /// Directory of the SQLite files; created with mode 0700 when missing.
    pub data_dir: PathBuf,
    /// PostgreSQL connection URL (`postgres://user@host:port/db`); `None`
    /// selects SQLite.
    pub database_url: Option<String>,
}

impl StoreSettings {
    /// SQLite files in `data_dir` (the embedded default).
    pub fn sqlite(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            database_url: None,
        }
    }

    /// The engine these settings select.
    pub fn engine(&self) -> Engine {
        match self.database_url {
            Some(_) => Engine::Postgres,
            None => Engine::Sqlite,
        }
    }
}

// The URL may carry a password: it is never printed.
impl fmt::Debug for StoreSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreSettings")
            .field("data_dir", &self.data_dir)
            .field("database_url", &self.database_url.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// The database engine behind a [`Database`](crate::Database).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Engine {
    /// An embedded SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

impl Engine {
    /// Stable lowercase name: `sqlite` or `postgres`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
