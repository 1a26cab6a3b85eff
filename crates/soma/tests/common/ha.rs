//! The HA stack of `scripts/ops/ha-up.sh` (Patroni with etcd, two
//! PostgreSQL 15 members with strict synchronous replication, HAProxy
//! routing to the primary) as the failover tests start it, and the steady
//! write load they drive through the edge of a `soma up` on it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// One HA test at a time in a test binary: each starts etcd, two
/// PostgreSQL members, HAProxy and a whole `soma up`, and measures
/// recoveries against bounds; several at once on two cores would measure
/// each other. Held for the whole test (a panicking test releases it: the
/// lock does not poison).
pub async fn one_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static HA_TESTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    HA_TESTS.lock().await
}

/// Where the scripts are.
pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../scripts/ops")
        .join(name)
}

/// A base port with the stack's 22 ports free on loopback; each test of
/// this process gets its own range.
fn free_base() -> u16 {
    static NEXT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);
    let start = 25_400 + (std::process::id() % 20) as u16 * 30;
    let first = NEXT.fetch_add(1, Ordering::Relaxed);
    (first..first + 40)
        .map(|i| start.wrapping_add(i * 30))
        .find(|base| (0..22).all(|offset| std::net::TcpListener::bind(("127.0.0.1", base + offset)).is_ok()))
        .expect("no free port range for the HA stack")
}

/// The HA stack in `dir`, stopped when dropped.
pub struct Stack {
    pub dir: PathBuf,
    pub url: String,
    base: u16,
}

