//! Signed JSON exports of capsule runs and billing events, and the public
//! keys that verify them.

use std::pin::Pin;

use soma_mesh::Caller;
use soma_proto::v1 as pb;
use tonic::Status;

use crate::service::AnalyticsService;

/// A streamed export: data chunks, then the signature.
pub(crate) type ExportStream = Pin<Box<dyn futures_core::Stream<Item = Result<pb::ExportChunk, Status>> + Send>>;

/// `ExportCapsuleRuns`.
pub(crate) async fn export_capsule_runs(
    _svc: &AnalyticsService,
    _caller: &Caller,
    _request: pb::ExportRequest,
) -> Result<ExportStream, Status> {
    Err(Status::unimplemented("ExportCapsuleRuns is not built yet"))
}

/// `ExportBillingLedger`.
pub(crate) async fn export_billing_ledger(
    _svc: &AnalyticsService,
    _caller: &Caller,
    _request: pb::ExportRequest,
) -> Result<ExportStream, Status> {
    Err(Status::unimplemented("ExportBillingLedger is not built yet"))
}

/// `ListVerificationKeys`.
pub(crate) async fn list_verification_keys(
    _svc: &AnalyticsService,
    _caller: &Caller,
    _request: pb::ListVerificationKeysRequest,
) -> Result<pb::ListVerificationKeysResponse, Status> {
    Err(Status::unimplemented("ListVerificationKeys is not built yet"))
}
