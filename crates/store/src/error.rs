//! The one error type of `soma-store`.

use std::path::PathBuf;
use std::time::Duration;

use crate::settings::Engine;

/// Why a storage operation failed.
///
/// Messages name the cause and the target (a SQLite file, or PostgreSQL's
/// `host:port/database`) but never a connection URL, which may carry a
/// password.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The database name is not a safe file stem (`[a-z0-9_-]`, 1 to 63 bytes).
    #[error("database name {name:?} is invalid: use 1 to 63 of a-z, 0-9, '_' and '-'")]
    InvalidName {
        /// The name that was refused.
        name: String,
    },
    /// The data directory could not be created or inspected.
    #[error("cannot create data directory {}", path.display())]
    DataDir {
        /// The data directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// `database_url` is not a PostgreSQL connection URL
    /// (`postgres://` or `postgresql://`).
    #[error("database url is not a valid postgresql url (postgres://user@host:port/database)")]
    InvalidDatabaseUrl {
        /// What the URL parser said; `None` when the scheme is not PostgreSQL's.
        #[source]
        source: Option<sqlx::Error>,
    },
    /// The database could not be opened or reached.
    #[error("cannot connect to {engine} database {target}")]
    Connect {
        /// The engine.
        engine: Engine,
        /// The SQLite file, or PostgreSQL's `host:port/database`.
        target: String,
        /// The driver error (I/O error, refused authentication, ...).
        #[source]
        source: sqlx::Error,
    },
    /// Connecting did not complete in time.
    #[error("connecting to {engine} database {target} timed out after {}s", timeout.as_secs())]
    ConnectTimeout {
        /// The engine.
        engine: Engine,
        /// The SQLite file, or PostgreSQL's `host:port/database`.
        target: String,
        /// How long connecting was allowed to take.
        timeout: Duration,
    },
    /// Two migrations of one set share a version.
    #[error("migration version {version} appears more than once")]
    DuplicateMigration {
        /// The repeated version.
        version: i64,
    },
    /// A migration version is zero or negative.
    #[error("migration version {version} is not positive")]
    InvalidMigrationVersion {
        /// The refused version.
        version: i64,
    },
    /// An applied migration's SQL text differs from the one the service now
    /// carries: the schema the database has is not the one the code expects.
    #[error("migration {version} was applied with a different sql text (checksum mismatch)")]
    MigrationChanged {
        /// The changed version.
        version: i64,
    },
    /// The database has a migration applied that the service does not know:
    /// it was written by a newer release.
    #[error("migration {version} is applied in the database but unknown to this service")]
    UnknownAppliedMigration {
        /// The unknown version.
        version: i64,
    },
    /// A migration is recorded as failed half-way; it needs repair by hand.
    #[error("migration {version} is partially applied")]
    DirtyMigration {
        /// The dirty version.
        version: i64,
    },
    /// A migration's SQL failed.
    #[error("migration {version} failed")]
    MigrationFailed {
        /// The failing version.
        version: i64,
        /// The database error.
        #[source]
        source: sqlx::Error,
    },
    /// Migrating failed for another reason (lock, bookkeeping table, I/O).
    #[error("cannot apply migrations")]
    Migrate {
        /// The migrator's error.
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    /// A query failed (liveness probe, migration lock, a service's query).
    #[error("database query failed")]
    Query {
        /// The database error.
        #[source]
        source: sqlx::Error,
    },
    /// The connection was lost while a transaction was committing: the
    /// server may or may not have committed it. Never retried blindly (see
    /// [`crate::commit`]); a caller that cannot look its row up answers
    /// that the database is unavailable.
    #[error("database connection lost during commit: outcome unknown")]
    CommitOutcomeUnknown {
        /// The driver error.
        #[source]
        source: sqlx::Error,
    },
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(error: sqlx::migrate::MigrateError) -> Self {
        use sqlx::migrate::MigrateError as M;
        match error {
            M::VersionMismatch(version) => Self::MigrationChanged { version },
            M::VersionMissing(version) => Self::UnknownAppliedMigration { version },
            M::Dirty(version) => Self::DirtyMigration { version },
            M::ExecuteMigration(source, version) => Self::MigrationFailed { version, source },
            other => Self::Migrate { source: other },
        }
    }
}
