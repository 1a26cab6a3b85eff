//! A client of one peer service that may run as several instances, of
//! which one serves at a time (Analytics' active instance and its standby):
//! calls go to the instance that serves.
//!
//! [`PeerSet`] follows each instance's `grpc.health.v1` state: one `Watch`
//! stream on the whole server (`""`) per instance, over that instance's own
//! mTLS channel, so a standby that takes over is seen the moment it reports
//! SERVING, and an instance that dies the moment its stream breaks. The
//! state of each instance, best first:
//!
//! 1. SERVING, and no call failed on it in the last [`FAILURE_PENALTY`];
//! 2. not heard of yet (its stream is opening), no recent failure;
//! 3. SERVING or not heard of, with a recent failure;
//! 4. NOT_SERVING (a standby);
//! 5. unreachable (its stream failed; it is opened again after 100 ms,
//!    doubling to 2 s).
//!
//! A call goes to the instance the last calls went to while it is among the
//! best, else to the first of the best in the configured order (a switch,
//! logged once). A call that fails on its connection, or is answered
//! UNAVAILABLE, marks its instance failed: the next call goes elsewhere if
//! another instance serves. A failed call is never sent again by this
//! layer (its request body is gone, and it may have reached the server):
//! the caller decides, as it always has — outboxes retry with the same
//! event id, the edge answers the error. Nothing is ever reported as done
//! that an instance did not answer.
//!
//! Authentication is exactly as strict as with one address: every
//! instance's channel verifies that the server presents the peer's one
//! SPIFFE ID (`spiffe://<td>/svc/<service>`), and presents this service's
//! own SVID.
//!
//! [`MeshChannel`] is what services hold: a single-address channel (no
//! health stream, no change in behaviour) or a set.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use soma_identity::{SpiffeId, SvidStore};
use tokio::sync::watch;
use tonic::body::Body;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus as HealthStatus;
use tonic_health::pb::health_client::HealthClient;
use tower::Service;

use crate::client::channel;
use crate::error::MeshError;
use crate::settings::{PeerAddr, PeerAddrs};

/// An error of a call through a [`MeshChannel`].
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long an instance on which a call failed is passed over when another
/// serves (its health stream clears it sooner when it reports SERVING again).
pub const FAILURE_PENALTY: Duration = Duration::from_secs(1);
/// First delay before a failed health stream is opened again.
const WATCH_RETRY_MIN: Duration = Duration::from_millis(100);
/// Longest delay between attempts to open a health stream.
const WATCH_RETRY_MAX: Duration = Duration::from_secs(2);
/// How often a caller waiting for a serving instance looks again, beside
/// every change of state (a penalty runs out without one).
const WAIT_TICK: Duration = Duration::from_millis(50);

/// An instance's health as its stream last said.
const UNKNOWN: u8 = 0;
const SERVING: u8 = 1;
const NOT_SERVING: u8 = 2;
const UNREACHABLE: u8 = 3;

/// Rank from which an instance is believed to serve.
const BELIEVED_SERVING: u8 = 3;

/// The instances of one peer service, each followed by its health stream;
/// see the module documentation. Clones share the instances; the health
/// streams end when the last clone is dropped.
#[derive(Clone)]
pub struct PeerSet {
    shared: Arc<Shared>,
}

struct Shared {
    expected: SpiffeId,
    members: Vec<Member>,
    /// Where the last calls went.
    preferred: AtomicUsize,
    /// Moved at every change of an instance's state: what a caller waiting
    /// for a serving instance watches.
    version: watch::Sender<u64>,
    /// Never sent on: its drop (with the last clone) ends every health
    /// stream's task.
    _stop: watch::Sender<()>,
    /// The origin of `failed_at`.
    epoch: Instant,
}

struct Member {
    addr: PeerAddr,
    channel: Channel,
    /// One of `UNKNOWN`, `SERVING`, `NOT_SERVING`, `UNREACHABLE`.
    health: AtomicU8,
    /// When a call last failed on it: milliseconds since `epoch`, plus one
    /// (0: never).
    failed_at: AtomicU64,
}

