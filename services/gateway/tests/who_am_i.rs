//! `WhoAmI` over the mesh: the gateway served in-process by the runtime on
//! 127.0.0.1:0 (its mTLS listener, without the edge), on SQLite and on
//! PostgreSQL, answers an operator's SVID with the peer the handshake
//! verified.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use soma_auth::ClaimsSigner;
use soma_gateway::{Gateway, GatewayConfig, Region};
use soma_mesh::ServiceKind;
use soma_store::{Database, StoreSettings};
use soma_testing::{Ca, Running, TD, channel, engine_stores};

/// Starts the gateway (identity `/svc/gateway` from `ca`) in its development
/// configuration, on the database `db`.
async fn start_gateway(ca: &Ca, db: &StoreSettings) -> Running {
    let store = ca.store("/svc/gateway", Duration::from_secs(3600));
    // The development configuration (its issuer keys) lives here, for as
    // long as the gateway runs.
    let dir = tempfile::tempdir().unwrap();
    let config = GatewayConfig::dev(dir.path(), &Region::parse("local").unwrap(), None).unwrap();
    let settings = soma_testing::settings(ServiceKind::Gateway, &[]);
    let db = Database::connect(db, "gateway").await.unwrap();
    db.migrate(&soma_gateway::MIGRATIONS).await.unwrap();
    let (signer, _) = ClaimsSigner::generate("gateway-1").unwrap();
    let gateway = Gateway::build(db, &settings.limits, config, &store, &settings.peers, signer)
        .await
        .unwrap();
    soma_testing::serve(settings, store, None, gateway.spec)
        .await
        .keeping(dir)
}

#[tokio::test]
async fn gateway_who_am_i_returns_the_verified_peer() {
    for stores in engine_stores(&[ServiceKind::Gateway]).await {
        let ca = Ca::new();
        let svc = start_gateway(&ca, stores.of(ServiceKind::Gateway)).await;
        let operator = ca.store("/operator/alice", Duration::from_secs(600));
        let mut client =
            soma_proto::v1::gateway_client::GatewayClient::new(channel(operator, svc.addr, &svc.id));
        let me = client
            .who_am_i(soma_proto::v1::WhoAmIRequest {})
            .await
            .unwrap()
            .into_inner();
        assert_eq!(me.peer_spiffe_id, format!("spiffe://{TD}/operator/alice"));
        assert!(me.tenant.is_empty());
        svc.stop().await;
        stores.cleanup().await;
    }
}
