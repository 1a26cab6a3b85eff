//! What the `soma` binary says when something is missing or refused, as
//! an operator reads it: `soma ca issue` refuses a directory without an
//! authority (one line naming it, exit 64) instead of creating a new root;
//! `soma serve` gives the Workload API's own answer when no SVID comes (the
//! socket's connection error, or the gRPC status and message), for every
//! endpoint form go-spiffe accepts; `soma up --analytics-standby` without
//! PostgreSQL is refused before anything starts; the README's commands run
//! the binary the README's build makes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use soma_ca::{Registry, WorkloadApi, WorkloadApiConfig};

const SOMA: &str = env!("CARGO_BIN_EXE_soma");

fn stderr_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn ca_issue(data_dir: &Path, out_dir: &Path) -> Output {
    std::process::Command::new(SOMA)
        .args(["ca", "issue", "--data-dir"])
        .arg(data_dir)
        .args(["--spiffe-id", "spiffe://somastack.local/operator/alice", "--out"])
        .arg(out_dir)
        .output()
        .unwrap()
}

#[test]
fn ca_issue_refuses_a_directory_without_an_authority_and_ca_init_creates_one() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let missing = tmp.path().join("nonexistent");
    for dir in [&missing, &empty] {
        let out_dir = tmp.path().join("out");
        let out = ca_issue(dir, &out_dir);
        let d = dir.display();
        assert_eq!(out.status.code(), Some(64), "{}: {:?}", d, stderr_lines(&out));
        assert_eq!(
            stderr_lines(&out),
            [format!(
                "soma: no authority under {d} (no ca/ca.pem): start `soma up --data-dir {d}` or run `soma ca init --data-dir {d}`"
            )]
        );
        assert!(out.stdout.is_empty());
        // Nothing was created: neither a root nor certificates.
        assert!(!dir.join("ca").exists(), "{d}/ca was created");
        assert!(!out_dir.exists());
    }

    // An explicit `soma ca init` creates the authority; then issuing works,
    // and the bundle is that authority's root.
    let init = std::process::Command::new(SOMA)
        .args(["ca", "init", "--data-dir"])
        .arg(&missing)
        .output()
        .unwrap();
    assert!(init.status.success(), "{:?}", stderr_lines(&init));
    assert_eq!(
        String::from_utf8(init.stdout).unwrap(),
        format!(
            "created a new authority for somastack.local under {}\n",
            missing.join("ca").display()
        )
    );
    let out_dir = tmp.path().join("alice");
    let out = ca_issue(&missing, &out_dir);
    assert!(out.status.success(), "{:?}", stderr_lines(&out));
    assert_eq!(
        std::fs::read(out_dir.join("bundle.pem")).unwrap(),
        std::fs::read(missing.join("ca/ca.pem")).unwrap()
    );
    // A second init keeps the root.
    let again = std::process::Command::new(SOMA)
        .args(["ca", "init", "--data-dir"])
        .arg(&missing)
        .output()
        .unwrap();
    assert!(again.status.success());
    assert!(
        String::from_utf8(again.stdout)
            .unwrap()
            .starts_with("kept the existing authority")
    );
    assert_eq!(
        std::fs::read(out_dir.join("bundle.pem")).unwrap(),
        std::fs::read(missing.join("ca/ca.pem")).unwrap()
    );
}

fn ca(args: &[&str], data_dir: &Path) -> Output {
    std::process::Command::new(SOMA)
        .arg("ca")
        .args(args)
        .arg("--data-dir")
        .arg(data_dir)
        .output()
        .unwrap()
}

/// `(state, serial)` of every line `soma ca show` (or prepare/activate)
/// prints after its first `skip` lines, checking each line's shape.
fn slot_lines(out: &Output, skip: usize) -> Vec<(String, String)> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .skip(skip)
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            assert_eq!(fields.len(), 4, "{line}");
            assert!(fields[2].starts_with("not_after=20"), "{line}");
            assert!(fields[3].starts_with("jwt_kid="), "{line}");
            (fields[0].to_owned(), fields[1].to_owned())
        })
        .collect()
}

