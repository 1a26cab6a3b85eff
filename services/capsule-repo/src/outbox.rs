//! The outbox: audit events for Analytics (submissions, reviews,
//! installations, thresholds), written to the repository's own database in
//! the transaction of what they record, then delivered over mTLS by one
//! task.
//!
//! Exactly once: each event carries its own id, which Analytics treats as
//! an idempotency key (the same id with the same content answers the same
//! ledger entry), so a delivery whose acknowledgement was lost is simply
//! sent again. A row is deleted only after Analytics acknowledged it. A row
//! whose MAC fails (edited in the database) is never sent and never
//! deleted: it is logged and put off, for an operator to look at.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use prost::Message as _;
use soma_mesh::{MeshChannel, OutboxMetrics};
use soma_proto::v1::RecordAuditEventRequest;
use soma_proto::v1::analytics_client::AnalyticsClient;
use soma_sign::HmacKeyring;
use tokio::sync::Notify;

use crate::error::RepoError;
use crate::seal;
use crate::store::{NewOutbox, OutboxRow, Store, outbox_columns};

/// Kind of an audit event row.
pub(crate) const AUDIT: &str = "audit";

/// The outbox's `outbox` label on `/metrics`.
const LABEL: &str = "capsule_repo";
/// Events taken per round.
const BATCH: i64 = 256;
/// Deliveries in flight at once.
const IN_FLIGHT: usize = 32;
/// Time one delivery may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest wait between two attempts of one event.
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// How long a row that cannot be sent as it is (a failed MAC, an event
/// Analytics refuses for what it is) waits before it is tried again.
const PARKED: Duration = Duration::from_secs(3600);
/// Idle poll, in case a notification was missed (another replica wrote).
const IDLE_POLL: Duration = Duration::from_secs(1);

/// The outbox's writer side: seals events and wakes the deliverer.
#[derive(Clone, Debug)]
pub(crate) struct Outbox {
    store: Store,
    keys: Arc<HmacKeyring>,
    wake: Arc<Notify>,
    /// The backlog and delivery counts on `/metrics`, kept by the deliverer.
    metrics: Arc<OutboxMetrics>,
}

impl Outbox {
    pub(crate) fn new(store: Store, keys: Arc<HmacKeyring>) -> Self {
        Self {
            store,
            keys,
            wake: Arc::new(Notify::new()),
            metrics: Arc::new(OutboxMetrics::new(LABEL)),
        }
    }

    /// The outbox's figures, for `/metrics`.
    pub(crate) fn metrics(&self) -> Arc<OutboxMetrics> {
        Arc::clone(&self.metrics)
    }

    /// A sealed audit event row.
    pub(crate) fn audit(&self, event: &RecordAuditEventRequest, now: i64) -> Result<NewOutbox, RepoError> {
        self.seal(AUDIT, event.event_id.clone(), event.encode_to_vec(), now)
    }

    fn seal(
        &self,
        kind: &'static str,
        event_id: String,
        payload: Vec<u8>,
        now: i64,
    ) -> Result<NewOutbox, RepoError> {
        let (mac_key_id, mac) = seal::mac(
            &self.keys,
            OutboxRow::TABLE,
            &outbox_columns(kind, &event_id, &payload, now),
        )?;
        Ok(NewOutbox {
            kind,
            event_id,
            payload,
            created_at: now,
            mac_key_id,
            mac,
        })
    }

