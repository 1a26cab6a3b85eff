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

use std::time::Duration;

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

/// `server` (a generated server) with the message limits of `limits`, as
/// routes.
macro_rules! limited {
    ($server:expr, $limits:expr) => {
        Routes::new(
            $server
                .max_decoding_message_size($limits.max_recv_message_bytes)
                .max_encoding_message_size($limits.max_send_message_bytes),
        )
    };
}

/// `kind`'s routes with [`Unimplemented`] handlers and the message limits
/// of `limits`, ready while `db` answers.
pub fn spec(kind: ServiceKind, db: Database, limits: &Limits) -> ServiceSpec {
    let routes = match kind {
        ServiceKind::Gateway => limited!(GatewayServer::new(Unimplemented), limits),
        ServiceKind::ToolRegistry => limited!(ToolRegistryServer::new(Unimplemented), limits),
        ServiceKind::CapsuleRepo => limited!(CapsuleRepoServer::new(Unimplemented), limits),
        ServiceKind::Analytics => limited!(AnalyticsServer::new(Unimplemented), limits),
    };
    ServiceSpec {
        name: kind.grpc_name(),
        routes,
        readiness: Readiness::of_database(db),
        metrics: Vec::new(),
        serving: None,
    }
}

/// Serves `kind` with identity `/svc/<kind>` from `ca` and these settings
/// variables (none: the defaults), on the database `db` (one engine's, from
/// `soma_testing::Stores::of`), with `claims` as its envelope verifier.
pub async fn start(
    ca: &Ca,
    kind: ServiceKind,
    claims: Option<soma_auth::ClaimsVerifier>,
    env: &[(&str, &str)],
    db: &StoreSettings,
) -> Running {
    let identity = ca.store(&kind.spiffe_path(), Duration::from_secs(3600));
    let settings = soma_testing::settings(kind, env);
    let db = Database::connect(db, kind.name()).await.unwrap();
    let spec = spec(kind, db, &settings.limits);
    soma_testing::serve(settings, identity, claims, spec).await
}