#[test]
fn ca_prepare_activate_and_show_rotate_the_authority_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    // Nothing to rotate without an authority.
    let out = ca(&["prepare"], &dir);
    assert_eq!(out.status.code(), Some(64), "{:?}", stderr_lines(&out));
    assert!(!dir.join("ca").exists());
    assert!(ca(&["init"], &dir).status.success());

    let show = ca(&["show"], &dir);
    assert!(show.status.success(), "{:?}", stderr_lines(&show));
    let first = slot_lines(&show, 0);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].0, "active");
    let old = first[0].1.clone();

    // Activating with nothing prepared is refused, naming what to run.
    let out = ca(&["activate"], &dir);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr_lines(&out),
        [format!(
            "soma: no prepared root beside {}: run `soma ca prepare` first",
            dir.join("ca/ca.pem").display()
        )]
    );
    // A lifetime the schedule cannot divide is a usage error.
    let out = ca(&["prepare", "--ca-ttl", "3s"], &dir);
    assert_eq!(out.status.code(), Some(64));
    assert_eq!(
        stderr_lines(&out),
        ["soma: --ca-ttl: invalid lifetime: ca ttl shorter than six seconds"]
    );

    let out = ca(&["prepare", "--ca-ttl", "48h"], &dir);
    assert!(out.status.success(), "{:?}", stderr_lines(&out));
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    let new = stdout
        .lines()
        .next()
        .unwrap()
        .strip_prefix("prepared ")
        .unwrap()
        .to_owned();
    assert_eq!(
        slot_lines(&out, 1),
        [
            ("active".to_owned(), old.clone()),
            ("prepared".to_owned(), new.clone())
        ]
    );
    let out = ca(&["prepare"], &dir);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        stderr_lines(&out),
        [format!(
            "soma: a root is prepared already (serial {new}): activate it first"
        )]
    );
    // An operator's files carry both roots from now on.
    let files = tmp.path().join("alice");
    assert!(ca_issue(&dir, &files).status.success());
    let bundle = std::fs::read_to_string(files.join("bundle.pem")).unwrap();
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2);

    let out = ca(&["activate"], &dir);
    assert!(out.status.success(), "{:?}", stderr_lines(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().next(),
        Some(format!("activated {new}").as_str())
    );
    assert_eq!(
        slot_lines(&out, 1),
        [("active".to_owned(), new.clone()), ("retired".to_owned(), old)]
    );
    assert_eq!(slot_lines(&ca(&["show"], &dir), 0), slot_lines(&out, 1));
}

/// `soma serve tool-registry` against `endpoint`, waiting `2s` for its SVID.
async fn serve_without_svid(endpoint: &str, cwd: &Path) -> Output {
    tokio::process::Command::new(SOMA)
        .args(["serve", "tool-registry"])
        .current_dir(cwd)
        .env("SPIFFE_ENDPOINT_SOCKET", endpoint)
        .env("SOMA_IDENTITY_TIMEOUT", "2s")
        .env("SOMA_SERVICE_ADDR", "127.0.0.1:0")
        .env("SOMA_ADMIN_ADDR", "127.0.0.1:0")
        .env("RUST_LOG", "warn")
        .env_remove("DATABASE_URL")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap()
}

/// The last line of standard error: `soma serve`'s fatal reason.
fn reason(out: &Output) -> String {
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "it printed a ready line");
    stderr_lines(out).pop().unwrap_or_default()
}

