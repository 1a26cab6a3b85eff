#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `soma up`'s development authority as any SPIFFE client sees it: py-spiffe
//! (grpcio, default settings, `SPIFFE_ENDPOINT_SOCKET=unix:///…`) and the
//! Rust `spiffe` crate, for a process that `soma up` did not start and that
//! is registered by uid with `soma ca entry create`.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

const SOMA: &str = env!("CARGO_BIN_EXE_soma");

/// Liveness bound on `soma up` reaching SERVING and on each client call; not
/// a performance assertion.
const HANG_GUARD: Duration = Duration::from_secs(120);

const NO_ENTRY: &str = "no identity issued: the caller matches no registration entry";

/// Runs `soma ca entry ARGS --data-dir DIR`; its stdout.
async fn entry(data_dir: &Path, args: &[&str]) -> String {
    let output = tokio::process::Command::new(SOMA)
        .args(["ca", "entry"])
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "soma ca entry {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

/// The py-spiffe client with `args`, its JSON output and exit code.
async fn py_spiffe(socket: &Path, args: &[&str]) -> (serde_json::Value, Option<i32>) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/workload_client.py");
    let output = tokio::time::timeout(
        HANG_GUARD,
        tokio::process::Command::new(soma_testing::python())
            .arg(script)
            .args(args)
            .env("SPIFFE_ENDPOINT_SOCKET", format!("unix://{}", socket.display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("py-spiffe hung")
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "py-spiffe printed {stdout:?} ({e}); stderr: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    (value, output.status.code())
}

/// `soma up` on a fresh data dir, once every service is SERVING.
async fn soma_up(data_dir: &Path) -> tokio::process::Child {
    let child = common::spawn_soma_up(data_dir, &[]);
    let deadline = Instant::now() + HANG_GUARD;
    while !data_dir.join("endpoints.json").exists() {
        assert!(Instant::now() < deadline, "soma up did not come up in time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child
}

#[tokio::test]
async fn py_spiffe_and_the_spiffe_crate_get_identities_by_uid_entry() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let up = soma_up(&data_dir).await;
    let socket = data_dir.join("workload.sock");

    // Not registered: refused, and told why.
    let (out, code) = py_spiffe(&socket, &["x509"]).await;
    assert_eq!(code, Some(3), "{out}");
    assert_eq!(out["error"], "PERMISSION_DENIED");
    assert_eq!(out["message"], NO_ENTRY);
    let endpoint = format!("unix://{}", socket.display());
    let client = spiffe::WorkloadApiClient::connect_to(endpoint.clone())
        .await
        .unwrap();
    let refused = client.fetch_x509_svid().await.unwrap_err();
    assert!(
        matches!(refused, spiffe::WorkloadApiError::NoIdentityIssued),
        "{refused:?}"
    );

    // Registered by uid (the suite runs as root here: uid 0).
    let uid = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        .unwrap();
    let created = entry(
        &data_dir,
        &[
            "create",
            "--spiffe-id",
            "spiffe://somastack.local/batch/reports",
            "--selector",
            &format!("unix:uid:{uid}"),
        ],
    )
    .await;
    let entry_id = created.split_whitespace().next().unwrap().to_owned();
    assert_eq!(
        created,
        format!("{entry_id} spiffe://somastack.local/batch/reports unix:uid:{uid}\n")
    );
    assert_eq!(entry(&data_dir, &["list"]).await, created);

    let (out, code) = py_spiffe(&socket, &["x509"]).await;
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(out["spiffe_id"], "spiffe://somastack.local/batch/reports");
    assert_eq!(out["key_matches"], true);
    assert_eq!(out["bundle_tds"], serde_json::json!(["somastack.local"]));
    assert_eq!(out["bundle_matches_svid_bundle"], true);

    // A JWT-SVID: fetched, bundle fetched, validated locally and by the API.
    let (out, code) = py_spiffe(&socket, &["jwt", "spiffe://somastack.local/svc/gateway"]).await;
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(out["spiffe_id"], "spiffe://somastack.local/batch/reports");
    assert_eq!(
        out["audience"],
        serde_json::json!(["spiffe://somastack.local/svc/gateway"])
    );
    assert_eq!(out["local_spiffe_id"], "spiffe://somastack.local/batch/reports");
    assert_eq!(out["remote_spiffe_id"], "spiffe://somastack.local/batch/reports");
    let python_token = out["token"].as_str().unwrap().to_owned();

    // The Rust spiffe crate, from this test process (same uid).
    let source = tokio::time::timeout(
        HANG_GUARD,
        spiffe::X509Source::builder()
            .endpoint(endpoint.clone())
            .initial_sync_timeout(HANG_GUARD)
            .build(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(
        source.svid().unwrap().spiffe_id().to_string(),
        "spiffe://somastack.local/batch/reports"
    );
    let td = spiffe::TrustDomain::new("somastack.local").unwrap();
    assert_eq!(
        source.bundle_set().unwrap().get(&td).unwrap().authorities().len(),
        1
    );
    source.shutdown().await;
    let jwt = client.fetch_jwt_svid(["reports"], None).await.unwrap();
    assert_eq!(
        jwt.spiffe_id().to_string(),
        "spiffe://somastack.local/batch/reports"
    );
    assert!(client.fetch_jwt_bundles().await.unwrap().get(&td).is_some());
    let validated = client.validate_jwt_token("reports", jwt.token()).await.unwrap();
    assert_eq!(
        validated.spiffe_id().to_string(),
        "spiffe://somastack.local/batch/reports"
    );
    // A token py-spiffe fetched validates for its audience only.
    client
        .validate_jwt_token("spiffe://somastack.local/svc/gateway", &python_token)
        .await
        .unwrap();
    let wrong = client
        .validate_jwt_token("reports", &python_token)
        .await
        .unwrap_err();
    assert!(
        wrong.to_string().contains(
            "invalid jwt-svid: audience \"reports\" not in token audience [\"spiffe://somastack.local/svc/gateway\"]"
        ),
        "{wrong}"
    );

    // The authority rotates its root and JWT key (an operator steps ahead
    // of the schedule from the command line; the running `soma up` picks it
    // up): both clients see both roots, new tokens carry the new key, and
    // the token signed before still validates, locally and by the API.
    let old_kids = out["kids"].clone();
    assert_eq!(old_kids.as_array().unwrap().len(), 1);
    for step in ["prepare", "activate"] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_soma"))
            .args(["ca", step, "--data-dir"])
            .arg(&data_dir)
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "soma ca {step}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The running authority picks each step up at its next poll, and may
    // see the prepared root one poll before the activation: wait for both,
    // the bundle with two roots and a token signed by the new key.
    let deadline = Instant::now() + HANG_GUARD;
    let out = loop {
        let (x509, code) = py_spiffe(&socket, &["x509"]).await;
        assert_eq!(code, Some(0), "{x509}");
        if x509["authorities"] == 2 {
            let (out, code) = py_spiffe(&socket, &["jwt", "reports"]).await;
            assert_eq!(code, Some(0), "{out}");
            if kid_of(out["token"].as_str().unwrap()) != old_kids[0].as_str().unwrap() {
                break out;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the running authority never took the activation: {x509}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(out["kids"].as_array().unwrap().len(), 2);
    assert!(out["kids"].as_array().unwrap().contains(&old_kids[0]));
    let (out, code) = py_spiffe(
        &socket,
        &[
            "validate_local",
            "spiffe://somastack.local/svc/gateway",
            &python_token,
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(out["spiffe_id"], "spiffe://somastack.local/batch/reports");
    client
        .validate_jwt_token("spiffe://somastack.local/svc/gateway", &python_token)
        .await
        .unwrap();
    let jwt_bundle = client.fetch_jwt_bundles().await.unwrap();
    assert_eq!(jwt_bundle.get(&td).unwrap().jwt_authorities().count(), 2);
    let x509 = client.fetch_x509_bundles().await.unwrap();
    assert_eq!(x509.get(&td).unwrap().authorities().len(), 2);

    assert_eq!(
        entry(&data_dir, &["delete", &entry_id]).await,
        format!("deleted {entry_id}\n")
    );
    let (out, _) = py_spiffe(&socket, &["x509"]).await;
    assert_eq!(out["error"], "PERMISSION_DENIED");
    assert_eq!(out["message"], NO_ENTRY);

    drop(up);
}

/// The `kid` in a compact JWS's header.
fn kid_of(token: &str) -> String {
    use base64::Engine as _;
    let header = token.split('.').next().unwrap();
    let header: serde_json::Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .unwrap(),
    )
    .unwrap();
    header["kid"].as_str().unwrap().to_owned()
}
