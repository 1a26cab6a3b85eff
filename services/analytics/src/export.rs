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
//!   export needs an operator's claims (`operator`, set only for a token of
//!   an operator issuer) with the `analytics:cross-tenant` capability; a
//!   tenant's claims are refused (`operator_required`) whatever their
//!   scopes. A caller without
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
use crate::rows::{BillingEvent, CapsuleRun, EventRow, push_i64, push_string};
use crate::service::AnalyticsService;
use crate::validate;

/// A streamed export: data chunks, then the signature.
pub(crate) type ExportStream =
    Pin<Box<dyn futures_core::Stream<Item = Result<pb::ExportChunk, Status>> + Send>>;

/// Largest `data` of one chunk, in bytes (a single row larger than this,
/// which identifiers capped at 128 characters rule out, would go alone).
pub(crate) const CHUNK_BYTES: usize = 32 * 1024;

/// Rows read per database round trip.
const PAGE_ROWS: i64 = 4000;

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
    let exported = match plan.kind {
        Kind::CapsuleRuns => write_rows::<CapsuleRun>(svc, plan, &mut out).await?,
        Kind::BillingLedger => write_rows::<BillingEvent>(svc, plan, &mut out).await?,
    };
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

/// Writes the rows of the window, page after page, and returns how many.
///
/// Reading and checking a page runs on other tasks while the previous page
/// is serialized and sent (the next page is asked for as soon as the keyset
/// position it starts after is known), so the database, the checks and the
/// writer overlap instead of taking turns. At most two pages are held: the
/// one being written and the one being read. Rows are written in order up
/// to the first one that failed its check; that row's error then ends the
/// export, so nothing of it or after it is sent, and no signature.
async fn write_rows<R: Exported>(
    svc: &AnalyticsService,
    plan: &Plan,
    out: &mut ChunkWriter<'_>,
) -> Result<u64, Abort> {
    let below_index = crate::ledger::to_i64(plan.checkpoint.tree_size)?;
    let mut next = Some(PageTask::<R>::spawn(svc, plan, below_index, None));
    let mut first = true;
    let mut exported: u64 = 0;
    let mut object = Vec::with_capacity(1024);
    while let Some(task) = next.take() {
        let page = task.join().await?;
        if page.failed.is_none()
            && page.full
            && let Some(after) = page.last
        {
            next = Some(PageTask::spawn(svc, plan, below_index, Some(after)));
        }
        for (row, index) in &page.rows {
            if let Some(service) = &plan.service
                && service_of(row.recorded_by()) != service
            {
                continue;
            }
            object.clear();
            if !first {
                object.push(b',');
            }
            first = false;
            row.write_object(*index, &mut object);
            out.write(&object).await?;
            exported += 1;
        }
        if let Some(e) = page.failed {
            return Err(Abort::Failed(e));
        }
    }
    Ok(exported)
}

/// A page read and checked, in keyset order.
struct CheckedPage<R> {
    /// The rows that passed, with their ledger indices, up to the first
    /// that failed.
    rows: Vec<(R, i64)>,
    /// The `(time, ledger index)` of the last row read.
    last: Option<(i64, i64)>,
    /// Whether the page was full, so that more rows may follow.
    full: bool,
    /// Why the first failing row failed.
    failed: Option<AnalyticsError>,
}

/// The task reading and checking one page; aborted when dropped (an
/// export that stops early leaves no read behind).
struct PageTask<R>(tokio::task::JoinHandle<Result<CheckedPage<R>, AnalyticsError>>);

impl<R: Exported> PageTask<R> {
    fn spawn(svc: &AnalyticsService, plan: &Plan, below_index: i64, after: Option<(i64, i64)>) -> Self {
        let db = svc.db.clone();
        let keys = std::sync::Arc::clone(&svc.keys);
        let tenant = plan.tenant.clone();
        let tool = plan.tool.clone();
        let (from, to) = (plan.from, plan.to);
        Self(tokio::spawn(
            async move {
                let page = ExportPage {
                    tenant: &tenant,
                    from,
                    to,
                    below_index,
                    tool: tool.as_deref(),
                    after,
                    limit: PAGE_ROWS,
                };
                let rows = R::page(&db, &page).await?;
                // The MAC and leaf checks are CPU work: off the async workers.
                tokio::task::spawn_blocking(move || check_page(&keys, rows))
                    .await
                    .map_err(|e| AnalyticsError::Config(format!("export check task: {e}")))
            }
            .instrument(tracing::Span::current()),
        ))
    }

    async fn join(mut self) -> Result<CheckedPage<R>, AnalyticsError> {
        (&mut self.0)
            .await
            .map_err(|e| AnalyticsError::Config(format!("export page task: {e}")))?
    }
}

