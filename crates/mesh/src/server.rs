//! The mTLS gRPC server every service runs.
//!
//! Connections are accepted by our own loop rather than tonic's: each TCP
//! connection gets a TLS handshake bounded by the handshake timeout, on its
//! own task (a slow or hostile client never holds up the accept loop), with
//! the server certificate chosen from the live SVID store at that moment.
//! Only connections whose handshake verified a client SVID reach tonic, each
//! carrying its [`PeerInfo`] as tonic connect info.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use soma_identity::SvidStore;
use soma_proto::{PolicyTable, PolicyView};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::service::Routes;
use tonic::transport::server::Connected;
use tracing::Instrument as _;

use crate::admin::{AdminServer, Readiness};
use crate::authz::AuthzLayer;
use crate::caller::PeerInfo;
use crate::error::MeshError;
use crate::metrics::{HandshakeFailure, HandshakeOutcome, Metrics};
use crate::serving::Serving;
use crate::settings::MeshSettings;

/// Callers allowed to use health and reflection: every workload and
/// operator of the local trust domain.
const INFRA_CALLERS: [&str; 2] = ["/svc/*", "/operator/*"];

/// Policies of the methods the runtime itself serves (health, reflection),
/// which are not declared in SomaStack's protos.
pub fn builtin_policies() -> Vec<PolicyView> {
    [
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    ]
    .into_iter()
    .map(|path| PolicyView {
        path: path.to_owned(),
        capability: String::new(),
        mfa_required: false,
        allowed_callers: INFRA_CALLERS.iter().map(|s| (*s).to_owned()).collect(),
        read_only: true,
        moderate: false,
    })
    .collect()
}

/// What a service contributes to the runtime.
#[derive(Debug)]
pub struct ServiceSpec {
    /// Fully-qualified gRPC service name, e.g. `somastack.v1.Analytics`.
    pub name: &'static str,
    /// The service's routes (its generated server, with message limits set).
    pub routes: Routes,
    /// Readiness of the service's own dependencies (its database).
    pub readiness: Readiness,
    /// The service's own series, rendered on `/metrics` after the runtime's.
    pub metrics: Vec<Arc<dyn crate::MetricsSource>>,
    /// Whether the instance serves, for a service that can stand by while
    /// another instance serves ([`Serving`]); `None`: it always serves.
    pub serving: Option<watch::Receiver<Serving>>,
}

/// A built service: listeners bound, ready to run.
pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    admin: AdminServer,
    acceptor: TlsAcceptor,
    router:
        tonic::transport::server::Router<tower::layer::util::Stack<AuthzLayer, tower::layer::util::Identity>>,
    settings: Arc<MeshSettings>,
    metrics: Metrics,
    health: tonic_health::server::HealthReporter,
    service_name: &'static str,
    serving: Option<watch::Receiver<Serving>>,
}

impl std::fmt::Debug for Application {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Application")
            .field("service", &self.service_name)
            .field("local_addr", &self.local_addr)
            .field("admin_addr", &self.admin.local_addr())
            .finish_non_exhaustive()
    }
}

impl Application {
    /// Binds the service and admin listeners and assembles the server:
    /// authorization from the descriptor set's policies, health, reflection.
    pub async fn build(
        settings: MeshSettings,
        identity: Arc<SvidStore>,
        claims: Option<soma_auth::ClaimsVerifier>,
        spec: ServiceSpec,
    ) -> Result<Self, MeshError> {
        let settings = Arc::new(settings);
        let mut policies = PolicyTable::for_services(&[spec.name]).map_err(MeshError::Policy)?;
        for p in builtin_policies() {
            policies.insert(p);
        }
        let paths = policies.iter().map(|p| p.path.as_str());
        let metrics = if settings.metrics {
            Metrics::new(paths)
        } else {
            Metrics::disabled(paths)
        };
        metrics.register(Arc::new(crate::metrics::IdentityMetrics {
            store: Arc::clone(&identity),
        }));
        if let Some(verifier) = &claims {
            metrics.register(Arc::new(crate::metrics::EnvelopeMetrics {
                counts: verifier.counts(),
            }));
        }
        for source in spec.metrics {
            metrics.register(source);
        }
        let authz = AuthzLayer::new(
            identity.trust_domain().clone(),
            policies,
            claims,
            metrics.clone(),
            spec.serving.clone(),
        );

        let (health, health_service) = tonic_health::server::health_reporter();
        let initial = spec
            .serving
            .as_ref()
            .map_or(Serving::Yes, |serving| *serving.borrow());
        health.set_service_status(spec.name, health_status(initial)).await;
        health.set_service_status("", health_status(initial)).await;

        let reflection_v1 = reflection_builder(spec.name)
            .build_v1()
            .map_err(|e| MeshError::Reflection(e.to_string()))?;
        let reflection_v1alpha = reflection_builder(spec.name)
            .build_v1alpha()
            .map_err(|e| MeshError::Reflection(e.to_string()))?;

        let tls = soma_identity::server_config(identity).map_err(MeshError::Tls)?;
        let acceptor = TlsAcceptor::from(tls);

        let limits = settings.limits;
        let mut server = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .max_concurrent_streams(limits.max_concurrent_streams)
            .layer(authz);
        let router = server
            .add_routes(spec.routes)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);

