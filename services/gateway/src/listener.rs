//! The edge's listener: one accept loop for plaintext and TLS, with the
//! connection hygiene nginx and Envoy apply at a public edge.
//!
//! What it owns, in the order a connection meets it:
//! 1. **Caps at accept.** A connection beyond `max_connections` (global) or
//!    `max_connections_per_client` (per peer IP address) is closed at once,
//!    before any TLS or HTTP work, counted and logged (rate-limited) with its
//!    reason. Without the caps, idle TCP connections exhaust the gateway's
//!    file descriptors and legitimate clients time out.
//! 2. **TLS** (when configured): the rustls handshake within 10 s, ALPN
//!    `h2` then `http/1.1`. Plaintext skips it; everything after is shared.
//! 3. **Timeouts** per connection, kept by a watchdog beside the hyper
//!    connection: a request head must be complete within
//!    `header_read_timeout` (from the connection's start, or on an HTTP/1.1
//!    keep-alive connection from the first byte of the next request), a
//!    request body whole within `body_read_timeout` of its head
//!    ([`DeadlineBody`]), and a connection with no request in progress is
//!    closed after `idle_timeout` (HTTP/1.1 between requests; HTTP/2 with no
//!    open stream — hyper has no HTTP/2 idle timeout, so open streams are
//!    counted here), and a connection whose peer takes nothing the edge
//!    writes is closed after `send_timeout` (counted from the first write
//!    the socket refused; any write that makes progress resets it, so a
//!    slow reader is served and a peer that stopped reading is not kept).
//!    Each closure is counted by reason.
//! 4. **Protocol limits** hyper enforces: HTTP/1.1 header count up to
//!    1,000 fields, the ceiling of `max_headers` (the edge refuses a count above
//!    `max_headers` itself, with its reason), HTTP/2 concurrent streams and
//!    header list size, HTTP/2 PING liveness.
//! 5. **Graceful shutdown**: on the stop signal the loop stops accepting,
//!    every connection is asked to finish (HTTP/1.1 closes after the
//!    response in flight, HTTP/2 sends GOAWAY), and [`Listener::serve`]
//!    returns when the last one has ended.
//!
//! What it deliberately does not do: answer a request. A body that misses
//! its deadline fails with [`RequestBodyError::TimedOut`]; the edge turns
//! that into its 408 `body_timeout` reply ([`is_body_timeout`]).

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Version};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt as _;

use crate::config::EdgeConnections;

/// How long a TLS handshake may take before the connection is dropped.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the loop pauses after a failed accept (EMFILE, ENFILE, ENOBUFS):
/// retrying at once would spin a core while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);
/// How long a connection asked to close gracefully (idle, or after a body
/// timeout) may take to do so before it is dropped: a peer that does not
/// read its last response must not keep the connection.
const CLOSE_GRACE: Duration = Duration::from_secs(5);
/// HTTP/2 PING interval and the wait for its ACK: a peer that vanished
/// without a FIN (network gone, process frozen) is detected even while a
/// stream is open.
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(10);
/// The HPACK overhead RFC 9113 §6.5.2 counts per header field. HTTP/2's
/// `SETTINGS_MAX_HEADER_LIST_SIZE` includes it; the edge's own 431 check
/// (`limits.max_header_bytes`) counts names and values only, so the
/// protocol limit leaves room for it and the edge answers with its reason.
const H2_FIELD_OVERHEAD: usize = 32;
/// At most one log line per this interval per reason under a flood.
const LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Why a connection was refused at accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RefusalReason {
    /// The edge already holds `max_connections`.
    MaxConnections,
    /// The peer's address already holds `max_connections_per_client`.
    MaxConnectionsPerClient,
}

impl RefusalReason {
    /// Every reason, in metric order.
    pub const ALL: [Self; 2] = [Self::MaxConnections, Self::MaxConnectionsPerClient];

