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
//!   reads down instead of growing a buffer of rows. Three stages overlap:
//!   the next page is read while the current one is checked (its MAC
//!   checks split across two threads, one per core) and the previous one
//!   is serialized straight into the chunk being filled; a fourth, the
//!   signing thread, hashes each chunk into the signature before it goes
//!   out. At most three pages and a few
//!   chunks are held at any time, whatever the export's size.
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
//! The signature is pure Ed25519 (RFC 8032 §5.1.7 verifies it, no
//! prehash), as any verifier (`soma verify export`, ring, Python's
//! `cryptography`) checks it. Its nonce is hedged: drawn from the key's
//! secret prefix and fresh system randomness before the first byte
//! ([`soma_sign::Ed25519HedgedSigner`], whose doc says why that is safe),
//! not derived from the message, so the sent bytes are hashed once, as they
//! go (the challenge, and the `sha256` of the document), and nothing of the
//! document is kept, in memory or on disk, to be hashed again. Two exports
//! of the same window carry different signatures, each valid.
//!
//! Every export kind is the same code over its table's [`Exported`] rows.
//! A table whose rows may belong to no tenant (audit events: platform-wide
//! ones have an empty tenant) exports those to a caller without claims who
//! names no tenant; its document then says `"tenant":""`.

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

/// Chunks buffered between the writer and the signing thread.
const SIGNING_CHUNKS: usize = 4;

/// Fewest rows a page must have for its checks to be split across two
/// threads: below it, starting a thread costs more than it saves.
const SPLIT_CHECK_ROWS: usize = 256;

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

/// Accumulates the document into chunks and hands them to the signing
/// thread, which hashes each into the signature before it sends it to the
/// client: every sent byte is signed, and the writer serializes the next
/// rows meanwhile.
struct ChunkWriter {
    pending: Vec<u8>,
    /// `None` once the document is finished or abandoned.
    to_signer: Option<mpsc::Sender<Piece>>,
    signer: tokio::task::JoinHandle<Result<Option<soma_sign::StreamSignature>, Abort>>,
}

/// What the writer hands the signing thread.
enum Piece {
    /// The next bytes of the document.
    Data(Vec<u8>),
    /// The document is complete: sign it.
    End,
}

impl ChunkWriter {
    /// Starts the signing thread, which forwards every chunk to `tx`.
    fn start(
        svc: &AnalyticsService,
        tx: &mpsc::Sender<Result<pb::ExportChunk, Status>>,
    ) -> Result<Self, AnalyticsError> {
        // The nonce is drawn now: a failing system generator refuses the
        // export before its first byte.
        let signing = svc.signer.hedged_stream_signer()?;
        let (to_signer, pieces) = mpsc::channel(SIGNING_CHUNKS);
        let tx = tx.clone();
        // Hashing is CPU work: its own thread, off the async workers.
        let span = tracing::Span::current();
        let signer = tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            sign_and_forward(signing, pieces, &tx)
        });
        Ok(Self {
            pending: Vec::with_capacity(CHUNK_BYTES),
            to_signer: Some(to_signer),
            signer,
        })
    }

    /// Appends `bytes`, first sending what is pending if both would not
    /// fit in one chunk.
    async fn write(&mut self, bytes: &[u8]) -> Result<(), Abort> {
        if !self.pending.is_empty() && self.pending.len() + bytes.len() > CHUNK_BYTES {
            self.flush().await?;
        }
        self.pending.extend_from_slice(bytes);
        Ok(())
    }

    /// Appends a row's object (after a comma unless it is the first),
    /// written in place into the chunk being filled; a row that does not
    /// fit starts the next chunk, as [`ChunkWriter::write`] would have
    /// placed it.
    async fn object<R: Exported>(&mut self, first: bool, row: &R, index: i64) -> Result<(), Abort> {
        let start = self.pending.len();
        if !first {
            self.pending.push(b',');
        }
        row.write_object(index, &mut self.pending);
        if start > 0 && self.pending.len() > CHUNK_BYTES {
            let rest = self.pending.split_off(start);
            self.flush().await?;
            self.pending.extend_from_slice(&rest);
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), Abort> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let data = std::mem::replace(&mut self.pending, Vec::with_capacity(CHUNK_BYTES));
        self.send(Piece::Data(data)).await
    }

    async fn send(&mut self, piece: Piece) -> Result<(), Abort> {
        let sent = match &self.to_signer {
            Some(to_signer) => to_signer.send(piece).await.is_ok(),
            None => false,
        };
        if sent {
            return Ok(());
        }
        // The signing thread stopped: the client went away.
        self.to_signer = None;
        match (&mut self.signer).await {
            Ok(Err(abort)) => Err(abort),
            Ok(Ok(_)) => Err(Abort::ClientGone),
            Err(e) => Err(Abort::Failed(AnalyticsError::Config(format!(
                "export signing task: {e}"
            )))),
        }
    }

    /// Sends what is pending, then has the document signed: the
    /// signature once every chunk has been sent.
    async fn finish(mut self) -> Result<soma_sign::StreamSignature, Abort> {
        self.flush().await?;
        self.send(Piece::End).await?;
        self.to_signer = None;
        match (&mut self.signer).await {
            Ok(Ok(Some(signed))) => Ok(signed),
            Ok(Ok(None)) => Err(Abort::ClientGone),
            Ok(Err(abort)) => Err(abort),
            Err(e) => Err(Abort::Failed(AnalyticsError::Config(format!(
                "export signing task: {e}"
            )))),
        }
    }

    /// Abandons the document: the signing thread sends what it was given
    /// and stops without signing, so that an error sent after this follows
    /// every data chunk.
    async fn abandon(mut self) {
        self.to_signer = None;
        let _ = (&mut self.signer).await;
    }
}

