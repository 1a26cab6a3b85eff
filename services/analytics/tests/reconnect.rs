//! Analytics after its database connections die, as in a PostgreSQL
//! failover or restart: every backend of its database — the pool's and the
//! ledger writer's lease session — is terminated from a separate admin
//! connection, while idle, while a proof's read is in flight, while an
//! append's statement is in flight and while an append commits. Each call
//! succeeds with the right data, and each event is stored once, at one
//! ledger index. SQLite has no connection to lose: there the calls simply
//! succeed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{analytics_config, billing, client, inclusion_proof, start_analytics};
use soma_proto::v1 as pb;
use soma_proto::v1::analytics_client::AnalyticsClient;
use soma_store::Database;
use soma_testing::{Ca, grpc_reason, scalar};
use tonic::transport::Channel;

/// `RecordBillingEvent` as the tool registry sends it, on a task of its own
/// so that it can be in flight while the test kills its connection.
fn record(
    client: &AnalyticsClient<Channel>,
    event_id: &str,
) -> tokio::task::JoinHandle<Result<pb::RecordResponse, tonic::Status>> {
    let mut client = client.clone();
    let request = billing(event_id, "acme", 1000);
    tokio::spawn(async move {
        client
            .record_billing_event(request)
            .await
            .map(tonic::Response::into_inner)
    })
}

/// The event's rows: (billing rows, ledger leaves).
async fn stored(db: &Database, event_id: &str) -> (i64, i64) {
    (
        scalar(
            db,
            &format!("SELECT COUNT(*) FROM billing_events WHERE event_id = '{event_id}'"),
        )
        .await,
        scalar(
            db,
            &format!("SELECT COUNT(*) FROM ledger_leaves WHERE event_id = '{event_id}'"),
        )
        .await,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proofs_and_appends_survive_their_connections_dying() {
    for engine in soma_store::testing::engines("analytics").await {
        eprintln!("--- engine: {}", engine.label);
        let ca = Ca::new();
        let svc = start_analytics(&ca, &engine.settings, analytics_config(), None).await;
        let registry = client(&ca, &svc, "/svc/tool-registry");
        let mut operator = client(&ca, &svc, "/operator/auditor");
        let db = common::database(&engine.settings).await;
        let first = record(&registry, "bill-0").await.unwrap().unwrap();
        let first_index = first.ledger.as_ref().unwrap().index;

        if engine.postgres_database().is_some() {
            // Every connection dies while idle, the writer's session too.
            assert!(engine.terminate_backends().await.unwrap() >= 1);
            let proof = inclusion_proof(&mut operator, "acme/bill-0", 0).await;
            assert_eq!(proof.leaf_index, first_index, "read after the kill");
            // The next append finds the writer's session dead and is sent
            // again once the writer has the lease back. (Should the writer
            // have noticed first, by its idle check, the call is refused as
            // a standby's before it reaches the ledger — nothing written —
            // and is sent again, as callers do with standby refusals.)
            let second = match record(&registry, "bill-1").await.unwrap() {
                Ok(second) => second,
                Err(status) if grpc_reason(&status) == "standby" => {
                    assert_eq!(stored(&db, "bill-1").await, (0, 0));
                    let mut again = Err(status);
                    for _ in 0..100 {
                        again = record(&registry, "bill-1").await.unwrap();
                        if !matches!(&again, Err(s) if grpc_reason(s) == "standby") {
                            break;
                        }
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                    again.expect("append after the writer took the lease back")
                }
                Err(status) => panic!("append after the kill: {status:?}"),
            };
            assert_eq!(second.ledger.as_ref().unwrap().index, first_index + 1);
            assert_eq!(stored(&db, "bill-1").await, (1, 1), "stored once");

            // A proof's read in flight when its backend is terminated.
            let mut cut = engine.interrupt_statement("ledger_leaves").await.unwrap();
            let read = tokio::spawn({
                let mut operator = operator.clone();
                async move { inclusion_proof(&mut operator, "acme/bill-1", 0).await }
            });
            assert!(cut.kill_when_waiting().await >= 1);
            cut.release().await;
            assert_eq!(read.await.unwrap().leaf_index, first_index + 1, "read in flight");

            // An append whose statement is in flight when every backend,
            // the writer's session included, is terminated.
            let mut cut = engine.interrupt_statement("ledger_head").await.unwrap();
            let write = record(&registry, "bill-2");
            assert!(cut.kill_when_waiting().await >= 1);
            cut.release().await;
            let third = write.await.unwrap().expect("append in flight");
            assert_eq!(third.ledger.as_ref().unwrap().index, first_index + 2);
            assert_eq!(stored(&db, "bill-2").await, (1, 1), "stored once");

            // An append whose COMMIT loses its connection (it did not
            // commit): sent again, stored once.
            let mut cut = engine.interrupt_commit("ledger_leaves").await.unwrap();
            let write = record(&registry, "bill-3");
            assert!(cut.kill_when_waiting().await >= 1);
            cut.release().await;
            let fourth = write.await.unwrap().expect("append whose commit was cut");
            assert_eq!(fourth.ledger.as_ref().unwrap().index, first_index + 3);
            assert_eq!(stored(&db, "bill-3").await, (1, 1), "stored once");
            let proof = inclusion_proof(&mut operator, "acme/bill-3", 0).await;
            assert_eq!(proof.leaf_index, first_index + 3);
        } else {
            // SQLite: a file of this process, no connection to lose.
            let second = record(&registry, "bill-1").await.unwrap().unwrap();
            assert_eq!(second.ledger.as_ref().unwrap().index, first_index + 1);
            assert_eq!(
                inclusion_proof(&mut operator, "acme/bill-1", 0).await.leaf_index,
                first_index + 1
            );
        }

        svc.stop().await;
        db.close().await;
        engine.cleanup().await;
    }
}
