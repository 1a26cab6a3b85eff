//! Analytics active/standby on the HA stack of `scripts/ops/ha-up.sh`:
//! `soma up --database-url URL --analytics-standby` runs two Analytics on
//! one database; the one whose ledger writer holds the PostgreSQL advisory
//! lock writes, the other stands by, and every client of Analytics (the
//! gateway's edge, the outboxes) is given both addresses and sends to the
//! one that serves.
//!
//! - The standby waits while the active instance lives (health NOT_SERVING,
//!   `/readyz` `standby`, a write refused UNAVAILABLE `standby` with nothing
//!   written) and becomes the writer only once the active one is killed;
//!   the killed one comes back (restarted by `soma up`) as the standby; at
//!   no moment do both say they are ready.
//! - The active Analytics killed with SIGKILL under a steady write load
//!   through the edge: every acknowledged event is in the ledger exactly
//!   once (RPO 0), the ledger sweeps clean, the RTO is printed.
//! - `scripts/ops/run_failover_drill.sh --target analytics` kills the
//!   active Analytics, then `--target both` the PostgreSQL primary and the
//!   active Analytics at once: same guarantees, measured and printed by the
//!   drill, exit 0.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::cli::{ok, soma, wait_for_edge};
use common::ha::{Load, Stack, missing_from_store, script};
use serde_json::Value;
use soma_identity::{Bundle, BundleSet, SpiffeId, Svid, SvidStore, TrustDomain};
use soma_proto::v1 as pb;
use soma_proto::v1::analytics_client::AnalyticsClient;

/// A liveness bound on a switch (a standby taking over, a restarted
/// instance coming back), not a target.
const SWITCH_BOUND: Duration = Duration::from_secs(30);

/// `grpc.health.v1` SERVING and NOT_SERVING.
const SERVING: i32 = 1;
const NOT_SERVING: i32 = 2;

/// One Analytics instance of the `soma up`: its name, mTLS and admin
/// addresses.
#[derive(Clone, Debug)]
struct Instance {
    name: String,
    grpc: SocketAddr,
    admin: SocketAddr,
}

