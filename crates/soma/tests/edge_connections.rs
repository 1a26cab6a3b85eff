//! Connection hygiene at the edge, against a real in-process gateway with
//! raw TCP (and TLS) sockets and a raw HTTP/2 client: a head sent one byte
//! at a time, a body that stalls, an idle HTTP/1.1 keep-alive and an idle
//! HTTP/2 connection are each closed after their timeout and counted by
//! reason; an HTTP/2 stream still sending its body keeps its connection;
//! beyond the global or per-client cap a connection is refused at once and
//! counted, and served again once the idle ones have been closed. Plaintext
//! and HTTPS take one code path, so the slowloris and cap rows run on both.
//! Every test runs on SQLite and on PostgreSQL: the gateway reads its kill
//! switches from its database when it starts and polls them while it serves.
//!
//! Timings are liveness bounds (a close must come, not before ~0.9 of its
//! timeout, and within a generous 10 s); the measured figures are printed.

#![allow(clippy::unwrap_used, clippy::expect_used)]
#![expect(
    clippy::print_stdout,
    reason = "the measured timings are printed beside their liveness bounds"
)]

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use soma_gateway::listener::{CloseReason, RefusalReason};
use soma_mesh::ServiceKind;
use soma_store::StoreSettings;
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use common::analytics::{analytics_config, start_analytics};
use common::edge::{Edge, gateway_signer, start_edge};
use soma_testing::Ca;

/// How long any close may take before the test calls the connection stuck.
const BOUND: Duration = Duration::from_secs(10);
/// How soon a refused connection must see its end.
const REFUSAL_BOUND: Duration = Duration::from_secs(2);

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// Plaintext or HTTPS (a certificate minted for this run).
enum Transport {
    Plain,
    Tls {
        cert_file: PathBuf,
        key_file: PathBuf,
        client: Arc<rustls::ClientConfig>,
        _dir: tempfile::TempDir,
    },
}

impl Transport {
    fn tls() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let (cert_file, key_file) = (dir.path().join("edge.pem"), dir.path().join("edge.key"));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        client.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self::Tls {
            cert_file,
            key_file,
            client: Arc::new(client),
            _dir: dir,
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Self::Plain => "plaintext",
            Self::Tls { .. } => "https",
        }
    }

    fn configure(&self, config: &mut soma_gateway::GatewayConfig) {
        if let Self::Tls {
            cert_file, key_file, ..
        } = self
        {
            config.edge_tls_cert_file = Some(cert_file.clone());
            config.edge_tls_key_file = Some(key_file.clone());
        }
    }

    /// A connection from 127.0.0.1, handshaken when TLS.
    async fn connect(&self, addr: SocketAddr) -> Box<dyn Io> {
        self.connect_from("127.0.0.1", addr).await.unwrap()
    }

    /// A connection from `source` (any 127.0.0.0/8 address is local), or
    /// the error that ended it before HTTP could start.
    async fn connect_from(&self, source: &str, addr: SocketAddr) -> std::io::Result<Box<dyn Io>> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(format!("{source}:0").parse().unwrap())?;
        let tcp = socket.connect(addr).await?;
        match self {
            Self::Plain => Ok(Box::new(tcp)),
            Self::Tls { client, .. } => {
                let connector = tokio_rustls::TlsConnector::from(Arc::clone(client));
                let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
                Ok(Box::new(connector.connect(name, tcp).await?))
            }
        }
    }
}

/// Small timeouts (the defaults are 10 s, 30 s and 60 s).
fn timeouts(header: u64, body: u64, idle: u64) -> impl Fn(&mut soma_gateway::GatewayConfig) {
    move |c| {
        c.connections.header_read_timeout = Duration::from_secs(header);
        c.connections.body_read_timeout = Duration::from_secs(body);
        c.connections.idle_timeout = Duration::from_secs(idle);
    }
}

