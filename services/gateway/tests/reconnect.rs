//! The gateway's kill switches after its database connections die, as in a
//! PostgreSQL failover or restart: the `Gateway` service served over real
//! mTLS on 127.0.0.1:0, called by an operator's SVID; every backend of its
//! database terminated from a separate admin connection — while idle, while
//! a change's statement is in flight, while the switches are re-read, and
//! while a change commits.
//!
//! A change is a transaction (the switch and its audit row): one lost
//! before `COMMIT` is retried and stored once; one lost during `COMMIT`
//! cannot be looked up (the audit row has no unique key), so it is refused
//! with `UNAVAILABLE` `database_unavailable` — and here, where the commit
//! did not happen, nothing was stored: never reported as success. SQLite
//! has no connection to lose: there the calls simply succeed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Served, serve_gateway};
use soma_gateway::killswitch::KillSwitches;
use soma_proto::v1 as pb;
use soma_proto::v1::gateway_client::GatewayClient;
use soma_store::Database;
use soma_testing::grpc_reason;
use tonic::transport::Channel;

fn change(target: &str, engaged: bool, reason: &str) -> pb::SetKillSwitchRequest {
    pb::SetKillSwitchRequest {
        scope: pb::KillSwitchScope::Tenant as i32,
        target: target.to_owned(),
        engaged,
        reason: reason.to_owned(),
        retry_after_seconds: 30,
    }
}

/// `SetKillSwitch` on a task of its own, so that it can be in flight while
/// the test kills its connection.
fn set(
    client: &GatewayClient<Channel>,
    request: pb::SetKillSwitchRequest,
) -> tokio::task::JoinHandle<Result<pb::KillSwitch, tonic::Status>> {
    let mut client = client.clone();
    tokio::spawn(async move {
        client
            .set_kill_switch(request)
            .await
            .map(tonic::Response::into_inner)
    })
}

async fn audited(db: &Database, reason: &str) -> i64 {
    soma_testing::scalar(
        db,
        &format!("SELECT COUNT(*) FROM kill_switch_audit WHERE reason = '{reason}'"),
    )
    .await
}

async fn engaged(db: &Database, target: &str) -> i64 {
    soma_testing::scalar(
        db,
        &format!("SELECT COUNT(*) FROM kill_switches WHERE target = '{target}' AND engaged = 1"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_switch_changes_and_reads_survive_their_connections_dying() {
    for engine in soma_store::testing::engines("gateway").await {
        eprintln!("--- engine: {}", engine.label);
        let db = engine.connect().await;
        let Served {
            running,
            client,
            poller,
            ..
        } = serve_gateway(&db).await;
        let first = set(&client, change("acme", true, "first"))
            .await
            .unwrap()
            .unwrap();
        assert!(first.engaged);

        if engine.postgres_database().is_none() {
            // SQLite: a file of this process, no connection to lose.
            set(&client, change("beta", true, "second"))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(audited(&db, "second").await, 1);
        } else {
            // Every pooled connection dies while idle.
            assert!(engine.terminate_backends().await.unwrap() >= 1);
            set(&client, change("beta", true, "second"))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(audited(&db, "second").await, 1);

            // A change whose statement is in flight (before COMMIT) when
            // its backend is terminated: retried, stored once.
            let mut cut = engine.interrupt_statement("kill_switch_audit").await.unwrap();
            let write = set(&client, change("gamma", true, "third"));
            assert!(cut.kill_when_waiting().await >= 1);
            cut.release().await;
            let third = write.await.unwrap().expect("change in flight before its commit");
            assert!(third.engaged);
            assert_eq!(audited(&db, "third").await, 1, "one audit row");
            assert_eq!(engaged(&db, "gamma").await, 1);

            // The switches re-read (the poller's read) while its backend is
            // terminated: retried, the snapshot holds every switch.
            let switches = KillSwitches::load(db.clone()).await.unwrap();
            let mut cut = engine.interrupt_statement("kill_switches").await.unwrap();
            let read = tokio::spawn({
                let switches = switches.clone();
                async move { switches.refresh().await }
            });
            assert!(cut.kill_when_waiting().await >= 1);
            cut.release().await;
            read.await.unwrap().expect("read in flight");
            let mut targets: Vec<String> = switches.list().iter().map(|s| s.target.clone()).collect();
            targets.sort();
            assert_eq!(targets, ["acme", "beta", "gamma"]);

            // A change whose COMMIT loses its connection: not retried, not
            // reported as stored — refused as unavailable; it did not
            // commit, and nothing of it is stored.
            let mut cut = engine.interrupt_commit("kill_switch_audit").await.unwrap();
            let write = set(&client, change("delta", true, "fourth"));
            assert!(cut.kill_when_waiting().await >= 1);
            cut.release().await;
            let refused = write.await.unwrap().expect_err("a commit of unknown outcome");
            assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
            assert_eq!(grpc_reason(&refused), "database_unavailable", "{refused:?}");
            assert_eq!(audited(&db, "fourth").await, 0, "nothing was committed");
            assert_eq!(engaged(&db, "delta").await, 0);
            // The operator sends it again: stored once.
            set(&client, change("delta", true, "fourth"))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(audited(&db, "fourth").await, 1);
        }

        running.stop().await;
        poller.abort();
        db.close().await;
        engine.cleanup().await;
    }
}
