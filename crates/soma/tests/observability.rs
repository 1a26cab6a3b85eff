//! What an operator's monitoring stack sees of a live `soma up`: a real
//! Prometheus (Debian's `prometheus`) scrapes every service's admin
//! listener, every target is up, and a PromQL query returns exactly the
//! edge requests this test made; `promtool check metrics` finds nothing to
//! fix in any service's exposition; the Kubernetes probe paths answer; every
//! query of the dashboard in `deploy/observability/` names series the live
//! services expose and runs on the live Prometheus, and so does every alert
//! rule, whose promtool unit tests pass.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::AsyncWriteExt as _;

use common::edge::{client, send};

const HANG_GUARD: Duration = Duration::from_secs(60);
const REQUESTS: u64 = 100;

/// The admin listeners `soma up` wrote to `endpoints.json`, by service.
fn admin_addrs(data_dir: &Path) -> BTreeMap<String, String> {
    let endpoints: Value =
        serde_json::from_slice(&std::fs::read(data_dir.join("endpoints.json")).unwrap()).unwrap();
    endpoints["admin"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
        .collect()
}

/// The value of the one series `name{labels}` in an exposition.
fn sample(exposition: &str, series: &str) -> Option<u64> {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Runs `promtool check metrics` on `exposition`: (exit code, its output).
async fn promtool_check_metrics(exposition: &str) -> (Option<i32>, String) {
    let mut child = tokio::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; scripts/test.sh installs it)");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(exposition.as_bytes()).await.unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    (
        out.status.code(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A PromQL instant query: the `result` array.
async fn query(prometheus: &str, promql: &str) -> Vec<Value> {
    let http = client();
    let url = format!("{prometheus}/api/v1/query?query={}", url_encode(promql));
    let reply = send(&http, "GET", &url, None, None, &[]).await;
    assert_eq!(
        reply.status,
        200,
        "{promql}: {}",
        String::from_utf8_lossy(&reply.body)
    );
    let body = reply.json();
    assert_eq!(body["status"], "success", "{body}");
    body["data"]["result"].as_array().unwrap().clone()
}

fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A free loopback port (bound, then released for the child to take).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_every_service_and_counts_exactly_the_requests_made() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut up = common::spawn_soma_up(&data_dir, &[]);
    let edge = common::cli::wait_for_edge(&data_dir).await;
    let admin = admin_addrs(&data_dir);
    assert_eq!(
        admin.keys().map(String::as_str).collect::<Vec<_>>(),
        ["analytics", "capsule-repo", "gateway", "tool-registry"]
    );
    let http = client();
    let mut exposed = std::collections::BTreeSet::new();

    // Every service: the probes, and an exposition promtool accepts.
    for (service, addr) in &admin {
        for probe in ["healthz", "readyz", "live", "ready"] {
            let reply = send(&http, "GET", &format!("http://{addr}/{probe}"), None, None, &[]).await;
            assert_eq!(reply.status, 200, "{service} /{probe}");
        }
        let metrics = send(&http, "GET", &format!("http://{addr}/metrics"), None, None, &[]).await;
        assert_eq!(metrics.status, 200);
        let text = String::from_utf8(metrics.body.to_vec()).unwrap();
        exposed.extend(series_names(&text));
        let (code, lint) = promtool_check_metrics(&text).await;
        assert_eq!(code, Some(0), "{service}: promtool check metrics:\n{lint}");
        assert!(lint.trim().is_empty(), "{service}: {lint}");
        for series in [
            "soma_svid_expiry_timestamp_seconds",
            "soma_svid_rotations_total",
            "soma_rpc_server_handled_total",
            "soma_rpc_server_handling_seconds_bucket",
            "soma_tls_handshakes_total",
        ] {
            assert!(text.contains(series), "{service} lacks {series}");
        }
        if service == "gateway" {
            for series in [
                "soma_edge_requests_total",
                "soma_kill_switches_engaged{scope=\"GLOBAL\"} 0",
                "soma_moderation_decisions_total{outcome=\"refused\"} 0",
            ] {
                assert!(text.contains(series), "gateway lacks {series}");
            }
        }
        if service == "analytics" {
            for series in [
                "soma_ledger_leaves ",
                "soma_ledger_unauthenticated_leaves 0",
                "soma_ledger_sound 1",
                "# TYPE soma_ledger_last_checkpoint_timestamp_seconds gauge",
                "# TYPE soma_ledger_last_checkpoint_tree_size gauge",
            ] {
                assert!(text.contains(series), "analytics lacks {series}:\n{text}");
            }
        }
        // Each outbox's counters from start-up, under its own label.
        let outbox = match service.as_str() {
            "tool-registry" => Some("tool_registry"),
            "capsule-repo" => Some("capsule_repo"),
            "analytics" => Some("drill_webhooks"),
            _ => None,
        };
        if let Some(outbox) = outbox {
            for series in [
                format!("soma_outbox_delivered_total{{outbox=\"{outbox}\"}} "),
                format!("soma_outbox_delivery_failures_total{{outbox=\"{outbox}\"}} "),
                "# TYPE soma_outbox_pending_events gauge".to_owned(),
            ] {
                assert!(text.contains(&series), "{service} lacks {series}:\n{text}");
            }
        }
    }

    // A real Prometheus scraping the four admin listeners every second.
    let port = free_port();
    let prometheus_url = format!("http://127.0.0.1:{port}");
    let targets: Vec<String> = admin.values().map(|a| format!("'{a}'")).collect();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: somastack\n    static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        ),
    )
    .unwrap();
    let mut prometheus = tokio::process::Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("prometheus (Debian package prometheus; scripts/test.sh installs it)");

    let deadline = Instant::now() + HANG_GUARD;
    loop {
        let ready = http
            .request(
                http::Request::get(format!("{prometheus_url}/-/ready"))
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .unwrap(),
            )
            .await;
        if ready.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(Instant::now() < deadline, "prometheus did not become ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Exactly REQUESTS requests on one route, counted from what the gateway
    // had answered on it before.
    let gateway_metrics = format!("http://{}/metrics", admin["gateway"]);
    let series = "soma_edge_requests_total{route=\"openapi\",code=\"200\"}";
    let exposition = send(&http, "GET", &gateway_metrics, None, None, &[]).await.body;
    let before = sample(std::str::from_utf8(&exposition).unwrap(), series).unwrap_or(0);
    for _ in 0..REQUESTS {
        let reply = send(&http, "GET", &format!("{edge}/openapi.json"), None, None, &[]).await;
        assert_eq!(reply.status, 200);
    }
    // A refusal is counted by its reason.
    let refused = send(&http, "GET", &format!("{edge}/v1/whoami"), None, None, &[]).await;
    assert_eq!(refused.status, 401);
    let reason = refused.reason();

    let deadline = Instant::now() + HANG_GUARD;
    let (up_count, requests) = loop {
        let up_series = query(&prometheus_url, "up{job=\"somastack\"} == 1").await;
        let requests = query(
            &prometheus_url,
            "sum(soma_edge_requests_total{job=\"somastack\",route=\"openapi\",code=\"200\"})",
        )
        .await;
        let value = requests
            .first()
            .map(|r| r["value"][1].as_str().unwrap().parse::<f64>().unwrap());
        if up_series.len() == admin.len() && value == Some((before + REQUESTS) as f64) {
            break (up_series.len(), value);
        }
        assert!(
            Instant::now() < deadline,
            "prometheus never saw every target up and the requests: up {up_series:?}, requests {requests:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(up_count, 4);
    // The deliverers of the registry's and the repository's outboxes
    // (Analytics is their peer) measure their backlogs.
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        let backlogs = query(
            &prometheus_url,
            "soma_outbox_pending_events{outbox=~\"tool_registry|capsule_repo\"}",
        )
        .await;
        if backlogs.len() == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no outbox backlog scraped: {backlogs:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(requests, Some((before + REQUESTS) as f64));
    let refusals = query(
        &prometheus_url,
        &format!("soma_edge_refusals_total{{reason=\"{reason}\"}}"),
    )
    .await;
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert!(refusals[0]["value"][1].as_str().unwrap().parse::<f64>().unwrap() >= 1.0);

    // The dashboard and the alert rules: every series they name is one the
    // services expose, and every dashboard query runs.
    let dashboard: Value =
        serde_json::from_slice(&std::fs::read(deploy().join("dashboard.json")).unwrap()).unwrap();
    let mut queries = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for name in soma_names(expr) {
                assert!(
                    exposed.contains(&name),
                    "panel {:?} queries {name}, which no service exposes",
                    panel["title"]
                );
            }
            query(&prometheus_url, expr).await;
            queries += 1;
        }
    }
    assert!(queries >= 20, "{queries} dashboard queries");
    let alerts = std::fs::read_to_string(deploy().join("alerts.yml")).unwrap();
    let named = soma_names(&alerts);
    assert!(named.len() >= 10, "{named:?}");
    for name in named {
        assert!(
            exposed.contains(&name),
            "alerts.yml names {name}, which no service exposes"
        );
    }

    prometheus.kill().await.unwrap();
    up.kill().await.unwrap();
}

#[tokio::test]
async fn the_alert_rules_and_the_scrape_config_pass_promtool_and_every_alert_has_its_unit_tests() {
    let dir = deploy();
    for args in [
        vec!["check", "rules", "alerts.yml"],
        vec!["test", "rules", "alerts_test.yml"],
        vec!["check", "config", "prometheus.yml"],
    ] {
        let out = tokio::process::Command::new("promtool")
            .args(&args)
            .current_dir(&dir)
            .output()
            .await
            .expect("promtool (Debian package prometheus; scripts/test.sh installs it)");
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Every alert is tested firing (an `exp_alerts` with an entry) and
    // silent (`exp_alerts: []`).
    let rules = std::fs::read_to_string(dir.join("alerts.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("alerts_test.yml")).unwrap();
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert_eq!(alerts.len(), 10, "{alerts:?}");
    for alert in alerts {
        let (mut fires, mut silent) = (false, false);
        let lines: Vec<&str> = tests.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            if line.trim() == format!("alertname: {alert}") {
                match lines.get(i + 1).map(|l| l.trim()) {
                    Some("exp_alerts: []") => silent = true,
                    Some("exp_alerts:") => fires = true,
                    other => panic!("{alert}: unexpected line after alertname: {other:?}"),
                }
            }
        }
        assert!(fires, "{alert} is never tested firing");
        assert!(silent, "{alert} is never tested silent");
    }
}

/// `deploy/observability/` of this repository.
fn deploy() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/observability")
}

/// The series an exposition describes: each `# TYPE` name, with the
/// `_bucket`, `_sum` and `_count` series of a histogram.
fn series_names(exposition: &str) -> Vec<String> {
    let mut names = Vec::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            names.push(name.to_owned());
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.push(format!("{name}{suffix}"));
                }
            }
        }
    }
    names
}

