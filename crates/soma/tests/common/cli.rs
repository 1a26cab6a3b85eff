//! The `soma` binary as the end-to-end tests drive it beside a running
//! `soma up`: one command, its output checked, and the edge `soma up`
//! serves.

use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The binary under test.
pub const SOMA: &str = env!("CARGO_BIN_EXE_soma");

/// Runs `soma args` in `dir`, on the data dir's own SQLite databases (as
/// `soma up` uses them: `DATABASE_URL` removed).
pub fn soma(args: &[&str], dir: &Path) -> Output {
    std::process::Command::new(SOMA)
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .env_remove("DATABASE_URL")
        .output()
        .unwrap()
}

/// The standard output of a command that must have succeeded.
pub fn ok(output: &Output) -> String {
    assert!(
        output.status.success(),
        "exit {:?}: {}{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

/// The edge `soma up` wrote to `DATA/endpoints.json`, once it answers.
pub async fn wait_for_edge(data_dir: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    let http = super::edge::client();
    loop {
        if let Ok(bytes) = std::fs::read(data_dir.join("endpoints.json")) {
            let endpoints: Value = serde_json::from_slice(&bytes).unwrap();
            let edge = endpoints["edge"].as_str().unwrap().to_owned();
            let r = super::edge::send(&http, "GET", &format!("{edge}/openapi.json"), None, None, &[]).await;
            if r.status == 200 {
                return edge;
            }
        }
        assert!(
            Instant::now() < deadline,
            "soma up did not serve its edge in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `t` as RFC 3339.
pub fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339).unwrap()
}

/// Sends only the head of a POST with `content_length`, and reads the reply.
pub async fn head_only(url: &str, token: &str, content_length: usize) -> (u16, Value) {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let uri: http::Uri = url.parse().unwrap();
    let authority = uri.authority().unwrap().as_str().to_owned();
    let mut tcp = tokio::net::TcpStream::connect(&authority).await.unwrap();
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {authority}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {content_length}\r\n\r\n",
        uri.path()
    );
    tcp.write_all(head.as_bytes()).await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut reply))
        .await
        .expect("the edge answers from the head and closes")
        .unwrap();
    let text = String::from_utf8(reply).unwrap();
    let status: u16 = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1;
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// Writes the `text_stats` adapter as WebAssembly text and the manifest of
/// `text-stats` 1.0.0 into `work`, and signs them with `soma release sign`
/// and `key` into `work/envelope.json` (sign fills in the module's digest
/// and size).
pub fn sign_text_stats(work: &Path, key: &str) {
    std::fs::write(
        work.join("text_stats.wat"),
        soma_sandbox::adapter_wat("text_stats").unwrap(),
    )
    .unwrap();
    std::fs::write(
        work.join("manifest.json"),
        serde_json::to_vec(&json!({
            "tool": "text-stats",
            "version": "1.0.0",
            "entrypoint": "run",
            "limits": {"fuel": 50_000_000, "memory_bytes": 4_194_304, "deadline_ms": 2000},
            "description": "Counts characters, words, lines and bytes of a text."
        }))
        .unwrap(),
    )
    .unwrap();
    ok(&soma(
        &[
            "release",
            "sign",
            "--key",
            key,
            "--manifest",
            "manifest.json",
            "--module",
            "text_stats.wat",
            "--out",
            "envelope.json",
        ],
        work,
    ));
}
