//! `schemathesis` (an independent OpenAPI fuzzer) against `/openapi.json` of
//! a live `soma up`: no 5xx, status codes and content types as documented,
//! and requests without or with invalid authentication answered 401.
//!
//! Bounded for CI: 20 examples per operation, at most 40 requests/s (under
//! the development rate limit). Every route of the four services, with
//! schemathesis' own `not_a_server_error`, minus `SetKillSwitch` (a fuzzed
//! switch on the token's own tenant would turn every later request into a
//! 503; its behaviour is tested in edge_admission.rs and
//! edge_authority.rs). `RunCapsule` is fuzzed through the whole
//! orchestration: the fuzzing tenant has installed nothing, so CapsuleRepo
//! answers each run (404, or 400 for what the edge refuses first).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use tokio::process::Command;

const SOMA: &str = env!("CARGO_BIN_EXE_soma");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_undocumented_answer() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut up = common::spawn_soma_up(&data_dir, &[]);
    let edge = wait_for_edge(&data_dir, Instant::now() + Duration::from_secs(20)).await;

    // A token holding every capability any route names, with MFA.
    let table = soma_gateway::routes::RouteTable::from_descriptors(&soma_proto::SERVICE_NAMES).unwrap();
    let scopes: std::collections::BTreeSet<&str> = table
        .iter()
        .filter_map(|r| r.policy.as_ref().map(|p| p.capability.as_str()))
        .filter(|c| !c.is_empty())
        .collect();
    let scope = scopes.into_iter().collect::<Vec<_>>().join(" ");
    let out = std::process::Command::new(SOMA)
        .args(["token", "--data-dir"])
        .arg(&data_dir)
        .args([
            "--tenant", "fuzz", "--region", "local", "--mfa", "--ttl", "1h", "--scope", &scope,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).unwrap().trim().to_owned();

    let python = soma_testing::python();
    let schemathesis = python.parent().unwrap().join("schemathesis");
    assert!(
        schemathesis.exists(),
        "schemathesis is not installed next to {}",
        python.display()
    );
    let fuzz = |include: &[&str], exclude: &[&str], checks: &str| {
        let mut command = Command::new(&schemathesis);
        command
            .arg("run")
            .arg(format!("{edge}/openapi.json"))
            .args(["--url", &edge])
            .args(["-H", &format!("Authorization: Bearer {token}")]);
        for tag in include {
            command.args(["--include-tag", tag]);
        }
        for operation in exclude {
            command.args(["--exclude-operation-id", operation]);
        }
        command
            .args(["--checks", checks])
            .args([
                "-n",
                "20",
                "--seed",
                "20261126",
                "--rate-limit",
                "40/s",
                "--no-color",
            ])
            .current_dir(dir.path());
        command
    };
    let run = fuzz(
        &["Analytics", "CapsuleRepo", "Gateway", "ToolRegistry"],
        &["Gateway_SetKillSwitch"],
        "not_a_server_error,status_code_conformance,content_type_conformance,ignored_auth",
    )
    .output()
    .await
    .unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&run.stdout),
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(run.status.success(), "schemathesis failed:\n{report}");
    assert!(
        report.contains("Tested: 38"),
        "fewer operations than expected were tested:\n{report}"
    );

    let pid = up.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(30), up.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "soma up exited with {exit:?}");
}

async fn wait_for_edge(data_dir: &Path, deadline: Instant) -> String {
    loop {
        if let Ok(bytes) = std::fs::read(data_dir.join("endpoints.json"))
            && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes)
            && let Some(edge) = v["edge"].as_str()
        {
            return edge.to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "soma up did not write its edge to endpoints.json"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
