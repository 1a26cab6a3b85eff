//! Gateway: the tenants' only door.
//!
//! What is built so far: the service's place in the mesh and `WhoAmI`,
//! which returns the caller the runtime verified (mTLS peer and, when
//! present, the verified claims). The tenant admission pipeline (JWT,
//! residency, capabilities, kill switches, moderation) and the JSON edge are
//! not built yet; `RunCapsule`, `ListKillSwitches` and `SetKillSwitch`
//! answer `UNIMPLEMENTED` until they are.

use soma_mesh::{Caller, Limits, Readiness, ServiceSpec};
use soma_proto::v1::gateway_server::{Gateway, GatewayServer};
use soma_proto::v1::{WhoAmIRequest, WhoAmIResponse};
use soma_store::{Database, Migrations};
use tonic::service::Routes;
use tonic::{Request, Response, Status};

/// The service's migrations (none yet).
pub static MIGRATIONS: Migrations = Migrations(&[]);

/// The Gateway service.
#[derive(Clone, Debug)]
pub struct GatewayService {
    _db: Database,
}

#[tonic::async_trait]
impl Gateway for GatewayService {
    #[tracing::instrument(skip_all, name = "Gateway/WhoAmI")]
    async fn who_am_i(&self, request: Request<WhoAmIRequest>) -> Result<Response<WhoAmIResponse>, Status> {
        let caller = Caller::of(&request).ok_or_else(|| Status::unauthenticated("no verified caller"))?;
        let mut response = WhoAmIResponse {
            peer_spiffe_id: caller.peer.spiffe_id.to_string(),
            ..Default::default()
        };
        if let Some(c) = &caller.claims {
            response.tenant.clone_from(&c.tenant);
            response.subject.clone_from(&c.subject);
            response.region.clone_from(&c.region);
            response.capabilities.clone_from(&c.capabilities);
            response.mfa = c.mfa;
            response.request_id.clone_from(&c.request_id);
        }
        Ok(Response::new(response))
    }
}

/// The service as the mesh runtime serves it.
pub fn spec(db: Database, limits: &Limits) -> ServiceSpec {
    let server = GatewayServer::new(GatewayService { _db: db.clone() })
        .max_decoding_message_size(limits.max_recv_message_bytes)
        .max_encoding_message_size(limits.max_send_message_bytes);
    ServiceSpec {
        name: "somastack.v1.Gateway",
        routes: Routes::new(server),
        readiness: Readiness::of_database(db),
    }
}
