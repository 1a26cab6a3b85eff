//! `soma up --database-url` on the HA stack of `scripts/ops/ha-up.sh`:
//! Patroni with etcd, two PostgreSQL 15 members with strict synchronous
//! replication, HAProxy routing to the primary by Patroni's health check —
//! the real engines, started by the script, on loopback ports away from
//! 5432.
//!
//! Under a steady write load through the JSON edge (capsule run events,
//! each retried with its own event id until acknowledged), the primary's
//! postmaster is killed with SIGKILL, ten times over: each time Patroni
//! promotes the synchronous standby, HAProxy follows it, the services
//! reconnect by themselves, and in the end every acknowledged event is in
//! Analytics' ledger exactly once (RPO 0); `soma verify store` sweeps the
//! ledger after it (every row and leaf authenticated, the leaves and rows
//! one to one). Each RTO (the kill to the first acknowledgement of a write
//! sent after it) and their distribution are printed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::cli::{ok, soma, wait_for_edge};
use common::ha::{Load, Stack, missing_from_store, script};

/// Primaries killed one after the other in one run.
const KILLS: usize = 10;

/// Ten consecutive primary kills under one steady load: every
/// acknowledged event in the ledger exactly once in the end (RPO 0 in
/// total), each recovery under the 15 s, the RTO distribution
/// printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_killed_primaries_lose_no_acknowledged_event() {
    let dir = tempfile::tempdir().unwrap();
    let stack = Stack::up(dir.path().join("ha"));
    let data = dir.path().join("data");
    let mut up = common::spawn_soma_up(&data, &["--database-url", &stack.url]);
    let edge = wait_for_edge(&data).await;
    let token = ok(&soma(
        &[
            "token",
            "--data-dir",
            data.to_str().unwrap(),
            "--tenant",
            "acme",
            "--region",
            "local",
            "--scope",
            "analytics:ingest",
        ],
        dir.path(),
    ))
    .trim()
    .to_owned();

    // Four writers, each sending its events in order, each event until it
    // is acknowledged.
    let load = Load::start(&edge, &token, "ha");
    load.wait_for(40, Duration::from_secs(30)).await;

    // Ten primaries killed one after the other, each once the cluster has
    // a synchronous standby again; each recovery is a new leader, then 20
    // writes sent after it and after the outage became visible,
    // acknowledged.
    let mut rtos = Vec::new();
    for kill in 1..=KILLS {
        stack.wait_for_sync_standby().await;
        let leader = stack.leader().await;
        let postmaster = stack.postmaster(&leader);
        let killed_at = Instant::now();
        let killed = std::process::Command::new("kill")
            .args(["-KILL", &postmaster.to_string()])
            .status()
            .unwrap();
        assert!(killed.success(), "kill -KILL {postmaster}");
        let deadline = killed_at + Duration::from_secs(60);
        let new_leader = loop {
            if let Some(now_leader) = stack.try_leader().await
                && now_leader != leader
            {
                break now_leader;
            }
            assert!(
                Instant::now() < deadline,
                "kill {kill}: no new leader within 60 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let promoted_seen = Instant::now();
        load.wait_for_recovery(killed_at, promoted_seen, 20, Duration::from_secs(60))
            .await;
        let rto = load.acks.lock().unwrap().rto(killed_at).unwrap();
        println!(
            "kill {kill}: primary {leader} (postmaster {postmaster}) killed; new primary {new_leader}; rto_seconds={:.3}",
            rto.as_secs_f64()
        );
        assert!(
            rto < Duration::from_secs(15),
            "kill {kill}: rto {rto:?} (the bound is 15 s)"
        );
        rtos.push(rto);
    }
    let acks = load.finish().await;
    rtos.sort();
    // A retried event is answered with its stored record: never a conflict.
    assert!(!acks.refusals.contains_key(&409), "{:?}", acks.refusals);
    println!(
        "{KILLS} primary kills: rto_seconds min {:.3} median {:.3} max {:.3}; acknowledged {}; refusals by status {:?}",
        rtos[0].as_secs_f64(),
        rtos[rtos.len() / 2].as_secs_f64(),
        rtos[rtos.len() - 1].as_secs_f64(),
        acks.at.len(),
        acks.refusals
    );

    // Every acknowledged event is in Analytics' database exactly once.
    let analytics_url = stack.service_url("analytics");
    let missing = missing_from_store(&analytics_url, "acme", "ha", &acks).await;
    println!("rpo_events={} (of {} acknowledged)", missing.len(), acks.at.len());
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");

    // The ledger after the failover: every row and leaf authenticated, one
    // to one, without a gap.
    let swept = soma(
        &[
            "verify",
            "store",
            "--data-dir",
            data.to_str().unwrap(),
            "--service",
            "analytics",
            "--database-url",
            &analytics_url,
        ],
        dir.path(),
    );
    ok(&swept);

    up.kill().await.unwrap();
}

/// `scripts/ops/run_failover_drill.sh`, the seed's drill: a load through
/// the edge, the primary killed, RTO and RPO measured from outside and
/// printed as its last line, the drill recorded in Analytics (and in its
/// summary); a target set below what is achievable makes it exit 1; an
/// Analytics target on a stack without an Analytics standby is refused with
/// exit 64 (`ha_standby.rs` drills one that has it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_failover_drill_measures_rto_and_rpo_and_exits_non_zero_when_a_target_is_missed() {
    let dir = tempfile::tempdir().unwrap();
    let ha = dir.path().join("ha");
    let stack = Stack::up(ha.clone());
    let data = dir.path().join("data");
    let mut up = common::spawn_soma_up(&data, &["--database-url", &stack.url]);
    let edge = wait_for_edge(&data).await;
    let drill = |rto_target: &str, target: &str| {
        std::process::Command::new(script("run_failover_drill.sh"))
            .args([
                "--data-dir",
                data.to_str().unwrap(),
                "--ha-dir",
                ha.to_str().unwrap(),
            ])
            .args([
                "--target",
                target,
                "--rto-target",
                rto_target,
                "--before",
                "20",
                "--after",
                "20",
            ])
            .env("SOMA", common::cli::SOMA)
            .output()
            .unwrap()
    };
    // (rto_seconds, rpo_events) of a drill's last line.
    let figures = |output: &std::process::Output| -> (f64, u64) {
        let stdout = String::from_utf8_lossy(&output.stdout);
        let last = stdout.lines().last().unwrap_or_default().to_owned();
        let fields: BTreeMap<&str, &str> = last.split(' ').filter_map(|f| f.split_once('=')).collect();
        assert_eq!(
            fields.len(),
            2,
            "last line: {last:?}; stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        (
            fields["rto_seconds"].parse().unwrap(),
            fields["rpo_events"].parse().unwrap(),
        )
    };

    let passed = drill("15s", "postgres");
    let (rto, rpo) = figures(&passed);
    println!(
        "drill 1: rto_seconds={rto} rpo_events={rpo}\n{}",
        String::from_utf8_lossy(&passed.stderr)
    );
    assert_eq!(
        passed.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&passed.stderr)
    );
    assert!(rto > 0.0 && rto < 15.0, "rto {rto}");
    assert_eq!(rpo, 0);

    // A target nothing can meet: measured, recorded, exit 1.
    stack.wait_for_sync_standby().await;
    let missed = drill("1ms", "postgres");
    let (rto, rpo) = figures(&missed);
    println!("drill 2: rto_seconds={rto} rpo_events={rpo}");
    assert_eq!(
        missed.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&missed.stderr)
    );
    assert_eq!(rpo, 0);

    // Both drills are in Analytics' summary for the region.
    let token = ok(&soma(
        &[
            "token",
            "--data-dir",
            data.to_str().unwrap(),
            "--tenant",
            "drill",
            "--region",
            "local",
            "--scope",
            "drills:read",
        ],
        dir.path(),
    ))
    .trim()
    .to_owned();
    let http = common::edge::client();
    let summary = common::edge::send(
        &http,
        "GET",
        &format!("{edge}/v1/drills/disaster/summary"),
        Some(&token),
        None,
        &[],
    )
    .await;
    assert_eq!(summary.status, 200, "{}", String::from_utf8_lossy(&summary.body));
    let summary = summary.json();
    let local = summary["regions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["region"] == "local")
        .unwrap_or_else(|| panic!("no local region: {summary}"))
        .clone();
    let count: u64 = local["count"]
        .as_str()
        .map_or_else(|| local["count"].as_u64().unwrap(), |c| c.parse().unwrap());
    assert_eq!(count, 2, "{summary}");

    // No Analytics standby on this stack: nothing would take over; refused,
    // exit 64, nothing killed.
    let refused = drill("15s", "analytics");
    assert_eq!(
        refused.status.code(),
        Some(64),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    up.kill().await.unwrap();
}
