#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The Workload API as clients outside Rust reach it: py-spiffe (grpcio,
//! which sends the socket path percent-encoded as `:authority`), and raw
//! HTTP/2 frames carrying each form of `:authority` a client may send.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::UnixStream;

use common::{TestServer, spiffe_id};

const HOUR: Duration = Duration::from_secs(3600);

/// Upper bound on any single wait, so that a broken server fails the test
/// instead of hanging it. Not a performance assertion.
const HANG_GUARD: Duration = Duration::from_secs(60);

/// The interpreter with py-spiffe installed: SOMA_PYTHON, else the
/// workspace's .venv (`scripts/test.sh` creates it).
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("SOMA_PYTHON") {
        return p.into();
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/python");
    assert!(
        venv.exists(),
        "the interop tests need Python with py-spiffe (the `spiffe` package): set SOMA_PYTHON"
    );
    venv
}

fn client_script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../soma/tests/interop/workload_client.py")
}

/// The py-spiffe client with `args`, for `server`.
fn py_spiffe_command(server: &TestServer, args: &[&str]) -> std::process::Command {
    let mut command = std::process::Command::new(python());
    command
        .arg(client_script())
        .args(args)
        .env("SPIFFE_ENDPOINT_SOCKET", server.endpoint())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// Starts the py-spiffe client with `args` against `server`; `register`
/// decides what the server is told about the new process before it calls.
async fn py_spiffe(
    server: &TestServer,
    args: &[&str],
    register: impl FnOnce(u32),
) -> (serde_json::Value, Option<i32>) {
    let child = py_spiffe_command(server, args).spawn().unwrap();
    // The interpreter needs far longer to start than this takes.
    register(child.id());
    py_spiffe_output(child).await
}

/// What the client printed, and its exit code. (The client bounds each of
/// its calls with a 20 s deadline, so it cannot outlive a failed test long.)
async fn py_spiffe_output(child: std::process::Child) -> (serde_json::Value, Option<i32>) {
    let output = tokio::time::timeout(
        HANG_GUARD,
        tokio::task::spawn_blocking(move || child.wait_with_output()),
    )
    .await
    .expect("py-spiffe client hung")
    .unwrap()
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

#[tokio::test]
async fn py_spiffe_fetches_the_x509_context() {
    let server = TestServer::start(HOUR).await;
    let id = spiffe_id("/svc/python");
    let (out, code) = py_spiffe(&server, &["x509"], |pid| {
        server.registry.register_pid(pid, id.clone());
    })
    .await;
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(out["spiffe_id"], "spiffe://somastack.test/svc/python");
    assert_eq!(out["chain_len"], 1);
    assert_eq!(out["key_matches"], true);
    assert_eq!(out["bundle_tds"], serde_json::json!(["somastack.test"]));
    assert_eq!(out["bundle_matches_svid_bundle"], true);
}

#[tokio::test]
async fn py_spiffe_fetches_and_validates_a_jwt_svid() {
    let server = TestServer::start(HOUR).await;
    let id = spiffe_id("/svc/python");
    let (out, code) = py_spiffe(&server, &["jwt", "billing"], |pid| {
        server.registry.register_pid(pid, id.clone());
    })
    .await;
    assert_eq!(code, Some(0), "{out}");
    assert_eq!(out["spiffe_id"], "spiffe://somastack.test/svc/python");
    assert_eq!(out["audience"], serde_json::json!(["billing"]));
    assert_eq!(out["kids"].as_array().unwrap().len(), 1);
    assert_eq!(out["local_spiffe_id"], "spiffe://somastack.test/svc/python");
    assert_eq!(out["remote_spiffe_id"], "spiffe://somastack.test/svc/python");
    // And the token is one this authority accepts, for its audience only.
    let token = out["token"].as_str().unwrap();
    assert_eq!(
        server.authority.validate_jwt(token, "billing").unwrap().spiffe_id,
        id
    );
    assert_eq!(
        server
            .authority
            .validate_jwt(token, "audit")
            .unwrap_err()
            .to_string(),
        "invalid jwt-svid: audience \"audit\" not in token audience [\"billing\"]"
    );
}

#[tokio::test]
async fn py_spiffe_without_an_identity_is_denied() {
    let server = TestServer::start(HOUR).await;
    let (out, code) = py_spiffe(&server, &["x509"], |_| {}).await;
    assert_eq!(code, Some(3), "{out}");
    assert_eq!(out["error"], "PERMISSION_DENIED");
    assert_eq!(out["message"], NO_ENTRY);
}

/// The refusal of a caller that no registration entry matches.
const NO_ENTRY: &str = "no identity issued: the caller matches no registration entry";

/// Spawns the py-spiffe client so that it runs as `pid`, which must be free:
/// the kernel's last-issued pid is set just below it (root only), and the
/// spawn retried if another process on the machine took the number first.
fn spawn_on_pid(pid: u32, mut command: std::process::Command) -> std::process::Child {
    for _ in 0..50 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())
            .expect("forcing a pid needs root (write /proc/sys/kernel/ns_last_pid)");
        let child = command.spawn().unwrap();
        if child.id() == pid {
            return child;
        }
        let mut child = child;
        child.kill().unwrap();
        child.wait().unwrap();
    }
    panic!("could not get pid {pid} for the new process in 50 tries");
}

