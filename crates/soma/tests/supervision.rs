//! `soma up` supervises its children, on the real binary: every service
//! exits within 2 s of a SIGTERM; a service killed with SIGKILL is
//! restarted, answers SERVING over mTLS on its address again within 5 s and
//! the edge serves again (Analytics with its data); each restart is
//! announced on `soma up`'s output, and the dead child's pid is withdrawn
//! from the Workload API before its successor is registered; log files
//! carry no colour escapes; a taken edge port is named, with its holder.
//!
//! The bounds (2 s, 5 s) are the issue's, generous upper bounds for a
//! liveness check, not performance targets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use soma_identity::{Bundle, BundleSet, SpiffeId, Svid, SvidStore, TrustDomain};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

const SOMA: &str = env!("CARGO_BIN_EXE_soma");

/// A liveness bound for the first start of all four services (see soma_up.rs).
const SERVING_LIVENESS: Duration = Duration::from_secs(120);
/// The issue's bound on a service's exit after SIGTERM.
const SIGTERM_EXIT: Duration = Duration::from_secs(2);
/// The issue's bound on a killed service serving again.
const RESTARTED: Duration = Duration::from_secs(5);
const HANG_GUARD: Duration = Duration::from_secs(60);

/// (endpoints.json key, service name, gRPC service name).
const SERVICES: [(&str, &str, &str); 4] = [
    ("analytics", "analytics", "somastack.v1.Analytics"),
    ("tool_registry", "tool-registry", "somastack.v1.ToolRegistry"),
    ("capsule_repo", "capsule-repo", "somastack.v1.CapsuleRepo"),
    ("gateway", "gateway", "somastack.v1.Gateway"),
];

/// A running `soma up`, its output lines and (when asked) its stderr lines.
struct Up {
    child: Child,
    stdout: mpsc::UnboundedReceiver<String>,
    stderr: Option<mpsc::UnboundedReceiver<String>>,
}

fn lines_of(reader: impl tokio::io::AsyncRead + Unpin + Send + 'static) -> mpsc::UnboundedReceiver<String> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut lines = BufReader::new(reader).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn soma_up(data_dir: &Path, rust_log: &str, capture_stderr: bool) -> Up {
    let mut child = common::soma_up_command(data_dir)
        .args(["--region", "eu-west-1"])
        .env_remove("NO_COLOR")
        .env("RUST_LOG", rust_log)
        .stdout(Stdio::piped())
        .stderr(if capture_stderr {
            Stdio::piped()
        } else {
            Stdio::inherit()
        })
        .spawn()
        .unwrap();
    let stdout = lines_of(child.stdout.take().unwrap());
    let stderr = child.stderr.take().map(lines_of);
    Up {
        child,
        stdout,
        stderr,
    }
}

impl Up {
    fn pid(&self) -> u32 {
        self.child.id().unwrap()
    }

    /// Waits for an output line starting with `prefix`, until `deadline`.
    async fn line_starting(&mut self, prefix: &str, deadline: Instant) -> String {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.stdout.recv()).await {
                Ok(Some(line)) if line.starts_with(prefix) => return line,
                Ok(Some(_)) => {}
                Ok(None) => panic!("soma up closed its output before {prefix:?}"),
                Err(_) => panic!("no line {prefix:?} in time"),
            }
        }
    }

    /// SIGTERM, then a successful exit.
    async fn stop(mut self) -> Vec<String> {
        common::signal("TERM", self.pid());
        let exit = tokio::time::timeout(HANG_GUARD, self.child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(exit.success(), "soma up exited with {exit:?}");
        let mut stderr = Vec::new();
        if let Some(mut rx) = self.stderr.take() {
            while let Some(line) = rx.recv().await {
                stderr.push(line);
            }
        }
        stderr
    }
}

/// Whether process `pid` has ended (gone, or a zombie waiting to be reaped).
fn ended(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat[stat.rfind(')').unwrap() + 2..].starts_with('Z'),
    }
}

