#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `ExecuteCapsuleStep`: one step of a capsule run, on SQLite and
//! PostgreSQL, over real mTLS with the gateway's sealed claims.
//!
//! The release is checked at the call before anything compiles or runs (the
//! row as stored at that moment, the pinned module, the full verification),
//! and the step that ends a run writes the run's record in the transaction
//! of its billing event, with the tenant and the moderation decision of the
//! verified claims.

mod common;

use std::time::Duration;

use common::{Harness, Publisher, adapter, to_struct};
use prost::Message as _;
use serde_json::json;
use soma_mesh::ServiceKind;
use soma_proto::v1 as pb;
use soma_sandbox::SandboxConfig;
use soma_store::on_pool;
use soma_testing::grpc_reason;
use sqlx::Row as _;
use tonic::Code;

const DECISION: &str = "mod_0123456789abcdef";

/// A step of `tool@version` pinning `module` in run `run_id`.
fn step(
    tool: &str,
    version: &str,
    module: &[u8],
    run_id: &str,
    last_step: bool,
) -> pb::ExecuteCapsuleStepRequest {
    pb::ExecuteCapsuleStepRequest {
        execute: Some(pb::ExecuteToolRequest {
            tool: tool.to_owned(),
            version: version.to_owned(),
            input: Some(to_struct(&json!({"text": "hello"}))),
            run_id: run_id.to_owned(),
        }),
        module_sha256: soma_sign::sha256(module).to_vec(),
        run: Some(pb::CapsuleRunStep {
            capsule_id: "echo-capsule".to_owned(),
            capsule_version: "1.2.3".to_owned(),
            bundle_sha256: vec![7; 32],
            environment: "production".to_owned(),
            installation_revision: 4,
            started_at: Some(prost_types::Timestamp {
                seconds: 1_800_000_000,
                nanos: 5,
            }),
            elapsed: Some(prost_types::Duration { seconds: 3, nanos: 0 }),
            last_step,
        }),
    }
}

/// Every outbox row: (kind, event id, payload).
async fn outbox(h: &Harness) -> Vec<(String, String, Vec<u8>)> {
    on_pool!(h.db, pool => {
        sqlx::query("SELECT kind, event_id, payload FROM outbox ORDER BY seq")
            .fetch_all(pool)
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get::<String, _>(0), r.get::<String, _>(1), r.get::<Vec<u8>, _>(2)))
            .collect()
    })
}

/// The kinds of the outbox rows of run `run_id` (billing events carry it
/// in their payload, run records in their event id).
async fn kinds_of(h: &Harness, run_id: &str) -> Vec<String> {
    let mut kinds = Vec::new();
    for (kind, event_id, payload) in outbox(h).await {
        let of_run = match kind.as_str() {
            "billing" => {
                pb::RecordBillingEventRequest::decode(payload.as_slice())
                    .unwrap()
                    .run_id
                    == run_id
            }
            "capsule_run" => event_id == format!("capsule-{run_id}"),
            _ => false,
        };
        if of_run {
            kinds.push(kind);
        }
    }
    kinds
}

async fn record_of(h: &Harness, run_id: &str) -> pb::RecordCapsuleRunRequest {
    let (_, _, payload) = outbox(h)
        .await
        .into_iter()
        .find(|(kind, event_id, _)| kind == "capsule_run" && *event_id == format!("capsule-{run_id}"))
        .unwrap_or_else(|| panic!("no run record for {run_id}"));
    pb::RecordCapsuleRunRequest::decode(payload.as_slice()).unwrap()
}

