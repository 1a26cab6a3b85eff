//! Disaster-recovery drills on SQLite and on PostgreSQL, through the real
//! service over mTLS: RTO/RPO and verdicts against configured objectives,
//! per-region summaries with nearest-rank percentiles, bad input refused with
//! nothing written, and signed webhooks delivered to a real HTTP receiver
//! from the transactional outbox, including to a receiver that was down
//! while the service restarted.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::{AnalyticsKeys, client, inclusion_proof, start_analytics, ts, ts_nanos, verify_proof};
use soma_analytics::{AnalyticsConfig, DrillConfig};
use soma_auth::ClaimsSigner;
use soma_proto::v1 as pb;
use soma_proto::v1::analytics_client::AnalyticsClient;
use soma_sign::HmacKeyring;
use soma_store::Database;
use soma_testing::{Ca, Running, exec, tenant_request};
use tonic::Code;
use tonic::transport::Channel;

/// The objectives every test runs with: two regions, no `*` default.
const OBJECTIVES: &str = "eu-west-1=rto:15m,rpo:1m;us-east-1=rto:30m,rpo:5m";

/// Start of the drills (2026-09-21).
const T0: i64 = 1_790_000_000;

fn step(name: &str, outcome: pb::StepOutcome) -> pb::DrillStep {
    pb::DrillStep {
        name: name.to_owned(),
        outcome: outcome as i32,
        detail: String::new(),
    }
}

/// A drill of `region` started at `start`, restored `rto` seconds (and
/// `rto_nanos`) later, whose last durable write was `rpo` seconds before.
fn drill(
    event_id: &str,
    region: &str,
    start: i64,
    rto: i64,
    rto_nanos: i32,
    rpo: i64,
) -> pb::RecordDisasterDrillRequest {
    pb::RecordDisasterDrillRequest {
        event_id: event_id.to_owned(),
        region: region.to_owned(),
        scenario: "primary-db-loss".to_owned(),
        started_at: ts(start),
        failover_completed_at: ts(start + rto / 2),
        restored_at: ts_nanos(start + rto, rto_nanos),
        last_durable_write_at: ts(start - rpo),
        steps: vec![
            step("fence-primary", pb::StepOutcome::Passed),
            step("promote-replica", pb::StepOutcome::Passed),
        ],
        rto_target: None,
        rpo_target: None,
    }
}

/// `request` carrying the drill's own targets.
fn with_targets(
    mut request: pb::RecordDisasterDrillRequest,
    rto: Option<prost_types::Duration>,
    rpo: Option<prost_types::Duration>,
) -> pb::RecordDisasterDrillRequest {
    request.rto_target = rto;
    request.rpo_target = rpo;
    request
}

/// A region's recent drills as (event id, RTO seconds, passed), newest first.
type Recent = Vec<(String, i64, bool)>;

/// The summaries without their lists of recent drills, and those lists.
fn split_recent(mut regions: Vec<pb::RegionDrillSummary>) -> (Vec<pb::RegionDrillSummary>, Vec<Recent>) {
    let recent = regions
        .iter_mut()
        .map(|r| {
            std::mem::take(&mut r.recent)
                .into_iter()
                .map(|d| (d.event_id, d.rto.unwrap().seconds, d.passed))
                .collect()
        })
        .collect();
    (regions, recent)
}

fn secs(seconds: i64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds, nanos: 0 })
}

/// A config over `keys` (shared by the instances of a restart) with these
/// drill settings.
fn config_with(keys: &AnalyticsKeys, drills: DrillConfig) -> AnalyticsConfig {
    AnalyticsConfig {
        drills,
        ..keys.config()
    }
}

/// The drill settings as the service reads them from its environment.
fn drill_config(vars: &[(&str, String)]) -> DrillConfig {
    DrillConfig::from_env(|name| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone())).unwrap()
}

async fn summary(
    client: &mut AnalyticsClient<Channel>,
    request: tonic::Request<pb::DisasterDrillSummaryRequest>,
) -> Result<Vec<pb::RegionDrillSummary>, tonic::Status> {
    client
        .disaster_drill_summary(request)
        .await
        .map(|r| r.into_inner().regions)
}

struct Clients {
    gateway: AnalyticsClient<Channel>,
    operator: AnalyticsClient<Channel>,
    audience: soma_identity::SpiffeId,
}

fn clients(ca: &Ca, svc: &Running) -> Clients {
    Clients {
        gateway: client(ca, svc, "/svc/gateway"),
        operator: client(ca, svc, "/operator/auditor"),
        audience: svc.id.clone(),
    }
}

