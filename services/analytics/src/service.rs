//! The `somastack.v1.Analytics` RPCs built so far. The others answer
//! `UNIMPLEMENTED` (the generated defaults) until they are built.

use std::sync::Arc;

use soma_mesh::Caller;
use soma_proto::v1 as pb;
use soma_proto::v1::analytics_server::Analytics;
use soma_sign::HmacKeyring;
use soma_store::Database;
use tonic::{Request, Response, Status};

use crate::error::AnalyticsError;
use crate::ledger::{Appended, Ledger, StoredCheckpoint};
use crate::rows::{BillingEvent, CapsuleRun, EventRow as _, NewRow};
use crate::validate;

/// The Analytics service.
#[derive(Clone, Debug)]
pub struct AnalyticsService {
    pub(crate) db: Database,
    pub(crate) ledger: Ledger,
    pub(crate) keys: Arc<HmacKeyring>,
    /// Signs exports (the same key signs checkpoints).
    pub(crate) signer: Arc<soma_sign::Ed25519Signer>,
    /// Longest export window.
    pub(crate) max_export_span: std::time::Duration,
    /// Drill objectives and webhook receivers.
    pub(crate) drills: crate::drills::DrillConfig,
    /// Anomaly scan threshold and minimum sample size.
    pub(crate) anomaly: crate::anomaly::AnomalyConfig,
}

fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    Caller::of(request)
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no verified caller"))
}

fn record_response(event_id: String, appended: Appended) -> pb::RecordResponse {
    pb::RecordResponse {
        event_id,
        ledger: Some(pb::LedgerEntry {
            index: appended.index,
            leaf_hash: appended.leaf_hash.as_bytes().to_vec(),
        }),
    }
}

fn checkpoint_proto(origin: &str, cp: StoredCheckpoint) -> pb::Checkpoint {
    pb::Checkpoint {
        origin: origin.to_owned(),
        tree_size: cp.tree_size,
        root_hash: cp.root.as_bytes().to_vec(),
        note: cp.note,
        key_id: cp.key_id,
    }
}

impl AnalyticsService {
    /// Reads an event's row, checks its MAC and that its ledger leaf is the
    /// one recomputed from it: a row that fails is never served as valid.
    async fn verified_leaf_row(
        &self,
        event_id: &str,
        leaf: &soma_ledger::Hash,
    ) -> Result<(), AnalyticsError> {
        let recomputed = if let Some((row, seal)) = crate::read::capsule_run(&self.db, event_id).await? {
            row.check(&self.keys, &seal)?;
            row.leaf_hash()?
        } else if let Some((row, seal)) = crate::read::billing_event(&self.db, event_id).await? {
            row.check(&self.keys, &seal)?;
            row.leaf_hash()?
        } else if let Some((row, seal)) = crate::regression::transition_row(&self.db, event_id).await? {
            row.check(&self.keys, &seal)?;
            row.leaf_hash()?
        } else if let Some((row, seal)) = crate::anomaly::scan_row(&self.db, event_id).await? {
            row.check(&self.keys, &seal)?;
            row.leaf_hash()?
        } else if let Some((row, seal)) = crate::drills::read_drill(&self.db, event_id).await? {
            row.check(&self.keys, &seal)?;
            row.leaf_hash()?
        } else {
            return Err(AnalyticsError::NotFound(format!("no event row for {event_id}")));
        };
        if &recomputed != leaf {
            return Err(AnalyticsError::RowIntegrity {
                table: "ledger_leaves",
                primary_key: event_id.to_owned(),
            });
        }
        Ok(())
    }

    async fn record_capsule_run_inner(
        &self,
        caller: &Caller,
        r: pb::RecordCapsuleRunRequest,
    ) -> Result<pb::RecordResponse, AnalyticsError> {
        let outcome = match validate::enum_value::<pb::RunOutcome>("outcome", r.outcome)? {
            pb::RunOutcome::Succeeded => "succeeded",
            pb::RunOutcome::Failed => "failed",
            pb::RunOutcome::Refused => "refused",
            pb::RunOutcome::Unspecified => {
                return Err(AnalyticsError::InvalidArgument {
                    field: "outcome",
                    reason: "required".to_owned(),
                });
            }
        };
        let row = CapsuleRun {
            event_id: validate::identifier("event_id", &r.event_id)?,
            tenant: validate::ingest_tenant(caller, &r.tenant)?,
            capsule_id: validate::identifier("capsule_id", &r.capsule_id)?,
            tool: if r.tool.is_empty() {
                String::new()
            } else {
                validate::identifier("tool", &r.tool)?
            },
            run_id: validate::identifier("run_id", &r.run_id)?,
            outcome: outcome.to_owned(),
            started_at: validate::timestamp("started_at", r.started_at.as_ref())?,
            duration_nanos: validate::duration("duration", r.duration.as_ref())?,
            recorded_by: caller.peer.spiffe_id.to_string(),
        };
        let event_id = row.event_id.clone();
        let appended = self.ledger.append(NewRow::CapsuleRun(row)).await?;
        Ok(record_response(event_id, appended))
    }

