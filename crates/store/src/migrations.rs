//! A service's schema migrations, one SQL text per engine per version.

use std::collections::BTreeMap;
use std::pin::Pin;

use sqlx::error::BoxDynError;
use sqlx::migrate::{MigrationSource, MigrationType, Migrator};

use crate::error::StoreError;
use crate::settings::Engine;

/// One schema version of a service, written once per engine.
///
/// Services keep the texts in `migrations/{sqlite,postgres}/NNNN_name.sql`
/// and `include_str!` them. Once a version is applied its text is frozen:
/// the database stores a checksum of it, and a different text for an applied
/// version is refused with [`StoreError::MigrationChanged`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Migration {
    /// Version, positive and unique within the set; applied in ascending order.
    pub version: i64,
    /// Short description, recorded beside the version.
    pub description: &'static str,
    /// The SQL applied on SQLite.
    pub sqlite: &'static str,
    /// The SQL applied on PostgreSQL.
    pub postgres: &'static str,
}

/// All migrations of a service, in any order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Migrations(pub &'static [Migration]);

impl Migrations {
    /// Builds the sqlx migrator for `engine`: versions sorted, duplicates and
    /// non-positive versions refused, every migration run in a transaction,
    /// locking on (PostgreSQL advisory lock), applied versions that this set
    /// does not know refused rather than ignored.
    pub(crate) async fn migrator(&self, engine: Engine) -> Result<Migrator, StoreError> {
        let mut by_version = BTreeMap::new();
        for migration in self.0 {
            if migration.version <= 0 {
                return Err(StoreError::InvalidMigrationVersion {
                    version: migration.version,
                });
            }
            if by_version.insert(migration.version, migration).is_some() {
                return Err(StoreError::DuplicateMigration {
                    version: migration.version,
                });
            }
        }
        let resolved = by_version
            .into_values()
            .map(|m| {
                let sql = match engine {
                    Engine::Sqlite => m.sqlite,
                    Engine::Postgres => m.postgres,
                };
                sqlx::migrate::Migration::new(
                    m.version,
                    m.description.into(),
                    MigrationType::Simple,
                    sql.into(),
                    false,
                )
            })
            .collect();
        let mut migrator = Migrator::new(Resolved(resolved)).await?;
        migrator.set_ignore_missing(false);
        migrator.set_locking(true);
        Ok(migrator)
    }
}

/// Migrations already resolved in memory, handed to sqlx's migrator through
/// its public source trait.
type ResolveResult = Result<Vec<sqlx::migrate::Migration>, BoxDynError>;

#[derive(Debug)]
struct Resolved(Vec<sqlx::migrate::Migration>);

impl MigrationSource<'static> for Resolved {
    fn resolve(self) -> Pin<Box<dyn Future<Output = ResolveResult> + Send + 'static>> {
        Box::pin(async move { Ok(self.0) })
    }
}
