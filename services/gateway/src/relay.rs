//! The edge's unary relay: an already encoded request message to one
//! backend over one mTLS HTTP/2 connection, its encoded reply back.
//!
//! Why not the backend's tonic channel for these calls: a relayed call
//! needs none of what sits between a tonic client and its HTTP/2 connection
//! (a buffer task with its own queue, tower layers, body and codec
//! adaptors), and skipping them cuts the edge's CPU per forwarded request by
//! about a quarter (`scripts/bench/edge.sh`). The call's head and its
//! message (one DATA frame that ends the stream) leave in one write, so the
//! backend is woken once per call and the edge makes one system call.
//! Server streams (exports) still use the backend's tonic channel.
//!
//! The reply is read as the gRPC over HTTP/2 protocol defines it
//! (`PROTOCOL-HTTP2.md`): a non-200 HTTP status without `grpc-status` maps
//! by the spec's table; a content type other than `application/grpc…` is
//! refused; a trailers-only reply is its status; otherwise exactly one
//! uncompressed length-prefixed message no larger than the limit, then
//! trailers whose `grpc-status` decides. Stream resets map by the spec's
//! RST_STREAM table; a connection that fails is dropped and the next call
//! dials a new one. A stream is opened only on a connection that has just
//! reported itself ready, so a connection found closed costs no request,
//! and nothing that may have reached the backend is ever sent twice.
//!
//! A failed call says whether it may have reached the backend
//! ([`Failure::sent`]): one that could not be dialed, or whose stream could
//! not be opened or was refused before processing, did not, and a caller
//! with another instance of the backend may send it there
//! ([`crate::forward::Backend::call`]).
//!
//! Every call has a deadline: the relay's timeout, or a gRPC client's
//! shorter one. The backend learns it from `grpc-timeout`; a call that has
//! no answer when it passes is dropped, which resets its stream (CANCEL),
//! and answered DEADLINE_EXCEEDED.
//!
//! Connections are probed with an HTTP/2 PING every
//! [`KEEPALIVE_INTERVAL`]; one unanswered for [`KEEPALIVE_TIMEOUT`] closes
//! the connection, so a vanished peer fails calls instead of hanging them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use bytes::{BufMut as _, Bytes, BytesMut};
use h2::client::SendRequest;
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, StatusCode};
use soma_mesh::MeshConnector;
use tonic::Code;

use crate::refusal::Refusal;

/// Time between HTTP/2 PINGs on a connection.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// Time a PING has to be answered before the connection is dropped.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);
/// The per-stream receive window: a reply up to this size needs no
/// WINDOW_UPDATE round trip.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
/// The per-connection receive window.
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
/// The largest header list accepted from a backend.
const MAX_HEADER_LIST: u32 = 64 * 1024;
/// Length of the gRPC message prefix: compressed flag and big-endian length.
const PREFIX: usize = 5;
/// Times a call refused before processing (REFUSED_STREAM) is sent again.
const MAX_REFUSED_RETRIES: u32 = 3;
/// The `grpc-timeout` header.
pub const GRPC_TIMEOUT: &str = "grpc-timeout";
/// The most digits a `grpc-timeout` value may have.
const TIMEOUT_DIGITS: usize = 8;
/// `grpc-timeout` units, finest first: nanoseconds per unit and the unit.
const TIMEOUT_UNITS: [(u128, u8); 6] = [
    (1, b'n'),
    (1_000, b'u'),
    (1_000_000, b'm'),
    (1_000_000_000, b'S'),
    (60_000_000_000, b'M'),
    (3_600_000_000_000, b'H'),
];

/// Unary calls to one backend.
#[derive(Debug)]
pub struct UnaryRelay {
    connector: MeshConnector,
    authority: Authority,
    max_reply_bytes: usize,
    /// The longest a call may wait for its answer.
    timeout: Duration,
    /// `timeout` as a `grpc-timeout` value, made once: most calls carry it.
    timeout_header: HeaderValue,
    /// The live connection, if one is up.
    live: Mutex<Option<Live>>,
    /// Numbers the connections, so that a caller forgets only the one it
    /// found closed, never a newer one another caller has just made.
    dialed: AtomicU64,
    /// Held while dialing, so that concurrent callers share one dial.
    dialing: tokio::sync::Mutex<()>,
}