impl<R> Drop for PageTask<R> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Checks each row of a page (its MAC, then its ledger leaf: the leaf at
/// the row's index must be the one recomputed from the row), stopping at
/// the first that fails.
fn check_page<R: Exported>(keys: &soma_sign::HmacKeyring, rows: Vec<ExportRow<R>>) -> CheckedPage<R> {
    let full = i64::try_from(rows.len()).is_ok_and(|n| n >= PAGE_ROWS);
    let last = rows.last().map(|(row, _, index, _)| (row.time(), *index));
    let mut checked = Vec::with_capacity(rows.len());
    let mut failed = None;
    for (row, seal, index, leaf) in rows {
        if let Err(e) = check_row(keys, &row, &seal, leaf.as_deref()) {
            failed = Some(e);
            break;
        }
        checked.push((row, index));
    }
    CheckedPage {
        rows: checked,
        last,
        full,
        failed,
    }
}

fn check_row<R: EventRow>(
    keys: &soma_sign::HmacKeyring,
    row: &R,
    seal: &crate::rows::Seal,
    leaf: Option<&[u8]>,
) -> Result<(), AnalyticsError> {
    row.check(keys, seal)?;
    let recomputed = row.leaf_hash()?;
    if leaf != Some(recomputed.as_bytes().as_slice()) {
        return Err(AnalyticsError::RowIntegrity {
            table: "ledger_leaves",
            primary_key: row.event_id().to_owned(),
        });
    }
    Ok(())
}

/// The service name of a recording SPIFFE ID: its path's last segment
/// (`spiffe://td/svc/tool-registry` → `tool-registry`).
fn service_of(spiffe_id: &str) -> &str {
    spiffe_id.rsplit('/').next().unwrap_or(spiffe_id)
}

/// A row an export reads and writes.
trait Exported: EventRow + Sized + Send + 'static {
    /// The time column the window and the keyset order use.
    fn time(&self) -> i64;

    /// SPIFFE ID of the service that recorded the row.
    fn recorded_by(&self) -> &str;

    /// Reads one keyset page.
    fn page<'a>(
        db: &'a soma_store::Database,
        page: &'a ExportPage<'a>,
    ) -> impl Future<Output = Result<Vec<ExportRow<Self>>, AnalyticsError>> + Send + 'a;

    /// Appends the row's JSON object: compact, members sorted by name
    /// (the form serde_json gives a map), times as RFC 3339 with nine
    /// fractional digits, integers as JSON numbers.
    fn write_object(&self, ledger_index: i64, out: &mut Vec<u8>);
}

impl Exported for CapsuleRun {
    fn time(&self) -> i64 {
        self.started_at
    }

    fn recorded_by(&self) -> &str {
        &self.recorded_by
    }

    fn page<'a>(
        db: &'a soma_store::Database,
        page: &'a ExportPage<'a>,
    ) -> impl Future<Output = Result<Vec<ExportRow<Self>>, AnalyticsError>> + Send + 'a {
        crate::read::export_capsule_runs_page(db, page)
    }

    fn write_object(&self, ledger_index: i64, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"capsule_id\":");
        push_string(out, &self.capsule_id);
        out.extend_from_slice(b",\"duration_nanos\":");
        push_i64(out, self.duration_nanos);
        out.extend_from_slice(b",\"event_id\":");
        push_string(out, &self.event_id);
        out.extend_from_slice(b",\"ledger_index\":");
        push_i64(out, ledger_index);
        out.extend_from_slice(b",\"outcome\":");
        push_string(out, &self.outcome);
        out.extend_from_slice(b",\"recorded_by\":");
        push_string(out, &self.recorded_by);
        out.extend_from_slice(b",\"run_id\":");
        push_string(out, &self.run_id);
        out.extend_from_slice(b",\"started_at\":\"");
        push_rfc3339_nanos(out, self.started_at);
        out.extend_from_slice(b"\",\"tenant\":");
        push_string(out, &self.tenant);
        out.extend_from_slice(b",\"tool\":");
        push_string(out, &self.tool);
        out.push(b'}');
    }
}

impl Exported for BillingEvent {
    fn time(&self) -> i64 {
        self.occurred_at
    }

    fn recorded_by(&self) -> &str {
        &self.recorded_by
    }

