//! The repository after its database connections die, as in a PostgreSQL
//! failover or restart: every backend of its database is terminated from a
//! separate admin connection — while idle, while a read is in flight,
//! while a submission commits and while a review's statement is in flight —
//! and each call succeeds with the right data, each row stored once with
//! one audit event. SQLite has no connection to lose: there the calls
//! simply succeed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Harness, attest, example, example_at, submit_request};
use soma_mesh::ServiceKind;
use soma_proto::v1 as pb;

/// `GetSubmission` as `dave@acme`, on a task of its own so that it can be
/// in flight while the test kills its connection.
fn get(h: &Harness, id: &str) -> tokio::task::JoinHandle<Result<pb::Submission, tonic::Status>> {
    let mut client = h.gateway();
    let request = h.as_user(
        "acme",
        "dave@acme",
        pb::GetSubmissionRequest {
            submission_id: id.to_owned(),
        },
    );
    tokio::spawn(async move {
        client
            .get_submission(request)
            .await
            .map(tonic::Response::into_inner)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_submissions_and_reviews_survive_their_connections_dying() {
    for stores in soma_testing::engine_stores(&[ServiceKind::ToolRegistry, ServiceKind::CapsuleRepo]).await {
        let h = Harness::start(&stores, None).await;
        let first = h.submit_good("acme", &example()).await;
        let db = stores.test_db(ServiceKind::CapsuleRepo);
        if db.postgres_database().is_none() {
            // SQLite: a file of this process, no connection to lose.
            assert_eq!(get(&h, &first.submission_id).await.unwrap().unwrap(), first);
            h.stop().await;
            stores.cleanup().await;
            continue;
        }

        // Every pooled connection dies while idle.
        assert!(db.terminate_backends().await.unwrap() >= 1);
        assert_eq!(get(&h, &first.submission_id).await.unwrap().unwrap(), first);

        // A read in flight when its backend is terminated.
        let mut cut = db.interrupt_statement("submissions").await.unwrap();
        let read = get(&h, &first.submission_id);
        assert!(cut.kill_when_waiting().await >= 1);
        cut.release().await;
        assert_eq!(read.await.unwrap().unwrap(), first, "read in flight");

        // A submission whose COMMIT loses its connection (it did not
        // commit): the rerun writes it, once, with one audit event.
        let (submissions, outbox) = (h.count("submissions").await, h.count("outbox").await);
        let bundle = example_at("2.0.0");
        let envelope = attest(&bundle, &[&h.signer()]);
        let mut cut = db.interrupt_commit("submissions").await.unwrap();
        let write = tokio::spawn({
            let mut client = h.gateway();
            let request = h.as_user("acme", "alice@acme", submit_request(&bundle, &envelope));
            async move {
                client
                    .submit_capsule(request)
                    .await
                    .map(tonic::Response::into_inner)
            }
        });
        assert!(cut.kill_when_waiting().await >= 1);
        cut.release().await;
        let second = write.await.unwrap().expect("submission whose commit was cut");
        assert_eq!(h.count("submissions").await, submissions + 1, "stored once");
        assert_eq!(h.count("outbox").await, outbox + 1, "one audit event");
        assert_eq!(get(&h, &second.submission_id).await.unwrap().unwrap(), second);

        // A review whose statement is in flight when its backend is
        // terminated (a compare-and-set on the submission's MAC).
        let history = h.count("review_history").await;
        let mut cut = db.interrupt_statement("review_history").await.unwrap();
        let review = tokio::spawn({
            let mut client = h.gateway();
            let request = h.as_user(
                "acme",
                "bob@acme",
                pb::ReviewSubmissionRequest {
                    submission_id: second.submission_id.clone(),
                    decision: pb::ReviewDecision::StartReview as i32,
                    comment: "looking".to_owned(),
                },
            );
            async move {
                client
                    .review_submission(request)
                    .await
                    .map(tonic::Response::into_inner)
            }
        });
        assert!(cut.kill_when_waiting().await >= 1);
        cut.release().await;
        review.await.unwrap().expect("review in flight");
        assert_eq!(h.count("review_history").await, history + 1, "one history row");
        let reviewed = get(&h, &second.submission_id).await.unwrap().unwrap();
        assert_eq!(reviewed.state, pb::SubmissionState::InReview as i32);

        h.stop().await;
        stores.cleanup().await;
    }
}
