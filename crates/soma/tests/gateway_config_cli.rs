//! The gateway fails closed on configuration: without its config file, or
//! without a usable residency allow-list, `soma serve gateway` exits 64 with
//! a one-line reason before contacting anything; `soma up --region` and
//! `soma token` refuse bad input the same way.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

const SOMA: &str = env!("CARGO_BIN_EXE_soma");

fn serve_gateway(env: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(SOMA);
    cmd.args(["serve", "gateway"])
        .env_remove("SOMA_GATEWAY_CONFIG")
        .env_remove("SOMAGENT_GATEWAY_RESIDENCY_ALLOWED")
        .env_remove("SOMA_GATEWAY_REGION")
        // A socket nobody serves: reaching it would hang, not exit 64.
        .env("SPIFFE_ENDPOINT_SOCKET", "unix:///nonexistent/soma-test.sock");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

struct Case<'a> {
    name: &'a str,
    env: Vec<(&'a str, &'a str)>,
    needle: &'a str,
}

#[test]
fn the_gateway_does_not_start_without_a_usable_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let config =
        soma_gateway::GatewayConfig::dev(dir.path(), &soma_gateway::Region::parse("local").unwrap(), None)
            .unwrap();
    drop(config);
    let file = dir.path().join("gateway.toml");
    let file = file.to_str().unwrap();

    let cases = [
        Case {
            name: "no config file",
            env: vec![],
            needle: "SOMA_GATEWAY_CONFIG",
        },
        Case {
            name: "no allow-list",
            env: vec![("SOMA_GATEWAY_CONFIG", file)],
            needle: "SOMAGENT_GATEWAY_RESIDENCY_ALLOWED",
        },
        Case {
            name: "upper-case region",
            env: vec![
                ("SOMA_GATEWAY_CONFIG", file),
                ("SOMAGENT_GATEWAY_RESIDENCY_ALLOWED", "EU-WEST-1"),
            ],
            needle: "SOMAGENT_GATEWAY_RESIDENCY_ALLOWED",
        },
        Case {
            name: "empty entry",
            env: vec![
                ("SOMA_GATEWAY_CONFIG", file),
                ("SOMAGENT_GATEWAY_RESIDENCY_ALLOWED", "eu-west-1,,local"),
            ],
            needle: "SOMAGENT_GATEWAY_RESIDENCY_ALLOWED",
        },
        Case {
            name: "look-alike dash",
            env: vec![
                ("SOMA_GATEWAY_CONFIG", file),
                ("SOMAGENT_GATEWAY_RESIDENCY_ALLOWED", "eu\u{2010}west-1"),
            ],
            needle: "SOMAGENT_GATEWAY_RESIDENCY_ALLOWED",
        },
        Case {
            name: "bad own region",
            env: vec![
                ("SOMA_GATEWAY_CONFIG", file),
                ("SOMAGENT_GATEWAY_RESIDENCY_ALLOWED", "local"),
                ("SOMA_GATEWAY_REGION", "Local "),
            ],
            needle: "region",
        },
        Case {
            name: "missing file",
            env: vec![
                ("SOMA_GATEWAY_CONFIG", "/nonexistent/gateway.toml"),
                ("SOMAGENT_GATEWAY_RESIDENCY_ALLOWED", "local"),
            ],
            needle: "/nonexistent/gateway.toml",
        },
    ];
    for Case { name, env, needle } in cases {
        let (code, stderr) = serve_gateway(&env);
        assert_eq!(code, 64, "{name}: {stderr}");
        assert!(stderr.contains(needle), "{name}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{name}: one line: {stderr}");
    }
}

#[test]
fn soma_up_and_soma_token_refuse_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(SOMA)
        .args(["up", "--region", "EU-WEST-1", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(64),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("--region"));

    // No `soma up` ran here: there is no issuer key to sign with.
    let out = Command::new(SOMA)
        .args(["token", "--tenant", "t", "--region", "local", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("dev-issuer.jwk"));
    assert!(out.stdout.is_empty());
}
