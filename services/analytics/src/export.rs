//! Signed JSON exports of any exported table ([`Exported`]), and the
//! public keys that verify them.
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
//!   travels (signed) with the signature. A row past the cut is left out
//!   only once its MAC (which binds its index) shows that its leaf is past
//!   the cut too.
//! - **Streaming.** Rows are read in keyset pages ordered by `(time,
//!   ledger index)`, serialized and sent in chunks of at most
//!   [`CHUNK_BYTES`] through a bounded channel, so a slow client slows the
//!   reads down instead of growing a buffer of rows.
//! - **Integrity.** Every row read is checked against its MAC and against
//!   its ledger leaf (the leaf at the row's index must be the one recomputed
//!   from the row, both in the process's authenticated view of the ledger
//!   and in the stored leaf row) before anything of it is written; a failing
//!   row aborts the export with `DATA_LOSS` naming the row and its index,
//!   and no signature is sent.
//! - **Completeness.** An export is complete or refused. Every leaf below
//!   the cut whose authenticated tenant, kind and event time put it in the
//!   window ([`crate::ledger::Known`]) must have been matched by a row; the
//!   first that was not aborts the export, after the rows, with `DATA_LOSS`
//!   naming its index (`ledger_row_missing`), and no signature is sent. A
//!   row deleted, moved to another index, tenant or time, or a leaf whose
//!   owner could not be authenticated, is found this way, whatever the
//!   database's other columns say. The `tool` and `service` filters apply
//!   to rows already checked, so that a filtered export is proven complete
//!   too.
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
//!
//! Every export kind is the same code over its table's [`Exported`] rows.
//! A table whose rows may belong to no tenant (audit events: platform-wide
//! ones have an empty tenant) exports those to a caller without claims who
//! names no tenant; its document then says `"tenant":""`.

use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::pin::Pin;
use std::task::{Context, Poll};

use soma_mesh::Caller;
use soma_proto::v1 as pb;
use tokio::sync::mpsc;
use tonic::Status;
use tracing::Instrument as _;

use crate::convert::{rfc3339_nanos, to_u64};
use crate::error::AnalyticsError;
use crate::ledger::{self, Gap, Known, Seen, StoredCheckpoint};
use crate::service::AnalyticsService;
use crate::tables::row::MAC_SCHEME;
use crate::tables::{self, EventRow, ExportPage, ExportRow, Exported, Seal};
use crate::validate::{self, invalid};

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

