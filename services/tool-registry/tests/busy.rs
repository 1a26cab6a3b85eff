//! SQLite has one writer lock per file. Held by another connection for
//! longer than the busy timeout, an execution's billing event cannot be
//! written: the call is answered `UNAVAILABLE` `database_busy` (an overload
//! the caller may retry, never `INTERNAL`), and nothing is written; once
//! the lock is gone the same call is served and billed once. SQLite only:
//! PostgreSQL has no file lock (its row locks never refuse an insert).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Harness, Publisher, adapter};
use serde_json::json;
use soma_store::{StoreSettings, on_pool};
use soma_testing::{SqliteWriterLock, assert_database_busy};

async fn outbox_rows(h: &Harness) -> i64 {
    on_pool!(h.db, pool => sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM outbox")
        .fetch_one(pool)
        .await
        .unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_lock_held_past_the_busy_timeout_is_unavailable_database_busy_and_nothing_is_written() {
    let data_dir = tempfile::tempdir().unwrap();
    let store = StoreSettings::sqlite(data_dir.path());
    let h = Harness::start(&store).await;
    let publisher = Publisher::generate("acme-tools");
    h.register(&publisher).await;
    h.publish(publisher.release("text-stats", "1.0.0", &adapter("text_stats")))
        .await
        .unwrap();
    let input = json!({"text": "one two"});
    h.execute("acme", "text-stats", "1.0.0", input.clone())
        .await
        .unwrap();
    let before = outbox_rows(&h).await;

    // Another connection takes the writer lock and keeps it past the
    // service's busy timeout (5 s).
    let locker = SqliteWriterLock::hold(&data_dir.path().join("tool-registry.db")).await;
    let refused = h
        .execute("acme", "text-stats", "1.0.0", input.clone())
        .await
        .unwrap_err();
    assert_database_busy(&refused);
    locker.release().await;
    assert_eq!(outbox_rows(&h).await, before, "nothing was written");

    // The lock gone, the same call is served and billed once.
    h.execute("acme", "text-stats", "1.0.0", input).await.unwrap();
    assert_eq!(outbox_rows(&h).await, before + 1);
    h.stop().await;
}