impl UnaryRelay {
    /// A relay through `connector` (nothing is dialed before the first
    /// call) accepting replies of at most `max_reply_bytes`, each call
    /// waiting at most `timeout`.
    pub fn new(
        connector: MeshConnector,
        max_reply_bytes: usize,
        timeout: Duration,
    ) -> Result<Self, soma_mesh::MeshError> {
        let authority =
            Authority::try_from(connector.addr().as_str()).map_err(|e| connector.channel_error(e))?;
        Ok(Self {
            connector,
            authority,
            max_reply_bytes,
            timeout,
            timeout_header: grpc_timeout(timeout),
            live: Mutex::new(None),
            dialed: AtomicU64::new(0),
            dialing: tokio::sync::Mutex::new(()),
        })
    }

    /// Calls `path` with `metadata` (the call's custom headers) and the
    /// encoded request `message`; returns the encoded reply message. The
    /// call waits at most the relay's timeout, or `deadline` when that is
    /// shorter (a gRPC client's own); dialing counts against it.
    pub async fn call(
        &self,
        path: PathAndQuery,
        metadata: HeaderMap,
        message: Bytes,
        deadline: Option<Duration>,
    ) -> Result<Bytes, tonic::Status> {
        self.try_call(path, metadata, message, deadline)
            .await
            .map_err(|failure| failure.status)
    }

    /// [`UnaryRelay::call`], telling a failed call that never left the
    /// edge (no connection to the backend, or none ready for a stream: the
    /// backend cannot have seen it) from one that may have reached it.
    pub async fn try_call(
        &self,
        path: PathAndQuery,
        metadata: HeaderMap,
        message: Bytes,
        deadline: Option<Duration>,
    ) -> Result<Bytes, Failure> {
        let deadline = deadline.map_or(self.timeout, |d| d.min(self.timeout));
        if deadline.is_zero() {
            return Err(Failure::after_sending(deadline_exceeded(deadline)));
        }
        let framed = frame(&message).map_err(Failure::before_sending)?;
        // Dropping the exchange at the deadline drops the stream's handles,
        // and h2 resets a stream whose handles are all gone: the backend is
        // told to stop.
        let attempts = async {
            let mut refused = 0;
            loop {
                let request = self
                    .request(path.clone(), metadata.clone(), deadline)
                    .map_err(Failure::before_sending)?;
                match self.exchange(request, framed.clone()).await {
                    Ok(reply) => return Ok(reply),
                    // RFC 9113 §8.7: a stream refused with REFUSED_STREAM was
                    // not processed at all, so sending it again is safe (as
                    // gRPC clients do transparently). A new connection's
                    // first streams meet it when they outrun the server's
                    // SETTINGS_MAX_CONCURRENT_STREAMS.
                    Err(Attempt::Refused(status)) => {
                        refused += 1;
                        if refused > MAX_REFUSED_RETRIES {
                            // Refused before processing, every time.
                            return Err(Failure::before_sending(status));
                        }
                        tracing::debug!(peer = %self.connector.expected(), refused, "stream refused before processing; sent again");
                    }
                    Err(Attempt::Unsent(status)) => return Err(Failure::before_sending(status)),
                    Err(Attempt::Failed(status)) => return Err(Failure::after_sending(status)),
                }
            }
        };
        tokio::time::timeout(deadline, attempts)
            .await
            .unwrap_or_else(|_| Err(Failure::after_sending(deadline_exceeded(deadline))))
    }