/// The `soma_*` metric names in a PromQL expression or a rules file.
fn soma_names(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("soma_") {
        let start = i + at;
        let boundary = start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let end = text[start..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .map_or(text.len(), |e| start + e);
        if boundary {
            names.insert(text[start..end].to_owned());
        }
        i = end;
    }
    names
}

#[tokio::test]
async fn json_logs_parse_line_by_line_and_text_logs_in_files_carry_no_escape() {
    for (format, json) in [("json", true), ("text", false)] {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let mut up = common::soma_up_command(&data_dir)
            .args(["--log-format", format])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        common::cli::wait_for_edge(&data_dir).await;
        up.kill().await.unwrap();
        let mut lines = 0;
        for service in ["gateway", "tool-registry", "capsule-repo", "analytics"] {
            let log = std::fs::read(data_dir.join("logs").join(format!("{service}.log"))).unwrap();
            assert!(
                !log.contains(&0x1b),
                "{format}: {service}.log holds an escape byte"
            );
            for line in String::from_utf8(log).unwrap().lines().filter(|l| !l.is_empty()) {
                lines += 1;
                let parsed = serde_json::from_str::<Value>(line);
                if json {
                    let event = parsed.unwrap_or_else(|e| panic!("{service}: not JSON ({e}): {line}"));
                    assert!(event["timestamp"].is_string(), "{line}");
                    assert!(event["level"].is_string(), "{line}");
                    assert!(event["fields"].is_object(), "{line}");
                } else {
                    assert!(
                        parsed.is_err(),
                        "{service}: a text log line parses as JSON: {line}"
                    );
                }
            }
        }
        assert!(lines >= 4, "{format}: only {lines} log lines");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_request_through_the_edge_is_one_trace_across_the_gateway_and_the_backend() {
    use tokio::io::AsyncBufReadExt as _;
    // A real OTLP receiver (opentelemetry-proto + grpcio).
    let mut receiver = tokio::process::Command::new(soma_testing::python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/otlp_receiver.py"))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut spans_out = tokio::io::BufReader::new(receiver.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(HANG_GUARD, spans_out.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let port = first.strip_prefix("listening ").unwrap().to_owned();

    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut up = common::soma_up_command(&data_dir)
        .env("RUST_LOG", "warn")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://127.0.0.1:{port}"))
        .env("OTEL_TRACES_SAMPLER", "always_on")
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env_remove("OTEL_SERVICE_NAME")
        .env_remove("OTEL_SDK_DISABLED")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let edge = common::cli::wait_for_edge(&data_dir).await;
    let token = common::cli::ok(&common::cli::soma(
        &[
            "token",
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--tenant",
            "acme",
            "--region",
            "local",
            "--scope",
            "analytics:export",
        ],
        dir.path(),
    ))
    .trim()
    .to_owned();
    // One request the gateway forwards to Analytics.
    let reply = send(
        &client(),
        "GET",
        &format!("{edge}/v1/exports/keys"),
        Some(&token),
        None,
        &[],
    )
    .await;
    assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
    let request_id = reply.header("x-request-id").unwrap();

    // Collect spans until the edge's span of this request, the Analytics
    // server span of its trace, and every span between them have arrived
    // (the two processes export in their own batches).
    let mut spans: Vec<Value> = Vec::new();
    let deadline = Instant::now() + HANG_GUARD;
    let (edge_span, backend_span, hops) = loop {
        if let Some(found) = trace_of(&spans, &request_id) {
            break found;
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        assert!(
            !remaining.is_zero(),
            "no complete trace for request {request_id}: {spans:#?}"
        );
        if let Ok(Ok(Some(line))) = tokio::time::timeout(remaining, spans_out.next_line()).await {
            spans.push(serde_json::from_str(&line).unwrap());
        }
    };
    // The edge span is the trace's root, in the gateway; the backend's
    // server span is in Analytics, a descendant of it.
    assert_eq!(edge_span["parent_span_id"], "", "{edge_span}");
    assert_eq!(edge_span["kind"], 2, "a server span: {edge_span}");
    assert_eq!(
        edge_span["attributes"]["http.route"],
        "/somastack.v1.Analytics/ListVerificationKeys"
    );
    assert_eq!(
        backend_span["name"],
        "/somastack.v1.Analytics/ListVerificationKeys"
    );
    assert_eq!(backend_span["attributes"]["request_id"], request_id.as_str());
    assert_eq!(backend_span["attributes"]["rpc.system"], "grpc");
    assert!(hops >= 1);

    up.kill().await.unwrap();
    receiver.kill().await.unwrap();
}

/// In `spans`: the gateway's edge span of the request `request_id`, the
/// Analytics server span of the same trace, and the number of parent links
/// from the latter up to the former, once every span between has arrived.
fn trace_of(spans: &[Value], request_id: &str) -> Option<(Value, Value, usize)> {
    let edge = spans.iter().find(|s| {
        s["service"] == "somastack-gateway"
            && s["name"] == "edge.request"
            && s["attributes"]["request_id"] == request_id
    })?;
    let backend = spans.iter().find(|s| {
        s["trace_id"] == edge["trace_id"] && s["service"] == "somastack-analytics" && s["kind"] == 2
    })?;
    let mut at = backend;
    let mut hops = 0;
    while at["span_id"] != edge["span_id"] {
        at = spans
            .iter()
            .find(|s| s["trace_id"] == edge["trace_id"] && s["span_id"] == at["parent_span_id"])?;
        hops += 1;
        if hops > 32 {
            return None;
        }
    }
    Some((edge.clone(), backend.clone(), hops))
}
