#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Storage tests, each run on every engine of `soma_store::testing::engines`:
//! SQLite in a temp dir, and PostgreSQL when `DATABASE_URL` is set.

use std::io::ErrorKind;
use std::path::PathBuf;

use soma_store::testing::{TestDb, engines};
use soma_store::{Database, Engine, Migration, Migrations, StoreError, StoreSettings};

/// A small schema of two versions. Version 1 seeds one row, so a version
/// applied twice would show as two seed rows (or a failing CREATE TABLE).
const V1: Migration = Migration {
    version: 1,
    description: "notes",
    sqlite: "CREATE TABLE notes (
                 id INTEGER PRIMARY KEY,
                 tenant TEXT NOT NULL,
                 body TEXT NOT NULL,
                 created_at BIGINT NOT NULL
             );
             INSERT INTO notes (id, tenant, body, created_at) VALUES (0, 'seed', 'seed row', 0);",
    postgres: "CREATE TABLE notes (
                 id BIGINT PRIMARY KEY,
                 tenant TEXT NOT NULL,
                 body TEXT NOT NULL,
                 created_at BIGINT NOT NULL
             );
             INSERT INTO notes (id, tenant, body, created_at) VALUES (0, 'seed', 'seed row', 0);",
};

const V2: Migration = Migration {
    version: 2,
    description: "note tags",
    sqlite: "ALTER TABLE notes ADD COLUMN flagged INTEGER NOT NULL DEFAULT 0;
             CREATE TABLE tags (
                 note_id INTEGER NOT NULL REFERENCES notes (id),
                 tag TEXT NOT NULL,
                 PRIMARY KEY (note_id, tag)
             );",
    postgres: "ALTER TABLE notes ADD COLUMN flagged BOOLEAN NOT NULL DEFAULT FALSE;
             CREATE TABLE tags (
                 note_id BIGINT NOT NULL REFERENCES notes (id),
                 tag TEXT NOT NULL,
                 PRIMARY KEY (note_id, tag)
             );",
};

/// Version 1 with one changed character in each engine's text.
const V1_CHANGED: Migration = Migration {
    version: 1,
    description: "notes",
    sqlite: "CREATE TABLE notes (
                 id INTEGER PRIMARY KEY,
                 tenant TEXT NOT NULL,
                 body TEXT NOT NULL,
                 created_at BIGINT NOT NULL
             );
             INSERT INTO notes (id, tenant, body, created_at) VALUES (0, 'seed', 'seed row', 1);",
    postgres: "CREATE TABLE notes (
                 id BIGINT PRIMARY KEY,
                 tenant TEXT NOT NULL,
                 body TEXT NOT NULL,
                 created_at BIGINT NOT NULL
             );
             INSERT INTO notes (id, tenant, body, created_at) VALUES (0, 'seed', 'seed row', 1);",
};

/// Creates a table, then fails: the table must not survive.
const V3_FAILS: Migration = Migration {
    version: 3,
    description: "fails half-way",
    sqlite: "CREATE TABLE half (id INTEGER PRIMARY KEY); INSERT INTO no_such_table VALUES (1);",
    postgres: "CREATE TABLE half (id BIGINT PRIMARY KEY); INSERT INTO no_such_table VALUES (1);",
};

static SCHEMA: Migrations = Migrations(&[V1, V2]);
static SCHEMA_V1: Migrations = Migrations(&[V1]);
static SCHEMA_CHANGED: Migrations = Migrations(&[V1_CHANGED, V2]);
static SCHEMA_WITH_FAILING: Migrations = Migrations(&[V1, V2, V3_FAILS]);
static SCHEMA_EMPTY: Migrations = Migrations(&[]);

async fn scalar(db: &Database, sql: &str) -> i64 {
    match db.engine() {
        Engine::Sqlite => sqlx::query_scalar(sql)
            .fetch_one(db.as_sqlite().unwrap())
            .await
            .unwrap(),
        Engine::Postgres => sqlx::query_scalar(sql)
            .fetch_one(db.as_postgres().unwrap())
            .await
            .unwrap(),
        _ => unreachable!(),
    }
}