    /// The machine-readable reason (metric label, log field).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MaxConnections => "max_connections",
            Self::MaxConnectionsPerClient => "max_connections_per_client",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Why the edge closed a connection it had accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseReason {
    /// A request head was not complete within `header_read_timeout`.
    HeaderTimeout,
    /// A request body was not whole within `body_read_timeout`.
    BodyTimeout,
    /// No request was in progress for `idle_timeout`.
    IdleTimeout,
    /// The peer took nothing the edge wrote for `send_timeout`.
    SendTimeout,
}

impl CloseReason {
    /// Every reason, in metric order.
    pub const ALL: [Self; 4] = [
        Self::HeaderTimeout,
        Self::BodyTimeout,
        Self::IdleTimeout,
        Self::SendTimeout,
    ];

    /// The machine-readable reason (metric label, log field).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HeaderTimeout => "header_timeout",
            Self::BodyTimeout => "body_timeout",
            Self::IdleTimeout => "idle_timeout",
            Self::SendTimeout => "send_timeout",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The edge's connection counters. Clone = shared; every update is one
/// relaxed atomic, and only refusals and closures (never a served request)
/// take a lock, for their rate-limited log line.
#[derive(Clone, Debug, Default)]
pub struct ConnectionMetrics {
    inner: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    open: AtomicU64,
    accepted: AtomicU64,
    refused: [AtomicU64; RefusalReason::ALL.len()],
    closed: [AtomicU64; CloseReason::ALL.len()],
    refused_log: [LogGate; RefusalReason::ALL.len()],
    closed_log: [LogGate; CloseReason::ALL.len()],
    accept_error_log: LogGate,
}

/// A snapshot of [`ConnectionMetrics`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionStats {
    /// Connections open now (accepted and not yet closed).
    pub open: u64,
    /// Connections accepted under the caps since start.
    pub accepted: u64,
    refused: [u64; RefusalReason::ALL.len()],
    closed: [u64; CloseReason::ALL.len()],
}

impl ConnectionStats {
    /// Connections refused at accept for `reason` since start.
    pub fn refused(&self, reason: RefusalReason) -> u64 {
        self.refused[reason.index()]
    }

    /// Connections the edge closed for `reason` since start.
    pub fn closed(&self, reason: CloseReason) -> u64 {
        self.closed[reason.index()]
    }
}

impl ConnectionMetrics {
    /// The counters now.
    pub fn snapshot(&self) -> ConnectionStats {
        let c = &self.inner;
        ConnectionStats {
            open: c.open.load(Ordering::Relaxed),
            accepted: c.accepted.load(Ordering::Relaxed),
            refused: std::array::from_fn(|i| c.refused[i].load(Ordering::Relaxed)),
            closed: std::array::from_fn(|i| c.closed[i].load(Ordering::Relaxed)),
        }
    }

    /// The counters in the Prometheus text format, appended to `out`.
    pub fn render(&self, out: &mut String) {
        let s = self.snapshot();
        out.push_str("# HELP soma_edge_connections_open Connections the edge holds open.\n");
        out.push_str("# TYPE soma_edge_connections_open gauge\n");
        let _ = writeln!(out, "soma_edge_connections_open {}", s.open);
        out.push_str(
            "# HELP soma_edge_connections_refused_total Connections closed at accept by a cap, by reason.\n",
        );
        out.push_str("# TYPE soma_edge_connections_refused_total counter\n");
        for reason in RefusalReason::ALL {
            let _ = writeln!(
                out,
                "soma_edge_connections_refused_total{{reason=\"{}\"}} {}",
                reason.as_str(),
                s.refused(reason)
            );
        }
        out.push_str(
            "# HELP soma_edge_connections_closed_total Connections the edge closed on a timeout, by reason.\n",
        );
        out.push_str("# TYPE soma_edge_connections_closed_total counter\n");
        for reason in CloseReason::ALL {
            let _ = writeln!(
                out,
                "soma_edge_connections_closed_total{{reason=\"{}\"}} {}",
                reason.as_str(),
                s.closed(reason)
            );
        }
    }

