//! The gateway's migrations: the tables it owns (kill switches and their
//! audit, moderation rejections), for SQLite and PostgreSQL.

use soma_store::{Migration, Migrations};

/// The service's migrations.
pub static MIGRATIONS: Migrations = Migrations(&[Migration {
    version: 1,
    description: "kill switches and moderation audit",
    sqlite: include_str!("../migrations/sqlite/0001_kill_switches.sql"),
    postgres: include_str!("../migrations/postgres/0001_kill_switches.sql"),
}]);
