//! The registry after its database connections die, as in a PostgreSQL
//! failover or restart: every backend of its database is terminated from a
//! separate admin connection — while idle, while a read is in flight,
//! while a publish's statement is in flight and while a publish commits —
//! and each call succeeds with the right data, each release stored once
//! with one audit event. SQLite has no connection to lose: there the calls
//! simply succeed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{GATEWAY, Harness, Publisher, adapter};
use soma_mesh::ServiceKind;
use soma_proto::v1 as pb;

/// `GetRelease` of `tool@version` as tenant `acme`, on a task of its own so
/// that it can be in flight while the test kills its connection.
fn get_release(h: &Harness, version: &str) -> tokio::task::JoinHandle<Result<pb::Release, tonic::Status>> {
    let mut client = h.client(GATEWAY);
    let request = h.tenant(
        "acme",
        &["tools:read"],
        pb::GetReleaseRequest {
            tool: "text-stats".to_owned(),
            version: version.to_owned(),
        },
    );
    tokio::spawn(async move { client.get_release(request).await.map(tonic::Response::into_inner) })
}

/// `PublishRelease` as tenant `acme`, on a task of its own.
fn publish(
    h: &Harness,
    request: pb::PublishReleaseRequest,
) -> tokio::task::JoinHandle<Result<pb::Release, tonic::Status>> {
    let mut client = h.client(GATEWAY);
    let request = h.tenant("acme", &["tools:publish"], request);
    tokio::spawn(async move {
        client
            .publish_release(request)
            .await
            .map(tonic::Response::into_inner)
    })
}

async fn stored(h: &Harness, version: &str) -> i64 {
    soma_testing::scalar(
        &h.db,
        &format!("SELECT COUNT(*) FROM releases WHERE tool = 'text-stats' AND version = '{version}'"),
    )
    .await
}

async fn outbox(h: &Harness) -> i64 {
    soma_testing::scalar(&h.db, "SELECT COUNT(*) FROM outbox").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_and_publishes_survive_their_connections_dying() {
    for stores in soma_testing::engine_stores(&[ServiceKind::ToolRegistry]).await {
        let h = Harness::start(stores.of(ServiceKind::ToolRegistry)).await;
        let publisher = Publisher::generate("acme-tools");
        h.register(&publisher).await;
        let module = adapter("text_stats");
        let v1 = h
            .publish(publisher.release("text-stats", "1.0.0", &module))
            .await
            .unwrap();
        let db = stores.test_db(ServiceKind::ToolRegistry);
        if db.postgres_database().is_none() {
            // SQLite: a file of this process, no connection to lose.
            assert_eq!(get_release(&h, "1.0.0").await.unwrap().unwrap(), v1);
            h.stop().await;
            stores.cleanup().await;
            continue;
        }

        // Every pooled connection dies while idle.
        let killed = db.terminate_backends().await.unwrap();
        assert!(killed >= 1, "the registry's pool held connections");
        assert_eq!(
            get_release(&h, "1.0.0").await.unwrap().unwrap(),
            v1,
            "read after the kill"
        );

        // A read in flight when its backend is terminated.
        let mut cut = db.interrupt_statement("releases").await.unwrap();
        let read = get_release(&h, "1.0.0");
        assert!(cut.kill_when_waiting().await >= 1);
        cut.release().await;
        assert_eq!(read.await.unwrap().unwrap(), v1, "read in flight");

        // A publish whose statement is in flight when its backend is
        // terminated: retried, stored once, one audit event.
        let before = outbox(&h).await;
        let mut cut = db.interrupt_statement("releases").await.unwrap();
        let write = publish(&h, publisher.release("text-stats", "1.1.0", &module));
        assert!(cut.kill_when_waiting().await >= 1);
        cut.release().await;
        let v11 = write.await.unwrap().expect("publish in flight");
        assert_eq!(v11.version, "1.1.0");
        assert_eq!(stored(&h, "1.1.0").await, 1);
        assert_eq!(outbox(&h).await, before + 1, "one audit event");

        // A publish whose COMMIT loses its connection (the commit did not
        // happen): the rerun looks the release up, finds none, writes it.
        let before = outbox(&h).await;
        let mut cut = db.interrupt_commit("releases").await.unwrap();
        let write = publish(&h, publisher.release("text-stats", "1.2.0", &module));
        assert!(cut.kill_when_waiting().await >= 1);
        cut.release().await;
        let v12 = write.await.unwrap().expect("publish whose commit was cut");
        assert_eq!(v12.version, "1.2.0");
        assert_eq!(stored(&h, "1.2.0").await, 1);
        assert_eq!(outbox(&h).await, before + 1, "one audit event");
        assert_eq!(get_release(&h, "1.2.0").await.unwrap().unwrap(), v12);

        // An execution whose billing event's INSERT (its own commit) loses
        // its connection: the rerun looks the event up by its id, finds
        // none, writes it; one billing event.
        let mut cut = db.interrupt_commit("outbox").await.unwrap();
        let run = tokio::spawn({
            let mut client = h.client(GATEWAY);
            let request = h.tenant(
                "acme",
                &["tools:execute"],
                pb::ExecuteToolRequest {
                    tool: "text-stats".to_owned(),
                    version: "1.2.0".to_owned(),
                    input: Some(common::to_struct(&serde_json::json!({"text": "a b"}))),
                    run_id: String::new(),
                },
            );
            async move {
                client
                    .execute_tool(request)
                    .await
                    .map(tonic::Response::into_inner)
            }
        });
        assert!(cut.kill_when_waiting().await >= 1);
        cut.release().await;
        let run = run
            .await
            .unwrap()
            .expect("execution whose billing commit was cut");
        assert_eq!(
            soma_testing::scalar(
                &h.db,
                &format!(
                    "SELECT COUNT(*) FROM outbox WHERE kind = 'billing' AND event_id = '{}'",
                    run.billing_event_id
                ),
            )
            .await,
            1,
            "one billing event"
        );

        h.stop().await;
        stores.cleanup().await;
    }
}
