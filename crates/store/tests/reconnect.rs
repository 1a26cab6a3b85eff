#![allow(clippy::unwrap_used, clippy::expect_used)]
//! A lost connection, for real: backends of a real PostgreSQL terminated
//! while a statement or a commit is in flight, and a database that stays
//! read-only like a standby that is never promoted. Each test runs on every
//! engine of `soma_store::testing::engines`; on SQLite there is no
//! connection to lose, and a retry runs its operation once.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use soma_store::testing::engines;
use soma_store::{
    ConnectionLost as _, Database, Engine, Migration, Migrations, RetryPolicy, StoreError, on_pool, retry,
};
use sqlx::Connection as _;

const ITEMS: Migration = Migration {
    version: 1,
    description: "items",
    sqlite: "CREATE TABLE items (id TEXT PRIMARY KEY, body TEXT NOT NULL);",
    postgres: "CREATE TABLE items (id TEXT PRIMARY KEY, body TEXT NOT NULL);",
};

/// A quick policy, so that giving up does not take the default 12 s.
const QUICK: RetryPolicy = RetryPolicy {
    max_attempts: 4,
    first_backoff: Duration::from_millis(10),
    max_backoff: Duration::from_millis(50),
    window: Duration::from_secs(60),
};

async fn open(engine: &soma_store::testing::TestDb) -> Database {
    let db = engine.connect().await;
    db.migrate(&Migrations(&[ITEMS])).await.unwrap();
    db
}

/// Inserts `(id, body)` once: `ON CONFLICT DO NOTHING`, so that running it
/// again cannot duplicate it.
async fn insert(db: &Database, id: &str, body: &str) -> Result<(), sqlx::Error> {
    on_pool!(db, pool => sqlx::query("INSERT INTO items (id, body) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING")
        .bind(id)
        .bind(body)
        .execute(pool)
        .await
        .map(drop))
}

async fn rows(db: &Database, id: &str) -> Vec<String> {
    on_pool!(db, pool => sqlx::query_scalar::<_, String>("SELECT body FROM items WHERE id = $1")
        .bind(id)
        .fetch_all(pool)
        .await
        .unwrap())
}

/// The statement in flight when its backend is terminated fails once; the
/// retry runs it on a new connection, and it is stored exactly once.
#[tokio::test]
async fn a_statement_whose_connection_died_is_run_again_on_a_new_one() {
    for engine in engines("store-reconnect-statement").await {
        let db = open(&engine).await;
        // Fill the pool: these connections all die below.
        insert(&db, "warm", "w").await.unwrap();
        let Some(mut interruption) = engine.interrupt_statement("items").await else {
            // SQLite: nothing to interrupt; one attempt, as without retry.
            let attempts = AtomicU32::new(0);
            retry!(policy: QUICK, db, "insert", sqlx::Error, {
                attempts.fetch_add(1, Ordering::Relaxed);
                insert(&db, "a", "body").await
            })
            .unwrap();
            assert_eq!(attempts.load(Ordering::Relaxed), 1, "{}", engine.label);
            assert_eq!(rows(&db, "a").await, ["body"]);
            engine.cleanup().await;
            continue;
        };
        let attempts = Arc::new(AtomicU32::new(0));
        let call = tokio::spawn({
            let db = db.clone();
            let attempts = Arc::clone(&attempts);
            async move {
                retry!(policy: QUICK, db, "insert", sqlx::Error, {
                    attempts.fetch_add(1, Ordering::Relaxed);
                    insert(&db, "a", "body").await
                })
            }
        });
        let killed = interruption.kill_when_waiting().await;
        assert!(killed >= 1, "the waiting backend was terminated");
        interruption.release().await;
        call.await
            .unwrap()
            .expect("the retry succeeds on a new connection");
        assert_eq!(
            attempts.load(Ordering::Relaxed),
            2,
            "one failed attempt, one retry"
        );
        assert_eq!(rows(&db, "a").await, ["body"], "stored exactly once");
        db.close().await;
        engine.cleanup().await;
    }
}

/// Without a retry the same interruption reaches the caller, classified
/// as a lost connection (the real error of a terminated backend).
#[tokio::test]
async fn a_terminated_backend_is_classified_as_a_lost_connection() {
    for engine in engines("store-reconnect-classify").await {
        let db = open(&engine).await;
        let Some(mut interruption) = engine.interrupt_statement("items").await else {
            engine.cleanup().await;
            continue;
        };
        let call = tokio::spawn({
            let db = db.clone();
            async move { insert(&db, "a", "body").await }
        });
        interruption.kill_when_waiting().await;
        interruption.release().await;
        let error = call.await.unwrap().expect_err("the statement's connection died");
        assert!(error.is_connection_lost(), "{error:?}");
        assert!(rows(&db, "a").await.is_empty(), "nothing was stored");
        db.close().await;
        engine.cleanup().await;
    }
}

