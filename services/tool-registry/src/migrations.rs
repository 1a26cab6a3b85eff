//! The registry's migrations: publisher keys, releases, modules and the
//! outbox, for SQLite and PostgreSQL.

use soma_store::{Migration, Migrations};

/// The service's migrations.
pub static MIGRATIONS: Migrations = Migrations(&[
    Migration {
        version: 1,
        description: "publisher keys, releases, modules, outbox",
        sqlite: include_str!("../migrations/sqlite/0001_releases.sql"),
        postgres: include_str!("../migrations/postgres/0001_releases.sql"),
    },
    Migration {
        version: 2,
        description: "capsule run records in the outbox",
        sqlite: include_str!("../migrations/sqlite/0002_capsule_run_records.sql"),
        postgres: include_str!("../migrations/postgres/0002_capsule_run_records.sql"),
    },
]);
