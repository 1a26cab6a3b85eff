//! The persisted Merkle ledger: group-committed appends, checkpoints and
//! proofs. It knows no row kind: every append is an [`Entry`], and the
//! tables say what their rows write.
//!
//! One writer per process, on a thread of its own, takes every pending
//! append it can (up to [`MAX_BATCH`]) and commits them in one
//! transaction: each event gets the next index (the leaf table's primary
//! key makes indices unique; the head's size makes them contiguous), its
//! row and leaf are inserted, the head moves, and a signed checkpoint for
//! the new size is stored. Only after the commit is any caller
//! acknowledged, so an acknowledged append is durable, and a crash before
//! it leaves nothing behind.
//!
//! Two paths commit a batch:
//! - [`Committer::commit_locked`] (every engine, every kind of row) locks
//!   the head row first, so writers in other processes serialize on it,
//!   and looks up the batch's event ids before assigning indices;
//! - [`Committer::commit_fast`] (PostgreSQL, batches of the tables that
//!   declare themselves bulk, while this writer knows the stored head):
//!   one statement, guarded by that head, that writes nothing when another
//!   process moved it or when an event id is already stored, in which case
//!   the locked path decides. Its checkpoint is signed with a hedged nonce
//!   drawn (and `R = r·B` computed) while the previous statement was in
//!   flight ([`soma_sign::Ed25519HedgedSigner`]); the locked path signs as
//!   RFC 8032 does. Both are pure Ed25519 signatures, verified alike.
//!
//! On PostgreSQL the writer commits only while it holds the ledger writer's
//! lease ([`lease`]): an advisory lock held by the very session it commits
//! on, so that of several Analytics instances on one database exactly one
//! writes, and a writer whose session died cannot commit anything. An
//! instance without the lease stands by ([`Ledger::standing`]); the one
//! that gets it takes the ledger over ([`Committer::take_over`]) before its
//! first append. On SQLite (one instance, embedded) the writer always
//! writes.
//!
//! Event ids are scoped per tenant: idempotency and conflicts are decided
//! on (tenant, event id). The writer seals each row (row MAC scheme 2,
//! which binds the ledger index) and each leaf row (its own MAC, which
//! binds its tenant) once the index is assigned, and keeps [`Known`], the
//! authenticated view of every leaf that exports and proofs check the
//! database against.

mod known;
mod lease;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::task::Poll;

pub(crate) use known::{Gap, Known, Owner, Seen};

use soma_ledger::{Checkpoint, CheckpointSigner, CompactTree, Hash};
use soma_mesh::Serving;
use soma_sign::{Ed25519HedgedSigner, Ed25519Signer, HmacKeyring};
use soma_store::{ConnectionLost as _, Database, on_pool, retry_on_pool};
use sqlx::Connection as _;
use sqlx::postgres::PgConnection;
use tokio::sync::{RwLock, mpsc, oneshot, watch};

use self::lease::{Asked, Lease};

use crate::convert::{now_nanos, to_i64, to_u64};
use crate::error::AnalyticsError;
use crate::integrity::{self, Health};
use crate::tables::leaves::{LeafFacts, LeafRow};
use crate::tables::{self, Conn, Entry, Get, Seal, Value, Write, bind_values, on_conn};

/// Most appends committed in one transaction.
pub(crate) const MAX_BATCH: usize = 512;

/// Rows per multi-row statement (10 parameters each: far below SQLite's and
/// PostgreSQL's parameter limits).
const LOOKUP_CHUNK: usize = 256;

/// Event rows per multi-row INSERT (up to 20 parameters each).
const ROWS_CHUNK: usize = 128;

/// Where an event landed in the ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Appended {
    pub index: u64,
    pub leaf_hash: Hash,
}

struct Append {
    entry: Box<dyn Entry>,
    /// Computed by the caller's task, so that the writer's critical path
    /// (which holds the head lock) hashes no leaf data. The row's and the
    /// leaf's MACs bind the index, so the writer makes them.
    leaf_hash: Hash,
    reply: oneshot::Sender<Result<Appended, AnalyticsError>>,
}

/// Handle to the ledger: appends go to the writer, reads go to the
/// database directly.
#[derive(Clone)]
pub(crate) struct Ledger {
    db: Database,
    appends: mpsc::Sender<Append>,
    health: Arc<RwLock<Health>>,
    signer: Arc<CheckpointSigner>,
    signer_key_id: String,
    /// Every leaf, authenticated: indexed for O(log n) proofs at any size,
    /// with whose leaf each is; kept in step by the writer, and caught up
    /// from the database (leaf MACs checked) when another process appended.
    known: Arc<std::sync::RwLock<Known>>,
    /// Row MAC keys, to check the leaf rows read when catching up.
    keys: Arc<HmacKeyring>,
    /// The latest checkpoint this process knows of, for `/metrics`.
    last_checkpoint: Arc<LastCheckpoint>,
    /// Whether this instance writes (holds the lease) or stands by; `None`
    /// on SQLite, where it always writes.
    standing: Option<watch::Receiver<Serving>>,
}

/// Why an instance without the lease does not serve writes: the reason
/// its refusals, health and readiness carry.
pub(crate) const STANDBY: &str = "standby";

/// The latest checkpoint this process signed, or the latest stored one
/// when it started: its tree size and when it was signed. Set by the
/// writer after each commit that grew the tree; read by `/metrics`
/// without a lock.
#[derive(Debug, Default)]
pub(crate) struct LastCheckpoint {
    tree_size: AtomicU64,
    /// Unix nanoseconds; 0 while there is no checkpoint.
    signed_at: AtomicI64,
}

impl LastCheckpoint {
    fn set(&self, tree_size: u64, signed_at: i64) {
        // The time first, read last by `get`: a reader between the two
        // stores sees the new time with the previous size, never a size
        // without a time.
        self.signed_at.store(signed_at, Ordering::Relaxed);
        self.tree_size.store(tree_size, Ordering::Relaxed);
    }

    /// The tree size and the signing time (Unix nanoseconds) of the
    /// latest checkpoint; `None` before the first.
    pub(crate) fn get(&self) -> Option<(u64, i64)> {
        let size = self.tree_size.load(Ordering::Relaxed);
        let at = self.signed_at.load(Ordering::Relaxed);
        (size > 0 && at > 0).then_some((size, at))
    }
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("origin", &self.signer.name())
            .finish_non_exhaustive()
    }
}