    /// Sends one request on a ready connection and reads its reply.
    async fn exchange(&self, request: http::Request<()>, framed: Bytes) -> Result<Bytes, Attempt> {
        let mut live = self.ready().await.map_err(Attempt::Unsent)?;
        // A stream that could not be opened sent nothing.
        let (reply, mut stream) = live.sender.send_request(request, false).map_err(|e| {
            self.forget(live.number);
            Attempt::Unsent(not_reachable(&e.to_string()))
        })?;
        // Capacity comes from the fresh stream's window at once: the DATA
        // frame is queued with END_STREAM behind the head, nothing waits for
        // a grant, and the connection task writes both in one flush.
        if let Err(sent) = stream.send_data(framed, true) {
            // The stream closed between its head and its body: the
            // connection ended under it (h2 then reports only "inactive
            // stream"), or the server refused it. Its reply carries why; a
            // closed connection is UNAVAILABLE, as for any call it takes
            // down.
            self.forget(live.number);
            return Err(match reply.await {
                Err(fate) => Attempt::of(&fate),
                Ok(_) => Attempt::Failed(stream_status(&sent)),
            });
        }
        read_reply(reply, self.max_reply_bytes).await
    }

    /// The request head: POST, the backend's authority, gRPC headers, the
    /// deadline.
    fn request(
        &self,
        path: PathAndQuery,
        metadata: HeaderMap,
        deadline: Duration,
    ) -> Result<http::Request<()>, tonic::Status> {
        let uri = http::Uri::builder()
            .scheme(Scheme::HTTPS)
            .authority(self.authority.clone())
            .path_and_query(path)
            .build()
            .map_err(|e| failed(Code::Internal, format!("invalid request URI: {e}")))?;
        let mut request = http::Request::new(());
        *request.method_mut() = Method::POST;
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        *headers = metadata;
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
        let timeout = if deadline == self.timeout {
            self.timeout_header.clone()
        } else {
            grpc_timeout(deadline)
        };
        headers.insert(GRPC_TIMEOUT, timeout);
        headers.insert(
            header::USER_AGENT,
            HeaderValue::from_static(concat!("soma-gateway/", env!("CARGO_PKG_VERSION"))),
        );
        Ok(request)
    }

    /// A connection ready for one more stream: the live one, or, when there
    /// is none or it has closed, a new one. A request is opened only on a
    /// ready connection, so a closed one never swallows a request.
    async fn ready(&self) -> Result<Live, tonic::Status> {
        if let Some(live) = self.current() {
            match self.ready_or_forget(live).await {
                Ok(ready) => return Ok(ready),
                Err(e) => {
                    tracing::debug!(peer = %self.connector.expected(), error = %e, "backend connection closed; dialing anew");
                }
            }
        }
        let fresh = self.dial().await?;
        self.ready_or_forget(fresh)
            .await
            .map_err(|e| not_reachable(&e.to_string()))
    }

    /// `live` once it can take one more stream; a connection that has
    /// closed is forgotten.
    async fn ready_or_forget(&self, live: Live) -> Result<Live, h2::Error> {
        let Live { number, sender } = live;
        match sender.ready().await {
            Ok(sender) => Ok(Live { number, sender }),
            Err(e) => {
                self.forget(number);
                Err(e)
            }
        }
    }

    fn current(&self) -> Option<Live> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Forgets connection `number` if it is still the live one.
    fn forget(&self, number: u64) {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        if live.as_ref().is_some_and(|l| l.number == number) {
            *live = None;
        }
    }

    /// A new connection, unless another caller made one while this one
    /// waited for the dial lock (closed connections are forgotten before
    /// anyone dials, so one found here is new).
    async fn dial(&self) -> Result<Live, tonic::Status> {
        let _dialing = self.dialing.lock().await;
        if let Some(made) = self.current() {
            return Ok(made);
        }
        let io = self
            .connector
            .connect()
            .await
            .map_err(|e| not_reachable(&e.to_string()))?;
        let (sender, mut connection) = h2::client::Builder::new()
            .initial_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_header_list_size(MAX_HEADER_LIST)
            .enable_push(false)
            .handshake::<_, Bytes>(io)
            .await
            .map_err(|e| not_reachable(&e.to_string()))?;
        let ping = connection.ping_pong();
        tokio::spawn(drive(connection, ping, self.connector.expected().to_string()));
        let live = Live {
            number: self.dialed.fetch_add(1, Ordering::Relaxed),
            sender,
        };
        *self.live.lock().unwrap_or_else(PoisonError::into_inner) = Some(live.clone());
        Ok(live)
    }
}