/// Issue 14 point 6: a registered child is killed with SIGKILL (so nobody
/// unregisters it), another process is forced onto its pid and asks for an
/// SVID: refused, because its start time is not the registered one.
#[tokio::test]
async fn a_process_on_a_killed_childs_pid_is_refused() {
    let server = TestServer::start(HOUR).await;
    let id = spiffe_id("/svc/gateway");
    let mut victim = std::process::Command::new("sleep").arg("600").spawn().unwrap();
    let pid = victim.id();
    server.registry.register_pid(pid, id.clone());
    assert_eq!(server.registry.lookup(pid), Some(id.clone()));
    victim.kill().unwrap(); // SIGKILL
    victim.wait().unwrap();

    let impostor = spawn_on_pid(pid, py_spiffe_command(&server, &["x509"]));
    let (out, code) = py_spiffe_output(impostor).await;
    assert_eq!(code, Some(3), "{out}");
    assert_eq!(out["error"], "PERMISSION_DENIED");
    assert_eq!(out["message"], NO_ENTRY);
    assert_eq!(server.registry.lookup(pid), None);
}

/// The same with a live registered process that exits normally and is
/// never unregistered: the number alone is worth nothing afterwards.
#[tokio::test]
async fn a_registration_outlives_no_process() {
    let server = TestServer::start(HOUR).await;
    let mut first = std::process::Command::new("true").spawn().unwrap();
    let pid = first.id();
    server.registry.register_pid(pid, spiffe_id("/svc/analytics"));
    first.wait().unwrap();
    assert_eq!(server.registry.lookup(pid), None, "a pid with no process");
}

