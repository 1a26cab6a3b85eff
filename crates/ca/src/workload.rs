//! The SPIFFE Workload API (X.509 half) served on a Unix socket.
//!
//! Attestation is by the kernel. The pid of the caller's connection
//! (`SO_PEERCRED`) is looked up in the [`Registry`] (processes a supervisor
//! registered, each bound to its start time and a pidfd); failing that, the
//! caller's uid and gid (`SO_PEERCRED`) and its binary's path and SHA-256
//! (`/proc/<pid>/exe`) are matched against the authority's registration
//! entries ([`crate::EntryStore`]), re-read at every attestation. The binary
//! is read between two readings of the pid's start time, so that a process
//! that exits and is replaced meanwhile is refused. Every request must carry
//! the `workload.spiffe.io: true` metadata, which a browser or a confused
//! proxy cannot forge into a request by accident.
//!
//! SVIDs are cached per SPIFFE ID: every caller entitled to the same ID shares
//! one SVID, published through a `tokio::sync::watch` channel. One background
//! task per cached ID re-issues it at half its lifetime (±10 % jitter, so that
//! the identities of a whole `soma up` do not all rotate in the same instant)
//! and publishes the new SVID to every open stream. The old SVID stays valid
//! for the other half of its lifetime, so a peer that has not yet switched
//! keeps working. The task forgets the ID once no stream is left reading it.
//!
//! While it serves, a task takes the authority's rotation steps as they come
//! due (checking every second, which also picks up `soma ca prepare` and
//! `soma ca activate` run by an operator) and announces each change of the
//! bundles: every open X509-SVID stream then sends its current SVID with the
//! new bundle, and every bundle stream (X.509 and JWT) sends the new bundles,
//! as a SPIRE agent does when its server prepares or retires a key.
//!
//! Every accepted connection goes through [`Normalised`] before h2 sees it,
//! so that grpcio's percent-encoded `:authority` is accepted (see
//! [`crate::normalise`] for why and exactly what it changes).

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use futures::StreamExt as _;
use rand::Rng as _;
use soma_identity::SpiffeId;
use soma_proto::workload::spiffe_workload_api_server::{SpiffeWorkloadApi, SpiffeWorkloadApiServer};
use soma_proto::workload::{
    JwtBundlesRequest, JwtBundlesResponse, Jwtsvid, JwtsvidRequest, JwtsvidResponse, ValidateJwtsvidRequest,
    ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse, X509svid, X509svidRequest,
    X509svidResponse,
};
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::codegen::BoxStream;
use tonic::transport::server::UdsConnectInfo;
use tonic::{Request, Response, Status};
use tracing::{debug, error, info, warn};

use crate::authority::{Authority, IssueOptions, IssuedSvid};
use crate::entries::Caller;
use crate::error::CaError;
use crate::normalise::Normalised;
use crate::process;
use crate::registry::Registry;

/// The metadata key every Workload API request must carry, with value `true`.
const SECURITY_HEADER: &str = "workload.spiffe.io";

/// Message of the `InvalidArgument` answer to a request without the header.
const HEADER_MISSING: &str = "security header missing from request";

/// Message of the `PermissionDenied` answer to a caller without an identity.
const NO_IDENTITY: &str = "no identity issued: the caller matches no registration entry";

/// Lifetime of a JWT-SVID: SPIRE's default. Bearer tokens are replayable by
/// whoever holds them, so they live far shorter than X509-SVIDs.
const JWT_SVID_TTL: Duration = Duration::from_secs(5 * 60);

/// Shortest SVID lifetime the server accepts: below it, rotation would be
/// busier than serving.
const MIN_SVID_TTL: Duration = Duration::from_secs(2);

/// How often the authority's rotation schedule and files are looked at.
const AUTHORITY_POLL: Duration = Duration::from_secs(1);

/// Rotation happens at half the lifetime, scaled by a factor in this range.
const JITTER: std::ops::RangeInclusive<f64> = 0.9..=1.1;

