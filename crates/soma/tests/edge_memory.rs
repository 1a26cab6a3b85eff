//! The gateway's memory under token-less floods, measured on the real
//! process: `soma up` starts the gateway as its own `soma serve gateway`
//! process, and its resident set is read from `/proc/PID/status` before,
//! during and after the flood.
//!
//! The flood is the one an attacker without a token can send: two HTTP/2
//! connections with 200 gRPC streams each, every stream announcing and
//! sending a 4 MiB message, and 200 HTTP/1.1 JSON requests of 1 MiB each.
//! Every one must be refused (UNAUTHENTICATED / 401) from its head, before
//! its body is read, so the gateway never buffers what it will refuse.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// The bound the issue sets on the gateway's resident set, during and after.
const MAX_RSS_BYTES: u64 = 64 * 1024 * 1024;
/// One gRPC message of the flood: 4 MiB.
const GRPC_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// One JSON body of the flood: 1 MiB (the edge's default limit, so the
/// declared length alone does not refuse it).
const JSON_BODY_BYTES: usize = 1024 * 1024;

/// The pid of the `soma serve gateway` child of `parent`.
fn gateway_pid(parent: u32) -> Option<u32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The parent pid is the second field after the parenthesised name.
        let Some(after_name) = stat.rsplit_once(')').map(|(_, rest)| rest) else {
            continue;
        };
        let ppid = after_name
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if ppid != Some(parent) {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if args.windows(2).any(|w| w[0] == b"serve" && w[1] == b"gateway") {
            return Some(pid);
        }
    }
    None
}

