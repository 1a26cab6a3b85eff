//! Signed JSON exports of capsule runs and billing events, and the public
//! keys that verify them.
//!
//! An export is one JSON document, sent as `ExportChunk.data` pieces while
//! it is read, and then one last message carrying the detached Ed25519
//! signature over the exact concatenation of every `data` byte:
//!
//! ```text
//! {"kind":"billing_ledger","tenant":"acme","from":"…Z","to":"…Z",
//!  "checkpoint":{"origin":"…","tree_size":42,"root_hash":"<base64>"},
//!  "rows":[{…},{…}]}
//! ```
//!
//! - **Scope.** The tenant comes from the verified claims; another tenant's
//!   export needs the `analytics:cross-tenant` capability. A caller without
//!   claims (an operator over mTLS, which the method policy admitted) must
//!   name the tenant: one document is always one tenant's.
//! - **Cut.** The latest checkpoint is taken before the first row is read,
//!   and only rows whose ledger index is below its tree size are exported,
//!   so the export is exactly the window's rows as of that checkpoint, which
//!   travels (signed) with the signature.
//! - **Streaming.** Rows are read in keyset pages ordered by `(time,
//!   ledger index)`, serialized and sent in chunks of at most
//!   [`CHUNK_BYTES`] through a bounded channel, so a slow client slows the
//!   reads down instead of growing a buffer of rows.
//! - **Integrity.** Every row read is checked against its MAC and against
//!   its ledger leaf (the leaf at the row's index must be the one recomputed
//!   from the row) before anything of it is written; a failing row aborts
//!   the export with `DATA_LOSS` naming the row, and no signature is sent.
//!
//! The signature is pure Ed25519 (RFC 8032, no prehash), as any verifier
//! (`soma verify export`, Python's `cryptography`) checks it. Pure Ed25519
//! hashes the whole message twice, the second time only once the first is
//! done, so the sent bytes are hashed as they go (the nonce, and the
//! `sha256` of the document) and written to an unnamed temporary file,
//! which is read back once at the end for the second hash
//! ([`soma_sign::Ed25519StreamSigner`]). Memory stays flat whatever the
//! export's size; the disk holds one copy of the document until it is
//! signed.

use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::pin::Pin;
use std::task::{Context, Poll};

use soma_mesh::Caller;
use soma_proto::v1 as pb;
use tokio::sync::mpsc;
use tonic::Status;
use tracing::Instrument as _;

use crate::error::AnalyticsError;
use crate::ledger::StoredCheckpoint;
use crate::read::{ExportPage, ExportRow};
use crate::rows::{BillingEvent, CapsuleRun, EventRow};
use crate::service::AnalyticsService;
use crate::validate;

/// A streamed export: data chunks, then the signature.
pub(crate) type ExportStream =
    Pin<Box<dyn futures_core::Stream<Item = Result<pb::ExportChunk, Status>> + Send>>;

/// Largest `data` of one chunk, in bytes (a single row larger than this,
/// which identifiers capped at 128 characters rule out, would go alone).
pub(crate) const CHUNK_BYTES: usize = 32 * 1024;

/// Rows read per database round trip.
const PAGE_ROWS: i64 = 1000;

/// Chunks buffered between the reader and the client.
const CHANNEL_CHUNKS: usize = 4;

/// Bytes read per call when the spill file is replayed for the signature.
const REPLAY_BYTES: usize = 256 * 1024;

/// `ExportCapsuleRuns`.
pub(crate) async fn export_capsule_runs(
    svc: &AnalyticsService,
    caller: &Caller,
    request: pb::ExportRequest,
) -> Result<ExportStream, Status> {
    let plan = Plan::new(svc, caller, &request, Kind::CapsuleRuns).await?;
    Ok(spawn_export(svc.clone(), plan))
}

/// `ExportBillingLedger`.
pub(crate) async fn export_billing_ledger(
    svc: &AnalyticsService,
    caller: &Caller,
    request: pb::ExportRequest,
) -> Result<ExportStream, Status> {
    let plan = Plan::new(svc, caller, &request, Kind::BillingLedger).await?;
    Ok(spawn_export(svc.clone(), plan))
}

/// `ListVerificationKeys`: the one key that signs exports and checkpoints.
/// Its validity start is not recorded, so `not_before` is unset; a retired
/// key would carry `not_after`.
pub(crate) async fn list_verification_keys(
    svc: &AnalyticsService,
    _caller: &Caller,
    _request: pb::ListVerificationKeysRequest,
) -> Result<pb::ListVerificationKeysResponse, Status> {
    Ok(pb::ListVerificationKeysResponse {
        keys: vec![pb::VerificationKey {
            key_id: svc.signer.key_id().as_str().to_owned(),
            public_key_pem: svc.signer.public_key_pem(),
            not_before: None,
            not_after: None,
        }],
    })
}

