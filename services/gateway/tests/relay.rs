//! The edge's unary relay (`soma_gateway::relay`) against a real HTTP/2
//! server over SPIFFE mTLS whose every path answers in one way the gRPC
//! protocol allows or forbids: each reply must come back as the exact gRPC
//! status the protocol gives it. Then the connection's life: one connection
//! for many concurrent calls, a backend that goes away and comes back on the
//! same port, and a server with the wrong SPIFFE ID.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::{BufMut as _, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, StatusCode};
use soma_gateway::relay::UnaryRelay;
use soma_identity::SvidStore;
use soma_mesh::MeshConnector;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tonic::Code;

use soma_testing::Ca;

/// Replies larger than this are refused by the relay under test.
const MAX_REPLY: usize = 1024;

/// A real mTLS HTTP/2 server; each path answers as its name says.
struct Backend {
    addr: SocketAddr,
    /// TCP connections accepted so far.
    connections: Arc<AtomicUsize>,
    /// What each `Hang` call saw: its `grpc-timeout` and how its stream ended.
    hung: Hung,
    tasks: JoinSet<()>,
    /// Yields `None` once every connection task has ended: each holds a
    /// sender, and the accept task holds the first one.
    open: tokio::sync::mpsc::Receiver<()>,
}

type Hung = Arc<std::sync::Mutex<Vec<(String, Option<h2::Reason>)>>>;

impl Backend {
    async fn start(store: Arc<SvidStore>, listener: TcpListener) -> Self {
        Self::start_with(store, listener, None).await
    }

    /// A backend that lets each connection open at most `max_streams`
    /// streams at once (`SETTINGS_MAX_CONCURRENT_STREAMS`), refusing the
    /// others with REFUSED_STREAM.
    async fn start_with(store: Arc<SvidStore>, listener: TcpListener, max_streams: Option<u32>) -> Self {
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(soma_identity::server_config(store).unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&connections);
        let hung = Hung::default();
        let seen = Arc::clone(&hung);
        let (alive, open) = tokio::sync::mpsc::channel::<()>(1);
        let mut tasks = JoinSet::new();
        tasks.spawn(async move {
            let mut conns = JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                counted.fetch_add(1, Ordering::SeqCst);
                let acceptor = acceptor.clone();
                let seen = Arc::clone(&seen);
                let alive = alive.clone();
                conns.spawn(async move {
                    // Dropped with this task: when the connection is gone.
                    let _alive = alive;
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut builder = h2::server::Builder::new();
                    if let Some(max) = max_streams {
                        builder.max_concurrent_streams(max);
                    }
                    let Ok(mut h2) = builder.handshake(tls).await else {
                        return;
                    };
                    while let Some(Ok((request, respond))) = h2.accept().await {
                        tokio::spawn(answer(request, respond, Arc::clone(&seen)));
                    }
                });
            }
        });
        Self {
            addr,
            connections,
            hung,
            tasks,
            open,
        }
    }

    /// A server holding `path`'s SVID, on a port of its own.
    async fn start_as(ca: &Ca, path: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start(ca.store(path, Duration::from_secs(3600)), listener).await
    }

    /// Stops accepting and drops every connection, returning once the last
    /// connection task has ended (its socket closed), not after a guess.
    async fn stop(mut self) {
        // Ends the accept task, which drops the listener and its set of
        // connection tasks: that aborts them, and each ends on its next poll.
        self.tasks.shutdown().await;
        // The bound only turns a connection task that never ends into a
        // failure instead of a hang.
        let ended = tokio::time::timeout(Duration::from_secs(10), self.open.recv())
            .await
            .expect("a connection of the stopped backend is still open after 10 s");
        assert!(ended.is_none(), "nothing is ever sent on the liveness channel");
    }
}

fn grpc_frame(flag: u8, payload: &[u8]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(flag);
    b.put_u32(u32::try_from(payload.len()).unwrap());
    b.put_slice(payload);
    b.freeze()
}

fn grpc_head(status: StatusCode, content_type: &str) -> http::Response<()> {
    let mut response = http::Response::new(());
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_str(content_type).unwrap(),
    );
    response
}

fn trailers(status: &str, message: Option<&str>) -> HeaderMap {
    let mut t = HeaderMap::new();
    t.insert("grpc-status", HeaderValue::from_str(status).unwrap());
    if let Some(m) = message {
        t.insert("grpc-message", HeaderValue::from_str(m).unwrap());
    }
    t
}

