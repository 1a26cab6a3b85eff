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

/// A loopback address for a server a test stops and starts again on the
/// same address: a port below the kernel's ephemeral range, so that no
/// outgoing connection of any test (whose source ports come from that
/// range) can take it while the server is down. Free when returned.
pub fn restartable_addr() -> SocketAddr {
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = 20_000u16.min(ephemeral_start.saturating_sub(1_000));
    let span = u32::from(ephemeral_start - low);
    // A start that differs between test processes and calls, then the
    // first free port from there.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let start = (std::process::id() ^ nanos) % span;
    for step in 0..span {
        let port = low + u16::try_from((start + step) % span).unwrap();
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return listener.local_addr().unwrap();
        }
    }
    panic!("no free loopback port between {low} and {ephemeral_start}");
}
