//! Analytics active/standby on one PostgreSQL database: the ledger writer
//! is the holder of an advisory lock held by the session it commits on.
//!
//! - A second instance on the same database stands by — health NOT_SERVING,
//!   `/readyz` not ready (`standby`), a write refused UNAVAILABLE `standby`
//!   with nothing written, reads answered — and takes over, catching up
//!   with what the first appended, only once the first is gone. On SQLite
//!   one instance is always the writer.
//! - The fence: a writer whose lease session is terminated
//!   (`pg_terminate_backend`) commits nothing more, even before it has
//!   noticed; another instance takes the lease and appends; when the first
//!   gets the lease back it has caught up with those appends before its
//!   next one (its view and latest checkpoint are the stored ones), and the
//!   ledger stays contiguous, its root recomputing from the stored leaves.
//! - An instance starting while the writer commits reads its start-up check
//!   in one snapshot (the interleaving forced with PostgreSQL's locks), and
//!   takes over when the writer is gone.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{AnalyticsKeys, billing, client, leaf_hashes, start_analytics};
use soma_ledger::CheckpointVerifier;
use soma_proto::v1 as pb;
use soma_store::StoreSettings;
use soma_testing::{Ca, Running, http_get, scalar};
use tonic::Code;

/// The ledger writer's lease key ("SomaLedg"), as `pg_locks` shows it: the
/// advisory lock whose `classid` and `objid` are its high and low halves.
const LEASE_CLASSID: i64 = 0x536f_6d61;
const LEASE_OBJID: i64 = 0x4c65_6467;

/// How long a standby may take to notice a free lease and take over, or a
/// holder to notice its session is gone: a liveness bound, not a target
/// (the standby asks every 200 ms, the holder checks every second).
const SWITCH_BOUND: Duration = Duration::from_secs(30);

/// `grpc.health.v1` SERVING and NOT_SERVING.
const SERVING: i32 = 1;
const NOT_SERVING: i32 = 2;

fn checkpoint_verifier(keys: &AnalyticsKeys) -> CheckpointVerifier {
    let config = keys.config();
    let signer = soma_sign::Ed25519Signer::from_pkcs8_pem(
        soma_sign::KeyId::new("analytics-1").unwrap(),
        &config.signing_key_pem,
    )
    .unwrap();
    CheckpointVerifier::new(config.ledger_origin.clone(), &signer.public_key()).unwrap()
}

/// The whole server's health as a peer service sees it.
async fn health(ca: &Ca, svc: &Running) -> i32 {
    let channel = soma_testing::channel(
        ca.store("/svc/gateway", Duration::from_secs(3600)),
        svc.addr,
        &svc.id,
    );
    soma_testing::health(channel, "").await.unwrap()
}

