//! The real `soma` binary: `soma up` on a clean data dir brings the
//! authority and all four services up, SERVING over mTLS (within a generous
//! liveness bound; the measured time is printed, not judged);
//! `soma ca issue` gives an operator SVID that Rust and Python grpcio clients
//! both use; Ctrl-C/SIGTERM stops everything; a second `soma up` reuses the
//! authority and data.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use soma_identity::{Bundle, BundleSet, SpiffeId, Svid, SvidStore, TrustDomain};
use tokio::process::Child;

const SOMA: &str = env!("CARGO_BIN_EXE_soma");

/// How long `soma up` may take to bring every service to SERVING before the
/// test calls it hung. A liveness bound, not a performance target: on an idle
/// machine it takes about a second, on two cores shared with a build far
/// longer, and the measured figure is printed for whoever watches it
/// (startup speed belongs in a benchmark).
const SERVING_LIVENESS: Duration = Duration::from_secs(120);

/// Upper bound on any other single wait (a line of output, an exit).
const HANG_GUARD: Duration = Duration::from_secs(60);
const SERVICES: [(&str, &str, &str); 4] = [
    ("gateway", "gateway", "somastack.v1.Gateway"),
    ("tool_registry", "tool-registry", "somastack.v1.ToolRegistry"),
    ("capsule_repo", "capsule-repo", "somastack.v1.CapsuleRepo"),
    ("analytics", "analytics", "somastack.v1.Analytics"),
];

fn soma_up(data_dir: &Path) -> Child {
    soma_up_with(data_dir, Stdio::piped(), Stdio::inherit())
}

/// `soma up` in region `eu-west-1`, logging warnings, its output where
/// the caller wants it.
fn soma_up_with(data_dir: &Path, stdout: Stdio, stderr: Stdio) -> Child {
    common::soma_up_command(data_dir)
        .args(["--region", "eu-west-1"])
        .env("RUST_LOG", "warn")
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .unwrap()
}

async fn stop(mut child: Child) {
    let pid = child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(HANG_GUARD, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "soma up exited with {exit:?}");
}