    async fn record_billing_event_inner(
        &self,
        caller: &Caller,
        r: pb::RecordBillingEventRequest,
    ) -> Result<pb::RecordResponse, AnalyticsError> {
        let amount = r.amount.as_ref().ok_or_else(|| AnalyticsError::InvalidArgument {
            field: "amount",
            reason: "required".to_owned(),
        })?;
        if amount.micros < 0 {
            return Err(AnalyticsError::InvalidArgument {
                field: "amount.micros",
                reason: "must not be negative".to_owned(),
            });
        }
        let row = BillingEvent {
            event_id: validate::identifier("event_id", &r.event_id)?,
            tenant: validate::ingest_tenant(caller, &r.tenant)?,
            tool: validate::identifier("tool", &r.tool)?,
            tool_version: validate::identifier("tool_version", &r.tool_version)?,
            currency: validate::currency("amount.currency", &amount.currency)?,
            amount_micros: amount.micros,
            fuel_consumed: validate::count("fuel_consumed", r.fuel_consumed)?,
            duration_micros: validate::count("duration_micros", r.duration_micros)?,
            occurred_at: validate::timestamp("occurred_at", r.occurred_at.as_ref())?,
            run_id: validate::identifier("run_id", &r.run_id)?,
            recorded_by: caller.peer.spiffe_id.to_string(),
        };
        let event_id = row.event_id.clone();
        let appended = self.ledger.append(NewRow::Billing(row)).await?;
        Ok(record_response(event_id, appended))
    }

    async fn inclusion_proof_inner(
        &self,
        caller: &Caller,
        r: pb::InclusionProofRequest,
    ) -> Result<pb::InclusionProofResponse, AnalyticsError> {
        let event_id = validate::identifier("event_id", &r.event_id)?;
        let (index, tenant, leaf_hash) = self.ledger.leaf_of(&event_id).await?;
        let scope = validate::read_scope(caller, "")?;
        if !validate::in_scope(scope.as_deref(), &tenant) {
            return Err(AnalyticsError::PermissionDenied(format!(
                "event {event_id} belongs to another tenant"
            )));
        }
        self.verified_leaf_row(&event_id, &leaf_hash).await?;
        let checkpoint = if r.tree_size == 0 {
            self.ledger.latest_checkpoint().await?
        } else {
            self.ledger.checkpoint_at(r.tree_size).await?
        };
        if index >= checkpoint.tree_size {
            return Err(AnalyticsError::InvalidArgument {
                field: "tree_size",
                reason: format!("leaf {index} is not in a tree of size {}", checkpoint.tree_size),
            });
        }
        let proof = self.ledger.inclusion_proof(index, checkpoint.tree_size).await?;
        let origin = self.ledger_origin();
        Ok(pb::InclusionProofResponse {
            leaf_index: index,
            tree_size: checkpoint.tree_size,
            leaf_hash: leaf_hash.as_bytes().to_vec(),
            proof: proof.iter().map(|h| h.as_bytes().to_vec()).collect(),
            checkpoint: Some(checkpoint_proto(&origin, checkpoint)),
        })
    }

    async fn consistency_proof_inner(
        &self,
        r: pb::ConsistencyProofRequest,
    ) -> Result<pb::ConsistencyProofResponse, AnalyticsError> {
        let latest = self.ledger.latest_checkpoint().await?;
        let to = if r.to_size == 0 {
            latest.tree_size
        } else {
            r.to_size
        };
        if r.from_size == 0 {
            return Err(AnalyticsError::InvalidArgument {
                field: "from_size",
                reason: "must be at least 1".to_owned(),
            });
        }
        if to > latest.tree_size {
            return Err(AnalyticsError::InvalidArgument {
                field: "to_size",
                reason: format!("the ledger has {} leaves", latest.tree_size),
            });
        }
        if r.from_size > to {
            return Err(AnalyticsError::InvalidArgument {
                field: "from_size",
                reason: format!("{} is larger than to_size {to}", r.from_size),
            });
        }
        let proof = self.ledger.consistency_proof(r.from_size, to).await?;
        Ok(pb::ConsistencyProofResponse {
            from_size: r.from_size,
            to_size: to,
            proof: proof.iter().map(|h| h.as_bytes().to_vec()).collect(),
        })
    }

    fn ledger_origin(&self) -> String {
        self.ledger.origin().to_owned()
    }
}

#[tonic::async_trait]
impl Analytics for AnalyticsService {
    #[tracing::instrument(skip_all, name = "Analytics/RecordCapsuleRun")]
    async fn record_capsule_run(
        &self,
        request: Request<pb::RecordCapsuleRunRequest>,
    ) -> Result<Response<pb::RecordResponse>, Status> {
        let caller = caller(&request)?;
        Ok(Response::new(
            self.record_capsule_run_inner(&caller, request.into_inner())
                .await?,
        ))
    }