/// Waits until `svc`'s health is `status`.
async fn wait_for_health(ca: &Ca, svc: &Running, status: i32, what: &str) {
    let deadline = Instant::now() + SWITCH_BOUND;
    while health(ca, svc).await != status {
        assert!(Instant::now() < deadline, "{what}: health never became {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Records billing event `id` through `svc` as the tool registry.
async fn record(ca: &Ca, svc: &Running, id: &str) -> Result<u64, tonic::Status> {
    client(ca, svc, "/svc/tool-registry")
        .record_billing_event(billing(id, "acme", 1))
        .await
        .map(|r| r.into_inner().ledger.unwrap().index)
}

/// `name`'s value on `svc`'s `/metrics`.
async fn metric(svc: &Running, name: &str) -> Option<String> {
    let exposition = http_get(svc.admin, "/metrics").await;
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ').map(str::to_owned))
}

/// The backend pid of the session holding the ledger writer's lease on the
/// database of `sql`, if one holds it.
async fn lease_holder(sql: &soma_store::Database) -> Option<i64> {
    let pid = scalar(
        sql,
        &format!(
            "SELECT COALESCE(MAX(pid), 0)::bigint FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND classid = {LEASE_CLASSID} AND objid = {LEASE_OBJID} \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        ),
    )
    .await;
    (pid != 0).then_some(pid)
}

/// The rows of billing event `id`.
async fn rows_of(sql: &soma_store::Database, id: &str) -> i64 {
    scalar(
        sql,
        &format!("SELECT COUNT(*) FROM billing_events WHERE event_id = '{id}'"),
    )
    .await
}

/// Checks the ledger as stored: contiguous leaves, the latest checkpoint
/// (as `svc` serves it) signed over exactly them, every row and leaf
/// authenticated by the sweep.
async fn ledger_is_whole(
    svc: &Running,
    ca: &Ca,
    keys: &AnalyticsKeys,
    sql: &soma_store::Database,
    size: u64,
) {
    let leaves = leaf_hashes(sql).await;
    assert_eq!(leaves.len() as u64, size);
    let latest = client(ca, svc, "/operator/auditor")
        .ledger_checkpoint(pb::LedgerCheckpointRequest {})
        .await
        .unwrap()
        .into_inner();
    let note = checkpoint_verifier(keys).verify(&latest.note).unwrap();
    assert_eq!(note.tree_size(), size);
    assert_eq!(soma_ledger::root(&leaves), *note.root());
    let report = soma_analytics::verify_store(sql, &keys.row_keys()).await.unwrap();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_stands_by_until_the_first_is_gone_then_takes_over() {
    for db in soma_store::testing::engines("analytics_standby").await {
        let label = db.label;
        let ca = Ca::new();
        let keys = AnalyticsKeys::generate();
        let first = start_analytics(&ca, &db.settings, keys.config(), None).await;
        assert_eq!(health(&ca, &first).await, SERVING, "{label}");
        assert!(
            http_get(first.admin, "/readyz").await.starts_with("HTTP/1.1 200"),
            "{label}"
        );
        let second = start_analytics(&ca, &db.settings, keys.config(), None).await;
        let sql = common::database(&db.settings).await;

        if label == "sqlite" {
            // One embedded database, no lease: every instance writes, as
            // before.
            assert_eq!(health(&ca, &second).await, SERVING, "{label}");
            assert_eq!(record(&ca, &second, "on-second").await.unwrap(), 0, "{label}");
            sql.close().await;
            first.stop().await;
            second.stop().await;
            db.cleanup().await;
            continue;
        }

        // The second waits: not serving, not ready, and says why.
        assert_eq!(health(&ca, &second).await, NOT_SERVING);
        let readyz = http_get(second.admin, "/readyz").await;
        assert!(readyz.starts_with("HTTP/1.1 503"), "{readyz}");
        assert!(readyz.contains("not ready: standby"), "{readyz}");
        // A write is refused before anything is written, naming the reason.
        let refused = record(&ca, &second, "refused-by-standby").await.unwrap_err();
        assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
        assert_eq!(soma_testing::grpc_reason(&refused), "standby");
        assert_eq!(rows_of(&sql, "refused-by-standby").await, 0);
        // The first writes; the second still waits, and answers reads from
        // the database.
        for (i, id) in ["a-0", "a-1", "a-2"].into_iter().enumerate() {
            assert_eq!(record(&ca, &first, id).await.unwrap(), i as u64);
        }
        assert_eq!(health(&ca, &second).await, NOT_SERVING);
        let read = client(&ca, &second, "/operator/auditor")
            .ledger_checkpoint(pb::LedgerCheckpointRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(read.tree_size, 3);
        assert_eq!(scalar(&sql, "SELECT COUNT(*) FROM ledger_leaves").await, 3);
        // Exactly one session holds the lease: the first's.
        let holder = lease_holder(&sql).await.expect("the first holds the lease");

        // The first goes away (its writer's session with it): the second
        // takes over and appends after the first's leaves.
        first.stop().await;
        wait_for_health(&ca, &second, SERVING, "the second after the first stopped").await;
        assert!(
            http_get(second.admin, "/readyz")
                .await
                .starts_with("HTTP/1.1 200")
        );
        assert_ne!(lease_holder(&sql).await, Some(holder));
        assert_eq!(record(&ca, &second, "b-0").await.unwrap(), 3);
        assert_eq!(rows_of(&sql, "refused-by-standby").await, 0);
        ledger_is_whole(&second, &ca, &keys, &sql, 4).await;

        sql.close().await;
        second.stop().await;
        db.cleanup().await;
    }
}

/// A TCP forwarder to PostgreSQL whose door can close: while closed, new
/// connections through it are dropped at once, established ones carry on.
/// One instance reaches the database through it, so that the test decides
/// when that instance can open a new session.
struct Door {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Door {
    async fn to(upstream: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let gate = Arc::clone(&open);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                if !gate.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Self { addr, open, task }
    }

    fn close(&self) {
        self.open.store(false, Ordering::SeqCst);
    }

    fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

impl Drop for Door {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// `settings` with its PostgreSQL URL's host and port replaced by `addr`,
/// and the server's own `host:port`.
fn through(settings: &StoreSettings, addr: SocketAddr) -> (StoreSettings, String) {
    let url = settings.database_url.clone().unwrap();
    let (scheme_user, rest) = url.split_once('@').unwrap();
    let (server, path) = rest.split_once('/').unwrap();
    (
        StoreSettings {
            data_dir: settings.data_dir.clone(),
            database_url: Some(format!("{scheme_user}@{addr}/{path}")),
        },
        server.to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_whose_lease_session_is_terminated_commits_nothing_and_catches_up_before_appending() {
    for db in soma_store::testing::engines("analytics_fence").await {
        if db.label != "postgres" {
            // No lease on SQLite: nothing to fence.
            db.cleanup().await;
            continue;
        }
        let ca = Ca::new();
        let keys = AnalyticsKeys::generate();
        let sql = common::database(&db.settings).await;
        let (_, server) = through(&db.settings, "127.0.0.1:1".parse().unwrap());
        let door = Door::to(server).await;
        let (behind_door, _) = through(&db.settings, door.addr);
        // `first` reaches the database through the door; `second` directly.
        let first = start_analytics(&ca, &behind_door, keys.config(), None).await;
        for (i, id) in ["a-0", "a-1", "a-2"].into_iter().enumerate() {
            assert_eq!(record(&ca, &first, id).await.unwrap(), i as u64);
        }
        let second = start_analytics(&ca, &db.settings, keys.config(), None).await;
        assert_eq!(health(&ca, &second).await, NOT_SERVING);

        // The first's lease session is terminated, and the first cannot
        // open another. Its next write goes to that dead session (or, if it
        // noticed already, is refused as a standby's): never acknowledged,
        // never written.
        door.close();
        let holder = lease_holder(&sql).await.expect("the first holds the lease");
        let terminated = scalar(
            &sql,
            &format!("SELECT CASE WHEN pg_terminate_backend({holder}, 10000) THEN 1 ELSE 0 END::bigint"),
        )
        .await;
        assert_eq!(terminated, 1);
        let fenced = record(&ca, &first, "fenced").await.unwrap_err();
        assert_eq!(fenced.code(), Code::Unavailable, "{fenced:?}");
        assert!(
            ["unavailable", "standby"].contains(&soma_testing::grpc_reason(&fenced)),
            "{fenced:?}"
        );
        assert_eq!(rows_of(&sql, "fenced").await, 0);

        // The second takes the lease and appends; the first stands by.
        wait_for_health(&ca, &second, SERVING, "the second after the termination").await;
        wait_for_health(&ca, &first, NOT_SERVING, "the first after its session died").await;
        for (i, id) in ["b-0", "b-1", "b-2"].into_iter().enumerate() {
            assert_eq!(record(&ca, &second, id).await.unwrap(), 3 + i as u64);
        }
        let refused = record(&ca, &first, "fenced").await.unwrap_err();
        assert_eq!(refused.code(), Code::Unavailable);
        assert_eq!(soma_testing::grpc_reason(&refused), "standby");
        assert_eq!(rows_of(&sql, "fenced").await, 0);
        // The first's view still ends where it last wrote.
        assert_eq!(metric(&first, "soma_ledger_leaves").await.as_deref(), Some("3"));

        // The door opens and the second goes away: the first gets the lease
        // back on a new session and, before appending anything, has caught
        // up with the second's leaves and checkpoint.
        door.open();
        second.stop().await;
        wait_for_health(&ca, &first, SERVING, "the first after the second stopped").await;
        assert_eq!(metric(&first, "soma_ledger_leaves").await.as_deref(), Some("6"));
        assert_eq!(
            metric(&first, "soma_ledger_last_checkpoint_tree_size")
                .await
                .as_deref(),
            Some("6")
        );
        assert_eq!(record(&ca, &first, "a-3").await.unwrap(), 6);
        // The second's event, proven by the first against its checkpoint.
        let mut auditor = client(&ca, &first, "/operator/auditor");
        let proof = common::inclusion_proof(&mut auditor, "acme/b-1", 0).await;
        let leaves = leaf_hashes(&sql).await;
        common::verify_proof(&proof, 7, soma_ledger::root(&leaves).as_bytes());
        assert_eq!(proof.leaf_index, 4);
        ledger_is_whole(&first, &ca, &keys, &sql, 7).await;
        assert_eq!(rows_of(&sql, "fenced").await, 0);

        sql.close().await;
        first.stop().await;
        drop(door);
        db.cleanup().await;
    }
}

/// Backends of the test database of `sql` waiting for a lock.
async fn lock_waiters(sql: &soma_store::Database) -> i64 {
    scalar(
        sql,
        "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() \
         AND pid <> pg_backend_pid() AND wait_event_type = 'Lock'",
    )
    .await
}

/// Waits until `n` backends of the test database wait for a lock.
async fn wait_for_lock_waiters(sql: &soma_store::Database, n: i64, what: &str) {
    let deadline = Instant::now() + SWITCH_BOUND;
    while lock_waiters(sql).await < n {
        assert!(Instant::now() < deadline, "{what}: never {n} lock waiters");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The start-up check of an instance that starts while another appends
/// reads the head, the leaves and the checkpoints in one snapshot. The
/// interleaving that broke it is forced here: the first instance's append
/// waits in its `COMMIT` (a deferred trigger on an advisory lock the test
/// holds), an admin session queues an exclusive lock on `ledger_leaves`
/// behind it, and the second instance starts: its check reads the head
/// (the append is not committed), then its read of the leaves queues
/// behind that lock. The append is let commit, the lock let go, and the
/// check's read of the leaves runs — with separate reads it saw one leaf
/// more than the head it had read, took the head for rolled back, refused
/// every write for good and could not take over when the first went away.
/// Here it stands by, takes over and appends after both leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_starting_while_the_writer_commits_sees_one_snapshot_and_takes_over() {
    for db in soma_store::testing::engines("analytics_snapshot").await {
        if db.label == "sqlite" {
            // One embedded database, no second writer to race with.
            eprintln!("--- engine: sqlite: one instance writes; nothing to interleave");
            db.cleanup().await;
            continue;
        }
        let ca = Ca::new();
        let keys = AnalyticsKeys::generate();
        let first = start_analytics(&ca, &db.settings, keys.config(), None).await;
        let sql = common::database(&db.settings).await;
        assert_eq!(record(&ca, &first, "before").await.unwrap(), 0);

        // The first's next append waits in its commit.
        let hold = db.interrupt_commit("ledger_leaves").await.unwrap();
        let appending = {
            let mut client = client(&ca, &first, "/svc/tool-registry");
            tokio::spawn(async move {
                client
                    .record_billing_event(billing("during", "acme", 1))
                    .await
                    .map(|r| r.into_inner().ledger.unwrap().index)
            })
        };
        wait_for_lock_waiters(&sql, 1, "the append in its commit").await;

        // An exclusive lock on the leaves, queued behind the append.
        let (release_lock, released) = tokio::sync::oneshot::channel::<()>();
        let locker = {
            let pool = sql.as_postgres().unwrap().clone();
            tokio::spawn(async move {
                let mut tx = pool.begin().await.unwrap();
                sqlx::query("LOCK TABLE ledger_leaves IN ACCESS EXCLUSIVE MODE")
                    .execute(&mut *tx)
                    .await
                    .unwrap();
                released.await.unwrap();
                tx.rollback().await.unwrap();
            })
        };
        wait_for_lock_waiters(&sql, 2, "the exclusive lock behind the append").await;

        // The second starts: its check reads the head, then waits for the
        // leaves behind the exclusive lock. Meanwhile the append commits;
        // then the lock goes, and the check reads on.
        let (second, ()) = tokio::join!(start_analytics(&ca, &db.settings, keys.config(), None), async {
            wait_for_lock_waiters(&sql, 3, "the second's check reading the leaves").await;
            let releasing = tokio::spawn(hold.release());
            assert_eq!(appending.await.unwrap().unwrap(), 1, "the held append");
            release_lock.send(()).unwrap();
            locker.await.unwrap();
            releasing.await.unwrap();
        });
        assert_eq!(scalar(&sql, "SELECT COUNT(*) FROM ledger_leaves").await, 2);

        // It stands by, sound; once the first is gone it takes over and
        // appends after both leaves.
        assert_eq!(health(&ca, &second).await, NOT_SERVING);
        let readyz = http_get(second.admin, "/readyz").await;
        assert!(readyz.contains("not ready: standby"), "{readyz}");
        first.stop().await;
        wait_for_health(&ca, &second, SERVING, "the second after the first stopped").await;
        assert_eq!(record(&ca, &second, "after").await.unwrap(), 2);
        ledger_is_whole(&second, &ca, &keys, &sql, 3).await;

        sql.close().await;
        second.stop().await;
        db.cleanup().await;
    }
}
