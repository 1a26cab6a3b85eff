//! Disaster-recovery drills: RTO/RPO computed by the server, per-region
//! summaries, and signed webhook notifications of failed drills.

use soma_mesh::Caller;
use soma_proto::v1 as pb;
use tonic::Status;

use crate::service::AnalyticsService;

/// Drill objectives and webhook receivers.
#[derive(Clone, Debug, Default)]
pub struct DrillConfig {}

impl DrillConfig {
    /// Reads the drill settings from the environment.
    pub fn from_env(_env: impl Fn(&str) -> Option<String>) -> Result<Self, crate::AnalyticsError> {
        Ok(Self {})
    }
}

/// `RecordDisasterDrill`.
pub(crate) async fn record_disaster_drill(
    _svc: &AnalyticsService,
    _caller: &Caller,
    _request: pb::RecordDisasterDrillRequest,
) -> Result<pb::DisasterDrill, Status> {
    Err(Status::unimplemented("RecordDisasterDrill is not built yet"))
}

/// `DisasterDrillSummary`.
pub(crate) async fn disaster_drill_summary(
    _svc: &AnalyticsService,
    _caller: &Caller,
    _request: pb::DisasterDrillSummaryRequest,
) -> Result<pb::DisasterDrillSummaryResponse, Status> {
    Err(Status::unimplemented("DisasterDrillSummary is not built yet"))
}
