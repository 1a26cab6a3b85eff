//! Signed webhook notifications of failed drills, delivered from a
//! transactional outbox.
//!
//! **Outbox.** When a drill fails, one `webhook_outbox` row per configured
//! URL is written in the same transaction as the drill and its ledger leaf,
//! so a notification is queued if and only if the drill is recorded, and a
//! crash loses nothing. A background task ([`spawn`]) delivers pending rows:
//! after a restart it simply finds them still pending. Each row carries a
//! row MAC over its immutable part (delivery id, drill, URL, body digest,
//! creation time), checked before every send, so a row planted or edited in
//! the database is never signed and sent.
//!
//! **Wire format.** `POST <url>` with `content-type: application/json`; the
//! body is the RFC 8785 canonical JSON of the drill event (integers as
//! decimal strings, times as Unix nanoseconds), the exact same bytes on
//! every attempt. Headers:
//! - `x-soma-webhook-id`: the delivery id, stable across retries;
//! - `x-soma-webhook-timestamp`: Unix seconds of this attempt;
//! - `x-soma-webhook-key-id`: the id of the HMAC key used;
//! - `x-soma-webhook-signature`: `v1=` and the lower-case hex
//!   HMAC-SHA256 over `<timestamp>.<id>.<body>`.
//!
//! A receiver verifies the signature with the key named by the key id,
//! rejects a timestamp outside its window (e.g. ±5 minutes), and drops a
//! delivery id it has already accepted: together these refuse replays.
//!
//! **Retries.** Any 2xx answer marks the row delivered. Anything else (an
//! error status, a refused connection, a timeout) counts an attempt, stores
//! the error, and schedules the next attempt after `base · 2^(attempts−1)`,
//! capped at the configured maximum; there is no attempt limit, so a
//! receiver that is down gets the message once it is back. A row is claimed
//! with a compare-and-set on its schedule before it is sent, so several
//! processes sharing the database do not send it concurrently. Delivery is
//! at least once (an answer lost after the receiver accepted leads to a
//! resend with the same id), which is why receivers dedupe by id.
//!
//! **Configuration** is [`WebhookConfig`], read in [`crate::config`].
//!
//! **Metrics.** Each pass measures the backlog (rows not yet delivered, the
//! oldest one's creation time) in the query that schedules the next pass,
//! and each attempt is counted delivered or failed, as
//! `soma_outbox_*{outbox="drill_webhooks"}` on `/metrics`
//! ([`soma_mesh::OutboxMetrics`]); a scrape runs no query.
use std::sync::Arc;
use std::time::Duration;

use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use soma_mesh::{OutboxMetrics, Serving};
use soma_sign::HmacKeyring;
use soma_store::{Database, retry_on_pool};
use tokio::sync::watch;

use crate::config::WebhookConfig;
use crate::convert::{hex, now_nanos};
use crate::error::AnalyticsError;
use crate::tables::drills::{Delivery, due_deliveries};
use crate::tables::{EventRow as _, Get as _, Seal};

/// Header carrying the delivery id.
pub(crate) const ID_HEADER: &str = "x-soma-webhook-id";
/// Header carrying the attempt's Unix seconds.
pub(crate) const TIMESTAMP_HEADER: &str = "x-soma-webhook-timestamp";
/// Header carrying the HMAC key id.
pub(crate) const KEY_ID_HEADER: &str = "x-soma-webhook-key-id";
/// Header carrying `v1=<hex HMAC-SHA256>`.
pub(crate) const SIGNATURE_HEADER: &str = "x-soma-webhook-signature";

/// Longest the task sleeps without looking at the outbox (rows queued by
/// another process sharing the database are found at the latest then).
const MAX_IDLE: Duration = Duration::from_secs(30);
/// The webhook outbox's `outbox` label on `/metrics`.
pub(crate) const LABEL: &str = "drill_webhooks";
/// Rows taken from the outbox per pass.
const BATCH: i64 = 64;

fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// Starts the delivery task when webhook keys are configured, keeping
/// `metrics`. It runs until the service (every clone of its configuration)
/// is gone, and delivers only while this instance writes the ledger
/// (`standing`; `None`: always): a standby writes nothing, the outbox's
/// rows included.
pub(crate) fn spawn(
    db: Database,
    row_keys: Arc<HmacKeyring>,
    config: &WebhookConfig,
    metrics: Arc<OutboxMetrics>,
    standing: Option<watch::Receiver<Serving>>,
) {
    let Some(signing) = config.keys.clone() else {
        return;
    };
    let client = Client::builder(TokioExecutor::new()).build_http::<String>();
    let deliverer = Deliverer {
        db,
        row_keys,
        signing,
        client,
        metrics,
        config: WebhookConfig {
            // The task must not hold the wake sender, or it would never see
            // the service go away.
            wake: Arc::new(watch::Sender::new(0)),
            ..config.clone()
        },
    };
    tokio::spawn(run(deliverer, config.wake.subscribe(), standing));
}

struct Deliverer {
    db: Database,
    row_keys: Arc<HmacKeyring>,
    signing: Arc<HmacKeyring>,
    client: Client<HttpConnector, String>,
    metrics: Arc<OutboxMetrics>,
    config: WebhookConfig,
}

async fn run(
    deliverer: Deliverer,
    mut wake: watch::Receiver<u64>,
    mut standing: Option<watch::Receiver<Serving>>,
) {
    tracing::info!("webhook delivery started");
    loop {
        if let Some(standing) = standing.as_mut()
            && standing.wait_for(|s| s.is_serving()).await.is_err()
        {
            break;
        }
        let idle = match deliverer.deliver_due().await {
            Ok(idle) => idle,
            Err(error) => {
                tracing::warn!(error = ?error, "webhook outbox pass failed");
                deliverer.config.retry_base.min(MAX_IDLE)
            }
        };
        tokio::select! {
            changed = wake.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            () = tokio::time::sleep(idle) => {}
        }
    }
    tracing::info!("webhook delivery stopped");
}

/// A pending outbox row as read back, with its seal.
struct Pending {
    delivery: Delivery,
    seal: Seal,
}

impl Deliverer {
    /// Attempts every due row; returns how long to wait for the next one.
    async fn deliver_due(&self) -> Result<Duration, AnalyticsError> {
        let now = now_nanos();
        let due = due_deliveries(&self.db, now, BATCH).await?;
        let full = due.len() as i64 == BATCH;
        for (delivery, seal) in due {
            self.attempt(Pending { delivery, seal }).await?;
        }
        // `fetch_all` of the one row: on SQLite the statement runs to its
        // end and is reset at once, leaving no read snapshot open on the
        // pooled connection for the next writer to trip over.
        let (pending, oldest, next) = retry_on_pool!(self.db, "webhook_backlog", AnalyticsError, pool => {
            let rows = sqlx::query(
                "SELECT COUNT(*) AS pending, MIN(created_at) AS oldest, MIN(next_attempt_at) AS next \
                 FROM webhook_outbox WHERE delivered_at IS NULL",
            )
            .fetch_all(pool)
            .await?;
            let row = rows.first().ok_or(sqlx::Error::RowNotFound)?;
            (row.int("pending")?, row.opt_int("oldest")?, row.opt_int("next")?)
        })?;
        self.metrics.backlog(pending, oldest);
        if full {
            return Ok(Duration::ZERO);
        }
        Ok(match next {
            None => MAX_IDLE,
            Some(at) => {
                let wait = u64::try_from(at.saturating_sub(now_nanos())).unwrap_or(0);
                Duration::from_nanos(wait).min(MAX_IDLE)
            }
        })
    }

