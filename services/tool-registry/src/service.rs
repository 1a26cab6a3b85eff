//! The gRPC surface: each RPC takes the verified caller from the request's
//! extensions (the mesh put it there after authorizing the peer and
//! verifying the claims envelope) and calls the registry.

use soma_mesh::{Caller, Limits, Readiness, ServiceSpec};
use soma_proto::v1 as pb;
use soma_proto::v1::tool_registry_server::{ToolRegistry, ToolRegistryServer};
use soma_store::Database;
use tonic::service::Routes;
use tonic::{Request, Response, Status};

use crate::error::RegistryError;
use crate::{Actor, Registry};

/// The ToolRegistry service.
#[derive(Clone, Debug)]
pub struct ToolRegistryService {
    registry: Registry,
}

impl ToolRegistryService {
    /// The service over `registry`.
    pub fn new(registry: Registry) -> Self {
        Self { registry }
    }
}

fn caller<T>(request: &Request<T>) -> Result<Caller, RegistryError> {
    Caller::of(request).cloned().ok_or(RegistryError::Unauthenticated)
}

fn actor<T>(request: &Request<T>) -> Result<Actor, RegistryError> {
    Ok(Actor::of(&caller(request)?))
}

/// An operator: an operator SVID without claims, or claims sealed as an
/// operator's.
fn operator<T>(request: &Request<T>) -> Result<Actor, RegistryError> {
    let caller = caller(request)?;
    if !caller.is_operator() {
        return Err(RegistryError::OperatorRequired(format!(
            "{} is not an operator",
            Actor::of(&caller).id
        )));
    }
    let mut actor = Actor::of(&caller);
    // An operator acts for the platform, never as a tenant.
    actor.tenant_claims = false;
    Ok(actor)
}

#[tonic::async_trait]
impl ToolRegistry for ToolRegistryService {
    #[tracing::instrument(skip_all, name = "ToolRegistry/PublishRelease")]
    async fn publish_release(
        &self,
        request: Request<pb::PublishReleaseRequest>,
    ) -> Result<Response<pb::Release>, Status> {
        let actor = actor(&request)?;
        Ok(Response::new(
            self.registry.publish(&actor, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(skip_all, name = "ToolRegistry/GetRelease")]
    async fn get_release(
        &self,
        request: Request<pb::GetReleaseRequest>,
    ) -> Result<Response<pb::Release>, Status> {
        let r = request.into_inner();
        Ok(Response::new(self.registry.get(&r.tool, &r.version).await?))
    }

    #[tracing::instrument(skip_all, name = "ToolRegistry/ListReleases")]
    async fn list_releases(
        &self,
        request: Request<pb::ListReleasesRequest>,
    ) -> Result<Response<pb::ListReleasesResponse>, Status> {
        let r = request.into_inner();
        Ok(Response::new(self.registry.list(&r.tool, r.page).await?))
    }

    #[tracing::instrument(skip_all, name = "ToolRegistry/VerifyRelease")]
    async fn verify_release(
        &self,
        request: Request<pb::VerifyReleaseRequest>,
    ) -> Result<Response<pb::VerifyReleaseResponse>, Status> {
        let r = request.into_inner();
        Ok(Response::new(self.registry.verify(&r.tool, &r.version).await?))
    }

    #[tracing::instrument(skip_all, name = "ToolRegistry/RevokeRelease")]
    async fn revoke_release(
        &self,
        request: Request<pb::RevokeReleaseRequest>,
    ) -> Result<Response<pb::Release>, Status> {
        let actor = actor(&request)?;
        let r = request.into_inner();
        Ok(Response::new(
            self.registry
                .revoke(&actor, &r.tool, &r.version, &r.reason)
                .await?,
        ))
    }

    #[tracing::instrument(skip_all, name = "ToolRegistry/ExecuteTool")]
    async fn execute_tool(
        &self,
        request: Request<pb::ExecuteToolRequest>,
    ) -> Result<Response<pb::ExecuteToolResponse>, Status> {
        let actor = actor(&request)?;
        Ok(Response::new(
            self.registry.execute(&actor, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(skip_all, name = "ToolRegistry/ExecuteCapsuleStep")]
    async fn execute_capsule_step(
        &self,
        request: Request<pb::ExecuteCapsuleStepRequest>,
    ) -> Result<Response<pb::ExecuteToolResponse>, Status> {
        let actor = actor(&request)?;
        Ok(Response::new(
            self.registry
                .execute_capsule_step(&actor, request.into_inner())
                .await?,
        ))
    }

    #[tracing::instrument(skip_all, name = "ToolRegistry/AddPublisherKey")]
    async fn add_publisher_key(
        &self,
        request: Request<pb::AddPublisherKeyRequest>,
    ) -> Result<Response<pb::PublisherKey>, Status> {
        let actor = operator(&request)?;
        let r = request.into_inner();
        Ok(Response::new(
            self.registry
                .add_publisher_key(&actor, &r.name, &r.public_key_pem)
                .await?,
        ))
    }

    #[tracing::instrument(skip_all, name = "ToolRegistry/ListPublisherKeys")]
    async fn list_publisher_keys(
        &self,
        _request: Request<pb::ListPublisherKeysRequest>,
    ) -> Result<Response<pb::ListPublisherKeysResponse>, Status> {
        Ok(Response::new(pb::ListPublisherKeysResponse {
            keys: self.registry.publisher_keys().await?,
        }))
    }

    #[tracing::instrument(skip_all, name = "ToolRegistry/RetirePublisherKey")]
    async fn retire_publisher_key(
        &self,
        request: Request<pb::RetirePublisherKeyRequest>,
    ) -> Result<Response<pb::PublisherKey>, Status> {
        let actor = operator(&request)?;
        let r = request.into_inner();
        Ok(Response::new(
            self.registry
                .retire_publisher_key(&actor, &r.key_id, &r.reason)
                .await?,
        ))
    }
}

/// The service as the mesh runtime serves it.
pub fn spec(db: Database, registry: Registry, limits: &Limits) -> ServiceSpec {
    let outbox: std::sync::Arc<dyn soma_mesh::MetricsSource> = registry.outbox.metrics();
    let server = ToolRegistryServer::new(ToolRegistryService::new(registry))
        .max_decoding_message_size(limits.max_recv_message_bytes)
        .max_encoding_message_size(limits.max_send_message_bytes);
    ServiceSpec {
        name: "somastack.v1.ToolRegistry",
        routes: Routes::new(server),
        readiness: Readiness::of_database(db),
        metrics: vec![outbox],
        serving: None,
    }
}