impl Stack {
    pub fn up(dir: PathBuf) -> Self {
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
    pub async fn cluster(&self) -> Value {
        let http = super::edge::client();
        for port in [self.base + 20, self.base + 21] {
            let url = format!("http://127.0.0.1:{port}/cluster");
            let sent = tokio::time::timeout(
                Duration::from_secs(3),
                super::edge::send(&http, "GET", &url, None, None, &[]),
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
    pub async fn wait_for_sync_standby(&self) {
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

    pub async fn leader(&self) -> String {
        self.try_leader().await.expect("the cluster has a leader")
    }

    /// The leader, if the cluster has one at this moment (not during a
    /// failover).
    pub async fn try_leader(&self) -> Option<String> {
        let cluster = self.cluster().await;
        cluster["members"]
            .as_array()?
            .iter()
            .find(|m| m["role"] == "leader")
            .and_then(|m| m["name"].as_str())
            .map(str::to_owned)
    }

    /// The pid of `member`'s postmaster (Patroni detaches it).
    pub fn postmaster(&self, member: &str) -> i32 {
        let pid = std::fs::read_to_string(self.dir.join(member).join("postmaster.pid")).unwrap();
        pid.lines().next().unwrap().trim().parse().unwrap()
    }

    /// The URL of `soma up`'s database of `service` (`soma_<service>`) on
    /// this stack.
    pub fn service_url(&self, service: &str) -> String {
        soma_store::with_database(&self.url, &format!("soma_{service}")).unwrap()
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
pub struct Acks {
    pub at: BTreeMap<String, (Instant, Instant)>,
    /// When each refused attempt was answered.
    pub refused_at: Vec<Instant>,
    pub refusals: BTreeMap<u16, u64>,
}

impl Acks {
    /// The first refusal answered after `t`: when the outage became
    /// visible (the killed primary's backends may still commit, replicated,
    /// for a few milliseconds after its postmaster died).
    pub fn outage_seen(&self, t: Instant) -> Option<Instant> {
        self.refused_at.iter().copied().filter(|r| *r > t).min()
    }

    pub fn sent_after(&self, t: Instant) -> usize {
        self.at.values().filter(|(sent, _)| *sent > t).count()
    }

    /// From the kill to the first acknowledgement of a write sent after
    /// the outage became visible (after the kill if nothing was refused).
    pub fn rto(&self, killed_at: Instant) -> Option<Duration> {
        let from = self.outage_seen(killed_at).unwrap_or(killed_at);
        self.at
            .values()
            .filter(|(sent, _)| *sent > from)
            .map(|(_, acked)| acked.duration_since(killed_at))
            .min()
    }
}

/// Four writers of capsule run events through `edge` as the tenant of
/// `token`, each sending its events (`<prefix>-<writer>-<n>`) in order,
/// each event again until it is acknowledged.
pub struct Load {
    pub acks: Arc<Mutex<Acks>>,
    stop: Arc<AtomicBool>,
    writers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    pub fn start(edge: &str, token: &str, prefix: &str) -> Self {
        let acks = Arc::new(Mutex::new(Acks::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        for w in 0..4 {
            let (acks, stop, edge, token) = (
                Arc::clone(&acks),
                Arc::clone(&stop),
                edge.to_owned(),
                token.to_owned(),
            );
            let prefix = prefix.to_owned();
            writers.push(tokio::spawn(async move {
                let http = super::edge::client();
                // One start time for every event: an event sent again
                // carries exactly the same content (Analytics answers it
                // with the stored record, where other content would be a
                // conflict).
                let started =
                    super::cli::rfc3339(time::OffsetDateTime::now_utc() - time::Duration::seconds(1));
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let id = format!("{prefix}-{w}-{i}");
                    let body = json!({
                        "eventId": id, "capsuleId": "drill", "runId": id,
                        "outcome": "RUN_OUTCOME_SUCCEEDED",
                        "startedAt": started,
                        "duration": "1s",
                    });
                    let sent = Instant::now();
                    let r = super::edge::send(
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
        Self { acks, stop, writers }
    }

    /// Acknowledged events so far.
    pub fn count(&self) -> usize {
        self.acks.lock().unwrap().at.len()
    }

    /// Waits until `n` events are acknowledged.
    pub async fn wait_for(&self, n: usize, within: Duration) {
        let deadline = Instant::now() + within;
        while self.count() < n {
            assert!(
                Instant::now() < deadline,
                "only {} acknowledged writes",
                self.count()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `n` writes sent after the outage following `killed_at`
    /// became visible, and after `since`, are acknowledged.
    pub async fn wait_for_recovery(&self, killed_at: Instant, since: Instant, n: usize, within: Duration) {
        let deadline = killed_at + within;
        loop {
            {
                let acks = self.acks.lock().unwrap();
                let from = acks
                    .outage_seen(killed_at)
                    .map_or(since, |outage| outage.max(since));
                if acks.sent_after(from) >= n {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "no recovery within {within:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops the writers; what they saw.
    pub async fn finish(self) -> Acks {
        self.stop.store(true, Ordering::Relaxed);
        for writer in self.writers {
            writer.await.unwrap();
        }
        Arc::try_unwrap(self.acks).ok().unwrap().into_inner().unwrap()
    }
}

/// The acknowledged events of `acks` missing from the capsule runs of
/// `tenant` stored in Analytics' database at `analytics_url`, after
/// checking that no event id starting with `prefix` is stored twice.
pub async fn missing_from_store(analytics_url: &str, tenant: &str, prefix: &str, acks: &Acks) -> Vec<String> {
    let settings = soma_store::StoreSettings {
        data_dir: std::env::temp_dir().join("unused"),
        database_url: Some(analytics_url.to_owned()),
    };
    let db = soma_store::Database::connect(&settings, "analytics")
        .await
        .unwrap();
    let stored: Vec<String> = soma_store::on_pool!(db, pool => {
        use sqlx::Row as _;
        sqlx::query("SELECT event_id FROM capsule_runs WHERE tenant = $1 AND event_id LIKE $2")
            .bind(tenant)
            .bind(format!("{prefix}-%"))
            .fetch_all(pool)
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<String, _>(0))
            .collect()
    });
    db.close().await;
    let stored_set: BTreeSet<&String> = stored.iter().collect();
    assert_eq!(stored.len(), stored_set.len(), "an event stored twice");
    acks.at
        .keys()
        .filter(|id| !stored_set.contains(id))
        .cloned()
        .collect()
}
