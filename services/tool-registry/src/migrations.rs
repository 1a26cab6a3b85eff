//! The registry's migrations: publisher keys, releases, modules and the
//! outbox, for SQLite and PostgreSQL.

use soma_store::{Migration, Migrations};

/// The service's migrations.
pub static MIGRATIONS: Migrations = Migrations(&[Migration {
    version: 1,
    description: "publisher keys, releases, modules, outbox",
    sqlite: include_str!("../migrations/sqlite/0001_releases.sql"),
    postgres: include_str!("../migrations/postgres/0001_releases.sql"),
}]);