impl Ledger {
    /// Verifies the stored ledger, loads the authenticated view of every
    /// leaf and starts the writer on its thread. On SQLite it re-seals
    /// what was sealed under the previous row-MAC scheme
    /// ([`integrity::reseal`]) first; on PostgreSQL the writer asks for the
    /// lease once before this returns, and the instance that gets it
    /// re-seals as it takes the ledger over, while one that does not stands
    /// by and keeps asking.
    pub(crate) async fn open(
        db: Database,
        keys: Arc<HmacKeyring>,
        signer: CheckpointSigner,
        signer_key_id: String,
        nonce_key: Arc<Ed25519Signer>,
    ) -> Result<Self, AnalyticsError> {
        // Checkpoint signatures whose nonce was drawn ahead are made with
        // `nonce_key`: it must be the checkpoint key.
        if nonce_key.public_key() != signer.public_key() {
            return Err(AnalyticsError::Config(
                "the key given for checkpoint nonces is not the checkpoint signing key".to_owned(),
            ));
        }
        let health = integrity::verify(&db).await?;
        // On PostgreSQL only the lease's holder writes, re-seals included
        // (see `Committer::take_over`).
        if health == Health::Sound && db.as_sqlite().is_some() {
            // Only a sound tree authenticates the leaf hashes the re-seal
            // matches old rows against.
            let (refused, _) = integrity::reseal(&db, &keys).await?;
            for f in &refused {
                tracing::error!(
                    table = %f.table,
                    primary_key = %f.primary_key,
                    reason = %f.reason,
                    "row left under its old MAC scheme: it does not verify"
                );
            }
        }
        if let Health::Corrupt {
            first_bad_index,
            reason,
        } = &health
        {
            tracing::error!(
                first_bad_index,
                reason = %reason,
                "ledger integrity check failed at start-up: refusing writes"
            );
        } else {
            tracing::info!("ledger verified at start-up");
        }
        let known = Arc::new(std::sync::RwLock::new(Known::default()));
        if health == Health::Sound {
            load_leaves(&db, &keys, &known, 0).await?;
        }
        let last_checkpoint = Arc::new(LastCheckpoint::default());
        let stored = retry_on_pool!(db, "last_checkpoint", AnalyticsError, pool => sqlx::query(
            "SELECT tree_size, created_at FROM ledger_checkpoints ORDER BY tree_size DESC LIMIT 1",
        )
        .fetch_optional(pool)
        .await?
        .map(|r| -> Result<(i64, i64), AnalyticsError> { Ok((r.int("tree_size")?, r.int("created_at")?)) })
        .transpose()?)?;
        if let Some((size, at)) = stored {
            last_checkpoint.set(to_u64(size)?, at);
        }
        let (appends, rx) = mpsc::channel(4 * MAX_BATCH);
        let signer = Arc::new(signer);
        let health = Arc::new(RwLock::new(health));
        let lease = db
            .as_postgres()
            .map(|pool| Lease::new((*pool.connect_options()).clone()));
        let (standing_tx, standing) = if lease.is_some() {
            let (tx, rx) = watch::channel(Serving::No(STANDBY));
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let committer = Committer {
            db: db.clone(),
            keys: Arc::clone(&keys),
            signer: Arc::clone(&signer),
            signer_key_id: signer_key_id.clone(),
            nonce_key,
            next_signature: None,
            health: Arc::clone(&health),
            known: Arc::clone(&known),
            last_checkpoint: Arc::clone(&last_checkpoint),
            head: None,
            lease,
            standing: standing_tx,
            replies: tokio::runtime::Handle::try_current()
                .map_err(|e| AnalyticsError::Config(format!("the ledger needs a tokio runtime: {e}")))?,
        };
        // The writer is the one serial step every append goes through: it
        // runs on a thread of its own, so that the reply of its database
        // waits for no request task queued on the service's runtime.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| AnalyticsError::Config(format!("the ledger writer's runtime: {e}")))?;
        // The writer asks for the lease once before anything else (on its
        // own runtime, where its session belongs) and says so: the first
        // instance started on a database is its writer from the start.
        let (asked_tx, asked) = oneshot::channel();
        std::thread::Builder::new()
            .name("soma-ledger".to_owned())
            .spawn(move || runtime.block_on(writer(committer, rx, asked_tx)))
            .map_err(|e| AnalyticsError::Config(format!("the ledger writer's thread: {e}")))?;
        let _ = asked.await;
        Ok(Self {
            db,
            appends,
            health,
            signer,
            signer_key_id,
            known,
            keys,
            last_checkpoint,
            standing,
        })
    }

    /// Whether this instance writes or stands by, as it changes; `None` on
    /// SQLite, where it always writes.
    pub(crate) fn standing(&self) -> Option<watch::Receiver<Serving>> {
        self.standing.clone()
    }

    /// Whether this instance writes now.
    pub(crate) fn writes(&self) -> bool {
        self.standing
            .as_ref()
            .is_none_or(|standing| standing.borrow().is_serving())
    }

    /// The checkpoint origin (the signer's key name).
    pub(crate) fn origin(&self) -> &str {
        self.signer.name()
    }

    /// The start-up verdict.
    pub(crate) async fn health(&self) -> Health {
        self.health.read().await.clone()
    }

    /// The start-up verdict, if it can be read without waiting (for
    /// `/metrics`, which must never block).
    pub(crate) fn sound_now(&self) -> Option<bool> {
        self.health.try_read().ok().map(|h| matches!(*h, Health::Sound))
    }

    /// Refuses when the ledger failed its integrity check.
    pub(crate) async fn sound(&self) -> Result<(), AnalyticsError> {
        match &*self.health.read().await {
            Health::Sound => Ok(()),
            Health::Corrupt {
                first_bad_index,
                reason,
            } => Err(AnalyticsError::LedgerCorrupt {
                first_bad_index: *first_bad_index,
                reason: reason.clone(),
            }),
        }
    }

    /// Appends one row of any ledgered kind; returns once committed.
    /// Refused with [`AnalyticsError::Standby`] while another instance
    /// holds the lease.
    ///
    /// An append whose commit failed because the connection was lost (the
    /// writer's session died: a failover, a restart, a terminated backend)
    /// is sent again once the writer has the lease back on a new session,
    /// within [`soma_store::RetryPolicy::DEFAULT`]'s bound. Safe whatever
    /// the lost commit did: appends are idempotent by event id — the writer
    /// answers an event id already stored, with the same content, with its
    /// stored index and writes nothing. When the lease is not back within
    /// the bound (another instance took it over), the append is refused as
    /// a standby's, which callers send to the instance that writes. The
    /// writer itself is unchanged: it stops committing when its session
    /// dies and asks for the lease again.
    pub(crate) async fn append(
        &self,
        entry: impl Entry + Clone + 'static,
    ) -> Result<Appended, AnalyticsError> {
        let policy = soma_store::RetryPolicy::DEFAULT;
        let started = std::time::Instant::now();
        let mut attempts = 1;
        loop {
            let error = match self.append_once(entry.clone()).await {
                Err(error) if error.is_connection_lost() => error,
                outcome => return outcome,
            };
            let left = policy.window.saturating_sub(started.elapsed());
            if attempts >= policy.max_attempts || left.is_zero() {
                tracing::warn!(attempts, %error, "ledger append lost its connection; giving up");
                return Err(error);
            }
            tracing::warn!(attempt = attempts, %error, "ledger append lost its connection; sending it again once the writer writes");
            if !self.writing_within(left).await {
                return Err(AnalyticsError::Standby);
            }
            attempts += 1;
        }
    }

    /// Waits up to `within` for the writer to hold the lease (at once on
    /// SQLite); whether it does.
    async fn writing_within(&self, within: std::time::Duration) -> bool {
        let Some(mut standing) = self.standing.clone() else {
            return true;
        };
        let serving = tokio::time::timeout(within, standing.wait_for(|s| s.is_serving())).await;
        matches!(serving, Ok(Ok(_)))
    }

    /// One append: see [`Ledger::append`].
    async fn append_once(&self, entry: impl Entry + 'static) -> Result<Appended, AnalyticsError> {
        self.sound().await?;
        if !self.writes() {
            return Err(AnalyticsError::Standby);
        }
        let leaf_hash = entry.hash()?;
        let (reply, rx) = oneshot::channel();
        self.appends
            .send(Append {
                entry: Box::new(entry),
                leaf_hash,
                reply,
            })
            .await
            .map_err(|_| AnalyticsError::WriterStopped)?;
        rx.await.map_err(|_| AnalyticsError::WriterStopped)?
    }

    /// The latest checkpoint; a freshly signed empty one before any append.
    pub(crate) async fn latest_checkpoint(&self) -> Result<StoredCheckpoint, AnalyticsError> {
        let row = retry_on_pool!(self.db, "latest_checkpoint", AnalyticsError, pool => sqlx::query(
            "SELECT tree_size, root, note, key_id FROM ledger_checkpoints ORDER BY tree_size DESC LIMIT 1",
        )
        .fetch_optional(pool)
        .await?
        .map(|r| StoredCheckpoint::read(&r))
        .transpose()?)?;
        match row {
            Some(cp) => Ok(cp),
            None => {
                let empty = Checkpoint::new(self.signer.name(), 0, soma_ledger::EMPTY_ROOT)?;
                Ok(StoredCheckpoint {
                    tree_size: 0,
                    root: soma_ledger::EMPTY_ROOT,
                    note: self.signer.sign(&empty),
                    key_id: self.signer_key_id.clone(),
                })
            }
        }
    }

    /// The checkpoint stored for exactly `tree_size`.
    pub(crate) async fn checkpoint_at(&self, tree_size: u64) -> Result<StoredCheckpoint, AnalyticsError> {
        let size = to_i64(tree_size)?;
        retry_on_pool!(self.db, "checkpoint_at", AnalyticsError, pool => sqlx::query(
            "SELECT tree_size, root, note, key_id FROM ledger_checkpoints WHERE tree_size = $1",
        )
        .bind(size)
        .fetch_optional(pool)
        .await?
        .map(|r| StoredCheckpoint::read(&r))
        .transpose()?)?
        .ok_or_else(|| AnalyticsError::NotFound(format!("no checkpoint at tree size {tree_size}")))
    }

    /// The leaf of `tenant`'s event: index, tenant, hash.
    pub(crate) async fn leaf_of(
        &self,
        tenant: &str,
        event_id: &str,
    ) -> Result<(u64, String, Hash), AnalyticsError> {
        let leaf = self.leaves_of(Some(tenant), event_id).await?.pop();
        let leaf =
            leaf.ok_or_else(|| AnalyticsError::NotFound(format!("no ledger leaf for event {event_id}")))?;
        Ok((to_u64(leaf.index)?, leaf.tenant, Hash::from_slice(&leaf.hash)?))
    }

    /// The stored leaf rows of `event_id`: of `tenant` (at most one), or of
    /// every tenant when `None`.
    pub(crate) async fn leaves_of(
        &self,
        tenant: Option<&str>,
        event_id: &str,
    ) -> Result<Vec<LeafRow>, AnalyticsError> {
        // Two statements rather than one with an `OR`, so that each keeps a
        // plan that uses an index.
        let tenant_is = if tenant.is_some() {
            "tenant = $2"
        } else {
            "$2 = ''"
        };
        let sql = format!(
            "SELECT {} FROM ledger_leaves WHERE event_id = $1 AND {tenant_is} ORDER BY leaf_index LIMIT 16",
            LeafRow::COLUMNS
        );
        soma_store::retry!(
            self.db,
            "leaves_of",
            AnalyticsError,
            on_pool!(self.db, pool => sqlx::query(&sql)
            .bind(event_id)
            .bind(tenant.unwrap_or(""))
            .fetch_all(pool)
            .await?
            .iter()
            .map(LeafRow::read)
            .collect())
        )
    }

    /// The latest checkpoint this process signed or found at start-up.
    pub(crate) fn last_checkpoint(&self) -> &LastCheckpoint {
        &self.last_checkpoint
    }

    /// The authenticated view of the ledger (see [`Known`]); read it with
    /// [`read`], never across an await.
    pub(crate) fn known(&self) -> &Arc<std::sync::RwLock<Known>> {
        &self.known
    }

    /// An inclusion proof of leaf `index` in the tree of `tree_size`.
    pub(crate) async fn inclusion_proof(
        &self,
        index: u64,
        tree_size: u64,
    ) -> Result<Vec<Hash>, AnalyticsError> {
        self.catch_up(tree_size).await?;
        Ok(read(&self.known).tree().inclusion_proof(index, tree_size)?)
    }

    /// A consistency proof between two tree sizes.
    pub(crate) async fn consistency_proof(
        &self,
        size1: u64,
        size2: u64,
    ) -> Result<Vec<Hash>, AnalyticsError> {
        self.catch_up(size2).await?;
        Ok(read(&self.known).tree().consistency_proof(size1, size2)?)
    }

    /// Brings the in-memory view up to at least `tree_size` leaves from
    /// the database (another process may have appended), each leaf row's
    /// MAC checked.
    pub(crate) async fn catch_up(&self, tree_size: u64) -> Result<(), AnalyticsError> {
        self.sound().await?;
        let have = read(&self.known).size();
        if have >= tree_size {
            return Ok(());
        }
        load_leaves(&self.db, &self.keys, &self.known, have).await?;
        let size = read(&self.known).size();
        if size < tree_size {
            return Err(AnalyticsError::LedgerCorrupt {
                first_bad_index: size,
                reason: "leaf missing".to_owned(),
            });
        }
        Ok(())
    }
}

/// Reads the view; a poisoned lock is still usable.
pub(crate) fn read(known: &std::sync::RwLock<Known>) -> std::sync::RwLockReadGuard<'_, Known> {
    // A panic while holding the lock cannot leave the view half-updated
    // (push is the only mutation, and it cannot panic between its two
    // vectors), so a poisoned lock is still usable.
    known.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write(known: &std::sync::RwLock<Known>) -> std::sync::RwLockWriteGuard<'_, Known> {
    known.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Leaf rows read per round trip when loading the view.
const LOAD_PAGE: i64 = 65_536;

/// The stored leaf rows from index `from` on, at most [`LOAD_PAGE`] of
/// them, checked to be contiguous.
async fn leaf_rows_from(db: &Database, from: u64) -> Result<Vec<LeafRow>, AnalyticsError> {
    let sql = format!(
        "SELECT {} FROM ledger_leaves WHERE leaf_index >= $1 ORDER BY leaf_index LIMIT $2",
        LeafRow::COLUMNS
    );
    // A read on the pool (the writer's take-over loads leaves through it
    // too, outside its lease session): retried on a new connection when
    // the connection is lost.
    let rows: Vec<LeafRow> = retry_on_pool!(db, "leaf_rows", AnalyticsError, pool => sqlx::query(&sql)
        .bind(to_i64(from)?)
        .bind(LOAD_PAGE)
        .fetch_all(pool)
        .await?
        .iter()
        .map(LeafRow::read)
        .collect::<Result<Vec<_>, _>>()?)?;
    for (offset, row) in rows.iter().enumerate() {
        let expected = from + offset as u64;
        if u64::try_from(row.index).ok() != Some(expected) {
            return Err(AnalyticsError::LedgerCorrupt {
                first_bad_index: expected,
                reason: "leaf missing".to_owned(),
            });
        }
    }
    Ok(rows)
}

/// Appends a stored leaf row to the view: its owner known when its MAC
/// verifies, unknown otherwise.
fn push_row(known: &mut Known, keys: &HmacKeyring, row: &LeafRow) -> Result<(), AnalyticsError> {
    let hash = Hash::from_slice(&row.hash)?;
    match (row.check(keys), row.time) {
        (Ok(()), Some(time)) => known.push(hash, Some((&row.tenant, &row.kind, time))),
        (Err(reason), _) => {
            tracing::error!(index = row.index, reason = %reason, "ledger leaf row fails its check: its owner is unknown");
            known.push(hash, None);
        }
        (Ok(()), None) => known.push(hash, None),
    }
    Ok(())
}

/// Loads every stored leaf from index `from` on into `known`, a page at a
/// time (so that memory holds one page of rows beside the view). Stops
/// early when another task extended the view meanwhile: it then holds
/// these leaves already.
async fn load_leaves(
    db: &Database,
    keys: &HmacKeyring,
    known: &std::sync::RwLock<Known>,
    mut from: u64,
) -> Result<(), AnalyticsError> {
    loop {
        let rows = leaf_rows_from(db, from).await?;
        let mut view = write(known);
        if view.size() != from {
            return Ok(());
        }
        for row in &rows {
            push_row(&mut view, keys, row)?;
        }
        drop(view);
        if i64::try_from(rows.len()).unwrap_or(i64::MAX) < LOAD_PAGE {
            return Ok(());
        }
        from += rows.len() as u64;
    }
}

/// A checkpoint row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StoredCheckpoint {
    pub tree_size: u64,
    pub root: Hash,
    pub note: String,
    pub key_id: String,
}

