//! A service served in-process, as `soma serve` serves it: the mesh
//! runtime's `Application` on 127.0.0.1:0 with real mTLS.

use std::net::SocketAddr;
use std::sync::Arc;

use soma_identity::{SpiffeId, SvidStore};
use soma_mesh::{Application, MeshSettings, Metrics, ServiceKind, ServiceSpec};
use tokio::sync::oneshot;

/// One service running in-process; [`Running::stop`] shuts it down
/// gracefully.
#[derive(Debug)]
pub struct Running {
    /// The mTLS (gRPC) address.
    pub addr: SocketAddr,
    /// The admin listener (plaintext, loopback: `/live`, `/ready`, `/metrics`).
    pub admin: SocketAddr,
    /// The runtime's counters.
    pub metrics: Metrics,
    /// The service's own SPIFFE ID.
    pub id: SpiffeId,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    /// Directories the service reads while it runs (e.g. a development
    /// configuration), removed once it is stopped.
    kept: Vec<tempfile::TempDir>,
}

impl Running {
    /// Keeps `dir` until the service is stopped (or dropped).
    #[must_use]
    pub fn keeping(mut self, dir: tempfile::TempDir) -> Self {
        self.kept.push(dir);
        self
    }

    /// Signals shutdown and waits for the runtime to drain and return; a
    /// runtime that returns an error fails the test here.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }
}

/// The settings of `kind` with these environment variables (and defaults
/// otherwise: both listeners on 127.0.0.1:0).
pub fn settings(kind: ServiceKind, env: &[(&str, &str)]) -> MeshSettings {
    MeshSettings::load(kind, None, |name| {
        env.iter().find(|(n, _)| *n == name).map(|(_, v)| (*v).to_owned())
    })
    .unwrap()
}

/// Serves `spec` under `identity` with `settings`, verifying claims
/// envelopes with `claims` when given: `Application::build`, then
/// `run_until_stopped` on its own task until [`Running::stop`].
pub async fn serve(
    settings: MeshSettings,
    identity: Arc<SvidStore>,
    claims: Option<soma_auth::ClaimsVerifier>,
    spec: ServiceSpec,
) -> Running {
    let id = identity.own_id().clone();
    let app = Application::build(settings, identity, claims, spec)
        .await
        .unwrap();
    let (addr, admin, metrics) = (app.local_addr(), app.admin_addr(), app.metrics());
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        app.run_until_stopped(async move {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    Running {
        addr,
        admin,
        metrics,
        id,
        stop: Some(tx),
        task: Some(task),
        kept: Vec::new(),
    }
}
