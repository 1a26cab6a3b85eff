//! Storage plumbing of SomaStack: one sqlx-based [`Database`] handle over an
//! embedded SQLite file or a PostgreSQL server, and the running of each
//! service's own [`Migrations`].
//!
//! It deliberately owns no tables: each service keeps its schema as
//! migrations, one SQL text per engine, and runs its own queries on the pool
//! ([`Database::as_sqlite`], [`Database::as_postgres`]).
//!
//! Security-relevant defaults: the SQLite data directory is created with mode
//! 0700; SQLite enforces foreign keys; an applied migration whose text has
//! changed is refused, never skipped; connection URLs (which may carry a
//! password) never appear in errors or `Debug` output.

mod database;
mod error;
mod migrations;
mod settings;
#[cfg(feature = "testing")]
pub mod testing;

pub use database::{Database, ensure_postgres_database, with_database};
pub use error::StoreError;
pub use migrations::{Migration, Migrations};
pub use settings::{Engine, StoreSettings};

/// Runs `$body` with `$pool` bound to the SQLite or the PostgreSQL pool of
/// `$db` (a [`Database`]).
///
/// Every query is written once, with `$N` placeholders (which both SQLite
/// and PostgreSQL accept through sqlx); the macro expands the code once per
/// engine, so the two never drift apart.
#[macro_export]
macro_rules! on_pool {
    ($db:expr, $pool:ident => $body:expr) => {
        match ($db.as_sqlite(), $db.as_postgres()) {
            (Some($pool), _) => $body,
            (None, Some($pool)) => $body,
            (None, None) => unreachable!("a database is either SQLite or PostgreSQL"),
        }
    };
}
