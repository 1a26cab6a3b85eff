//! Persona regressions and anomaly scans, on SQLite and on PostgreSQL,
//! through the real service over mTLS: the whole transition table, stale
//! expectations, concurrent transitions, each transition and each scan in
//! the ledger with inclusion proofs that verify offline, robust outlier
//! scores checked against an independent computation, and bad input that
//! writes nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{
    analytics_config, billing_of, capsule_run_of, client, database, inclusion_proof, start_analytics, ts,
    verify_proof,
};
use soma_auth::ClaimsSigner;
use soma_proto::v1 as pb;
use soma_proto::v1::RegressionState as S;
use soma_proto::v1::analytics_client::AnalyticsClient;
use soma_store::Database;
use soma_testing::{Ca, Running, exec, grpc_reason, scalar, tenant_request};
use tonic::Code;
use tonic::transport::Channel;

/// 2026-09-21T14:13:20Z.
const T0: i64 = 1_790_000_000;

const WRITE: &[&str] = &["regressions:write"];
const SCAN: &[&str] = &["anomalies:scan"];

struct Env {
    /// Kept alive for the service's lifetime (its temp dir holds the authority).
    _ca: Ca,
    svc: Running,
    claims: ClaimsSigner,
    gateway: AnalyticsClient<Channel>,
    tool_registry: AnalyticsClient<Channel>,
    operator: AnalyticsClient<Channel>,
    db: Database,
}

impl Env {
    async fn start(settings: &soma_store::StoreSettings) -> Self {
        let ca = Ca::new();
        let (claims, _) = ClaimsSigner::generate("gateway-1").unwrap();
        let svc = start_analytics(&ca, settings, analytics_config(), Some(&claims)).await;
        let gateway = client(&ca, &svc, "/svc/gateway");
        let tool_registry = client(&ca, &svc, "/svc/tool-registry");
        let operator = client(&ca, &svc, "/operator/auditor");
        // A second handle on the service's database, to look and to tamper.
        let db = database(settings).await;
        Self {
            _ca: ca,
            svc,
            claims,
            gateway,
            tool_registry,
            operator,
            db,
        }
    }

    async fn tree_size(&mut self) -> u64 {
        self.operator
            .ledger_checkpoint(pb::LedgerCheckpointRequest {})
            .await
            .unwrap()
            .into_inner()
            .tree_size
    }

    async fn transition(
        &mut self,
        tenant: &str,
        request: pb::TransitionPersonaRegressionRequest,
    ) -> Result<pb::PersonaRegression, tonic::Status> {
        let req = tenant_request(&self.claims, &self.svc.id, tenant, WRITE, request);
        self.gateway
            .transition_persona_regression(req)
            .await
            .map(tonic::Response::into_inner)
    }

    async fn create(&mut self, id: &str) -> pb::PersonaRegression {
        self.transition("acme", create(id)).await.unwrap()
    }

    /// Moves `id` (at `version`) to `to`, expecting `version`.
    async fn step(&mut self, id: &str, version: u64, to: S) -> Result<pb::PersonaRegression, tonic::Status> {
        self.transition("acme", step(id, to, S::Unspecified, version))
            .await
    }

    /// A fresh regression driven along the canonical path to `state`.
    async fn at(&mut self, id: &str, state: S) -> pb::PersonaRegression {
        let mut r = self.create(id).await;
        for to in path_to(state) {
            r = self.step(id, r.version, *to).await.unwrap();
        }
        assert_eq!(r.state, state as i32);
        r
    }

    /// Verifies the inclusion proof of `event_id` at leaf `index` against
    /// the latest checkpoint, offline.
    async fn assert_included(&mut self, event_id: &str, index: u64, leaf_hash: &[u8]) {
        let checkpoint = self
            .operator
            .ledger_checkpoint(pb::LedgerCheckpointRequest {})
            .await
            .unwrap()
            .into_inner();
        let proof = inclusion_proof(&mut self.operator, event_id, 0).await;
        assert_eq!(proof.leaf_index, index, "{event_id}");
        assert_eq!(proof.leaf_hash, leaf_hash, "{event_id}");
        verify_proof(&proof, checkpoint.tree_size, &checkpoint.root_hash);
    }

    async fn stop(self) {
        self.db.close().await;
        self.svc.stop().await;
    }
}

fn create(id: &str) -> pb::TransitionPersonaRegressionRequest {
    pb::TransitionPersonaRegressionRequest {
        regression_id: id.to_owned(),
        persona: "support-agent".to_owned(),
        to: S::Queued as i32,
        expected_state: 0,
        expected_version: 0,
        reason: "nightly persona suite".to_owned(),
    }
}