impl StoredCheckpoint {
    fn read<R: Get>(r: &R) -> Result<Self, AnalyticsError> {
        Ok(Self {
            tree_size: to_u64(r.int("tree_size")?)?,
            root: Hash::from_slice(&r.bytes("root")?)?,
            note: r.text("note")?,
            key_id: r.text("key_id")?,
        })
    }
}

fn frontier_bytes(tree: &CompactTree) -> Vec<u8> {
    tree.frontier()
        .iter()
        .flat_map(|h| h.as_bytes().iter().copied())
        .collect()
}

fn parse_frontier(size: u64, bytes: &[u8]) -> Result<CompactTree, AnalyticsError> {
    if !bytes.len().is_multiple_of(Hash::LEN) {
        return Err(AnalyticsError::LedgerCorrupt {
            first_bad_index: size,
            reason: "stored frontier is not a whole number of hashes".to_owned(),
        });
    }
    let hashes = bytes
        .chunks(Hash::LEN)
        .map(Hash::from_slice)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(CompactTree::from_frontier(size, hashes)?)
}

/// What the writer needs to commit a batch and answer its callers.
struct Committer {
    db: Database,
    keys: Arc<HmacKeyring>,
    signer: Arc<CheckpointSigner>,
    signer_key_id: String,
    /// The checkpoint key, for signatures whose nonce is drawn ahead.
    nonce_key: Arc<Ed25519Signer>,
    /// The next fast-path checkpoint's signature, its nonce drawn (and
    /// `R = r·B` computed) while the previous statement was in flight;
    /// taken by the one checkpoint it signs.
    next_signature: Option<Ed25519HedgedSigner>,
    health: Arc<RwLock<Health>>,
    known: Arc<std::sync::RwLock<Known>>,
    /// Moved after each commit that signed a checkpoint.
    last_checkpoint: Arc<LastCheckpoint>,
    /// The stored head as this writer last committed it: what the
    /// single-statement path expects to find (see
    /// [`Committer::commit_fast`]). `None` until the first commit, and
    /// after any failure, when only the stored head is known.
    head: Option<CompactTree>,
    /// The ledger writer's lease (PostgreSQL): its holding session is the
    /// only one commits go to. `None` on SQLite.
    lease: Option<Lease>,
    /// Whether this instance writes, for everyone else to see (`None` on
    /// SQLite).
    standing: Option<watch::Sender<Serving>>,
    /// The service's runtime, where acknowledgements are sent from.
    replies: tokio::runtime::Handle,
}

