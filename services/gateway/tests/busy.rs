//! SQLite has one writer lock per file. Held by another connection for
//! longer than the busy timeout, a kill switch change cannot be stored: the
//! `Gateway` service (served over real mTLS on 127.0.0.1:0, called by an
//! operator's SVID) answers `UNAVAILABLE` `database_busy` — naming why, so
//! that the operator knows the change may be sent again — and nothing is
//! written; once the lock is gone the same change is stored once. SQLite
//! only: PostgreSQL has no file lock.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Served, serve_gateway};
use soma_proto::v1 as pb;
use soma_store::{Database, StoreSettings};
use soma_testing::{SqliteWriterLock, assert_database_busy};

fn change(target: &str) -> pb::SetKillSwitchRequest {
    pb::SetKillSwitchRequest {
        scope: pb::KillSwitchScope::Tenant as i32,
        target: target.to_owned(),
        engaged: true,
        reason: format!("incident on {target}"),
        retry_after_seconds: 30,
    }
}

async fn rows(db: &Database, table: &str, target: &str) -> i64 {
    soma_testing::scalar(
        db,
        &format!("SELECT COUNT(*) FROM {table} WHERE target = '{target}'"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_lock_held_past_the_busy_timeout_is_unavailable_database_busy_and_nothing_is_written() {
    let data_dir = tempfile::tempdir().unwrap();
    let store = StoreSettings::sqlite(data_dir.path());
    let db = Database::connect(&store, "gateway").await.unwrap();
    let Served {
        running,
        mut client,
        poller,
        ..
    } = serve_gateway(&db).await;

    // Another connection takes the writer lock and keeps it past the
    // gateway's busy timeout (5 s).
    let locker = SqliteWriterLock::hold(&data_dir.path().join("gateway.db")).await;
    let refused = client.set_kill_switch(change("acme")).await.unwrap_err();
    assert_database_busy(&refused);
    locker.release().await;
    assert_eq!(rows(&db, "kill_switches", "acme").await, 0, "no switch written");
    assert_eq!(
        rows(&db, "kill_switch_audit", "acme").await,
        0,
        "no audit row written"
    );

    // The lock gone, the same change is stored once.
    let stored = client.set_kill_switch(change("acme")).await.unwrap().into_inner();
    assert!(stored.engaged);
    assert_eq!(rows(&db, "kill_switches", "acme").await, 1);
    assert_eq!(rows(&db, "kill_switch_audit", "acme").await, 1);
    running.stop().await;
    poller.abort();
}