    /// Tells the deliverer that events were written.
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Delivers events to Analytics until the returned task is aborted.
    pub(crate) fn spawn_deliverer(&self, analytics: MeshChannel) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        let client = AnalyticsClient::new(analytics);
        tokio::spawn(async move {
            loop {
                match this.round(&client).await {
                    Ok(0) => {
                        tokio::select! {
                            () = this.wake.notified() => {}
                            () = tokio::time::sleep(IDLE_POLL) => {}
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "outbox round failed; retrying");
                        tokio::time::sleep(IDLE_POLL).await;
                    }
                }
            }
        })
    }

    /// One round: the due events, sent concurrently; returns how many were
    /// due.
    async fn round(&self, client: &AnalyticsClient<MeshChannel>) -> Result<usize, RepoError> {
        let due = self.store.due(crate::now_nanos(), BATCH).await?;
        let count = due.len();
        let results: Vec<(OutboxRow, Result<(), Undelivered>)> = futures::stream::iter(due)
            .map(|row| async {
                let sent = self.deliver(client, &row).await;
                (row, sent)
            })
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        let mut delivered = Vec::with_capacity(results.len());
        for (row, sent) in results {
            match sent {
                Ok(()) => delivered.push(row.seq),
                Err(undelivered) => {
                    self.metrics.failed();
                    let wait = match &undelivered {
                        Undelivered::Retry(_) => backoff(row.attempts),
                        Undelivered::Parked(_) => PARKED,
                    };
                    let error = undelivered.to_string();
                    match &undelivered {
                        Undelivered::Retry(_) => {
                            tracing::debug!(event_id = %row.event_id, kind = %row.kind, error, "outbox delivery failed; will retry");
                        }
                        Undelivered::Parked(_) => {
                            tracing::error!(event_id = %row.event_id, kind = %row.kind, error, "outbox event cannot be delivered as stored; parked");
                        }
                    }
                    let next =
                        crate::now_nanos().saturating_add(i64::try_from(wait.as_nanos()).unwrap_or(i64::MAX));
                    self.store.retry_later(row.seq, next, &error).await?;
                }
            }
        }
        self.store.delivered(&delivered).await?;
        self.metrics.delivered(delivered.len() as u64);
        // The backlog for `/metrics`, measured here rather than on a scrape.
        let (pending, oldest) = self.store.backlog().await?;
        self.metrics.backlog(pending, oldest);
        Ok(count)
    }

    async fn deliver(
        &self,
        client: &AnalyticsClient<MeshChannel>,
        row: &OutboxRow,
    ) -> Result<(), Undelivered> {
        seal::check(
            &self.keys,
            OutboxRow::TABLE,
            &row.event_id,
            &row.columns(),
            &row.mac_key_id,
            &row.mac,
        )
        .map_err(|e| Undelivered::Parked(e.to_string()))?;
        let mut client = client.clone();
        let sent = match row.kind.as_str() {
            AUDIT => {
                let event = RecordAuditEventRequest::decode(row.payload.as_slice())
                    .map_err(|e| Undelivered::Parked(format!("payload: {e}")))?;
                tokio::time::timeout(CALL_TIMEOUT, client.record_audit_event(event)).await
            }
            other => return Err(Undelivered::Parked(format!("unknown kind {other:?}"))),
        };
        match sent {
            Ok(Ok(_)) => Ok(()),
            Err(_) => Err(Undelivered::Retry(format!(
                "analytics did not answer within {}",
                humantime::format_duration(CALL_TIMEOUT)
            ))),
            // Refused for what it is (the id held with other content, a
            // field Analytics does not accept, a caller it does not admit):
            // sending it again at once cannot succeed, and dropping it would
            // lose the event. Parked, logged, tried again later.
            Ok(Err(status))
                if matches!(
                    status.code(),
                    tonic::Code::AlreadyExists
                        | tonic::Code::InvalidArgument
                        | tonic::Code::FailedPrecondition
                        | tonic::Code::PermissionDenied
                        | tonic::Code::Unauthenticated
                        | tonic::Code::Unimplemented
                ) =>
            {
                Err(Undelivered::Parked(format!(
                    "analytics: {:?}: {}",
                    status.code(),
                    status.message()
                )))
            }
            Ok(Err(status)) => Err(Undelivered::Retry(format!(
                "analytics: {:?}: {}",
                status.code(),
                status.message()
            ))),
        }
    }
}

/// Why an event stays in the outbox.
#[derive(Debug, thiserror::Error)]
enum Undelivered {
    /// A failure that may pass (Analytics down, restarting, slow).
    #[error("{0}")]
    Retry(String),
    /// The row cannot be sent as stored.
    #[error("{0}")]
    Parked(String),
}

/// 100 ms doubled per attempt, at most [`MAX_BACKOFF`].
fn backoff(attempts: i64) -> Duration {
    let shift = u32::try_from(attempts.clamp(0, 16)).unwrap_or(16);
    Duration::from_millis(100u64 << shift).min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_ceiling() {
        assert_eq!(backoff(0), Duration::from_millis(100));
        assert_eq!(backoff(3), Duration::from_millis(800));
        assert_eq!(backoff(9), MAX_BACKOFF);
        assert_eq!(backoff(i64::MAX), MAX_BACKOFF);
        assert_eq!(backoff(-5), Duration::from_millis(100));
    }
}