/// The signing thread: hashes each piece into the signature, then sends
/// it; at [`Piece::End`], returns the signature. `None` when the writer
/// stopped before the end: nothing is signed.
fn sign_and_forward(
    mut signing: soma_sign::Ed25519HedgedSigner,
    mut pieces: mpsc::Receiver<Piece>,
    tx: &mpsc::Sender<Result<pb::ExportChunk, Status>>,
) -> Result<Option<soma_sign::StreamSignature>, Abort> {
    while let Some(piece) = pieces.blocking_recv() {
        match piece {
            Piece::Data(data) => {
                signing.update(&data);
                tx.blocking_send(Ok(pb::ExportChunk {
                    data,
                    signature: None,
                }))
                .map_err(|_| Abort::ClientGone)?;
            }
            Piece::End => return Ok(Some(signing.finish())),
        }
    }
    Ok(None)
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
    let mut out = ChunkWriter::start(svc, tx)?;
    let written = write_document::<T>(svc, plan, &mut out).await;
    let exported = match written {
        Ok(exported) => exported,
        Err(abort) => {
            out.abandon().await;
            return Err(abort);
        }
    };
    let signed = out.finish().await?;
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

/// Writes the header, the rows and the end of the document; returns how
/// many rows it holds.
async fn write_document<T: Exported>(
    svc: &AnalyticsService,
    plan: &Plan,
    out: &mut ChunkWriter,
) -> Result<u64, Abort> {
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
    let exported = write_rows::<T>(svc, plan, out).await?;
    out.write(b"]}\n").await?;
    Ok(exported)
}

/// Writes the rows of the window, page after page, and returns how many;
/// then proves that no leaf of the window lacked its row.
///
/// Three pages are in flight at once, each on its own stage: the next page
/// is read (asked for as soon as the current page's last keyset position
/// is known, so one page ahead of the checks) while the current one is
/// checked on blocking threads and the previous, already checked, one is
/// written. Rows are written in order up to the first one that failed its
/// check; that row's error then ends the export, so nothing of it or after
/// it is sent, and no signature. A page read or checked ahead of a failing
/// one is dropped unwritten.
async fn write_rows<R: Exported>(
    svc: &AnalyticsService,
    plan: &Plan,
    out: &mut ChunkWriter,
) -> Result<u64, Abort> {
    let cut = plan.checkpoint.tree_size;
    let mut seen = Seen::below(cut);
    let mut reading = Some(PageRead::<R>::spawn(svc, plan, None));
    let mut checked: Option<CheckedPage<R>> = None;
    let mut first = true;
    let mut exported: u64 = 0;
    loop {
        let checking = match reading.take() {
            Some(read) => {
                let page = read.join().await?;
                if page.full
                    && let Some(after) = page.last
                {
                    reading = Some(PageRead::spawn(svc, plan, Some(after)));
                }
                Some(PageCheck::spawn(svc, cut, page.rows))
            }
            None => None,
        };
        if let Some(page) = checked.take() {
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
                out.object(first, row, to_i64_index(*index)).await?;
                first = false;
                exported += 1;
            }
            if let Some(e) = page.failed {
                return Err(Abort::Failed(e));
            }
        }
        match checking {
            Some(check) => checked = Some(check.join().await?),
            None => break,
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

/// A page as read, in keyset order, not yet checked.
struct ReadPage<R> {
    rows: Vec<ExportRow<R>>,
    /// The `(time, ledger index)` of the last row read.
    last: Option<(i64, i64)>,
    /// Whether the page was full, so that more rows may follow.
    full: bool,
}

/// A page checked, in keyset order.
struct CheckedPage<R> {
    /// The rows that passed and are below the cut, with their ledger
    /// indices, up to the first that failed.
    rows: Vec<(R, u64)>,
    /// Why the first failing row failed.
    failed: Option<AnalyticsError>,
}

/// The task reading one page; aborted when dropped (an export that stops
/// early leaves no read behind).
struct PageRead<R>(tokio::task::JoinHandle<Result<ReadPage<R>, AnalyticsError>>);

impl<R: Exported> PageRead<R> {
    fn spawn(svc: &AnalyticsService, plan: &Plan, after: Option<(i64, i64)>) -> Self {
        let db = svc.db.clone();
        let tenant = plan.tenant.clone();
        let (from, to) = (plan.from, plan.to);
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
                let full = i64::try_from(rows.len()).is_ok_and(|n| n >= PAGE_ROWS);
                let last = rows
                    .last()
                    .map(|(row, seal, _)| (row.time(), seal.ledger_index.unwrap_or(-1)));
                Ok(ReadPage { rows, last, full })
            }
            .instrument(tracing::Span::current()),
        ))
    }

    async fn join(mut self) -> Result<ReadPage<R>, AnalyticsError> {
        (&mut self.0)
            .await
            .map_err(|e| AnalyticsError::Config(format!("export page task: {e}")))?
    }
}

