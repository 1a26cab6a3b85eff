//! Assembly: the gateway's mesh service, its edge and the kill switch
//! poller built from the settings ([`Gateway::build`]), and the bound edge
//! that serves until shut down ([`EdgeServer::serve`]).

use std::net::SocketAddr;
use std::sync::Arc;

use soma_auth::{ClaimsSigner, JwtVerifier};
use soma_identity::SvidStore;
use soma_mesh::{Limits, Peers, Readiness, ServiceSpec};
use soma_proto::v1::gateway_server::GatewayServer;
use soma_store::Database;
use tokio::net::TcpListener;
use tonic::service::Routes;

use crate::admission::Admission;
use crate::capsule_run::CapsuleRunner;
use crate::config::{EdgeConnections, GatewayConfig};
use crate::edge::{self, EdgeState};
use crate::error::BuildError;
use crate::listener::{self, ConnectionMetrics};
use crate::service::GatewayService;
use crate::{forward, killswitch, moderation, openapi, ratelimit, routes};

/// The assembled gateway: its mesh service and, when configured, its edge.
#[derive(Debug)]
pub struct Gateway {
    /// The `Gateway` service as the mesh runtime serves it.
    pub spec: ServiceSpec,
    /// The edge, bound and ready to serve.
    pub edge: Option<EdgeServer>,
    /// The kill switch poller (aborted when the gateway stops).
    pub poller: tokio::task::JoinHandle<()>,
}

impl Gateway {
    /// Assembles the gateway: token verifier, kill switches, moderator, rate
    /// limiter, backend channels, the edge's route table and OpenAPI
    /// document; binds the edge.
    pub async fn build(
        db: Database,
        limits: &Limits,
        config: GatewayConfig,
        store: &Arc<SvidStore>,
        peers: &Peers,
        signer: ClaimsSigner,
    ) -> Result<Self, BuildError> {
        let leeway = config.jwt.leeway;
        let verifier = JwtVerifier::new(config.jwt.clone())
            .await
            .map_err(|e| BuildError::Jwt(e.to_string()))?;
        let kill_switches = killswitch::KillSwitches::load(db.clone()).await?;
        let poller = kill_switches.spawn_poller(config.kill_switch_poll_interval);
        let kill_switch_metrics = kill_switches.clone();
        let policy = match &config.moderation_policy_file {
            Some(path) => moderation::ModerationPolicy::from_file(path)
                .map_err(|e| BuildError::Moderation(e.to_string()))?,
            None => moderation::ModerationPolicy::default_policy(),
        };
        let moderator = moderation::Moderator::new(policy);
        let moderation_metrics = moderator.clone();
        let admission = Admission::new(
            verifier,
            config.residency.clone(),
            config.mfa_max_age,
            leeway,
            kill_switches,
            moderator,
            ratelimit::RateLimiter::new(config.rate_limit),
            db.clone(),
        );
        let routes = routes::RouteTable::from_descriptors(&soma_proto::SERVICE_NAMES)
            .map_err(|e| BuildError::Routes(e.to_string()))?;
        let methods: Vec<String> = routes.iter().map(|r| r.grpc_path.clone()).collect();
        let backends = forward::Backends::new(
            store,
            peers,
            signer,
            config.envelope_ttl,
            limits.max_recv_message_bytes,
            config.backend_timeout,
        )?;
        let runner = CapsuleRunner::new(backends.clone()).map_err(|e| BuildError::Routes(e.to_string()))?;
        let service = GatewayService::new(admission.clone(), methods, runner);

        let server = GatewayServer::new(service.clone())
            .max_decoding_message_size(limits.max_recv_message_bytes)
            .max_encoding_message_size(limits.max_send_message_bytes);
        let spec = ServiceSpec {
            name: "somastack.v1.Gateway",
            routes: Routes::new(server),
            readiness: Readiness::of_database(db),
            metrics: vec![Arc::new(kill_switch_metrics), Arc::new(moderation_metrics)],
            serving: None,
        };

        let edge = match config.edge_addr {
            None => None,
            Some(addr) => {
                let listener = TcpListener::bind(addr)
                    .await
                    .map_err(|source| BuildError::Bind { addr, source })?;
                let local_addr = listener
                    .local_addr()
                    .map_err(|source| BuildError::Bind { addr, source })?;
                let info = openapi::OpenApiInfo {
                    title: "SomaStack".to_owned(),
                    version: env!("CARGO_PKG_VERSION").to_owned(),
                    server_url: None,
                };
                let document = openapi::openapi(&routes, &info);
                let tls = match (&config.edge_tls_cert_file, &config.edge_tls_key_file) {
                    (Some(cert), Some(key)) => Some(edge::tls_config(cert, key).map_err(BuildError::Tls)?),
                    _ => None,
                };
                let connections = config.connections;
                let max_header_bytes = config.limits.max_header_bytes;
                let state = EdgeState::new(
                    routes,
                    admission,
                    backends,
                    service,
                    config.limits,
                    config.cors_allowed_origins.clone(),
                    bytes::Bytes::from(document.to_string()),
                )
                .with_max_headers(connections.max_headers);
                Some(EdgeServer {
                    listener,
                    local_addr,
                    state: Arc::new(state),
                    tls,
                    connections,
                    max_header_bytes,
                    metrics: ConnectionMetrics::default(),
                })
            }
        };
        Ok(Self { spec, edge, poller })
    }
}

/// The bound edge listener.
#[derive(Debug)]
pub struct EdgeServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    state: Arc<EdgeState>,
    tls: Option<Arc<rustls::ServerConfig>>,
    connections: EdgeConnections,
    max_header_bytes: usize,
    metrics: ConnectionMetrics,
}

impl EdgeServer {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Whether the edge speaks HTTPS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The edge's connection counters (open, refused and closed by
    /// reason), shared with the running listener: read them after `serve`
    /// has taken the server, or register them with the admin listener.
    pub fn connection_metrics(&self) -> ConnectionMetrics {
        self.metrics.clone()
    }

    /// The edge's request counters (by route, status and refusal reason),
    /// shared with the running edge like [`EdgeServer::connection_metrics`].
    pub fn request_metrics(&self) -> crate::EdgeMetrics {
        self.state.metrics()
    }

    /// Serves until `shutdown` resolves, then lets in-flight requests finish.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let router = edge::router(self.state);
        let listener = listener::Listener {
            listener: self.listener,
            tls: self.tls,
            settings: self.connections,
            max_header_bytes: self.max_header_bytes,
            metrics: self.metrics,
        };
        listener.serve(router, shutdown).await;
        Ok(())
    }
}
