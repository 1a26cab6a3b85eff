//! The gateway fails closed on configuration: without its config file, or
//! without a usable residency allow-list, `soma serve gateway` exits 64 with
//! a one-line reason before contacting anything; `soma up --region` and
//! `soma token` refuse bad input the same way.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read as _;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const SOMA: &str = env!("CARGO_BIN_EXE_soma");

/// How long a refusing `soma` may take to exit. A liveness bound, not a
/// timing: each of these commands refuses before binding or contacting
/// anything, in milliseconds; a command that waits for something instead
/// (a socket, a server) must fail the test, not hang it.
const EXIT_GUARD: Duration = Duration::from_secs(60);

/// Runs `cmd` to completion, or kills it and fails the test after
/// [`EXIT_GUARD`]. `Command::output` has no timeout of its own.
fn output_within_guard(mut cmd: Command) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Drained on their own threads, so that a chatty child cannot block on
    // a full pipe while this thread waits for it to exit.
    let drain = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            pipe.read_to_end(&mut bytes).unwrap();
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > EXIT_GUARD {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not exit within {EXIT_GUARD:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

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
    let out = output_within_guard(cmd);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

struct Case<'a> {
    name: &'a str,
    env: Vec<(&'a str, &'a str)>,
    /// The whole one-line reason on stderr.
    expected: &'a str,
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
    const SHAPE: &str = "may hold only lowercase ASCII letters, digits and inner dashes";

    let cases = [
        Case {
            name: "no config file",
            env: vec![],
            expected: "soma: setting SOMA_GATEWAY_CONFIG: not set; the gateway needs a config file naming \
                       its token issuers",
        },
        Case {
            name: "no allow-list",
            env: vec![("SOMA_GATEWAY_CONFIG", file)],
            expected: "soma: setting SOMAGENT_GATEWAY_RESIDENCY_ALLOWED: not set; the gateway refuses to \
                       guess which regions it may serve",
        },
        Case {
            name: "upper-case region",
            env: vec![
                ("SOMA_GATEWAY_CONFIG", file),
                ("SOMAGENT_GATEWAY_RESIDENCY_ALLOWED", "EU-WEST-1"),
            ],
            expected: &format!(
                "soma: setting SOMAGENT_GATEWAY_RESIDENCY_ALLOWED: region \"EU-WEST-1\" {SHAPE}"
            ),
        },
        Case {
            name: "empty entry",
            env: vec![
                ("SOMA_GATEWAY_CONFIG", file),
                ("SOMAGENT_GATEWAY_RESIDENCY_ALLOWED", "eu-west-1,,local"),
            ],
            expected: "soma: setting SOMAGENT_GATEWAY_RESIDENCY_ALLOWED: an entry is empty",
        },
        Case {
            name: "look-alike dash",
            env: vec![
                ("SOMA_GATEWAY_CONFIG", file),
                ("SOMAGENT_GATEWAY_RESIDENCY_ALLOWED", "eu\u{2010}west-1"),
            ],
            expected: &format!(
                "soma: setting SOMAGENT_GATEWAY_RESIDENCY_ALLOWED: region \"eu\u{2010}west-1\" {SHAPE}"
            ),
        },
        Case {
            name: "bad own region",
            env: vec![
                ("SOMA_GATEWAY_CONFIG", file),
                ("SOMAGENT_GATEWAY_RESIDENCY_ALLOWED", "local"),
                ("SOMA_GATEWAY_REGION", "Local "),
            ],
            expected: &format!("soma: setting region: region \"Local \" {SHAPE}"),
        },
        Case {
            name: "missing file",
            env: vec![
                ("SOMA_GATEWAY_CONFIG", "/nonexistent/gateway.toml"),
                ("SOMAGENT_GATEWAY_RESIDENCY_ALLOWED", "local"),
            ],
            expected: "soma: cannot read gateway config /nonexistent/gateway.toml: No such file or directory \
                       (os error 2)",
        },
    ];
    for Case { name, env, expected } in cases {
        let (code, stderr) = serve_gateway(&env);
        assert_eq!(code, 64, "{name}: {stderr}");
        assert_eq!(
            stderr,
            format!("{expected}\n"),
            "{name}: exactly one line, the reason"
        );
    }
}

#[test]
fn soma_up_and_soma_token_refuse_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let mut up = Command::new(SOMA);
    up.args(["up", "--region", "EU-WEST-1", "--data-dir"])
        .arg(dir.path());
    let out = output_within_guard(up);
    assert_eq!(
        out.status.code(),
        Some(64),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "soma: --region: region \"EU-WEST-1\" may hold only lowercase ASCII letters, digits and inner \
         dashes\n"
    );

    // No `soma up` ran here: there is no issuer key to sign with.
    let mut token = Command::new(SOMA);
    token
        .args(["token", "--tenant", "t", "--region", "local", "--data-dir"])
        .arg(dir.path());
    let out = output_within_guard(token);
    assert!(!out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        format!(
            "soma: reading {}/secrets/dev-issuer.jwk (run `soma up` on this data dir first): No such file \
             or directory (os error 2)\n",
            dir.path().display()
        )
    );
    assert!(out.stdout.is_empty());
}