/// `VmRSS` of `pid`, bytes.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kib * 1024
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Waits for `endpoints.json` and for the edge to answer.
async fn edge_of(data_dir: &Path, deadline: Instant) -> std::net::SocketAddr {
    let file = data_dir.join("endpoints.json");
    let endpoints: serde_json::Value = loop {
        if let Ok(bytes) = std::fs::read(&file) {
            break serde_json::from_slice(&bytes).unwrap();
        }
        assert!(Instant::now() < deadline, "endpoints.json did not appear in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let edge = endpoints["edge"].as_str().unwrap();
    let addr = edge.strip_prefix("http://").unwrap().parse().unwrap();
    let http = common::edge::client();
    loop {
        let url = format!("http://{addr}/openapi.json");
        let request = http::Request::get(url).body(Default::default()).unwrap();
        if let Ok(r) = http.request(request).await
            && r.status() == 200
        {
            return addr;
        }
        assert!(Instant::now() < deadline, "the edge did not answer in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One HTTP/2 connection opening `streams` token-less gRPC calls, each
/// announcing and sending a 4 MiB message; every call's gRPC status.
async fn grpc_flood(addr: std::net::SocketAddr, streams: usize) -> Vec<String> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .handshake::<_, Bytes>(tcp)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut calls = Vec::with_capacity(streams);
    let mut statuses = Vec::with_capacity(streams);
    for i in 0..streams {
        let mut client = client.clone().ready().await.unwrap();
        let request = http::Request::post(format!("http://{addr}/somastack.v1.Analytics/LedgerCheckpoint"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap();
        let (response, mut body) = client.send_request(request, false).unwrap();
        calls.push(tokio::spawn(async move {
            // The message: its prefix announces 4 MiB - 5, then the bytes,
            // sent as fast as flow control lets them go, until the server
            // ends the stream.
            let sender = tokio::spawn(async move {
                let mut prefix = vec![0u8];
                prefix.extend_from_slice(&u32::try_from(GRPC_MESSAGE_BYTES - 5).unwrap().to_be_bytes());
                let chunk = Bytes::from(vec![0x5a; 64 * 1024]);
                if body.send_data(Bytes::from(prefix), false).is_err() {
                    return;
                }
                let mut sent = 5;
                while sent < GRPC_MESSAGE_BYTES {
                    let n = chunk.len().min(GRPC_MESSAGE_BYTES - sent);
                    body.reserve_capacity(n);
                    match std::future::poll_fn(|cx| body.poll_capacity(cx)).await {
                        Some(Ok(_)) => {}
                        _ => return,
                    }
                    let take = body.capacity().min(n);
                    if body
                        .send_data(chunk.slice(..take), sent + take == GRPC_MESSAGE_BYTES)
                        .is_err()
                    {
                        return;
                    }
                    sent += take;
                }
            });
            let status = match response.await {
                Ok(r) => r.headers().get("grpc-status").map_or_else(
                    || format!("http {} without grpc-status", r.status()),
                    |v| v.to_str().unwrap().to_owned(),
                ),
                Err(e) => format!("stream error: {e}"),
            };
            sender.abort();
            status
        }));
        // The first call is answered before the others open, so the client
        // knows the server's SETTINGS (its stream limit) before the flood:
        // streams opened beyond it would be refused (REFUSED_STREAM) before
        // the server looks at them, which proves nothing about admission.
        if i == 0 {
            let first = calls.pop().unwrap();
            statuses.push(first.await.unwrap());
        }
    }
    for call in calls {
        statuses.push(call.await.unwrap());
    }
    statuses
}

/// One HTTP/1.1 connection sending a token-less 1 MiB JSON request; the
/// status line of its answer.
async fn json_flood_one(addr: std::net::SocketAddr) -> String {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = tcp.into_split();
    let writer = tokio::spawn(async move {
        let head = format!(
            "POST /v1/capsule-runs HTTP/1.1\r\nhost: edge\r\ncontent-type: application/json\r\n\
             content-length: {JSON_BODY_BYTES}\r\n\r\n"
        );
        if write.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let mut body = Vec::with_capacity(JSON_BODY_BYTES);
        body.extend_from_slice(b"{\"eventId\":\"");
        body.resize(JSON_BODY_BYTES - 2, b'a');
        body.extend_from_slice(b"\"}");
        // The server may answer and close before all of it is written.
        let _ = write.write_all(&body).await;
    });
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(60), read.read_to_end(&mut reply)).await;
    writer.abort();
    String::from_utf8_lossy(&reply)
        .lines()
        .next()
        .unwrap_or("(no answer)")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokenless_floods_are_refused_from_their_heads_and_the_gateway_stays_small() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir: PathBuf = dir.path().join("data");
    let mut up = common::spawn_soma_up(&data_dir, &[]);
    let deadline = Instant::now() + Duration::from_secs(120);
    let addr = edge_of(&data_dir, deadline).await;
    let pid = gateway_pid(up.id().unwrap()).expect("no `soma serve gateway` child of soma up");

    let before = rss_bytes(pid);
    let peak = Arc::new(AtomicU64::new(before));
    let sampling = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let sampler = {
        let peak = Arc::clone(&peak);
        let sampling = Arc::clone(&sampling);
        tokio::spawn(async move {
            while sampling.load(Ordering::Relaxed) {
                peak.fetch_max(rss_bytes(pid), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };

    let grpc = [
        tokio::spawn(grpc_flood(addr, 200)),
        tokio::spawn(grpc_flood(addr, 200)),
    ];
    let json: Vec<_> = (0..200).map(|_| tokio::spawn(json_flood_one(addr))).collect();
    for connection in grpc {
        let statuses = connection.await.unwrap();
        assert_eq!(statuses.len(), 200);
        for status in &statuses {
            // 16: UNAUTHENTICATED.
            assert_eq!(status, "16", "every token-less gRPC stream is refused");
        }
    }
    for request in json {
        let line = request.await.unwrap();
        assert!(
            line.starts_with("HTTP/1.1 401 "),
            "a token-less JSON request got {line:?}"
        );
    }
    sampling.store(false, Ordering::Relaxed);
    sampler.await.unwrap();
    let during = peak.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_bytes(pid);
    println!(
        "gateway RSS: {:.1} MiB before, {:.1} MiB peak during 400 gRPC streams x 4 MiB + 200 JSON x 1 MiB, {:.1} MiB after",
        mib(before),
        mib(during),
        mib(after)
    );
    assert!(during < MAX_RSS_BYTES, "peak RSS {:.1} MiB", mib(during));
    assert!(after < MAX_RSS_BYTES, "RSS after {:.1} MiB", mib(after));

    // The gateway still serves.
    let http = common::edge::client();
    let request = http::Request::get(format!("http://{addr}/openapi.json"))
        .body(Default::default())
        .unwrap();
    assert_eq!(http.request(request).await.unwrap().status(), 200);
    // SIGTERM, so that `soma up` stops its children too.
    let status = std::process::Command::new("kill")
        .args(["-TERM", &up.id().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(30), up.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "soma up exited with {exit:?}");
}
