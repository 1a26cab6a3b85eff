//! The repository's migrations: publisher thresholds, submissions, review
//! history, installations, installation revisions and the outbox, for
//! SQLite and PostgreSQL.

use soma_store::{Migration, Migrations};

/// The service's migrations.
pub static MIGRATIONS: Migrations = Migrations(&[Migration {
    version: 1,
    description: "publisher thresholds, submissions, review history, installations, revisions, outbox",
    sqlite: include_str!("../migrations/sqlite/0001_capsules.sql"),
    postgres: include_str!("../migrations/postgres/0001_capsules.sql"),
}]);