/// What one committed batch did.
struct Committed {
    /// One result per append, in batch order.
    results: Vec<Result<Appended, AnalyticsError>>,
    /// The tree size before the batch.
    start: u64,
    /// The leaf hashes the batch appended, in index order, each with the
    /// position of its append in the batch.
    appended: Vec<(Hash, usize)>,
    /// The head after the batch.
    head: CompactTree,
    /// When the batch's checkpoint was signed (Unix nanoseconds, as
    /// stored), if the batch grew the tree.
    checkpoint_at: Option<i64>,
}

/// The writer task: batches appends into commits until every sender is
/// gone. `asked` is told once the lease was asked for the first time.
///
/// Group commit without a timer: a batch is whatever is queued when the
/// writer turns to it, so while one batch commits, the next one gathers,
/// and a lone append waits for nothing.
///
/// On PostgreSQL, while the lease is not held the writer stands by: it asks
/// for the lease every [`lease::POLL`] and refuses every append that
/// reaches it ([`AnalyticsError::Standby`]; the RPC gate refuses them
/// before they get here, this is the fence behind it). While it holds the
/// lease and is idle, it checks its session every [`lease::CHECK`].
async fn writer(mut committer: Committer, mut rx: mpsc::Receiver<Append>, asked: oneshot::Sender<()>) {
    if committer.lease.is_some() {
        committer.ask_for_lease().await;
    }
    let _ = asked.send(());
    let mut poll = tokio::time::interval(lease::POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut check = tokio::time::interval(lease::CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut committed_since_check = false;
    // The size of the last batch committed.
    let mut previous = 0;
    loop {
        let standing_by = committer.lease.as_ref().is_some_and(|l| !l.is_held());
        let first = if standing_by {
            tokio::select! {
                append = rx.recv() => match append {
                    Some(append) => {
                        let _ = append.reply.send(Err(AnalyticsError::Standby));
                        continue;
                    }
                    None => return,
                },
                _ = poll.tick() => {
                    committer.ask_for_lease().await;
                    continue;
                }
            }
        } else {
            tokio::select! {
                append = rx.recv() => match append {
                    Some(append) => append,
                    None => return,
                },
                _ = check.tick(), if committer.lease.is_some() => {
                    // A commit since the last tick proved the session.
                    if !std::mem::take(&mut committed_since_check) {
                        committer.check_lease().await;
                    }
                    continue;
                }
            }
        };
        let mut batch = vec![first];
        take_queued(&mut rx, &mut batch);
        // Group commit: the callers of the last batch, answered a moment
        // ago, are likely appending again. When far fewer than them are
        // queued, wait a little for the rest instead of paying a whole
        // commit (a WAL flush) for a straggler while they queue behind it.
        // Blocking sleeps: this thread runs nothing but the writer, and the
        // timer's millisecond wheel is too coarse for this.
        let mut waited = std::time::Duration::ZERO;
        while awaits_cohort(batch.len(), previous) && waited < COHORT_WAIT {
            std::thread::sleep(COHORT_STEP);
            waited += COHORT_STEP;
            take_queued(&mut rx, &mut batch);
        }
        previous = batch.len();
        let outcome = committer.commit(&batch).await;
        committed_since_check |= outcome.is_ok();
        committer.answer(batch, outcome).await;
    }
}

/// Moves what is queued into `batch`, up to [`MAX_BATCH`] appends.
fn take_queued(rx: &mut mpsc::Receiver<Append>, batch: &mut Vec<Append>) {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(next) => batch.push(next),
            Err(_) => break,
        }
    }
}

/// Longest wait of a batch for the callers of the previous one (see
/// [`awaits_cohort`]): a fraction of a commit's WAL flush and round trip.
const COHORT_WAIT: std::time::Duration = std::time::Duration::from_micros(150);