// ---- raw HTTP/2 ----------------------------------------------------------

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut out = len[1..].to_vec();
    out.extend([kind, flags]);
    out.extend(stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A raw (not Huffman) HPACK string literal, short enough for one byte of length.
fn hpack_str(s: &str) -> Vec<u8> {
    let mut out = vec![u8::try_from(s.len()).unwrap()];
    assert!(out[0] < 0x7f);
    out.extend_from_slice(s.as_bytes());
    out
}

/// Literal without indexing, new name (RFC 7541 §6.2.2).
fn literal(name: &str, value: &str) -> Vec<u8> {
    let mut out = vec![0x00];
    out.extend(hpack_str(name));
    out.extend(hpack_str(value));
    out
}

/// A FetchX509Bundles request's header block, `authority` first.
fn bundles_request(authority: Vec<u8>) -> Vec<u8> {
    let mut block = authority;
    block.push(0x83); // :method POST
    block.push(0x86); // :scheme http
    block.extend(literal(":path", "/SpiffeWorkloadAPI/FetchX509Bundles"));
    block.extend(literal("content-type", "application/grpc"));
    block.extend(literal("te", "trailers"));
    block.extend(literal("workload.spiffe.io", "true"));
    block
}

/// The first frame the server sends on `stream` (skipping connection-level
/// frames and other streams): its type.
async fn first_frame_on(conn: &mut UnixStream, stream: u32) -> u8 {
    loop {
        let mut header = [0u8; 9];
        tokio::time::timeout(HANG_GUARD, conn.read_exact(&mut header))
            .await
            .expect("no frame from the server")
            .unwrap();
        let len = usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        let mut payload = vec![0u8; len];
        conn.read_exact(&mut payload).await.unwrap();
        let id = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
        if id == stream {
            return header[3];
        }
    }
}

const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const END_HEADERS: u8 = 0x4;
const END_STREAM: u8 = 0x1;
const DATA: u8 = 0x0;

/// Every form of `:authority` on one connection (so through one HPACK
/// dynamic table): grpcio's percent-encoded path as a literal with
/// incremental indexing, then the same value by dynamic-table index, then a
/// percent-encoded path with the static name index, then the Rust clients'
/// `localhost`; and a raw path, which is not an authority, still refused.
#[tokio::test]
async fn every_conforming_authority_is_served_on_one_connection() {
    struct Case {
        name: &'static str,
        authority: Vec<u8>,
        expected: u8,
    }
    let server = TestServer::start(HOUR).await;
    server
        .registry
        .register_pid(std::process::id(), spiffe_id("/svc/raw"));
    let percent = "tmp%2Fsoma%20dir%2Fworkload.sock";
    let mut with_indexing = vec![0x40];
    with_indexing.extend(hpack_str(":authority"));
    with_indexing.extend(hpack_str(percent));
    let mut static_name = vec![0x01]; // without indexing, name = static index 1
    static_name.extend(hpack_str("var%2Frun%2Fspire.sock"));
    let cases = [
        Case {
            name: "grpcio literal, indexed for later",
            authority: with_indexing,
            expected: DATA,
        },
        // Index 62: the newest dynamic entry, the :authority just added.
        Case {
            name: "grpcio value by dynamic index",
            authority: vec![0xbe],
            expected: DATA,
        },
        Case {
            name: "percent-encoded with static name",
            authority: static_name,
            expected: DATA,
        },
        Case {
            name: "rust clients' localhost",
            authority: literal(":authority", "localhost"),
            expected: DATA,
        },
        Case {
            name: "raw path is not an authority",
            authority: literal(":authority", "/tmp/w.sock"),
            expected: RST_STREAM,
        },
        Case {
            name: "still served after the refusal",
            authority: vec![0xbe],
            expected: DATA,
        },
    ];

    let mut conn = UnixStream::connect(&server.socket).await.unwrap();
    conn.write_all(PREFACE).await.unwrap();
    conn.write_all(&frame(0x4, 0, 0, &[])).await.unwrap(); // SETTINGS
    for (i, case) in cases.into_iter().enumerate() {
        let stream = u32::try_from(2 * i + 1).unwrap();
        let block = bundles_request(case.authority);
        conn.write_all(&frame(HEADERS, END_HEADERS, stream, &block))
            .await
            .unwrap();
        // One empty gRPC message: uncompressed, length 0.
        conn.write_all(&frame(DATA, END_STREAM, stream, &[0, 0, 0, 0, 0]))
            .await
            .unwrap();
        let mut kind = first_frame_on(&mut conn, stream).await;
        if kind == HEADERS {
            // The response headers; the bundle follows as DATA.
            kind = first_frame_on(&mut conn, stream).await;
        }
        assert_eq!(kind, case.expected, "{}", case.name);
    }
}
