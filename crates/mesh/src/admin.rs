//! The plaintext admin listener: `/live` and `/ready` (also under the names
//! Kubernetes probes use, `/healthz` and `/readyz`), and `/metrics`.
//!
//! It binds loopback by default and carries no secrets and no RPCs: only
//! process liveness, readiness of the service's dependencies, and counters.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use http::StatusCode;
use tokio::net::TcpListener;

use crate::error::MeshError;
use crate::metrics::Metrics;

type Check = dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync;

/// A readiness check of a service's dependencies; `Err` names what is not
/// ready.
#[derive(Clone)]
pub struct Readiness(Arc<Check>);

impl Readiness {
    /// A check that always passes (a service without dependencies).
    pub fn always() -> Self {
        Self(Arc::new(|| Box::pin(async { Ok(()) })))
    }

    /// A check running `f` on every probe.
    pub fn new<F, Fut>(f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        Self(Arc::new(move || Box::pin(f())))
    }

    /// A check that the service's database answers.
    pub fn of_database(db: soma_store::Database) -> Self {
        Self::new(move || {
            let db = db.clone();
            async move { db.ping().await.map_err(|e| format!("database: {e}")) }
        })
    }

    /// Runs the check.
    pub async fn check(&self) -> Result<(), String> {
        (self.0)().await
    }
}

impl fmt::Debug for Readiness {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Readiness")
    }
}

/// The bound admin listener.
#[derive(Debug)]
pub struct AdminServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    state: AdminState,
}

#[derive(Clone, Debug)]
struct AdminState {
    metrics: Metrics,
    readiness: Readiness,
}

impl AdminServer {
    /// Binds the admin listener.
    pub async fn bind(addr: SocketAddr, metrics: Metrics, readiness: Readiness) -> Result<Self, MeshError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| MeshError::Bind { addr, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| MeshError::Bind { addr, source })?;
        Ok(Self {
            listener,
            local_addr,
            state: AdminState { metrics, readiness },
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until `shutdown` resolves.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), MeshError> {
        let app = Router::new()
            .route("/live", get(|| async { "live\n" }))
            .route("/healthz", get(|| async { "live\n" }))
            .route("/ready", get(ready))
            .route("/readyz", get(ready))
            .route("/metrics", get(metrics))
            .with_state(self.state);
        axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(MeshError::Admin)
    }
}

async fn ready(State(state): State<AdminState>) -> impl IntoResponse {
    match state.readiness.check().await {
        Ok(()) => (StatusCode::OK, "ready\n".to_owned()),
        Err(why) => {
            tracing::warn!(reason = %why, "not ready");
            (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {why}\n"))
        }
    }
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    (
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
}
