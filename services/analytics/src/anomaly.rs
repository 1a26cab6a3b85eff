//! Anomaly scans: robust statistics (median / MAD modified z-scores) over a
//! tenant's window, findings persisted with their evidence, each scan
//! audited in the ledger.

use soma_mesh::Caller;
use soma_proto::v1 as pb;
use tonic::Status;

use crate::service::AnalyticsService;

/// `ScanAnomalies`.
pub(crate) async fn scan_anomalies(
    _svc: &AnalyticsService,
    _caller: &Caller,
    _request: pb::ScanAnomaliesRequest,
) -> Result<pb::ScanAnomaliesResponse, Status> {
    Err(Status::unimplemented("ScanAnomalies is not built yet"))
}