        let listener = TcpListener::bind(settings.listen_addr)
            .await
            .map_err(|source| MeshError::Bind {
                addr: settings.listen_addr,
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| MeshError::Bind {
            addr: settings.listen_addr,
            source,
        })?;
        let admin = AdminServer::bind(settings.admin_addr, metrics.clone(), spec.readiness).await?;

        Ok(Self {
            listener,
            local_addr,
            admin,
            acceptor,
            router,
            settings,
            metrics,
            health,
            service_name: spec.name,
            serving: spec.serving,
        })
    }

    /// The bound gRPC (mTLS) address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The bound admin (plaintext, loopback) address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr()
    }

    /// The runtime's counters.
    pub fn metrics(&self) -> Metrics {
        self.metrics.clone()
    }

    /// Serves until `shutdown` resolves, then stops accepting, reports
    /// NOT_SERVING, lets in-flight calls finish within the drain timeout,
    /// and returns.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), MeshError> {
        let Self {
            listener,
            admin,
            acceptor,
            router,
            settings,
            metrics,
            health,
            service_name,
            local_addr,
            serving,
            ..
        } = self;
        let (stop_tx, stop_rx) = watch::channel(false);
        // Health follows the instance's standing until shutdown, which
        // reports NOT_SERVING for good: the gate orders the two.
        let stopping = Arc::new(tokio::sync::Mutex::new(false));
        let standing = serving.map(|serving| {
            tokio::spawn(follow_standing(
                serving,
                health.clone(),
                service_name,
                Arc::clone(&stopping),
            ))
        });
        let (conn_tx, conn_rx) = mpsc::channel::<io::Result<MtlsStream>>(64);

        let accept = tokio::spawn(accept_loop(
            listener,
            acceptor,
            conn_tx,
            settings.limits.handshake_timeout,
            metrics,
            stop_rx.clone(),
        ));
        let admin_task = tokio::spawn(admin.serve(wait_stopped(stop_rx.clone())));

        tracing::info!(service = service_name, addr = %local_addr, "serving");
        let drain = settings.limits.drain_timeout;
        let mut grpc_stop = stop_rx.clone();
        let grpc = router.serve_with_incoming_shutdown(ReceiverStream::new(conn_rx), async move {
            let _ = grpc_stop.wait_for(|stopped| *stopped).await;
        });
        tokio::pin!(grpc);

        let result = tokio::select! {
            r = &mut grpc => r.map_err(MeshError::Transport),
            () = shutdown => {
                tracing::info!(service = service_name, "shutting down");
                let mut stopping = stopping.lock().await;
                *stopping = true;
                let mut health = health.clone();
                health.set_service_status(service_name, tonic_health::ServingStatus::NotServing).await;
                health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
                // Open `Watch` streams (clients following this instance's
                // health) get NOT_SERVING, then end: otherwise each would
                // hold its connection, and the drain, to the timeout.
                health.clear_service_status(service_name).await;
                health.clear_service_status("").await;
                drop(stopping);
                let _ = stop_tx.send(true);
                match tokio::time::timeout(drain, &mut grpc).await {
                    Ok(r) => r.map_err(MeshError::Transport),
                    Err(_) => {
                        tracing::warn!(service = service_name, "drain timeout passed; closing remaining connections");
                        Ok(())
                    }
                }
            }
        };
        let _ = stop_tx.send(true);
        accept.abort();
        if let Some(task) = standing {
            task.abort();
        }
        let _ = admin_task.await;
        result
    }
}