/// A relayed call that failed: its status, and whether it may have reached
/// the backend.
#[derive(Debug)]
pub struct Failure {
    /// The call's answer.
    pub status: tonic::Status,
    /// `false` only when the call certainly never reached the backend (it
    /// could not be dialed, no stream could be opened, or every stream was
    /// refused before processing): sending it elsewhere cannot make it
    /// happen twice.
    pub sent: bool,
}

impl Failure {
    fn after_sending(status: tonic::Status) -> Self {
        Self { status, sent: true }
    }

    fn before_sending(status: tonic::Status) -> Self {
        Self { status, sent: false }
    }
}

/// One connection's request handle and its number.
#[derive(Clone, Debug)]
struct Live {
    number: u64,
    sender: SendRequest<Bytes>,
}

/// A failed call as the relay reports it, like a gRPC client: `code` and
/// `message`, no reason of its own (the edge answers with the code's).
fn failed(code: Code, message: impl Into<String>) -> tonic::Status {
    Refusal::without_reason(code, message).into_status()
}

/// The backend cannot be reached.
pub(crate) fn not_reachable(reason: &str) -> tonic::Status {
    failed(
        Code::Unavailable,
        format!("the service is not reachable: {reason}"),
    )
}

/// The backend did not answer within `deadline`.
fn deadline_exceeded(deadline: Duration) -> tonic::Status {
    failed(
        Code::DeadlineExceeded,
        format!(
            "the service did not answer within {}",
            humantime::format_duration(deadline)
        ),
    )
}

/// `deadline` as a `grpc-timeout` value (`PROTOCOL-HTTP2.md`: at most eight
/// digits and a unit): in the finest unit that holds it, rounded up, so the
/// backend's deadline never falls before the relay's own.
fn grpc_timeout(deadline: Duration) -> HeaderValue {
    let nanos = deadline.as_nanos();
    for (per_unit, unit) in TIMEOUT_UNITS {
        let value = nanos.div_ceil(per_unit);
        if value < 10u128.pow(TIMEOUT_DIGITS as u32) {
            let mut text = value.to_string().into_bytes();
            text.push(unit);
            // Digits and a letter are always a valid header value.
            if let Ok(v) = HeaderValue::from_bytes(&text) {
                return v;
            }
        }
    }
    HeaderValue::from_static("99999999H")
}

/// A `grpc-timeout` value: one to eight ASCII digits and a unit; `None`
/// for anything else.
pub fn parse_grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > TIMEOUT_DIGITS || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let value: u128 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    let (per_unit, _) = TIMEOUT_UNITS.iter().find(|(_, u)| *u == unit)?;
    let nanos = value * per_unit;
    let secs = u64::try_from(nanos / 1_000_000_000).ok()?;
    let subsec = u32::try_from(nanos % 1_000_000_000).ok()?;
    Some(Duration::new(secs, subsec))
}

/// Runs one connection until it ends, probing it with PINGs.
async fn drive<T>(connection: h2::client::Connection<T, Bytes>, mut ping: Option<h2::PingPong>, peer: String)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    tokio::pin!(connection);
    let ended = loop {
        tokio::select! {
            ended = &mut connection => break ended,
            () = tokio::time::sleep(KEEPALIVE_INTERVAL), if ping.is_some() => {}
        }
        let Some(ping) = ping.as_mut() else { continue };
        let pong = tokio::time::timeout(KEEPALIVE_TIMEOUT, ping.ping(h2::Ping::opaque()));
        tokio::select! {
            ended = &mut connection => break ended,
            answered = pong => match answered {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(peer, error = %e, "backend connection dropped: ping failed");
                    return;
                }
                Err(_) => {
                    tracing::warn!(peer, timeout_s = KEEPALIVE_TIMEOUT.as_secs(), "backend connection dropped: ping unanswered");
                    return;
                }
            },
        }
    };
    if let Err(e) = ended {
        tracing::debug!(peer, error = %e, "backend connection ended");
    }
}

