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
    // The same file with a token lifetime bound beyond the 30-day ceiling.
    let long_lived = dir.path().join("long-lived.toml");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(
        &long_lived,
        text.replace("[jwt]\n", "[jwt]\nmax_lifetime = \"31days\"\n"),
    )
    .unwrap();
    let long_lived = long_lived.to_str().unwrap();
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
            name: "jwt max_lifetime beyond 30 days",
            env: vec![
                ("SOMA_GATEWAY_CONFIG", long_lived),
                ("SOMAGENT_GATEWAY_RESIDENCY_ALLOWED", "local"),
            ],
            // 31 days, as the Duration's Debug form.
            expected: "soma: setting jwt.max_lifetime: max_lifetime 2678400s must be positive and at most 30 \
                       days",
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
    let out = Command::new(SOMA)
        .args([
            "token",
            "--operator",
            "--tenant",
            "t",
            "--region",
            "local",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("dev-operator-issuer.jwk"));
    assert!(out.stdout.is_empty());

    // A lifetime the gateway would refuse is not minted: one line, exit 64,
    // before any key is read.
    for ttl in ["24h 1s", "25h", "30days"] {
        let out = Command::new(SOMA)
            .args([
                "token",
                "--tenant",
                "t",
                "--region",
                "local",
                "--ttl",
                ttl,
                "--data-dir",
            ])
            .arg(dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{ttl}: {stderr}");
        assert!(
            stderr.contains("--ttl") && stderr.contains("max_lifetime"),
            "{ttl}: {stderr}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "{ttl}: {stderr}");
        assert!(out.stdout.is_empty());
    }
}

/// `soma token` mints what the development gateway accepts: a tenant token
/// from `soma-dev`, and with `--operator` an operator token from
/// `soma-dev-operator` that the gateway's verifier reads as an operator's.
#[tokio::test]
async fn soma_token_mints_tenant_and_operator_tokens_the_dev_gateway_accepts() {
    let data = tempfile::tempdir().unwrap();
    let secrets = data.path().join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    std::fs::write(
        secrets.join(soma_gateway::config::DEV_ISSUER_JWK_FILE),
        soma_gateway::config::generate_dev_issuer_jwk(),
    )
    .unwrap();
    std::fs::write(
        secrets.join(soma_gateway::config::DEV_OPERATOR_ISSUER_JWK_FILE),
        soma_gateway::config::generate_dev_operator_issuer_jwk(),
    )
    .unwrap();
    let toml = soma_gateway::config::dev_config_toml(
        &secrets.join(soma_gateway::config::DEV_ISSUER_JWK_FILE),
        &secrets.join(soma_gateway::config::DEV_OPERATOR_ISSUER_JWK_FILE),
        &soma_gateway::Region::parse("local").unwrap(),
        None,
    );
    let config_file = data.path().join("gateway.toml");
    std::fs::write(&config_file, toml).unwrap();
    let config = soma_gateway::GatewayConfig::from_file(&config_file, |k| {
        (k == soma_gateway::config::RESIDENCY_ENV).then(|| "local".to_owned())
    })
    .unwrap();
    let verifier = soma_auth::JwtVerifier::new(config.jwt).await.unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;

    // (extra args, issuer, operator)
    let rows: [(&[&str], &str, bool); 3] = [
        (&[], soma_gateway::config::DEV_ISSUER, false),
        (&["--ttl", "24h"], soma_gateway::config::DEV_ISSUER, false),
        (
            &["--operator", "--mfa"],
            soma_gateway::config::DEV_OPERATOR_ISSUER,
            true,
        ),
    ];
    for (extra, issuer, operator) in rows {
        let out = Command::new(SOMA)
            .args([
                "token",
                "--tenant",
                "ops",
                "--region",
                "local",
                "--scope",
                "ops:killswitch",
            ])
            .args(extra)
            .arg("--data-dir")
            .arg(data.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{extra:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let token = String::from_utf8(out.stdout).unwrap();
        let claims = verifier
            .verify(token.trim(), now)
            .await
            .unwrap_or_else(|e| panic!("{extra:?}: {e}"));
        assert_eq!(
            (claims.issuer.as_str(), claims.operator, claims.tenant.as_str()),
            (issuer, operator, "ops"),
            "{extra:?}"
        );
    }
}
