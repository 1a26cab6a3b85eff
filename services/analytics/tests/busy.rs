//! SQLite has one writer lock per file. Held by another connection for
//! longer than the busy timeout, the ledger writer cannot commit its batch:
//! the append is answered `UNAVAILABLE` `database_busy` (not INTERNAL, not
//! the writer's `unavailable`) — naming why, so that the caller knows it
//! may send it again — nothing of it is written, and the ledger is
//! unchanged: once the lock is gone the same event is stored once, at the
//! index it would have had, and the next one after it. SQLite only:
//! PostgreSQL has no file lock.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{analytics_config, billing, client, database, leaf_hashes, start_analytics};
use soma_proto::v1 as pb;
use soma_store::StoreSettings;
use soma_testing::{Ca, SqliteWriterLock, assert_database_busy, scalar};

async fn billing_rows(db: &soma_store::Database, event_id: &str) -> i64 {
    scalar(
        db,
        &format!("SELECT COUNT(*) FROM billing_events WHERE event_id = '{event_id}'"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_lock_held_past_the_busy_timeout_is_unavailable_database_busy_and_nothing_is_written() {
    let data_dir = tempfile::tempdir().unwrap();
    let store = StoreSettings::sqlite(data_dir.path());
    let ca = Ca::new();
    let svc = start_analytics(&ca, &store, analytics_config(), None).await;
    let mut registry = client(&ca, &svc, "/svc/tool-registry");
    let mut operator = client(&ca, &svc, "/operator/auditor");
    let db = database(&store).await;

    let first = registry
        .record_billing_event(billing("bill-0", "acme", 1000))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first.ledger.unwrap().index, 0);

    // Another connection takes the writer lock and keeps it past the
    // service's busy timeout (5 s).
    let locker = SqliteWriterLock::hold(&data_dir.path().join("analytics.db")).await;
    let refused = registry
        .record_billing_event(billing("bill-1", "acme", 1001))
        .await
        .unwrap_err();
    assert_database_busy(&refused);
    locker.release().await;

    // Nothing of it was written: no row, no leaf, the checkpoint unmoved.
    assert_eq!(billing_rows(&db, "bill-1").await, 0, "no billing row written");
    assert_eq!(leaf_hashes(&db).await.len(), 1, "no leaf written");
    let checkpoint = operator
        .ledger_checkpoint(pb::LedgerCheckpointRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(checkpoint.tree_size, 1);

    // The lock gone, the same event is stored once, at the next index, and
    // the ledger goes on from there.
    let again = registry
        .record_billing_event(billing("bill-1", "acme", 1001))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.ledger.unwrap().index, 1);
    let next = registry
        .record_billing_event(billing("bill-2", "acme", 1002))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next.ledger.unwrap().index, 2);
    assert_eq!(billing_rows(&db, "bill-1").await, 1);
    assert_eq!(leaf_hashes(&db).await.len(), 3);
    let checkpoint = operator
        .ledger_checkpoint(pb::LedgerCheckpointRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(checkpoint.tree_size, 3);
    svc.stop().await;
}
