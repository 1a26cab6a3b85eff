//! The sandbox table through `ExecuteTool`, on every engine: each hostile
//! adapter is stopped with its own clear error, within its budgets, while
//! the service keeps serving other calls; every run, failed or not, is
//! billed from what the sandbox measured.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Harness, Publisher, adapter};
use prost::Message as _;
use serde_json::json;
use soma_mesh::ServiceKind;
use soma_proto::v1 as pb;
use soma_release::Limits;
use soma_store::on_pool;
use soma_testing::grpc_reason;
use sqlx::Row as _;
use tonic::Code;

const MIB: u64 = 1024 * 1024;

struct Case {
    name: &'static str,
    adapter: &'static str,
    limits: Limits,
    code: Code,
    reason: &'static str,
}

fn cases() -> Vec<Case> {
    let small = Limits {
        fuel: 1_000_000,
        memory_bytes: 4 * MIB,
        deadline_ms: 5_000,
    };
    vec![
        Case {
            name: "infinite loop under a fuel budget",
            adapter: "infinite_loop",
            limits: small,
            code: Code::ResourceExhausted,
            reason: "fuel_exhausted",
        },
        Case {
            name: "infinite loop under a deadline",
            adapter: "infinite_loop",
            limits: Limits {
                fuel: 10_000_000_000,
                memory_bytes: 4 * MIB,
                deadline_ms: 200,
            },
            code: Code::ResourceExhausted,
            reason: "deadline_exceeded",
        },
        Case {
            name: "memory bomb",
            adapter: "memory_bomb",
            limits: Limits {
                fuel: 10_000_000_000,
                memory_bytes: 32 * MIB,
                deadline_ms: 5_000,
            },
            code: Code::ResourceExhausted,
            reason: "memory_limit_exceeded",
        },
        Case {
            name: "deep recursion",
            adapter: "deep_recursion",
            limits: Limits {
                fuel: 10_000_000_000,
                ..small
            },
            code: Code::ResourceExhausted,
            reason: "stack_overflow",
        },
        Case {
            name: "trap",
            adapter: "trap",
            limits: small,
            code: Code::Aborted,
            reason: "trap",
        },
        Case {
            name: "huge output",
            adapter: "huge_output",
            limits: small,
            code: Code::ResourceExhausted,
            reason: "output_too_large",
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_adapters_are_stopped_with_their_reason_while_others_are_served() {
    for stores in soma_testing::engine_stores(&[ServiceKind::ToolRegistry]).await {
        let h = Harness::start(stores.of(ServiceKind::ToolRegistry)).await;
        let publisher = Publisher::generate("acme-tools");
        h.register(&publisher).await;
        h.publish(publisher.release("text-stats", "1.0.0", &adapter("text_stats")))
            .await
            .unwrap();
        // The one kind refused before it can ever run: an import.
        let wasi = h
            .publish(publisher.release("wasi", "1.0.0", &adapter("wasi_import")))
            .await
            .unwrap_err();
        assert_eq!(
            (wasi.code(), grpc_reason(&wasi)),
            (Code::InvalidArgument, "module_imports_forbidden"),
            "{}",
            stores.label
        );

        for (i, case) in cases().into_iter().enumerate() {
            let label = format!("{}: {}", stores.label, case.name);
            let tool = format!("hostile-{i}");
            h.publish(publisher.release_with(&tool, "1.0.0", &adapter(case.adapter), case.limits))
                .await
                .unwrap_or_else(|e| panic!("{label}: {e:?}"));

            // A well-behaved call runs while the hostile one does.
            let hostile = {
                let client = h.client(common::GATEWAY);
                let request = h.tenant(
                    "acme",
                    &["tools:execute"],
                    pb::ExecuteToolRequest {
                        tool: tool.clone(),
                        version: String::new(),
                        input: Some(common::to_struct(&json!({"text": "x"}))),
                        run_id: format!("run-{i}"),
                    },
                );
                tokio::spawn(async move { client.clone().execute_tool(request).await })
            };
            let started = Instant::now();
            let good = h
                .execute("acme", "text-stats", "1.0.0", json!({"text": "still served"}))
                .await
                .unwrap_or_else(|e| panic!("{label}: the concurrent call failed: {e:?}"));
            assert_eq!(
                common::from_struct(good.output.as_ref().unwrap())["words"],
                json!(2.0)
            );
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "{label}: the concurrent call waited"
            );

            let status = hostile.await.unwrap().unwrap_err();
            assert_eq!(
                (status.code(), grpc_reason(&status)),
                (case.code, case.reason),
                "{label}: {status:?}"
            );
            assert!(
                status.message().contains("billing event exec-"),
                "{label}: {status:?}"
            );

            // Billed from what was measured, within the manifest's budgets.
            let billed = billing_of(&h, &format!("run-{i}")).await;
            assert_eq!(billed.tenant, "acme", "{label}");
            assert_eq!(billed.tool, tool);
            assert!(billed.fuel_consumed <= case.limits.fuel, "{label}: {billed:?}");
            assert!(billed.fuel_consumed > 0, "{label}: {billed:?}");
            if case.reason == "fuel_exhausted" {
                assert_eq!(billed.fuel_consumed, case.limits.fuel, "{label}");
            }
            if case.reason == "deadline_exceeded" {
                // Stopped within the manifest's deadline + 50 ms, and never
                // before it, as the sandbox measured the run.
                let deadline_micros = case.limits.deadline_ms * 1_000;
                assert!(
                    billed.duration_micros >= deadline_micros
                        && billed.duration_micros <= deadline_micros + 50_000,
                    "{label}: ran {} µs",
                    billed.duration_micros
                );
            }
        }
        h.stop().await;
        stores.cleanup().await;
    }
}

/// A memory bomb is refused at its cap, and the process hosting the
/// registry grows by no more than the cap + 10 % while it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_bomb_stops_at_its_cap_and_the_service_stays_within_it() {
    let stores = soma_testing::engine_stores(&[ServiceKind::ToolRegistry])
        .await
        .next()
        .unwrap();
    let h = Harness::start(stores.of(ServiceKind::ToolRegistry)).await;
    let publisher = Publisher::generate("acme-tools");
    h.register(&publisher).await;
    let cap = 32 * MIB;
    h.publish(publisher.release_with(
        "bomb",
        "1.0.0",
        &adapter("memory_bomb"),
        Limits {
            fuel: 10_000_000_000,
            memory_bytes: cap,
            deadline_ms: 5_000,
        },
    ))
    .await
    .unwrap();
    // Warm: the first run compiles, and the runtime's own allocations settle.
    h.execute("acme", "bomb", "", json!({})).await.unwrap_err();

    let before = rss_bytes();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(before));
    let sampling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let (peak, sampling) = (peak.clone(), sampling.clone());
        std::thread::spawn(move || {
            while sampling.load(std::sync::atomic::Ordering::Relaxed) {
                peak.fetch_max(rss_bytes(), std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
        })
    };
    for _ in 0..3 {
        let status = h.execute("acme", "bomb", "", json!({})).await.unwrap_err();
        assert_eq!(grpc_reason(&status), "memory_limit_exceeded", "{status:?}");
    }
    sampling.store(false, std::sync::atomic::Ordering::Relaxed);
    sampler.join().unwrap();
    let grown = peak
        .load(std::sync::atomic::Ordering::Relaxed)
        .saturating_sub(before);
    assert!(
        grown <= cap + cap / 10,
        "the process grew by {grown} bytes with a {cap}-byte cap"
    );
    h.stop().await;
    stores.cleanup().await;
}

/// The billing event the outbox holds for `run_id`.
async fn billing_of(h: &Harness, run_id: &str) -> pb::RecordBillingEventRequest {
    let payloads: Vec<Vec<u8>> = on_pool!(h.db, pool => {
        sqlx::query("SELECT payload FROM outbox WHERE kind = 'billing'")
            .fetch_all(pool)
            .await
            .unwrap()
            .iter()
            .map(|r| r.try_get::<Vec<u8>, _>(0).unwrap())
            .collect()
    });
    payloads
        .iter()
        .map(|p| pb::RecordBillingEventRequest::decode(p.as_slice()).unwrap())
        .find(|e| e.run_id == run_id)
        .unwrap_or_else(|| panic!("no billing event for {run_id}"))
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}
