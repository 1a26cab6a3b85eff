//! Crash safety: `soma serve analytics` (the real binary) is killed with
//! SIGKILL while clients stream appends, then restarted on the same
//! database. Every acknowledged event is present exactly once, indices are
//! contiguous, the stored root recomputes, and retries of events whose
//! acknowledgement was lost get their original index. On PostgreSQL and on
//! SQLite.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::analytics::{AnalyticsKeys, billing, leaf_hashes};
use soma_ca::{Registry, WorkloadApi, WorkloadApiConfig};
use soma_identity::SpiffeId;
use soma_proto::v1 as pb;
use soma_proto::v1::analytics_client::AnalyticsClient;
use soma_testing::Ca;
use sqlx::Row as _;
use tokio::io::AsyncBufReadExt as _;
use tokio::process::Child;

/// Upper bound on any single wait (the server's ready line, 400
/// acknowledgements, a writer ending after the kill), so that a broken
/// server fails the test instead of hanging it. A liveness bound, not a
/// performance assertion.
const HANG_GUARD: Duration = Duration::from_secs(120);

struct Server {
    child: Child,
    addr: std::net::SocketAddr,
}

async fn spawn_server(
    registry: &Registry,
    id: &SpiffeId,
    endpoint: &str,
    store: &soma_store::StoreSettings,
    keys_dir: &std::path::Path,
) -> Server {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_soma"));
    cmd.args(["serve", "analytics"])
        .env("SPIFFE_ENDPOINT_SOCKET", endpoint)
        .env("SOMA_DATA_DIR", &store.data_dir)
        .env("SOMA_SERVICE_ADDR", "127.0.0.1:0")
        .env("SOMA_ADMIN_ADDR", "127.0.0.1:0")
        .env("SOMA_ANALYTICS_ROW_KEYS_FILE", keys_dir.join("row-keys.json"))
        .env("SOMA_ANALYTICS_SIGNING_KEY_FILE", keys_dir.join("signing.key"))
        .env("SOMA_ANALYTICS_LEDGER_ORIGIN", "somastack.local/analytics")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true);
    match &store.database_url {
        Some(url) => cmd.env("DATABASE_URL", url),
        None => cmd.env_remove("DATABASE_URL"),
    };
    let mut child = cmd.spawn().unwrap();
    registry.register_pid(child.id().unwrap(), id.clone());
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(HANG_GUARD, lines.next_line())
        .await
        .expect("soma serve analytics printed no ready line")
        .unwrap()
        .expect("soma serve analytics exited before its ready line");
    let ready: serde_json::Value = serde_json::from_str(&line).unwrap();
    Server {
        child,
        addr: ready["grpc_addr"].as_str().unwrap().parse().unwrap(),
    }
}