fn issue_operator(data_dir: &Path, out: &Path) -> std::sync::Arc<SvidStore> {
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

async fn endpoints(data_dir: &Path, deadline: Instant) -> serde_json::Value {
    let file = data_dir.join("endpoints.json");
    loop {
        if let Ok(bytes) = std::fs::read(&file) {
            return serde_json::from_slice(&bytes).unwrap();
        }
        assert!(Instant::now() < deadline, "endpoints.json did not appear in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until `name` answers SERVING over mTLS at its endpoints.json address.
async fn wait_serving(
    operator: &std::sync::Arc<SvidStore>,
    endpoints: &serde_json::Value,
    (key, name, grpc_name): (&str, &str, &str),
    deadline: Instant,
) {
    let addr = endpoints[key].as_str().unwrap().parse().unwrap();
    let id = SpiffeId::parse(&format!("spiffe://somastack.local/svc/{name}")).unwrap();
    loop {
        let ch = soma_testing::channel(operator.clone(), addr, &id);
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, soma_testing::health(ch, grpc_name)).await {
            Ok(Ok(1)) => return,
            other => {
                assert!(Instant::now() < deadline, "{name} not SERVING in time: {other:?}");
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
    }
}

/// One HTTP request to the edge; `None` while nothing answers.
async fn edge_request(
    method: &str,
    url: &str,
    token: &str,
    body: Option<&str>,
) -> Option<(u16, serde_json::Value)> {
    use http_body_util::BodyExt as _;
    let client = common::edge::client();
    let mut request = http::Request::builder()
        .method(method)
        .uri(url)
        .header("authorization", format!("Bearer {token}"));
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    let request = request
        .body(http_body_util::Full::new(bytes::Bytes::from(
            body.unwrap_or("").to_owned(),
        )))
        .unwrap();
    let response = client.request(request).await.ok()?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.ok()?.to_bytes();
    Some((status, serde_json::from_slice(&body).unwrap_or_default()))
}

/// Polls `GET url` until it answers 200, until `deadline`; the body.
async fn edge_ok(url: &str, token: &str, deadline: Instant) -> serde_json::Value {
    loop {
        let last = edge_request("GET", url, token, None).await;
        if let Some((200, body)) = last {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "{url} did not answer 200 in time: {last:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn token(data_dir: &Path) -> String {
    let out = std::process::Command::new(SOMA)
        .args(["token", "--data-dir"])
        .arg(data_dir)
        .args([
            "--tenant",
            "demo",
            "--region",
            "eu-west-1",
            "--mfa",
            "--scope",
            "identity:read drills:read drills:write",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// Starts `soma up` and waits for all four services to be SERVING.
async fn up_and_serving(
    dir: &Path,
    rust_log: &str,
    capture_stderr: bool,
) -> (Up, serde_json::Value, std::sync::Arc<SvidStore>) {
    let data_dir = dir.join("data");
    let deadline = Instant::now() + SERVING_LIVENESS;
    let up = soma_up(&data_dir, rust_log, capture_stderr);
    let endpoints = endpoints(&data_dir, deadline).await;
    let operator = issue_operator(&data_dir, &dir.join("operator"));
    for service in SERVICES {
        wait_serving(&operator, &endpoints, service, deadline).await;
    }
    (up, endpoints, operator)
}

#[tokio::test]
async fn every_service_exits_within_two_seconds_of_sigterm_and_is_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let (mut up, endpoints, operator) = up_and_serving(dir.path(), "warn", false).await;
    let children = common::services_of(up.pid());
    assert_eq!(
        children.keys().map(String::as_str).collect::<Vec<_>>(),
        ["analytics", "capsule-repo", "gateway", "tool-registry"]
    );
    for service @ (_, name, _) in SERVICES {
        let pid = children[name];
        let sent = Instant::now();
        common::signal("TERM", pid);
        while !ended(pid) {
            assert!(
                sent.elapsed() < SIGTERM_EXIT,
                "{name} (pid {pid}) still running {:?} after SIGTERM",
                sent.elapsed()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        eprintln!("{name}: exited {:?} after SIGTERM", sent.elapsed());
        // `soma up` notices, says so, and brings it back.
        let deadline = Instant::now() + HANG_GUARD;
        let exited = up
            .line_starting(&format!("  {name:<14} exited (exit status: 0)"), deadline)
            .await;
        assert!(exited.contains("; restarting in 100ms"), "{exited}");
        up.line_starting(&format!("  {name:<14} restarted (pid "), deadline)
            .await;
        wait_serving(&operator, &endpoints, service, deadline).await;
        assert_ne!(common::services_of(up.pid())[name], pid);
    }
    up.stop().await;
}

#[tokio::test]
async fn a_killed_service_is_restarted_serving_on_its_address_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    // The registry's info lines tell when a pid is registered and withdrawn.
    let (mut up, endpoints, operator) = up_and_serving(dir.path(), "warn,soma_ca=info", true).await;
    let edge = endpoints["edge"].as_str().unwrap().to_owned();
    let token = token(&data_dir);

    // Analytics data written before the kills.
    let t0 = common::edge::now();
    let rfc3339 = |t: i64| {
        time::OffsetDateTime::from_unix_timestamp(t)
            .unwrap()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let drill = serde_json::json!({
        "eventId": "drill-before-the-kills", "region": "eu-west-1", "scenario": "primary-db-loss",
        "startedAt": rfc3339(t0 - 10), "failoverCompletedAt": rfc3339(t0 - 5), "restoredAt": rfc3339(t0),
        "lastDurableWriteAt": rfc3339(t0 - 11), "steps": [{"name": "fence", "outcome": "STEP_OUTCOME_PASSED"}]
    });
    let recorded = edge_request(
        "POST",
        &format!("{edge}/v1/drills/disaster"),
        &token,
        Some(&drill.to_string()),
    )
    .await;
    assert_eq!(recorded.as_ref().map(|r| r.0), Some(200), "{recorded:?}");
    let summary_url = format!("{edge}/v1/drills/disaster/summary?region=eu-west-1");
    let summary = edge_ok(&summary_url, &token, Instant::now() + HANG_GUARD).await;
    assert_eq!(summary["regions"][0]["count"], "1", "{summary}");

    let mut killed = Vec::new();
    for service @ (_, name, _) in SERVICES {
        let pid = common::services_of(up.pid())[name];
        common::signal("KILL", pid);
        let deadline = Instant::now() + RESTARTED;
        let exited = up
            .line_starting(&format!("  {name:<14} exited (signal: 9 (SIGKILL))"), deadline)
            .await;
        assert!(exited.contains("; restarting in 100ms"), "{exited}");
        let restarted = up
            .line_starting(&format!("  {name:<14} restarted (pid "), deadline)
            .await;
        let new_pid = common::services_of(up.pid())[name];
        assert_ne!(new_pid, pid);
        assert!(restarted.contains(&format!("(pid {new_pid})")), "{restarted}");
        // SERVING over mTLS on the address endpoints.json still names.
        wait_serving(&operator, &endpoints, service, deadline).await;
        // The edge serves again, through the restarted service.
        let who = edge_ok(&format!("{edge}/v1/whoami"), &token, deadline).await;
        assert_eq!(who["tenant"], "demo");
        // Analytics kept its data (same data dir, same database).
        let summary = edge_ok(&summary_url, &token, deadline).await;
        assert_eq!(summary["regions"][0]["count"], "1", "{summary}");
        eprintln!(
            "{name}: serving again {:?} after SIGKILL",
            RESTARTED.saturating_sub(deadline.saturating_duration_since(Instant::now()))
        );
        killed.push((pid, new_pid));
    }
    let stderr = up.stop().await;

    // Every pid registered for a child was withdrawn, and a killed child's
    // pid was withdrawn before its successor was registered.
    let position = |event: &str, pid: u32| {
        stderr.iter().position(|l| {
            l.contains(&format!(" {event} workload pid={pid} "))
                || l.contains(&format!(": {event} workload pid={pid} "))
        })
    };
    for (old, new) in &killed {
        let withdrawn = position("unregistered", *old).unwrap_or_else(|| panic!("pid {old} never withdrawn"));
        let successor = position("registered", *new).unwrap_or_else(|| panic!("pid {new} never registered"));
        assert!(
            withdrawn < successor,
            "pid {old} withdrawn after pid {new} was registered"
        );
    }
    let registered: Vec<&String> = stderr
        .iter()
        .filter(|l| l.contains(": registered workload pid="))
        .collect();
    assert_eq!(registered.len(), 8, "{stderr:#?}");
    for line in registered {
        let pid: u32 = line
            .split("pid=")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|p| p.parse().ok())
            .unwrap();
        assert!(
            position("unregistered", pid).is_some(),
            "pid {pid} never withdrawn"
        );
    }
}

#[tokio::test]
async fn log_files_have_no_colour_escapes() {
    let dir = tempfile::tempdir().unwrap();
    // Info level, so that every service writes lines to its log.
    let (up, _, _) = up_and_serving(dir.path(), "info", false).await;
    up.stop().await;
    let logs = dir.path().join("data/logs");
    for (_, name, _) in SERVICES {
        let log = std::fs::read(logs.join(format!("{name}.log"))).unwrap();
        assert!(!log.is_empty(), "{name}.log is empty");
        assert!(
            !log.contains(&0x1b),
            "{name}.log holds ESC bytes: {:?}",
            String::from_utf8_lossy(&log[..log.len().min(300)])
        );
    }
}

#[tokio::test]
async fn a_taken_edge_port_is_named_with_its_holder() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let out = tokio::time::timeout(
        SERVING_LIVENESS,
        Command::new(SOMA)
            .args(["up", "--region", "eu-west-1", "--edge-addr"])
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .env("RUST_LOG", "error")
            .env_remove("SOMA_GATEWAY_CONFIG")
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().last().unwrap_or_default();
    let me = std::process::id();
    assert!(
        last.starts_with("soma: starting gateway (log: ")
            && last.contains(&format!(
                "): gateway exited before it listened: gateway: cannot listen on {addr} (the edge): address in use by pid {me} ("
            )),
        "{stderr}"
    );
    drop(taken);
}
