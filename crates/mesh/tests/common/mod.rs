//! The runtime's own builders: any of SomaStack's four services served by
//! the runtime without its service crate (the mesh depends on none), as the
//! generated `soma_proto` server with tonic's default methods, which answer
//! `UNIMPLEMENTED` (what capsule-repo serves today). Its policies are the
//! real ones, read from the protos, so the runtime's checks are the same as
//! in front of the real service; a call the runtime lets through reaches
//! the handler, and only there differs: `UNIMPLEMENTED`.
//!
//! Each is served on a real database of either engine, which its readiness
//! probes, as every service opens its database before it serves.

#![allow(
    dead_code,
    reason = "each test binary uses a different subset of these builders"
)]

use std::sync::Arc;
use std::time::Duration;

use soma_identity::SvidStore;
use soma_mesh::{Limits, Readiness, ServiceKind, ServiceSpec};
use soma_proto::v1::analytics_server::{Analytics, AnalyticsServer};
use soma_proto::v1::capsule_repo_server::{CapsuleRepo, CapsuleRepoServer};
use soma_proto::v1::gateway_server::{Gateway, GatewayServer};
use soma_proto::v1::tool_registry_server::{ToolRegistry, ToolRegistryServer};
use soma_store::{Database, StoreSettings};
use soma_testing::{Ca, Running};
use tonic::service::Routes;

/// A handler for every RPC of every service, each answering `UNIMPLEMENTED`.
#[derive(Clone, Copy, Debug)]
pub struct Unimplemented;

#[tonic::async_trait]
impl Gateway for Unimplemented {}

#[tonic::async_trait]
impl ToolRegistry for Unimplemented {}

#[tonic::async_trait]
impl CapsuleRepo for Unimplemented {}

#[tonic::async_trait]
impl Analytics for Unimplemented {}

/// `kind`'s routes with [`Unimplemented`] handlers and the message limits
/// of `limits`, ready while `db` answers.
pub fn spec(kind: ServiceKind, db: Database, limits: &Limits) -> ServiceSpec {
    let (recv, send) = (limits.max_recv_message_bytes, limits.max_send_message_bytes);
    let routes = match kind {
        ServiceKind::Gateway => Routes::new(
            GatewayServer::new(Unimplemented)
                .max_decoding_message_size(recv)
                .max_encoding_message_size(send),
        ),
        ServiceKind::ToolRegistry => Routes::new(
            ToolRegistryServer::new(Unimplemented)
                .max_decoding_message_size(recv)
                .max_encoding_message_size(send),
        ),
        ServiceKind::CapsuleRepo => Routes::new(
            CapsuleRepoServer::new(Unimplemented)
                .max_decoding_message_size(recv)
                .max_encoding_message_size(send),
        ),
        ServiceKind::Analytics => Routes::new(
            AnalyticsServer::new(Unimplemented)
                .max_decoding_message_size(recv)
                .max_encoding_message_size(send),
        ),
    };
    ServiceSpec {
        name: kind.grpc_name(),
        routes,
        readiness: Readiness::of_database(db),
    }
}

/// Serves `kind` with identity `/svc/<kind>` from `ca`, on the database `db`
/// (one engine's, from `soma_testing::Stores::of`), with `claims` as its
/// envelope verifier.
pub async fn start(
    ca: &Ca,
    kind: ServiceKind,
    claims: Option<soma_auth::ClaimsVerifier>,
    db: &StoreSettings,
) -> Running {
    let store = ca.store(&kind.spiffe_path(), Duration::from_secs(3600));
    start_with(store, kind, claims, &[], db).await
}

/// Serves `kind` with this identity and these settings variables, on the
/// database `db`.
pub async fn start_with(
    store: Arc<SvidStore>,
    kind: ServiceKind,
    claims: Option<soma_auth::ClaimsVerifier>,
    env: &[(&str, &str)],
    db: &StoreSettings,
) -> Running {
    let settings = soma_testing::settings(kind, env);
    let db = Database::connect(db, kind.name()).await.unwrap();
    let spec = spec(kind, db, &settings.limits);
    soma_testing::serve(settings, store, claims, spec).await
}
