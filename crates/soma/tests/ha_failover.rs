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

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cli::{ok, soma, wait_for_edge};
use serde_json::{Value, json};

/// Where the scripts are.
fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts/ops")
        .join(name)
}

/// A base port with the stack's 22 ports free on loopback; each test of
/// this process gets its own range.
fn free_base() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let start = 25_400 + (std::process::id() % 20) as u16 * 30;
    let first = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    (first..first + 40)
        .map(|i| start.wrapping_add(i * 30))
        .find(|base| (0..22).all(|offset| std::net::TcpListener::bind(("127.0.0.1", base + offset)).is_ok()))
        .expect("no free port range for the HA stack")
}

/// The HA stack in `dir`, stopped when dropped.
struct Stack {
    dir: PathBuf,
    url: String,
    base: u16,
}

impl Stack {
    fn up(dir: PathBuf) -> Self {
        let base = free_base();
        let output = std::process::Command::new(script("ha-up.sh"))
            .arg(&dir)
            .env("SOMA_HA_BASE_PORT", base.to_string())
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "ha-up.sh failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8(output.stdout).unwrap();
        let url = stdout.lines().last().unwrap().trim().to_owned();
        assert!(url.starts_with("postgres://"), "last line: {url:?}");
        Self { dir, url, base }
    }

    /// Patroni's view of the cluster, from either member's REST API.
    async fn cluster(&self) -> Value {
        let http = common::edge::client();
        for port in [self.base + 20, self.base + 21] {
            let url = format!("http://127.0.0.1:{port}/cluster");
            let sent = tokio::time::timeout(
                Duration::from_secs(3),
                common::edge::send(&http, "GET", &url, None, None, &[]),
            )
            .await;
            if let Ok(r) = sent
                && r.status == 200
            {
                return r.json();
            }
        }
        panic!("no Patroni member answers");
    }

    /// Waits until a member is the synchronous standby again.
    async fn wait_for_sync_standby(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let cluster = self.cluster().await;
            if cluster["members"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["role"] == "sync_standby" && m["state"] == "running")
            {
                return;
            }
            assert!(Instant::now() < deadline, "no synchronous standby: {cluster}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn leader(&self) -> String {
        self.try_leader().await.expect("the cluster has a leader")
    }

    /// The leader, if the cluster has one at this moment (not during a
    /// failover).
    async fn try_leader(&self) -> Option<String> {
        let cluster = self.cluster().await;
        cluster["members"]
            .as_array()?
            .iter()
            .find(|m| m["role"] == "leader")
            .and_then(|m| m["name"].as_str())
            .map(str::to_owned)
    }

    /// The pid of `member`'s postmaster (Patroni detaches it).
    fn postmaster(&self, member: &str) -> i32 {
        let pid = std::fs::read_to_string(self.dir.join(member).join("postmaster.pid")).unwrap();
        pid.lines().next().unwrap().trim().parse().unwrap()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = std::process::Command::new(script("ha-down.sh"))
            .arg(&self.dir)
            .output();
    }
}

/// What the writers saw: each acknowledged event id with when the
/// attempt that was acknowledged was sent, and when its answer came.
#[derive(Default)]
struct Acks {
    at: BTreeMap<String, (Instant, Instant)>,
    /// When each refused attempt was answered.
    refused_at: Vec<Instant>,
    refusals: BTreeMap<u16, u64>,
}

impl Acks {
    /// The first refusal answered after `t`: when the outage became
    /// visible (the killed primary's backends may still commit, replicated,
    /// for a few milliseconds after its postmaster died).
    fn outage_seen(&self, t: Instant) -> Option<Instant> {
        self.refused_at.iter().copied().filter(|r| *r > t).min()
    }

    fn sent_after(&self, t: Instant) -> usize {
        self.at.values().filter(|(sent, _)| *sent > t).count()
    }

