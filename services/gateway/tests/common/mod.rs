//! The `Gateway` service as the kill switch tests drive it: built on a
//! database the test holds, served over real mTLS on 127.0.0.1:0, and an
//! operator's gRPC client.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::time::Duration;

use soma_mesh::ServiceKind;
use soma_proto::v1::gateway_client::GatewayClient;
use soma_store::Database;
use soma_testing::{Ca, Running};
use tonic::transport::Channel;

/// A served gateway and an operator's client of it.
pub struct Served {
    /// The running service (stop it at the end).
    pub running: Running,
    /// `/operator/alice`'s client.
    pub client: GatewayClient<Channel>,
    /// The kill switch poller (abort it at the end).
    pub poller: tokio::task::JoinHandle<()>,
    /// The development config's files, kept as long as the service runs.
    _config_dir: tempfile::TempDir,
}

/// Serves the gateway over `db` (migrated here), with no poller re-reading
/// the kill switches meanwhile: each statement a test waits on or cuts is
/// the one it means.
pub async fn serve_gateway(db: &Database) -> Served {
    db.migrate(&soma_gateway::MIGRATIONS).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut config =
        soma_gateway::GatewayConfig::dev(dir.path(), &soma_gateway::Region::parse("local").unwrap(), None)
            .unwrap();
    config.kill_switch_poll_interval = Duration::from_secs(3600);
    let ca = Ca::new();
    let identity = ca.store("/svc/gateway", Duration::from_secs(3600));
    let settings = soma_testing::settings(ServiceKind::Gateway, &[]);
    let gateway = soma_gateway::Gateway::build(
        db.clone(),
        &settings.limits,
        config,
        &identity,
        &settings.peers,
        soma_auth::ClaimsSigner::generate("gateway-1").unwrap().0,
    )
    .await
    .unwrap();
    let running = soma_testing::serve(settings, identity, None, gateway.spec).await;
    let client = GatewayClient::new(soma_testing::channel(
        ca.store("/operator/alice", Duration::from_secs(3600)),
        running.addr,
        &running.id,
    ));
    Served {
        running,
        client,
        poller: gateway.poller,
        _config_dir: dir,
    }
}