#[tokio::test]
async fn serve_says_why_no_svid_came_from_the_workload_api() {
    let tmp = tempfile::tempdir().unwrap();
    const PREFIX: &str = "soma: fetching the workload's X.509-SVID from the Workload API: ";

    // 1. No socket at the path.
    let endpoint = format!("unix://{}", tmp.path().join("missing.sock").display());
    let line = reason(&serve_without_svid(&endpoint, tmp.path()).await);
    assert!(
        line.starts_with(&format!(
            "{PREFIX}no svid from the workload api at {endpoint} within 2s: "
        )) && line.ends_with("No such file or directory (os error 2)"),
        "{line}"
    );

    // 2. A real Workload API (the development authority) that has not
    // registered the caller, named in the `unix:/path` form: its status and
    // its whole message, as it sent them.
    let ca = soma_testing::Ca::new();
    let socket = tmp.path().join("workload.sock");
    let listener = soma_ca::bind_socket(&socket).unwrap();
    let api = WorkloadApi::new(
        Arc::clone(&ca.authority),
        Registry::new(),
        WorkloadApiConfig {
            svid_ttl: Duration::from_secs(3600),
        },
    );
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let api_task = tokio::spawn(api.serve(listener, async move {
        let _ = stop_rx.await;
    }));
    let endpoint = format!("unix:{}", socket.display());
    let line = reason(&serve_without_svid(&endpoint, tmp.path()).await);
    assert_eq!(
        line,
        format!(
            "{PREFIX}no svid from the workload api at {endpoint} within 2s: status permission_denied: no identity issued: the caller matches no registration entry"
        )
    );
    // The `unix:///path` form reaches the same server.
    let endpoint = format!("unix://{}", socket.display());
    let line = reason(&serve_without_svid(&endpoint, tmp.path()).await);
    assert!(
        line.ends_with(&format!(
            "at {endpoint} within 2s: status permission_denied: no identity issued: the caller matches no registration entry"
        )),
        "{line}"
    );
    let _ = stop_tx.send(());
    api_task.await.unwrap().unwrap();

    // 3. A `tcp://IP:PORT` endpoint whose gRPC server refuses the stream: a
    // real server that does not serve the Workload API.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (_reporter, health) = tonic_health::server::health_reporter();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let endpoint = format!("tcp://{addr}");
    let line = reason(&serve_without_svid(&endpoint, tmp.path()).await);
    assert!(line.contains("gRPC status unimplemented"), "{line}");
    server.abort();

    // 4. A form go-spiffe refuses is refused before anything is contacted.
    let line = reason(&serve_without_svid("unix://relative/agent.sock", tmp.path()).await);
    assert_eq!(
        line,
        format!(
            "{PREFIX}invalid workload api endpoint \"unix://relative/agent.sock\": unix: endpoint socket URI must not include an authority"
        )
    );
}

#[test]
fn an_analytics_standby_without_postgresql_is_refused_before_anything_starts() {
    let tmp = tempfile::tempdir().unwrap();
    let data_dir = tmp.path().join("data");
    let out = std::process::Command::new(SOMA)
        .args([
            "up",
            "--edge-addr",
            "127.0.0.1:0",
            "--analytics-standby",
            "--data-dir",
        ])
        .arg(&data_dir)
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "{:?}", stderr_lines(&out));
    assert_eq!(
        stderr_lines(&out).last().map(String::as_str),
        Some(
            "soma: --analytics-standby needs --database-url: on SQLite one Analytics is always the ledger's writer"
        )
    );
    // Refused before anything was created.
    assert!(!data_dir.exists());
}

/// The `sh` blocks of a Markdown file, line by line.
fn sh_lines(markdown: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut inside = false;
    for line in markdown.lines() {
        if line.starts_with("```") {
            inside = !inside && line.trim() == "```sh";
            continue;
        }
        if inside {
            lines.push(line.to_owned());
        }
    }
    lines
}

#[test]
fn readme_commands_run_the_binary_the_readme_builds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let built = "./target/release/soma";
    for file in ["README.md", "certs/README.md"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let lines = sh_lines(&text);
        assert!(!lines.is_empty(), "{file} has no sh block");
        let mut soma_commands = 0;
        for line in &lines {
            let spaced = line.replace("$(", " ");
            let words: Vec<&str> = spaced.split_whitespace().collect();
            for (i, word) in words.iter().enumerate() {
                // `soma` alone is a command only when something put it on
                // the PATH: a fresh clone has no such thing.
                let argument = i > 0 && matches!(words[i - 1], "-p" | "--package");
                assert!(
                    *word != "soma" || argument,
                    "{file}: `{line}` calls a `soma` that is not on a fresh machine's PATH"
                );
                if *word == built {
                    soma_commands += 1;
                    // The subcommand exists in the binary the build makes.
                    let sub: Vec<&str> = words[i + 1..]
                        .iter()
                        .copied()
                        .take_while(|w| {
                            w.chars().all(|c| c.is_ascii_lowercase() || c == '-') && !w.starts_with('-')
                        })
                        .collect();
                    assert!(!sub.is_empty(), "{file}: `{line}`");
                    let help = std::process::Command::new(SOMA)
                        .args(&sub)
                        .arg("--help")
                        .output()
                        .unwrap();
                    assert!(
                        help.status.success(),
                        "{file}: `{line}`: soma {sub:?} --help failed"
                    );
                }
            }
        }
        assert!(soma_commands > 0, "{file} runs no soma command");
    }
    // The first block is one command that builds what the others run
    // (`cargo run --release` leaves the binary at `./target/release/soma`)
    // and runs `soma up` with it.
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let first = sh_lines(&readme);
    assert_eq!(first[0], "cargo run --release -p soma -- up");
}