/// Whether `status` is the client's own report of a connection that broke
/// under a call, as opposed to any status a server sent: UNKNOWN "transport
/// error" (reset, or closed without a TLS close_notify, mid-call) or
/// CANCELLED "operation was canceled" (closed before the call went out),
/// in both cases caused by a `tonic::transport::Error`, which a status
/// received from a server never carries.
fn broken_connection(status: &tonic::Status) -> bool {
    use std::error::Error as _;
    if !matches!(status.code(), tonic::Code::Unknown | tonic::Code::Cancelled) {
        return false;
    }
    let mut source = status.source();
    while let Some(error) = source {
        if error.is::<tonic::transport::Error>() {
            return true;
        }
        source = error.source();
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_append_survives_a_kill_9_exactly_once() {
    for db in soma_store::testing::engines("analytics").await {
        // The authority of the trust domain `soma serve` expects by default;
        // its temp dir also holds the Workload API socket and the keys.
        let ca = Ca::for_trust_domain("somastack.local");
        let dir = &ca.dir;
        let registry = Registry::new();
        let socket = dir.path().join("workload.sock");
        let listener = soma_ca::bind_socket(&socket).unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let api = WorkloadApi::new(
            Arc::clone(&ca.authority),
            registry.clone(),
            WorkloadApiConfig {
                svid_ttl: Duration::from_secs(3600),
            },
        );
        let api_task = tokio::spawn(api.serve(listener, async move {
            let _ = stop_rx.await;
        }));
        let endpoint = format!("unix://{}", socket.display());

        let keys = AnalyticsKeys::generate();
        let keys_dir = dir.path().join("keys");
        std::fs::create_dir_all(&keys_dir).unwrap();
        std::fs::write(keys_dir.join("row-keys.json"), &keys.row_keys_json).unwrap();
        std::fs::write(keys_dir.join("signing.key"), &keys.signing_key_pem).unwrap();

        // The clients: the tool registry (appends) and an operator (reads),
        // with SVIDs from the same authority.
        let client_store = ca.store("/svc/tool-registry", Duration::from_secs(3600));
        let operator_store = ca.store("/operator/auditor", Duration::from_secs(3600));
        let server_id = ca.id("/svc/analytics");

        let mut server = spawn_server(&registry, &server_id, &endpoint, &db.settings, &keys_dir).await;
        let acked = Arc::new(Mutex::new(Vec::<(String, u64)>::new()));
        let attempted = Arc::new(Mutex::new(Vec::<String>::new()));
        // Set just before the kill: an error before it is a failure of the
        // test, not the end of a writer.
        let killed = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        for w in 0..8 {
            let channel = soma_mesh::channel(client_store.clone(), server.addr, server_id.clone()).unwrap();
            let (acked, attempted, killed) =
                (Arc::clone(&acked), Arc::clone(&attempted), Arc::clone(&killed));
            let label = db.label;
            writers.push(tokio::spawn(async move {
                let mut client = AnalyticsClient::new(channel);
                let mut interrupted = 0;
                for i in 0.. {
                    let id = format!("w{w}-{i}");
                    attempted.lock().unwrap().push(id.clone());
                    match client.record_billing_event(billing(&id, "acme", 42)).await {
                        Ok(r) => acked
                            .lock()
                            .unwrap()
                            .push((id, r.into_inner().ledger.unwrap().index)),
                        // Only the kill ends a writer, and only as
                        // UNAVAILABLE: the server is gone.
                        Err(status) => {
                            assert!(
                                killed.load(Ordering::SeqCst),
                                "{label}: {id} failed before the kill: {status:?}"
                            );
                            if status.code() == tonic::Code::Unavailable {
                                return;
                            }
                            // The call in flight when the server died, and
                            // any the channel hands to the dead connection
                            // before it notices: the connection broke under
                            // them, which tonic reports as UNKNOWN or
                            // CANCELLED with the transport error as cause
                            // (whether the server committed the first is
                            // unknowable; the retries below settle it).
                            // Nothing else is accepted, and within a few
                            // calls the writer must find the server gone.
                            interrupted += 1;
                            assert!(
                                broken_connection(&status) && interrupted <= 16,
                                "{label}: {id} after the kill (interrupted call {interrupted}): {status:?}"
                            );
                        }
                    }
                }
            }));
        }
        // Kill it mid-stream, once a good number of appends are acknowledged.
        // A writer that ends before the kill has failed: stop waiting, and
        // let its join below report why.
        let started = Instant::now();
        while acked.lock().unwrap().len() < 400 && !writers.iter().any(|w| w.is_finished()) {
            assert!(
                started.elapsed() < HANG_GUARD,
                "{}: only {} appends acknowledged in {HANG_GUARD:?}",
                db.label,
                acked.lock().unwrap().len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        eprintln!(
            "{}: {} appends acknowledged after {:?}; killing the server",
            db.label,
            acked.lock().unwrap().len(),
            started.elapsed()
        );
        killed.store(true, Ordering::SeqCst);
        server.child.start_kill().unwrap();
        let _ = server.child.wait().await;
        for w in writers {
            tokio::time::timeout(HANG_GUARD, w)
                .await
                .expect("a writer did not end after the kill")
                .unwrap();
        }
        let acked = acked.lock().unwrap().clone();
        let attempted = attempted.lock().unwrap().clone();
        assert!(acked.len() >= 400);

        // Restart on the same database: the ledger verifies at start-up.
        let server = spawn_server(&registry, &server_id, &endpoint, &db.settings, &keys_dir).await;
        let mut client = AnalyticsClient::new(
            soma_mesh::channel(client_store.clone(), server.addr, server_id.clone()).unwrap(),
        );

        // Every acknowledged event is there, at the index it was given.
        let sql = db.connect().await;
        let stored: Vec<(String, i64)> = {
            let q = "SELECT event_id, leaf_index FROM ledger_leaves ORDER BY leaf_index";
            match (sql.as_sqlite(), sql.as_postgres()) {
                (Some(p), _) => sqlx::query(q)
                    .fetch_all(p)
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| (r.get(0), r.get(1)))
                    .collect(),
                (None, Some(p)) => sqlx::query(q)
                    .fetch_all(p)
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| (r.get(0), r.get(1)))
                    .collect(),
                _ => unreachable!(),
            }
        };
        for (position, (_, index)) in stored.iter().enumerate() {
            assert_eq!(
                *index, position as i64,
                "{}: indices are not contiguous",
                db.label
            );
        }
        let stored_ids: BTreeSet<&str> = stored.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(
            stored_ids.len(),
            stored.len(),
            "{}: an event is stored twice",
            db.label
        );
        for (id, index) in &acked {
            let at = stored.iter().find(|(s, _)| s == id).map(|(_, i)| *i);
            assert_eq!(
                at,
                Some(*index as i64),
                "{}: acknowledged {id} is not at index {index}",
                db.label
            );
        }

        // Retrying every attempted event: the committed ones keep their
        // index, the others are appended once.
        for id in &attempted {
            let r = client
                .record_billing_event(billing(id, "acme", 42))
                .await
                .unwrap()
                .into_inner();
            if let Some((_, index)) = stored.iter().find(|(s, _)| s == id) {
                assert_eq!(
                    r.ledger.unwrap().index,
                    *index as u64,
                    "{}: retry of {id} moved",
                    db.label
                );
            }
        }
        let mut operator =
            AnalyticsClient::new(soma_mesh::channel(operator_store, server.addr, server_id.clone()).unwrap());
        let latest = operator
            .ledger_checkpoint(pb::LedgerCheckpointRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(latest.tree_size, attempted.len() as u64, "{}", db.label);

        // The root recomputed from the stored leaves is the signed one.
        let leaves = leaf_hashes(&sql).await;
        assert_eq!(
            soma_ledger::root(&leaves).as_bytes().as_slice(),
            latest.root_hash.as_slice(),
            "{}",
            db.label
        );

        sql.close().await;
        drop(server);
        let _ = stop_tx.send(());
        api_task.await.unwrap().unwrap();
        db.cleanup().await;
    }
}