/// The checks made at the call, each before anything compiles, runs or is
/// billed; what a step that does not end the run writes (its billing event
/// only); the run's record written with the last step's billing event (and
/// with the billing event of a step the sandbox stopped, wherever it is),
/// its tenant and moderation decision taken from the verified claims, its
/// duration the gateway's elapsed time plus the step's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capsule_step_is_checked_at_the_call_and_the_step_that_ends_the_run_records_it_with_its_billing() {
    for stores in soma_testing::engine_stores(&[ServiceKind::ToolRegistry]).await {
        let label = stores.label;
        let h = Harness::start_with(
            stores.of(ServiceKind::ToolRegistry),
            SandboxConfig::default(),
            None,
        )
        .await;
        let publisher = Publisher::generate("acme-tools");
        h.register(&publisher).await;
        let echo = adapter("echo");
        let trap = adapter("trap");
        h.publish(publisher.release("echo", "1.0.0", &echo))
            .await
            .unwrap();
        h.publish(publisher.release("trap", "1.0.0", &trap))
            .await
            .unwrap();
        let compiled = || h.registry.sandbox().counters().compiled;

        // Refused at the call: nothing compiled, nothing written.
        let before = (compiled(), outbox(&h).await.len());
        let mut short_pin = step("echo", "1.0.0", &echo, "run-a", true);
        short_pin.module_sha256.pop();
        let mut no_run = step("echo", "1.0.0", &echo, "run-a", true);
        no_run.run = None;
        let mut no_version = step("echo", "", &echo, "run-a", true);
        no_version.execute.as_mut().unwrap().version = String::new();
        let mut no_run_id = step("echo", "1.0.0", &echo, "", true);
        no_run_id.execute.as_mut().unwrap().run_id = String::new();
        let mut no_elapsed = step("echo", "1.0.0", &echo, "run-a", true);
        no_elapsed.run.as_mut().unwrap().elapsed = None;
        let refused = [
            (
                "another module pinned",
                step("echo", "1.0.0", &trap, "run-a", true),
                (Code::FailedPrecondition, "release_digest_mismatch"),
            ),
            (
                "a release that does not exist",
                step("echo", "9.9.9", &echo, "run-a", true),
                (Code::FailedPrecondition, "release_missing"),
            ),
            (
                "a pin of 31 bytes",
                short_pin,
                (Code::InvalidArgument, "invalid_argument"),
            ),
            ("no run", no_run, (Code::InvalidArgument, "invalid_argument")),
            (
                "no version",
                no_version,
                (Code::InvalidArgument, "invalid_argument"),
            ),
            (
                "no run id",
                no_run_id,
                (Code::InvalidArgument, "invalid_argument"),
            ),
            (
                "no elapsed time",
                no_elapsed,
                (Code::InvalidArgument, "invalid_argument"),
            ),
        ];
        for (name, request, expected) in refused {
            let status = h.execute_step("acme", DECISION, request).await.unwrap_err();
            assert_eq!(
                (status.code(), grpc_reason(&status)),
                expected,
                "{label}: {name}: {status:?}"
            );
        }
        assert_eq!(
            (compiled(), outbox(&h).await.len()),
            before,
            "{label}: a refused step compiled or wrote"
        );

        // A step that does not end the run: billed, no record.
        let first = h
            .execute_step("acme", DECISION, step("echo", "1.0.0", &echo, "run-b", false))
            .await
            .unwrap();
        assert_eq!(first.run_event_id, "", "{label}");
        assert_eq!(kinds_of(&h, "run-b").await, ["billing"], "{label}");

        // The last step: its billing event and the run's record.
        let last = h
            .execute_step("globex", DECISION, step("echo", "1.0.0", &echo, "run-b", true))
            .await
            .unwrap();
        assert_eq!(last.run_event_id, "capsule-run-b", "{label}");
        assert_eq!(
            kinds_of(&h, "run-b").await,
            ["billing", "billing", "capsule_run"],
            "{label}"
        );
        let record = record_of(&h, "run-b").await;
        let duration = Duration::try_from(record.duration.unwrap()).unwrap();
        assert!(
            duration > Duration::from_secs(3) && duration < Duration::from_secs(13),
            "{label}: the gateway's 3 s plus the step's own: {duration:?}"
        );
        assert_eq!(
            record,
            pb::RecordCapsuleRunRequest {
                event_id: "capsule-run-b".to_owned(),
                // The claims' tenant (the one the last step ran for).
                tenant: "globex".to_owned(),
                capsule_id: "echo-capsule".to_owned(),
                tool: "echo".to_owned(),
                run_id: "run-b".to_owned(),
                outcome: pb::RunOutcome::Succeeded as i32,
                started_at: Some(prost_types::Timestamp {
                    seconds: 1_800_000_000,
                    nanos: 5
                }),
                duration: record.duration,
                moderation_decision_id: DECISION.to_owned(),
                capsule_version: "1.2.3".to_owned(),
                bundle_sha256: vec![7; 32],
                environment: "production".to_owned(),
                installation_revision: 4,
            },
            "{label}"
        );

        // A step the sandbox stops ends the run, last or not: billed and
        // recorded as failed, in one commit.
        let status = h
            .execute_step("acme", DECISION, step("trap", "1.0.0", &trap, "run-c", false))
            .await
            .unwrap_err();
        assert_eq!(
            (status.code(), grpc_reason(&status)),
            (Code::Aborted, "trap"),
            "{label}"
        );
        assert_eq!(kinds_of(&h, "run-c").await, ["billing", "capsule_run"], "{label}");
        let record = record_of(&h, "run-c").await;
        assert_eq!(
            (record.outcome, record.tool.as_str(), record.tenant.as_str()),
            (pb::RunOutcome::Failed as i32, "trap", "acme"),
            "{label}"
        );

        h.stop().await;
        stores.cleanup().await;
    }
}