/// The two Analytics instances `endpoints.json` names.
fn instances(data: &Path) -> [Instance; 2] {
    let endpoints: Value =
        serde_json::from_slice(&std::fs::read(data.join("endpoints.json")).unwrap()).unwrap();
    let grpc: Vec<SocketAddr> = endpoints["analytics_instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().parse().unwrap())
        .collect();
    assert_eq!(grpc.len(), 2, "{endpoints}");
    assert_eq!(endpoints["analytics"].as_str().unwrap(), grpc[0].to_string());
    let admin = |name: &str| endpoints["admin"][name].as_str().unwrap().parse().unwrap();
    [
        Instance {
            name: "analytics".to_owned(),
            grpc: grpc[0],
            admin: admin("analytics"),
        },
        Instance {
            name: "analytics-2".to_owned(),
            grpc: grpc[1],
            admin: admin("analytics-2"),
        },
    ]
}

/// The pid `soma up` recorded for `instance`.
fn pid_of(data: &Path, instance: &str) -> u32 {
    let pids: BTreeMap<String, u32> =
        serde_json::from_slice(&std::fs::read(data.join("pids.json")).unwrap()).unwrap();
    pids[instance]
}

/// `GET /readyz` on an admin listener: the status and the body (`None`
/// when nothing answers, e.g. a killed instance).
async fn readyz(admin: SocketAddr) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let exchange = async {
        let mut tcp = tokio::net::TcpStream::connect(admin).await.ok()?;
        tcp.write_all(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .ok()?;
        let mut response = String::new();
        tcp.read_to_string(&mut response).await.ok()?;
        let status = response.get(9..12)?.parse().ok()?;
        let body = response.split_once("\r\n\r\n")?.1.to_owned();
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(2), exchange)
        .await
        .ok()?
}

/// An SVID for `spiffe_id` from the `soma up` authority, as a store.
fn svid(data: &Path, out: &Path, spiffe_id: &str) -> Arc<SvidStore> {
    ok(&soma(
        &[
            "ca",
            "issue",
            "--data-dir",
            data.to_str().unwrap(),
            "--spiffe-id",
            spiffe_id,
            "--out",
            out.to_str().unwrap(),
        ],
        data,
    ));
    let td = TrustDomain::parse("somastack.local").unwrap();
    let svid = Svid::from_pem(
        &std::fs::read(out.join("svid.pem")).unwrap(),
        &std::fs::read(out.join("key.pem")).unwrap(),
    )
    .unwrap();
    let mut bundles = BundleSet::new();
    bundles.insert(Bundle::from_pem(td, &std::fs::read(out.join("bundle.pem")).unwrap()).unwrap());
    SvidStore::new(svid.spiffe_id().clone(), svid, bundles).unwrap()
}

fn analytics_id() -> SpiffeId {
    SpiffeId::parse("spiffe://somastack.local/svc/analytics").unwrap()
}

/// `instance`'s whole-server health, as a peer service sees it.
async fn health(store: &Arc<SvidStore>, instance: &Instance) -> Option<i32> {
    let channel = soma_testing::channel(Arc::clone(store), instance.grpc, &analytics_id());
    tokio::time::timeout(Duration::from_secs(3), soma_testing::health(channel, ""))
        .await
        .ok()?
        .ok()
}

async fn wait_for_health(store: &Arc<SvidStore>, instance: &Instance, status: i32) {
    let deadline = Instant::now() + SWITCH_BOUND;
    while health(store, instance).await != Some(status) {
        assert!(
            Instant::now() < deadline,
            "{} never reported health {status}",
            instance.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The instance whose `/readyz` answers 200 (the lease's holder), waiting
/// for exactly one.
async fn active_of(instances: &[Instance; 2]) -> (Instance, Instance) {
    let deadline = Instant::now() + SWITCH_BOUND;
    loop {
        let a = readyz(instances[0].admin).await.map(|(s, _)| s);
        let b = readyz(instances[1].admin).await.map(|(s, _)| s);
        match (a, b) {
            (Some(200), Some(503)) => return (instances[0].clone(), instances[1].clone()),
            (Some(503), Some(200)) => return (instances[1].clone(), instances[0].clone()),
            (Some(200), Some(200)) => panic!("both Analytics instances say they are ready: two writers"),
            _ => {}
        }
        assert!(
            Instant::now() < deadline,
            "no single ready Analytics: {a:?} {b:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Samples both instances' `/readyz` until stopped; counts the samples in
/// which both answered 200.
fn watch_for_two_writers(
    instances: &[Instance; 2],
) -> (Arc<AtomicBool>, Arc<AtomicU64>, tokio::task::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let both = Arc::new(AtomicU64::new(0));
    let (a, b) = (instances[0].admin, instances[1].admin);
    let task = {
        let (stop, both) = (Arc::clone(&stop), Arc::clone(&both));
        tokio::spawn(async move {
            let mut samples = 0;
            while !stop.load(Ordering::Relaxed) {
                let (ra, rb) = tokio::join!(readyz(a), readyz(b));
                if matches!((ra, rb), (Some((200, _)), Some((200, _)))) {
                    both.fetch_add(1, Ordering::Relaxed);
                }
                samples += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            samples
        })
    };
    (stop, both, task)
}

/// A token of `tenant` with `scope` from the `soma up` issuer.
fn token(data: &Path, tenant: &str, scope: &str) -> String {
    ok(&soma(
        &[
            "token",
            "--data-dir",
            data.to_str().unwrap(),
            "--tenant",
            tenant,
            "--region",
            "local",
            "--scope",
            scope,
        ],
        data,
    ))
    .trim()
    .to_owned()
}

/// `soma verify store` on Analytics' database: every row and leaf
/// authenticated, one to one, the leaves contiguous and their root every
/// checkpoint's.
fn verify_store(data: &Path, stack: &Stack) {
    ok(&soma(
        &[
            "verify",
            "store",
            "--data-dir",
            data.to_str().unwrap(),
            "--service",
            "analytics",
            "--database-url",
            &stack.service_url("analytics"),
        ],
        data,
    ));
}

fn kill(pid: u32) {
    common::signal("KILL", pid);
}

async fn billing_rows(stack: &Stack, event_id: &str) -> i64 {
    let settings = soma_store::StoreSettings {
        data_dir: std::env::temp_dir().join("unused"),
        database_url: Some(stack.service_url("analytics")),
    };
    let db = soma_store::Database::connect(&settings, "analytics")
        .await
        .unwrap();
    let n = soma_testing::scalar(
        &db,
        &format!("SELECT COUNT(*) FROM billing_events WHERE event_id = '{event_id}'"),
    )
    .await;
    db.close().await;
    n
}

fn billing(event_id: &str) -> pb::RecordBillingEventRequest {
    common::analytics::billing(event_id, "acme", 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_waits_while_the_active_analytics_lives_and_takes_over_once_it_is_killed() {
    let _one_at_a_time = common::ha::one_at_a_time().await;
    let dir = tempfile::tempdir().unwrap();
    let stack = Stack::up(dir.path().join("ha"));
    let data = dir.path().join("data");
    let mut up = common::spawn_soma_up(&data, &["--database-url", &stack.url, "--analytics-standby"]);
    let edge = wait_for_edge(&data).await;
    let instances = instances(&data);
    let (sampling, both_ready, sampler) = watch_for_two_writers(&instances);
    let registry = svid(
        &data,
        &dir.path().join("registry-svid"),
        "spiffe://somastack.local/svc/tool-registry",
    );

    // One writes, the other waits, and says why.
    let (active, standby) = active_of(&instances).await;
    println!(
        "active {} (pid {}), standby {}",
        active.name,
        pid_of(&data, &active.name),
        standby.name
    );
    assert_eq!(health(&registry, &active).await, Some(SERVING));
    assert_eq!(health(&registry, &standby).await, Some(NOT_SERVING));
    let (status, body) = readyz(standby.admin).await.unwrap();
    assert_eq!(status, 503);
    assert!(body.contains("not ready: standby"), "{body}");
    // A write sent to the standby directly is refused before anything is
    // written.
    let mut to_standby = AnalyticsClient::new(soma_testing::channel(
        Arc::clone(&registry),
        standby.grpc,
        &analytics_id(),
    ));
    let refused = to_standby
        .record_billing_event(billing("to-standby"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert_eq!(soma_testing::grpc_reason(&refused), "standby");
    assert_eq!(billing_rows(&stack, "to-standby").await, 0);

    // Writes through the edge go to the active one; the standby keeps
    // waiting while it lives.
    let load = Load::start(&edge, &token(&data, "acme", "analytics:ingest"), "standby");
    load.wait_for(20, Duration::from_secs(30)).await;
    assert_eq!(health(&registry, &standby).await, Some(NOT_SERVING));

    // The active one is killed: the standby takes the lease and writes.
    let killed = pid_of(&data, &active.name);
    let killed_at = Instant::now();
    kill(killed);
    wait_for_health(&registry, &standby, SERVING).await;
    println!(
        "{} serving {:.3}s after the kill",
        standby.name,
        killed_at.elapsed().as_secs_f64()
    );
    assert_eq!(readyz(standby.admin).await.unwrap().0, 200);
    let recorded = to_standby
        .record_billing_event(billing("after-takeover"))
        .await
        .unwrap()
        .into_inner();
    assert!(recorded.ledger.unwrap().index > 20);
    load.wait_for_recovery(killed_at, killed_at, 20, SWITCH_BOUND)
        .await;

    // The killed instance is restarted by `soma up` and comes back as the
    // standby.
    let deadline = Instant::now() + SWITCH_BOUND;
    loop {
        let restarted = pid_of(&data, &active.name);
        if restarted != killed
            && let Some((503, body)) = readyz(active.admin).await
            && body.contains("standby")
        {
            println!("{} restarted (pid {restarted}) as the standby", active.name);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} did not come back as the standby",
            active.name
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(health(&registry, &active).await, Some(NOT_SERVING));
    assert_eq!(health(&registry, &standby).await, Some(SERVING));

    let acks = load.finish().await;
    let missing = missing_from_store(&stack.service_url("analytics"), "acme", "standby", &acks).await;
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
    sampling.store(true, Ordering::Relaxed);
    let samples = sampler.await.unwrap();
    println!(
        "readiness sampled {samples} times: both ready in {}",
        both_ready.load(Ordering::Relaxed)
    );
    assert!(samples > 0);
    assert_eq!(
        both_ready.load(Ordering::Relaxed),
        0,
        "two Analytics said they were ready at once"
    );
    verify_store(&data, &stack);
    up.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_active_analytics_under_load_loses_no_acknowledged_event() {
    let _one_at_a_time = common::ha::one_at_a_time().await;
    let dir = tempfile::tempdir().unwrap();
    let stack = Stack::up(dir.path().join("ha"));
    let data = dir.path().join("data");
    let mut up = common::spawn_soma_up(&data, &["--database-url", &stack.url, "--analytics-standby"]);
    let edge = wait_for_edge(&data).await;
    let instances = instances(&data);
    let (active, standby) = active_of(&instances).await;

    let load = Load::start(&edge, &token(&data, "acme", "analytics:ingest"), "kill");
    load.wait_for(40, Duration::from_secs(30)).await;
    let killed = pid_of(&data, &active.name);
    let killed_at = Instant::now();
    kill(killed);
    // Recovered: another process holds the lease — the standby, or the
    // killed instance once `soma up` restarted it (100 ms later) if its
    // fresh process got the lease first: both wait as standbys for the dead
    // session to go — and 40 writes sent after the kill (and after the
    // outage became visible) are acknowledged. Never both ready at once.
    let deadline = killed_at + SWITCH_BOUND;
    let took_over = loop {
        let standby_ready = readyz(standby.admin).await.map(|(s, _)| s) == Some(200);
        let restarted_ready =
            readyz(active.admin).await.map(|(s, _)| s) == Some(200) && pid_of(&data, &active.name) != killed;
        match (standby_ready, restarted_ready) {
            (true, true) => panic!("both Analytics instances say they are ready: two writers"),
            (true, false) => break standby.name.clone(),
            (false, true) => break format!("{} (restarted)", active.name),
            (false, false) => {}
        }
        assert!(Instant::now() < deadline, "no Analytics took over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    load.wait_for_recovery(killed_at, killed_at, 40, Duration::from_secs(60))
        .await;
    let acks = load.finish().await;
    let rto = acks.rto(killed_at).unwrap();
    println!(
        "active Analytics {} (pid {killed}) killed: {took_over} took over; rto_seconds={:.3}; acknowledged {}; refusals by status {:?}",
        active.name,
        rto.as_secs_f64(),
        acks.at.len(),
        acks.refusals
    );
    assert!(rto < Duration::from_secs(15), "rto {rto:?}");
    // A retried event is answered with its stored record: never a conflict.
    assert!(!acks.refusals.contains_key(&409), "{:?}", acks.refusals);
    let missing = missing_from_store(&stack.service_url("analytics"), "acme", "kill", &acks).await;
    println!("rpo_events={} (of {} acknowledged)", missing.len(), acks.at.len());
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
    verify_store(&data, &stack);
    up.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drill_kills_the_active_analytics_then_it_and_the_primary_at_once_and_loses_nothing() {
    let _one_at_a_time = common::ha::one_at_a_time().await;
    let dir = tempfile::tempdir().unwrap();
    let ha = dir.path().join("ha");
    let stack = Stack::up(ha.clone());
    let data = dir.path().join("data");
    let mut up = common::spawn_soma_up(&data, &["--database-url", &stack.url, "--analytics-standby"]);
    wait_for_edge(&data).await;
    let instances = instances(&data);
    active_of(&instances).await;
    stack.wait_for_sync_standby().await;

    let drill = |target: &str| {
        let drill = std::process::Command::new(script("run_failover_drill.sh"))
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
                "15s",
                "--before",
                "20",
                "--after",
                "20",
            ])
            .env("SOMA", common::cli::SOMA)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&drill.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&drill.stderr).into_owned();
        println!("{stderr}");
        let last = stdout.lines().last().unwrap_or_default().to_owned();
        let fields: BTreeMap<&str, &str> = last.split(' ').filter_map(|f| f.split_once('=')).collect();
        assert_eq!(fields.len(), 2, "last line: {last:?}; stderr: {stderr}");
        let rto: f64 = fields["rto_seconds"].parse().unwrap();
        let rpo: u64 = fields["rpo_events"].parse().unwrap();
        println!("drill --target {target}: rto_seconds={rto} rpo_events={rpo}");
        assert_eq!(drill.status.code(), Some(0), "{stderr}");
        assert!(rto > 0.0 && rto < 15.0, "rto {rto}");
        assert_eq!(rpo, 0);
        stderr
    };
    // The active Analytics alone, then it and the primary at once.
    let alone = drill("analytics");
    assert!(alone.contains("killed the active Analytics"), "{alone}");
    stack.wait_for_sync_standby().await;
    let both = drill("both");
    assert!(
        both.contains("the PostgreSQL primary") && both.contains("the active Analytics"),
        "{both}"
    );

    // One writer afterwards, and the ledger sweeps clean.
    active_of(&instances).await;
    verify_store(&data, &stack);
    up.kill().await.unwrap();
}