/// An export RPC of table `T` (`ExportCapsuleRuns`, `ExportBillingLedger`, …).
pub(crate) async fn export<T: Exported>(
    svc: &AnalyticsService,
    caller: &Caller,
    request: pb::ExportRequest,
) -> Result<ExportStream, Status> {
    let plan = Plan::new::<T>(svc, caller, &request).await?;
    Ok(spawn_export::<T>(svc.clone(), plan))
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

/// A validated export request and the checkpoint it is cut at.
#[derive(Clone, Debug)]
struct Plan {
    /// The document's `kind`.
    kind: &'static str,
    tenant: String,
    from: i64,
    to: i64,
    tool: Option<String>,
    service: Option<String>,
    origin: String,
    checkpoint: StoredCheckpoint,
}

impl Plan {
    /// Checks every field, then takes the latest checkpoint.
    async fn new<T: Exported>(
        svc: &AnalyticsService,
        caller: &Caller,
        r: &pb::ExportRequest,
    ) -> Result<Self, AnalyticsError> {
        let tenant = match validate::read_scope(caller, &r.tenant)? {
            Some(tenant) => tenant,
            // Platform-wide rows belong to no tenant: a caller without
            // tenant claims who names none exports those.
            None if T::PLATFORM_WIDE => String::new(),
            None => {
                return Err(invalid(
                    "tenant",
                    "required: a caller without tenant claims must name the tenant to export",
                ));
            }
        };
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
        if tool.is_some() && T::TOOL.is_none() {
            return Err(invalid("tool", format!("{} have no tool to filter by", T::TABLE)));
        }
        let service = optional("service", &r.service)?;
        let checkpoint = svc.ledger.latest_checkpoint().await?;
        // The authenticated view must hold every leaf below the cut; a
        // ledger that failed its start-up check cannot prove anything.
        svc.ledger.catch_up(checkpoint.tree_size).await?;
        Ok(Self {
            kind: T::EXPORT,
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
fn spawn_export<T: Exported>(svc: AnalyticsService, plan: Plan) -> ExportStream {
    let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
    tokio::spawn(
        async move {
            match write_export::<T>(&svc, &plan, &tx).await {
                Ok(()) => {}
                Err(Abort::ClientGone) => {
                    tracing::info!(kind = plan.kind, "export abandoned by the client");
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
async fn write_export<T: Exported>(
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
        json(plan.kind),
        json(&plan.tenant),
        json(&rfc3339_nanos(plan.from)),
        json(&rfc3339_nanos(plan.to)),
        json(&plan.origin),
        plan.checkpoint.tree_size,
        json(&plan.checkpoint.root.to_base64()),
    );
    out.write(header.as_bytes()).await?;
    let exported = write_rows::<T>(svc, plan, &mut out).await?;
    out.write(b"]}\n").await?;
    out.flush().await?;

    let ChunkWriter { signing, spill, .. } = out;
    let signed = tokio::task::spawn_blocking(move || second_pass(signing, spill))
        .await
        .map_err(|e| AnalyticsError::Config(format!("export signing task: {e}")))??;
    tracing::info!(
        kind = plan.kind,
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

/// Writes the rows of the window, page after page, and returns how many;
/// then proves that no leaf of the window lacked its row.
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
    let cut = plan.checkpoint.tree_size;
    let mut seen = Seen::below(cut);
    let mut next = Some(PageTask::<R>::spawn(svc, plan, None));
    let mut first = true;
    let mut exported: u64 = 0;
    let mut object = Vec::with_capacity(1024);
    while let Some(task) = next.take() {
        let page = task.join().await?;
        if page.failed.is_none()
            && page.full
            && let Some(after) = page.last
        {
            next = Some(PageTask::spawn(svc, plan, Some(after)));
        }
        for (row, index) in &page.rows {
            if !seen.insert(*index) {
                return Err(Abort::Failed(AnalyticsError::LedgerLeafMismatch {
                    index: *index,
                    detail: format!("a second row of {} claims this index", R::TABLE),
                }));
            }
            if plan.tool.as_deref().is_some_and(|tool| row.tool() != Some(tool))
                || plan
                    .service
                    .as_deref()
                    .is_some_and(|service| service_of(row.recorded_by()) != service)
            {
                continue;
            }
            object.clear();
            if !first {
                object.push(b',');
            }
            first = false;
            row.write_object(to_i64_index(*index), &mut object);
            out.write(&object).await?;
            exported += 1;
        }
        if let Some(e) = page.failed {
            return Err(Abort::Failed(e));
        }
    }
    complete::<R>(svc, plan, seen).await?;
    Ok(exported)
}

/// A ledger index below the cut as the `i64` the export object writes.
fn to_i64_index(index: u64) -> i64 {
    // Indices below a checkpoint's size came from `i64` columns.
    i64::try_from(index).unwrap_or(i64::MAX)
}

/// Proves that every leaf below the cut that belongs to the export's
/// tenant, kind and window was matched by a row (see the module doc).
async fn complete<R: Exported>(
    svc: &AnalyticsService,
    plan: &Plan,
    seen: Seen,
) -> Result<(), AnalyticsError> {
    let known = std::sync::Arc::clone(svc.ledger.known());
    let tenant = plan.tenant.clone();
    let (window, cut) = ((plan.from, plan.to), plan.checkpoint.tree_size);
    // A scan of one small record per leaf: CPU work, off the async workers.
    let gap =
        tokio::task::spawn_blocking(move || ledger::read(&known).gap(&tenant, R::KIND, window, cut, &seen))
            .await
            .map_err(|e| AnalyticsError::Config(format!("export completeness task: {e}")))?;
    match gap {
        None => Ok(()),
        Some(Gap::Missing(index)) => Err(AnalyticsError::LedgerRowMissing {
            index,
            detail: format!(
                "the {} leaf of tenant {:?} in the window has no row of {} at this index",
                R::KIND,
                plan.tenant,
                R::TABLE
            ),
        }),
        Some(Gap::Unknown(index)) => Err(AnalyticsError::LedgerLeafMismatch {
            index,
            detail: "the leaf row failed its MAC: nobody can tell whose leaf it is, so no export below it \
                     can be proven complete"
                .to_owned(),
        }),
    }
}

/// A page read and checked, in keyset order.
struct CheckedPage<R> {
    /// The rows that passed and are below the cut, with their ledger
    /// indices, up to the first that failed.
    rows: Vec<(R, u64)>,
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
    fn spawn(svc: &AnalyticsService, plan: &Plan, after: Option<(i64, i64)>) -> Self {
        let db = svc.db.clone();
        let keys = std::sync::Arc::clone(&svc.keys);
        let known = std::sync::Arc::clone(svc.ledger.known());
        let tenant = plan.tenant.clone();
        let (from, to, cut) = (plan.from, plan.to, plan.checkpoint.tree_size);
        Self(tokio::spawn(
            async move {
                let page = ExportPage {
                    tenant: &tenant,
                    from,
                    to,
                    after,
                    limit: PAGE_ROWS,
                };
                let rows = tables::export_page::<R>(&db, &page).await?;
                // The MAC and leaf checks are CPU work: off the async workers.
                tokio::task::spawn_blocking(move || check_page(&keys, &known, cut, rows))
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

/// Checks each row of a page (see [`check_row`]), stopping at the first
/// that fails; rows past the cut are left out once checked.
fn check_page<R: Exported>(
    keys: &soma_sign::HmacKeyring,
    known: &std::sync::RwLock<Known>,
    cut: u64,
    rows: Vec<ExportRow<R>>,
) -> CheckedPage<R> {
    let full = i64::try_from(rows.len()).is_ok_and(|n| n >= PAGE_ROWS);
    let last = rows
        .last()
        .map(|(row, seal, _)| (row.time(), seal.ledger_index.unwrap_or(-1)));
    // The authenticated leaf hashes of the page, copied under a short read
    // lock: the writer extends the view after every commit.
    let appended: Vec<Option<soma_ledger::Hash>> = {
        let known = ledger::read(known);
        rows.iter()
            .map(|(_, seal, _)| {
                seal.ledger_index
                    .and_then(|i| u64::try_from(i).ok())
                    .filter(|i| *i < cut)
                    .and_then(|i| known.hash(i).copied())
            })
            .collect()
    };
    let mut checked = Vec::with_capacity(rows.len());
    let mut failed = None;
    let mut scratch = Scratch::default();
    for ((row, seal, leaf), appended) in rows.into_iter().zip(appended) {
        match check_row(
            keys,
            &row,
            &seal,
            leaf.as_deref(),
            appended.as_ref(),
            cut,
            &mut scratch,
        ) {
            Ok(Some(index)) => checked.push((row, index)),
            Ok(None) => {}
            Err(e) => {
                failed = Some(moved(known, cut, &row, &seal).unwrap_or(e));
                break;
            }
        }
    }
    CheckedPage {
        rows: checked,
        last,
        full,
        failed,
    }
}

/// The buffers one page's checks reuse from row to row.
#[derive(Default)]
struct Scratch {
    /// The row's canonical content, written once for both its MAC message
    /// and its leaf data.
    content: Vec<u8>,
    /// The MAC message, then the leaf data.
    message: Vec<u8>,
}

/// Checks one row: its MAC (which, under scheme 2, binds its index), then,
/// below the cut, that the leaf the ledger appended at its index (`appended`,
/// from the authenticated view) and the stored leaf row there (`leaf`, whose
/// tenant, event and kind the query matched to the row's) both hold the hash
/// recomputed from the row. `Some(index)` for a row to export; `None` for a
/// row past the cut, whose MAC bound it there.
///
/// The MAC message and the leaf data are written around the same content
/// bytes ([`EventRow::write_mac_message`], [`EventRow::write_leaf_data`]):
/// the same bytes [`EventRow::check`] and [`EventRow::leaf_hash`] compute,
/// written once.
fn check_row<R: EventRow>(
    keys: &soma_sign::HmacKeyring,
    row: &R,
    seal: &Seal,
    leaf: Option<&[u8]>,
    appended: Option<&soma_ledger::Hash>,
    cut: u64,
    scratch: &mut Scratch,
) -> Result<Option<u64>, AnalyticsError> {
    let claimed = seal.ledger_index.unwrap_or(-1);
    let integrity = || AnalyticsError::RowIntegrityAt {
        table: R::TABLE,
        primary_key: row.event_id().to_owned(),
        index: claimed,
    };
    let Scratch { content, message } = scratch;
    content.clear();
    row.write_content(content).map_err(|_| integrity())?;
    row.write_mac_message(
        content,
        seal.scheme,
        seal.row_version,
        &seal.key_id,
        seal.ledger_index,
        message,
    )
    .map_err(|_| integrity())?;
    keys.verify(&seal.key_id, message, &seal.mac)
        .map_err(|_| integrity())?;
    let index = to_u64(claimed).map_err(|_| integrity())?;
    if index >= cut {
        // Past the cut: only a MAC that binds the index says its leaf is
        // past the cut too.
        return if seal.scheme == MAC_SCHEME {
            Ok(None)
        } else {
            Err(integrity())
        };
    }
    row.write_leaf_data(content, message);
    let recomputed = soma_ledger::leaf_hash(message);
    if appended != Some(&recomputed) {
        return Err(AnalyticsError::LedgerLeafMismatch {
            index,
            detail: format!(
                "the row {}/{} is not the leaf the ledger appended at this index",
                R::TABLE,
                row.event_id()
            ),
        });
    }
    if leaf != Some(recomputed.as_bytes().as_slice()) {
        return Err(AnalyticsError::LedgerLeafMismatch {
            index,
            detail: format!(
                "the stored leaf row at this index is missing or is not the row {}/{}'s (tenant {:?})",
                R::TABLE,
                row.event_id(),
                row.tenant()
            ),
        });
    }
    Ok(Some(index))
}

/// For a row that failed its check: when its content is intact but it
/// claims an index that is not its leaf's (moved, or copied elsewhere), the
/// error names the leaf it belongs to. A scan of the view, on the failure
/// path only.
fn moved<R: EventRow>(
    known: &std::sync::RwLock<Known>,
    cut: u64,
    row: &R,
    seal: &Seal,
) -> Option<AnalyticsError> {
    let hash = row.leaf_hash().ok()?;
    let index = ledger::read(known).position(&hash, cut)?;
    let claimed = seal.ledger_index.unwrap_or(-1);
    (i64::try_from(index).ok() != Some(claimed)).then(|| AnalyticsError::LedgerRowMissing {
        index,
        detail: format!(
            "the row {}/{} of tenant {:?} claims ledger index {claimed} instead",
            R::TABLE,
            row.event_id(),
            row.tenant()
        ),
    })
}

/// The service name of a recording SPIFFE ID: its path's last segment
/// (`spiffe://td/svc/tool-registry` → `tool-registry`).
fn service_of(spiffe_id: &str) -> &str {
    spiffe_id.rsplit('/').next().unwrap_or(spiffe_id)
}

#[cfg(test)]
mod tests {
    use super::service_of;

    #[test]
    fn service_is_the_last_path_segment() {
        assert_eq!(
            service_of("spiffe://somastack.local/svc/tool-registry"),
            "tool-registry"
        );
        assert_eq!(service_of("spiffe://somastack.local/svc/gateway"), "gateway");
    }
}