/// The server side of one call: reads the request message, checks the
/// request's head, then answers as the path says.
async fn answer(
    request: http::Request<h2::RecvStream>,
    mut respond: h2::server::SendResponse<Bytes>,
    hung: Hung,
) {
    let (head, mut body) = request.into_parts();
    let mut received = BytesMut::new();
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
        received.extend_from_slice(&chunk);
    }
    let well_formed = head.method == http::Method::POST
        && head
            .headers
            .get("content-type")
            .is_some_and(|v| v == "application/grpc")
        && head.headers.get("te").is_some_and(|v| v == "trailers")
        // Every relayed call carries its deadline.
        && head.headers.get("grpc-timeout").is_some()
        && received.len() >= 5
        && received[0] == 0;
    let ok = grpc_head(StatusCode::OK, "application/grpc");
    let send = |respond: &mut h2::server::SendResponse<Bytes>, head: http::Response<()>, eos: bool| {
        respond.send_response(head, eos).unwrap()
    };
    match head.uri.path() {
        "/t.S/Echo" => {
            if !well_formed {
                let mut s = send(&mut respond, ok, false);
                s.send_trailers(trailers("3", Some("malformed request head")))
                    .unwrap();
                return;
            }
            // The request message, then the metadata value it carried.
            let mut reply = received[5..].to_vec();
            reply.extend_from_slice(b"|");
            reply.extend_from_slice(
                head.headers
                    .get("x-probe")
                    .map_or(&b""[..], HeaderValue::as_bytes),
            );
            let mut s = send(&mut respond, ok, false);
            s.send_data(grpc_frame(0, &reply), false).unwrap();
            s.send_trailers(trailers("0", None)).unwrap();
        }
        "/t.S/Slow" => {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut s = send(&mut respond, ok, false);
            s.send_data(grpc_frame(0, b"slow"), false).unwrap();
            s.send_trailers(trailers("0", None)).unwrap();
        }
        "/t.S/Chunked" => {
            let framed = grpc_frame(0, b"in three pieces");
            let mut s = send(&mut respond, ok, false);
            s.send_data(framed.slice(0..3), false).unwrap();
            s.send_data(framed.slice(3..9), false).unwrap();
            s.send_data(framed.slice(9..), false).unwrap();
            s.send_trailers(trailers("0", None)).unwrap();
        }
        "/t.S/TrailersOnly" => {
            let mut head = ok;
            head.headers_mut()
                .extend(trailers("5", Some("no%20such%20thing")));
            head.headers_mut()
                .insert("x-reason", HeaderValue::from_static("thing_not_found"));
            send(&mut respond, head, true);
        }
        "/t.S/TrailersOnlyOk" => {
            let mut head = ok;
            head.headers_mut().extend(trailers("0", None));
            send(&mut respond, head, true);
        }
        "/t.S/ErrorAfterMessage" => {
            let mut s = send(&mut respond, ok, false);
            s.send_data(grpc_frame(0, b"partial"), false).unwrap();
            s.send_trailers(trailers("14", Some("backend draining"))).unwrap();
        }
        "/t.S/Http503" => {
            send(
                &mut respond,
                grpc_head(StatusCode::SERVICE_UNAVAILABLE, "text/plain"),
                true,
            );
        }
        "/t.S/Http401" => {
            send(
                &mut respond,
                grpc_head(StatusCode::UNAUTHORIZED, "text/plain"),
                true,
            );
        }
        "/t.S/Html" => {
            let mut s = send(&mut respond, grpc_head(StatusCode::OK, "text/html"), false);
            s.send_data(Bytes::from_static(b"<html></html>"), true).unwrap();
        }
        "/t.S/TwoMessages" => {
            let mut s = send(&mut respond, ok, false);
            s.send_data(grpc_frame(0, b"one"), false).unwrap();
            s.send_data(grpc_frame(0, b"two"), false).unwrap();
            s.send_trailers(trailers("0", None)).unwrap();
        }
        "/t.S/Compressed" => {
            let mut s = send(&mut respond, ok, false);
            s.send_data(grpc_frame(1, b"gzip?"), false).unwrap();
            s.send_trailers(trailers("0", None)).unwrap();
        }
        "/t.S/Truncated" => {
            let mut s = send(&mut respond, ok, false);
            let framed = grpc_frame(0, b"cut short");
            s.send_data(framed.slice(0..8), false).unwrap();
            s.send_trailers(trailers("0", None)).unwrap();
        }
        "/t.S/NoStatus" => {
            let mut s = send(&mut respond, ok, false);
            s.send_data(grpc_frame(0, b"fine?"), false).unwrap();
            let mut t = HeaderMap::new();
            t.insert("x-other", HeaderValue::from_static("1"));
            s.send_trailers(t).unwrap();
        }
        "/t.S/NoTrailers" => {
            let mut s = send(&mut respond, ok, false);
            s.send_data(grpc_frame(0, b"fine?"), true).unwrap();
        }
        "/t.S/Big" => {
            let mut s = send(&mut respond, ok, false);
            s.send_data(grpc_frame(0, &vec![7u8; MAX_REPLY + 1]), false)
                .unwrap();
            s.send_trailers(trailers("0", None)).unwrap();
        }
        "/t.S/AtLimit" => {
            let mut s = send(&mut respond, ok, false);
            s.send_data(grpc_frame(0, &vec![7u8; MAX_REPLY]), false).unwrap();
            s.send_trailers(trailers("0", None)).unwrap();
        }
        "/t.S/Hang" => {
            // Never answers: waits for the caller to give the call up.
            let timeout = head
                .headers
                .get("grpc-timeout")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            let ended = std::future::poll_fn(|cx| respond.poll_reset(cx)).await.ok();
            hung.lock().unwrap().push((timeout, ended));
        }
        "/t.S/Refused" => respond.send_reset(h2::Reason::REFUSED_STREAM),
        "/t.S/Calm" => respond.send_reset(h2::Reason::ENHANCE_YOUR_CALM),
        "/t.S/Cancel" => respond.send_reset(h2::Reason::CANCEL),
        "/t.S/ProtocolError" => respond.send_reset(h2::Reason::PROTOCOL_ERROR),
        _ => {
            let mut head = ok;
            head.headers_mut().extend(trailers("12", Some("unknown path")));
            send(&mut respond, head, true);
        }
    }
}

