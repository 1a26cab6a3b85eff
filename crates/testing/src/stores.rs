//! Fresh databases of every engine, one per service.

use soma_mesh::ServiceKind;
use soma_store::StoreSettings;
use soma_store::testing::TestDb;

/// One engine's databases for one test: a fresh database per service, as
/// each service owns its database in production. (Two services cannot share
/// one PostgreSQL database: both would record their migrations, whose
/// versions overlap, in the one sqlx migration table.)
#[derive(Debug)]
pub struct Stores {
    /// `"sqlite"` or `"postgres"`.
    pub label: &'static str,
    dbs: Vec<(ServiceKind, TestDb)>,
}

impl Stores {
    /// The database settings of `kind` on this engine.
    ///
    /// # Panics
    /// When `kind` was not among the kinds asked of [`engine_stores`].
    pub fn of(&self, kind: ServiceKind) -> &StoreSettings {
        self.dbs
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, db)| &db.settings)
            .unwrap_or_else(|| panic!("{kind}: no database asked of engine_stores for it"))
    }

    /// The test database of `kind` on this engine, to terminate its
    /// backends or interrupt a statement in flight
    /// ([`TestDb::terminate_backends`], [`TestDb::interrupt_statement`]).
    ///
    /// # Panics
    /// When `kind` was not among the kinds asked of [`engine_stores`].
    pub fn test_db(&self, kind: ServiceKind) -> &TestDb {
        self.dbs
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, db)| db)
            .unwrap_or_else(|| panic!("{kind}: no database asked of engine_stores for it"))
    }

    /// Drops this engine's PostgreSQL databases and removes the data
    /// directories.
    pub async fn cleanup(self) {
        for (_, db) in self.dbs {
            db.cleanup().await;
        }
    }
}

/// For every engine of `soma_store::testing::engines` (SQLite; PostgreSQL
/// when `DATABASE_URL` is set, and always under `CI`), a fresh database for
/// each of `kinds`. Announces each engine on stderr as the test reaches it,
/// so that a failure's captured output says which engine failed.
#[expect(
    clippy::print_stderr,
    reason = "the harness captures it and shows it beside a failure: which engine failed"
)]
pub async fn engine_stores(kinds: &[ServiceKind]) -> impl Iterator<Item = Stores> {
    let mut engines: Vec<Stores> = Vec::new();
    for &kind in kinds {
        for (i, db) in soma_store::testing::engines(kind.name())
            .await
            .into_iter()
            .enumerate()
        {
            if i == engines.len() {
                engines.push(Stores {
                    label: db.label,
                    dbs: Vec::new(),
                });
            }
            assert_eq!(
                engines[i].label, db.label,
                "engines() must list the engines in one order"
            );
            engines[i].dbs.push((kind, db));
        }
    }
    engines
        .into_iter()
        .inspect(|stores| eprintln!("--- engine: {}", stores.label))
}