    fn page<'a>(
        db: &'a soma_store::Database,
        page: &'a ExportPage<'a>,
    ) -> impl Future<Output = Result<Vec<ExportRow<Self>>, AnalyticsError>> + Send + 'a {
        crate::read::export_billing_page(db, page)
    }

    fn write_object(&self, ledger_index: i64, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"amount_micros\":");
        push_i64(out, self.amount_micros);
        out.extend_from_slice(b",\"currency\":");
        push_string(out, &self.currency);
        out.extend_from_slice(b",\"duration_micros\":");
        push_i64(out, self.duration_micros);
        out.extend_from_slice(b",\"event_id\":");
        push_string(out, &self.event_id);
        out.extend_from_slice(b",\"fuel_consumed\":");
        push_i64(out, self.fuel_consumed);
        out.extend_from_slice(b",\"ledger_index\":");
        push_i64(out, ledger_index);
        out.extend_from_slice(b",\"occurred_at\":\"");
        push_rfc3339_nanos(out, self.occurred_at);
        out.extend_from_slice(b"\",\"recorded_by\":");
        push_string(out, &self.recorded_by);
        out.extend_from_slice(b",\"run_id\":");
        push_string(out, &self.run_id);
        out.extend_from_slice(b",\"tenant\":");
        push_string(out, &self.tenant);
        out.extend_from_slice(b",\"tool\":");
        push_string(out, &self.tool);
        out.extend_from_slice(b",\"tool_version\":");
        push_string(out, &self.tool_version);
        out.push(b'}');
    }
}

/// Appends [`rfc3339_nanos`] of `nanos` (its characters need no escape).
fn push_rfc3339_nanos(out: &mut Vec<u8>, nanos: i64) {
    let secs = nanos.div_euclid(1_000_000_000);
    let frac = nanos.rem_euclid(1_000_000_000);
    let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
    let of_day = secs.rem_euclid(86_400);
    push_digits(out, year, 4);
    out.push(b'-');
    push_digits(out, month, 2);
    out.push(b'-');
    push_digits(out, day, 2);
    out.push(b'T');
    push_digits(out, of_day / 3600, 2);
    out.push(b':');
    push_digits(out, (of_day % 3600) / 60, 2);
    out.push(b':');
    push_digits(out, of_day % 60, 2);
    out.push(b'.');
    push_digits(out, frac, 9);
    out.push(b'Z');
}

/// Appends the last `width` decimal digits of a non-negative `value`,
/// zero-padded (every RFC 3339 field fits its width: years 1677..2262).
fn push_digits(out: &mut Vec<u8>, value: i64, width: usize) {
    let mut buf = [b'0'; 9];
    let mut rest = value.unsigned_abs();
    for slot in buf[..width].iter_mut().rev() {
        // `rest % 10` is a single digit: the cast cannot truncate.
        *slot = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    out.extend_from_slice(&buf[..width]);
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
    use super::{Exported as _, push_rfc3339_nanos, rfc3339_nanos, service_of};
    use crate::rows::{BillingEvent, CapsuleRun};

    /// The `serde_json::Value` objects the direct writers replace.
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

    #[test]
    fn export_objects_are_the_bytes_serde_json_writes() {
        let texts = ["acme", "", "q\"b\\s/", "\u{0}\u{1f}\u{7f}\n\t", "é 漢 \u{10348}"];
        let times = [0, -1, 1_709_251_199_000_000_001, i64::MAX, i64::MIN];
        for text in texts {
            for (n, at) in times.into_iter().enumerate() {
                let n = i64::try_from(n).unwrap() * 1_000_003;
                let bill = BillingEvent {
                    event_id: format!("e{text}"),
                    tenant: text.to_owned(),
                    tool: format!("{text}t"),
                    tool_version: "1.0".to_owned(),
                    currency: "EUR".to_owned(),
                    amount_micros: n,
                    fuel_consumed: n + 1,
                    duration_micros: n + 2,
                    occurred_at: at,
                    run_id: text.to_owned(),
                    recorded_by: format!("spiffe://td/svc/{text}"),
                };
                let mut out = Vec::new();
                bill.write_object(n + 7, &mut out);
                assert_eq!(
                    String::from_utf8(out).unwrap(),
                    billing_object(&bill, n + 7).to_string()
                );
                let run = CapsuleRun {
                    event_id: text.to_owned(),
                    tenant: format!("{text}x"),
                    capsule_id: format!("c{text}"),
                    tool: text.to_owned(),
                    run_id: "r".to_owned(),
                    outcome: "succeeded".to_owned(),
                    started_at: at,
                    duration_nanos: n,
                    recorded_by: text.to_owned(),
                };
                let mut out = Vec::new();
                run.write_object(i64::MAX - n, &mut out);
                assert_eq!(
                    String::from_utf8(out).unwrap(),
                    capsule_run_object(&run, i64::MAX - n).to_string()
                );
            }
        }
    }

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
            let mut pushed = Vec::new();
            push_rfc3339_nanos(&mut pushed, c.input);
            assert_eq!(
                String::from_utf8(pushed).unwrap(),
                c.expected,
                "{} (pushed)",
                c.name
            );
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
