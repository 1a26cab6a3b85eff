//! Installations and runs: create, update and rollback with their revisions
//! (each verified by the ToolRegistry before it becomes active), the race of
//! two updates from one revision through two replicas sharing the database
//! (exactly one wins), `history=true`, a revision that fails on a revoked
//! release; ResolveCapsuleRun (not installed, bad input naming the field,
//! a release revoked after install; which releases a run's resolution
//! checks: all but the first step's, which ExecuteCapsuleStep checks before
//! it runs anything); and tenant isolation of everything.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Harness, OPERATOR, example, example_at, with_tools};
use serde_json::json;
use soma_mesh::ServiceKind;
use soma_proto::v1 as pb;
use soma_proto::v1::InstallationStatus as I;
use soma_proto::v1::capsule_repo_client::CapsuleRepoClient;
use soma_testing::grpc_reason;
use tonic::Code;
use tonic::transport::Channel;

fn update(id: &str, submission: &str, expected: u64) -> pb::UpdateInstallationRequest {
    pb::UpdateInstallationRequest {
        installation_id: id.to_owned(),
        submission_id: submission.to_owned(),
        expected_revision: expected,
    }
}

async fn update_via(
    h: &Harness,
    client: &mut CapsuleRepoClient<Channel>,
    request: pb::UpdateInstallationRequest,
) -> Result<pb::Installation, tonic::Status> {
    client
        .update_installation(h.as_user("acme", "erin@acme", request))
        .await
        .map(tonic::Response::into_inner)
}

async fn resolve(
    h: &Harness,
    tenant: &str,
    environment: &str,
    input: serde_json::Value,
) -> Result<pb::ResolvedCapsuleRun, tonic::Status> {
    h.gateway()
        .resolve_capsule_run(h.as_user(
            tenant,
            &format!("erin@{tenant}"),
            pb::ResolveCapsuleRunRequest {
                capsule: example().name().to_owned(),
                environment: environment.to_owned(),
                input: Some(common::registry::to_struct(&input)),
            },
        ))
        .await
        .map(tonic::Response::into_inner)
}

/// The first step of `resolved` as the gateway's runner executes it next
/// (`ExecuteCapsuleStep`, the release the capsule pins).
async fn execute_first(
    h: &Harness,
    tenant: &str,
    resolved: &pb::ResolvedCapsuleRun,
    input: serde_json::Value,
) -> Result<pb::ExecuteToolResponse, tonic::Status> {
    let step = &resolved.steps[0];
    h.registry
        .execute_step(
            tenant,
            "",
            pb::ExecuteCapsuleStepRequest {
                execute: Some(pb::ExecuteToolRequest {
                    tool: step.tool.clone(),
                    version: step.version.clone(),
                    input: Some(common::registry::to_struct(&input)),
                    run_id: "run-1".to_owned(),
                }),
                module_sha256: step.module_sha256.clone(),
                run: Some(pb::CapsuleRunStep {
                    capsule_id: resolved.capsule.clone(),
                    capsule_version: resolved.version.clone(),
                    bundle_sha256: resolved.bundle_sha256.clone(),
                    environment: "production".to_owned(),
                    installation_revision: resolved.revision,
                    started_at: Some(prost_types::Timestamp::default()),
                    elapsed: Some(prost_types::Duration::default()),
                    last_step: resolved.steps.len() == 1,
                }),
            },
        )
        .await
}

async fn list(
    h: &Harness,
    tenant: &str,
    request: pb::ListInstallationsRequest,
) -> pb::ListInstallationsResponse {
    h.gateway()
        .list_installations(h.as_user(tenant, &format!("erin@{tenant}"), request))
        .await
        .unwrap()
        .into_inner()
}