/// Which table an export reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    CapsuleRuns,
    BillingLedger,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::CapsuleRuns => "capsule_runs",
            Self::BillingLedger => "billing_ledger",
        }
    }
}

/// A validated export request and the checkpoint it is cut at.
#[derive(Clone, Debug)]
struct Plan {
    kind: Kind,
    tenant: String,
    from: i64,
    to: i64,
    tool: Option<String>,
    service: Option<String>,
    origin: String,
    checkpoint: StoredCheckpoint,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> AnalyticsError {
    AnalyticsError::InvalidArgument {
        field,
        reason: reason.into(),
    }
}

impl Plan {
    /// Checks every field, then takes the latest checkpoint.
    async fn new(
        svc: &AnalyticsService,
        caller: &Caller,
        r: &pb::ExportRequest,
        kind: Kind,
    ) -> Result<Self, AnalyticsError> {
        let tenant = validate::read_scope(caller, &r.tenant)?.ok_or_else(|| {
            invalid(
                "tenant",
                "required: a caller without tenant claims must name the tenant to export",
            )
        })?;
        let from = validate::timestamp("from", r.from.as_ref())?;
        let to = validate::timestamp("to", r.to.as_ref())?;
        if to <= from {
            return Err(invalid("to", "must be after from: the window is [from, to)"));
        }
        let span = i128::from(to) - i128::from(from);
        let max = i128::try_from(svc.max_export_span.as_nanos()).unwrap_or(i128::MAX);
        if span > max {
            return Err(invalid(
                "to",
                format!(
                    "the window [from, to) spans {}, longer than the longest export window {}",
                    seconds(span),
                    seconds(max)
                ),
            ));
        }
        let optional = |field: &'static str, value: &str| {
            if value.is_empty() {
                Ok(None)
            } else {
                validate::identifier(field, value).map(Some)
            }
        };
        let tool = optional("tool", &r.tool)?;
        let service = optional("service", &r.service)?;
        let checkpoint = svc.ledger.latest_checkpoint().await?;
        Ok(Self {
            kind,
            tenant,
            from,
            to,
            tool,
            service,
            origin: svc.ledger.origin().to_owned(),
            checkpoint,
        })
    }
}

fn seconds(nanos: i128) -> String {
    let whole = nanos / 1_000_000_000;
    let frac = nanos % 1_000_000_000;
    if frac == 0 {
        format!("{whole}s")
    } else {
        format!("{whole}.{frac:09}s")
    }
}

/// Starts the reader task; the stream ends when it does.
fn spawn_export(svc: AnalyticsService, plan: Plan) -> ExportStream {
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    tokio::spawn(
        async move {
            match write_export(&svc, &plan, &tx).await {
                Ok(()) => {}
                Err(Abort::ClientGone) => {
                    tracing::info!(kind = plan.kind.name(), "export abandoned by the client");
                }
                Err(Abort::Failed(e)) => {
                    // The status is the stream's last item: no signature follows.
                    let _ = tx.send(Err(Status::from(e))).await;
                }
            }
        }
        .instrument(tracing::Span::current()),
    );
    Box::pin(Chunks(rx))
}

/// The receiving end of the reader task, as a stream.
struct Chunks(mpsc::Receiver<Result<pb::ExportChunk, Status>>);

impl futures_core::Stream for Chunks {
    type Item = Result<pb::ExportChunk, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().0.poll_recv(cx)
    }
}

/// Why an export stopped early.
enum Abort {
    /// The client went away (the stream was dropped).
    ClientGone,
    /// An error to report to the client.
    Failed(AnalyticsError),
}

impl From<AnalyticsError> for Abort {
    fn from(e: AnalyticsError) -> Self {
        Self::Failed(e)
    }
}

/// Accumulates the document into chunks and sends them; every sent byte
/// goes into the signature's first pass and into the spill file first.
struct ChunkWriter<'a> {
    tx: &'a mpsc::Sender<Result<pb::ExportChunk, Status>>,
    pending: Vec<u8>,
    signing: soma_sign::Ed25519StreamSigner,
    /// The sent bytes, for the signature's second pass: an unnamed
    /// temporary file, gone when closed.
    spill: std::fs::File,
}

impl ChunkWriter<'_> {
    /// Appends `bytes`, first sending what is pending if both would not
    /// fit in one chunk.
    async fn write(&mut self, bytes: &[u8]) -> Result<(), Abort> {
        if !self.pending.is_empty() && self.pending.len() + bytes.len() > CHUNK_BYTES {
            self.flush().await?;
        }
        self.pending.extend_from_slice(bytes);
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), Abort> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.pending, Vec::with_capacity(CHUNK_BYTES));
        self.signing.update(&data);
        // A write of one chunk to the page cache: short enough for the task.
        self.spill.write_all(&data).map_err(AnalyticsError::ExportSpill)?;
        self.tx
            .send(Ok(pb::ExportChunk {
                data,
                signature: None,
            }))
            .await
            .map_err(|_| Abort::ClientGone)
    }
}

