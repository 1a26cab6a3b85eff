//! Reviews: the lifecycle submitted → in_review → approved, and
//! changes_requested; every invalid transition; self-review; another
//! tenant; the append-only history (each row verified, one audit event per
//! transition); and a history row UPDATEd or DELETEd in SQL, which
//! `ListReviewHistory` and `GetSubmission` answer DATA_LOSS naming the row,
//! and `verify_store` names too.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Harness, example, example_at};
use soma_mesh::ServiceKind;
use soma_proto::v1 as pb;
use soma_proto::v1::ReviewDecision as D;
use soma_proto::v1::SubmissionState as S;
use soma_testing::grpc_reason;
use tonic::Code;

async fn history(h: &Harness, tenant: &str, id: &str) -> Result<Vec<pb::Review>, tonic::Status> {
    h.gateway()
        .list_review_history(h.as_user(
            tenant,
            &format!("dave@{tenant}"),
            pb::ListReviewHistoryRequest {
                submission_id: id.to_owned(),
            },
        ))
        .await
        .map(|r| r.into_inner().reviews)
}

async fn get(h: &Harness, tenant: &str, id: &str) -> Result<pb::Submission, tonic::Status> {
    h.gateway()
        .get_submission(h.as_user(
            tenant,
            &format!("dave@{tenant}"),
            pb::GetSubmissionRequest {
                submission_id: id.to_owned(),
            },
        ))
        .await
        .map(tonic::Response::into_inner)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reviews_follow_the_lifecycle_and_their_history_is_tamper_evident() {
    for stores in soma_testing::engine_stores(&[ServiceKind::ToolRegistry, ServiceKind::CapsuleRepo]).await {
        let h = Harness::start(&stores, None).await;
        let label = stores.label;
        let submission = h.submit_good("acme", &example()).await;
        let id = submission.submission_id.clone();

        // Refusals from `pending`, each with its code and reason, nothing written.
        struct Case {
            name: &'static str,
            tenant: &'static str,
            subject: &'static str,
            decision: D,
            expected: (Code, &'static str),
        }
        let cases = [
            Case {
                name: "the submitter reviews their own submission",
                tenant: "acme",
                subject: "alice@acme",
                decision: D::StartReview,
                expected: (Code::PermissionDenied, "self_review"),
            },
            Case {
                name: "approve before review started",
                tenant: "acme",
                subject: "bob@acme",
                decision: D::Approve,
                expected: (Code::FailedPrecondition, "invalid_transition"),
            },
            Case {
                name: "reject before review started",
                tenant: "acme",
                subject: "bob@acme",
                decision: D::Reject,
                expected: (Code::FailedPrecondition, "invalid_transition"),
            },
            Case {
                name: "request changes before review started",
                tenant: "acme",
                subject: "bob@acme",
                decision: D::RequestChanges,
                expected: (Code::FailedPrecondition, "invalid_transition"),
            },
            Case {
                name: "no decision",
                tenant: "acme",
                subject: "bob@acme",
                decision: D::Unspecified,
                expected: (Code::InvalidArgument, "decision_invalid"),
            },
            Case {
                name: "a reviewer of another tenant",
                tenant: "globex",
                subject: "carol@globex",
                decision: D::StartReview,
                expected: (Code::NotFound, "submission_not_found"),
            },
        ];
        let rows = || async { (h.count("review_history").await, h.count("outbox").await) };
        let before = rows().await;
        for case in &cases {
            let status = h
                .review(case.tenant, case.subject, &id, case.decision)
                .await
                .unwrap_err();
            assert_eq!(
                (status.code(), grpc_reason(&status)),
                case.expected,
                "{label}: {}: {status:?}",
                case.name
            );
            assert_eq!(rows().await, before, "{label}: {}", case.name);
        }
        // Another tenant is told the same as for an id that does not exist.
        let absent = h
            .review(
                "acme",
                "bob@acme",
                "0123456789abcdef0123456789abcdef",
                D::StartReview,
            )
            .await
            .unwrap_err();
        let foreign = h
            .review("globex", "carol@globex", &id, D::StartReview)
            .await
            .unwrap_err();
        assert_eq!(
            (absent.code(), grpc_reason(&absent)),
            (foreign.code(), grpc_reason(&foreign)),
            "{label}"
        );

        // Claims without MFA never reach the handler (the method's policy).
        let status = h
            .gateway()
            .review_submission(h.as_user_without_mfa(
                "acme",
                "bob@acme",
                pb::ReviewSubmissionRequest {
                    submission_id: id.clone(),
                    decision: D::StartReview as i32,
                    comment: String::new(),
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(
            (status.code(), grpc_reason(&status)),
            (Code::PermissionDenied, "mfa_required"),
            "{label}"
        );
        assert_eq!(rows().await, before, "{label}");

        // submitted → in_review → approved, each one history row and one audit event.
        let started = h.review("acme", "bob@acme", &id, D::StartReview).await.unwrap();
        assert_eq!(
            (
                started.sequence,
                started.from_state,
                started.to_state,
                started.reviewer.as_str()
            ),
            (1, S::Pending as i32, S::InReview as i32, "bob@acme"),
            "{label}"
        );
        assert_eq!(rows().await, (before.0 + 1, before.1 + 1), "{label}");
        let status = h
            .review("acme", "bob@acme", &id, D::StartReview)
            .await
            .unwrap_err();
        assert_eq!(
            (status.code(), grpc_reason(&status)),
            (Code::FailedPrecondition, "invalid_transition"),
            "{label}"
        );
        assert!(
            status.message().contains("from in_review to in_review"),
            "{label}: {status:?}"
        );
        let approved = h.review("acme", "bob@acme", &id, D::Approve).await.unwrap();
        assert_eq!(
            (approved.sequence, approved.from_state, approved.to_state),
            (2, S::InReview as i32, S::Approved as i32),
            "{label}"
        );
        assert_eq!(rows().await, (before.0 + 2, before.1 + 2), "{label}");
        for decision in [D::Reject, D::RequestChanges, D::Approve, D::StartReview] {
            let status = h.review("acme", "bob@acme", &id, decision).await.unwrap_err();
            assert_eq!(
                (status.code(), grpc_reason(&status)),
                (Code::FailedPrecondition, "invalid_transition"),
                "{label}: {decision:?} after approval"
            );
        }
        assert_eq!(
            get(&h, "acme", &id).await.unwrap().state,
            S::Approved as i32,
            "{label}"
        );
        let reviews = history(&h, "acme", &id).await.unwrap();
        assert_eq!(
            reviews
                .iter()
                .map(|r| (r.sequence, r.decision, r.from_state, r.to_state))
                .collect::<Vec<_>>(),
            vec![
                (1, D::StartReview as i32, S::Pending as i32, S::InReview as i32),
                (2, D::Approve as i32, S::InReview as i32, S::Approved as i32),
            ],
            "{label}"
        );
        // Another tenant sees neither the submission nor its history.
        for status in [
            get(&h, "globex", &id).await.unwrap_err(),
            history(&h, "globex", &id).await.unwrap_err(),
        ] {
            assert_eq!(
                (status.code(), grpc_reason(&status)),
                (Code::NotFound, "submission_not_found"),
                "{label}"
            );
        }

        // in_review → changes_requested, by an operator's token of another tenant.
        let second = h.submit_good("acme", &example_at("1.1.0")).await;
        let sid = second.submission_id.clone();
        h.review("acme", "bob@acme", &sid, D::StartReview).await.unwrap();
        let changes = h
            .gateway()
            .review_submission(h.as_operator_user(
                "platform",
                "root@platform",
                pb::ReviewSubmissionRequest {
                    submission_id: sid.clone(),
                    decision: D::RequestChanges as i32,
                    comment: "pin a newer release".into(),
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (changes.sequence, changes.to_state, changes.reviewer.as_str()),
            (2, S::ChangesRequested as i32, "root@platform"),
            "{label}"
        );
        let status = h.review("acme", "bob@acme", &sid, D::Approve).await.unwrap_err();
        assert_eq!(grpc_reason(&status), "invalid_transition", "{label}");

        // Every row verifies.
        let report = soma_capsule_repo::verify_store(&h.db, &h.keys()).await.unwrap();
        assert!(report.failures.is_empty(), "{label}: {:?}", report.failures);
        assert!(report.rows_checked >= 6, "{label}: {report:?}");

        // A history row UPDATEd in SQL: DATA_LOSS naming it, everywhere.
        soma_testing::exec(
            &h.db,
            &format!("UPDATE review_history SET comment = 'rewritten' WHERE submission_id = '{id}' AND sequence = 1"),
        )
        .await;
        let named = format!("review_history/{id}/1");
        for status in [
            history(&h, "acme", &id).await.unwrap_err(),
            get(&h, "acme", &id).await.unwrap_err(),
        ] {
            assert_eq!(
                (status.code(), grpc_reason(&status)),
                (Code::DataLoss, "row_integrity"),
                "{label}"
            );
            assert!(status.message().contains(&named), "{label}: {status:?}");
        }
        // A middle row DELETEd: the gap is named.
        soma_testing::exec(
            &h.db,
            &format!("DELETE FROM review_history WHERE submission_id = '{sid}' AND sequence = 1"),
        )
        .await;
        let status = history(&h, "acme", &sid).await.unwrap_err();
        assert_eq!(status.code(), Code::DataLoss, "{label}");
        assert!(
            status.message().contains(&format!("review_history/{sid}/1")),
            "{label}: {status:?}"
        );
        // No review lands on a broken history.
        let third = h.submit_good("acme", &example_at("1.2.0")).await;
        soma_testing::exec(
            &h.db,
            &format!(
                "UPDATE submissions SET state = 'approved' WHERE submission_id = '{}'",
                third.submission_id
            ),
        )
        .await;
        let status = get(&h, "acme", &third.submission_id).await.unwrap_err();
        assert_eq!(status.code(), Code::DataLoss, "{label}");
        assert!(
            status
                .message()
                .contains(&format!("submissions/{}", third.submission_id)),
            "{label}"
        );

        let report = soma_capsule_repo::verify_store(&h.db, &h.keys()).await.unwrap();
        let failed: Vec<(String, String)> = report
            .failures
            .iter()
            .map(|f| (f.table.clone(), f.primary_key.clone()))
            .collect();
        for expected in [
            ("review_history".to_owned(), format!("{id}/1")),
            ("review_history".to_owned(), format!("{sid}/1")),
            ("submissions".to_owned(), third.submission_id.clone()),
        ] {
            assert!(
                failed.contains(&expected),
                "{label}: {expected:?} not in {failed:?}"
            );
        }
        h.stop().await;
        stores.cleanup().await;
    }
}