/// How often the queue is looked at during that wait.
const COHORT_STEP: std::time::Duration = std::time::Duration::from_micros(25);

/// Whether a batch of `batch` appends waits for more, the last batch
/// having had `previous`: while it holds fewer than half as many. Under a
/// steady load of concurrent writers this turns the convoy of a full batch
/// followed by a batch of one straggler (each costing a whole commit) into
/// batches of even halves; a lone writer (batches of one) and a steady
/// load never wait.
fn awaits_cohort(batch: usize, previous: usize) -> bool {
    batch.saturating_mul(2) < previous
}

impl Committer {
    /// Asks for the lease once; takes the ledger over when it is got.
    async fn ask_for_lease(&mut self) {
        let Some(lease) = self.lease.as_mut() else {
            return;
        };
        match lease.ask().await {
            Ok(Asked::Got) => match self.take_over().await {
                Ok(size) => {
                    tracing::info!(
                        tree_size = size,
                        "ledger writer lease acquired: this instance writes the ledger"
                    );
                    self.stand(Serving::Yes);
                }
                Err(e) => {
                    // Given up again: another instance (or this one, at the
                    // next poll) tries with a fresh session.
                    tracing::error!(error = ?e, "taking the ledger over failed; giving the lease up");
                    if let Some(lease) = self.lease.as_mut() {
                        lease.release();
                    }
                }
            },
            Ok(Asked::Taken) => {}
            Ok(Asked::Replica) => {
                tracing::debug!("the database server is in recovery: the lease is not asked for there");
            }
            Err(e) => tracing::debug!(error = ?e, "asking for the ledger writer lease failed"),
        }
    }

    /// Checks the holding session while idle; stands by when it is gone.
    async fn check_lease(&mut self) {
        let Some(lease) = self.lease.as_mut() else {
            return;
        };
        if lease.is_held() && !lease.check().await {
            self.lost_lease("its session no longer answers from a primary");
        }
    }

    /// The lease is gone with its session: stand by until it is got again.
    fn lost_lease(&mut self, why: &str) {
        // What this writer believed of the stored head is void: the next
        // holder (maybe this instance) reads it anew.
        self.head = None;
        tracing::warn!(reason = why, "ledger writer lease lost: standing by");
        self.stand(Serving::No(STANDBY));
    }

    fn stand(&self, serving: Serving) {
        if let Some(standing) = &self.standing {
            standing.send_replace(serving);
        }
    }

    /// Takes the ledger over, on the session that just got the lease and
    /// before any append: another instance may have appended since this
    /// one last wrote (or ever). Reads the stored head, catches the
    /// authenticated view up with every leaf stored (each leaf row's MAC
    /// checked), and checks that the view — the leaves this instance held
    /// in memory, then those read now — recomputes to the head's root: the
    /// start-up check applied to what was appended meanwhile, which also
    /// proves the stored ledger extends the one this instance knew (a
    /// rewritten old leaf changes the root). A mismatch marks the ledger
    /// corrupt and refuses writes. Rows sealed
    /// under the previous MAC scheme are re-sealed first (the lease's holder
    /// is the one instance that writes). Then the latest stored checkpoint
    /// is this process's latest, and the fast path has forgotten the head
    /// it knew. Returns the tree size taken over.
    async fn take_over(&mut self) -> Result<u64, AnalyticsError> {
        self.head = None;
        let Some(mut session) = self.lease.as_mut().and_then(Lease::take) else {
            return Err(AnalyticsError::Standby);
        };
        let head = sqlx::query("SELECT tree_size, root FROM ledger_head WHERE id = 1")
            .fetch_one(&mut session)
            .await;
        if let Some(lease) = self.lease.as_mut() {
            lease.restore(session);
        }
        let head = head?;
        let (size, root) = (to_u64(head.int("tree_size")?)?, head.bytes("root")?);
        if matches!(*self.health.read().await, Health::Sound) {
            // Rows sealed under the previous MAC scheme are re-sealed by the
            // one instance that writes; leaves it sealed now have owners the
            // view loaded before could not authenticate: it is loaded anew.
            let (refused, updated) = integrity::reseal(&self.db, &self.keys).await?;
            for f in &refused {
                tracing::error!(
                    table = %f.table,
                    primary_key = %f.primary_key,
                    reason = %f.reason,
                    "row left under its old MAC scheme: it does not verify"
                );
            }
            if updated > 0 {
                *write(&self.known) = Known::default();
            }
            let have = read(&self.known).size();
            if have < size {
                load_leaves(&self.db, &self.keys, &self.known, have).await?;
            }
            let verdict = {
                let view = read(&self.known);
                if view.size() != size {
                    Some((
                        view.size().min(size),
                        format!(
                            "the stored leaves ({}) are not the head's tree size ({size})",
                            view.size()
                        ),
                    ))
                } else if view.tree().root().as_bytes().as_slice() != root.as_slice() {
                    Some((
                        0,
                        "the stored leaves recompute to a root other than the head's".to_owned(),
                    ))
                } else {
                    None
                }
            };
            if let Some((first_bad_index, reason)) = verdict {
                tracing::error!(first_bad_index, reason = %reason, "ledger integrity check failed at take-over: refusing writes");
                *self.health.write().await = Health::Corrupt {
                    first_bad_index,
                    reason,
                };
            }
        }
        let latest = retry_on_pool!(self.db, "last_checkpoint", AnalyticsError, pool => sqlx::query(
            "SELECT tree_size, created_at FROM ledger_checkpoints ORDER BY tree_size DESC LIMIT 1",
        )
        .fetch_optional(pool)
        .await?
        .map(|r| -> Result<(i64, i64), AnalyticsError> { Ok((r.int("tree_size")?, r.int("created_at")?)) })
        .transpose()?)?;
        if let Some((tree_size, at)) = latest {
            self.last_checkpoint.set(to_u64(tree_size)?, at);
        }
        Ok(size)
    }

    /// Commits a batch on the fast path when it applies, else (or when it
    /// declines) on the locked path.
    async fn commit(&mut self, batch: &[Append]) -> Result<Committed, AnalyticsError> {
        let fast = match self.head.take() {
            Some(head) if fast_path_applies(&self.db, batch) => self.commit_fast(head, batch).await,
            _ => Ok(None),
        };
        let outcome = match fast {
            Ok(Some(committed)) => Ok(committed),
            // No single-statement path for this batch, or the head moved
            // (another process appended), or an event id is already stored
            // (a retry): the locked path reads both under the head's lock
            // and decides.
            Ok(None) => self.commit_locked(batch).await,
            Err(e) => Err(e),
        };
        // After a failure only the stored head is known: the next batch
        // takes the locked path, which reads it.
        self.head = outcome.as_ref().ok().map(|c| c.head.clone());
        outcome
    }