/// A connection lost during `COMMIT` (which, here, did not commit: the
/// deferred trigger runs before the commit record) is reported as an
/// unknown outcome, never retried, and never as success.
#[tokio::test]
async fn a_commit_whose_connection_died_is_an_unknown_outcome_not_retried() {
    for engine in engines("store-reconnect-commit").await {
        let db = open(&engine).await;
        let Some(mut interruption) = engine.interrupt_commit("items").await else {
            engine.cleanup().await;
            continue;
        };
        let attempts = Arc::new(AtomicU32::new(0));
        let call = tokio::spawn({
            let db = db.clone();
            let attempts = Arc::clone(&attempts);
            async move {
                retry!(policy: QUICK, db, "insert in a transaction", StoreError, {
                    attempts.fetch_add(1, Ordering::Relaxed);
                    let pool = db.as_postgres().expect("postgres");
                    let query = |source| StoreError::Query { source };
                    let mut tx = pool.begin().await.map_err(query)?;
                    sqlx::query("INSERT INTO items (id, body) VALUES ($1, $2)")
                        .bind("c")
                        .bind("body")
                        .execute(&mut *tx)
                        .await
                        .map_err(query)?;
                    soma_store::commit(tx).await
                })
            }
        });
        interruption.kill_when_waiting().await;
        interruption.release().await;
        let error = call.await.unwrap().expect_err("the commit's connection died");
        assert!(
            matches!(error, StoreError::CommitOutcomeUnknown { .. }),
            "{error:?}"
        );
        assert_eq!(
            attempts.load(Ordering::Relaxed),
            1,
            "an unknown commit is not retried"
        );
        assert!(rows(&db, "c").await.is_empty(), "it did not commit");
        db.close().await;
        engine.cleanup().await;
    }
}

/// A server that stays read-only (a standby that is never promoted): each
/// attempt is refused with 25006 on a new connection, and the retry gives
/// up after the bound with that last error; nothing is written.
#[tokio::test]
async fn the_retry_gives_up_after_its_bound_with_the_last_error() {
    for engine in engines("store-reconnect-bound").await {
        let db = open(&engine).await;
        let attempts = Arc::new(AtomicU32::new(0));
        if let Some(database) = engine.postgres_database() {
            let url = engine.settings.database_url.clone().unwrap();
            let mut admin = sqlx::PgConnection::connect(&url).await.unwrap();
            sqlx::query(&format!(
                "ALTER DATABASE \"{database}\" SET default_transaction_read_only = on"
            ))
            .execute(&mut admin)
            .await
            .unwrap();
            admin.close().await.unwrap();
            // The pool's connections predate the setting: end them, so that
            // every attempt connects anew and finds the server read-only.
            engine.terminate_backends().await.unwrap();
        }
        let result = retry!(policy: QUICK, db, "insert", sqlx::Error, {
            attempts.fetch_add(1, Ordering::Relaxed);
            insert(&db, "r", "body").await
        });
        match db.engine() {
            Engine::Postgres => {
                let error = result.expect_err("a read-only server refuses the write");
                let code = error
                    .as_database_error()
                    .and_then(|e| e.code())
                    .map(|c| c.into_owned());
                assert_eq!(code.as_deref(), Some("25006"), "{error:?}");
                assert_eq!(attempts.load(Ordering::Relaxed), QUICK.max_attempts);
                assert!(rows(&db, "r").await.is_empty());
            }
            _ => {
                result.unwrap();
                assert_eq!(attempts.load(Ordering::Relaxed), 1);
            }
        }
        db.close().await;
        engine.cleanup().await;
    }
}

/// Errors that are not a lost connection are returned at once: a
/// constraint violation runs once, on both engines.
#[tokio::test]
async fn other_errors_are_never_retried() {
    for engine in engines("store-reconnect-other").await {
        let db = open(&engine).await;
        insert(&db, "dup", "first").await.unwrap();
        let attempts = AtomicU32::new(0);
        let error = retry!(policy: QUICK, db, "insert", sqlx::Error, {
            attempts.fetch_add(1, Ordering::Relaxed);
            on_pool!(db, pool => sqlx::query("INSERT INTO items (id, body) VALUES ($1, $2)")
                .bind("dup")
                .bind("second")
                .execute(pool)
                .await
                .map(drop))
        })
        .expect_err("a duplicate key");
        assert!(!error.is_connection_lost(), "{error:?}");
        assert_eq!(attempts.load(Ordering::Relaxed), 1, "{}", engine.label);
        assert_eq!(rows(&db, "dup").await, ["first"]);
        db.close().await;
        engine.cleanup().await;
    }
}

/// A pooled connection that still answers the pool's ping but refuses
/// writes (as one to a server that became read-only does, 25006) is not
/// handed out again after the loss is seen: the second attempt runs on a
/// newly opened connection, although every idle connection of the pool was
/// read-only.
#[tokio::test]
async fn connections_opened_before_a_loss_are_not_reused() {
    for engine in engines("store-reconnect-stale").await {
        let db = open(&engine).await;
        let Some(pool) = db.as_postgres() else {
            engine.cleanup().await;
            continue;
        };
        // Three connections at once, each turned read-only for its session,
        // then all returned to the pool, idle.
        let mut held = Vec::new();
        for _ in 0..3 {
            let mut conn = pool.acquire().await.unwrap();
            sqlx::query("SET SESSION default_transaction_read_only = on")
                .execute(&mut *conn)
                .await
                .unwrap();
            held.push(conn);
        }
        drop(held);
        // Returning is asynchronous (each is pinged first): wait until the
        // three are idle, so that the next acquire takes one of them.
        tokio::time::timeout(Duration::from_secs(30), async {
            while pool.num_idle() < 3 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the three connections come back to the pool");
        let attempts = AtomicU32::new(0);
        retry!(policy: QUICK, db, "insert", sqlx::Error, {
            attempts.fetch_add(1, Ordering::Relaxed);
            insert(&db, "s", "body").await
        })
        .expect("the second attempt runs on a new connection");
        assert_eq!(
            attempts.load(Ordering::Relaxed),
            2,
            "one read-only connection, then a new one"
        );
        assert_eq!(rows(&db, "s").await, ["body"]);
        db.close().await;
        engine.cleanup().await;
    }
}
