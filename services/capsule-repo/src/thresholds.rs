//! Publisher thresholds: how many distinct registered keys of a publisher
//! must sign a submission's attestation (t of n). Set by operators only;
//! a publisher without a row signs with one key. Each change is a MACed
//! row and an audit event.

use soma_proto::v1 as pb;

use crate::error::RepoError;
use crate::store::ThresholdRow;
use crate::{Actor, Repo, audit_event, now_nanos, seal, timestamp};

/// The threshold of a publisher without a row.
pub(crate) const DEFAULT_THRESHOLD: usize = 1;
/// Highest threshold accepted (far above any real publisher's key count).
const MAX_THRESHOLD: u32 = 64;
/// Longest publisher name (the registry's rule).
const MAX_PUBLISHER: usize = 64;

impl Repo {
    /// `SetPublisherThreshold`: operators only.
    pub(crate) async fn set_publisher_threshold(
        &self,
        actor: &Actor,
        request: pb::SetPublisherThresholdRequest,
    ) -> Result<pb::PublisherThreshold, RepoError> {
        if !actor.operator {
            return Err(RepoError::OperatorRequired(format!(
                "{} is not an operator: publisher thresholds are set by operators only",
                actor.id
            )));
        }
        let publisher = request.publisher;
        let name_ok = !publisher.is_empty()
            && publisher.len() <= MAX_PUBLISHER
            && publisher
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'));
        if !name_ok {
            return Err(RepoError::invalid(
                "publisher_invalid",
                format!("publisher: 1 to {MAX_PUBLISHER} letters, digits, '.', '_', '-' or '@'"),
            ));
        }
        if request.threshold == 0 || request.threshold > MAX_THRESHOLD {
            return Err(RepoError::invalid(
                "threshold_invalid",
                format!("threshold: from 1 to {MAX_THRESHOLD}"),
            ));
        }
        let now = now_nanos();
        let mut row = ThresholdRow {
            publisher: publisher.clone(),
            threshold: i64::from(request.threshold),
            set_by: actor.id.clone(),
            set_at: now,
            mac_key_id: String::new(),
            mac: Vec::new(),
        };
        (row.mac_key_id, row.mac) = seal::mac(&self.keys, ThresholdRow::TABLE, &row.columns())?;
        let audit = self.outbox.audit(
            &audit_event(
                "",
                "publisher_threshold.set",
                &format!("publisher:{publisher}"),
                serde_json::json!({"publisher": publisher, "threshold": request.threshold, "actor": actor.id}),
                now,
            ),
            now,
        )?;
        self.store.set_threshold(&row, &audit).await?;
        self.outbox.wake();
        tracing::info!(publisher, threshold = request.threshold, actor = %actor.id, "publisher threshold set");
        Ok(threshold_proto(&row))
    }

    /// The threshold of `publisher`, its row's MAC checked.
    pub(crate) async fn threshold_of(&self, publisher: &str) -> Result<usize, RepoError> {
        match self.store.threshold(publisher).await? {
            None => Ok(DEFAULT_THRESHOLD),
            Some(row) => {
                self.check_threshold(&row)?;
                usize::try_from(row.threshold).map_err(|_| RepoError::RowIntegrity {
                    table: ThresholdRow::TABLE,
                    key: row.publisher.clone(),
                })
            }
        }
    }

    pub(crate) fn check_threshold(&self, row: &ThresholdRow) -> Result<(), RepoError> {
        seal::check(
            &self.keys,
            ThresholdRow::TABLE,
            &row.publisher,
            &row.columns(),
            &row.mac_key_id,
            &row.mac,
        )
    }
}

fn threshold_proto(row: &ThresholdRow) -> pb::PublisherThreshold {
    pb::PublisherThreshold {
        publisher: row.publisher.clone(),
        threshold: u32::try_from(row.threshold).unwrap_or(0),
        set_by: row.set_by.clone(),
        set_at: Some(timestamp(row.set_at)),
    }
}