async fn applied_versions(db: &Database) -> Vec<i64> {
    let sql = "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version";
    match db.engine() {
        Engine::Sqlite => sqlx::query_scalar(sql)
            .fetch_all(db.as_sqlite().unwrap())
            .await
            .unwrap(),
        Engine::Postgres => sqlx::query_scalar(sql)
            .fetch_all(db.as_postgres().unwrap())
            .await
            .unwrap(),
        _ => unreachable!(),
    }
}

async fn table_exists(db: &Database, table: &str) -> bool {
    let n = match db.engine() {
        Engine::Sqlite => sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
        )
        .bind(table)
        .fetch_one(db.as_sqlite().unwrap())
        .await
        .unwrap(),
        Engine::Postgres => sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'public' AND table_name = $1",
        )
        .bind(table)
        .fetch_one(db.as_postgres().unwrap())
        .await
        .unwrap(),
        _ => unreachable!(),
    };
    n == 1
}

/// Writes the notes `ids` for `tenant` in ONE transaction; returns the first
/// error, in which case the transaction is dropped uncommitted.
async fn write_notes(db: &Database, tenant: &str, ids: &[i64]) -> Result<(), sqlx::Error> {
    match db.engine() {
        Engine::Sqlite => {
            let mut tx = db.as_sqlite().unwrap().begin().await?;
            for id in ids {
                sqlx::query("INSERT INTO notes (id, tenant, body, created_at) VALUES (?1, ?2, ?3, ?4)")
                    .bind(id)
                    .bind(tenant)
                    .bind(format!("note {id}"))
                    .bind(1_700_000_000_i64 + id)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await
        }
        Engine::Postgres => {
            let mut tx = db.as_postgres().unwrap().begin().await?;
            for id in ids {
                sqlx::query("INSERT INTO notes (id, tenant, body, created_at) VALUES ($1, $2, $3, $4)")
                    .bind(id)
                    .bind(tenant)
                    .bind(format!("note {id}"))
                    .bind(1_700_000_000_i64 + id)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await
        }
        _ => unreachable!(),
    }
}

async fn read_notes(db: &Database, tenant: &str) -> Vec<(i64, String, String, i64)> {
    match db.engine() {
        Engine::Sqlite => {
            sqlx::query_as("SELECT id, tenant, body, created_at FROM notes WHERE tenant = ?1 ORDER BY id")
                .bind(tenant)
                .fetch_all(db.as_sqlite().unwrap())
                .await
                .unwrap()
        }
        Engine::Postgres => {
            sqlx::query_as("SELECT id, tenant, body, created_at FROM notes WHERE tenant = $1 ORDER BY id")
                .bind(tenant)
                .fetch_all(db.as_postgres().unwrap())
                .await
                .unwrap()
        }
        _ => unreachable!(),
    }
}

fn expected_notes(tenant: &str, ids: &[i64]) -> Vec<(i64, String, String, i64)> {
    ids.iter()
        .map(|id| (*id, tenant.to_owned(), format!("note {id}"), 1_700_000_000 + id))
        .collect()
}

async fn finish(t: TestDb, db: Database) {
    db.close().await;
    t.cleanup().await;
}

#[tokio::test]
async fn engines_match_their_labels() {
    for t in engines("labels").await {
        let db = t.connect().await;
        let expected = if t.label == "sqlite" {
            Engine::Sqlite
        } else {
            Engine::Postgres
        };
        assert_eq!(db.engine(), expected, "{}", t.label);
        assert_eq!(
            db.as_sqlite().is_some(),
            expected == Engine::Sqlite,
            "{}",
            t.label
        );
        assert_eq!(
            db.as_postgres().is_some(),
            expected == Engine::Postgres,
            "{}",
            t.label
        );
        db.ping().await.unwrap();
        finish(t, db).await;
    }
}

#[tokio::test]
async fn migrations_apply_and_reapply_idempotently() {
    for t in engines("idempotent").await {
        let db = t.connect().await;
        db.migrate(&SCHEMA_V1).await.unwrap();
        assert_eq!(applied_versions(&db).await, vec![1], "{}", t.label);
        assert!(!table_exists(&db, "tags").await, "{}", t.label);

        // Adding version 2 applies only version 2.
        db.migrate(&SCHEMA).await.unwrap();
        assert_eq!(applied_versions(&db).await, vec![1, 2], "{}", t.label);
        assert!(table_exists(&db, "tags").await, "{}", t.label);

        // Re-applying changes nothing, from this handle and from a new one.
        db.migrate(&SCHEMA).await.unwrap();
        let again = t.connect().await;
        again.migrate(&SCHEMA).await.unwrap();
        again.close().await;
        assert_eq!(applied_versions(&db).await, vec![1, 2], "{}", t.label);
        assert_eq!(
            scalar(&db, "SELECT COUNT(*) FROM notes WHERE tenant = 'seed'").await,
            1,
            "{}",
            t.label
        );
        finish(t, db).await;
    }
}

#[tokio::test]
async fn a_changed_migration_text_is_refused() {
    for t in engines("changed").await {
        let db = t.connect().await;
        db.migrate(&SCHEMA).await.unwrap();
        let err = db.migrate(&SCHEMA_CHANGED).await.unwrap_err();
        assert!(
            matches!(err, StoreError::MigrationChanged { version: 1 }),
            "{}: {err:?}",
            t.label
        );
        // Nothing was re-run: still one seed row, with the original text's value.
        assert_eq!(
            scalar(&db, "SELECT created_at FROM notes WHERE id = 0").await,
            0,
            "{}",
            t.label
        );
        // The refusal released the migration lock: the original set still runs.
        db.migrate(&SCHEMA).await.unwrap();
        finish(t, db).await;
    }
}

#[tokio::test]
async fn an_applied_version_unknown_to_the_service_is_refused() {
    for t in engines("unknown-applied").await {
        let db = t.connect().await;
        db.migrate(&SCHEMA).await.unwrap();
        let err = db.migrate(&SCHEMA_V1).await.unwrap_err();
        assert!(
            matches!(err, StoreError::UnknownAppliedMigration { version: 2 }),
            "{}: {err:?}",
            t.label
        );
        let err = db.migrate(&SCHEMA_EMPTY).await.unwrap_err();
        assert!(
            matches!(err, StoreError::UnknownAppliedMigration { version: 1 }),
            "{}: {err:?}",
            t.label
        );
        finish(t, db).await;
    }
}

#[tokio::test]
async fn invalid_migration_sets_are_refused_before_touching_the_database() {
    static DUPLICATE: Migrations = Migrations(&[V1, V2, V1_CHANGED]);
    static ZERO: Migrations = Migrations(&[Migration { version: 0, ..V1 }]);
    for t in engines("invalid-sets").await {
        let db = t.connect().await;
        let err = db.migrate(&DUPLICATE).await.unwrap_err();
        assert!(
            matches!(err, StoreError::DuplicateMigration { version: 1 }),
            "{}: {err:?}",
            t.label
        );
        let err = db.migrate(&ZERO).await.unwrap_err();
        assert!(
            matches!(err, StoreError::InvalidMigrationVersion { version: 0 }),
            "{}: {err:?}",
            t.label
        );
        assert!(!table_exists(&db, "notes").await, "{}", t.label);
        assert!(!table_exists(&db, "_sqlx_migrations").await, "{}", t.label);
        finish(t, db).await;
    }
}

#[tokio::test]
async fn a_failing_migration_leaves_no_trace() {
    for t in engines("failing-migration").await {
        let db = t.connect().await;
        db.migrate(&SCHEMA).await.unwrap();
        let err = db.migrate(&SCHEMA_WITH_FAILING).await.unwrap_err();
        assert!(
            matches!(err, StoreError::MigrationFailed { version: 3, .. }),
            "{}: {err:?}",
            t.label
        );
        assert!(!table_exists(&db, "half").await, "{}", t.label);
        assert_eq!(applied_versions(&db).await, vec![1, 2], "{}", t.label);
        assert_eq!(
            scalar(&db, "SELECT COUNT(*) FROM _sqlx_migrations").await,
            2,
            "{}",
            t.label
        );
        finish(t, db).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_migrations_all_succeed_and_apply_once() {
    for t in engines("concurrent").await {
        // Separate handles (separate pools), as separate service replicas
        // would have, plus a clone sharing a pool.
        let a = t.connect().await;
        let b = t.connect().await;
        let c = t.connect().await;
        let d = a.clone();
        let runs = [a.clone(), b.clone(), c.clone(), d]
            .map(|db| tokio::spawn(async move { db.migrate(&SCHEMA).await }));
        for run in runs {
            run.await
                .unwrap()
                .unwrap_or_else(|e| panic!("{}: {e:?}", t.label));
        }
        assert_eq!(applied_versions(&a).await, vec![1, 2], "{}", t.label);
        assert_eq!(
            scalar(&a, "SELECT COUNT(*) FROM _sqlx_migrations").await,
            2,
            "{}",
            t.label
        );
        assert_eq!(
            scalar(&a, "SELECT COUNT(*) FROM notes WHERE tenant = 'seed'").await,
            1,
            "{}",
            t.label
        );
        b.close().await;
        c.close().await;
        finish(t, a).await;
    }
}

#[tokio::test]
async fn a_transaction_failing_midway_writes_nothing() {
    for t in engines("no-partial-write").await {
        let db = t.connect().await;
        db.migrate(&SCHEMA).await.unwrap();

        // Note 11 is written, then note 11 again violates the primary key:
        // the transaction is abandoned and note 11 must not remain.
        let err = write_notes(&db, "acme", &[10, 11, 11, 12]).await.unwrap_err();
        let db_err = err
            .as_database_error()
            .unwrap_or_else(|| panic!("{}: {err:?}", t.label));
        assert_eq!(
            db_err.kind(),
            sqlx::error::ErrorKind::UniqueViolation,
            "{}",
            t.label
        );
        assert_eq!(read_notes(&db, "acme").await, vec![], "{}", t.label);

        // The same write without the duplicate commits every row.
        write_notes(&db, "acme", &[10, 11, 12]).await.unwrap();
        assert_eq!(
            read_notes(&db, "acme").await,
            expected_notes("acme", &[10, 11, 12]),
            "{}",
            t.label
        );
        finish(t, db).await;
    }
}

#[tokio::test]
async fn foreign_keys_are_enforced() {
    for t in engines("foreign-keys").await {
        let db = t.connect().await;
        db.migrate(&SCHEMA).await.unwrap();
        let (ok, missing) = match db.engine() {
            Engine::Sqlite => {
                let pool = db.as_sqlite().unwrap();
                let ok = sqlx::query("INSERT INTO tags (note_id, tag) VALUES (0, 'x')")
                    .execute(pool)
                    .await;
                let missing = sqlx::query("INSERT INTO tags (note_id, tag) VALUES (999, 'x')")
                    .execute(pool)
                    .await;
                (ok.map(drop), missing.map(drop))
            }
            Engine::Postgres => {
                let pool = db.as_postgres().unwrap();
                let ok = sqlx::query("INSERT INTO tags (note_id, tag) VALUES (0, 'x')")
                    .execute(pool)
                    .await;
                let missing = sqlx::query("INSERT INTO tags (note_id, tag) VALUES (999, 'x')")
                    .execute(pool)
                    .await;
                (ok.map(drop), missing.map(drop))
            }
            _ => unreachable!(),
        };
        ok.unwrap();
        let err = missing.unwrap_err();
        let kind = err.as_database_error().map(|e| e.kind());
        assert_eq!(
            kind,
            Some(sqlx::error::ErrorKind::ForeignKeyViolation),
            "{}: {err:?}",
            t.label
        );
        finish(t, db).await;
    }
}

#[tokio::test]
async fn data_survives_reopening() {
    for t in engines("reopen").await {
        let db = t.connect().await;
        db.migrate(&SCHEMA).await.unwrap();
        write_notes(&db, "acme", &[1, 2, 3]).await.unwrap();
        db.close().await;
        assert!(db.ping().await.is_err(), "{}: a closed pool answered", t.label);

        let reopened = t.connect().await;
        reopened.migrate(&SCHEMA).await.unwrap();
        assert_eq!(
            read_notes(&reopened, "acme").await,
            expected_notes("acme", &[1, 2, 3]),
            "{}",
            t.label
        );
        assert_eq!(applied_versions(&reopened).await, vec![1, 2], "{}", t.label);
        finish(t, reopened).await;
    }
}

#[cfg(unix)]
#[tokio::test]
async fn sqlite_lives_in_a_private_data_dir_in_wal_mode() {
    use std::os::unix::fs::PermissionsExt;
    let mut t = None;
    for e in engines("layout").await {
        if e.label == "sqlite" {
            t = Some(e);
        } else {
            e.cleanup().await;
        }
    }
    let t = t.unwrap();
    let db = t.connect().await;
    let data_dir = t.settings.data_dir.clone();
    let mode = std::fs::metadata(&data_dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
    assert!(data_dir.join("layout.db").is_file());
    let pool = db.as_sqlite().unwrap();
    let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(journal, "wal");
    let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(fk, 1);
    let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
        .fetch_one(pool)
        .await
        .unwrap();
    assert!(busy > 0, "busy_timeout is {busy}");
    finish(t, db).await;
}

#[tokio::test]
async fn unreachable_postgres_fails_with_the_cause_and_no_secret() {
    // Port 1 on loopback: nothing listens there, the connection is refused.
    let settings = StoreSettings {
        data_dir: PathBuf::from("/nonexistent-soma-store-test"),
        database_url: Some("postgres://postgres:s3cret-pw@127.0.0.1:1/somadb".to_owned()),
    };
    let err = Database::connect(&settings, "analytics").await.unwrap_err();
    match &err {
        StoreError::Connect {
            engine: Engine::Postgres,
            target,
            source: sqlx::Error::Io(io),
        } => {
            assert_eq!(target, "127.0.0.1:1/somadb");
            assert_eq!(io.kind(), ErrorKind::ConnectionRefused);
        }
        other => panic!("expected a refused connection, got {other:?}"),
    }
    let message = err.to_string();
    assert_eq!(message, "cannot connect to postgres database 127.0.0.1:1/somadb");
    assert!(!format!("{err:?}").contains("s3cret-pw"));
    assert!(!format!("{settings:?}").contains("s3cret-pw"));
}

#[tokio::test]
async fn bad_settings_are_refused_with_their_own_error() {
    struct Case {
        name: &'static str,
        db_name: &'static str,
        database_url: Option<&'static str>,
        data_dir_is_a_file: bool,
        expected: fn(&StoreError) -> bool,
    }
    let cases = [
        Case {
            name: "empty name",
            db_name: "",
            database_url: None,
            data_dir_is_a_file: false,
            expected: |e| matches!(e, StoreError::InvalidName { name } if name.is_empty()),
        },
        Case {
            name: "path traversal in name",
            db_name: "../etc/passwd",
            database_url: None,
            data_dir_is_a_file: false,
            expected: |e| matches!(e, StoreError::InvalidName { name } if name == "../etc/passwd"),
        },
        Case {
            name: "uppercase name",
            db_name: "Analytics",
            database_url: None,
            data_dir_is_a_file: false,
            expected: |e| matches!(e, StoreError::InvalidName { .. }),
        },
        Case {
            name: "name too long",
            db_name: "a234567890123456789012345678901234567890123456789012345678901234",
            database_url: None,
            data_dir_is_a_file: false,
            expected: |e| matches!(e, StoreError::InvalidName { .. }),
        },
        Case {
            name: "not a postgres url",
            db_name: "analytics",
            database_url: Some("mysql://root@127.0.0.1/db"),
            data_dir_is_a_file: false,
            expected: |e| matches!(e, StoreError::InvalidDatabaseUrl { source: None }),
        },
        Case {
            name: "unparsable postgres url",
            db_name: "analytics",
            database_url: Some("postgres://127.0.0.1:notaport/db"),
            data_dir_is_a_file: false,
            expected: |e| matches!(e, StoreError::InvalidDatabaseUrl { source: Some(_) }),
        },
        Case {
            name: "data dir is a file",
            db_name: "analytics",
            database_url: None,
            data_dir_is_a_file: true,
            expected: |e| matches!(e, StoreError::DataDir { source, .. } if source.kind() == ErrorKind::AlreadyExists),
        },
    ];
    let scratch = tempfile::tempdir().unwrap();
    let file = scratch.path().join("a-file");
    std::fs::write(&file, b"not a directory").unwrap();
    for case in cases {
        let settings = StoreSettings {
            data_dir: if case.data_dir_is_a_file {
                file.clone()
            } else {
                scratch.path().join("data")
            },
            database_url: case.database_url.map(str::to_owned),
        };
        let err = Database::connect(&settings, case.db_name).await.unwrap_err();
        assert!((case.expected)(&err), "{}: {err:?}", case.name);
    }
}