/// `message` with its gRPC prefix: uncompressed, big-endian length.
fn frame(message: &[u8]) -> Result<Bytes, tonic::Status> {
    let len = u32::try_from(message.len())
        .map_err(|_| failed(Code::ResourceExhausted, "the request message is too large"))?;
    let mut framed = BytesMut::with_capacity(PREFIX + message.len());
    framed.put_u8(0);
    framed.put_u32(len);
    framed.put_slice(message);
    Ok(framed.freeze())
}

/// Reads a unary reply: status, headers, the one message, trailers.
async fn read_reply(reply: h2::client::ResponseFuture, max_reply_bytes: usize) -> Result<Bytes, Attempt> {
    let (head, body) = reply.await.map_err(|e| Attempt::of(&e))?.into_parts();
    Ok(read_message(&head, body, max_reply_bytes).await?)
}

/// The rest of a unary reply, once its head arrived.
async fn read_message(
    head: &http::response::Parts,
    mut body: h2::RecvStream,
    max_reply_bytes: usize,
) -> Result<Bytes, tonic::Status> {
    if head.status != StatusCode::OK {
        return Err(match tonic::Status::from_header_map(&head.headers) {
            Some(status) if status.code() != Code::Ok => status,
            _ => status_of_http(head.status),
        });
    }
    let content_type = head.headers.get(header::CONTENT_TYPE).map(HeaderValue::as_bytes);
    if !content_type.is_some_and(|ct| ct.starts_with(b"application/grpc")) {
        return Err(failed(
            Code::Internal,
            format!(
                "the backend answered content-type {:?}",
                content_type.map(String::from_utf8_lossy).unwrap_or_default()
            ),
        ));
    }
    if body.is_end_stream() {
        // Trailers-only: the status is in the headers.
        return Err(match tonic::Status::from_header_map(&head.headers) {
            Some(status) if status.code() != Code::Ok => status,
            Some(_) => failed(Code::Internal, "the backend's reply has no message"),
            None => failed(Code::Internal, "the backend's reply has no grpc-status"),
        });
    }

    let limit = max_reply_bytes.saturating_add(PREFIX);
    let mut chunks: Vec<Bytes> = Vec::with_capacity(1);
    let mut received = 0usize;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| stream_status(&e))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        received = received.saturating_add(chunk.len());
        if received > limit {
            // Dropping the stream resets it.
            return Err(failed(
                Code::ResourceExhausted,
                format!("the backend's reply exceeds {max_reply_bytes} bytes"),
            ));
        }
        chunks.push(chunk);
    }
    let trailers = body.trailers().await.map_err(|e| stream_status(&e))?;
    let status = trailers
        .as_ref()
        .and_then(tonic::Status::from_header_map)
        .ok_or_else(|| failed(Code::Internal, "the backend's reply has no grpc-status"))?;
    if status.code() != Code::Ok {
        return Err(status);
    }
    let data = match chunks.len() {
        1 => chunks.swap_remove(0),
        _ => {
            let mut all = BytesMut::with_capacity(received);
            for chunk in &chunks {
                all.extend_from_slice(chunk);
            }
            all.freeze()
        }
    };
    unframe(data)
}

/// How one attempt of a call failed.
#[derive(Debug)]
enum Attempt {
    /// The server refused the stream before processing it (REFUSED_STREAM).
    Refused(tonic::Status),
    /// Nothing was sent: no ready connection, or no stream opened.
    Unsent(tonic::Status),
    /// Anything else: the call's answer.
    Failed(tonic::Status),
}

impl Attempt {
    fn of(e: &h2::Error) -> Self {
        if e.reason() == Some(h2::Reason::REFUSED_STREAM) && !e.is_go_away() {
            Self::Refused(stream_status(e))
        } else {
            Self::Failed(stream_status(e))
        }
    }
}

impl From<tonic::Status> for Attempt {
    fn from(status: tonic::Status) -> Self {
        Self::Failed(status)
    }
}