fn step(id: &str, to: S, expected_state: S, expected_version: u64) -> pb::TransitionPersonaRegressionRequest {
    pb::TransitionPersonaRegressionRequest {
        regression_id: id.to_owned(),
        persona: String::new(),
        to: to as i32,
        expected_state: expected_state as i32,
        expected_version,
        reason: format!("moving to {}", to.as_str_name()),
    }
}

/// The canonical way from a fresh (queued) regression to `state`.
fn path_to(state: S) -> &'static [S] {
    match state {
        S::Queued => &[],
        S::Running => &[S::Running],
        S::Passed => &[S::Running, S::Passed],
        S::Failed => &[S::Running, S::Failed],
        S::Promoted => &[S::Running, S::Passed, S::Promoted],
        S::RolledBack => &[S::Running, S::Failed, S::RolledBack],
        S::Cancelled => &[S::Cancelled],
        S::Unspecified => unreachable!(),
    }
}

const STATES: [S; 7] = [
    S::Queued,
    S::Running,
    S::Passed,
    S::Failed,
    S::Promoted,
    S::RolledBack,
    S::Cancelled,
];

/// The documented transition table, written out independently of the
/// service's code.
const LEGAL: [(S, S); 9] = [
    (S::Queued, S::Running),
    (S::Queued, S::Cancelled),
    (S::Running, S::Passed),
    (S::Running, S::Failed),
    (S::Running, S::Cancelled),
    (S::Passed, S::Promoted),
    (S::Passed, S::RolledBack),
    (S::Failed, S::Promoted),
    (S::Failed, S::RolledBack),
];

fn stored_name(state: S) -> &'static str {
    match state {
        S::Queued => "queued",
        S::Running => "running",
        S::Passed => "passed",
        S::Failed => "failed",
        S::Promoted => "promoted",
        S::RolledBack => "rolled_back",
        S::Cancelled => "cancelled",
        S::Unspecified => unreachable!(),
    }
}