/// A JSON string literal.
fn json(value: &str) -> String {
    serde_json::Value::from(value).to_string()
}

/// Writes the whole document, then the signature message.
async fn write_export(
    svc: &AnalyticsService,
    plan: &Plan,
    tx: &mpsc::Sender<Result<pb::ExportChunk, Status>>,
) -> Result<(), Abort> {
    let mut out = ChunkWriter {
        tx,
        pending: Vec::with_capacity(CHUNK_BYTES),
        signing: svc.signer.stream_signer(),
        spill: tempfile::tempfile().map_err(AnalyticsError::ExportSpill)?,
    };
    let header = format!(
        "{{\"kind\":{},\"tenant\":{},\"from\":{},\"to\":{},\"checkpoint\":{{\"origin\":{},\"tree_size\":{},\
         \"root_hash\":{}}},\"rows\":[",
        json(plan.kind.name()),
        json(&plan.tenant),
        json(&rfc3339_nanos(plan.from)),
        json(&rfc3339_nanos(plan.to)),
        json(&plan.origin),
        plan.checkpoint.tree_size,
        json(&plan.checkpoint.root.to_base64()),
    );
    out.write(header.as_bytes()).await?;
    let below_index = crate::ledger::to_i64(plan.checkpoint.tree_size)?;
    let mut page = ExportPage {
        tenant: &plan.tenant,
        from: plan.from,
        to: plan.to,
        below_index,
        tool: plan.tool.as_deref(),
        after: None,
        limit: PAGE_ROWS,
    };
    let mut first = true;
    let mut exported: u64 = 0;
    loop {
        let (objects, last) = match plan.kind {
            Kind::CapsuleRuns => {
                let rows = crate::read::export_capsule_runs_page(&svc.db, &page).await?;
                let last = rows.last().map(|(r, _, index, _)| (r.started_at, *index));
                (checked_objects(svc, plan, rows, capsule_run_object)?, last)
            }
            Kind::BillingLedger => {
                let rows = crate::read::export_billing_page(&svc.db, &page).await?;
                let last = rows.last().map(|(r, _, index, _)| (r.occurred_at, *index));
                (checked_objects(svc, plan, rows, billing_object)?, last)
            }
        };
        for object in objects {
            let mut bytes = Vec::with_capacity(object.len() + 1);
            if !first {
                bytes.push(b',');
            }
            first = false;
            bytes.extend_from_slice(object.as_bytes());
            out.write(&bytes).await?;
            exported += 1;
        }
        match last {
            Some(position) => page.after = Some(position),
            None => break,
        }
    }
    out.write(b"]}\n").await?;
    out.flush().await?;

    let ChunkWriter { signing, spill, .. } = out;
    let signed = tokio::task::spawn_blocking(move || second_pass(signing, spill))
        .await
        .map_err(|e| AnalyticsError::Config(format!("export signing task: {e}")))??;
    tracing::info!(
        kind = plan.kind.name(),
        tenant = %plan.tenant,
        rows = exported,
        tree_size = plan.checkpoint.tree_size,
        "export signed"
    );
    let checkpoint = pb::Checkpoint {
        origin: plan.origin.clone(),
        tree_size: plan.checkpoint.tree_size,
        root_hash: plan.checkpoint.root.as_bytes().to_vec(),
        note: plan.checkpoint.note.clone(),
        key_id: plan.checkpoint.key_id.clone(),
    };
    tx.send(Ok(pb::ExportChunk {
        data: Vec::new(),
        signature: Some(pb::ExportSignature {
            signature: signed.signature.to_vec(),
            key_id: svc.signer.key_id().as_str().to_owned(),
            checkpoint: Some(checkpoint),
            sha256: signed.message_sha256.to_vec(),
        }),
    }))
    .await
    .map_err(|_| Abort::ClientGone)
}