/// The one message of a unary reply's body.
fn unframe(mut data: Bytes) -> Result<Bytes, tonic::Status> {
    if data.is_empty() {
        return Err(failed(Code::Internal, "the backend's reply has no message"));
    }
    if data.len() < PREFIX {
        return Err(failed(Code::Internal, "the backend's reply is truncated"));
    }
    match data[0] {
        0 => {}
        1 => {
            return Err(failed(
                Code::Internal,
                "the backend compressed its reply without an agreed encoding",
            ));
        }
        flag => {
            return Err(failed(
                Code::Internal,
                format!("the backend's reply has message flag {flag}"),
            ));
        }
    }
    let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
    let rest = data.len() - PREFIX;
    if rest < len {
        return Err(failed(Code::Internal, "the backend's reply is truncated"));
    }
    if rest > len {
        return Err(failed(
            Code::Internal,
            "the backend's unary reply holds more than one message",
        ));
    }
    Ok(data.split_off(PREFIX))
}

/// A reply whose HTTP status is not 200 and carries no `grpc-status`
/// (gRPC's "HTTP to gRPC status code mapping").
fn status_of_http(status: StatusCode) -> tonic::Status {
    let code = match status {
        StatusCode::BAD_REQUEST => Code::Internal,
        StatusCode::UNAUTHORIZED => Code::Unauthenticated,
        StatusCode::FORBIDDEN => Code::PermissionDenied,
        StatusCode::NOT_FOUND => Code::Unimplemented,
        StatusCode::TOO_MANY_REQUESTS
        | StatusCode::BAD_GATEWAY
        | StatusCode::SERVICE_UNAVAILABLE
        | StatusCode::GATEWAY_TIMEOUT => Code::Unavailable,
        _ => Code::Unknown,
    };
    failed(code, format!("the backend answered HTTP {}", status.as_u16()))
}