#[tokio::test]
async fn every_transition_of_the_table() {
    for db in soma_store::testing::engines("analytics").await {
        let mut env = Env::start(&db.settings).await;
        let label = db.label;
        let mut n = 0;

        // Every legal transition succeeds, bumps the version by one and
        // appends exactly one leaf, whose inclusion proof verifies.
        for (from, to) in LEGAL {
            n += 1;
            let id = format!("legal-{n}");
            let before = env.at(&id, from).await;
            let size = env.tree_size().await;
            let after = env.step(&id, before.version, to).await.unwrap();
            assert_eq!(after.state, to as i32, "{label} {from:?} -> {to:?}");
            assert_eq!(after.version, before.version + 1, "{label} {from:?} -> {to:?}");
            assert_eq!(after.persona, "support-agent");
            assert_eq!(after.tenant, "acme");
            assert_eq!(env.tree_size().await, size + 1, "{label} {from:?} -> {to:?}");
            let entry = after.ledger.unwrap();
            assert_eq!(entry.index, size);
            env.assert_included(
                &format!("regression:{id}:{}", after.version),
                entry.index,
                &entry.leaf_hash,
            )
            .await;
        }

        // Every other pair is FAILED_PRECONDITION naming the current state,
        // and writes nothing.
        for from in STATES {
            for to in STATES {
                if LEGAL.contains(&(from, to)) {
                    continue;
                }
                n += 1;
                let id = format!("illegal-{n}");
                let before = env.at(&id, from).await;
                let size = env.tree_size().await;
                let err = env.step(&id, before.version, to).await.unwrap_err();
                assert_eq!(
                    err.code(),
                    Code::FailedPrecondition,
                    "{label} {from:?} -> {to:?}: {err:?}"
                );
                assert_eq!(grpc_reason(&err), "illegal_transition");
                let current = stored_name(from);
                assert!(
                    err.message().contains(&format!("is in state {current}:")),
                    "{label} {from:?} -> {to:?}: {}",
                    err.message()
                );
                assert_eq!(env.tree_size().await, size, "{label} {from:?} -> {to:?}");
                let stored = scalar(
                    &env.db,
                    &format!("SELECT version FROM persona_regressions WHERE regression_id = '{id}'"),
                )
                .await;
                assert_eq!(stored as u64, before.version);
            }
        }

        // Every transition left its audit row, and the sweep finds every row sound.
        let transitions = scalar(&env.db, "SELECT COUNT(*) FROM persona_regression_transitions").await;
        assert_eq!(transitions as u64, env.tree_size().await, "{label}");
        let sweep = env
            .operator
            .verify_store(pb::VerifyStoreRequest {})
            .await
            .unwrap()
            .into_inner();
        assert!(sweep.failures.is_empty(), "{label}: {:?}", sweep.failures);

        env.stop().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn expectations_creation_tenancy_and_tampering() {
    for db in soma_store::testing::engines("analytics").await {
        let mut env = Env::start(&db.settings).await;
        let label = db.label;

        // Creation: the first transition of an unknown id must be QUEUED.
        let created = env.create("reg-1").await;
        assert_eq!((created.state, created.version), (S::Queued as i32, 1));
        env.assert_included("regression:reg-1:1", 0, &created.ledger.unwrap().leaf_hash)
            .await;
        let running = env.step("reg-1", 1, S::Running).await.unwrap();
        assert_eq!(running.version, 2);
        let size = env.tree_size().await;

        struct Case {
            name: &'static str,
            tenant: &'static str,
            input: pb::TransitionPersonaRegressionRequest,
            code: Code,
            reason: &'static str,
            message: &'static str,
        }
        let mut no_persona = create("reg-new");
        no_persona.persona = String::new();
        let mut long_id = create("x");
        long_id.regression_id = "r".repeat(97);
        let mut bad_to = step("reg-1", S::Passed, S::Unspecified, 2);
        bad_to.to = 99;
        let mut bad_expected = step("reg-1", S::Passed, S::Unspecified, 2);
        bad_expected.expected_state = 42;
        let mut bad_reason = step("reg-1", S::Passed, S::Unspecified, 2);
        bad_reason.reason = "line\nbreak".to_owned();
        let mut other_persona = step("reg-1", S::Passed, S::Unspecified, 2);
        other_persona.persona = "sales-agent".to_owned();
        let cases = vec![
            Case {
                name: "stale expected_version",
                tenant: "acme",
                input: step("reg-1", S::Passed, S::Unspecified, 1),
                code: Code::Aborted,
                reason: "stale_version",
                message: "regression reg-1 is in state running at version 2",
            },
            Case {
                name: "stale expected_state",
                tenant: "acme",
                input: step("reg-1", S::Passed, S::Queued, 0),
                code: Code::Aborted,
                reason: "stale_version",
                message: "regression reg-1 is in state running at version 2",
            },
            Case {
                name: "right version, wrong state",
                tenant: "acme",
                input: step("reg-1", S::Passed, S::Queued, 2),
                code: Code::Aborted,
                reason: "stale_version",
                message: "regression reg-1 is in state running at version 2",
            },
            Case {
                name: "no expectation",
                tenant: "acme",
                input: step("reg-1", S::Passed, S::Unspecified, 0),
                code: Code::InvalidArgument,
                reason: "invalid_argument",
                message: "expected_version: expected_state or expected_version is required",
            },
            Case {
                name: "re-creating an existing regression",
                tenant: "acme",
                input: create("reg-1"),
                code: Code::FailedPrecondition,
                reason: "illegal_transition",
                message: "regression reg-1 is in state running: running -> queued is not allowed",
            },
            Case {
                name: "unknown regression, not QUEUED",
                tenant: "acme",
                input: step("reg-ghost", S::Running, S::Queued, 1),
                code: Code::NotFound,
                reason: "not_found",
                message: "regression reg-ghost does not exist",
            },
            Case {
                name: "another tenant's regression",
                tenant: "globex",
                input: step("reg-1", S::Passed, S::Unspecified, 2),
                code: Code::NotFound,
                reason: "not_found",
                message: "regression reg-1 does not exist",
            },
            Case {
                name: "creation without persona",
                tenant: "acme",
                input: no_persona,
                code: Code::InvalidArgument,
                reason: "invalid_argument",
                message: "persona: required",
            },
            Case {
                name: "id too long",
                tenant: "acme",
                input: long_id,
                code: Code::InvalidArgument,
                reason: "invalid_argument",
                message: "regression_id: longer than 96",
            },
            Case {
                name: "unknown target state",
                tenant: "acme",
                input: bad_to,
                code: Code::InvalidArgument,
                reason: "invalid_argument",
                message: "to: unknown value 99",
            },
            Case {
                name: "unknown expected state",
                tenant: "acme",
                input: bad_expected,
                code: Code::InvalidArgument,
                reason: "invalid_argument",
                message: "expected_state: unknown value 42",
            },
            Case {
                name: "control character in reason",
                tenant: "acme",
                input: bad_reason,
                code: Code::InvalidArgument,
                reason: "invalid_argument",
                message: "reason: control characters",
            },
            Case {
                name: "another persona",
                tenant: "acme",
                input: other_persona,
                code: Code::InvalidArgument,
                reason: "invalid_argument",
                message: "persona: regression reg-1 is for persona",
            },
        ];
        for case in cases {
            let err = env.transition(case.tenant, case.input).await.unwrap_err();
            assert_eq!(err.code(), case.code, "{label} {}: {err:?}", case.name);
            assert_eq!(grpc_reason(&err), case.reason, "{label} {}", case.name);
            assert!(
                err.message().starts_with(case.message),
                "{label} {}: {}",
                case.name,
                err.message()
            );
            assert_eq!(
                env.tree_size().await,
                size,
                "{label} {}: nothing written",
                case.name
            );
        }
        assert_eq!(
            scalar(&env.db, "SELECT COUNT(*) FROM persona_regressions").await,
            1,
            "{label}"
        );

        // Without tenant claims (a service over mTLS) there is no tenant to act for.
        let err = env
            .tool_registry
            .transition_persona_regression(step("reg-1", S::Passed, S::Unspecified, 2))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{label}");

        // The state row's MAC is checked on read: a state changed in SQL is
        // DATA_LOSS, and so is an older, validly MACed row written back.
        let snapshot = "SELECT state, version, last_event_id, updated_at, row_version, mac_key_id, mac \
                        FROM persona_regressions WHERE regression_id = 'reg-1'";
        exec(&env.db, &format!("CREATE TABLE reg_snapshot AS {snapshot}")).await;
        let passed = env.step("reg-1", 2, S::Passed).await.unwrap();
        assert_eq!(passed.version, 3);
        exec(
            &env.db,
            "UPDATE persona_regressions SET state = 'failed' WHERE regression_id = 'reg-1'",
        )
        .await;
        let err = env.step("reg-1", 3, S::Promoted).await.unwrap_err();
        assert_eq!(err.code(), Code::DataLoss, "{label}: {err:?}");
        exec(
            &env.db,
            "UPDATE persona_regressions SET state = s.state, version = s.version, last_event_id = s.last_event_id, \
             updated_at = s.updated_at, row_version = s.row_version, mac_key_id = s.mac_key_id, mac = s.mac \
             FROM reg_snapshot AS s WHERE regression_id = 'reg-1'",
        )
        .await;
        let size = env.tree_size().await;
        let err = env.step("reg-1", 2, S::Failed).await.unwrap_err();
        assert_eq!(err.code(), Code::DataLoss, "{label}: rolled-back row: {err:?}");
        assert_eq!(env.tree_size().await, size);
        let sweep = env
            .operator
            .verify_store(pb::VerifyStoreRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            sweep.failures,
            vec![pb::StoreFailure {
                table: "persona_regressions".to_owned(),
                primary_key: "reg-1".to_owned(),
                reason: "the ledger holds a later transition (row rolled back)".to_owned(),
            }],
            "{label}"
        );

        env.stop().await;
        db.cleanup().await;
    }
}

/// Regression ids are per tenant: a tenant that takes an id first does not
/// keep another from using it (no squatting), each tenant's record moves on
/// its own, and each tenant's requests see only its own.
#[tokio::test]
async fn a_regression_id_is_per_tenant_and_cannot_be_squatted() {
    for db in soma_store::testing::engines("analytics").await {
        let mut env = Env::start(&db.settings).await;
        let label = db.label;
        // Globex takes "reg-1" first and moves it on.
        let squatted = env.transition("globex", create("reg-1")).await.unwrap();
        assert_eq!(
            (squatted.state, squatted.version),
            (S::Queued as i32, 1),
            "{label}"
        );
        let squatted = env
            .transition("globex", step("reg-1", S::Running, S::Unspecified, 1))
            .await
            .unwrap();
        assert_eq!(
            (squatted.state, squatted.version),
            (S::Running as i32, 2),
            "{label}"
        );
        // Acme's own "reg-1" is created as if the id were unused.
        let own = env.create("reg-1").await;
        assert_eq!((own.state, own.version), (S::Queued as i32, 1), "{label}");
        // Each tenant's next step is judged against its own record only.
        let stale = env.step("reg-1", 2, S::Running).await.unwrap_err();
        assert_eq!(stale.code(), Code::Aborted, "{label}: {stale:?}");
        assert_eq!(
            stale.message(),
            "regression reg-1 is in state queued at version 1",
            "{label}"
        );
        let own = env.step("reg-1", 1, S::Running).await.unwrap();
        assert_eq!((own.state, own.version), (S::Running as i32, 2), "{label}");
        let theirs = env
            .transition("globex", step("reg-1", S::Passed, S::Unspecified, 2))
            .await
            .unwrap();
        assert_eq!((theirs.state, theirs.version), (S::Passed as i32, 3), "{label}");
        // Two records, one per tenant, each at its own state.
        assert_eq!(
            scalar(
                &env.db,
                "SELECT COUNT(*) FROM persona_regressions WHERE regression_id = 'reg-1'"
            )
            .await,
            2,
            "{label}"
        );
        // A third tenant that never used the id is told it does not exist.
        let unknown = env
            .transition("initech", step("reg-1", S::Passed, S::Unspecified, 2))
            .await
            .unwrap_err();
        assert_eq!(unknown.code(), Code::NotFound, "{label}");
        assert_eq!(
            unknown.message(),
            "regression reg-1 does not exist (create it with to = QUEUED and no expectation)",
            "{label}"
        );
        env.stop().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn concurrent_transitions_from_one_version_have_one_winner() {
    for db in soma_store::testing::engines("analytics").await {
        let mut env = Env::start(&db.settings).await;
        let label = db.label;
        for round in 0..4 {
            let id = format!("race-{round}");
            let running = env.at(&id, S::Running).await;
            let size = env.tree_size().await;
            let targets = [
                S::Passed,
                S::Failed,
                S::Cancelled,
                S::Passed,
                S::Failed,
                S::Cancelled,
                S::Passed,
                S::Failed,
            ];
            let mut tasks = Vec::new();
            for (k, to) in targets.into_iter().enumerate() {
                let mut client = env.gateway.clone();
                let mut request = step(&id, to, S::Unspecified, running.version);
                request.reason = format!("racer {k}");
                let req = tenant_request(&env.claims, &env.svc.id, "acme", WRITE, request);
                tasks.push(tokio::spawn(async move {
                    client
                        .transition_persona_regression(req)
                        .await
                        .map(tonic::Response::into_inner)
                }));
            }
            let mut winners = Vec::new();
            for task in tasks {
                match task.await.unwrap() {
                    Ok(r) => winners.push(r),
                    Err(e) => {
                        assert_eq!(e.code(), Code::Aborted, "{label}: {e:?}");
                        assert!(e.message().contains("at version 3"), "{label}: {}", e.message());
                    }
                }
            }
            assert_eq!(winners.len(), 1, "{label} round {round}");
            let winner = &winners[0];
            assert_eq!(winner.version, 3);
            assert_eq!(env.tree_size().await, size + 1, "{label} round {round}");
            let stored = scalar(
                &env.db,
                &format!("SELECT COUNT(*) FROM persona_regression_transitions WHERE regression_id = '{id}'"),
            )
            .await;
            assert_eq!(stored, 3, "{label}: create, running, one winner");
            // The stored state is the winner's.
            let next = match S::try_from(winner.state).unwrap() {
                S::Passed | S::Failed => S::Promoted,
                _ => S::Running,
            };
            let r = env.step(&id, 3, next).await;
            if next == S::Promoted {
                assert_eq!(r.unwrap().version, 4);
            } else {
                assert_eq!(
                    r.unwrap_err().code(),
                    Code::FailedPrecondition,
                    "cancelled is terminal"
                );
            }
        }
        env.stop().await;
        db.cleanup().await;
    }
}

fn run(event_id: &str, tool: &str, millis: i64, at: i64) -> pb::RecordCapsuleRunRequest {
    run_with(event_id, tool, millis, at, pb::RunOutcome::Succeeded)
}

fn run_with(
    event_id: &str,
    tool: &str,
    millis: i64,
    at: i64,
    outcome: pb::RunOutcome,
) -> pb::RecordCapsuleRunRequest {
    pb::RecordCapsuleRunRequest {
        outcome: outcome as i32,
        duration: Some(prost_types::Duration {
            seconds: millis / 1000,
            nanos: i32::try_from((millis % 1000) * 1_000_000).unwrap(),
        }),
        ..capsule_run_of(event_id, "", tool, at)
    }
}

/// Median of a sorted slice, computed here independently of the service.
fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
    }
}

/// The median and the modified z-scores `0.6745 (x − median) / MAD` of
/// `values`, in input order, computed here independently of the service;
/// the series must have a spread (MAD > 0).
fn modified_z(values: &[f64]) -> (f64, Vec<f64>) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let med = median(&sorted);
    let mut deviations: Vec<f64> = values.iter().map(|x| (x - med).abs()).collect();
    deviations.sort_by(f64::total_cmp);
    let mad = median(&deviations);
    assert!(mad > 0.0, "a test series needs a spread: {values:?}");
    (med, values.iter().map(|x| 0.6745 * (x - med) / mad).collect())
}

fn scan(
    from: Option<prost_types::Timestamp>,
    to: Option<prost_types::Timestamp>,
) -> pb::ScanAnomaliesRequest {
    pb::ScanAnomaliesRequest {
        tenant: String::new(),
        from,
        to,
    }
}

#[tokio::test]
async fn anomaly_scan_finds_exactly_the_outlier() {
    for db in soma_store::testing::engines("analytics").await {
        let mut env = Env::start(&db.settings).await;
        let label = db.label;

        // Tool "summarize": 20 amounts near 100 EUR and one of 10000 EUR.
        let mut amounts: Vec<i64> = (0..20)
            .map(|i| 100_000_000 + (i % 7 - 3) * 250_000 + i * 10_000)
            .collect();
        amounts.push(10_000_000_000);
        for (i, micros) in amounts.iter().enumerate() {
            env.tool_registry
                .record_billing_event(billing_of(
                    &format!("sum-{i}"),
                    "acme",
                    "summarize",
                    *micros,
                    ts(T0 + i as i64),
                ))
                .await
                .unwrap();
        }
        // Tool "translate": 7 values (one below the minimum of 8), one wild.
        for i in 0..7 {
            let micros = if i == 6 {
                50_000_000_000
            } else {
                2_000_000 + i * 1000
            };
            env.tool_registry
                .record_billing_event(billing_of(
                    &format!("tr-{i}"),
                    "acme",
                    "translate",
                    micros,
                    ts(T0 + 100 + i),
                ))
                .await
                .unwrap();
        }
        // Another tenant's wild value and one of acme's outside the window:
        // neither belongs to this scan.
        env.tool_registry
            .record_billing_event(billing_of(
                "globex-1",
                "globex",
                "summarize",
                90_000_000_000,
                ts(T0 + 5),
            ))
            .await
            .unwrap();
        env.tool_registry
            .record_billing_event(billing_of(
                "late-1",
                "acme",
                "summarize",
                90_000_000_000,
                ts(T0 + 7200),
            ))
            .await
            .unwrap();
        // Capsule runs of steady duration: no finding, and one daily
        // bucket is below the minimum for failure rates.
        for i in 0..10 {
            let req = tenant_request(
                &env.claims,
                &env.svc.id,
                "acme",
                &["analytics:ingest"],
                run(&format!("run-{i}"), "summarize", 2000 + i, T0 + 200 + i),
            );
            env.gateway.record_capsule_run(req).await.unwrap();
        }

        let size = env.tree_size().await;
        let req = tenant_request(
            &env.claims,
            &env.svc.id,
            "acme",
            SCAN,
            scan(ts(T0), ts(T0 + 3600)),
        );
        let response = env.gateway.scan_anomalies(req).await.unwrap().into_inner();

        // The expected score, computed here: M = 0.6745 (x − median) / MAD.
        let values: Vec<f64> = amounts.iter().map(|m| *m as f64).collect();
        let mut sorted = values.clone();
        sorted.sort_by(f64::total_cmp);
        let med = median(&sorted);
        let mut deviations: Vec<f64> = values.iter().map(|x| (x - med).abs()).collect();
        deviations.sort_by(f64::total_cmp);
        let mad = median(&deviations);
        assert!(mad > 0.0);
        let outlier = 10_000_000_000_f64;
        let expected_score = 0.6745 * (outlier - med) / mad;
        // Every other value of the series stays under the threshold.
        for x in &values[..20] {
            assert!((0.6745 * (x - med) / mad).abs() <= 3.5);
        }
        assert_eq!(
            response.findings,
            vec![pb::AnomalyFinding {
                metric: "billing_amount_micros".to_owned(),
                tool: "summarize".to_owned(),
                value: outlier,
                baseline: med,
                score: expected_score,
                event_id: "sum-20".to_owned(),
            }],
            "{label}"
        );

        // The scan is one leaf, whose proof verifies; its findings are stored.
        assert_eq!(env.tree_size().await, size + 1, "{label}");
        let entry = response.ledger.unwrap();
        assert_eq!(entry.index, size);
        env.assert_included(&response.scan_id, entry.index, &entry.leaf_hash)
            .await;
        let scan_id = &response.scan_id;
        assert_eq!(
            scalar(
                &env.db,
                &format!("SELECT finding_count FROM anomaly_scans WHERE scan_id = '{scan_id}'")
            )
            .await,
            1
        );
        assert_eq!(
            scalar(
                &env.db,
                &format!(
                    "SELECT COUNT(*) FROM anomaly_findings WHERE scan_id = '{scan_id}' AND event_id = 'sum-20' \
                     AND metric = 'billing_amount_micros' AND tenant = 'acme'"
                )
            )
            .await,
            1
        );
        let sweep = env
            .operator
            .verify_store(pb::VerifyStoreRequest {})
            .await
            .unwrap()
            .into_inner();
        assert!(sweep.failures.is_empty(), "{label}: {:?}", sweep.failures);

        // Fewer than the minimum sample size: the wild "translate" value alone
        // in a window gives nothing, yet the scan is audited.
        let req = tenant_request(
            &env.claims,
            &env.svc.id,
            "acme",
            SCAN,
            scan(ts(T0 + 100), ts(T0 + 107)),
        );
        let small = env.gateway.scan_anomalies(req).await.unwrap().into_inner();
        assert!(small.findings.is_empty(), "{label}: {:?}", small.findings);
        assert_eq!(env.tree_size().await, size + 2);

        // Bad input: INVALID_ARGUMENT naming the field; nothing written.
        struct Case {
            name: &'static str,
            tenant: &'static str,
            caps: &'static [&'static str],
            input: pb::ScanAnomaliesRequest,
            code: Code,
            message: &'static str,
        }
        let mut other_tenant = scan(ts(T0), ts(T0 + 60));
        other_tenant.tenant = "globex".to_owned();
        let cases = [
            Case {
                name: "to before from",
                tenant: "acme",
                caps: SCAN,
                input: scan(ts(T0 + 60), ts(T0)),
                code: Code::InvalidArgument,
                message: "to: must be after from",
            },
            Case {
                name: "empty window",
                tenant: "acme",
                caps: SCAN,
                input: scan(ts(T0), ts(T0)),
                code: Code::InvalidArgument,
                message: "to: must be after from",
            },
            Case {
                name: "missing from",
                tenant: "acme",
                caps: SCAN,
                input: scan(None, ts(T0)),
                code: Code::InvalidArgument,
                message: "from: required",
            },
            Case {
                name: "missing to",
                tenant: "acme",
                caps: SCAN,
                input: scan(ts(T0), None),
                code: Code::InvalidArgument,
                message: "to: required",
            },
            Case {
                name: "malformed from",
                tenant: "acme",
                caps: SCAN,
                input: scan(
                    Some(prost_types::Timestamp {
                        seconds: T0,
                        nanos: -1,
                    }),
                    ts(T0 + 1),
                ),
                code: Code::InvalidArgument,
                message: "from: nanos -1",
            },
            Case {
                name: "window over the maximum span",
                tenant: "acme",
                caps: SCAN,
                input: scan(ts(T0), ts(T0 + 32 * 86_400)),
                code: Code::InvalidArgument,
                message: "to: the window is longer than the maximum span",
            },
            Case {
                name: "another tenant",
                tenant: "acme",
                caps: SCAN,
                input: other_tenant,
                code: Code::PermissionDenied,
                // Tenant claims never read another tenant (operator_required).
                message: "reading tenant \"globex\" needs an operator; tenant \"acme\" may read only its own \
                          data",
            },
        ];
        let scans = scalar(&env.db, "SELECT COUNT(*) FROM anomaly_scans").await;
        for case in cases {
            let req = tenant_request(&env.claims, &env.svc.id, case.tenant, case.caps, case.input);
            let err = env.gateway.scan_anomalies(req).await.unwrap_err();
            assert_eq!(err.code(), case.code, "{label} {}: {err:?}", case.name);
            assert!(
                err.message().starts_with(case.message),
                "{label} {}: {}",
                case.name,
                err.message()
            );
            assert_eq!(env.tree_size().await, size + 2, "{label} {}", case.name);
        }
        assert_eq!(scalar(&env.db, "SELECT COUNT(*) FROM anomaly_scans").await, scans);
        assert_eq!(scalar(&env.db, "SELECT COUNT(*) FROM anomaly_findings").await, 1);

        // A billing amount changed in SQL fails its MAC: the scan is DATA_LOSS
        // and writes nothing.
        exec(
            &env.db,
            "UPDATE billing_events SET amount_micros = 100000001 WHERE event_id = 'sum-3'",
        )
        .await;
        let req = tenant_request(
            &env.claims,
            &env.svc.id,
            "acme",
            SCAN,
            scan(ts(T0), ts(T0 + 3600)),
        );
        let err = env.gateway.scan_anomalies(req).await.unwrap_err();
        assert_eq!(err.code(), Code::DataLoss, "{label}: {err:?}");
        assert_eq!(env.tree_size().await, size + 2);
        assert_eq!(scalar(&env.db, "SELECT COUNT(*) FROM anomaly_scans").await, scans);

        env.stop().await;
        db.cleanup().await;
    }
}