    /// Claims one row, checks its MAC, sends it and records the outcome.
    async fn attempt(&self, pending: Pending) -> Result<(), AnalyticsError> {
        let id = pending.delivery.delivery_id.clone();
        // Claim: move the schedule past this attempt's timeout, only if no
        // one else moved it since it was read.
        let lease = now_nanos().saturating_add(nanos(self.config.timeout) + nanos(Duration::from_secs(5)));
        // Each update below is retried on a new connection when the
        // connection is lost: the claim is a compare-and-set on the
        // schedule (a rerun after a commit that did happen matches no row,
        // and the row comes due again after the claim's lease), and the
        // outcomes set absolute values.
        let claimed = retry_on_pool!(self.db, "webhook_claim", AnalyticsError, pool => sqlx::query(
            "UPDATE webhook_outbox SET next_attempt_at = $1 \
             WHERE delivery_id = $2 AND delivered_at IS NULL AND next_attempt_at = $3",
        )
        .bind(lease)
        .bind(&id)
        .bind(pending.delivery.next_attempt_at)
        .execute(pool)
        .await?
        .rows_affected())?;
        if claimed != 1 {
            return Ok(());
        }
        let outcome = match pending.delivery.check(&self.row_keys, &pending.seal) {
            Ok(()) => self.send(&pending.delivery).await,
            Err(_) => {
                tracing::error!(delivery_id = %id, "outbox row failed its integrity check: not sent");
                Err("row integrity check failed: not sent".to_owned())
            }
        };
        let attempts = pending.delivery.attempts.saturating_add(1);
        let now = now_nanos();
        match outcome {
            Ok(()) => {
                tracing::info!(delivery_id = %id, url = %pending.delivery.url, attempts, "webhook delivered");
                retry_on_pool!(self.db, "webhook_delivered", AnalyticsError, pool => sqlx::query(
                    "UPDATE webhook_outbox SET attempts = $1, last_attempt_at = $2, last_error = NULL, \
                     delivered_at = $2 WHERE delivery_id = $3",
                )
                .bind(attempts)
                .bind(now)
                .bind(&id)
                .execute(pool)
                .await?
                .rows_affected())?;
                // Counted once it has left the outbox: a row whose update
                // failed is sent again, and counted then.
                self.metrics.delivered(1);
            }
            Err(error) => {
                self.metrics.failed();
                let next = now.saturating_add(nanos(self.config.backoff(attempts)));
                tracing::warn!(
                    delivery_id = %id,
                    url = %pending.delivery.url,
                    attempts,
                    error = %error,
                    "webhook delivery failed; will retry"
                );
                retry_on_pool!(self.db, "webhook_failed", AnalyticsError, pool => sqlx::query(
                    "UPDATE webhook_outbox SET attempts = $1, last_attempt_at = $2, last_error = $3, \
                     next_attempt_at = $4 WHERE delivery_id = $5",
                )
                .bind(attempts)
                .bind(now)
                .bind(&error)
                .bind(next)
                .bind(&id)
                .execute(pool)
                .await?
                .rows_affected())?;
            }
        }
        Ok(())
    }

    /// One signed POST; `Ok` on a 2xx answer.
    async fn send(&self, delivery: &Delivery) -> Result<(), String> {
        let timestamp = now_nanos().div_euclid(1_000_000_000).to_string();
        let mut message = format!("{timestamp}.{}.", delivery.delivery_id).into_bytes();
        message.extend_from_slice(&delivery.body);
        let (key_id, tag) = self.signing.sign(&message);
        let body = String::from_utf8(delivery.body.clone()).map_err(|_| "body is not UTF-8".to_owned())?;
        let request = http::Request::post(delivery.url.as_str())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(http::header::USER_AGENT, "soma-analytics-webhook/1")
            .header(ID_HEADER, delivery.delivery_id.as_str())
            .header(TIMESTAMP_HEADER, timestamp.as_str())
            .header(KEY_ID_HEADER, key_id.as_str())
            .header(SIGNATURE_HEADER, format!("v1={}", hex(&tag)))
            .body(body)
            .map_err(|e| format!("request: {e}"))?;
        match tokio::time::timeout(self.config.timeout, self.client.request(request)).await {
            Err(_) => Err(format!("no answer within {:?}", self.config.timeout)),
            Ok(Err(e)) => Err(error_chain(&e)),
            Ok(Ok(response)) if response.status().is_success() => Ok(()),
            Ok(Ok(response)) => Err(format!("http status {}", response.status().as_u16())),
        }
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