impl PeerSet {
    /// Channels to every address of `addrs` whose server must be
    /// `expected`, and a task per instance following its health (on the
    /// current tokio runtime).
    pub fn new(store: Arc<SvidStore>, addrs: &PeerAddrs, expected: SpiffeId) -> Result<Self, MeshError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|e| MeshError::Channel {
            target: format!("{expected} at {addrs}"),
            reason: format!("following the instances' health needs a tokio runtime: {e}"),
        })?;
        let members = addrs
            .iter()
            .map(|addr| {
                Ok(Member {
                    addr: addr.clone(),
                    channel: channel(Arc::clone(&store), addr.clone(), expected.clone())?,
                    health: AtomicU8::new(UNKNOWN),
                    failed_at: AtomicU64::new(0),
                })
            })
            .collect::<Result<Vec<_>, MeshError>>()?;
        let (stop, stopped) = watch::channel(());
        let shared = Arc::new(Shared {
            expected,
            members,
            preferred: AtomicUsize::new(0),
            version: watch::Sender::new(0),
            _stop: stop,
            epoch: Instant::now(),
        });
        for (index, member) in shared.members.iter().enumerate() {
            runtime.spawn(follow_health(
                Arc::downgrade(&shared),
                index,
                member.channel.clone(),
                stopped.clone(),
            ));
        }
        Ok(Self { shared })
    }

    /// How many instances.
    pub fn len(&self) -> usize {
        self.shared.members.len()
    }

    /// Always `false`: a set holds at least one instance.
    pub fn is_empty(&self) -> bool {
        self.shared.members.is_empty()
    }

    /// The address of instance `index`.
    pub fn addr(&self, index: usize) -> &PeerAddr {
        &self.shared.members[index].addr
    }

    /// The SPIFFE ID every instance must present.
    pub fn expected(&self) -> &SpiffeId {
        &self.shared.expected
    }

    /// The channel to instance `index`.
    pub fn channel(&self, index: usize) -> &Channel {
        &self.shared.members[index].channel
    }

    /// The instance the next call should go to: the one calls went to
    /// while it is among the best, else the first of the best.
    pub fn pick(&self) -> usize {
        self.shared.best().0
    }

    /// Whether instance `index` is believed to serve now (SERVING or not
    /// heard of yet, and no recent failure).
    pub fn believed_serving(&self, index: usize) -> bool {
        self.shared.rank(index, self.shared.now_ms()) >= BELIEVED_SERVING
    }

    /// The instance to call, waiting up to `wait` for one believed to
    /// serve when none is (during a switch: the old instance gone, the new
    /// one not SERVING yet); after `wait`, the best there is.
    pub async fn serving(&self, wait: Duration) -> usize {
        let mut changes = self.shared.version.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let (index, rank) = self.shared.best();
            let now = tokio::time::Instant::now();
            if rank >= BELIEVED_SERVING || now >= deadline {
                return index;
            }
            let tick = (deadline - now).min(WAIT_TICK);
            // A penalty running out changes no version: the tick sees it.
            let _ = tokio::time::timeout(tick, changes.changed()).await;
        }
    }

    /// A call on instance `index` failed (`why`): it is passed over for
    /// [`FAILURE_PENALTY`] when another instance serves.
    pub fn failed(&self, index: usize, why: &dyn fmt::Display) {
        let shared = &self.shared;
        let now = shared.now_ms();
        let member = &shared.members[index];
        let before = member.failed_at.swap(now + 1, Ordering::Relaxed);
        let penalized = before != 0 && now < before - 1 + penalty_ms();
        if !penalized {
            tracing::warn!(
                peer = %shared.expected,
                addr = %member.addr,
                reason = %why,
                "a call to this instance failed: others that serve are preferred"
            );
        }
        shared.version.send_modify(|v| *v = v.wrapping_add(1));
    }
}