    /// The single-statement path (PostgreSQL), on the writer's own
    /// connection, laid on `head`, the head this writer committed last.
    ///
    /// The head's update is guarded by that head's size and root, and every
    /// insert of the statement is conditional on the update having matched.
    /// If another process moved the head meanwhile, the guard matches no row
    /// (under READ COMMITTED the update waits for the other writer's lock,
    /// then re-checks the guard against the row it committed), nothing is
    /// written, and `Ok(None)` sends the batch to the locked path. An event
    /// id already stored (a client retry) violates `ledger_leaves`' unique
    /// constraint: the statement is rolled back whole, and the locked path
    /// answers the retry with its stored index. Arrays travel as one
    /// parameter per column ([`tables::bulk_statement`]), so the statement's
    /// text is the same for every batch and stays prepared on each
    /// connection: one round trip, one WAL flush.
    async fn commit_fast(
        &mut self,
        head: CompactTree,
        batch: &[Append],
    ) -> Result<Option<Committed>, AnalyticsError> {
        let start = head.size();
        let start_root = head.root();
        let mut tree = head;
        let n = batch.len();
        let mut results = Vec::with_capacity(n);
        let mut appended = Vec::with_capacity(n);
        let mut indices = Vec::with_capacity(n);
        for (position, append) in batch.iter().enumerate() {
            let index = tree.append(append.leaf_hash)?;
            indices.push(to_i64(index)?);
            appended.push((append.leaf_hash, position));
            results.push(Ok(Appended {
                index,
                leaf_hash: append.leaf_hash,
            }));
        }
        let seals = seal_all(&self.keys, batch.iter().zip(indices.iter().copied()))?;
        let mut leaves = LeafColumns::with_capacity(n);
        let mut writes = Vec::with_capacity(n);
        for ((append, index), (seal, leaf_mac)) in batch.iter().zip(&indices).zip(&seals) {
            leaves.push(*index, append, leaf_mac);
            writes.push(append.entry.write(seal));
        }
        let Some((present, arrays)) = tables::bulk_arrays(&writes) else {
            return Ok(None);
        };
        let root = tree.root();
        let note = self.sign_checkpoint(&Checkpoint::new(self.signer.name(), tree.size(), root)?);
        let mut connection = self.session()?;
        let signed_at = now_nanos();
        let query = sqlx::query(tables::bulk_statement(present))
            .bind(to_i64(tree.size())?)
            .bind(root.as_bytes().to_vec())
            .bind(frontier_bytes(&tree))
            .bind(to_i64(start)?)
            .bind(start_root.as_bytes().to_vec())
            .bind(signed_at);
        let query = tables::bind_arrays(leaves.bind(query, self.keys.primary().as_str()), arrays)
            .bind(note)
            .bind(self.signer_key_id.as_str());
        let outcome = {
            let fetch = query.fetch_one(&mut connection);
            tokio::pin!(fetch);
            // The first poll sends the statement. While PostgreSQL executes
            // and flushes it, the writer draws the next checkpoint's nonce:
            // most of a signature's cost, off the path every append waits on.
            match std::future::poll_fn(|cx| Poll::Ready(fetch.as_mut().poll(cx))).await {
                Poll::Ready(outcome) => outcome,
                Poll::Pending => {
                    if self.next_signature.is_none() {
                        match self.nonce_key.hedged_stream_signer() {
                            Ok(signing) => self.next_signature = Some(signing),
                            Err(e) => tracing::warn!(
                                error = %e,
                                "drawing a checkpoint nonce failed: the next checkpoint is signed as RFC 8032 does"
                            ),
                        }
                    }
                    fetch.await
                }
            }
        };
        let outcome = match outcome {
            Ok(row) if row.int("moved")? == 1 => Ok(Some(Committed {
                results,
                start,
                appended,
                head: tree,
                checkpoint_at: Some(signed_at),
            })),
            Ok(_) => {
                tracing::debug!(start, "ledger head moved elsewhere; taking the locked path");
                Ok(None)
            }
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                tracing::debug!(
                    constraint = e.constraint(),
                    "stored event id in batch; taking the locked path"
                );
                Ok(None)
            }
            Err(e) => Err(e.into()),
        };
        self.hand_back(connection, outcome.is_ok()).await;
        outcome
    }

    /// The signed note of `checkpoint`: signed with the nonce drawn while
    /// the last statement was in flight when there is one (taken: a nonce
    /// signs one message), else as RFC 8032 does, deterministically. A
    /// failing system generator left none; either signature verifies alike.
    fn sign_checkpoint(&mut self, checkpoint: &Checkpoint) -> String {
        match self.next_signature.take() {
            Some(mut signing) => {
                signing.update(checkpoint.to_body().as_bytes());
                self.signer.note(checkpoint, &signing.finish().signature)
            }
            None => self.signer.sign(checkpoint),
        }
    }

    /// The lease's holding session (PostgreSQL), opened on the writer's
    /// runtime (so that its replies wake the writer's thread) and kept from
    /// batch to batch: the only session a commit ever uses. Without the
    /// lease there is none, and nothing is committed.
    fn session(&mut self) -> Result<PgConnection, AnalyticsError> {
        self.lease
            .as_mut()
            .and_then(Lease::take)
            .ok_or(AnalyticsError::Standby)
    }

    /// The session after a commit: kept after a success; after a failure
    /// kept only when it is still alive on a primary (the session may be
    /// what failed), else dropped with the lease.
    async fn hand_back(&mut self, session: PgConnection, committed: bool) {
        let Some(lease) = self.lease.as_mut() else {
            return;
        };
        if committed {
            lease.restore(session);
        } else if !lease.restore_if_sound(session).await {
            self.lost_lease("a commit failed and its session no longer answers from a primary");
        }
    }

    /// The general path: one transaction under the head's lock, with the
    /// stored event ids looked up first; on PostgreSQL on the writer's own
    /// connection.
    async fn commit_locked(&mut self, batch: &[Append]) -> Result<Committed, AnalyticsError> {
        let postgres = self.db.as_postgres().is_some();
        if let Some(pool) = self.db.as_sqlite() {
            let mut tx = pool.begin().await?;
            let committed = self.locked(&mut Conn::Sqlite(&mut tx), postgres, batch).await?;
            tx.commit().await?;
            return Ok(committed);
        }
        let mut connection = self.session()?;
        let outcome = async {
            let mut tx = connection.begin().await?;
            let committed = self.locked(&mut Conn::Postgres(&mut tx), postgres, batch).await?;
            tx.commit().await?;
            Ok(committed)
        }
        .await;
        self.hand_back(connection, outcome.is_ok()).await;
        outcome
    }

    /// The locked path's statements, inside the open transaction `conn`;
    /// the error means nothing was written.
    async fn locked(
        &self,
        conn: &mut Conn<'_>,
        postgres: bool,
        batch: &[Append],
    ) -> Result<Committed, AnalyticsError> {
        // Take the head's row lock (the write lock on SQLite) before reading
        // it: appenders in every process serialize here. One round trip: the
        // no-op update takes the lock and returns the head as it is once the
        // lock is held.
        let head_sql =
            "UPDATE ledger_head SET tree_size = tree_size WHERE id = 1 RETURNING tree_size, root, frontier";
        let (size, root, frontier) = on_conn!(conn, c => {
            let r = sqlx::query(head_sql).fetch_one(&mut **c).await?;
            (r.int("tree_size")?, r.bytes("root")?, r.bytes("frontier")?)
        });
        let start = to_u64(size)?;
        let mut tree = parse_frontier(start, &frontier)?;
        if tree.root().as_bytes().as_slice() != root.as_slice() {
            return Err(AnalyticsError::LedgerCorrupt {
                first_bad_index: start,
                reason: "stored head root does not match its frontier".to_owned(),
            });
        }
        let now = now_nanos();
        let stored = stored_leaves(conn, postgres, batch).await?;
        let mut results = Vec::with_capacity(batch.len());
        let mut in_batch: HashMap<(&str, &str), Appended> = HashMap::new();
        // New leaves are inserted together after the loop, then the rows
        // that reference them.
        let mut new_leaves: Vec<(i64, usize)> = Vec::new();
        for (position, append) in batch.iter().enumerate() {
            let key = (append.entry.owner(), append.entry.id());
            let earlier = in_batch
                .get(&key)
                .or_else(|| stored.get(key.0).and_then(|ids| ids.get(key.1)))
                .copied();
            if let Some(earlier) = earlier {
                // Idempotent retry: the same content gets the same index;
                // other content under the same id is refused as its kind says.
                results.push(if earlier.leaf_hash == append.leaf_hash {
                    Ok(earlier)
                } else {
                    Err(append.entry.conflict(conn).await?)
                });
                continue;
            }
            // A guarded update (a regression's state row, guarded by the
            // version it moves from) fails the item here, before its leaf
            // touches the tree.
            if let Some(refused) = append.entry.guard(conn, &self.keys).await? {
                results.push(Err(refused));
                continue;
            }
            let index = tree.append(append.leaf_hash)?;
            new_leaves.push((to_i64(index)?, position));
            let appended = Appended {
                index,
                leaf_hash: append.leaf_hash,
            };
            in_batch.insert(key, appended);
            results.push(Ok(appended));
        }
        let seals = seal_all(
            &self.keys,
            new_leaves.iter().map(|(index, p)| (&batch[*p], *index)),
        )?;
        let key_id = self.keys.primary().as_str();
        for (chunk, chunk_seals) in new_leaves.chunks(LOOKUP_CHUNK).zip(seals.chunks(LOOKUP_CHUNK)) {
            let sql = format!(
                "INSERT INTO ledger_leaves (leaf_index, event_id, tenant, kind, leaf_hash, appended_at, \
                 event_time, mac_scheme, mac_key_id, mac) VALUES {}",
                tables::values_list(0, chunk.len(), 10)
            );
            let values: Vec<Value<'_>> = chunk
                .iter()
                .zip(chunk_seals)
                .flat_map(|((index, position), (_, leaf_mac))| {
                    let append = &batch[*position];
                    [
                        Value::Int(*index),
                        Value::Text(append.entry.id()),
                        Value::Text(append.entry.owner()),
                        Value::Text(append.entry.kind()),
                        Value::Bytes(append.leaf_hash.as_bytes().as_slice()),
                        Value::Int(now),
                        Value::Int(append.entry.at()),
                        Value::Int(tables::row::MAC_SCHEME),
                        Value::Text(key_id),
                        Value::Bytes(leaf_mac),
                    ]
                })
                .collect();
            on_conn!(conn, c => {
                bind_values!(sqlx::query(&sql), &values).execute(&mut **c).await?;
            });
        }
        // The rows themselves, then the rows written with them (which may
        // reference them).
        let rows: Vec<Write<'_>> = new_leaves
            .iter()
            .zip(&seals)
            .map(|((_, position), (seal, _))| batch[*position].entry.write(seal))
            .collect();
        insert(conn, &rows).await?;
        let mut dependents = Vec::new();
        for (index, position) in &new_leaves {
            let append = &batch[*position];
            dependents.extend(
                append
                    .entry
                    .dependents(&self.keys, *index, &append.leaf_hash, now)?,
            );
        }
        insert(conn, &dependents).await?;
        let grew = tree.size() > start;
        if grew {
            let root = tree.root();
            let checkpoint = Checkpoint::new(self.signer.name(), tree.size(), root)?;
            let note = self.signer.sign(&checkpoint);
            let size = to_i64(tree.size())?;
            let frontier = frontier_bytes(&tree);
            on_conn!(conn, c => {
                sqlx::query("UPDATE ledger_head SET tree_size = $1, root = $2, frontier = $3 WHERE id = 1")
                    .bind(size)
                    .bind(root.as_bytes().as_slice())
                    .bind(frontier.as_slice())
                    .execute(&mut **c)
                    .await?;
                sqlx::query(
                    "INSERT INTO ledger_checkpoints (tree_size, root, note, key_id, created_at) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(size)
                .bind(root.as_bytes().as_slice())
                .bind(&note)
                .bind(&self.signer_key_id)
                .bind(now)
                .execute(&mut **c)
                .await?;
            });
        }
        Ok(Committed {
            results,
            start,
            appended: new_leaves
                .iter()
                .map(|(_, position)| (batch[*position].leaf_hash, *position))
                .collect(),
            head: tree,
            checkpoint_at: grew.then_some(now),
        })
    }

    /// Answers each caller of a batch with its outcome.
    async fn answer(&self, batch: Vec<Append>, outcome: Result<Committed, AnalyticsError>) {
        match outcome {
            Ok(Committed {
                results,
                start,
                appended,
                head,
                checkpoint_at,
            }) => {
                if let Some(at) = checkpoint_at {
                    self.last_checkpoint.set(head.size(), at);
                }
                // Extend the in-memory view only when it was level with the
                // stored head; otherwise the next proof or export catches it
                // up from the database.
                let mut known = write(&self.known);
                if known.size() == start {
                    for (hash, position) in appended {
                        let entry = &batch[position].entry;
                        known.push(hash, Some((entry.owner(), entry.kind(), entry.at())));
                    }
                }
                drop(known);
                // Each reply wakes a request task on the service's runtime,
                // which costs the writer's thread a wake-up syscall when done
                // from here; one task spawned there sends them all instead,
                // and the writer turns to the next batch.
                let replies: Vec<_> = batch.into_iter().map(|a| a.reply).zip(results).collect();
                self.replies.spawn(async move {
                    for (reply, result) in replies {
                        let _ = reply.send(result);
                    }
                });
            }
            Err(e) => {
                // Nothing of the batch was committed (one transaction);
                // every caller gets the error and may retry.
                let is_integrity = matches!(e, AnalyticsError::LedgerCorrupt { .. });
                // SQLite's writer lock held past the busy timeout by another
                // connection: an overload, not a fault (logged as a warning,
                // once per batch).
                let busy = e.database_busy();
                if busy {
                    tracing::warn!(error = ?e, size = batch.len(), "ledger batch refused: the database is busy");
                } else {
                    tracing::error!(error = ?e, size = batch.len(), "ledger batch failed");
                }
                if let AnalyticsError::LedgerCorrupt {
                    first_bad_index,
                    reason,
                } = &e
                {
                    *self.health.write().await = Health::Corrupt {
                        first_bad_index: *first_bad_index,
                        reason: reason.clone(),
                    };
                }
                let standby = matches!(e, AnalyticsError::Standby);
                // Told apart for the callers, which send an append whose
                // writer lost its session again (see `Ledger::append`).
                let lost = e.is_connection_lost();
                for append in batch {
                    let err = if is_integrity {
                        AnalyticsError::LedgerCorrupt {
                            first_bad_index: 0,
                            reason: "see log".to_owned(),
                        }
                    } else if standby {
                        // Refused before anything was sent: nothing written.
                        AnalyticsError::Standby
                    } else if lost {
                        AnalyticsError::WriterConnectionLost
                    } else if busy {
                        AnalyticsError::WriterBusy
                    } else {
                        AnalyticsError::WriterStopped
                    };
                    let _ = append.reply.send(Err(err));
                }
            }
        }
    }
}