impl<R> Drop for PageRead<R> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The checks of one page, on a blocking thread (MACs and hashes are CPU
/// work). Once started it runs to its end even if the export stops; its
/// result is then dropped.
struct PageCheck<R>(tokio::task::JoinHandle<CheckedPage<R>>);

impl<R: Exported> PageCheck<R> {
    fn spawn(svc: &AnalyticsService, cut: u64, rows: Vec<ExportRow<R>>) -> Self {
        let keys = std::sync::Arc::clone(&svc.keys);
        let known = std::sync::Arc::clone(svc.ledger.known());
        let span = tracing::Span::current();
        Self(tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            check_page(&keys, &known, cut, rows)
        }))
    }

    async fn join(self) -> Result<CheckedPage<R>, AnalyticsError> {
        self.0
            .await
            .map_err(|e| AnalyticsError::Config(format!("export check task: {e}")))
    }
}

/// Checks each row of a page (see [`check_row`]), stopping at the first
/// that fails; rows past the cut are left out once checked.
///
/// A page of at least [`SPLIT_CHECK_ROWS`] rows is checked in two halves
/// at once, the second on a scoped thread: the checks of one row depend on
/// no other row, so the halves need no coordination. The result is what
/// checking the rows one after the other gives: the first half's rows up to
/// its first failure; only when the first half has none, the second half's
/// rows up to its own.
fn check_page<R: Exported>(
    keys: &soma_sign::HmacKeyring,
    known: &std::sync::RwLock<Known>,
    cut: u64,
    mut rows: Vec<ExportRow<R>>,
) -> CheckedPage<R> {
    // The authenticated leaf hashes of the page, copied under a short read
    // lock: the writer extends the view after every commit.
    let mut appended: Vec<Option<soma_ledger::Hash>> = {
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
    if rows.len() < SPLIT_CHECK_ROWS {
        return check_run(keys, known, cut, rows, appended);
    }
    let half = rows.len() / 2;
    let second_rows = rows.split_off(half);
    let second_appended = appended.split_off(half);
    let (mut first, second) = std::thread::scope(|scope| {
        let second = scope.spawn(|| check_run(keys, known, cut, second_rows, second_appended));
        let first = check_run(keys, known, cut, rows, appended);
        (first, second.join())
    });
    if first.failed.is_some() {
        return first;
    }
    match second {
        Ok(second) => {
            first.rows.extend(second.rows);
            first.failed = second.failed;
        }
        // Only a defect panics here; the rows of the second half are then
        // unchecked, so the export stops where they begin.
        Err(_) => {
            first.failed = Some(AnalyticsError::Config("export check thread panicked".to_owned()));
        }
    }
    first
}

/// Checks `rows` in order (`appended`: the authenticated leaf hash at each
/// row's index), stopping at the first that fails.
fn check_run<R: Exported>(
    keys: &soma_sign::HmacKeyring,
    known: &std::sync::RwLock<Known>,
    cut: u64,
    rows: Vec<ExportRow<R>>,
    appended: Vec<Option<soma_ledger::Hash>>,
) -> CheckedPage<R> {
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