/// The edge alone (no backend) on the gateway database `db`.
async fn edge_with(
    transport: &Transport,
    db: &StoreSettings,
    tweak: impl FnOnce(&mut soma_gateway::GatewayConfig),
) -> (Edge, Ca) {
    let ca = Ca::new();
    let edge = start_edge(&ca, None, db, |c| {
        transport.configure(c);
        tweak(c);
    })
    .await;
    (edge, ca)
}

/// Reads until the peer closes (EOF, reset, or a TLS stream cut short);
/// returns when that happened, counted from `since`, and what was read.
async fn until_closed<S: AsyncRead + Unpin + ?Sized>(
    s: &mut S,
    since: Instant,
    bound: Duration,
) -> (Duration, Vec<u8>) {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(since + bound, s.read(&mut buf)).await {
            Err(_) => panic!(
                "the connection is still open {bound:?} later (read so far: {:?})",
                String::from_utf8_lossy(&got)
            ),
            Ok(Ok(0) | Err(_)) => return (since.elapsed(), got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads one HTTP/1.1 response with a `content-length` body.
async fn read_response<S: AsyncRead + Unpin + ?Sized>(s: &mut S) -> (u16, Vec<u8>) {
    next_response(s, &mut Vec::new()).await
}

/// The next HTTP/1.1 response with a `content-length` body: `buffered`
/// holds what was read past the previous one (pipelined responses) and
/// keeps what is read past this one.
async fn next_response<S: AsyncRead + Unpin + ?Sized>(s: &mut S, buffered: &mut Vec<u8>) -> (u16, Vec<u8>) {
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buffered.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(BOUND, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(
            n > 0,
            "closed before a response: {:?}",
            String::from_utf8_lossy(buffered)
        );
        buffered.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&buffered[..head_end]).into_owned();
    let status: u16 = head.split(' ').nth(1).unwrap().parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .unwrap_or_else(|| panic!("no content-length in {head}"));
    while buffered.len() < head_end + length {
        let n = tokio::time::timeout(BOUND, s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed inside a response body");
        buffered.extend_from_slice(&buf[..n]);
    }
    let body = buffered[head_end..head_end + length].to_vec();
    buffered.drain(..head_end + length);
    (status, body)
}

/// One keep-alive request and its response.
async fn get_openapi<S: AsyncRead + AsyncWrite + Unpin + ?Sized>(s: &mut S) -> u16 {
    s.write_all(b"GET /openapi.json HTTP/1.1\r\nhost: edge\r\n\r\n")
        .await
        .unwrap();
    read_response(s).await.0
}

/// The close came after its timeout (within scheduling slack) and within
/// the bound.
fn assert_closed_after(what: &str, elapsed: Duration, timeout: Duration) {
    println!("{what}: closed after {elapsed:?} (timeout {timeout:?})");
    assert!(
        elapsed >= timeout.mul_f64(0.9),
        "{what}: closed after {elapsed:?}, before its timeout {timeout:?}"
    );
    assert!(elapsed < BOUND, "{what}: closed after {elapsed:?}");
}

async fn slowloris(transport: Transport) {
    for stores in soma_testing::engine_stores(&[ServiceKind::Gateway]).await {
        let (edge, _ca) = edge_with(&transport, stores.of(ServiceKind::Gateway), timeouts(1, 1, 1)).await;
        let stream = transport.connect(edge.addr).await;
        let since = Instant::now();
        let (mut read, mut write) = tokio::io::split(stream);
        let writer = tokio::spawn(async move {
            for byte in b"GET /openapi.json HTTP/1.1\r\nhost: edge\r\nx-padding: slowloris\r\n\r\n" {
                if write.write_all(&[*byte]).await.is_err() || write.flush().await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        let (elapsed, got) = until_closed(&mut read, since, BOUND).await;
        writer.abort();
        assert_closed_after(
            &format!("slowloris ({})", transport.name()),
            elapsed,
            Duration::from_secs(1),
        );
        assert!(
            got.is_empty(),
            "a reply to an incomplete head: {:?}",
            String::from_utf8_lossy(&got)
        );
        let stats = edge.connections.snapshot();
        assert_eq!(stats.closed(CloseReason::HeaderTimeout), 1, "{stats:?}");
        assert_eq!(stats.closed(CloseReason::IdleTimeout), 0, "{stats:?}");
        edge.stop().await;
        stores.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_sent_one_byte_at_a_time_is_closed_after_the_header_timeout() {
    slowloris(Transport::Plain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_sent_one_byte_at_a_time_over_https_is_closed_after_the_header_timeout() {
    slowloris(Transport::tls()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_nothing_is_closed_after_the_header_timeout() {
    for stores in soma_testing::engine_stores(&[ServiceKind::Gateway]).await {
        let (edge, _ca) = edge_with(
            &Transport::Plain,
            stores.of(ServiceKind::Gateway),
            timeouts(1, 1, 5),
        )
        .await;
        let mut stream = Transport::Plain.connect(edge.addr).await;
        let (elapsed, got) = until_closed(&mut stream, Instant::now(), BOUND).await;
        assert_closed_after("silent connection", elapsed, Duration::from_secs(1));
        assert!(got.is_empty());
        assert_eq!(edge.connections.snapshot().closed(CloseReason::HeaderTimeout), 1);
        edge.stop().await;
        stores.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_is_refused_and_its_connection_closed_after_the_body_timeout() {
    for stores in soma_testing::engine_stores(&[ServiceKind::Gateway]).await {
        let (edge, _ca) = edge_with(
            &Transport::Plain,
            stores.of(ServiceKind::Gateway),
            timeouts(1, 1, 5),
        )
        .await;
        let token = edge.token(json!({"scope": "analytics:ingest"}));
        let mut stream = Transport::Plain.connect(edge.addr).await;
        let head = format!(
            "POST /v1/capsule-runs HTTP/1.1\r\nhost: edge\r\nauthorization: Bearer {token}\r\n\
             content-type: application/json\r\ncontent-length: 1000\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(b"{\"eventId\"").await.unwrap();
        let since = Instant::now();
        let (elapsed, got) = until_closed(&mut stream, since, BOUND).await;
        assert_closed_after("stalled body", elapsed, Duration::from_secs(1));
        let reply = String::from_utf8_lossy(&got);
        println!("stalled body: reply {:?}", reply.lines().next());
        // The edge answers 408 body_timeout, then closes the connection.
        assert!(reply.starts_with("HTTP/1.1 408 "), "{reply}");
        assert!(reply.contains("\"reason\":\"body_timeout\""), "{reply}");
        let stats = edge.connections.snapshot();
        assert_eq!(stats.closed(CloseReason::BodyTimeout), 1, "{stats:?}");
        edge.stop().await;
        stores.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http1_keep_alive_connection_is_closed_after_the_idle_timeout() {
    for stores in soma_testing::engine_stores(&[ServiceKind::Gateway]).await {
        // The head timeout is longer than the idle one: what closes the
        // connection is idleness, and it is counted as such.
        let (edge, _ca) = edge_with(
            &Transport::Plain,
            stores.of(ServiceKind::Gateway),
            timeouts(3, 3, 1),
        )
        .await;
        let mut stream = Transport::Plain.connect(edge.addr).await;
        assert_eq!(get_openapi(&mut stream).await, 200);
        let (elapsed, got) = until_closed(&mut stream, Instant::now(), BOUND).await;
        assert_closed_after("idle HTTP/1.1", elapsed, Duration::from_secs(1));
        assert!(got.is_empty());
        let stats = edge.connections.snapshot();
        assert_eq!(stats.closed(CloseReason::IdleTimeout), 1, "{stats:?}");
        assert_eq!(stats.closed(CloseReason::HeaderTimeout), 0, "{stats:?}");
        edge.stop().await;
        stores.cleanup().await;
    }
}

/// `GET /openapi.json` sent `n` times at once on one HTTP/1.1 connection.
fn pipelined_openapi(n: usize) -> Vec<u8> {
    b"GET /openapi.json HTTP/1.1\r\nhost: edge\r\n\r\n".repeat(n)
}

/// A connection with a 4 KiB receive buffer (so that what the peer does
/// not read soon fills the edge's socket) that asked for
/// `/openapi.json` `n` times at once.
async fn asking_for_openapi(addr: SocketAddr, n: usize) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    stream.write_all(&pipelined_openapi(n)).await.unwrap();
    stream
}

/// A peer that stops reading is closed `send_timeout` after the socket
/// refused the edge's first byte, counted as `send_timeout`, instead of
/// holding its responses forever (nothing closed it before: a request in
/// progress is not idleness); a peer that reads with pauses shorter than
/// `send_timeout` is served every response however long that takes, since
/// every write that makes progress resets the clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_reading_is_closed_after_the_send_timeout_and_one_that_reads_is_served() {
    const SEND_TIMEOUT: Duration = Duration::from_secs(1);
    for stores in soma_testing::engine_stores(&[ServiceKind::Gateway]).await {
        let (edge, _ca) = edge_with(&Transport::Plain, stores.of(ServiceKind::Gateway), |c| {
            c.connections.send_timeout = SEND_TIMEOUT;
        })
        .await;
        let document = {
            let mut stream = Transport::Plain.connect(edge.addr).await;
            stream.write_all(&pipelined_openapi(1)).await.unwrap();
            read_response(&mut stream).await.1.len()
        };
        // Answers worth 32 MiB, far beyond both sockets' buffers.
        let answers = (32 << 20) / document + 1;

        // The peer asks for all of them and reads nothing.
        let mut silent = asking_for_openapi(edge.addr, answers).await;
        let asked = Instant::now();
        while edge.connections.snapshot().closed(CloseReason::SendTimeout) == 0 {
            assert!(
                asked.elapsed() < BOUND,
                "a peer reading nothing is still connected {BOUND:?} later: {:?}",
                edge.connections.snapshot()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let closed_after = asked.elapsed();
        println!("a peer reading nothing was closed {closed_after:?} after its requests");
        assert!(closed_after >= SEND_TIMEOUT.mul_f64(0.9), "{closed_after:?}");
        // What it reads now ends: the connection is gone.
        let (_, got) = until_closed(&mut silent, Instant::now(), BOUND).await;
        assert!(got.len() < answers * document, "it got every answer");

        // A peer that reads, pausing 200 ms ten times (a fifth of the
        // timeout: a loaded machine's scheduling cannot stretch one pause
        // past it), 2 s of pauses in all, with answers worth more than the
        // edge's socket buffer can hold (so its writes are refused during
        // the pauses): every answer is served.
        let answers = (8 << 20) / document + 1;
        let mut reader = asking_for_openapi(edge.addr, answers).await;
        let reading = Instant::now();
        let mut buffered = Vec::new();
        for i in 0..answers {
            if i % (answers / 10).max(1) == 0 {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            let (status, body) = next_response(&mut reader, &mut buffered).await;
            assert_eq!((status, body.len()), (200, document));
        }
        assert!(buffered.is_empty());
        println!(
            "a reader pausing between answers was served for {:?}",
            reading.elapsed()
        );
        let stats = edge.connections.snapshot();
        assert_eq!(stats.closed(CloseReason::SendTimeout), 1, "{stats:?}");
        assert_eq!(
            get_openapi(&mut reader).await,
            200,
            "the reader's connection is still served"
        );
        edge.stop().await;
        stores.cleanup().await;
    }
}

/// An HTTP/1.1 `GET /openapi.json` whose head carries `fields` header
/// fields (`host` and `fields - 1` more), on a connection of its own;
/// the status and the body of the answer.
async fn get_with_fields(addr: SocketAddr, fields: usize) -> (u16, Vec<u8>) {
    let mut head = String::from("GET /openapi.json HTTP/1.1\r\nhost: edge\r\n");
    for i in 1..fields {
        head.push_str(&format!("x-f{i}: {i}\r\n"));
    }
    head.push_str("\r\n");
    let mut stream = Transport::Plain.connect(addr).await;
    stream.write_all(head.as_bytes()).await.unwrap();
    read_response(&mut stream).await
}

/// An HTTP/1.1 head with more header fields than `max_headers` is refused
/// by the edge, 431 `too_many_headers` with its JSON error, before any
/// token is looked at; one with exactly `max_headers` is served. (Before,
/// the HTTP parser refused it with a bare 431 and no reason.) Only a head
/// beyond the setting's ceiling (1,000 fields) is still the parser's to
/// refuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http1_head_with_too_many_fields_is_refused_with_its_reason() {
    for stores in soma_testing::engine_stores(&[ServiceKind::Gateway]).await {
        let (edge, _ca) = edge_with(&Transport::Plain, stores.of(ServiceKind::Gateway), |c| {
            c.connections.max_headers = 8;
        })
        .await;
        assert_eq!(get_with_fields(edge.addr, 8).await.0, 200);
        for fields in [9, 40, 1000] {
            let (status, body) = get_with_fields(edge.addr, fields).await;
            let error: serde_json::Value = serde_json::from_slice(&body)
                .unwrap_or_else(|e| panic!("{fields} fields: not a JSON error ({e}): {body:?}"));
            assert_eq!(
                (status, error["reason"].as_str()),
                (431, Some("too_many_headers")),
                "{fields} fields: {error}"
            );
            assert!(
                error["message"]
                    .as_str()
                    .unwrap()
                    .contains("more than 8 header fields"),
                "{error}"
            );
        }
        // Beyond the ceiling the parser refuses the head itself.
        assert_eq!(get_with_fields(edge.addr, 1001).await.0, 431);
        edge.stop().await;
        stores.cleanup().await;
    }
}

/// An HTTP/2 (prior knowledge) connection and its driver task.
async fn h2_connect(
    addr: SocketAddr,
) -> (
    h2::client::SendRequest<Bytes>,
    tokio::task::JoinHandle<Result<(), h2::Error>>,
) {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    (client, tokio::spawn(connection))
}

async fn h2_body(response: http::Response<h2::RecvStream>) -> (u16, Vec<u8>) {
    let status = response.status().as_u16();
    let mut body = response.into_body();
    let mut out = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
        out.extend_from_slice(&chunk);
    }
    (status, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_grpc_message_is_answered_deadline_exceeded_after_the_body_timeout() {
    for stores in soma_testing::engine_stores(&[ServiceKind::Gateway]).await {
        let (edge, _ca) = edge_with(
            &Transport::Plain,
            stores.of(ServiceKind::Gateway),
            timeouts(1, 1, 5),
        )
        .await;
        let token = edge.token(json!({"scope": "ledger:read"}));
        let (client, _connection) = h2_connect(edge.addr).await;
        let mut client = client.ready().await.unwrap();
        let request = http::Request::post(format!(
            "http://{}/somastack.v1.Analytics/InclusionProof",
            edge.addr
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {token}"))
        .body(())
        .unwrap();
        let (response, mut send) = client.send_request(request, false).unwrap();
        // The prefix announces 100 bytes; 10 come, then nothing.
        let mut partial = vec![0u8, 0, 0, 0, 100];
        partial.extend_from_slice(&[0x0a; 10]);
        send.send_data(Bytes::from(partial), false).unwrap();
        let since = Instant::now();
        let response = tokio::time::timeout(BOUND, response).await.unwrap().unwrap();
        let elapsed = since.elapsed();
        println!("stalled gRPC message: answered after {elapsed:?}");
        assert!(
            elapsed >= Duration::from_millis(900),
            "answered before the body timeout: {elapsed:?}"
        );
        let head = response.headers();
        let field = |name: &str| head.get(name).map(|v| v.to_str().unwrap().to_owned());
        // 4: DEADLINE_EXCEEDED.
        assert_eq!(
            (
                field("grpc-status").as_deref(),
                field(soma_mesh::REASON_METADATA).as_deref()
            ),
            (Some("4"), Some("body_timeout"))
        );
        edge.stop().await;
        stores.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_http2_connection_is_closed_after_the_idle_timeout() {
    for stores in soma_testing::engine_stores(&[ServiceKind::Gateway]).await {
        let (edge, _ca) = edge_with(
            &Transport::Plain,
            stores.of(ServiceKind::Gateway),
            timeouts(3, 3, 1),
        )
        .await;
        let (client, driver) = h2_connect(edge.addr).await;
        let mut client = client.ready().await.unwrap();
        let request = http::Request::get(format!("http://{}/openapi.json", edge.addr))
            .body(())
            .unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        let (status, _) = h2_body(response.await.unwrap()).await;
        assert_eq!(status, 200);
        let since = Instant::now();
        // The client keeps its handle, so only the server can end the
        // connection (GOAWAY, then close).
        let ended = tokio::time::timeout_at(since + BOUND, driver).await;
        let elapsed = since.elapsed();
        let ended = ended.expect("the idle HTTP/2 connection is still open").unwrap();
        println!("idle HTTP/2: driver ended with {ended:?}");
        assert_closed_after("idle HTTP/2", elapsed, Duration::from_secs(1));
        let stats = edge.connections.snapshot();
        assert_eq!(stats.closed(CloseReason::IdleTimeout), 1, "{stats:?}");
        drop(client);
        edge.stop().await;
        stores.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_stream_still_sending_its_body_keeps_the_connection_past_the_idle_timeout() {
    for stores in soma_testing::engine_stores(&[ServiceKind::Gateway, ServiceKind::Analytics]).await {
        // Idle after 1 s; the body may take 10 s and takes about 3. A real
        // Analytics backend stores the event, so the stream is served whole.
        let ca = Ca::new();
        let analytics = start_analytics(
            &ca,
            stores.of(ServiceKind::Analytics),
            analytics_config(),
            Some(&gateway_signer()),
        )
        .await;
        let edge = start_edge(
            &ca,
            Some(&analytics),
            stores.of(ServiceKind::Gateway),
            timeouts(1, 10, 1),
        )
        .await;
        let token = edge.token(json!({"scope": "analytics:ingest"}));
        let (client, driver) = h2_connect(edge.addr).await;
        let mut client = client.ready().await.unwrap();
        let request = http::Request::post(format!("http://{}/v1/capsule-runs", edge.addr))
            .header("authorization", format!("Bearer {token}"))
            .header("content-type", "application/json")
            .body(())
            .unwrap();
        let (response, mut body) = client.send_request(request, false).unwrap();
        let started_at = time::OffsetDateTime::now_utc() - time::Duration::seconds(5);
        let started_at = started_at
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        let json = json!({"eventId": "slow-1", "capsuleId": "c", "runId": "r1", "outcome": "RUN_OUTCOME_SUCCEEDED", "startedAt": started_at, "duration": "1s"}).to_string();
        let pieces: Vec<&[u8]> = json.as_bytes().chunks(json.len().div_ceil(10)).collect();
        let started = Instant::now();
        for (i, piece) in pieces.iter().enumerate() {
            tokio::time::sleep(Duration::from_millis(300)).await;
            body.send_data(Bytes::copy_from_slice(piece), i + 1 == pieces.len())
                .unwrap();
        }
        let sending = started.elapsed();
        let (status, reply) = h2_body(response.await.unwrap()).await;
        println!(
            "long HTTP/2 stream: body sent over {sending:?}, answered {status} {}",
            String::from_utf8_lossy(&reply)
        );
        assert!(
            sending > Duration::from_secs(1),
            "the body was not slower than the idle timeout"
        );
        assert!(
            !driver.is_finished(),
            "the connection ended while its stream was open"
        );
        let stats = edge.connections.snapshot();
        assert_eq!(stats.closed(CloseReason::IdleTimeout), 0, "{stats:?}");
        assert_eq!(stats.closed(CloseReason::BodyTimeout), 0, "{stats:?}");
        // Once the stream is done, the connection is idle and is closed.
        let since = Instant::now();
        let ended = tokio::time::timeout_at(since + BOUND, driver).await;
        let elapsed = since.elapsed();
        ended
            .expect("the HTTP/2 connection stayed open once idle")
            .unwrap()
            .ok();
        assert_closed_after(
            "HTTP/2 idle after its long stream",
            elapsed,
            Duration::from_secs(1),
        );
        assert_eq!(edge.connections.snapshot().closed(CloseReason::IdleTimeout), 1);
        drop(client);
        edge.stop().await;
        analytics.stop().await;
        stores.cleanup().await;
    }
}

/// One row of the cap table.
struct CapCase {
    name: &'static str,
    max_connections: usize,
    per_client: usize,
    expected: RefusalReason,
}

async fn caps(transport: Transport) {
    for stores in soma_testing::engine_stores(&[ServiceKind::Gateway]).await {
        let cases = [
            CapCase {
                name: "global cap",
                max_connections: 8,
                per_client: 8,
                expected: RefusalReason::MaxConnections,
            },
            CapCase {
                name: "per-client cap",
                max_connections: 100,
                per_client: 8,
                expected: RefusalReason::MaxConnectionsPerClient,
            },
        ];
        for case in cases {
            let what = format!("{} ({})", case.name, transport.name());
            let (edge, _ca) = edge_with(&transport, stores.of(ServiceKind::Gateway), |c| {
                timeouts(3, 3, 3)(c);
                c.connections.max_connections = case.max_connections;
                c.connections.max_connections_per_client = case.per_client;
            })
            .await;
            // Eight connections, each served once and then idle.
            let mut idle = Vec::new();
            for _ in 0..8 {
                let mut stream = transport.connect(edge.addr).await;
                assert_eq!(get_openapi(&mut stream).await, 200, "{what}");
                idle.push(stream);
            }
            // The ninth is closed at once, before any TLS or HTTP.
            let since = Instant::now();
            match transport.connect_from("127.0.0.1", edge.addr).await {
                Err(e) => println!(
                    "{what}: ninth refused in the handshake after {:?}: {e}",
                    since.elapsed()
                ),
                Ok(mut ninth) => {
                    let _ = ninth
                        .write_all(b"GET /openapi.json HTTP/1.1\r\nhost: edge\r\n\r\n")
                        .await;
                    let (elapsed, got) = until_closed(&mut ninth, since, REFUSAL_BOUND).await;
                    println!("{what}: ninth closed after {elapsed:?}");
                    assert!(got.is_empty(), "{what}: the ninth was answered");
                }
            }
            let stats = edge.connections.snapshot();
            assert_eq!(stats.refused(case.expected), 1, "{what}: {stats:?}");
            assert_eq!(stats.open, 8, "{what}: {stats:?}");
            if case.expected == RefusalReason::MaxConnectionsPerClient {
                // Another client address is not held back by this one.
                let mut other = transport.connect_from("127.0.0.2", edge.addr).await.unwrap();
                assert_eq!(get_openapi(&mut other).await, 200, "{what}: another client");
            }
            // The idle ones are closed by the idle timeout ...
            let since = Instant::now();
            for stream in &mut idle {
                until_closed(stream, since, BOUND).await;
            }
            println!("{what}: the idle connections closed after {:?}", since.elapsed());
            let deadline = Instant::now() + BOUND;
            while edge.connections.snapshot().open >= 8 {
                assert!(Instant::now() < deadline, "{what}: the slots were not given back");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // ... and a new client is served again.
            let mut fresh = transport.connect(edge.addr).await;
            assert_eq!(
                get_openapi(&mut fresh).await,
                200,
                "{what}: after the idle ones closed"
            );
            let stats = edge.connections.snapshot();
            assert!(stats.closed(CloseReason::IdleTimeout) >= 8, "{what}: {stats:?}");
            drop(fresh);
            edge.stop().await;
        }
        stores.cleanup().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_connection_caps_a_client_is_refused_at_once_and_served_again_once_idle_ones_close() {
    caps(Transport::Plain).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_connection_caps_an_https_client_is_refused_at_once_and_served_again_once_idle_ones_close()
{
    caps(Transport::tls()).await;
}
