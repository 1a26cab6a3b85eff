//! The `somastack.v1.Analytics` RPCs: each handler takes the verified
//! caller and hands the request to the module that owns it; errors become
//! `tonic::Status` in one place ([`crate::error`]).

use std::sync::Arc;

use soma_ledger::CheckpointSigner;
use soma_mesh::{Caller, Limits, Readiness, ServiceSpec};
use soma_proto::v1 as pb;
use soma_proto::v1::analytics_server::{Analytics, AnalyticsServer};
use soma_sign::HmacKeyring;
use soma_store::Database;
use tonic::service::Routes;
use tonic::{Request, Response, Status};

use crate::config::AnalyticsConfig;
use crate::convert::to_u64;
use crate::error::AnalyticsError;
use crate::integrity::Health;
use crate::ledger::{Appended, Ledger, StoredCheckpoint};
use crate::tables::audit_events::AuditEvent;
use crate::tables::billing::BillingEvent;
use crate::tables::capsule_runs::CapsuleRun;
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
    pub(crate) drills: crate::config::DrillConfig,
    /// Anomaly scan threshold and minimum sample size.
    pub(crate) anomaly: crate::config::AnomalyConfig,
    /// The drills recorded since start-up, for `/metrics`.
    pub(crate) drill_metrics: Arc<crate::metrics::DrillGauges>,
}

/// The service as the mesh runtime serves it: verifies the stored ledger
/// and starts its writer first.
///
/// On PostgreSQL the instance writes only while its ledger writer holds the
/// lease (see the crate documentation); until then it stands by: health
/// NOT_SERVING, `/readyz` not ready (`standby: …`), every method not
/// declared `read_only` refused UNAVAILABLE with reason `standby` by the
/// runtime, the read-only ones answered.
pub async fn spec(
    db: Database,
    limits: &Limits,
    config: AnalyticsConfig,
) -> Result<ServiceSpec, AnalyticsError> {
    let signer = CheckpointSigner::from_pkcs8_pem(config.ledger_origin.clone(), &config.signing_key_pem)?;
    let keys = Arc::new(config.row_keys);
    let export_signer = Arc::new(soma_sign::Ed25519Signer::from_pkcs8_pem(
        soma_sign::KeyId::new(config.signing_key_id.clone())?,
        &config.signing_key_pem,
    )?);
    let ledger = Ledger::open(
        db.clone(),
        Arc::clone(&keys),
        signer,
        config.signing_key_id.clone(),
        Arc::clone(&export_signer),
    )
    .await?;
    // Delivers pending webhook notifications, including those left by an
    // earlier run; it ends when the service is dropped.
    let webhooks = Arc::new(soma_mesh::OutboxMetrics::new(crate::webhook::LABEL));
    crate::webhook::spawn(
        db.clone(),
        Arc::clone(&keys),
        &config.drills.webhooks,
        Arc::clone(&webhooks),
        ledger.standing(),
    );
    let drill_metrics = Arc::new(crate::metrics::DrillGauges::new());
    let metrics = crate::metrics::AnalyticsMetrics {
        ledger: ledger.clone(),
        drills: Arc::clone(&drill_metrics),
    };
    let service = AnalyticsService {
        drill_metrics,
        db: db.clone(),
        ledger: ledger.clone(),
        keys,
        signer: export_signer,
        max_export_span: config.max_export_span,
        drills: config.drills,
        anomaly: config.anomaly,
    };
    let server = AnalyticsServer::new(service)
        .max_decoding_message_size(limits.max_recv_message_bytes)
        .max_encoding_message_size(limits.max_send_message_bytes);
    let database = Readiness::of_database(db);
    let serving = ledger.standing();
    let readiness = Readiness::new(move || {
        let database = database.clone();
        let ledger = ledger.clone();
        async move {
            if !ledger.writes() {
                return Err(format!(
                    "{}: another Analytics instance holds the ledger writer's lease",
                    crate::ledger::STANDBY
                ));
            }
            database.check().await?;
            match ledger.health().await {
                Health::Sound => Ok(()),
                Health::Corrupt {
                    first_bad_index,
                    reason,
                } => Err(format!(
                    "ledger integrity check failed at index {first_bad_index}: {reason}"
                )),
            }
        }
    });
    Ok(ServiceSpec {
        name: "somastack.v1.Analytics",
        routes: Routes::new(server),
        readiness,
        metrics: vec![Arc::new(metrics), webhooks],
        serving,
    })
}

