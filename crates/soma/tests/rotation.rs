//! SVID and root rotation under load: `soma serve capsule-repo` (the real
//! binary) gets 30-second SVIDs from a Workload API served by this test,
//! whose authority's roots live 36 seconds (each prepared at 18 s, active
//! from 30 s, published until 36 s); a client whose own identity comes from
//! the same Workload API calls it in a loop for 90 s, on one long-lived
//! channel and on a fresh connection each time. Not one call may fail; the
//! server's certificate serial must change at least twice and its signing
//! root at least twice, so both sides took the bundle updates their SVID
//! streams carried; the first root must be gone from the client's bundle.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use soma_ca::{AuthorityOptions, Registry, WorkloadApi, WorkloadApiConfig};
use soma_identity::{ExpectedPeer, WorkloadIdentity};
use soma_testing::Ca;
use tokio::io::AsyncBufReadExt as _;

const SVID_TTL: Duration = Duration::from_secs(30);
const CA_TTL: Duration = Duration::from_secs(36);
const RUN_FOR: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_never_fail_across_svid_and_root_rotations() {
    // The authority of the trust domain `soma serve` expects by default;
    // its temp dir also holds the socket and the server's data.
    let ca = Ca::with_options("somastack.local", AuthorityOptions { ca_ttl: CA_TTL });
    let first_root = ca.authority.bundle_der();
    let dir = &ca.dir;
    let registry = Registry::new();
    let socket = dir.path().join("workload.sock");
    let listener = soma_ca::bind_socket(&socket).unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let api = WorkloadApi::new(
        Arc::clone(&ca.authority),
        registry.clone(),
        WorkloadApiConfig { svid_ttl: SVID_TTL },
    );
    let api_task = tokio::spawn(api.serve(listener, async move {
        let _ = stop_rx.await;
    }));
    let endpoint = format!("unix://{}", socket.display());

    // The server: the real binary, attested by its pid, with the keyring
    // it MACs its rows with.
    let server_id = ca.id("/svc/capsule-repo");
    let keys = dir.path().join("capsule-repo-keys.json");
    std::fs::write(
        &keys,
        soma_sign::HmacKeyring::generate("capsule-repo-1").unwrap().1,
    )
    .unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_soma"))
        .args(["serve", "capsule-repo", "--stop-on-stdin-eof"])
        .env("SPIFFE_ENDPOINT_SOCKET", &endpoint)
        .env("SOMA_DATA_DIR", dir.path().join("db"))
        .env("SOMA_SERVICE_ADDR", "127.0.0.1:0")
        .env("SOMA_ADMIN_ADDR", "127.0.0.1:0")
        .env(soma_capsule_repo::config::KEYS_FILE_ENV, &keys)
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    registry.register_pid(child.id().unwrap(), server_id.clone());
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let ready: serde_json::Value = serde_json::from_str(
        &tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    let addr: std::net::SocketAddr = ready["grpc_addr"].as_str().unwrap().parse().unwrap();

    // The client: this process, attested by its pid, rotating too.
    registry.register_pid(std::process::id(), ca.id("/operator/rotation"));
    let client = WorkloadIdentity::connect(Some(&endpoint), None, Duration::from_secs(10))
        .await
        .unwrap();
    let store = client.store();
    let long_lived = soma_testing::channel(store.clone(), addr, &server_id);
    let tls = tokio_rustls::TlsConnector::from(
        soma_identity::client_config(store.clone(), ExpectedPeer::Exact(server_id.clone())).unwrap(),
    );

    let mut serials = BTreeSet::new();
    let mut issuers = BTreeSet::new();
    let mut most_roots = 0;
    let mut client_serials = BTreeSet::new();
    let (mut calls, mut failures) = (0u32, Vec::new());
    let start = Instant::now();
    while start.elapsed() < RUN_FOR {
        // Long-lived channel.
        calls += 1;
        if let Err(e) = soma_testing::health(long_lived.clone(), "").await {
            failures.push(format!("long-lived at {:?}: {e}", start.elapsed()));
        }
        // Fresh connection: a new handshake, whose server certificate we
        // record, and a call on a new channel.
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        match tls
            .connect(rustls::pki_types::ServerName::try_from("localhost").unwrap(), tcp)
            .await
        {
            Ok(conn) => {
                let leaf = conn.get_ref().1.peer_certificates().unwrap()[0].clone();
                let (_, cert) = x509_parser::parse_x509_certificate(&leaf).unwrap();
                serials.insert(cert.raw_serial().to_vec());
                issuers.insert(authority_key_id(&cert));
            }
            Err(e) => failures.push(format!("handshake at {:?}: {e}", start.elapsed())),
        }
        calls += 1;
        if let Err(e) = soma_testing::health(soma_testing::channel(store.clone(), addr, &server_id), "").await
        {
            failures.push(format!("fresh at {:?}: {e}", start.elapsed()));
        }
        client_serials.insert(store.current_serial());
        most_roots = most_roots.max(own_roots(&store).len());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    assert!(
        failures.is_empty(),
        "{} of {calls} calls failed: {failures:#?}",
        failures.len()
    );
    assert!(serials.len() >= 3, "server serials seen: {}", serials.len());
    assert!(
        client_serials.len() >= 3,
        "client serials seen: {}",
        client_serials.len()
    );
    assert!(issuers.len() >= 3, "server signing roots seen: {}", issuers.len());
    assert!(most_roots >= 2, "the client's bundle never held two roots");
    assert!(
        !own_roots(&store).iter().any(|root| root.as_ref() == first_root),
        "the first root, expired, is still in the client's bundle"
    );

    drop(child.stdin.take());
    let exit = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success());
    client.shutdown().await;
    let _ = stop_tx.send(());
    api_task.await.unwrap().unwrap();
}

/// The roots of the client's own trust domain, as its live identity holds them.
fn own_roots(store: &soma_identity::SvidStore) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    store
        .bundles()
        .get(store.trust_domain())
        .unwrap()
        .roots()
        .to_vec()
}

/// The authority key identifier of `cert`: which root signed it.
fn authority_key_id(cert: &x509_parser::certificate::X509Certificate<'_>) -> Vec<u8> {
    cert.extensions()
        .iter()
        .find_map(|ext| match ext.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|id| id.0.to_vec())
            }
            _ => None,
        })
        .unwrap()
}