impl fmt::Debug for PeerSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let addrs: Vec<&str> = self.shared.members.iter().map(|m| m.addr.as_str()).collect();
        f.debug_struct("PeerSet")
            .field("expected", &self.shared.expected)
            .field("addrs", &addrs)
            .finish_non_exhaustive()
    }
}

fn penalty_ms() -> u64 {
    u64::try_from(FAILURE_PENALTY.as_millis()).unwrap_or(u64::MAX)
}

impl Shared {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// How good instance `index` is now (higher is better, see the module
    /// documentation).
    fn rank(&self, index: usize, now: u64) -> u8 {
        let member = &self.members[index];
        let failed_at = member.failed_at.load(Ordering::Relaxed);
        let penalized = failed_at != 0 && now < failed_at - 1 + penalty_ms();
        match (member.health.load(Ordering::Relaxed), penalized) {
            (SERVING, false) => 4,
            (UNKNOWN, false) => 3,
            (SERVING | UNKNOWN, true) => 2,
            (NOT_SERVING, _) => 1,
            _ => 0,
        }
    }

    /// The instance to call and its rank.
    fn best(&self) -> (usize, u8) {
        let now = self.now_ms();
        let preferred = self.preferred.load(Ordering::Relaxed);
        let ranks: Vec<u8> = (0..self.members.len()).map(|i| self.rank(i, now)).collect();
        let top = ranks.iter().copied().max().unwrap_or(0);
        if ranks.get(preferred) == Some(&top) {
            return (preferred, top);
        }
        let chosen = ranks.iter().position(|r| *r == top).unwrap_or(0);
        if self
            .preferred
            .compare_exchange(preferred, chosen, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            tracing::info!(
                peer = %self.expected,
                from = %self.members[preferred].addr,
                to = %self.members[chosen].addr,
                "calls switch to another instance"
            );
        }
        (chosen, top)
    }

    /// Instance `index`'s health stream says `health`.
    fn observe(&self, index: usize, health: u8) {
        let member = &self.members[index];
        if health == SERVING {
            member.failed_at.store(0, Ordering::Relaxed);
        }
        let before = member.health.swap(health, Ordering::Relaxed);
        if before != health {
            let said = match health {
                SERVING => "serving",
                NOT_SERVING => "not serving (standing by)",
                _ => "unreachable",
            };
            tracing::info!(peer = %self.expected, addr = %member.addr, "instance {said}");
            self.version.send_modify(|v| *v = v.wrapping_add(1));
        }
    }
}

/// Follows instance `index`'s health on its `Watch` stream until the set
/// is dropped, opening the stream again after each failure.
async fn follow_health(shared: Weak<Shared>, index: usize, channel: Channel, mut stop: watch::Receiver<()>) {
    let mut retry = WATCH_RETRY_MIN;
    loop {
        let mut client = HealthClient::new(channel.clone());
        let request = HealthCheckRequest {
            service: String::new(),
        };
        let opened = tokio::select! {
            _ = stop.changed() => return,
            opened = client.watch(request) => opened,
        };
        if let Ok(response) = opened {
            let mut stream = response.into_inner();
            loop {
                let next = tokio::select! {
                    _ = stop.changed() => return,
                    next = stream.message() => next,
                };
                let Ok(Some(update)) = next else { break };
                let Some(set) = shared.upgrade() else { return };
                let health = if update.status == HealthStatus::Serving as i32 {
                    SERVING
                } else {
                    NOT_SERVING
                };
                set.observe(index, health);
                retry = WATCH_RETRY_MIN;
            }
        }
        let Some(set) = shared.upgrade() else { return };
        set.observe(index, UNREACHABLE);
        drop(set);
        tokio::select! {
            _ = stop.changed() => return,
            () = tokio::time::sleep(retry) => {}
        }
        retry = (retry * 2).min(WATCH_RETRY_MAX);
    }
}

/// A channel to one peer service: one address, or a [`PeerSet`] of several
/// instances where each call goes to the one that serves. A tower service
/// like tonic's `Channel`, so every generated client takes it.
pub struct MeshChannel {
    route: Route,
    /// The instance (and its channel clone) `poll_ready` readied for the
    /// next `call`.
    ready: Option<(usize, Channel)>,
}