    fn refused(&self, reason: RefusalReason, peer: SocketAddr) {
        let i = reason.index();
        self.inner.refused[i].fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = self.inner.refused_log[i].admit() {
            tracing::warn!(
                reason = reason.as_str(),
                %peer,
                suppressed,
                "edge connection refused at accept"
            );
        }
    }

    fn closed(&self, reason: CloseReason, peer: SocketAddr) {
        let i = reason.index();
        self.inner.closed[i].fetch_add(1, Ordering::Relaxed);
        if let Some(suppressed) = self.inner.closed_log[i].admit() {
            tracing::info!(
                reason = reason.as_str(),
                %peer,
                suppressed,
                "edge connection closed"
            );
        }
    }
}

impl soma_mesh::MetricsSource for ConnectionMetrics {
    fn render(&self, out: &mut String) {
        Self::render(self, out);
    }
}

/// Lets one log line through per [`LOG_INTERVAL`] and counts the ones it
/// held back, so that a flood costs one line a second, not one per event.
#[derive(Debug, Default)]
struct LogGate {
    next: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl LogGate {
    /// `Some(lines held back since the last one)` when a line may be
    /// written now.
    fn admit(&self) -> Option<u64> {
        let now = Instant::now();
        let mut next = lock(&self.next);
        match *next {
            Some(at) if now < at => {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                None
            }
            _ => {
                *next = Some(now + LOG_INTERVAL);
                Some(self.suppressed.swap(0, Ordering::Relaxed))
            }
        }
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked
/// (every critical section here is a few integer updates), so poisoning is
/// ignored rather than spread.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Open connections, in total and per peer address.
#[derive(Debug)]
struct Slots {
    max: usize,
    per_client: usize,
    held: Mutex<SlotCounts>,
    metrics: ConnectionMetrics,
}

#[derive(Debug, Default)]
struct SlotCounts {
    total: usize,
    clients: HashMap<IpAddr, usize>,
}

/// One accepted connection's place under the caps, given back on drop.
#[derive(Debug)]
struct Permit {
    slots: Arc<Slots>,
    ip: IpAddr,
}

impl Slots {
    fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, RefusalReason> {
        // An IPv4 client reached over a dual-stack socket is the same client.
        let ip = ip.to_canonical();
        let mut held = lock(&self.held);
        if held.total >= self.max {
            return Err(RefusalReason::MaxConnections);
        }
        let n = held.clients.entry(ip).or_insert(0);
        if *n >= self.per_client {
            return Err(RefusalReason::MaxConnectionsPerClient);
        }
        *n += 1;
        held.total += 1;
        drop(held);
        self.metrics.inner.open.fetch_add(1, Ordering::Relaxed);
        self.metrics.inner.accepted.fetch_add(1, Ordering::Relaxed);
        Ok(Permit {
            slots: Arc::clone(self),
            ip,
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let mut held = lock(&self.slots.held);
        held.total = held.total.saturating_sub(1);
        if let Some(n) = held.clients.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                held.clients.remove(&self.ip);
            }
        }
        drop(held);
        self.slots.metrics.inner.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The edge's bound listener and everything its connections obey.
#[derive(Debug)]
pub struct Listener {
    /// The bound socket.
    pub listener: TcpListener,
    /// `Some`: HTTPS; `None`: plaintext.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Timeouts and caps.
    pub settings: EdgeConnections,
    /// `limits.max_header_bytes`, which bounds HTTP/2 header lists too.
    pub max_header_bytes: usize,
    /// Where refusals and closures are counted.
    pub metrics: ConnectionMetrics,
}

impl Listener {
    /// Serves `router` until `shutdown` resolves, then stops accepting,
    /// asks every connection to finish what is in flight, and returns when
    /// the last one has closed.
    pub async fn serve(self, router: axum::Router, shutdown: impl Future<Output = ()> + Send + 'static) {
        let Self {
            listener,
            tls,
            settings,
            max_header_bytes,
            metrics,
        } = self;
        let builder = Arc::new(builder(&settings, max_header_bytes));
        let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
        let slots = Arc::new(Slots {
            max: settings.max_connections,
            per_client: settings.max_connections_per_client,
            held: Mutex::new(SlotCounts::default()),
            metrics: metrics.clone(),
        });
        // Graceful shutdown as mini-redis does it: the stop signal is a
        // watch every connection task holds, and each task holds a clone of
        // `done`; when the last clone is dropped, `all_done` yields `None`.
        let (stop_tx, stop_rx) = watch::channel(false);
        let (done, mut all_done) = mpsc::channel::<()>(1);
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        if let Some(suppressed) = metrics.inner.accept_error_log.admit() {
                            tracing::warn!(error = %e, suppressed, "edge accept failed; backing off");
                        }
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let permit = match slots.try_acquire(peer.ip()) {
                Ok(permit) => permit,
                Err(reason) => {
                    // Dropping the socket closes it: no byte read, no
                    // handshake, no task.
                    drop(tcp);
                    metrics.refused(reason, peer);
                    continue;
                }
            };
            // Small responses go out at once, not after Nagle's delay.
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(error = %e, "TCP_NODELAY not set on an edge connection");
            }
            let task = ConnectionTask {
                peer,
                settings,
                metrics: metrics.clone(),
                builder: Arc::clone(&builder),
                router: router.clone(),
                stop: stop_rx.clone(),
                _permit: permit,
                _done: done.clone(),
            };
            let acceptor = acceptor.clone();
            tokio::spawn(task.run(tcp, acceptor));
        }
        drop(listener);
        let _ = stop_tx.send(true);
        drop(done);
        let _ = all_done.recv().await;
    }
}

/// Header fields the HTTP/1.1 parser takes from one request head: the
/// ceiling of `connections.max_headers`. The edge refuses a head with more
/// than the configured count itself (431 `too_many_headers`, with its JSON
/// error and log line); only a head beyond this many fields is refused by
/// the parser (431 without a body), as one beyond hyper's read buffer is.
/// `max_headers` is validated at load to be at most this.
const HEAD_FIELDS_PARSED: usize = crate::config::MAX_HEADERS;

/// The HTTP/1.1 + HTTP/2 connection builder with the protocol limits.
fn builder(settings: &EdgeConnections, max_header_bytes: usize) -> Builder<TokioExecutor> {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .keep_alive(true)
        .max_headers(HEAD_FIELDS_PARSED)
        // The watchdog keeps the head deadline (hyper's own timer would also
        // cut idle keep-alive connections at the head timeout, and without
        // telling us why).
        .header_read_timeout(None);
    let header_list = max_header_bytes
        .saturating_add(H2_FIELD_OVERHEAD.saturating_mul(settings.max_headers))
        .min(u32::MAX as usize) as u32;
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(settings.max_concurrent_streams)
        .max_header_list_size(header_list)
        .keep_alive_interval(Some(H2_PING_INTERVAL))
        .keep_alive_timeout(H2_PING_TIMEOUT);
    builder
}

/// One accepted connection: everything its task needs.
struct ConnectionTask {
    peer: SocketAddr,
    settings: EdgeConnections,
    metrics: ConnectionMetrics,
    builder: Arc<Builder<TokioExecutor>>,
    router: axum::Router,
    stop: watch::Receiver<bool>,
    _permit: Permit,
    _done: mpsc::Sender<()>,
}

impl ConnectionTask {
    async fn run(self, tcp: TcpStream, acceptor: Option<tokio_rustls::TlsAcceptor>) {
        match acceptor {
            None => self.serve(tcp).await,
            Some(acceptor) => {
                let peer = self.peer;
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => self.serve(tls).await,
                    Ok(Err(e)) => tracing::info!(%peer, error = %e, "edge TLS handshake refused"),
                    Err(_) => tracing::info!(%peer, "edge TLS handshake timed out"),
                }
            }
        }
    }

    /// Serves HTTP on `io` (plaintext or decrypted TLS alike) with the
    /// watchdog beside it.
    async fn serve<I>(mut self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let peer = self.peer;
        let shared = Arc::new(Shared::new(self.settings, self.metrics.clone(), peer));
        let io = WatchedIo {
            inner: io,
            shared: Arc::clone(&shared),
        };
        let service = EdgeService {
            router: self.router.clone(),
            shared: Arc::clone(&shared),
        };
        // No upgrades: the edge has no WebSocket route, and an upgraded
        // stream would leave every timeout here behind.
        let mut conn = std::pin::pin!(self.builder.serve_connection(TokioIo::new(io), service));
        // Set once the connection was asked to close gracefully: the moment
        // it is dropped if it has not closed by then.
        let mut closing: Option<Instant> = None;
        let mut stopping = false;
        loop {
            let now = Instant::now();
            let verdict = shared.verdict(now);
            let mut wake = None;
            match verdict {
                Verdict::Wait(at) => wake = at,
                Verdict::Expired(reason @ (CloseReason::HeaderTimeout | CloseReason::SendTimeout)) => {
                    // A head that never completes gets no reply: the peer
                    // is not reading one (nginx and Envoy close likewise).
                    // A peer that takes no bytes cannot take a graceful
                    // close either: the connection is dropped at once.
                    self.metrics.closed(reason, peer);
                    return;
                }
                Verdict::Expired(reason) => {
                    if closing.is_none() {
                        self.metrics.closed(reason, peer);
                        conn.as_mut().graceful_shutdown();
                        closing = Some(now + CLOSE_GRACE);
                    }
                }
                Verdict::CloseAfterResponse => {
                    // Counted by the body when it timed out. HTTP/1.1 cannot
                    // resynchronise after an abandoned body: finish the
                    // response in flight, then close.
                    if closing.is_none() {
                        conn.as_mut().graceful_shutdown();
                        closing = Some(now + CLOSE_GRACE);
                    }
                }
            }
            if let Some(at) = closing {
                if now >= at {
                    tracing::debug!(%peer, "edge connection did not close in time; dropped");
                    return;
                }
                wake = Some(wake.map_or(at, |w| w.min(at)));
            }
            let changed = shared.changed.notified();
            tokio::select! {
                served = conn.as_mut() => {
                    if let Err(e) = served {
                        tracing::debug!(%peer, error = %e, "edge connection ended with an error");
                    }
                    return;
                }
                () = sleep_until_opt(wake) => {}
                () = changed => {}
                _ = self.stop.wait_for(|stop| *stop), if !stopping => {
                    stopping = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What the watchdog should do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// Nothing yet; look again at this instant (`None`: when told).
    Wait(Option<Instant>),
    /// A deadline passed.
    Expired(CloseReason),
    /// An HTTP/1.1 body timed out: close once the response is out.
    CloseAfterResponse,
}

/// One connection's state, shared by its IO, its service, its request
/// bodies and its watchdog.
#[derive(Debug)]
struct Shared {
    settings: EdgeConnections,
    metrics: ConnectionMetrics,
    peer: SocketAddr,
    state: Mutex<State>,
    /// Wakes the watchdog when a deadline may have moved earlier or a
    /// connection became idle.
    changed: Notify,
    /// Set while an HTTP/1.1 connection waits for its next request, so that
    /// the IO layer can note the first byte of it with one atomic load per
    /// read in the common case.
    awaiting_first_byte: AtomicBool,
    /// Set while the socket refuses what the edge writes (`State::
    /// write_blocked_since` holds since when), so that a write that goes
    /// through costs one atomic load in the common case.
    write_blocked: AtomicBool,
}

#[derive(Debug)]
struct State {
    started: Instant,
    http2: bool,
    requests: u64,
    active: usize,
    idle_since: Instant,
    head_started: Option<Instant>,
    close_after_response: bool,
    /// The first write the socket refused since the last that made
    /// progress: `send_timeout` runs from here.
    write_blocked_since: Option<Instant>,
}

impl Shared {
    fn new(settings: EdgeConnections, metrics: ConnectionMetrics, peer: SocketAddr) -> Self {
        let now = Instant::now();
        Self {
            settings,
            metrics,
            peer,
            state: Mutex::new(State {
                started: now,
                http2: false,
                requests: 0,
                active: 0,
                idle_since: now,
                head_started: None,
                close_after_response: false,
                write_blocked_since: None,
            }),
            changed: Notify::new(),
            awaiting_first_byte: AtomicBool::new(false),
            write_blocked: AtomicBool::new(false),
        }
    }

    fn verdict(&self, now: Instant) -> Verdict {
        let s = lock(&self.state);
        // A peer that takes nothing is closed whatever else is under way (a
        // response it does not read is what it holds); otherwise its
        // deadline is one more to wake for.
        let send_deadline = s
            .write_blocked_since
            .map(|since| since + self.settings.send_timeout);
        if send_deadline.is_some_and(|deadline| now >= deadline) {
            return Verdict::Expired(CloseReason::SendTimeout);
        }
        match self.read_verdict(&s, now) {
            Verdict::Wait(at) => Verdict::Wait(match (at, send_deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }),
            other => other,
        }
    }

    /// The verdict of the read side's deadlines (head, body, idleness).
    fn read_verdict(&self, s: &State, now: Instant) -> Verdict {
        if s.close_after_response && !s.http2 {
            return Verdict::CloseAfterResponse;
        }
        if s.active > 0 {
            // A request is in progress: its body has its own deadline, and
            // an HTTP/2 stream open for a long response keeps the
            // connection (that is not idleness).
            return Verdict::Wait(None);
        }
        let (deadline, reason) = if s.requests == 0 {
            // The first request head, from the connection's start: a
            // connection that never sends one is a slowloris at rate zero.
            (
                s.started + self.settings.header_read_timeout,
                CloseReason::HeaderTimeout,
            )
        } else if let Some(at) = s.head_started {
            (at + self.settings.header_read_timeout, CloseReason::HeaderTimeout)
        } else {
            (
                s.idle_since + self.settings.idle_timeout,
                CloseReason::IdleTimeout,
            )
        };
        if now >= deadline {
            Verdict::Expired(reason)
        } else {
            Verdict::Wait(Some(deadline))
        }
    }

    fn request_started(self: &Arc<Self>, version: Version) -> RequestGuard {
        let mut s = lock(&self.state);
        s.requests += 1;
        s.active += 1;
        s.http2 = version == Version::HTTP_2;
        s.head_started = None;
        self.awaiting_first_byte.store(false, Ordering::Relaxed);
        RequestGuard {
            shared: Arc::clone(self),
        }
    }

    fn request_finished(&self) {
        let mut s = lock(&self.state);
        s.active = s.active.saturating_sub(1);
        if s.active == 0 {
            s.idle_since = Instant::now();
            s.head_started = None;
            if !s.http2 {
                self.awaiting_first_byte.store(true, Ordering::Relaxed);
            }
            drop(s);
            self.changed.notify_one();
        }
    }

    /// The first byte of the next HTTP/1.1 request arrived: its head's
    /// clock starts now.
    fn first_byte(&self) {
        if self.awaiting_first_byte.swap(false, Ordering::Relaxed) {
            let mut s = lock(&self.state);
            if s.active == 0 && s.requests > 0 && s.head_started.is_none() {
                s.head_started = Some(Instant::now());
            }
            drop(s);
            self.changed.notify_one();
        }
    }

    /// A write the socket refused (`Pending`): the send clock starts, if
    /// it is not running already.
    fn write_refused(&self) {
        if !self.write_blocked.swap(true, Ordering::Relaxed) {
            lock(&self.state).write_blocked_since = Some(Instant::now());
            self.changed.notify_one();
        }
    }

    /// A write that made progress: the send clock stops.
    fn write_progressed(&self) {
        if self.write_blocked.swap(false, Ordering::Relaxed) {
            lock(&self.state).write_blocked_since = None;
            self.changed.notify_one();
        }
    }

    /// Notes what a write (or flush) of the socket came to.
    fn wrote<T>(&self, polled: &Poll<std::io::Result<T>>) {
        match polled {
            Poll::Pending => self.write_refused(),
            Poll::Ready(_) => {
                if self.write_blocked.load(Ordering::Relaxed) {
                    self.write_progressed();
                }
            }
        }
    }

    fn body_timed_out(&self) {
        self.metrics.closed(CloseReason::BodyTimeout, self.peer);
        lock(&self.state).close_after_response = true;
        self.changed.notify_one();
    }
}

/// A request in progress, from its head to the end of its response (or
/// until hyper drops it, when the peer resets the stream).
#[derive(Debug)]
struct RequestGuard {
    shared: Arc<Shared>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.shared.request_finished();
    }
}

/// The connection's IO, noting the first byte of each HTTP/1.1 request.
struct WatchedIo<I> {
    inner: I,
    shared: Arc<Shared>,
}

impl<I: AsyncRead + Unpin> AsyncRead for WatchedIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before && self.shared.awaiting_first_byte.load(Ordering::Relaxed) {
            self.shared.first_byte();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for WatchedIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.shared.wrote(&polled);
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.shared.wrote(&polled);
        polled
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.shared.wrote(&polled);
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The router behind one connection: each request is counted open until
/// its response body ends, and its body carries the body deadline.
#[derive(Clone)]
struct EdgeService {
    router: axum::Router,
    shared: Arc<Shared>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl hyper::service::Service<Request<Incoming>> for EdgeService {
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn call(&self, request: Request<Incoming>) -> Self::Future {
        let guard = self.shared.request_started(request.version());
        let deadline = Instant::now() + self.shared.settings.body_read_timeout;
        let shared = Arc::clone(&self.shared);
        let request = request.map(|body| DeadlineBody::new(body, deadline, shared));
        let router = self.router.clone();
        Box::pin(async move {
            let response = match router.oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            Ok(response.map(|inner| TrackedBody { inner, _guard: guard }))
        })
    }
}

/// A response body that holds its request open until it is finished or
/// dropped.
#[derive(Debug)]
pub struct TrackedBody {
    inner: axum::body::Body,
    _guard: RequestGuard,
}

impl Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestBodyError {
    /// The body was not whole within `body_read_timeout` of its head.
    #[error("the request body did not arrive within {}", humantime::format_duration(*.0))]
    TimedOut(Duration),
    /// The connection failed while the body was read.
    #[error("reading the request body: {0}")]
    Transport(#[source] hyper::Error),
}

/// Whether `err`, or any error in its `source()` chain, is a request body
/// that missed its deadline — so the edge can answer 408 `body_timeout`
/// whatever wrapped it on the way (axum, `http_body_util::Limited`).
pub fn is_body_timeout(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(err);
    while let Some(e) = next {
        if matches!(
            e.downcast_ref::<RequestBodyError>(),
            Some(RequestBodyError::TimedOut(_))
        ) {
            return true;
        }
        next = e.source();
    }
    false
}

/// A request body that fails with [`RequestBodyError::TimedOut`] once its
/// deadline has passed and it has not ended: a body sent slowly, or not at
/// all, holds a connection and a buffer only that long.
#[derive(Debug)]
pub struct DeadlineBody {
    inner: Incoming,
    deadline: Instant,
    /// Made on the first wait, so bodies that arrive at once (most) never
    /// touch the timer wheel.
    sleep: Option<Pin<Box<Sleep>>>,
    shared: Arc<Shared>,
    failed: bool,
}

impl DeadlineBody {
    fn new(inner: Incoming, deadline: Instant, shared: Arc<Shared>) -> Self {
        Self {
            inner,
            deadline,
            sleep: None,
            shared,
            failed: false,
        }
    }

    fn fail(&mut self) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        self.failed = true;
        self.sleep = None;
        self.shared.body_timed_out();
        Poll::Ready(Some(Err(RequestBodyError::TimedOut(
            self.shared.settings.body_read_timeout,
        ))))
    }
}

impl Body for DeadlineBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RequestBodyError>>> {
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                this.sleep = None;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                // A body that trickles in without ever stalling must still
                // be whole by the deadline.
                if !this.inner.is_end_stream() && Instant::now() >= this.deadline {
                    return this.fail();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(RequestBodyError::Transport(e)))),
            Poll::Pending => {
                let deadline = this.deadline;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                match sleep.as_mut().poll(cx) {
                    Poll::Ready(()) => this.fail(),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        if self.failed {
            SizeHint::with_exact(0)
        } else {
            self.inner.size_hint()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_timeout_is_found_through_any_wrapping() {
        let timeout = RequestBodyError::TimedOut(Duration::from_secs(1));
        assert!(is_body_timeout(&timeout));
        // As axum hands it to a handler, and as `Limited` boxes it again.
        let axum_error = axum::Error::new(RequestBodyError::TimedOut(Duration::from_secs(1)));
        assert!(is_body_timeout(&axum_error));
        let boxed: Box<dyn std::error::Error + Send + Sync> = Box::new(axum::Error::new(
            RequestBodyError::TimedOut(Duration::from_secs(1)),
        ));
        let wrapped = axum::Error::new(boxed);
        assert!(is_body_timeout(&wrapped));
        // Anything else is not one.
        let other = std::io::Error::other("reset");
        assert!(!is_body_timeout(&other));
        assert!(!is_body_timeout(&axum::Error::new(std::io::Error::other("x"))));
    }

    #[test]
    fn caps_refuse_by_reason_and_give_slots_back() {
        let metrics = ConnectionMetrics::default();
        let slots = Arc::new(Slots {
            max: 3,
            per_client: 2,
            held: Mutex::new(SlotCounts::default()),
            metrics: metrics.clone(),
        });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let a_mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        let c: IpAddr = "192.0.2.3".parse().unwrap();
        let p1 = slots.try_acquire(a).unwrap();
        let _p2 = slots.try_acquire(a).unwrap();
        // The same client over IPv4-mapped IPv6 is the same client.
        assert_eq!(
            slots.try_acquire(a_mapped).unwrap_err(),
            RefusalReason::MaxConnectionsPerClient
        );
        let _p3 = slots.try_acquire(b).unwrap();
        assert_eq!(slots.try_acquire(c).unwrap_err(), RefusalReason::MaxConnections);
        assert_eq!(metrics.snapshot().open, 3);
        drop(p1);
        assert_eq!(metrics.snapshot().open, 2);
        let _p4 = slots.try_acquire(c).unwrap();
        assert_eq!(metrics.snapshot().accepted, 4);
    }

    #[test]
    fn the_exposition_names_every_reason() {
        let metrics = ConnectionMetrics::default();
        let peer: SocketAddr = "192.0.2.1:1".parse().unwrap();
        metrics.refused(RefusalReason::MaxConnectionsPerClient, peer);
        metrics.closed(CloseReason::IdleTimeout, peer);
        metrics.closed(CloseReason::IdleTimeout, peer);
        let mut text = String::new();
        metrics.render(&mut text);
        for line in [
            "soma_edge_connections_open 0",
            "soma_edge_connections_refused_total{reason=\"max_connections\"} 0",
            "soma_edge_connections_refused_total{reason=\"max_connections_per_client\"} 1",
            "soma_edge_connections_closed_total{reason=\"header_timeout\"} 0",
            "soma_edge_connections_closed_total{reason=\"body_timeout\"} 0",
            "soma_edge_connections_closed_total{reason=\"idle_timeout\"} 2",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn the_log_gate_lets_one_line_through_per_interval() {
        let gate = LogGate::default();
        assert_eq!(gate.admit(), Some(0));
        for _ in 0..1000 {
            assert_eq!(gate.admit(), None);
        }
        *lock(&gate.next) = Some(Instant::now());
        assert_eq!(gate.admit(), Some(1000));
    }
}