/// The two series besides billing amounts, each with exactly one outlier:
/// `run_duration_nanos` (one run of "render" far slower than its others) and
/// `failure_rate` (one day on which "deploy" failed far more often than on
/// its other days, with refused runs counted in the day's total only). The
/// findings are asserted exactly against an independent computation, so a
/// series that is never scored, scored on the wrong values, or bucketed
/// wrongly fails here.
#[tokio::test]
async fn anomaly_scan_finds_duration_and_failure_rate_outliers() {
    const DAY: i64 = 86_400;
    const DAYS: i64 = 10;
    for db in soma_store::testing::engines("analytics").await {
        let mut env = Env::start(&db.settings).await;
        let label = db.label;
        let mut record = async |req: pb::RecordCapsuleRunRequest| {
            let req = tenant_request(&env.claims, &env.svc.id, "acme", &["analytics:ingest"], req);
            env.gateway.record_capsule_run(req).await.unwrap();
        };

        // "render": 12 runs of about 2 s on day 0, and one of 60 s. All in
        // one daily bucket, so its failure rate is a single point (below the
        // minimum of 8 samples): no failure-rate finding for it.
        let mut render_millis: Vec<i64> = (0..12).map(|i| 2000 + i * 7 + (i % 3) * 11).collect();
        render_millis.push(60_000);
        for (i, millis) in render_millis.iter().enumerate() {
            record(run(&format!("render-{i}"), "render", *millis, T0 + 60 + i as i64)).await;
        }

        // "deploy": 10 runs a day for 10 days, all of the same duration (a
        // series without spread: no duration finding). Failed runs per day
        // 1, 2, 1, 0, 1, 2, 1, 1, 0; on the last day 6 failed, 2 refused
        // (policy, not tool failures: counted in the total only), 2
        // succeeded, a rate of 6/10.
        let failed_per_day = [1, 2, 1, 0, 1, 2, 1, 1, 0, 6];
        let refused_per_day = [0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
        for day in 0..DAYS {
            let d = usize::try_from(day).unwrap();
            for i in 0..10 {
                let outcome = if i < failed_per_day[d] {
                    pb::RunOutcome::Failed
                } else if i < failed_per_day[d] + refused_per_day[d] {
                    pb::RunOutcome::Refused
                } else {
                    pb::RunOutcome::Succeeded
                };
                let at = T0 + day * DAY + 3600 + i64::from(i) * 60;
                record(run_with(
                    &format!("deploy-{day}-{i}"),
                    "deploy",
                    1500,
                    at,
                    outcome,
                ))
                .await;
            }
        }

        let req = tenant_request(
            &env.claims,
            &env.svc.id,
            "acme",
            SCAN,
            scan(ts(T0), ts(T0 + DAYS * DAY)),
        );
        let response = env.gateway.scan_anomalies(req).await.unwrap().into_inner();

        // The expected findings, computed here.
        let durations: Vec<f64> = render_millis.iter().map(|m| (m * 1_000_000) as f64).collect();
        let (duration_median, duration_scores) = modified_z(&durations);
        for score in &duration_scores[..12] {
            assert!(score.abs() <= 3.5, "{score}");
        }
        let rates: Vec<f64> = failed_per_day
            .iter()
            .map(|failed| f64::from(*failed) / 10.0)
            .collect();
        let (rate_median, rate_scores) = modified_z(&rates);
        for score in &rate_scores[..9] {
            assert!(score.abs() <= 3.5, "{score}");
        }
        let last_bucket = (T0 + (DAYS - 1) * DAY) * 1_000_000_000;
        let expected = vec![
            pb::AnomalyFinding {
                metric: "run_duration_nanos".to_owned(),
                tool: "render".to_owned(),
                value: 60_000_000_000.0,
                baseline: duration_median,
                score: duration_scores[12],
                event_id: "render-12".to_owned(),
            },
            pb::AnomalyFinding {
                metric: "failure_rate".to_owned(),
                tool: "deploy".to_owned(),
                value: 0.6,
                baseline: rate_median,
                score: rate_scores[9],
                event_id: format!("bucket:{last_bucket}"),
            },
        ];
        assert!(expected.iter().all(|f| f.score > 3.5), "{expected:?}");
        assert_eq!(response.findings, expected, "{label}");

        // Both findings are stored with the scan.
        let scan_id = &response.scan_id;
        for finding in &expected {
            assert_eq!(
                scalar(
                    &env.db,
                    &format!(
                        "SELECT COUNT(*) FROM anomaly_findings WHERE scan_id = '{scan_id}' AND tenant = 'acme' \
                         AND metric = '{}' AND tool = '{}' AND event_id = '{}'",
                        finding.metric, finding.tool, finding.event_id
                    )
                )
                .await,
                1,
                "{label}: {finding:?}"
            );
        }
        assert_eq!(
            scalar(
                &env.db,
                &format!("SELECT finding_count FROM anomaly_scans WHERE scan_id = '{scan_id}'")
            )
            .await,
            2
        );

        env.stop().await;
        db.cleanup().await;
    }
}
