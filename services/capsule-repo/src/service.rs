//! The gRPC surface: each RPC takes the verified caller from the request's
//! extensions (the mesh put it there after authorizing the peer and
//! verifying the claims envelope) and calls the repository.

use soma_mesh::{Caller, Limits, Readiness, ServiceSpec};
use soma_proto::v1 as pb;
use soma_proto::v1::capsule_repo_server::{CapsuleRepo, CapsuleRepoServer};
use soma_store::Database;
use tonic::service::Routes;
use tonic::{Request, Response, Status};

use crate::error::RepoError;
use crate::{Actor, Repo};

/// The CapsuleRepo service.
#[derive(Clone, Debug)]
pub struct CapsuleRepoService {
    repo: Repo,
}

impl CapsuleRepoService {
    /// The service over `repo`.
    pub fn new(repo: Repo) -> Self {
        Self { repo }
    }
}

fn actor<T>(request: &Request<T>) -> Result<Actor, RepoError> {
    Caller::of(request)
        .map(Actor::of)
        .ok_or(RepoError::Unauthenticated)
}

#[tonic::async_trait]
impl CapsuleRepo for CapsuleRepoService {
    #[tracing::instrument(skip_all, name = "CapsuleRepo/SubmitCapsule")]
    async fn submit_capsule(
        &self,
        request: Request<pb::SubmitCapsuleRequest>,
    ) -> Result<Response<pb::Submission>, Status> {
        let actor = actor(&request)?;
        Ok(Response::new(
            self.repo.submit(&actor, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(skip_all, name = "CapsuleRepo/GetSubmission")]
    async fn get_submission(
        &self,
        request: Request<pb::GetSubmissionRequest>,
    ) -> Result<Response<pb::Submission>, Status> {
        let actor = actor(&request)?;
        let r = request.into_inner();
        Ok(Response::new(self.repo.get(&actor, &r.submission_id).await?))
    }

    #[tracing::instrument(skip_all, name = "CapsuleRepo/ListSubmissions")]
    async fn list_submissions(
        &self,
        request: Request<pb::ListSubmissionsRequest>,
    ) -> Result<Response<pb::ListSubmissionsResponse>, Status> {
        let actor = actor(&request)?;
        Ok(Response::new(self.repo.list(&actor, request.into_inner()).await?))
    }

    #[tracing::instrument(skip_all, name = "CapsuleRepo/ReviewSubmission")]
    async fn review_submission(
        &self,
        request: Request<pb::ReviewSubmissionRequest>,
    ) -> Result<Response<pb::Review>, Status> {
        let actor = actor(&request)?;
        Ok(Response::new(
            self.repo.review(&actor, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(skip_all, name = "CapsuleRepo/ListReviewHistory")]
    async fn list_review_history(
        &self,
        request: Request<pb::ListReviewHistoryRequest>,
    ) -> Result<Response<pb::ListReviewHistoryResponse>, Status> {
        let actor = actor(&request)?;
        let r = request.into_inner();
        Ok(Response::new(self.repo.history(&actor, &r.submission_id).await?))
    }

    #[tracing::instrument(skip_all, name = "CapsuleRepo/CreateInstallation")]
    async fn create_installation(
        &self,
        request: Request<pb::CreateInstallationRequest>,
    ) -> Result<Response<pb::Installation>, Status> {
        let actor = actor(&request)?;
        Ok(Response::new(
            self.repo
                .create_installation(&actor, request.into_inner())
                .await?,
        ))
    }

    #[tracing::instrument(skip_all, name = "CapsuleRepo/UpdateInstallation")]
    async fn update_installation(
        &self,
        request: Request<pb::UpdateInstallationRequest>,
    ) -> Result<Response<pb::Installation>, Status> {
        let actor = actor(&request)?;
        Ok(Response::new(
            self.repo
                .update_installation(&actor, request.into_inner())
                .await?,
        ))
    }

    #[tracing::instrument(skip_all, name = "CapsuleRepo/ListInstallations")]
    async fn list_installations(
        &self,
        request: Request<pb::ListInstallationsRequest>,
    ) -> Result<Response<pb::ListInstallationsResponse>, Status> {
        let actor = actor(&request)?;
        Ok(Response::new(
            self.repo.list_installations(&actor, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(skip_all, name = "CapsuleRepo/RollbackInstallation")]
    async fn rollback_installation(
        &self,
        request: Request<pb::RollbackInstallationRequest>,
    ) -> Result<Response<pb::Installation>, Status> {
        let actor = actor(&request)?;
        Ok(Response::new(
            self.repo
                .rollback_installation(&actor, request.into_inner())
                .await?,
        ))
    }

    #[tracing::instrument(skip_all, name = "CapsuleRepo/ImportTemplate")]
    async fn import_template(
        &self,
        request: Request<pb::ImportTemplateRequest>,
    ) -> Result<Response<pb::Submission>, Status> {
        let actor = actor(&request)?;
        Ok(Response::new(
            self.repo.import(&actor, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(skip_all, name = "CapsuleRepo/SetPublisherThreshold")]
    async fn set_publisher_threshold(
        &self,
        request: Request<pb::SetPublisherThresholdRequest>,
    ) -> Result<Response<pb::PublisherThreshold>, Status> {
        let actor = actor(&request)?;
        Ok(Response::new(
            self.repo
                .set_publisher_threshold(&actor, request.into_inner())
                .await?,
        ))
    }

    #[tracing::instrument(skip_all, name = "CapsuleRepo/ResolveCapsuleRun")]
    async fn resolve_capsule_run(
        &self,
        request: Request<pb::ResolveCapsuleRunRequest>,
    ) -> Result<Response<pb::ResolvedCapsuleRun>, Status> {
        let actor = actor(&request)?;
        Ok(Response::new(
            self.repo.resolve(&actor, request.into_inner()).await?,
        ))
    }
}

/// The service as the mesh runtime serves it.
pub fn spec(db: Database, repo: Repo, limits: &Limits) -> ServiceSpec {
    let outbox: std::sync::Arc<dyn soma_mesh::MetricsSource> = repo.outbox_metrics();
    let server = CapsuleRepoServer::new(CapsuleRepoService::new(repo))
        .max_decoding_message_size(limits.max_recv_message_bytes)
        .max_encoding_message_size(limits.max_send_message_bytes);
    ServiceSpec {
        name: "somastack.v1.CapsuleRepo",
        routes: Routes::new(server),
        readiness: Readiness::of_database(db),
        metrics: vec![outbox],
        serving: None,
    }
}