/// Reads the spill file back into the signature's second pass, which
/// signs only if it is byte for byte what was sent.
fn second_pass(
    signing: soma_sign::Ed25519StreamSigner,
    mut spill: std::fs::File,
) -> Result<soma_sign::StreamSignature, AnalyticsError> {
    spill
        .seek(SeekFrom::Start(0))
        .map_err(AnalyticsError::ExportSpill)?;
    let mut buf = vec![0u8; REPLAY_BYTES];
    let signed = signing.finish(|sink| {
        loop {
            match spill.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => sink(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    })?;
    Ok(signed)
}

/// Checks each row of a page (MAC, then its ledger leaf) and serializes
/// those that pass the service filter. The first failing row fails the
/// whole page.
fn checked_objects<R: EventRow>(
    svc: &AnalyticsService,
    plan: &Plan,
    rows: Vec<ExportRow<R>>,
    object: fn(&R, i64) -> serde_json::Value,
) -> Result<Vec<String>, AnalyticsError> {
    let mut objects = Vec::with_capacity(rows.len());
    for (row, seal, index, leaf) in rows {
        row.check(&svc.keys, &seal)?;
        let recomputed = row.leaf_hash()?;
        if leaf.as_deref() != Some(recomputed.as_bytes().as_slice()) {
            return Err(AnalyticsError::RowIntegrity {
                table: "ledger_leaves",
                primary_key: row.event_id().to_owned(),
            });
        }
        let value = object(&row, index);
        if let Some(service) = &plan.service {
            let recorded_by = value
                .get("recorded_by")
                .and_then(serde_json::Value::as_str)
                .unwrap_or("");
            if service_of(recorded_by) != service {
                continue;
            }
        }
        objects.push(value.to_string());
    }
    Ok(objects)
}

/// The service name of a recording SPIFFE ID: its path's last segment
/// (`spiffe://td/svc/tool-registry` → `tool-registry`).
fn service_of(spiffe_id: &str) -> &str {
    spiffe_id.rsplit('/').next().unwrap_or(spiffe_id)
}

fn capsule_run_object(r: &CapsuleRun, ledger_index: i64) -> serde_json::Value {
    serde_json::json!({
        "event_id": r.event_id,
        "ledger_index": ledger_index,
        "tenant": r.tenant,
        "capsule_id": r.capsule_id,
        "tool": r.tool,
        "run_id": r.run_id,
        "outcome": r.outcome,
        "started_at": rfc3339_nanos(r.started_at),
        "duration_nanos": r.duration_nanos,
        "recorded_by": r.recorded_by,
    })
}

fn billing_object(r: &BillingEvent, ledger_index: i64) -> serde_json::Value {
    serde_json::json!({
        "event_id": r.event_id,
        "ledger_index": ledger_index,
        "tenant": r.tenant,
        "tool": r.tool,
        "tool_version": r.tool_version,
        "amount_micros": r.amount_micros,
        "currency": r.currency,
        "fuel_consumed": r.fuel_consumed,
        "duration_micros": r.duration_micros,
        "occurred_at": rfc3339_nanos(r.occurred_at),
        "run_id": r.run_id,
        "recorded_by": r.recorded_by,
    })
}

/// Unix nanoseconds as RFC 3339 UTC with nine fractional digits, e.g.
/// `2024-02-29T23:59:59.000000001Z` (proleptic Gregorian calendar; the
/// i64 range spans years 1677..2262, all four-digit).
pub(crate) fn rfc3339_nanos(nanos: i64) -> String {
    let secs = nanos.div_euclid(1_000_000_000);
    let frac = nanos.rem_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let of_day = secs.rem_euclid(86_400);
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{frac:09}Z",
        of_day / 3600,
        (of_day % 3600) / 60,
        of_day % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), Howard Hinnant's
/// `civil_from_days`.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::{rfc3339_nanos, service_of};

    #[test]
    fn rfc3339_formats_exactly() {
        struct Case {
            name: &'static str,
            input: i64,
            expected: &'static str,
        }
        let cases = [
            Case {
                name: "epoch",
                input: 0,
                expected: "1970-01-01T00:00:00.000000000Z",
            },
            Case {
                name: "one before epoch",
                input: -1,
                expected: "1969-12-31T23:59:59.999999999Z",
            },
            Case {
                name: "leap day",
                input: 1_709_251_199_000_000_001,
                expected: "2024-02-29T23:59:59.000000001Z",
            },
            Case {
                name: "year 2000 day 60",
                input: 951_782_400_000_000_000,
                expected: "2000-02-29T00:00:00.000000000Z",
            },
            Case {
                name: "i64 max",
                input: i64::MAX,
                expected: "2262-04-11T23:47:16.854775807Z",
            },
            Case {
                name: "i64 min",
                input: i64::MIN,
                expected: "1677-09-21T00:12:43.145224192Z",
            },
        ];
        for c in cases {
            assert_eq!(rfc3339_nanos(c.input), c.expected, "{}", c.name);
        }
    }

    #[test]
    fn service_is_the_last_path_segment() {
        assert_eq!(
            service_of("spiffe://somastack.local/svc/tool-registry"),
            "tool-registry"
        );
        assert_eq!(service_of("spiffe://somastack.local/svc/gateway"), "gateway");
    }
}