    #[tracing::instrument(skip_all, name = "Analytics/RecordBillingEvent")]
    async fn record_billing_event(
        &self,
        request: Request<pb::RecordBillingEventRequest>,
    ) -> Result<Response<pb::RecordResponse>, Status> {
        let caller = caller(&request)?;
        Ok(Response::new(
            self.record_billing_event_inner(&caller, request.into_inner())
                .await?,
        ))
    }

    #[tracing::instrument(skip_all, name = "Analytics/LedgerCheckpoint")]
    async fn ledger_checkpoint(
        &self,
        _request: Request<pb::LedgerCheckpointRequest>,
    ) -> Result<Response<pb::Checkpoint>, Status> {
        let latest = self.ledger.latest_checkpoint().await.map_err(Status::from)?;
        Ok(Response::new(checkpoint_proto(&self.ledger_origin(), latest)))
    }

    #[tracing::instrument(skip_all, name = "Analytics/InclusionProof")]
    async fn inclusion_proof(
        &self,
        request: Request<pb::InclusionProofRequest>,
    ) -> Result<Response<pb::InclusionProofResponse>, Status> {
        let caller = caller(&request)?;
        Ok(Response::new(
            self.inclusion_proof_inner(&caller, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(skip_all, name = "Analytics/ConsistencyProof")]
    async fn consistency_proof(
        &self,
        request: Request<pb::ConsistencyProofRequest>,
    ) -> Result<Response<pb::ConsistencyProofResponse>, Status> {
        Ok(Response::new(
            self.consistency_proof_inner(request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(skip_all, name = "Analytics/RecordDisasterDrill")]
    async fn record_disaster_drill(
        &self,
        request: Request<pb::RecordDisasterDrillRequest>,
    ) -> Result<Response<pb::DisasterDrill>, Status> {
        let caller = caller(&request)?;
        Ok(Response::new(
            crate::drills::record_disaster_drill(self, &caller, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(skip_all, name = "Analytics/DisasterDrillSummary")]
    async fn disaster_drill_summary(
        &self,
        request: Request<pb::DisasterDrillSummaryRequest>,
    ) -> Result<Response<pb::DisasterDrillSummaryResponse>, Status> {
        let caller = caller(&request)?;
        Ok(Response::new(
            crate::drills::disaster_drill_summary(self, &caller, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(skip_all, name = "Analytics/ExportCapsuleRuns")]
    async fn export_capsule_runs(
        &self,
        request: Request<pb::ExportRequest>,
    ) -> Result<Response<crate::export::ExportStream>, Status> {
        let caller = caller(&request)?;
        Ok(Response::new(
            crate::export::export_capsule_runs(self, &caller, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(skip_all, name = "Analytics/ExportBillingLedger")]
    async fn export_billing_ledger(
        &self,
        request: Request<pb::ExportRequest>,
    ) -> Result<Response<crate::export::ExportStream>, Status> {
        let caller = caller(&request)?;
        Ok(Response::new(
            crate::export::export_billing_ledger(self, &caller, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(skip_all, name = "Analytics/ListVerificationKeys")]
    async fn list_verification_keys(
        &self,
        request: Request<pb::ListVerificationKeysRequest>,
    ) -> Result<Response<pb::ListVerificationKeysResponse>, Status> {
        let caller = caller(&request)?;
        Ok(Response::new(
            crate::export::list_verification_keys(self, &caller, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(skip_all, name = "Analytics/TransitionPersonaRegression")]
    async fn transition_persona_regression(
        &self,
        request: Request<pb::TransitionPersonaRegressionRequest>,
    ) -> Result<Response<pb::PersonaRegression>, Status> {
        let caller = caller(&request)?;
        Ok(Response::new(
            crate::regression::transition_persona_regression(self, &caller, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(skip_all, name = "Analytics/ScanAnomalies")]
    async fn scan_anomalies(
        &self,
        request: Request<pb::ScanAnomaliesRequest>,
    ) -> Result<Response<pb::ScanAnomaliesResponse>, Status> {
        let caller = caller(&request)?;
        Ok(Response::new(
            crate::anomaly::scan_anomalies(self, &caller, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(skip_all, name = "Analytics/VerifyStore")]
    async fn verify_store(
        &self,
        _request: Request<pb::VerifyStoreRequest>,
    ) -> Result<Response<pb::VerifyStoreResponse>, Status> {
        let report = crate::verify_store(&self.db, &self.keys)
            .await
            .map_err(Status::from)?;
        for f in &report.failures {
            tracing::warn!(table = %f.table, primary_key = %f.primary_key, reason = %f.reason, "row failed verification");
        }
        Ok(Response::new(pb::VerifyStoreResponse {
            rows_checked: report.rows_checked,
            failures: report
                .failures
                .into_iter()
                .map(|f| pb::StoreFailure {
                    table: f.table,
                    primary_key: f.primary_key,
                    reason: f.reason,
                })
                .collect(),
        }))
    }
}