/// Whether a batch can take [`Committer::commit_fast`]: PostgreSQL, only
/// rows of bulk tables, and no (tenant, event id) twice in it.
fn fast_path_applies(db: &Database, batch: &[Append]) -> bool {
    if db.as_postgres().is_none() || batch.is_empty() {
        return false;
    }
    let mut ids = HashSet::with_capacity(batch.len());
    batch
        .iter()
        .all(|a| a.entry.bulk() && ids.insert((a.entry.owner(), a.entry.id())))
}

/// The row seal and the leaf MAC of each append at its index, made by the
/// writer once the index is known (both bind it).
fn seal_all<'a>(
    keys: &HmacKeyring,
    appends: impl Iterator<Item = (&'a Append, i64)>,
) -> Result<Vec<(Seal, Vec<u8>)>, AnalyticsError> {
    appends
        .map(|(append, index)| {
            let seal = append.entry.sealed(keys, index)?;
            let (_, leaf_mac) = LeafFacts {
                index,
                event_id: append.entry.id(),
                tenant: append.entry.owner(),
                kind: append.entry.kind(),
                time: append.entry.at(),
                hash: append.leaf_hash.as_bytes().as_slice(),
            }
            .seal(keys);
            Ok((seal, leaf_mac))
        })
        .collect()
}