/// An HTTP/2 failure of one call (gRPC's RST_STREAM mapping; a failed or
/// closing connection is UNAVAILABLE).
fn stream_status(e: &h2::Error) -> tonic::Status {
    let code = if e.is_io() || e.is_go_away() {
        Code::Unavailable
    } else {
        match e.reason() {
            Some(h2::Reason::REFUSED_STREAM) => Code::Unavailable,
            Some(h2::Reason::CANCEL) => Code::Cancelled,
            Some(h2::Reason::ENHANCE_YOUR_CALM) => Code::ResourceExhausted,
            Some(h2::Reason::INADEQUATE_SECURITY) => Code::PermissionDenied,
            _ => Code::Internal,
        }
    };
    failed(code, format!("the backend's stream failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(flag: u8, len: u32, payload: &[u8]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(flag);
        b.put_u32(len);
        b.put_slice(payload);
        b.freeze()
    }

    #[test]
    fn a_message_round_trips_through_its_prefix() {
        let framed = frame(b"hello").unwrap();
        assert_eq!(&framed[..], b"\x00\x00\x00\x00\x05hello");
        assert_eq!(unframe(framed).unwrap(), Bytes::from_static(b"hello"));
        assert_eq!(unframe(frame(b"").unwrap()).unwrap(), Bytes::new());
    }

    #[test]
    fn deadlines_are_sent_in_the_finest_unit_that_holds_them_rounded_up() {
        let cases: [(Duration, &str); 9] = [
            (Duration::from_nanos(1), "1n"),
            (Duration::from_nanos(99_999_999), "99999999n"),
            (Duration::from_nanos(100_000_000), "100000u"),
            (Duration::from_nanos(100_000_001), "100001u"),
            (Duration::from_millis(250), "250000u"),
            (Duration::from_secs(15), "15000000u"),
            (Duration::from_secs(3600), "3600000m"),
            (Duration::from_secs(100_000_000 * 60), "1666667H"),
            (Duration::MAX, "99999999H"),
        ];
        for (deadline, expected) in cases {
            assert_eq!(grpc_timeout(deadline), expected, "{deadline:?}");
            // What is sent reads back as no shorter than the deadline (the
            // largest value aside, which caps it).
            let back = parse_grpc_timeout(grpc_timeout(deadline).as_bytes()).unwrap();
            if deadline != Duration::MAX {
                assert!(back >= deadline, "{deadline:?} came back as {back:?}");
            }
        }
    }

    #[test]
    fn grpc_timeout_values_parse_exactly_as_the_protocol_writes_them() {
        let good: [(&str, Duration); 8] = [
            ("0n", Duration::ZERO),
            ("1n", Duration::from_nanos(1)),
            ("250u", Duration::from_micros(250)),
            ("100m", Duration::from_millis(100)),
            ("00000010S", Duration::from_secs(10)),
            ("2M", Duration::from_secs(120)),
            ("1H", Duration::from_secs(3600)),
            ("99999999H", Duration::from_secs(99_999_999 * 3600)),
        ];
        for (text, expected) in good {
            assert_eq!(parse_grpc_timeout(text.as_bytes()), Some(expected), "{text}");
        }
        for bad in [
            "",
            "S",
            "10",
            "123456789m",
            "-1S",
            "+1S",
            "1.5S",
            "1s",
            "1 S",
            " 1S",
            "1SS",
            "1x",
            "١S",
            "1h",
        ] {
            assert_eq!(parse_grpc_timeout(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn malformed_reply_bodies_are_internal_with_their_reason() {
        struct Case {
            name: &'static str,
            body: Bytes,
            message: &'static str,
        }
        let cases = [
            Case {
                name: "empty body",
                body: Bytes::new(),
                message: "no message",
            },
            Case {
                name: "short prefix",
                body: Bytes::from_static(b"\x00\x00\x00"),
                message: "truncated",
            },
            Case {
                name: "length beyond the body",
                body: framed(0, 10, b"abc"),
                message: "truncated",
            },
            Case {
                name: "two messages",
                body: {
                    let mut two = BytesMut::from(&framed(0, 1, b"a")[..]);
                    two.extend_from_slice(&framed(0, 1, b"b"));
                    two.freeze()
                },
                message: "more than one message",
            },
            Case {
                name: "compressed without an encoding",
                body: framed(1, 1, b"a"),
                message: "compressed",
            },
            Case {
                name: "unknown flag",
                body: framed(7, 1, b"a"),
                message: "flag 7",
            },
        ];
        for case in cases {
            let status = unframe(case.body).expect_err(case.name);
            assert_eq!(status.code(), Code::Internal, "{}", case.name);
            assert!(
                status.message().contains(case.message),
                "{}: {}",
                case.name,
                status.message()
            );
        }
    }

    #[test]
    fn http_statuses_map_by_the_grpc_table() {
        for (http, code) in [
            (400, Code::Internal),
            (401, Code::Unauthenticated),
            (403, Code::PermissionDenied),
            (404, Code::Unimplemented),
            (429, Code::Unavailable),
            (502, Code::Unavailable),
            (503, Code::Unavailable),
            (504, Code::Unavailable),
            (500, Code::Unknown),
            (301, Code::Unknown),
        ] {
            let status = status_of_http(StatusCode::from_u16(http).unwrap());
            assert_eq!(status.code(), code, "HTTP {http}");
        }
    }

    #[test]
    fn stream_resets_map_by_the_grpc_table() {
        for (reason, code) in [
            (h2::Reason::NO_ERROR, Code::Internal),
            (h2::Reason::PROTOCOL_ERROR, Code::Internal),
            (h2::Reason::INTERNAL_ERROR, Code::Internal),
            (h2::Reason::FLOW_CONTROL_ERROR, Code::Internal),
            (h2::Reason::REFUSED_STREAM, Code::Unavailable),
            (h2::Reason::CANCEL, Code::Cancelled),
            (h2::Reason::ENHANCE_YOUR_CALM, Code::ResourceExhausted),
            (h2::Reason::INADEQUATE_SECURITY, Code::PermissionDenied),
        ] {
            assert_eq!(stream_status(&h2::Error::from(reason)).code(), code, "{reason:?}");
        }
    }
}
