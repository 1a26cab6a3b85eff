//! `soma up` configures Analytics' drill objectives for its region and its
//! webhook receivers (SQLite here; PostgreSQL in `ha_failover.rs`): a drill
//! posted through the edge is judged against them — tightened by the
//! drill's own targets, never loosened — and a failed one reaches a real
//! receiver, signed with the keyring `soma up` generated in the data dir;
//! settings Analytics would refuse stop `soma up` before anything starts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::cli::{ok, soma, wait_for_edge};
use serde_json::{Value, json};

#[tokio::test]
async fn settings_analytics_would_refuse_stop_soma_up_before_anything_starts() {
    struct Case {
        name: &'static str,
        args: &'static [&'static str],
        code: i32,
        expected: &'static str,
    }
    let cases = [
        Case {
            name: "an https receiver",
            args: &["--drill-webhook", "https://hooks.example/drills"],
            code: 64,
            expected: "https webhooks are not supported yet",
        },
        Case {
            name: "not a URL scheme Analytics speaks",
            args: &["--drill-webhook", "ftp://hooks.example/drills"],
            code: 64,
            expected: "the scheme must be http://",
        },
        Case {
            name: "a comma in a URL",
            args: &["--drill-webhook", "http://a.example/x,y"],
            code: 64,
            expected: "--drill-webhook: a URL must not contain ','",
        },
        Case {
            name: "an objective finer than a millisecond",
            args: &["--drill-rto-objective", "1500us"],
            code: 2,
            expected: "must be a whole number of milliseconds",
        },
    ];
    for case in cases {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let output = common::soma_up_command(&data)
            .args(case.args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(case.code), "{}: {stderr}", case.name);
        assert!(stderr.contains(case.expected), "{}: {stderr}", case.name);
        assert!(
            !data.join("endpoints.json").exists(),
            "{}: something started",
            case.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drills_are_judged_against_soma_ups_objectives_and_failures_notified_signed() {
    let (hook_url, hooks) = common::webhook::receiver().await;

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut up = common::spawn_soma_up(
        &data,
        &[
            "--region",
            "eu-west-1",
            "--drill-rto-objective",
            "20s",
            "--drill-rpo-objective",
            "1500ms",
            "--drill-webhook",
            &hook_url,
        ],
    );
    let edge = wait_for_edge(&data).await;
    let token = ok(&soma(
        &[
            "token",
            "--data-dir",
            data.to_str().unwrap(),
            "--tenant",
            "acme",
            "--region",
            "eu-west-1",
            "--scope",
            "drills:write drills:read",
        ],
        dir.path(),
    ))
    .trim()
    .to_owned();
    let http = common::edge::client();
    let t0 = 1_790_000_000_i64;
    // `t0` plus `ms` milliseconds.
    let at = |ms: i64| rfc3339_ms(t0 * 1000 + ms);
    let record = |id: &str, rto: i64, rpo_ms: i64, targets: Value| {
        let mut drill = json!({
            "eventId": id,
            "region": "eu-west-1",
            "scenario": "postgres-primary-loss",
            "startedAt": at(0),
            "failoverCompletedAt": at(rto * 1000),
            "restoredAt": at(rto * 1000),
            "lastDurableWriteAt": at(-rpo_ms),
            "steps": [{"name": "kill", "outcome": "STEP_OUTCOME_PASSED"}],
        });
        drill
            .as_object_mut()
            .unwrap()
            .extend(targets.as_object().unwrap().clone());
        let (http, edge, token) = (http.clone(), edge.clone(), token.clone());
        async move {
            let reply = common::edge::send(
                &http,
                "POST",
                &format!("{edge}/v1/drills/disaster"),
                Some(&token),
                Some(&drill.to_string()),
                &[],
            )
            .await;
            assert_eq!(reply.status, 200, "{}", String::from_utf8_lossy(&reply.body));
            reply.json()
        }
    };

    // Within soma up's objectives: passed (not "no objectives configured").
    let passed = record("d-ok", 19, 1500, json!({})).await;
    assert_eq!(passed["passed"], true, "{passed}");
    // Over the RTO objective; a looser target of the drill changes nothing.
    let over = record("d-over", 21, 0, json!({"rtoTarget": "60s"})).await;
    assert_eq!(
        over["failureReasons"],
        json!(["rto 21s exceeds the objective 20s"]),
        "{over}"
    );
    assert_eq!(
        (over["rto"].as_str(), over["rpo"].as_str()),
        (Some("21s"), Some("0s")),
        "{over}"
    );
    // Within the objectives, over the drill's own stricter targets.
    let strict = record("d-strict", 10, 1, json!({"rtoTarget": "5s", "rpoTarget": "0s"})).await;
    assert_eq!(
        strict["failureReasons"],
        json!([
            "rto 10s exceeds the drill's target 5s",
            "rpo 0.001s exceeds the drill's target 0s"
        ]),
        "{strict}"
    );

    // The two failed drills reach the receiver, each signed with the
    // keyring soma up generated (mode 0600) and verified with it.
    let keys_file = data.join("secrets/analytics-webhook-keys.json");
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&keys_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
    let keyring = soma_sign::HmacKeyring::load(&keys_file).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while hooks.lock().unwrap().len() < 2 {
        assert!(
            Instant::now() < deadline,
            "{} notifications",
            hooks.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let received = hooks.lock().unwrap().clone();
    assert_eq!(received.len(), 2, "a passing drill notified, or one twice");
    let mut notified = Vec::new();
    for (headers, body) in &received {
        let header = |name: &str| headers.get(name).unwrap().to_str().unwrap().to_owned();
        let (id, timestamp) = (header("x-soma-webhook-id"), header("x-soma-webhook-timestamp"));
        let hex = header("x-soma-webhook-signature");
        let hex = hex.strip_prefix("v1=").unwrap();
        let tag: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let message = [format!("{timestamp}.{id}.").as_bytes(), &body[..]].concat();
        keyring
            .verify(&header("x-soma-webhook-key-id"), &message, &tag)
            .unwrap();
        let event: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(event["type"], "disaster_drill.failed");
        assert_eq!(event["tenant"], "acme");
        notified.push((
            event["event_id"].as_str().unwrap().to_owned(),
            event["objective_rto_nanos"].as_str().unwrap().to_owned(),
            event["objective_rpo_nanos"].as_str().unwrap().to_owned(),
        ));
    }
    notified.sort();
    // The objective applied, stored with each: soma up's, or the drill's
    // stricter target.
    assert_eq!(
        notified,
        [
            (
                "d-over".to_owned(),
                "20000000000".to_owned(),
                "1500000000".to_owned()
            ),
            ("d-strict".to_owned(), "5000000000".to_owned(), "0".to_owned()),
        ]
    );
    up.kill().await.unwrap();
}

/// Unix milliseconds as RFC 3339 (UTC).
fn rfc3339_ms(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap();
    t.format(&time::format_description::well_known::Rfc3339).unwrap()
}