/// The leaves already stored, by tenant and event id.
type StoredLeaves = HashMap<String, HashMap<String, Appended>>;

/// Idempotency: the leaves already stored for this batch's (tenant, event
/// id) pairs, fetched in one round trip per chunk rather than one per
/// event.
async fn stored_leaves(
    conn: &mut Conn<'_>,
    postgres: bool,
    batch: &[Append],
) -> Result<StoredLeaves, AnalyticsError> {
    // The pairs travel as one JSON array of `[tenant, event_id]`, so the
    // statement's text is the same for every batch size and stays prepared
    // on each connection.
    let lookup = if postgres {
        "SELECT tenant, event_id, leaf_index, leaf_hash FROM ledger_leaves \
         WHERE (tenant, event_id) IN (SELECT p->>0, p->>1 FROM jsonb_array_elements($1::jsonb) AS p)"
    } else {
        "SELECT tenant, event_id, leaf_index, leaf_hash FROM ledger_leaves \
         WHERE (tenant, event_id) IN (SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') \
         FROM json_each($1))"
    };
    let mut stored: StoredLeaves = HashMap::new();
    for chunk in batch.chunks(LOOKUP_CHUNK) {
        let mut pairs = Vec::with_capacity(chunk.len() * 64);
        pairs.push(b'[');
        for (i, append) in chunk.iter().enumerate() {
            if i > 0 {
                pairs.push(b',');
            }
            pairs.push(b'[');
            tables::row::push_string(&mut pairs, append.entry.owner());
            pairs.push(b',');
            tables::row::push_string(&mut pairs, append.entry.id());
            pairs.push(b']');
        }
        pairs.push(b']');
        // Built from `&str`s and ASCII punctuation: valid UTF-8.
        let pairs = String::from_utf8(pairs).map_err(|e| AnalyticsError::Config(e.to_string()))?;
        let found: Vec<(String, String, i64, Vec<u8>)> = on_conn!(conn, c => {
            let rows = sqlx::query(lookup).bind(&pairs).fetch_all(&mut **c).await?;
            rows.iter()
                .map(|r| -> Result<_, AnalyticsError> {
                    Ok((r.text("tenant")?, r.text("event_id")?, r.int("leaf_index")?, r.bytes("leaf_hash")?))
                })
                .collect::<Result<_, _>>()?
        });
        for (tenant, event_id, index, hash) in found {
            stored.entry(tenant).or_default().insert(
                event_id,
                Appended {
                    index: to_u64(index)?,
                    leaf_hash: Hash::from_slice(&hash)?,
                },
            );
        }
    }
    Ok(stored)
}

/// Inserts `writes` with one multi-row statement per table and chunk,
/// tables in the order they first appear.
async fn insert(conn: &mut Conn<'_>, writes: &[Write<'_>]) -> Result<(), AnalyticsError> {
    let mut order: Vec<&'static str> = Vec::new();
    for w in writes {
        if !order.contains(&w.table) {
            order.push(w.table);
        }
    }
    for table in order {
        let rows: Vec<&Write<'_>> = writes.iter().filter(|w| w.table == table).collect();
        for chunk in rows.chunks(ROWS_CHUNK) {
            let sql = chunk[0].insert_sql(chunk.len());
            let values = chunk.iter().flat_map(|w| w.values.iter());
            on_conn!(conn, c => {
                bind_values!(sqlx::query(&sql), values.clone()).execute(&mut **c).await?;
            });
        }
    }
    Ok(())
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

/// The leaf rows of a batch, column by column (for `UNNEST`).
struct LeafColumns<'a> {
    index: Vec<i64>,
    event_id: Vec<&'a str>,
    tenant: Vec<&'a str>,
    kind: Vec<&'a str>,
    hash: Vec<&'a [u8]>,
    time: Vec<i64>,
    mac: Vec<&'a [u8]>,
}

impl<'a> LeafColumns<'a> {
    fn with_capacity(n: usize) -> Self {
        Self {
            index: Vec::with_capacity(n),
            event_id: Vec::with_capacity(n),
            tenant: Vec::with_capacity(n),
            kind: Vec::with_capacity(n),
            hash: Vec::with_capacity(n),
            time: Vec::with_capacity(n),
            mac: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, index: i64, append: &'a Append, mac: &'a [u8]) {
        self.index.push(index);
        self.event_id.push(append.entry.id());
        self.tenant.push(append.entry.owner());
        self.kind.push(append.entry.kind());
        self.hash.push(append.leaf_hash.as_bytes().as_slice());
        self.time.push(append.entry.at());
        self.mac.push(mac);
    }

    /// Binds $7..$14: the columns, then the leaves' MAC key id.
    fn bind(self, query: PgQuery<'a>, key_id: &'a str) -> PgQuery<'a> {
        query
            .bind(self.index)
            .bind(self.event_id)
            .bind(self.tenant)
            .bind(self.kind)
            .bind(self.hash)
            .bind(self.time)
            .bind(self.mac)
            .bind(key_id)
    }
}

#[cfg(test)]
mod tests {
    use super::{MAX_BATCH, awaits_cohort};

    #[test]
    fn a_batch_waits_only_while_it_holds_fewer_than_half_of_the_last() {
        struct Case {
            name: &'static str,
            batch: usize,
            previous: usize,
            waits: bool,
        }
        let cases = [
            Case {
                name: "the first batch",
                batch: 1,
                previous: 0,
                waits: false,
            },
            Case {
                name: "a lone writer",
                batch: 1,
                previous: 1,
                waits: false,
            },
            Case {
                name: "two writers, one back",
                batch: 1,
                previous: 2,
                waits: false,
            },
            Case {
                name: "a straggler before fifteen",
                batch: 1,
                previous: 15,
                waits: true,
            },
            Case {
                name: "seven of sixteen",
                batch: 7,
                previous: 16,
                waits: true,
            },
            Case {
                name: "half of sixteen",
                batch: 8,
                previous: 16,
                waits: false,
            },
            Case {
                name: "a steady load",
                batch: 9,
                previous: 8,
                waits: false,
            },
            Case {
                name: "more than before",
                batch: 16,
                previous: 8,
                waits: false,
            },
            Case {
                name: "a full batch",
                batch: MAX_BATCH,
                previous: MAX_BATCH,
                waits: false,
            },
            Case {
                name: "no overflow",
                batch: usize::MAX,
                previous: usize::MAX,
                waits: false,
            },
        ];
        for case in cases {
            assert_eq!(
                awaits_cohort(case.batch, case.previous),
                case.waits,
                "{}",
                case.name
            );
        }
    }
}