impl Clients {
    /// Records a drill as the gateway forwards it for `tenant`.
    async fn record(
        &mut self,
        claims: &ClaimsSigner,
        tenant: &str,
        request: pb::RecordDisasterDrillRequest,
    ) -> Result<pb::DisasterDrill, tonic::Status> {
        let request = tenant_request(claims, &self.audience, tenant, &["drills:write"], request);
        self.gateway
            .record_disaster_drill(request)
            .await
            .map(tonic::Response::into_inner)
    }

    async fn tree_size(&mut self) -> u64 {
        self.operator
            .ledger_checkpoint(pb::LedgerCheckpointRequest::default())
            .await
            .unwrap()
            .into_inner()
            .tree_size
    }
}

/// Reads one i64 (no row or NULL as `None`).
async fn scalar(db: &Database, sql: &str) -> Option<i64> {
    use sqlx::Row as _;
    match (db.as_sqlite(), db.as_postgres()) {
        (Some(pool), _) => sqlx::query(sql)
            .fetch_optional(pool)
            .await
            .unwrap()?
            .get::<Option<i64>, _>(0),
        (None, Some(pool)) => sqlx::query(sql)
            .fetch_optional(pool)
            .await
            .unwrap()?
            .get::<Option<i64>, _>(0),
        _ => unreachable!(),
    }
}

/// The `drill_webhooks` outbox's figures on `svc`'s `/metrics`, once they
/// include every line of `want` (e.g. `delivered_total 1`: the series'
/// name after `soma_outbox_`, and its value).
async fn webhook_figures(svc: &Running, want: &[&str]) {
    let lines: Vec<String> = want
        .iter()
        .map(|w| {
            let (name, value) = w.split_once(' ').unwrap();
            format!("soma_outbox_{name}{{outbox=\"drill_webhooks\"}} {value}\n")
        })
        .collect();
    let admin = svc.admin;
    eventually(&format!("{want:?} on /metrics"), || {
        let lines = lines.clone();
        async move {
            let exposition = soma_testing::http_get(admin, "/metrics").await;
            lines
                .iter()
                .all(|l| exposition.contains(l.as_str()))
                .then_some(())
        }
    })
    .await;
}