fn issue_operator(data_dir: &Path, out: &Path) {
    let output = std::process::Command::new(SOMA)
        .args(["ca", "issue", "--data-dir"])
        .arg(data_dir)
        .args(["--spiffe-id", "spiffe://somastack.local/operator/tester", "--out"])
        .arg(out)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn operator_store(out: &Path) -> std::sync::Arc<SvidStore> {
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

/// Waits until every service answers SERVING over mTLS, or the deadline.
async fn wait_serving(data_dir: &Path, op: &Path, deadline: Instant) -> serde_json::Value {
    let endpoints_file = data_dir.join("endpoints.json");
    let endpoints: serde_json::Value = loop {
        if let Ok(bytes) = std::fs::read(&endpoints_file) {
            break serde_json::from_slice(&bytes).unwrap();
        }
        assert!(Instant::now() < deadline, "endpoints.json did not appear in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    issue_operator(data_dir, op);
    let operator = operator_store(op);
    for (key, name, grpc_name) in SERVICES {
        let addr = endpoints[key].as_str().unwrap().parse().unwrap();
        let id = SpiffeId::parse(&format!("spiffe://somastack.local/svc/{name}")).unwrap();
        loop {
            let ch = soma_testing::channel(operator.clone(), addr, &id);
            // The deadline bounds the call too, so that a service that
            // accepts and never answers fails the test instead of hanging it.
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, soma_testing::health(ch, grpc_name)).await {
                Ok(Ok(1)) => break,
                other => {
                    assert!(Instant::now() < deadline, "{name} not SERVING in time: {other:?}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    endpoints
}

#[tokio::test]
async fn soma_up_serves_all_four_services_over_mtls_and_restarts_on_the_same_data() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let op = dir.path().join("operator");

    let started = Instant::now();
    let mut child = soma_up(&data_dir);
    let endpoints = wait_serving(&data_dir, &op, started + SERVING_LIVENESS).await;
    eprintln!("soma up: all four services SERVING after {:?}", started.elapsed());

    // The printed curl line works as pasted.
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let curl = loop {
        let line = tokio::time::timeout(HANG_GUARD, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .expect("soma up printed no curl line");
        if line.trim_start().starts_with("curl ") {
            break line;
        }
    };
    let out = std::process::Command::new("sh")
        .args(["-c", curl.trim()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{curl}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let who: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (who["tenant"].as_str(), who["region"].as_str()),
        (Some("demo"), Some("eu-west-1"))
    );

    // endpoints.json has exactly the documented keys.
    let mut keys: Vec<_> = endpoints.as_object().unwrap().keys().cloned().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "admin",
            "analytics",
            "analytics_instances",
            "capsule_repo",
            "edge",
            "gateway",
            "tool_registry",
            "trust_domain",
            "workload_api_socket"
        ]
    );
    assert_eq!(endpoints["trust_domain"], "somastack.local");
    // Without a standby, Analytics is one instance.
    assert_eq!(
        endpoints["analytics_instances"],
        serde_json::json!([endpoints["analytics"]])
    );
    // One admin listener per service, each a loopback address.
    let admin = endpoints["admin"].as_object().unwrap();
    assert_eq!(
        admin.keys().map(String::as_str).collect::<Vec<_>>(),
        ["analytics", "capsule-repo", "gateway", "tool-registry"]
    );
    for addr in admin.values() {
        let addr: std::net::SocketAddr = addr.as_str().unwrap().parse().unwrap();
        assert!(addr.ip().is_loopback(), "{addr}");
    }
    let socket = PathBuf::from(endpoints["workload_api_socket"].as_str().unwrap());
    assert!(socket.is_absolute() && socket.exists());

    // The same operator SVID works from Python grpcio.
    for (key, _, grpc_name) in SERVICES {
        let target = endpoints[key].as_str().unwrap();
        let out = std::process::Command::new(soma_testing::python())
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/health_reflection.py"))
            .arg(op.join("bundle.pem"))
            .arg(op.join("svid.pem"))
            .arg(op.join("key.pem"))
            .arg(target)
            .arg(grpc_name)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "python grpcio against {grpc_name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(line["status"], "SERVING");
    }

    check_edge(&data_dir, &endpoints).await;

    let ca_before = std::fs::read(data_dir.join("ca/ca.pem")).unwrap();
    stop(child).await;
    assert!(!socket.exists() || tokio::net::UnixStream::connect(&socket).await.is_err());

    // A second `soma up` on the same data dir reuses the authority: the old
    // operator SVID still verifies against the services.
    std::fs::remove_file(data_dir.join("endpoints.json")).unwrap();
    let child = soma_up(&data_dir);
    let restarted = Instant::now();
    wait_serving(
        &data_dir,
        &dir.path().join("operator2"),
        restarted + SERVING_LIVENESS,
    )
    .await;
    eprintln!(
        "soma up (restart on the same data): SERVING after {:?}",
        restarted.elapsed()
    );
    assert_eq!(std::fs::read(data_dir.join("ca/ca.pem")).unwrap(), ca_before);
    let old_operator = operator_store(&op);
    let endpoints: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data_dir.join("endpoints.json")).unwrap()).unwrap();
    let addr = endpoints["analytics"].as_str().unwrap().parse().unwrap();
    let id = SpiffeId::parse("spiffe://somastack.local/svc/analytics").unwrap();
    assert_eq!(
        soma_testing::health(soma_testing::channel(old_operator, addr, &id), "")
            .await
            .unwrap(),
        1
    );
    stop(child).await;
}

/// The edge of `soma up`: the development issuer's JWK, `soma token`, a
/// token minted by PyJWT from that JWK, residency from `--region`.
async fn check_edge(data_dir: &Path, endpoints: &serde_json::Value) {
    let edge = endpoints["edge"]
        .as_str()
        .expect("endpoints.json names the edge")
        .to_owned();
    assert!(edge.starts_with("http://127.0.0.1:"), "{edge}");
    let jwk_path = data_dir.join("secrets/dev-issuer.jwk");
    let jwk: serde_json::Value = serde_json::from_slice(&std::fs::read(&jwk_path).unwrap()).unwrap();
    assert_eq!(
        (jwk["kty"].as_str(), jwk["alg"].as_str()),
        (Some("oct"), Some("HS256"))
    );
    assert!(
        jwk["kid"].is_string() && jwk["k"].as_str().is_some_and(|k| k.len() >= 43),
        "{jwk}"
    );

    let token = |region: &str, extra: &[&str]| {
        let out = std::process::Command::new(SOMA)
            .args(["token", "--data-dir"])
            .arg(data_dir)
            .args(["--tenant", "demo", "--region", region, "--scope", "identity:read"])
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    };
    let http = common::edge::client();
    let who = format!("{edge}/v1/whoami");
    let r = common::edge::send(
        &http,
        "GET",
        &who,
        Some(&token("eu-west-1", &["--mfa"])),
        None,
        &[],
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let body = r.json();
    assert_eq!(
        (body["tenant"].as_str(), body["region"].as_str()),
        (Some("demo"), Some("eu-west-1"))
    );
    assert_eq!(body["mfa"], true);
    // The allow-list defaults to the gateway's own region.
    let r = common::edge::send(&http, "GET", &who, Some(&token("local", &[])), None, &[]).await;
    assert_eq!((r.status, r.reason().as_str()), (403, "residency_denied"));

    // Any JWT library holding the JWK mints tokens the edge accepts.
    let script = r#"
import json, sys, time, jwt
from jwt.utils import base64url_decode
jwk = json.load(open(sys.argv[1]))
key = base64url_decode(jwk["k"])
now = int(time.time())
claims = {"iss": "soma-dev", "aud": "somastack", "sub": "py@demo", "tenant": "demo",
          "region": "eu-west-1", "scope": "identity:read", "iat": now, "exp": now + 300}
print(jwt.encode(claims, key, algorithm="HS256", headers={"kid": jwk["kid"]}))
"#;
    let out = std::process::Command::new(soma_testing::python())
        .args(["-c", script])
        .arg(&jwk_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let py_token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let r = common::edge::send(&http, "GET", &who, Some(&py_token), None, &[]).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["subject"], "py@demo");
}

/// `soma up` with its stderr captured, for a refusal's reason.
fn soma_up_capturing_stderr(data_dir: &Path) -> Child {
    soma_up_with(data_dir, Stdio::null(), Stdio::piped())
}

/// Waits for `child` to exit (within [`HANG_GUARD`]): its status and stderr.
async fn refused(child: Child) -> (std::process::ExitStatus, String) {
    let output = tokio::time::timeout(HANG_GUARD, child.wait_with_output())
        .await
        .expect("the second soma up did not exit")
        .unwrap();
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// One data dir, one `soma up`: a second one is refused before it touches
/// anything there (exit 1, the reason naming the lock and its holder's
/// pid), both when two start at the same instant on an empty data dir
/// (before the lock, each created its own keys and authority there, and
/// one kept files the other had replaced) and when one is already
/// serving; the one that runs keeps serving with the keys it created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_dir_is_served_by_one_soma_up_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut a = soma_up_capturing_stderr(&data);
    let mut b = soma_up_capturing_stderr(&data);
    // Whichever loses exits; the other goes on serving.
    let (loser, winner) = tokio::time::timeout(HANG_GUARD, async {
        loop {
            if a.try_wait().unwrap().is_some() {
                return (a, b);
            }
            if b.try_wait().unwrap().is_some() {
                return (b, a);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("neither of two soma up on one empty data dir exited");
    let winner_pid = winner.id().unwrap();
    // The winner's stderr is drained, so that its warnings never fill the
    // pipe and stall it while the test goes on.
    let mut winner = winner;
    let mut winner_stderr = winner.stderr.take().unwrap();
    tokio::spawn(async move { tokio::io::copy(&mut winner_stderr, &mut tokio::io::sink()).await });
    let (status, stderr) = refused(loser).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    let lock = data.canonicalize().unwrap().join("soma-up.lock");
    assert!(
        stderr.contains("another `soma up` is running on") && stderr.contains(&lock.display().to_string()),
        "{stderr}"
    );
    common::cli::wait_for_edge(&data).await;
    assert_eq!(
        std::fs::read_to_string(&lock).unwrap().trim(),
        winner_pid.to_string(),
        "the lock names its holder"
    );
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&lock).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let keys = [
        "secrets/analytics-signing.key",
        "secrets/gateway-claims.key",
        "secrets/analytics-row-keys.json",
    ];
    let kept: Vec<Vec<u8>> = keys
        .iter()
        .map(|k| std::fs::read(data.join(k)).unwrap())
        .collect();

    // One more, while the first serves: refused at once, nothing replaced.
    let (status, stderr) = refused(soma_up_capturing_stderr(&data)).await;
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("pid {winner_pid}")), "{stderr}");
    for (key, before) in keys.iter().zip(&kept) {
        assert_eq!(&std::fs::read(data.join(key)).unwrap(), before, "{key} replaced");
    }
    common::cli::wait_for_edge(&data).await;
    stop(winner).await;

    // The lock ends with its holder: the data dir starts again (the
    // stopped one's endpoints file removed, so that only the new edge
    // answers the wait).
    std::fs::remove_file(data.join("endpoints.json")).unwrap();
    let again = soma_up(&data);
    common::cli::wait_for_edge(&data).await;
    stop(again).await;
}
