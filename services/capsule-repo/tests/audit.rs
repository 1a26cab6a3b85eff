//! Audit delivery: what the repository records (a submission, each review
//! transition, an installation revision, a publisher threshold) reaches a
//! real Analytics over mTLS through the outbox, each event once, and the
//! outbox drains, as its figures on `/metrics` say.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

#[path = "../../analytics/tests/common/mod.rs"]
mod analytics;

use std::time::{Duration, Instant};

use common::{CAPSULE_REPO, Harness, OPERATOR, example};
use soma_mesh::ServiceKind;
use soma_proto::v1 as pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_change_is_an_audit_event_in_analytics_exactly_once() {
    for stores in soma_testing::engine_stores(&[
        ServiceKind::ToolRegistry,
        ServiceKind::CapsuleRepo,
        ServiceKind::Analytics,
    ])
    .await
    {
        let label = stores.label;
        let h = Harness::start(&stores, None).await;
        let service = analytics::start_analytics(
            &h.registry.ca,
            stores.of(ServiceKind::Analytics),
            analytics::analytics_config(),
            None,
        )
        .await;
        let to_analytics = soma_testing::channel(
            h.registry.ca.store(CAPSULE_REPO, Duration::from_secs(3600)),
            service.addr,
            &service.id,
        );
        let deliverer = h.repo.spawn_outbox(to_analytics);

        h.client(OPERATOR)
            .set_publisher_threshold(pb::SetPublisherThresholdRequest {
                publisher: "acme-tools".into(),
                threshold: 1,
            })
            .await
            .unwrap();
        let submission = h.approved("acme", &example()).await;
        h.gateway()
            .create_installation(h.as_user(
                "acme",
                "erin@acme",
                pb::CreateInstallationRequest {
                    environment: "production".into(),
                    submission_id: submission.submission_id.clone(),
                },
            ))
            .await
            .unwrap();

        let seen = analytics::database(stores.of(ServiceKind::Analytics)).await;
        let expected = [
            ("", "publisher_threshold.set", 1),
            ("acme", "capsule.submit", 1),
            ("acme", "capsule.review", 2),
            ("acme", "capsule.install", 1),
        ];
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut counts = Vec::new();
            for (tenant, action, _) in expected {
                counts.push(
                    soma_testing::scalar(
                        &seen,
                        &format!("SELECT COUNT(*) FROM audit_events WHERE tenant = '{tenant}' AND action = '{action}'"),
                    )
                    .await,
                );
            }
            let want: Vec<i64> = expected.iter().map(|(_, _, n)| *n).collect();
            if counts == want && h.repo.outbox_backlog().await.unwrap() == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{label}: audit events {counts:?}, expected {want:?}, outbox {}",
                h.repo.outbox_backlog().await.unwrap()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(h.count("outbox").await, 0, "{label}");
        // The repository's /metrics: the five events delivered, none
        // waiting (as measured after the round that delivered the last).
        let want = [
            "soma_outbox_pending_events{outbox=\"capsule_repo\"} 0\n",
            "soma_outbox_oldest_pending_age_seconds{outbox=\"capsule_repo\"} 0\n",
            "soma_outbox_delivered_total{outbox=\"capsule_repo\"} 5\n",
        ];
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let exposition = soma_testing::http_get(h.running.admin, "/metrics").await;
            if want.iter().all(|line| exposition.contains(line)) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{label}: want {want:?} in\n{exposition}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let subject = soma_testing::scalar_text(
            &seen,
            "SELECT subject FROM audit_events WHERE action = 'capsule.submit'",
        )
        .await;
        assert_eq!(
            subject,
            format!("submission:{}", submission.submission_id),
            "{label}"
        );

        deliverer.abort();
        seen.close().await;
        service.stop().await;
        h.stop().await;
        stores.cleanup().await;
    }
}