/// Settings of the Workload API server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkloadApiConfig {
    /// Lifetime of the SVIDs handed out; each is replaced at half-life ±10 %.
    /// [`WorkloadApi::serve`] refuses less than two seconds.
    pub svid_ttl: Duration,
}

impl Default for WorkloadApiConfig {
    /// One hour, SPIRE's default X509-SVID lifetime.
    fn default() -> Self {
        Self {
            svid_ttl: Duration::from_secs(60 * 60),
        }
    }
}

/// The Workload API server: hands each registered workload its X509-SVID and
/// the trust bundle, and pushes every rotation.
#[derive(Debug)]
pub struct WorkloadApi {
    shared: Arc<Shared>,
}

impl WorkloadApi {
    /// A server that issues with `authority` to the callers `registry` names.
    pub fn new(authority: Arc<Authority>, registry: Registry, config: WorkloadApiConfig) -> Self {
        Self {
            shared: Arc::new(Shared {
                authority,
                registry,
                config,
                svids: Mutex::new(HashMap::new()),
                bundles: watch::Sender::new(0),
            }),
        }
    }

    /// Serves the Workload API on an already-bound Unix listener until
    /// `shutdown` resolves, then shuts down gracefully: open streams are ended
    /// (they would otherwise keep the server waiting forever), rotation tasks
    /// stop, and the call returns once every connection has closed.
    pub async fn serve(
        self,
        listener: UnixListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), CaError> {
        if self.shared.config.svid_ttl < MIN_SVID_TTL {
            return Err(CaError::InvalidTtl {
                reason: "workload api svid ttl shorter than two seconds",
            });
        }
        // `stop` turns true when shutdown begins; if the server fails instead,
        // the sender is dropped, which every waiter also reads as "stop".
        let (stop_tx, stop) = watch::channel(false);
        let signal = async move {
            shutdown.await;
            info!("workload api shutting down");
            stop_tx.send_replace(true);
        };
        let follower = tokio::spawn(follow_authority(Arc::clone(&self.shared), stop.clone()));
        let service = Service {
            shared: self.shared,
            stop,
        };
        info!("workload api serving");
        let served = tonic::transport::Server::builder()
            .add_service(SpiffeWorkloadApiServer::new(service))
            .serve_with_incoming_shutdown(
                UnixListenerStream::new(listener).map(|conn| conn.map(Normalised::new)),
                signal,
            )
            .await
            .map_err(CaError::Serve);
        // The follower ends when `stop` turns true or its sender is dropped,
        // which has happened by now either way.
        if let Err(e) = follower.await {
            error!(error = %e, "authority follower ended abnormally");
        }
        served
    }
}

/// State shared by the service and the rotation tasks.
#[derive(Debug)]
struct Shared {
    authority: Arc<Authority>,
    registry: Registry,
    config: WorkloadApiConfig,
    /// The current SVID of every identity someone is reading, one publisher each.
    svids: Mutex<HashMap<SpiffeId, watch::Sender<Arc<IssuedSvid>>>>,
    /// Bumped whenever the published bundles change.
    bundles: watch::Sender<u64>,
}

impl Shared {
    /// A receiver of the current SVID of `id`, issuing it (and starting its
    /// rotation task) if nobody holds one yet.
    fn subscribe(
        self: &Arc<Self>,
        id: &SpiffeId,
        stop: &watch::Receiver<bool>,
    ) -> Result<watch::Receiver<Arc<IssuedSvid>>, CaError> {
        let mut svids = self.svids.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(publisher) = svids.get(id) {
            return Ok(publisher.subscribe());
        }
        // Issued under the lock, so that callers arriving together for a new
        // ID share one SVID instead of each minting their own.
        let svid = Arc::new(self.issue(id)?);
        let (publisher, receiver) = watch::channel(Arc::clone(&svid));
        svids.insert(id.clone(), publisher);
        drop(svids);
        tokio::spawn(rotate(Arc::clone(self), id.clone(), svid, stop.clone()));
        Ok(receiver)
    }