fn health_status(serving: Serving) -> tonic_health::ServingStatus {
    match serving {
        Serving::Yes => tonic_health::ServingStatus::Serving,
        Serving::No(_) => tonic_health::ServingStatus::NotServing,
    }
}

/// Reports `service` (and the whole server) SERVING or NOT_SERVING as
/// `serving` changes, until the service shuts down (`stopping`) or its
/// standing is dropped.
async fn follow_standing(
    mut serving: watch::Receiver<Serving>,
    health: tonic_health::server::HealthReporter,
    service: &'static str,
    stopping: Arc<tokio::sync::Mutex<bool>>,
) {
    loop {
        let now = *serving.borrow_and_update();
        {
            let stopping = stopping.lock().await;
            if *stopping {
                return;
            }
            health.set_service_status(service, health_status(now)).await;
            health.set_service_status("", health_status(now)).await;
        }
        match now {
            Serving::Yes => tracing::info!(service, "serving"),
            Serving::No(reason) => tracing::info!(service, reason, "not serving: standing by"),
        }
        if serving.changed().await.is_err() {
            return;
        }
    }
}

async fn wait_stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stopped| *stopped).await;
}

fn reflection_builder(service: &str) -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(soma_proto::FILE_DESCRIPTOR_SET)
        .with_service_name(service)
        .with_service_name("grpc.health.v1.Health")
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    conns: mpsc::Sender<io::Result<MtlsStream>>,
    handshake_timeout: Duration,
    metrics: Metrics,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stop.wait_for(|s| *s) => return,
        };
        let (tcp, remote_addr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let conns = conns.clone();
        let metrics = metrics.clone();
        let span = tracing::debug_span!("handshake", remote = %remote_addr);
        tokio::spawn(
            async move {
                match tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await {
                    Err(_) => {
                        metrics.handshake(HandshakeOutcome::TimedOut);
                        tracing::warn!(remote = %remote_addr, reason = "handshake_timeout", "tls handshake refused");
                    }
                    Ok(Err(e)) => {
                        metrics.handshake_failed(HandshakeFailure::of(&e));
                        // The SVID verifier logged its own refusals; this
                        // logs the ones rustls makes before it (no client
                        // certificate, protocol errors).
                        soma_identity::log_refused_handshake(&e);
                        tracing::debug!(remote = %remote_addr, reason = %e, "tls handshake refused");
                    }
                    Ok(Ok(tls)) => {
                        let peer = tls
                            .get_ref()
                            .1
                            .peer_certificates()
                            .ok_or(soma_identity::SvidError::EmptyChain)
                            .and_then(soma_identity::peer_spiffe_id);
                        match peer {
                            Ok(spiffe_id) => {
                                metrics.handshake(HandshakeOutcome::Ok);
                                tracing::debug!(remote = %remote_addr, peer = %spiffe_id, "mtls peer connected");
                                let stream =
                                    MtlsStream { tls, peer: Arc::new(PeerInfo { spiffe_id, remote_addr }) };
                                let _ = conns.send(Ok(stream)).await;
                            }
                            Err(e) => {
                                metrics.handshake_failed(HandshakeFailure::NoSpiffeId);
                                tracing::warn!(remote = %remote_addr, reason = %e, "tls handshake refused");
                            }
                        }
                    }
                }
            }
            .instrument(span),
        );
    }
}

/// A verified mTLS connection and its peer.
#[derive(Debug)]
struct MtlsStream {
    tls: TlsStream<TcpStream>,
    peer: Arc<PeerInfo>,
}

impl Connected for MtlsStream {
    type ConnectInfo = Arc<PeerInfo>;

    fn connect_info(&self) -> Self::ConnectInfo {
        Arc::clone(&self.peer)
    }
}

impl AsyncRead for MtlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for MtlsStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }
}