fn reason(status: &tonic::Status) -> (Code, &str) {
    (status.code(), grpc_reason(status))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installations_race_roll_back_keep_history_and_resolve_runs() {
    for stores in soma_testing::engine_stores(&[ServiceKind::ToolRegistry, ServiceKind::CapsuleRepo]).await {
        let h = Harness::start(&stores, None).await;
        let label = stores.label;
        let versions = ["1.0.0", "1.1.0", "1.2.0", "1.3.0", "1.4.0", "1.5.0", "1.6.0"];
        let mut approved = Vec::new();
        for version in versions {
            approved.push(h.approved("acme", &example_at(version)).await.submission_id);
        }
        let pending = h.submit_good("acme", &example_at("0.9.0")).await.submission_id;

        // Only an approved submission of the caller's own tenant installs.
        let create = |submission: &str, environment: &str| pb::CreateInstallationRequest {
            environment: environment.to_owned(),
            submission_id: submission.to_owned(),
        };
        let status = h
            .gateway()
            .create_installation(h.as_user("acme", "erin@acme", create(&pending, "production")))
            .await
            .unwrap_err();
        assert_eq!(
            reason(&status),
            (Code::FailedPrecondition, "submission_not_approved"),
            "{label}"
        );
        let status = h
            .gateway()
            .create_installation(h.as_user("globex", "carol@globex", create(&approved[0], "production")))
            .await
            .unwrap_err();
        assert_eq!(
            reason(&status),
            (Code::NotFound, "submission_not_found"),
            "{label}"
        );
        assert_eq!(h.count("installations").await, 0, "{label}");

        // Not installed: nothing to run.
        let status = resolve(&h, "acme", "production", json!({"text": "hi"}))
            .await
            .unwrap_err();
        assert_eq!(
            reason(&status),
            (Code::NotFound, "capsule_not_installed"),
            "{label}"
        );

        let created = h
            .gateway()
            .create_installation(h.as_user("acme", "erin@acme", create(&approved[0], "production")))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (
                created.revision,
                created.active_revision,
                created.status,
                created.tenant.as_str()
            ),
            (1, 1, I::Installed as i32, "acme"),
            "{label}"
        );
        assert_eq!(created.active_submission_id, approved[0], "{label}");
        let id = created.installation_id.clone();
        let status = h
            .gateway()
            .create_installation(h.as_user("acme", "erin@acme", create(&approved[1], "production")))
            .await
            .unwrap_err();
        assert_eq!(
            reason(&status),
            (Code::AlreadyExists, "installation_exists"),
            "{label}"
        );

        // A stale expected revision: ABORTED, nothing written.
        let revisions = h.count("installation_revisions").await;
        let status = update_via(&h, &mut h.gateway(), update(&id, &approved[1], 0))
            .await
            .unwrap_err();
        assert_eq!(reason(&status), (Code::Aborted, "revision_conflict"), "{label}");
        assert_eq!(h.count("installation_revisions").await, revisions, "{label}");

        // The race, three times: two updates from the same revision, one
        // through each of two replicas sharing the database. Exactly one wins.
        let (replica, mut other) = h.replica(stores.of(ServiceKind::CapsuleRepo)).await;
        let mut revision = 1;
        let mut winners = Vec::new();
        for round in 0..3 {
            let (a, b) = (&approved[1 + 2 * round], &approved[2 + 2 * round]);
            let mut mine = h.gateway();
            let (first, second) = tokio::join!(
                update_via(&h, &mut mine, update(&id, a, revision)),
                update_via(&h, &mut other, update(&id, b, revision)),
            );
            let outcomes = [&first, &second];
            let won: Vec<&pb::Installation> = outcomes.iter().filter_map(|r| r.as_ref().ok()).collect();
            let lost: Vec<&tonic::Status> = outcomes.iter().filter_map(|r| r.as_ref().err()).collect();
            assert_eq!(
                (won.len(), lost.len()),
                (1, 1),
                "{label}: round {round}: {first:?} {second:?}"
            );
            assert_eq!(
                reason(lost[0]),
                (Code::Aborted, "revision_conflict"),
                "{label}: round {round}"
            );
            revision += 1;
            assert_eq!(
                (won[0].revision, won[0].active_revision, won[0].status),
                (revision, revision, I::Installed as i32),
                "{label}: round {round}"
            );
            winners.push(won[0].submission_id.clone());
        }
        replica.stop().await;
        assert_eq!(h.count("installation_revisions").await, 4, "{label}");

        // Rollback: the previous installed revision's submission is active again.
        let rolled = h
            .gateway()
            .rollback_installation(h.as_user(
                "acme",
                "erin@acme",
                pb::RollbackInstallationRequest {
                    installation_id: id.clone(),
                    expected_revision: revision,
                },
            ))
            .await
            .unwrap()
            .into_inner();
        assert_eq!((rolled.revision, rolled.active_revision), (5, 5), "{label}");
        assert_eq!(rolled.active_submission_id, winners[1], "{label}");
        assert_eq!(rolled.submission_id, winners[1], "{label}");

        // history=true: every revision, newest first.
        let listed = list(
            &h,
            "acme",
            pb::ListInstallationsRequest {
                installation_id: id.clone(),
                history: true,
                ..Default::default()
            },
        )
        .await;
        assert_eq!(listed.installations.len(), 1, "{label}");
        assert_eq!(
            listed
                .revisions
                .iter()
                .map(|r| (r.revision, r.action.as_str(), r.status))
                .collect::<Vec<_>>(),
            vec![
                (5, "rollback", I::Installed as i32),
                (4, "update", I::Installed as i32),
                (3, "update", I::Installed as i32),
                (2, "update", I::Installed as i32),
                (1, "create", I::Installed as i32),
            ],
            "{label}"
        );
        assert_eq!(listed.revisions[0].submission_id, winners[1], "{label}");
        assert_eq!(listed.revisions[1].submission_id, winners[2], "{label}");
        assert_eq!(listed.revisions[4].submission_id, approved[0], "{label}");
        let without = list(&h, "acme", pb::ListInstallationsRequest::default()).await;
        assert!(without.revisions.is_empty(), "{label}");

        // Resolve: the active revision, its steps; bad input names the field.
        let run = resolve(&h, "acme", "production", json!({"text": "hello"}))
            .await
            .unwrap();
        let bundle = example();
        assert_eq!(
            (
                run.installation_id.as_str(),
                run.revision,
                run.submission_id.as_str(),
                run.capsule.as_str()
            ),
            (id.as_str(), 5, winners[1].as_str(), bundle.name()),
            "{label}"
        );
        assert_eq!(
            run.steps
                .iter()
                .map(|s| (s.tool.as_str(), s.version.as_str(), s.module_sha256.clone()))
                .collect::<Vec<_>>(),
            vec![(common::TOOL, "1.0.0", bundle.tools()[0].module_sha256.to_vec())],
            "{label}"
        );
        for (input, expected, field) in [
            (json!({"text": 5}), "input_wrong_type", "input.text"),
            (json!({}), "input_missing_field", "input.text"),
            (
                json!({"text": "hi", "extra": true}),
                "input_unknown_field",
                "input.extra",
            ),
        ] {
            let status = resolve(&h, "acme", "production", input.clone())
                .await
                .unwrap_err();
            assert_eq!(
                reason(&status),
                (Code::InvalidArgument, expected),
                "{label}: {input}"
            );
            assert!(status.message().contains(field), "{label}: {input}: {status:?}");
        }
        // Submissions page by page, oldest first, each once; by state.
        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let page = h
                .gateway()
                .list_submissions(h.as_user(
                    "acme",
                    "erin@acme",
                    pb::ListSubmissionsRequest {
                        page: Some(pb::PageRequest {
                            page_size: 3,
                            page_token: token.clone(),
                        }),
                        ..Default::default()
                    },
                ))
                .await
                .unwrap()
                .into_inner();
            assert!(page.submissions.len() <= 3, "{label}");
            seen.extend(page.submissions.into_iter().map(|s| s.submission_id));
            if page.next_page_token.is_empty() {
                break;
            }
            token = page.next_page_token;
        }
        let mut expected: Vec<String> = approved.clone();
        expected.push(pending.clone());
        seen.sort();
        expected.sort();
        assert_eq!(seen, expected, "{label}: every submission once");
        for (state, count) in [
            (pb::SubmissionState::Approved, 7),
            (pb::SubmissionState::Pending, 1),
        ] {
            let listed = h
                .gateway()
                .list_submissions(h.as_user(
                    "acme",
                    "erin@acme",
                    pb::ListSubmissionsRequest {
                        state: state as i32,
                        ..Default::default()
                    },
                ))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(listed.submissions.len(), count, "{label}: {state:?}");
        }
        let status = h
            .gateway()
            .list_submissions(h.as_user(
                "acme",
                "erin@acme",
                pb::ListSubmissionsRequest {
                    page: Some(pb::PageRequest {
                        page_size: 3,
                        page_token: "not-a-token".into(),
                    }),
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(
            reason(&status),
            (Code::InvalidArgument, "page_token_invalid"),
            "{label}"
        );

        let status = resolve(&h, "acme", "staging", json!({"text": "hi"}))
            .await
            .unwrap_err();
        assert_eq!(
            reason(&status),
            (Code::NotFound, "capsule_not_installed"),
            "{label}"
        );

        // Tenant isolation: globex sees, updates, rolls back and resolves nothing of acme's.
        let theirs = list(
            &h,
            "globex",
            pb::ListInstallationsRequest {
                installation_id: id.clone(),
                history: true,
                ..Default::default()
            },
        )
        .await;
        assert!(
            theirs.installations.is_empty() && theirs.revisions.is_empty(),
            "{label}"
        );
        let status = h
            .gateway()
            .update_installation(h.as_user("globex", "carol@globex", update(&id, &approved[0], 5)))
            .await
            .unwrap_err();
        assert_eq!(
            reason(&status),
            (Code::NotFound, "installation_not_found"),
            "{label}"
        );
        let status = h
            .gateway()
            .rollback_installation(h.as_user(
                "globex",
                "carol@globex",
                pb::RollbackInstallationRequest {
                    installation_id: id.clone(),
                    expected_revision: 5,
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(
            reason(&status),
            (Code::NotFound, "installation_not_found"),
            "{label}"
        );
        let status = resolve(&h, "globex", "production", json!({"text": "hi"}))
            .await
            .unwrap_err();
        assert_eq!(
            reason(&status),
            (Code::NotFound, "capsule_not_installed"),
            "{label}"
        );
        let listed = h
            .gateway()
            .list_submissions(h.as_user("globex", "carol@globex", pb::ListSubmissionsRequest::default()))
            .await
            .unwrap()
            .into_inner();
        assert!(listed.submissions.is_empty(), "{label}");
        // An operator's SVID reads across tenants.
        let all = h
            .client(OPERATOR)
            .list_installations(pb::ListInstallationsRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(all.installations.len(), 1, "{label}");

        // The release is revoked after install: the run is refused before
        // anything runs — the first step's release by its execution, the
        // gateway's next call after the resolution, which reads the row at
        // that moment — and a new revision fails verification while the
        // active one stays.
        h.revoke(common::TOOL, "1.0.0").await;
        let resolved = resolve(&h, "acme", "production", json!({"text": "hello"}))
            .await
            .unwrap();
        let status = execute_first(&h, "acme", &resolved, json!({"text": "hello"}))
            .await
            .unwrap_err();
        assert_eq!(
            reason(&status),
            (Code::FailedPrecondition, "release_revoked"),
            "{label}"
        );
        let failed = h
            .gateway()
            .update_installation(h.as_user("acme", "erin@acme", update(&id, &approved[0], 5)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (failed.revision, failed.status, failed.active_revision),
            (6, I::Failed as i32, 5),
            "{label}"
        );
        assert!(
            failed.failure_reason.starts_with("release_revoked"),
            "{label}: {failed:?}"
        );
        assert_eq!(failed.active_submission_id, winners[1], "{label}");
        let failed_only = list(
            &h,
            "acme",
            pb::ListInstallationsRequest {
                status: I::Failed as i32,
                ..Default::default()
            },
        )
        .await;
        assert_eq!(failed_only.installations.len(), 1, "{label}");

        // Every row verifies; a revision rewritten in SQL is DATA_LOSS.
        let report = soma_capsule_repo::verify_store(&h.db, &h.keys()).await.unwrap();
        assert!(report.failures.is_empty(), "{label}: {:?}", report.failures);
        soma_testing::exec(
            &h.db,
            &format!("UPDATE installation_revisions SET submission_id = '{}' WHERE installation_id = '{id}' AND revision = 5", approved[0]),
        )
        .await;
        let status = h
            .gateway()
            .list_installations(h.as_user("acme", "erin@acme", pb::ListInstallationsRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::DataLoss, "{label}");
        assert!(
            status
                .message()
                .contains(&format!("installation_revisions/{id}/5")),
            "{label}: {status:?}"
        );
        let report = soma_capsule_repo::verify_store(&h.db, &h.keys()).await.unwrap();
        assert_eq!(report.failures.len(), 1, "{label}: {:?}", report.failures);
        assert_eq!(report.failures[0].primary_key, format!("{id}/5"), "{label}");

        h.stop().await;
        stores.cleanup().await;
    }
}

/// A run's first step is checked in full by `ExecuteCapsuleStep`, the
/// gateway's next call after the resolution, before the registry compiles
/// or runs anything; every later step is checked in full by the
/// resolution, since its execution comes after an earlier step ran.
/// (Before, the resolution also verified the first step, the same check the
/// execution makes again: this test failed there on the first resolution.)
///
/// A stored module byte of `echo` is changed in SQL after both capsules are
/// installed: the capsule whose first step is `echo` still resolves, and
/// `ExecuteCapsuleStep` of that step refuses it `release_unverified`
/// (`module_digest`) without compiling it; the capsule that runs `echo`
/// second is refused at the resolution, the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_verified_in_full_before_anything_executes() {
    for stores in soma_testing::engine_stores(&[ServiceKind::ToolRegistry, ServiceKind::CapsuleRepo]).await {
        let h = Harness::start(&stores, None).await;
        let label = stores.label;
        let echo = common::registry::adapter("echo");
        h.registry
            .publish(h.publisher.release("echo", "1.0.0", &echo))
            .await
            .unwrap();
        let echo_ref = soma_capsule::ToolRef {
            tool: "echo".to_owned(),
            version: soma_release::Version::parse("1.0.0").unwrap(),
            module_sha256: soma_sign::sha256(&echo),
        };
        let stats_ref = example().tools()[0].clone();
        // Installed while every release verifies: echo first in
        // production, echo second in staging.
        for (version, environment, tools) in [
            ("2.0.0", "production", vec![echo_ref.clone()]),
            ("3.0.0", "staging", vec![stats_ref, echo_ref.clone()]),
        ] {
            let submission = h.approved("acme", &with_tools(version, &tools)).await;
            let installed = h
                .gateway()
                .create_installation(h.as_user(
                    "acme",
                    "erin@acme",
                    pb::CreateInstallationRequest {
                        environment: environment.to_owned(),
                        submission_id: submission.submission_id,
                    },
                ))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(installed.status, I::Installed as i32, "{label}: {environment}");
        }

        let mut tampered = echo.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 0x01;
        let hex: String = tampered.iter().map(|b| format!("{b:02x}")).collect();
        let blob = match label {
            "postgres" => format!("'\\x{hex}'::bytea"),
            _ => format!("X'{hex}'"),
        };
        let sql = format!(
            "UPDATE modules SET bytes = {blob} WHERE sha256 = (SELECT module_sha256 FROM releases WHERE tool = 'echo')"
        );
        assert_eq!(
            soma_testing::exec(&h.registry.db, &sql).await,
            1,
            "{label}: {sql}"
        );
        let compiled = || h.registry.registry.sandbox().counters().compiled;
        let before = compiled();

        // echo first: resolved; its ExecuteTool refuses it before compiling.
        let resolved = resolve(&h, "acme", "production", json!({"text": "hello"}))
            .await
            .unwrap();
        let steps: Vec<_> = resolved
            .steps
            .iter()
            .map(|s| (s.tool.as_str(), s.version.as_str(), s.module_sha256.as_slice()))
            .collect();
        assert_eq!(
            steps,
            [("echo", "1.0.0", echo_ref.module_sha256.as_slice())],
            "{label}"
        );
        let status = execute_first(&h, "acme", &resolved, json!({"text": "hello"}))
            .await
            .unwrap_err();
        assert_eq!(
            reason(&status),
            (Code::FailedPrecondition, "release_unverified"),
            "{label}: {status:?}"
        );
        assert_eq!(
            h.registry.failures("echo", "1.0.0").await,
            ["module_digest"],
            "{label}"
        );
        assert_eq!(compiled(), before, "{label}: a tampered module was compiled");

        // echo second: refused at the resolution, before the first step.
        let status = resolve(&h, "acme", "staging", json!({"text": "hello"}))
            .await
            .unwrap_err();
        assert_eq!(
            reason(&status),
            (Code::FailedPrecondition, "release_unverified"),
            "{label}: {status:?}"
        );
        h.stop().await;
    }
}

/// A run reads its installation, active revision and submission in one
/// statement, and refuses each row that fails its MAC or is missing
/// (`DATA_LOSS` naming the row), never running a capsule from a row edited
/// in SQL; the same rows untouched in another tenant still resolve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_refuses_an_installation_revision_or_submission_edited_in_sql() {
    for stores in soma_testing::engine_stores(&[ServiceKind::ToolRegistry, ServiceKind::CapsuleRepo]).await {
        let h = Harness::start(&stores, None).await;
        let label = stores.label;
        // (tenant, SQL edit on that tenant's rows, the row named)
        let cases: [(&str, &str, &str); 4] = [
            (
                "acme",
                "UPDATE installations SET updated_at = updated_at + 1 WHERE tenant = 'acme'",
                "installations/{installation}",
            ),
            (
                "globex",
                "UPDATE installation_revisions SET actor = 'mallory@globex' WHERE tenant = 'globex'",
                "installation_revisions/{installation}/1",
            ),
            (
                "initech",
                "DELETE FROM installation_revisions WHERE tenant = 'initech'",
                "installation_revisions/{installation}/1",
            ),
            (
                "umbrella",
                "UPDATE submissions SET submitter = 'mallory@umbrella' WHERE tenant = 'umbrella'",
                "submissions/{submission}",
            ),
        ];
        let mut installed = Vec::new();
        for (tenant, _, _) in &cases {
            let submission = h.approved(tenant, &example()).await.submission_id;
            let installation = h
                .gateway()
                .create_installation(h.as_user(
                    tenant,
                    &format!("erin@{tenant}"),
                    pb::CreateInstallationRequest {
                        environment: "production".to_owned(),
                        submission_id: submission.clone(),
                    },
                ))
                .await
                .unwrap()
                .into_inner();
            assert_eq!(installation.status, I::Installed as i32, "{label}: {tenant}");
            resolve(&h, tenant, "production", json!({"text": "hi"}))
                .await
                .unwrap();
            installed.push((installation.installation_id, submission));
        }
        for ((tenant, sql, row), (installation, submission)) in cases.iter().zip(&installed) {
            assert!(soma_testing::exec(&h.db, sql).await >= 1, "{label}: {sql}");
            let status = resolve(&h, tenant, "production", json!({"text": "hi"}))
                .await
                .unwrap_err();
            let row = row
                .replace("{installation}", installation)
                .replace("{submission}", submission);
            assert_eq!(
                reason(&status),
                (Code::DataLoss, "row_integrity"),
                "{label}: {sql}: {status:?}"
            );
            assert!(
                status.message().contains(&row),
                "{label}: {sql}: expected {row} in {status:?}"
            );
        }
        h.stop().await;
        stores.cleanup().await;
    }
}