    fn issue(&self, id: &SpiffeId) -> Result<IssuedSvid, CaError> {
        self.authority
            .issue(id, self.config.svid_ttl, IssueOptions { loopback_sans: true })
    }

    /// Whether `id` still has a reader. When it has none it is forgotten, and
    /// its rotation task must end. The check and the removal happen under the lock that
    /// [`Shared::subscribe`] takes, so a new reader either arrives before
    /// (and is counted) or after (and starts a fresh entry).
    fn still_read(&self, id: &SpiffeId) -> bool {
        let mut svids = self.svids.lock().unwrap_or_else(PoisonError::into_inner);
        match svids.get(id) {
            Some(publisher) if publisher.receiver_count() > 0 => true,
            Some(_) => {
                svids.remove(id);
                false
            }
            None => false,
        }
    }

    /// The identity of the caller: a registered pid first, then the first
    /// registration entry whose selectors it all has. `Ok(None)`: no identity.
    fn identify(&self, pid: u32, uid: u32, gid: u32) -> Result<Option<SpiffeId>, Status> {
        if let Some(id) = self.registry.lookup(pid) {
            return Ok(Some(id));
        }
        let entries = self.authority.entries().list().map_err(|e| {
            error!(error = %e, "cannot read the registration entries");
            Status::internal("registration entries unreadable")
        })?;
        if entries.is_empty() {
            return Ok(None);
        }
        let Ok(process) = process::Handle::open(pid) else {
            return Ok(None);
        };
        let mut caller = Caller::new(pid, uid, gid);
        let id = caller.first_match(&entries).map(|entry| {
            debug!(entry_id = %entry.entry_id, "caller matches registration entry");
            entry.spiffe_id.clone()
        });
        // The binary was read through /proc/<pid>: it must still be the
        // process that was opened before, not a successor on the same pid.
        if let Err(reason) = process.is_running_as(pid) {
            warn!(pid, reason, "caller's process changed during attestation");
            return Ok(None);
        }
        Ok(id)
    }

    /// Publishes `svid` as the current SVID of `id`, waking every stream.
    fn publish(&self, id: &SpiffeId, svid: Arc<IssuedSvid>) {
        let svids = self.svids.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(publisher) = svids.get(id) {
            publisher.send_replace(svid);
        }
    }
}

/// The rotation task of one identity: re-issues its SVID at half-life ±10 %
/// until shutdown or until nobody reads it any more.
///
/// A failed issuance is retried after a tenth of the remaining lifetime (at
/// least one second), while the current SVID, still valid, stays published.
async fn rotate(shared: Arc<Shared>, id: SpiffeId, first: Arc<IssuedSvid>, mut stop: watch::Receiver<bool>) {
    let mut wait = rotation_delay(&first);
    let mut current = first;
    loop {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stopped(&mut stop) => return,
        }
        if !shared.still_read(&id) {
            debug!(spiffe_id = %id, "no reader left; svid cache entry dropped");
            return;
        }
        match shared.issue(&id) {
            Ok(svid) => {
                let svid = Arc::new(svid);
                info!(
                    spiffe_id = %id,
                    serial = %svid.serial_hex(),
                    previous_serial = %current.serial_hex(),
                    not_after = ?svid.not_after,
                    "rotated x509-svid"
                );
                shared.publish(&id, Arc::clone(&svid));
                wait = rotation_delay(&svid);
                current = svid;
            }
            Err(e) => {
                let remaining = remaining_lifetime(&current);
                wait = (remaining / 10).max(Duration::from_secs(1));
                error!(spiffe_id = %id, error = %e, retry_in = ?wait, "cannot rotate x509-svid");
            }
        }
    }
}

/// Takes the authority's rotation steps as they come due, and announces
/// every change of the bundles, until shutdown.
///
/// A failed step is logged and tried again at the next poll: the slots in
/// use stay valid meanwhile (a prepared slot is due a sixth of a lifetime
/// before it must sign, a retired one is only pruned).
async fn follow_authority(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(AUTHORITY_POLL) => {}
            () = stopped(&mut stop) => return,
        }
        match shared.authority.advance(SystemTime::now()) {
            Ok(true) => {
                info!("trust bundles changed; sending them on every open stream");
                shared.bundles.send_modify(|generation| *generation += 1);
            }
            Ok(false) => {}
            Err(e) => error!(error = %e, "cannot take the authority's rotation step"),
        }
    }
}