/// A revocation made by another replica a moment ago stops the step at
/// once: the step reads the release's row at the call, where `ExecuteTool`
/// may use a verdict up to `REVALIDATE_AFTER` old.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_on_another_replica_stops_the_next_step_at_once() {
    for stores in soma_testing::engine_stores(&[ServiceKind::ToolRegistry]).await {
        let label = stores.label;
        let store = stores.of(ServiceKind::ToolRegistry);
        let h = Harness::start(store).await;
        let publisher = Publisher::generate("acme-tools");
        h.register(&publisher).await;
        let echo = adapter("echo");
        h.publish(publisher.release("echo", "1.0.0", &echo))
            .await
            .unwrap();
        h.execute_step("acme", DECISION, step("echo", "1.0.0", &echo, "run-a", true))
            .await
            .unwrap();

        let replica = h.replica(store).await;
        let operator = soma_tool_registry::Actor {
            operator: true,
            ..soma_tool_registry::Actor::service("spiffe://somastack.test/operator/alice".to_owned())
        };
        replica
            .revoke(&operator, "echo", "1.0.0", "compromised")
            .await
            .unwrap();

        let status = h
            .execute_step("acme", DECISION, step("echo", "1.0.0", &echo, "run-b", true))
            .await
            .unwrap_err();
        assert_eq!(
            (status.code(), grpc_reason(&status)),
            (Code::FailedPrecondition, "release_revoked"),
            "{label}: {status:?}"
        );
        assert_eq!(kinds_of(&h, "run-b").await, Vec::<String>::new(), "{label}");
        h.stop().await;
        stores.cleanup().await;
    }
}

/// Who may call `ExecuteCapsuleStep`, and a release row edited in SQL: a
/// call without the gateway's claims, and one from another service with
/// them, are refused; a step of a release whose row fails its MAC is
/// `release_unverified` (`row_mac`) — nothing compiled, run or written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_capsule_step_needs_the_gateways_claims_and_refuses_an_edited_release_row() {
    for stores in soma_testing::engine_stores(&[ServiceKind::ToolRegistry]).await {
        let label = stores.label;
        let h = Harness::start(stores.of(ServiceKind::ToolRegistry)).await;
        let publisher = Publisher::generate("acme-tools");
        h.register(&publisher).await;
        let echo = adapter("echo");
        h.publish(publisher.release("echo", "1.0.0", &echo))
            .await
            .unwrap();
        let before = outbox(&h).await.len();

        // The gateway's SVID without claims: no tenant to run for.
        let status = h
            .client(common::GATEWAY)
            .execute_capsule_step(step("echo", "1.0.0", &echo, "run-a", true))
            .await
            .unwrap_err();
        assert_eq!(
            (status.code(), grpc_reason(&status)),
            (Code::PermissionDenied, "claims_required"),
            "{label}: {status:?}"
        );
        // Another service, even with sealed claims: not an allowed caller.
        let status = h
            .client("/svc/capsule-repo")
            .execute_capsule_step(h.tenant(
                "acme",
                &["tools:execute"],
                step("echo", "1.0.0", &echo, "run-a", true),
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::PermissionDenied, "{label}: {status:?}");

        // The release's row edited in SQL: its MAC fails at the call.
        soma_testing::exec(
            &h.db,
            "UPDATE releases SET revocation_reason = 'x' WHERE tool = 'echo'",
        )
        .await;
        let compiled = h.registry.sandbox().counters().compiled;
        let status = h
            .execute_step("acme", DECISION, step("echo", "1.0.0", &echo, "run-b", true))
            .await
            .unwrap_err();
        assert_eq!(
            (status.code(), grpc_reason(&status)),
            (Code::FailedPrecondition, "release_unverified"),
            "{label}: {status:?}"
        );
        assert!(status.message().contains("row_mac"), "{label}: {status:?}");
        assert_eq!(h.registry.sandbox().counters().compiled, compiled, "{label}");
        assert_eq!(outbox(&h).await.len(), before, "{label}: a refused step wrote");
        h.stop().await;
        stores.cleanup().await;
    }
}