fn caller<T>(request: &Request<T>) -> Result<Caller, Status> {
    Ok(Caller::of(request)
        .cloned()
        .ok_or(AnalyticsError::Unauthenticated)?)
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

/// An event as a proof request names it: `event_id`, or `<tenant>/<event_id>`
/// (an empty tenant for a platform-wide event; identifiers hold no `/`).
fn event_ref(value: &str) -> Result<(Option<String>, String), AnalyticsError> {
    match value.split_once('/') {
        None => Ok((None, validate::identifier("event_id", value)?)),
        Some(("", event_id)) => Ok((Some(String::new()), validate::identifier("event_id", event_id)?)),
        Some((tenant, event_id)) => Ok((
            Some(validate::identifier("event_id", tenant)?),
            validate::identifier("event_id", event_id)?,
        )),
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
    async fn record<T: crate::tables::Ledgered + Clone>(
        &self,
        row: T,
    ) -> Result<pb::RecordResponse, AnalyticsError> {
        let event_id = row.event_id().to_owned();
        let appended = self.ledger.append(row).await?;
        Ok(record_response(event_id, appended))
    }

    /// `InclusionProof`. Event ids are scoped per tenant: a caller with
    /// tenant claims names an event of its own tenant, and another tenant's
    /// id answers exactly like an id never recorded (`NOT_FOUND`, the same
    /// message), so a proof request is no oracle of other tenants' ids. A
    /// caller without claims (an operator over mTLS) names the event alone
    /// when one tenant recorded it, or as `<tenant>/<event_id>` (`/<event_id>`
    /// for a platform-wide event).
    async fn inclusion_proof_inner(
        &self,
        caller: &Caller,
        r: pb::InclusionProofRequest,
    ) -> Result<pb::InclusionProofResponse, AnalyticsError> {
        let (named, event_id) = event_ref(&r.event_id)?;
        let scope = validate::read_scope(caller, "")?;
        let not_found = || AnalyticsError::NotFound(format!("no ledger leaf for event {event_id}"));
        let tenant = match (scope, named) {
            (Some(scope), None) => Some(scope),
            (Some(scope), Some(named)) if scope == named => Some(scope),
            (Some(_), Some(_)) => return Err(not_found()),
            (None, named) => named,
        };
        let mut leaves = self.ledger.leaves_of(tenant.as_deref(), &event_id).await?;
        let leaf = match (leaves.pop(), leaves.is_empty()) {
            (Some(leaf), true) => leaf,
            (Some(_), false) => {
                return Err(AnalyticsError::InvalidArgument {
                    field: "event_id",
                    reason: format!(
                        "event {event_id} is recorded by more than one tenant: name one as <tenant>/{event_id}"
                    ),
                });
            }
            (None, _) => {
                // A row whose leaf is gone (or names another tenant) is a
                // gap in the ledger, not an event never recorded.
                if let Some((index, owner)) =
                    crate::integrity::orphan_row(&self.db, tenant.as_deref(), &event_id).await?
                {
                    return Err(AnalyticsError::LedgerLeafMismatch {
                        index,
                        detail: format!("no ledger leaf of tenant {owner:?} for the row of event {event_id}"),
                    });
                }
                return Err(not_found());
            }
        };
        let index = to_u64(leaf.index)?;
        let checkpoint = if r.tree_size == 0 {
            self.ledger.latest_checkpoint().await?
        } else {
            self.ledger.checkpoint_at(r.tree_size).await?
        };
        self.ledger
            .catch_up(checkpoint.tree_size.max(index.saturating_add(1)))
            .await?;
        let leaf_hash =
            crate::integrity::verified_leaf(&self.db, &self.keys, self.ledger.known(), &leaf).await?;
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
        let row = CapsuleRun::from_request(&caller, request.into_inner())?;
        Ok(Response::new(self.record(row).await?))
    }

    #[tracing::instrument(skip_all, name = "Analytics/RecordBillingEvent")]
    async fn record_billing_event(
        &self,
        request: Request<pb::RecordBillingEventRequest>,
    ) -> Result<Response<pb::RecordResponse>, Status> {
        let caller = caller(&request)?;
        let row = BillingEvent::from_request(&caller, request.into_inner())?;
        Ok(Response::new(self.record(row).await?))
    }

    #[tracing::instrument(skip_all, name = "Analytics/RecordAuditEvent")]
    async fn record_audit_event(
        &self,
        request: Request<pb::RecordAuditEventRequest>,
    ) -> Result<Response<pb::RecordResponse>, Status> {
        let caller = caller(&request)?;
        let row = AuditEvent::from_request(&caller, request.into_inner())?;
        Ok(Response::new(self.record(row).await?))
    }

    #[tracing::instrument(skip_all, name = "Analytics/ExportAuditEvents")]
    async fn export_audit_events(
        &self,
        request: Request<pb::ExportRequest>,
    ) -> Result<Response<crate::export::ExportStream>, Status> {
        let caller = caller(&request)?;
        Ok(Response::new(
            crate::export::export::<AuditEvent>(self, &caller, request.into_inner()).await?,
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
            crate::export::export::<CapsuleRun>(self, &caller, request.into_inner()).await?,
        ))
    }

    #[tracing::instrument(skip_all, name = "Analytics/ExportBillingLedger")]
    async fn export_billing_ledger(
        &self,
        request: Request<pb::ExportRequest>,
    ) -> Result<Response<crate::export::ExportStream>, Status> {
        let caller = caller(&request)?;
        Ok(Response::new(
            crate::export::export::<BillingEvent>(self, &caller, request.into_inner()).await?,
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