/// Half the remaining lifetime of `svid`, scaled by a random factor in 0.9..=1.1.
fn rotation_delay(svid: &IssuedSvid) -> Duration {
    let factor = rand::rng().random_range(JITTER);
    (remaining_lifetime(svid) / 2).mul_f64(factor)
}

fn remaining_lifetime(svid: &IssuedSvid) -> Duration {
    svid.not_after
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO)
}

/// Resolves once `stop` is true or its sender is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // Either outcome means "stop"; the value itself is not needed.
    let _ = stop.wait_for(|stopping| *stopping).await;
}

/// The gRPC service: one per `serve` call.
#[derive(Debug)]
struct Service {
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for Service {
    #[tracing::instrument(name = "FetchX509SVID", skip_all, fields(pid, spiffe_id))]
    async fn fetch_x509svid(
        &self,
        request: Request<X509svidRequest>,
    ) -> Result<Response<BoxStream<X509svidResponse>>, Status> {
        let (caller, id) = self.attest(&request)?;
        let svids = self.shared.subscribe(&id, &self.stop).map_err(|e| {
            error!(error = %e, "cannot issue x509-svid");
            Status::internal("cannot issue x509-svid")
        })?;
        debug!("x509-svid stream opened");
        let state = SvidStream {
            svids,
            bundles: self.shared.bundles.subscribe(),
            stop: self.stop.clone(),
            shared: Arc::clone(&self.shared),
            caller,
            id,
            phase: Phase::First,
        };
        Ok(Response::new(
            futures::stream::unfold(state, SvidStream::next).boxed(),
        ))
    }

    /// Like SPIRE (without its `allow_unauthenticated_verifiers` option), the
    /// bundles go only to a caller that has an identity.
    #[tracing::instrument(name = "FetchX509Bundles", skip_all, fields(pid, spiffe_id))]
    async fn fetch_x509_bundles(
        &self,
        request: Request<X509BundlesRequest>,
    ) -> Result<Response<BoxStream<X509BundlesResponse>>, Status> {
        self.attest(&request)?;
        debug!("x509 bundles stream opened");
        Ok(Response::new(bundle_stream(
            Arc::clone(&self.shared),
            self.stop.clone(),
            |authority| X509BundlesResponse {
                crl: Vec::new(),
                bundles: HashMap::from([(authority.trust_domain().id_string(), authority.bundle_der())]),
            },
        )))
    }

    /// A JWT-SVID for the caller's identity, for the requested audience.
    #[tracing::instrument(name = "FetchJWTSVID", skip_all, fields(pid, spiffe_id))]
    async fn fetch_jwtsvid(
        &self,
        request: Request<JwtsvidRequest>,
    ) -> Result<Response<JwtsvidResponse>, Status> {
        let (_, id) = self.attest(&request)?;
        let request = request.into_inner();
        if request.audience.is_empty() || request.audience.iter().any(String::is_empty) {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        // A caller may name the identity it wants, but only its own.
        if !request.spiffe_id.is_empty() && request.spiffe_id != id.to_string() {
            warn!(requested = %request.spiffe_id, "jwt-svid asked for another identity");
            return Err(Status::permission_denied(format!(
                "no identity issued: the caller is not entitled to {}",
                request.spiffe_id
            )));
        }
        let issued = self
            .shared
            .authority
            .issue_jwt(&id, &request.audience, JWT_SVID_TTL)
            .map_err(|e| {
                error!(error = %e, "cannot issue jwt-svid");
                Status::internal("cannot issue jwt-svid")
            })?;
        Ok(Response::new(JwtsvidResponse {
            svids: vec![Jwtsvid {
                spiffe_id: id.to_string(),
                svid: issued.token,
                hint: String::new(),
            }],
        }))
    }

    /// The JWKS bundle of the trust domain, to callers with an identity.
    #[tracing::instrument(name = "FetchJWTBundles", skip_all, fields(pid, spiffe_id))]
    async fn fetch_jwt_bundles(
        &self,
        request: Request<JwtBundlesRequest>,
    ) -> Result<Response<BoxStream<JwtBundlesResponse>>, Status> {
        self.attest(&request)?;
        Ok(Response::new(bundle_stream(
            Arc::clone(&self.shared),
            self.stop.clone(),
            |authority| JwtBundlesResponse {
                bundles: HashMap::from([(authority.trust_domain().id_string(), authority.jwt_bundle())]),
            },
        )))
    }

    /// Validates a JWT-SVID for an audience; refusals are `InvalidArgument`
    /// with the reason.
    #[tracing::instrument(name = "ValidateJWTSVID", skip_all, fields(pid, spiffe_id))]
    async fn validate_jwtsvid(
        &self,
        request: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        self.attest(&request)?;
        let request = request.into_inner();
        if request.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if request.svid.is_empty() {
            return Err(Status::invalid_argument("svid must be specified"));
        }
        let validated = self
            .shared
            .authority
            .validate_jwt(&request.svid, &request.audience)
            .map_err(|e| {
                warn!(error = %e, "jwt-svid refused");
                Status::invalid_argument(e.to_string())
            })?;
        Ok(Response::new(ValidateJwtsvidResponse {
            spiffe_id: validated.spiffe_id.to_string(),
            claims: Some(prost_types::Struct {
                fields: validated
                    .claims
                    .into_iter()
                    .map(|(k, v)| (k, proto_value(v)))
                    .collect(),
            }),
        }))
    }
}

/// A stream of the current bundles, then the bundles again after every
/// change, until shutdown: each message is the full state, as the
/// specification asks, and the stream stays open between changes.
fn bundle_stream<T: Send + 'static>(
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    message: fn(&Authority) -> T,
) -> BoxStream<T> {
    let mut changes = shared.bundles.subscribe();
    // Whatever changed before this point is in the first message.
    changes.mark_unchanged();
    futures::stream::unfold(
        (shared, changes, stop, true),
        move |(shared, mut changes, mut stop, first)| async move {
            if !first {
                tokio::select! {
                    changed = changes.changed() => changed.ok()?,
                    () = stopped(&mut stop) => return None,
                }
                changes.mark_unchanged();
            }
            let next = message(&shared.authority);
            Some((Ok(next), (shared, changes, stop, false)))
        },
    )
    .boxed()
}

/// A JSON value as a protobuf `Value`.
fn proto_value(value: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    use serde_json::Value as J;
    let kind = match value {
        J::Null => Kind::NullValue(0),
        J::Bool(b) => Kind::BoolValue(b),
        J::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        J::String(s) => Kind::StringValue(s),
        J::Array(list) => Kind::ListValue(prost_types::ListValue {
            values: list.into_iter().map(proto_value).collect(),
        }),
        J::Object(map) => Kind::StructValue(prost_types::Struct {
            fields: map.into_iter().map(|(k, v)| (k, proto_value(v))).collect(),
        }),
    };
    prost_types::Value { kind: Some(kind) }
}

impl Service {
    /// Checks the security header, then finds the caller's identity from the
    /// pid of its connection. Records both in the current span.
    fn attest<T>(&self, request: &Request<T>) -> Result<(Credentials, SpiffeId), Status> {
        check_security_header(request)?;
        let caller = caller_credentials(request)?;
        tracing::Span::current().record("pid", caller.pid);
        let Some(id) = self.shared.identify(caller.pid, caller.uid, caller.gid)? else {
            warn!(
                pid = caller.pid,
                uid = caller.uid,
                gid = caller.gid,
                "caller matches no registration entry"
            );
            return Err(Status::permission_denied(NO_IDENTITY));
        };
        tracing::Span::current().record("spiffe_id", tracing::field::display(&id));
        Ok((caller, id))
    }
}

/// Where an X509-SVID stream stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// The current SVID has not been sent yet.
    First,
    /// Waiting for the next rotation.
    Rotations,
    /// The stream has ended.
    Done,
}