#[derive(Clone)]
enum Route {
    One(Channel),
    Set(PeerSet),
}

impl MeshChannel {
    /// A channel to the instances at `addrs` (lazily connecting; with
    /// several, following their health), whose servers must be `expected`.
    pub fn new(store: Arc<SvidStore>, addrs: &PeerAddrs, expected: SpiffeId) -> Result<Self, MeshError> {
        if addrs.len() == 1 {
            return Ok(channel(store, addrs.first().clone(), expected)?.into());
        }
        Ok(Self {
            route: Route::Set(PeerSet::new(store, addrs, expected)?),
            ready: None,
        })
    }

    /// The instances, when there are several.
    pub fn peer_set(&self) -> Option<&PeerSet> {
        match &self.route {
            Route::One(_) => None,
            Route::Set(set) => Some(set),
        }
    }
}

impl From<Channel> for MeshChannel {
    fn from(channel: Channel) -> Self {
        Self {
            route: Route::One(channel),
            ready: None,
        }
    }
}

impl Clone for MeshChannel {
    fn clone(&self) -> Self {
        // A clone is not ready (tower's contract): it picks its own
        // instance at its own `poll_ready`.
        Self {
            route: self.route.clone(),
            ready: None,
        }
    }
}

impl fmt::Debug for MeshChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.route {
            Route::One(_) => f.write_str("MeshChannel(one address)"),
            Route::Set(set) => f.debug_tuple("MeshChannel").field(set).finish(),
        }
    }
}

impl Service<http::Request<Body>> for MeshChannel {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        let Self { route, ready } = self;
        match route {
            Route::One(channel) => channel.poll_ready(cx).map_err(Into::into),
            Route::Set(set) => {
                let (index, channel) = ready.get_or_insert_with(|| {
                    let index = set.pick();
                    (index, set.channel(index).clone())
                });
                match ready!(channel.poll_ready(cx)) {
                    Ok(()) => Poll::Ready(Ok(())),
                    Err(e) => {
                        set.failed(*index, &e);
                        *ready = None;
                        Poll::Ready(Err(e.into()))
                    }
                }
            }
        }
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let Self { route, ready } = self;
        ResponseFuture(match route {
            Route::One(channel) => Pending::One(channel.call(request)),
            Route::Set(set) => match ready.take() {
                Some((index, mut channel)) => Pending::Set {
                    call: channel.call(request),
                    set: set.clone(),
                    index,
                },
                None => Pending::NotReady,
            },
        })
    }
}

/// The response of a call through a [`MeshChannel`].
pub struct ResponseFuture(Pending);

enum Pending {
    One(tonic::transport::channel::ResponseFuture),
    Set {
        call: tonic::transport::channel::ResponseFuture,
        set: PeerSet,
        index: usize,
    },
    /// Called without `poll_ready` (a caller's bug): nothing was sent.
    NotReady,
}

impl Future for ResponseFuture {
    type Output = Result<http::Response<Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().0 {
            Pending::One(call) => Pin::new(call).poll(cx).map_err(Into::into),
            Pending::Set { call, set, index } => match ready!(Pin::new(call).poll(cx)) {
                Ok(response) => {
                    // A trailers-only UNAVAILABLE (a standby's refusal, a
                    // server shutting down): the next call goes elsewhere
                    // if another instance serves.
                    if response
                        .headers()
                        .get("grpc-status")
                        .is_some_and(|s| s.as_bytes() == b"14")
                    {
                        set.failed(*index, &"answered UNAVAILABLE");
                    }
                    Poll::Ready(Ok(response))
                }
                Err(e) => {
                    set.failed(*index, &e);
                    Poll::Ready(Err(e.into()))
                }
            },
            Pending::NotReady => Poll::Ready(Err("called before the channel was ready".into())),
        }
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ResponseFuture")
    }
}
