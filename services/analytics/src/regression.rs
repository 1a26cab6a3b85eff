//! Persona regressions: a state machine with optimistic concurrency, each
//! transition audited in the ledger.

use soma_mesh::Caller;
use soma_proto::v1 as pb;
use tonic::Status;

use crate::service::AnalyticsService;

/// `TransitionPersonaRegression`.
pub(crate) async fn transition_persona_regression(
    _svc: &AnalyticsService,
    _caller: &Caller,
    _request: pb::TransitionPersonaRegressionRequest,
) -> Result<pb::PersonaRegression, Status> {
    Err(Status::unimplemented("TransitionPersonaRegression is not built yet"))
}