/// State of one FetchX509SVID stream.
struct SvidStream {
    svids: watch::Receiver<Arc<IssuedSvid>>,
    bundles: watch::Receiver<u64>,
    stop: watch::Receiver<bool>,
    shared: Arc<Shared>,
    caller: Credentials,
    id: SpiffeId,
    phase: Phase,
}

impl SvidStream {
    /// The next message: the current SVID at once, then one per rotation of
    /// the SVID and one per change of the bundles (the same SVID with the
    /// new bundle).
    ///
    /// On each of them the caller is attested again: if it no longer gets
    /// this identity (its pid registration or its entry is gone, or the pid
    /// now runs another process), the stream ends with `PermissionDenied`
    /// rather than keep feeding it fresh SVIDs.
    async fn next(mut self) -> Option<(Result<X509svidResponse, Status>, Self)> {
        match self.phase {
            Phase::Done => return None,
            Phase::First => {
                self.phase = Phase::Rotations;
                self.bundles.mark_unchanged();
            }
            Phase::Rotations => {
                tokio::select! {
                    changed = self.svids.changed() => {
                        if changed.is_err() {
                            return None;
                        }
                    }
                    changed = self.bundles.changed() => {
                        if changed.is_err() {
                            return None;
                        }
                        self.bundles.mark_unchanged();
                    }
                    () = stopped(&mut self.stop) => return None,
                }
                let now = self
                    .shared
                    .identify(self.caller.pid, self.caller.uid, self.caller.gid);
                if now.as_ref().ok().and_then(Option::as_ref) != Some(&self.id) {
                    warn!(pid = self.caller.pid, spiffe_id = %self.id, "caller lost its identity; ending stream");
                    self.phase = Phase::Done;
                    return Some((Err(Status::permission_denied(NO_IDENTITY)), self));
                }
            }
        }
        let svid = Arc::clone(&self.svids.borrow_and_update());
        debug!(pid = self.caller.pid, spiffe_id = %self.id, serial = %svid.serial_hex(), "sending x509-svid");
        let message = X509svidResponse {
            svids: vec![X509svid {
                spiffe_id: svid.spiffe_id.to_string(),
                x509_svid: svid.chain_der_concatenated(),
                x509_svid_key: svid.key_pkcs8_der.clone(),
                bundle: self.shared.authority.bundle_der(),
                hint: String::new(),
            }],
            crl: Vec::new(),
            federated_bundles: HashMap::new(),
        };
        Some((Ok(message), self))
    }
}

/// Refuses a request without `workload.spiffe.io: true`.
fn check_security_header<T>(request: &Request<T>) -> Result<(), Status> {
    match request
        .metadata()
        .get(SECURITY_HEADER)
        .map(|value| value.to_str())
    {
        Some(Ok("true")) => Ok(()),
        _ => {
            warn!("{HEADER_MISSING}");
            Err(Status::invalid_argument(HEADER_MISSING))
        }
    }
}

/// The kernel's credentials of the caller's connection (`SO_PEERCRED`).
#[derive(Clone, Copy, Debug)]
struct Credentials {
    pid: u32,
    uid: u32,
    gid: u32,
}

/// The credentials of the process at the other end of the caller's connection.
fn caller_credentials<T>(request: &Request<T>) -> Result<Credentials, Status> {
    request
        .extensions()
        .get::<UdsConnectInfo>()
        .and_then(|info| info.peer_cred)
        .and_then(|cred| {
            let pid = u32::try_from(cred.pid()?).ok()?;
            Some(Credentials {
                pid,
                uid: cred.uid(),
                gid: cred.gid(),
            })
        })
        .ok_or_else(|| {
            warn!("caller credentials unavailable from the connection");
            Status::permission_denied(NO_IDENTITY)
        })
}