/// Polls `probe` until it yields a value; fails the test after a generous
/// deadline (a liveness bound, not a timing assertion).
async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(Instant::now() < deadline, "gave up waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn drills_are_judged_against_their_region_objectives() {
    for db in soma_store::testing::engines("analytics").await {
        let ca = Ca::new();
        let (claims, _) = ClaimsSigner::generate("gateway-1").unwrap();
        let keys = AnalyticsKeys::generate();
        let config = config_with(
            &keys,
            drill_config(&[("SOMA_ANALYTICS_DRILL_OBJECTIVES", OBJECTIVES.to_owned())]),
        );
        let svc = start_analytics(&ca, &db.settings, config, Some(&claims)).await;
        let mut c = clients(&ca, &svc);

        struct Case {
            name: &'static str,
            input: pb::RecordDisasterDrillRequest,
            rto: prost_types::Duration,
            rpo: prost_types::Duration,
            passed: bool,
            reasons: Vec<&'static str>,
        }
        let mut failed_steps = drill("d-steps", "us-east-1", T0, 31 * 60, 0, 60);
        failed_steps
            .steps
            .push(step("switch-dns", pb::StepOutcome::Failed));
        failed_steps
            .steps
            .push(step("warm-caches", pb::StepOutcome::Skipped));
        let mut skipped = drill("d-skipped", "eu-west-1", T0, 60, 0, 1);
        skipped.steps[1] = step("promote-replica", pb::StepOutcome::Skipped);
        let cases = [
            Case {
                name: "within objectives",
                input: drill("d-ok", "eu-west-1", T0, 14 * 60 + 59, 0, 30),
                rto: secs(899).unwrap(),
                rpo: secs(30).unwrap(),
                passed: true,
                reasons: vec![],
            },
            Case {
                name: "exactly at the objectives",
                input: drill("d-edge", "eu-west-1", T0, 15 * 60, 0, 60),
                rto: secs(900).unwrap(),
                rpo: secs(60).unwrap(),
                passed: true,
                reasons: vec![],
            },
            Case {
                name: "rto over by one nanosecond",
                input: drill("d-rto", "eu-west-1", T0, 15 * 60, 1, 60),
                rto: prost_types::Duration {
                    seconds: 900,
                    nanos: 1,
                },
                rpo: secs(60).unwrap(),
                passed: false,
                reasons: vec!["rto 900.000000001s exceeds the objective 900s"],
            },
            Case {
                name: "rpo over",
                input: drill("d-rpo", "eu-west-1", T0, 600, 0, 90),
                rto: secs(600).unwrap(),
                rpo: secs(90).unwrap(),
                passed: false,
                reasons: vec!["rpo 90s exceeds the objective 60s"],
            },
            Case {
                name: "a failed step and rto over, in that order",
                input: failed_steps,
                rto: secs(1860).unwrap(),
                rpo: secs(60).unwrap(),
                passed: false,
                reasons: vec![
                    "step \"switch-dns\" failed",
                    "rto 1860s exceeds the objective 1800s",
                ],
            },
            Case {
                name: "a skipped step does not fail",
                input: skipped,
                rto: secs(60).unwrap(),
                rpo: secs(1).unwrap(),
                passed: true,
                reasons: vec![],
            },
            Case {
                name: "region without objectives and no default",
                input: drill("d-none", "ap-south-1", T0, 1, 0, 0),
                rto: secs(1).unwrap(),
                rpo: secs(0).unwrap(),
                passed: false,
                reasons: vec!["no objectives configured for region"],
            },
            Case {
                name: "the drill's own rto target, stricter than the objective, applies",
                input: with_targets(
                    drill("d-target-rto", "eu-west-1", T0, 4, 500_000_000, 0),
                    Some(prost_types::Duration {
                        seconds: 0,
                        nanos: 1_000_000,
                    }),
                    secs(0),
                ),
                rto: prost_types::Duration {
                    seconds: 4,
                    nanos: 500_000_000,
                },
                rpo: secs(0).unwrap(),
                passed: false,
                reasons: vec!["rto 4.5s exceeds the drill's target 0.001s"],
            },
            Case {
                name: "the drill's own rpo target of zero applies",
                input: with_targets(drill("d-target-rpo", "eu-west-1", T0, 4, 0, 1), secs(15), secs(0)),
                rto: secs(4).unwrap(),
                rpo: secs(1).unwrap(),
                passed: false,
                reasons: vec!["rpo 1s exceeds the drill's target 0s"],
            },
            Case {
                name: "targets met pass",
                input: with_targets(drill("d-target-ok", "eu-west-1", T0, 4, 0, 0), secs(15), secs(0)),
                rto: secs(4).unwrap(),
                rpo: secs(0).unwrap(),
                passed: true,
                reasons: vec![],
            },
            Case {
                name: "a looser target never loosens the objective",
                input: with_targets(
                    drill("d-target-loose", "eu-west-1", T0, 16 * 60, 0, 0),
                    secs(3600),
                    secs(3600),
                ),
                rto: secs(960).unwrap(),
                rpo: secs(0).unwrap(),
                passed: false,
                reasons: vec!["rto 960s exceeds the objective 900s"],
            },
            Case {
                name: "targets do not stand in for a missing objective",
                input: with_targets(
                    drill("d-target-none", "ap-south-1", T0, 1, 0, 0),
                    secs(15),
                    secs(0),
                ),
                rto: secs(1).unwrap(),
                rpo: secs(0).unwrap(),
                passed: false,
                reasons: vec!["no objectives configured for region"],
            },
        ];
        let mut expected_index = c.tree_size().await;
        for case in cases {
            let event_id = case.input.event_id.clone();
            let got = c.record(&claims, "acme", case.input.clone()).await.unwrap();
            assert_eq!(got.event_id, event_id, "{}", case.name);
            assert_eq!(got.rto, Some(case.rto), "{}: {}", db.label, case.name);
            assert_eq!(got.rpo, Some(case.rpo), "{}: {}", db.label, case.name);
            assert_eq!(got.passed, case.passed, "{}: {}", db.label, case.name);
            assert_eq!(got.failure_reasons, case.reasons, "{}: {}", db.label, case.name);
            let ledger = got.ledger.clone().unwrap();
            assert_eq!(ledger.index, expected_index, "{}", case.name);
            expected_index += 1;

            // A retry is idempotent: same verdict, same leaf, no new leaf.
            let again = c.record(&claims, "acme", case.input.clone()).await.unwrap();
            assert_eq!(again, got, "{}", case.name);
            assert_eq!(c.tree_size().await, expected_index, "{}", case.name);

            // The drill is in the ledger: its inclusion proof verifies
            // against the signed checkpoint.
            let proof = inclusion_proof(&mut c.operator, &event_id, 0).await;
            assert_eq!(proof.leaf_hash, ledger.leaf_hash);
            verify_proof(
                &proof,
                proof.tree_size,
                &proof.checkpoint.clone().unwrap().root_hash,
            );
        }

        // The same event id with other facts is a conflict, not an overwrite.
        let mut other = drill("d-ok", "eu-west-1", T0, 10, 0, 1);
        other.scenario = "az-loss".to_owned();
        let err = c.record(&claims, "acme", other).await.unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists, "{err:?}");
        assert_eq!(c.tree_size().await, expected_index);

        // The sweep checks drill rows too, and finds them all sound.
        let sweep = c
            .operator
            .verify_store(pb::VerifyStoreRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert!(sweep.failures.is_empty(), "{:?}", sweep.failures);

        svc.stop().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn the_summary_gives_exact_counts_pass_rates_and_nearest_rank_percentiles() {
    for db in soma_store::testing::engines("analytics").await {
        let ca = Ca::new();
        let (claims, _) = ClaimsSigner::generate("gateway-1").unwrap();
        let keys = AnalyticsKeys::generate();
        let config = config_with(
            &keys,
            drill_config(&[("SOMA_ANALYTICS_DRILL_OBJECTIVES", OBJECTIVES.to_owned())]),
        );
        let svc = start_analytics(&ca, &db.settings, config, Some(&claims)).await;
        let mut c = clients(&ca, &svc);

        // eu-west-1 (objectives 15m / 1m), tenant acme: RTOs 600..1000 s
        // recorded out of order; the 1000 s drill and the rpo-90 s drill fail.
        let eu = [
            ("eu-3", T0 + 300, 800, 30),
            ("eu-1", T0 + 100, 600, 10),
            ("eu-5", T0 + 500, 1000, 50),
            ("eu-2", T0 + 200, 700, 90),
            ("eu-4", T0 + 400, 900, 40),
        ];
        for (id, start, rto, rpo) in eu {
            c.record(&claims, "acme", drill(id, "eu-west-1", start, rto, 0, rpo))
                .await
                .unwrap();
        }
        // us-east-1 (30m / 5m): two passing drills of tenant globex.
        c.record(&claims, "globex", drill("us-1", "us-east-1", T0, 1200, 0, 100))
            .await
            .unwrap();
        c.record(
            &claims,
            "globex",
            drill("us-2", "us-east-1", T0 + 50, 1500, 0, 200),
        )
        .await
        .unwrap();
        // A drill recorded by the gateway itself (no tenant claims) belongs
        // to the operations tenant.
        c.gateway
            .record_disaster_drill(drill("ops-1", "eu-west-1", T0 + 900, 100, 0, 5))
            .await
            .unwrap();

        let region_request = |region: &str| pb::DisasterDrillSummaryRequest {
            region: region.to_owned(),
        };

        // acme sees its own five eu-west-1 drills only. Nearest rank, n = 5:
        // p50 is rank 3, p95 is rank 5.
        let (acme, recent) = split_recent(
            summary(
                &mut c.gateway,
                tenant_request(&claims, &c.audience, "acme", &["drills:read"], region_request("")),
            )
            .await
            .unwrap(),
        );
        // The recent drills, newest (last recorded) first, with their RTO
        // and verdict.
        assert_eq!(
            recent,
            vec![vec![
                ("eu-4".to_owned(), 900, true),
                ("eu-2".to_owned(), 700, false),
                ("eu-5".to_owned(), 1000, false),
                ("eu-1".to_owned(), 600, true),
                ("eu-3".to_owned(), 800, true),
            ]],
            "{}",
            db.label
        );
        assert_eq!(
            acme,
            vec![pb::RegionDrillSummary {
                region: "eu-west-1".to_owned(),
                count: 5,
                pass_rate: 3.0 / 5.0,
                rto_p50: secs(800),
                rto_p95: secs(1000),
                rpo_p50: secs(40),
                rpo_p95: secs(90),
                last_failure_at: ts(T0 + 500),
                recent: Vec::new(),
            }],
            "{}",
            db.label
        );

        // An operator sees every tenant: eu-west-1 gains the ops drill
        // (n = 6: p50 rank 3, p95 rank 6), and us-east-1 appears (n = 2:
        // p50 rank 1, p95 rank 2), without failures.
        let (all, recent) = split_recent(
            summary(&mut c.operator, tonic::Request::new(region_request("")))
                .await
                .unwrap(),
        );
        assert_eq!(recent[0][0].0, "ops-1", "{}", db.label);
        assert_eq!(
            recent[1],
            [("us-2".to_owned(), 1500, true), ("us-1".to_owned(), 1200, true)],
            "{}",
            db.label
        );
        assert_eq!(
            all,
            vec![
                pb::RegionDrillSummary {
                    region: "eu-west-1".to_owned(),
                    count: 6,
                    pass_rate: 4.0 / 6.0,
                    rto_p50: secs(700),
                    rto_p95: secs(1000),
                    rpo_p50: secs(30),
                    rpo_p95: secs(90),
                    last_failure_at: ts(T0 + 500),
                    recent: Vec::new(),
                },
                pb::RegionDrillSummary {
                    region: "us-east-1".to_owned(),
                    count: 2,
                    pass_rate: 1.0,
                    rto_p50: secs(1200),
                    rto_p95: secs(1500),
                    rpo_p50: secs(100),
                    rpo_p95: secs(200),
                    last_failure_at: None,
                    recent: Vec::new(),
                },
            ],
            "{}",
            db.label
        );

        // The region filter; a region with no drills is an empty list; a
        // malformed region is refused naming the field.
        let us = summary(&mut c.operator, tonic::Request::new(region_request("us-east-1")))
            .await
            .unwrap();
        assert_eq!(us.len(), 1);
        assert_eq!(us[0].region, "us-east-1");
        assert!(
            summary(&mut c.operator, tonic::Request::new(region_request("ap-south-1")))
                .await
                .unwrap()
                .is_empty()
        );
        let err = summary(&mut c.operator, tonic::Request::new(region_request("eu west")))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().starts_with("region: "), "{}", err.message());

        // At most 20 recent drills per region: the newest ones.
        for i in 0..21 {
            c.record(
                &claims,
                "acme",
                drill(&format!("sa-{i}"), "sa-east-1", T0 + i, 10 + i, 0, 0),
            )
            .await
            .unwrap();
        }
        let sa = summary(&mut c.operator, tonic::Request::new(region_request("sa-east-1")))
            .await
            .unwrap();
        assert_eq!(sa[0].count, 21);
        let ids: Vec<&str> = sa[0].recent.iter().map(|d| d.event_id.as_str()).collect();
        let want: Vec<String> = (1..21).rev().map(|i| format!("sa-{i}")).collect();
        assert_eq!(ids, want, "{}", db.label);
        // Each carries its ledger entry: the leaf its inclusion proof proves.
        let newest = &sa[0].recent[0];
        let proof = inclusion_proof(&mut c.operator, "acme/sa-20", 0).await;
        assert_eq!(
            newest.ledger.as_ref().map(|l| (l.index, l.leaf_hash.clone())),
            Some((proof.leaf_index, proof.leaf_hash.clone()))
        );

        // MACs are checked on read: a drill whose RTO is rewritten in SQL
        // fails the summary instead of skewing it.
        let store = db.connect().await;
        let changed = exec(
            &store,
            "UPDATE disaster_drills SET rto_nanos = 1 WHERE event_id = 'eu-5'",
        )
        .await;
        assert_eq!(changed, 1);
        let err = summary(&mut c.operator, tonic::Request::new(region_request("eu-west-1")))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::DataLoss, "{err:?}");
        assert!(
            err.message().contains("disaster_drills/eu-5"),
            "{}",
            err.message()
        );
        let sweep = c
            .operator
            .verify_store(pb::VerifyStoreRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(sweep.failures.len(), 1, "{:?}", sweep.failures);
        assert_eq!(sweep.failures[0].table, "disaster_drills");
        assert_eq!(sweep.failures[0].primary_key, "eu-5");
        store.close().await;

        svc.stop().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn bad_drills_are_invalid_argument_naming_the_field_with_nothing_written() {
    for db in soma_store::testing::engines("analytics").await {
        let ca = Ca::new();
        let (claims, _) = ClaimsSigner::generate("gateway-1").unwrap();
        let keys = AnalyticsKeys::generate();
        let config = config_with(
            &keys,
            drill_config(&[("SOMA_ANALYTICS_DRILL_OBJECTIVES", OBJECTIVES.to_owned())]),
        );
        let svc = start_analytics(&ca, &db.settings, config, Some(&claims)).await;
        let mut c = clients(&ca, &svc);

        let valid = || drill("d-bad", "eu-west-1", T0, 600, 0, 30);
        struct Case {
            name: &'static str,
            input: pb::RecordDisasterDrillRequest,
            field: &'static str,
        }
        let with = |f: &dyn Fn(&mut pb::RecordDisasterDrillRequest)| {
            let mut r = valid();
            f(&mut r);
            r
        };
        let cases = [
            Case {
                name: "nanos 2e9",
                input: with(&|r| r.started_at = ts_nanos(T0, 2_000_000_000)),
                field: "started_at",
            },
            Case {
                name: "negative nanos",
                input: with(&|r| r.last_durable_write_at = ts_nanos(T0, -1)),
                field: "last_durable_write_at",
            },
            Case {
                name: "seconds out of range",
                input: with(&|r| r.failover_completed_at = ts(i64::MAX)),
                field: "failover_completed_at",
            },
            Case {
                name: "missing started_at",
                input: with(&|r| r.started_at = None),
                field: "started_at",
            },
            Case {
                name: "missing restored_at",
                input: with(&|r| r.restored_at = None),
                field: "restored_at",
            },
            Case {
                name: "restored before started",
                input: with(&|r| r.restored_at = ts(T0 - 1)),
                field: "restored_at",
            },
            Case {
                name: "failover before started",
                input: with(&|r| r.failover_completed_at = ts(T0 - 1)),
                field: "failover_completed_at",
            },
            Case {
                name: "last durable write after started",
                input: with(&|r| r.last_durable_write_at = ts_nanos(T0, 1)),
                field: "last_durable_write_at",
            },
            Case {
                name: "unknown step outcome 99",
                input: with(&|r| r.steps[1].outcome = 99),
                field: "steps.outcome",
            },
            Case {
                name: "unspecified step outcome",
                input: with(&|r| r.steps[0].outcome = 0),
                field: "steps.outcome",
            },
            Case {
                name: "no steps",
                input: with(&|r| r.steps.clear()),
                field: "steps",
            },
            Case {
                name: "unnamed step",
                input: with(&|r| r.steps[0].name.clear()),
                field: "steps.name",
            },
            Case {
                name: "control character in a step detail",
                input: with(&|r| r.steps[0].detail = "ok\u{0}".to_owned()),
                field: "steps.detail",
            },
            Case {
                name: "missing region",
                input: with(&|r| r.region.clear()),
                field: "region",
            },
            Case {
                name: "region not an identifier",
                input: with(&|r| r.region = "eu west 1".to_owned()),
                field: "region",
            },
            Case {
                name: "missing scenario",
                input: with(&|r| r.scenario.clear()),
                field: "scenario",
            },
            Case {
                name: "missing event id",
                input: with(&|r| r.event_id.clear()),
                field: "event_id",
            },
            Case {
                name: "negative rto target",
                input: with(&|r| {
                    r.rto_target = Some(prost_types::Duration {
                        seconds: -1,
                        nanos: 0,
                    });
                }),
                field: "rto_target",
            },
            Case {
                name: "rpo target nanos 1e9",
                input: with(&|r| {
                    r.rpo_target = Some(prost_types::Duration {
                        seconds: 0,
                        nanos: 1_000_000_000,
                    });
                }),
                field: "rpo_target",
            },
        ];
        let before = c.tree_size().await;
        for case in cases {
            let err = c.record(&claims, "acme", case.input).await.unwrap_err();
            assert_eq!(
                err.code(),
                Code::InvalidArgument,
                "{}: {}: {err:?}",
                db.label,
                case.name
            );
            assert!(
                err.message().starts_with(&format!("{}: ", case.field)),
                "{}: {}: {}",
                db.label,
                case.name,
                err.message()
            );
            assert_eq!(c.tree_size().await, before, "{}: {}", db.label, case.name);
        }
        let store = db.connect().await;
        assert_eq!(
            scalar(&store, "SELECT COUNT(*) FROM disaster_drills").await,
            Some(0)
        );
        assert_eq!(
            scalar(&store, "SELECT COUNT(*) FROM webhook_outbox").await,
            Some(0)
        );

        // The template itself is valid: only each mutation was refused.
        let ok = c.record(&claims, "acme", valid()).await.unwrap();
        assert!(ok.passed);
        assert_eq!(c.tree_size().await, before + 1);
        store.close().await;

        svc.stop().await;
        db.cleanup().await;
    }
}

/// What the test's webhook receiver saw.
#[derive(Clone, Default)]
struct Received {
    /// Every request, in arrival order.
    requests: Arc<Mutex<Vec<(HeaderMap, Bytes)>>>,
    /// Requests per delivery id.
    by_id: Arc<Mutex<HashMap<String, usize>>>,
}

async fn receive(State(received): State<Received>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let id = headers
        .get("x-soma-webhook-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    *received.by_id.lock().unwrap().entry(id).or_default() += 1;
    received.requests.lock().unwrap().push((headers, body));
    StatusCode::NO_CONTENT
}

/// A real HTTP/1.1 receiver on `listener`.
fn start_receiver(listener: tokio::net::TcpListener) -> Received {
    let received = Received::default();
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(received.clone());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    received
}

fn unhex(text: &str) -> Vec<u8> {
    assert!(text.len().is_multiple_of(2), "{text}");
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> &'a str {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

/// Checks a delivery as a receiver would: the signature under the key the
/// headers name, the timestamp within a ±5-minute replay window, and the
/// body as RFC 8785 canonical JSON of the failed drill `drill`.
fn verify_delivery(
    keyring: &HmacKeyring,
    headers: &HeaderMap,
    body: &[u8],
    drill: &pb::DisasterDrill,
) -> String {
    let id = header(headers, "x-soma-webhook-id").to_owned();
    let timestamp = header(headers, "x-soma-webhook-timestamp");
    let key_id = header(headers, "x-soma-webhook-key-id");
    assert_eq!(key_id, "webhook-1");
    assert_eq!(header(headers, "content-type"), "application/json");
    let sent: i64 = timestamp.parse().unwrap();
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!(
        (now - sent).abs() <= 300,
        "timestamp {sent} outside the replay window around {now}"
    );

    let signature = header(headers, "x-soma-webhook-signature");
    let tag = unhex(signature.strip_prefix("v1=").expect("a v1= signature"));
    let signed = |body: &[u8]| {
        let mut message = format!("{timestamp}.{id}.").into_bytes();
        message.extend_from_slice(body);
        message
    };
    keyring.verify(key_id, &signed(body), &tag).unwrap();
    // The signature binds the body, the id and the timestamp.
    let mut altered = body.to_vec();
    altered.push(b' ');
    assert!(keyring.verify(key_id, &signed(&altered), &tag).is_err());
    let mut replayed = format!("{}.{id}.", sent + 1).into_bytes();
    replayed.extend_from_slice(body);
    assert!(keyring.verify(key_id, &replayed, &tag).is_err());

    assert_eq!(
        soma_sign::jcs::canonicalize_json(body).unwrap(),
        body,
        "body is not canonical JSON"
    );
    let event: serde_json::Value = serde_json::from_slice(body).unwrap();
    let ledger = drill.ledger.clone().unwrap();
    let hex: String = ledger.leaf_hash.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(event["type"], "disaster_drill.failed");
    assert_eq!(event["event_id"], drill.event_id.as_str());
    assert_eq!(event["region"], drill.region.as_str());
    assert_eq!(event["passed"], false);
    assert_eq!(event["failure_reasons"], serde_json::json!(drill.failure_reasons));
    assert_eq!(event["ledger"]["index"], ledger.index.to_string());
    assert_eq!(event["ledger"]["leaf_hash"], hex);
    id
}

/// Drill settings that notify `url`, signing with a fresh keyring written to
/// `dir`, retrying from 100 ms up to 400 ms.
fn webhook_config(dir: &std::path::Path, url: &str) -> (Vec<(&'static str, String)>, HmacKeyring) {
    let (keyring, json) = HmacKeyring::generate("webhook-1").unwrap();
    let path = dir.join("webhook-keys.json");
    std::fs::write(&path, json).unwrap();
    let vars = vec![
        ("SOMA_ANALYTICS_DRILL_OBJECTIVES", OBJECTIVES.to_owned()),
        ("SOMA_ANALYTICS_WEBHOOK_URLS", url.to_owned()),
        (
            "SOMA_ANALYTICS_WEBHOOK_KEYS_FILE",
            path.to_str().unwrap().to_owned(),
        ),
        ("SOMA_ANALYTICS_WEBHOOK_RETRY_BASE", "100ms".to_owned()),
        ("SOMA_ANALYTICS_WEBHOOK_RETRY_MAX", "400ms".to_owned()),
    ];
    (vars, keyring)
}

#[tokio::test]
async fn a_failed_drill_delivers_a_signed_webhook_and_a_passing_one_none() {
    for db in soma_store::testing::engines("analytics").await {
        let ca = Ca::new();
        let (claims, _) = ClaimsSigner::generate("gateway-1").unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let received = start_receiver(listener);
        let dir = tempfile::tempdir().unwrap();
        let (vars, keyring) = webhook_config(dir.path(), &url);
        let keys = AnalyticsKeys::generate();
        let svc = start_analytics(
            &ca,
            &db.settings,
            config_with(&keys, drill_config(&vars)),
            Some(&claims),
        )
        .await;
        let mut c = clients(&ca, &svc);

        let passed = c
            .record(&claims, "acme", drill("d-pass", "eu-west-1", T0, 60, 0, 1))
            .await
            .unwrap();
        assert!(passed.passed);
        let failed = c
            .record(&claims, "acme", drill("d-fail", "eu-west-1", T0, 3600, 0, 1))
            .await
            .unwrap();
        assert_eq!(failed.failure_reasons, ["rto 3600s exceeds the objective 900s"]);

        let store = db.connect().await;
        eventually("the delivery to be recorded", || {
            let store = store.clone();
            async move {
                scalar(
                    &store,
                    "SELECT COUNT(*) FROM webhook_outbox WHERE event_id = 'd-fail' AND delivered_at IS NOT NULL",
                )
                .await
                .filter(|n| *n == 1)
            }
        })
        .await;
        // On /metrics: delivered at the first attempt, nothing left.
        webhook_figures(
            &svc,
            &[
                "delivered_total 1",
                "delivery_failures_total 0",
                "pending_events 0",
                "oldest_pending_age_seconds 0",
            ],
        )
        .await;
        let requests = received.requests.lock().unwrap().clone();
        assert_eq!(requests.len(), 1, "{} deliveries", requests.len());
        let (headers, body) = &requests[0];
        let id = verify_delivery(&keyring, headers, body, &failed);
        assert_eq!(
            scalar(
                &store,
                &format!("SELECT attempts FROM webhook_outbox WHERE delivery_id = '{id}'")
            )
            .await,
            Some(1)
        );
        // A passing drill queues nothing.
        assert_eq!(
            scalar(
                &store,
                "SELECT COUNT(*) FROM webhook_outbox WHERE event_id = 'd-pass'"
            )
            .await,
            Some(0)
        );
        store.close().await;

        svc.stop().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn a_receiver_that_is_down_gets_the_webhook_exactly_once_when_back_even_across_a_restart() {
    for db in soma_store::testing::engines("analytics").await {
        let ca = Ca::new();
        let (claims, _) = ClaimsSigner::generate("gateway-1").unwrap();
        // A port that was free a moment ago, with nothing listening on it.
        let addr: SocketAddr = {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let (vars, keyring) = webhook_config(dir.path(), &format!("http://{addr}/hook"));
        let keys = AnalyticsKeys::generate();
        let svc = start_analytics(
            &ca,
            &db.settings,
            config_with(&keys, drill_config(&vars)),
            Some(&claims),
        )
        .await;
        let mut c = clients(&ca, &svc);
        let failed = c
            .record(&claims, "acme", drill("d-down", "ap-south-1", T0, 60, 0, 1))
            .await
            .unwrap();
        assert!(!failed.passed);

        // Several attempts fail and are recorded, with their error.
        let store = db.connect().await;
        let attempts = eventually("three failed attempts", || {
            let store = store.clone();
            async move {
                scalar(
                    &store,
                    "SELECT attempts FROM webhook_outbox WHERE event_id = 'd-down' AND delivered_at IS NULL \
                     AND last_error IS NOT NULL",
                )
                .await
                .filter(|n| *n >= 3)
            }
        })
        .await;
        assert!(attempts >= 3);
        // On /metrics: the one row waiting, never delivered, each failed
        // attempt counted (the counter runs ahead of the stored attempts by
        // at most the attempt in flight).
        webhook_figures(&svc, &["pending_events 1", "delivered_total 0"]).await;
        let exposition = soma_testing::http_get(svc.admin, "/metrics").await;
        let failures: i64 = exposition
            .lines()
            .find_map(|l| l.strip_prefix("soma_outbox_delivery_failures_total{outbox=\"drill_webhooks\"} "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            failures >= attempts,
            "{failures} failures, {attempts} attempts stored"
        );

        // The service restarts while the receiver is still down; the new
        // instance resumes the pending row from the outbox.
        svc.stop().await;
        let svc = start_analytics(
            &ca,
            &db.settings,
            config_with(&keys, drill_config(&vars)),
            Some(&claims),
        )
        .await;

        // The receiver comes back on the same port.
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let received = start_receiver(listener);
        eventually("the delivery to be recorded", || {
            let store = store.clone();
            async move {
                scalar(
                    &store,
                    "SELECT COUNT(*) FROM webhook_outbox WHERE event_id = 'd-down' AND delivered_at IS NOT NULL \
                     AND last_error IS NULL",
                )
                .await
                .filter(|n| *n == 1)
            }
        })
        .await;
        let total_attempts = scalar(
            &store,
            "SELECT attempts FROM webhook_outbox WHERE event_id = 'd-down'",
        )
        .await
        .unwrap();
        assert!(total_attempts > attempts, "{total_attempts} after {attempts}");

        // No second delivery on a later pass of the outbox. Once nothing is
        // pending the delivery task idles (up to 30 s), so sleeping would
        // watch no pass at all; instead a second failed drill wakes it, and
        // its arrival proves that a whole pass ran after the first delivery.
        let mut c = clients(&ca, &svc);
        let barrier = c
            .record(
                &claims,
                "acme",
                drill("d-after", "ap-south-1", T0 + 3600, 60, 0, 1),
            )
            .await
            .unwrap();
        assert!(!barrier.passed);
        let requests = eventually("the second drill's webhook", || {
            let received = received.clone();
            async move {
                let requests = received.requests.lock().unwrap().clone();
                (requests.len() >= 2).then_some(requests)
            }
        })
        .await;
        assert_eq!(requests.len(), 2, "{} deliveries", requests.len());
        let id = verify_delivery(&keyring, &requests[0].0, &requests[0].1, &failed);
        let after = verify_delivery(&keyring, &requests[1].0, &requests[1].1, &barrier);
        let by_id = received.by_id.lock().unwrap().clone();
        assert_eq!(by_id.get(&id), Some(&1), "{by_id:?}");
        assert_eq!(by_id.get(&after), Some(&1), "{by_id:?}");
        assert_eq!(by_id.len(), 2, "{by_id:?}");
        store.close().await;

        svc.stop().await;
        db.cleanup().await;
    }
}