    /// From the kill to the first acknowledgement of a write sent after
    /// the outage became visible (after the kill if nothing was refused).
    fn rto(&self, killed_at: Instant) -> Option<Duration> {
        let from = self.outage_seen(killed_at).unwrap_or(killed_at);
        self.at
            .values()
            .filter(|(sent, _)| *sent > from)
            .map(|(_, acked)| acked.duration_since(killed_at))
            .min()
    }
}

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
    let acks = Arc::new(Mutex::new(Acks::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..4 {
        let (acks, stop, edge, token) = (Arc::clone(&acks), Arc::clone(&stop), edge.clone(), token.clone());
        writers.push(tokio::spawn(async move {
            let http = common::edge::client();
            // One start time for every event: an event sent again carries
            // exactly the same content (Analytics answers it with the stored
            // record, where other content would be a conflict).
            let started = common::cli::rfc3339(time::OffsetDateTime::now_utc() - time::Duration::seconds(1));
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let id = format!("ha-{w}-{i}");
                let body = json!({
                    "eventId": id, "capsuleId": "drill", "runId": id,
                    "outcome": "RUN_OUTCOME_SUCCEEDED",
                    "startedAt": started,
                    "duration": "1s",
                });
                let sent = Instant::now();
                let r = common::edge::send(
                    &http,
                    "POST",
                    &format!("{edge}/v1/capsule-runs"),
                    Some(&token),
                    Some(&body.to_string()),
                    &[],
                )
                .await;
                let acknowledged = r.status == 200;
                {
                    let mut acks = acks.lock().unwrap();
                    if acknowledged {
                        acks.at.insert(id, (sent, Instant::now()));
                    } else {
                        acks.refused_at.push(Instant::now());
                        *acks.refusals.entry(r.status).or_default() += 1;
                    }
                }
                if acknowledged {
                    i += 1;
                } else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }));
    }
    let count = |acks: &Arc<Mutex<Acks>>| acks.lock().unwrap().at.len();
    let wait_for = |n: usize, within: Duration| {
        let acks = Arc::clone(&acks);
        async move {
            let deadline = Instant::now() + within;
            while count(&acks) < n {
                assert!(
                    Instant::now() < deadline,
                    "only {} acknowledged writes",
                    count(&acks)
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    wait_for(40, Duration::from_secs(30)).await;

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
        loop {
            {
                let acks = acks.lock().unwrap();
                let from = acks
                    .outage_seen(killed_at)
                    .map_or(promoted_seen, |outage| outage.max(promoted_seen));
                if acks.sent_after(from) >= 20 {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "kill {kill}: no recovery within 60 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let rto = acks.lock().unwrap().rto(killed_at).unwrap();
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
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for writer in writers {
        writer.await.unwrap();
    }
    let acks = Arc::try_unwrap(acks).ok().unwrap().into_inner().unwrap();
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
    let analytics_url = soma_store::with_database(&stack.url, "soma_analytics").unwrap();
    let settings = soma_store::StoreSettings {
        data_dir: dir.path().join("unused"),
        database_url: Some(analytics_url.clone()),
    };
    let db = soma_store::Database::connect(&settings, "analytics")
        .await
        .unwrap();
    let stored: Vec<String> = soma_store::on_pool!(db, pool => {
        use sqlx::Row as _;
        sqlx::query("SELECT event_id FROM capsule_runs WHERE tenant = 'acme' AND event_id LIKE 'ha-%'")
            .fetch_all(pool)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<String, _>(0))
            .collect()
    });
    let stored_set: BTreeSet<&String> = stored.iter().collect();
    assert_eq!(stored.len(), stored_set.len(), "an event stored twice");
    let missing: Vec<&String> = acks.at.keys().filter(|id| !stored_set.contains(id)).collect();
    println!("rpo_events={} (of {} acknowledged)", missing.len(), acks.at.len());
    assert!(missing.is_empty(), "acknowledged but lost: {missing:?}");
    db.close().await;

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
/// summary); a target set below what is achievable makes it exit 1; a
/// target it cannot drill yet is refused with exit 64.
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

    // Not built yet: refused, exit 64, nothing killed.
    let refused = drill("15s", "analytics");
    assert_eq!(
        refused.status.code(),
        Some(64),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    up.kill().await.unwrap();
}