fn relay(ca: &Ca, addr: SocketAddr, expected: &str) -> UnaryRelay {
    relay_with_timeout(ca, addr, expected, Duration::from_secs(30))
}

fn relay_with_timeout(ca: &Ca, addr: SocketAddr, expected: &str, timeout: Duration) -> UnaryRelay {
    let store = ca.store("/svc/gateway", Duration::from_secs(3600));
    let connector = MeshConnector::new(store, addr, ca.id(expected)).unwrap();
    UnaryRelay::new(connector, MAX_REPLY, timeout).unwrap()
}

async fn call(relay: &UnaryRelay, method: &str, message: &'static [u8]) -> Result<Bytes, tonic::Status> {
    call_within(relay, method, message, None).await
}

async fn call_within(
    relay: &UnaryRelay,
    method: &str,
    message: &'static [u8],
    deadline: Option<Duration>,
) -> Result<Bytes, tonic::Status> {
    let mut metadata = HeaderMap::new();
    metadata.insert("x-probe", HeaderValue::from_static("probe-1"));
    relay
        .call(
            format!("/t.S/{method}").parse().unwrap(),
            metadata,
            Bytes::from_static(message),
            deadline,
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reply_shape_comes_back_as_the_status_the_grpc_protocol_gives_it() {
    let ca = Ca::new();
    let backend = Backend::start_as(&ca, "/svc/analytics").await;
    let relay = relay(&ca, backend.addr, "/svc/analytics");

    // Good replies: the message, whole, however it was split into frames.
    assert_eq!(
        call(&relay, "Echo", b"ping").await.unwrap(),
        Bytes::from_static(b"ping|probe-1")
    );
    assert_eq!(
        call(&relay, "Echo", b"").await.unwrap(),
        Bytes::from_static(b"|probe-1")
    );
    assert_eq!(
        call(&relay, "Chunked", b"").await.unwrap(),
        Bytes::from_static(b"in three pieces")
    );
    assert_eq!(call(&relay, "AtLimit", b"").await.unwrap().len(), MAX_REPLY);

    struct Case {
        method: &'static str,
        code: Code,
        message: &'static str,
    }
    let cases = [
        Case {
            method: "TrailersOnly",
            code: Code::NotFound,
            message: "no such thing",
        },
        Case {
            method: "TrailersOnlyOk",
            code: Code::Internal,
            message: "no message",
        },
        Case {
            method: "ErrorAfterMessage",
            code: Code::Unavailable,
            message: "backend draining",
        },
        Case {
            method: "Http503",
            code: Code::Unavailable,
            message: "HTTP 503",
        },
        Case {
            method: "Http401",
            code: Code::Unauthenticated,
            message: "HTTP 401",
        },
        Case {
            method: "Html",
            code: Code::Internal,
            message: "text/html",
        },
        Case {
            method: "TwoMessages",
            code: Code::Internal,
            message: "more than one message",
        },
        Case {
            method: "Compressed",
            code: Code::Internal,
            message: "compressed",
        },
        Case {
            method: "Truncated",
            code: Code::Internal,
            message: "truncated",
        },
        Case {
            method: "NoStatus",
            code: Code::Internal,
            message: "no grpc-status",
        },
        Case {
            method: "NoTrailers",
            code: Code::Internal,
            message: "no grpc-status",
        },
        Case {
            method: "Big",
            code: Code::ResourceExhausted,
            message: "exceeds 1024 bytes",
        },
        Case {
            method: "Refused",
            code: Code::Unavailable,
            message: "stream",
        },
        Case {
            method: "Calm",
            code: Code::ResourceExhausted,
            message: "stream",
        },
        Case {
            method: "Cancel",
            code: Code::Cancelled,
            message: "stream",
        },
        Case {
            method: "ProtocolError",
            code: Code::Internal,
            message: "stream",
        },
        Case {
            method: "Unknown",
            code: Code::Unimplemented,
            message: "unknown path",
        },
    ];
    for case in cases {
        let status = call(&relay, case.method, b"x").await.expect_err(case.method);
        assert_eq!(status.code(), case.code, "{}: {status:?}", case.method);
        assert!(
            status.message().contains(case.message),
            "{}: {:?} lacks {:?}",
            case.method,
            status.message(),
            case.message
        );
    }
    // The trailers-only status keeps the backend's metadata (the edge reads
    // its reason from there).
    let status = call(&relay, "TrailersOnly", b"x").await.unwrap_err();
    assert_eq!(
        status.metadata().get("x-reason").map(|v| v.to_str().unwrap()),
        Some("thing_not_found")
    );
    // Every call, good or refused, went over the one connection.
    assert_eq!(
        call(&relay, "Echo", b"still").await.unwrap(),
        Bytes::from_static(b"still|probe-1")
    );
    assert_eq!(backend.connections.load(Ordering::SeqCst), 1);
    backend.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_calls_share_one_connection_and_a_restarted_backend_is_dialed_again() {
    let ca = Ca::new();
    let backend_store = ca.store("/svc/analytics", Duration::from_secs(3600));
    let backend = Backend::start(
        Arc::clone(&backend_store),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
    )
    .await;
    let addr = backend.addr;
    let relay = Arc::new(relay(&ca, addr, "/svc/analytics"));

    // 200 calls at once, some slow, before any connection exists: one dial.
    let mut calls = JoinSet::new();
    for i in 0..200 {
        let relay = Arc::clone(&relay);
        calls.spawn(async move {
            let method = if i % 10 == 0 { "Slow" } else { "Echo" };
            (method, call(&relay, method, b"c").await)
        });
    }
    while let Some(joined) = calls.join_next().await {
        let (method, reply) = joined.unwrap();
        let expected: &[u8] = if method == "Slow" { b"slow" } else { b"c|probe-1" };
        assert_eq!(reply.unwrap(), Bytes::from_static(expected), "{method}");
    }
    assert_eq!(backend.connections.load(Ordering::SeqCst), 1);

    // Gone: calls fail as UNAVAILABLE, promptly, and nothing hangs.
    backend.stop().await;
    let status = tokio::time::timeout(Duration::from_secs(10), call(&relay, "Echo", b"down"))
        .await
        .expect("a call to a stopped backend returns")
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    let status = call(&relay, "Echo", b"down").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("not reachable"), "{status:?}");

    // Back on the same port: the next call dials it.
    let listener = TcpListener::bind(addr).await.unwrap();
    let backend = Backend::start(backend_store, listener).await;
    assert_eq!(
        call(&relay, "Echo", b"back").await.unwrap(),
        Bytes::from_static(b"back|probe-1")
    );
    assert_eq!(backend.connections.load(Ordering::SeqCst), 1);
    backend.stop().await;
}

/// A new connection's first streams can outrun the server's
/// SETTINGS_MAX_CONCURRENT_STREAMS, and the server refuses the excess with
/// REFUSED_STREAM before processing them: the relay sends those again
/// (RFC 9113 §8.7), so every call succeeds. (It used to answer them
/// UNAVAILABLE: the edge returned 503 under a burst.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_refused_before_processing_are_sent_again() {
    let ca = Ca::new();
    let backend = Backend::start_with(
        ca.store("/svc/analytics", Duration::from_secs(3600)),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        Some(2),
    )
    .await;
    for round in 0..5 {
        // A fresh relay: the burst meets a connection whose SETTINGS the
        // client has not read yet.
        let relay = Arc::new(relay(&ca, backend.addr, "/svc/analytics"));
        let mut calls = JoinSet::new();
        for _ in 0..40 {
            let relay = Arc::clone(&relay);
            calls.spawn(async move { call(&relay, "Echo", b"burst").await });
        }
        while let Some(joined) = calls.join_next().await {
            assert_eq!(
                joined.unwrap().map_err(|s| (s.code(), s.message().to_owned())),
                Ok(Bytes::from_static(b"burst|probe-1")),
                "round {round}"
            );
        }
    }
    backend.stop().await;
}

/// A backend that goes away at any moment around a call, between its head
/// and its body included: the call fails UNAVAILABLE (its connection
/// ended), never INTERNAL. (h2 reports a stream closed by the end of its
/// connection between `send_request` and `send_data` only as "inactive
/// stream"; the relay used to answer that INTERNAL.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_lost_around_a_call_is_unavailable_whatever_the_moment() {
    let ca = Ca::new();
    let store = ca.store("/svc/analytics", Duration::from_secs(3600));
    let mut failed = 0;
    for round in 0..300 {
        let backend = Backend::start(
            Arc::clone(&store),
            TcpListener::bind("127.0.0.1:0").await.unwrap(),
        )
        .await;
        let relay = relay(&ca, backend.addr, "/svc/analytics");
        call(&relay, "Echo", b"warm").await.unwrap();
        let ((), reply) = tokio::join!(backend.stop(), call(&relay, "Echo", b"racing"));
        if let Err(status) = reply {
            failed += 1;
            assert_eq!(status.code(), Code::Unavailable, "round {round}: {status:?}");
        }
    }
    // The race was run: most calls met a closing connection.
    assert!(failed > 0, "no call met the closing connection in 300 rounds");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_another_spiffe_id_gets_no_request() {
    let ca = Ca::new();
    // The server is a valid SVID of the trust domain, but not Analytics.
    let backend = Backend::start_as(&ca, "/svc/tool-registry").await;
    let relay = relay(&ca, backend.addr, "/svc/analytics");
    let status = call(&relay, "Echo", b"secret").await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.message().contains("not reachable"), "{status:?}");
    backend.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_past_its_deadline_is_reset_and_answered_deadline_exceeded() {
    let ca = Ca::new();
    let backend = Backend::start_as(&ca, "/svc/analytics").await;
    // Each call below ends by its deadline; the outer bound only keeps a
    // broken relay from hanging the suite.
    async fn bounded<F: Future>(call: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(20), call)
            .await
            .expect("the call ended by its deadline")
    }

    // The relay's own timeout, sent as grpc-timeout and enforced.
    let short = relay_with_timeout(&ca, backend.addr, "/svc/analytics", Duration::from_millis(200));
    let status = bounded(call(&short, "Hang", b"x")).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(status.message(), "the service did not answer within 200ms");

    // A client's shorter deadline wins over the relay's timeout; a longer
    // one does not stretch it.
    let long = relay(&ca, backend.addr, "/svc/analytics");
    let status = bounded(call_within(&long, "Hang", b"x", Some(Duration::from_millis(300))))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert_eq!(status.message(), "the service did not answer within 300ms");
    let status = bounded(call_within(&short, "Hang", b"x", Some(Duration::from_secs(60))))
        .await
        .unwrap_err();
    assert_eq!(status.message(), "the service did not answer within 200ms");
    // A deadline already spent sends nothing.
    let status = call_within(&long, "Hang", b"x", Some(Duration::ZERO))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");

    // The backend was told each deadline, and each abandoned stream was
    // reset with CANCEL.
    let mut seen = Vec::new();
    for _ in 0..200 {
        seen = backend.hung.lock().unwrap().clone();
        if seen.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    seen.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        seen,
        vec![
            ("200000u".to_owned(), Some(h2::Reason::CANCEL)),
            ("200000u".to_owned(), Some(h2::Reason::CANCEL)),
            ("300000u".to_owned(), Some(h2::Reason::CANCEL)),
        ]
    );

    // The connection outlives its abandoned streams: the next call on it
    // is answered.
    assert_eq!(
        bounded(call(&long, "Echo", b"after")).await.unwrap(),
        Bytes::from_static(b"after|probe-1")
    );
    assert_eq!(
        backend.connections.load(Ordering::SeqCst),
        2,
        "one connection per relay"
    );
    backend.stop().await;
}
