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

pub use database::Database;
pub use error::StoreError;
pub use migrations::{Migration, Migrations};
pub use settings::{Engine, StoreSettings};
