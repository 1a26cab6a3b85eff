//! The persisted Merkle ledger: group-committed appends, start-up
//! verification, checkpoints and proofs.
//!
//! One writer per process, on a thread of its own, takes every pending
//! append it can (up to [`MAX_BATCH`]) and commits them in one
//! transaction: each event gets the next index (the leaf table's primary
//! key makes indices unique; the head's size makes them contiguous), its
//! row and leaf are inserted, the head moves, and a signed checkpoint for
//! the new size is stored. Only
//! after the commit is any caller acknowledged, so an acknowledged append is
//! durable, and a crash before it leaves nothing behind.
//!
//! Two paths commit a batch. The locked path (every engine, every kind of
//! row) locks the head row first, so writers in other processes serialize
//! on it, and looks up the batch's event ids before assigning indices. On
//! PostgreSQL, batches of billing events and capsule runs take the
//! single-statement path ([`commit_expecting`]) while this writer knows the
//! stored head: one statement, guarded by that head, that writes nothing
//! when another process moved it or when an event id is already stored,
//! in which case the locked path decides.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use soma_ledger::{Checkpoint, CheckpointSigner, CompactTree, Hash, MerkleTree};
use soma_sign::HmacKeyring;
use soma_store::Database;
use sqlx::Connection as _;
use sqlx::Row as _;
use sqlx::postgres::{PgConnection, Postgres};
use tokio::sync::{RwLock, mpsc, oneshot};

use crate::db::on_pool;
use crate::error::AnalyticsError;
use crate::rows::{EventRow as _, NewRow};

/// Most appends committed in one transaction.
pub(crate) const MAX_BATCH: usize = 512;

/// Rows per multi-row statement (6 parameters each: far below SQLite's and
/// PostgreSQL's parameter limits).
const LOOKUP_CHUNK: usize = 256;

/// Event rows per multi-row INSERT (up to 15 parameters each).
const ROWS_CHUNK: usize = 128;

/// `($1, ..., $k), ($k+1, ...), ...` for `rows` rows of `columns` values.
fn values_list(rows: usize, columns: usize) -> String {
    values_list_after(0, rows, columns)
}

/// [`values_list`] numbered from `$first + 1`, for a statement whose
/// earlier parameters are taken.
fn values_list_after(first: usize, rows: usize, columns: usize) -> String {
    (0..rows)
        .map(|r| {
            let cells: Vec<String> = (1..=columns)
                .map(|c| format!("${}", first + r * columns + c))
                .collect();
            format!("({})", cells.join(", "))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Where an event landed in the ledger.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Appended {
    pub index: u64,
    pub leaf_hash: Hash,
}

/// The ledger's health, decided at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Health {
    Sound,
    Corrupt { first_bad_index: u64, reason: String },
}

struct Append {
    row: NewRow,
    /// Computed by the caller's task, so that the writer's critical path
    /// (which holds the head lock) does no canonicalization or hashing.
    prepared: Prepared,
    reply: oneshot::Sender<Result<Appended, AnalyticsError>>,
}

/// The leaf hash and, for the multi-row tables, the row seal of an append.
struct Prepared {
    leaf_hash: Hash,
    seal: Option<crate::rows::Seal>,
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
    /// Every leaf, indexed for O(log n) proofs at any size; kept in step by
    /// the writer, and caught up from the database when another process
    /// appended.
    tree: Arc<std::sync::RwLock<MerkleTree>>,
    /// Row MAC keys, to seal rows before they reach the writer.
    keys: Arc<HmacKeyring>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("origin", &self.signer.name())
            .finish_non_exhaustive()
    }
}

impl Ledger {
    /// Verifies the stored ledger and starts the writer on its thread.
    pub(crate) async fn open(
        db: Database,
        keys: Arc<HmacKeyring>,
        signer: CheckpointSigner,
        signer_key_id: String,
    ) -> Result<Self, AnalyticsError> {
        let health = verify(&db).await?;
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
        let tree = match health {
            Health::Sound => MerkleTree::from_leaves(&leaves_from(&db, 0).await?),
            Health::Corrupt { .. } => MerkleTree::new(),
        };
        let tree = Arc::new(std::sync::RwLock::new(tree));
        let (appends, rx) = mpsc::channel(4 * MAX_BATCH);
        let signer = Arc::new(signer);
        let health = Arc::new(RwLock::new(health));
        let committer = Committer {
            db: db.clone(),
            keys: Arc::clone(&keys),
            signer: Arc::clone(&signer),
            signer_key_id: signer_key_id.clone(),
            health: Arc::clone(&health),
            tree: Arc::clone(&tree),
            head: None,
            connection: None,
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
        std::thread::Builder::new()
            .name("soma-ledger".to_owned())
            .spawn(move || runtime.block_on(writer(committer, rx)))
            .map_err(|e| AnalyticsError::Config(format!("the ledger writer's thread: {e}")))?;
        Ok(Self {
            db,
            appends,
            health,
            signer,
            signer_key_id,
            tree,
            keys,
        })
    }

    /// The checkpoint origin (the signer's key name).
    pub(crate) fn origin(&self) -> &str {
        self.signer.name()
    }

    /// The start-up verdict.
    pub(crate) async fn health(&self) -> Health {
        self.health.read().await.clone()
    }

    /// Appends one event and its row; returns once committed.
    pub(crate) async fn append(&self, row: NewRow) -> Result<Appended, AnalyticsError> {
        if let Health::Corrupt {
            first_bad_index,
            reason,
        } = &*self.health.read().await
        {
            return Err(AnalyticsError::LedgerCorrupt {
                first_bad_index: *first_bad_index,
                reason: reason.clone(),
            });
        }
        let seal = match &row {
            NewRow::CapsuleRun(r) => Some(r.seal(&self.keys)?),
            NewRow::Billing(r) => Some(r.seal(&self.keys)?),
            _ => None,
        };
        let prepared = Prepared {
            leaf_hash: row.leaf_hash()?,
            seal,
        };
        let (reply, rx) = oneshot::channel();
        self.appends
            .send(Append { row, prepared, reply })
            .await
            .map_err(|_| AnalyticsError::WriterStopped)?;
        rx.await.map_err(|_| AnalyticsError::WriterStopped)?
    }

    /// The latest checkpoint; a freshly signed empty one before any append.
    pub(crate) async fn latest_checkpoint(&self) -> Result<StoredCheckpoint, AnalyticsError> {
        let row = on_pool!(self.db, pool => sqlx::query(
            "SELECT tree_size, root, note, key_id FROM ledger_checkpoints ORDER BY tree_size DESC LIMIT 1",
        )
        .fetch_optional(pool)
        .await?
        .map(|r| stored_checkpoint(&r))
        .transpose()?);
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
        on_pool!(self.db, pool => sqlx::query(
            "SELECT tree_size, root, note, key_id FROM ledger_checkpoints WHERE tree_size = $1",
        )
        .bind(size)
        .fetch_optional(pool)
        .await?
        .map(|r| stored_checkpoint(&r))
        .transpose()?)
        .ok_or_else(|| AnalyticsError::NotFound(format!("no checkpoint at tree size {tree_size}")))
    }

    /// The leaf of an event: index, tenant, hash.
    pub(crate) async fn leaf_of(&self, event_id: &str) -> Result<(u64, String, Hash), AnalyticsError> {
        let row = on_pool!(self.db, pool => sqlx::query(
            "SELECT leaf_index, tenant, leaf_hash FROM ledger_leaves WHERE event_id = $1",
        )
        .bind(event_id)
        .fetch_optional(pool)
        .await?
        .map(|r| -> Result<_, AnalyticsError> {
            Ok((
                to_u64(r.try_get::<i64, _>("leaf_index")?)?,
                r.try_get::<String, _>("tenant")?,
                Hash::from_slice(&r.try_get::<Vec<u8>, _>("leaf_hash")?)?,
            ))
        })
        .transpose()?);
        row.ok_or_else(|| AnalyticsError::NotFound(format!("no ledger leaf for event {event_id}")))
    }

    /// An inclusion proof of leaf `index` in the tree of `tree_size`.
    pub(crate) async fn inclusion_proof(
        &self,
        index: u64,
        tree_size: u64,
    ) -> Result<Vec<Hash>, AnalyticsError> {
        self.catch_up(tree_size).await?;
        Ok(read(&self.tree).inclusion_proof(index, tree_size)?)
    }

    /// A consistency proof between two tree sizes.
    pub(crate) async fn consistency_proof(
        &self,
        size1: u64,
        size2: u64,
    ) -> Result<Vec<Hash>, AnalyticsError> {
        self.catch_up(size2).await?;
        Ok(read(&self.tree).consistency_proof(size1, size2)?)
    }

    /// Brings the in-memory index up to at least `tree_size` leaves from
    /// the database (another process may have appended).
    async fn catch_up(&self, tree_size: u64) -> Result<(), AnalyticsError> {
        if let Health::Corrupt {
            first_bad_index,
            reason,
        } = &*self.health.read().await
        {
            return Err(AnalyticsError::LedgerCorrupt {
                first_bad_index: *first_bad_index,
                reason: reason.clone(),
            });
        }
        let have = read(&self.tree).size();
        if have >= tree_size {
            return Ok(());
        }
        let more = leaves_from(&self.db, have).await?;
        let mut tree = write(&self.tree);
        if tree.size() == have {
            tree.extend(more);
        }
        if tree.size() < tree_size {
            return Err(AnalyticsError::LedgerCorrupt {
                first_bad_index: tree.size(),
                reason: "leaf missing".to_owned(),
            });
        }
        Ok(())
    }
}

fn read(tree: &std::sync::RwLock<MerkleTree>) -> std::sync::RwLockReadGuard<'_, MerkleTree> {
    // A panic while holding the lock cannot leave the tree half-updated
    // (push is the only mutation), so a poisoned lock is still usable.
    tree.read().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write(tree: &std::sync::RwLock<MerkleTree>) -> std::sync::RwLockWriteGuard<'_, MerkleTree> {
    tree.write().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The stored leaf hashes from index `from` on, checked to be contiguous.
async fn leaves_from(db: &Database, from: u64) -> Result<Vec<Hash>, AnalyticsError> {
    let rows: Vec<(i64, Vec<u8>)> = on_pool!(db, pool => sqlx::query(
        "SELECT leaf_index, leaf_hash FROM ledger_leaves WHERE leaf_index >= $1 ORDER BY leaf_index",
    )
    .bind(to_i64(from)?)
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| -> Result<(i64, Vec<u8>), AnalyticsError> {
        Ok((r.try_get::<i64, _>("leaf_index")?, r.try_get::<Vec<u8>, _>("leaf_hash")?))
    })
    .collect::<Result<Vec<_>, _>>()?);
    let mut hashes = Vec::with_capacity(rows.len());
    for (offset, (index, hash)) in rows.iter().enumerate() {
        let expected = from + offset as u64;
        if u64::try_from(*index).ok() != Some(expected) {
            return Err(AnalyticsError::LedgerCorrupt {
                first_bad_index: expected,
                reason: "leaf missing".to_owned(),
            });
        }
        hashes.push(Hash::from_slice(hash)?);
    }
    Ok(hashes)
}

/// A checkpoint row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct StoredCheckpoint {
    pub tree_size: u64,
    pub root: Hash,
    pub note: String,
    pub key_id: String,
}

fn stored_checkpoint<R: sqlx::Row>(r: &R) -> Result<StoredCheckpoint, AnalyticsError>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    for<'a> i64: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> Vec<u8>: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
    for<'a> String: sqlx::Decode<'a, R::Database> + sqlx::Type<R::Database>,
{
    Ok(StoredCheckpoint {
        tree_size: to_u64(r.try_get::<i64, _>("tree_size")?)?,
        root: Hash::from_slice(&r.try_get::<Vec<u8>, _>("root")?)?,
        note: r.try_get::<String, _>("note")?,
        key_id: r.try_get::<String, _>("key_id")?,
    })
}

pub(crate) fn to_i64(v: u64) -> Result<i64, AnalyticsError> {
    i64::try_from(v).map_err(|_| AnalyticsError::InvalidArgument {
        field: "tree_size",
        reason: format!("{v} is out of range"),
    })
}

pub(crate) fn to_u64(v: i64) -> Result<u64, AnalyticsError> {
    u64::try_from(v).map_err(|_| AnalyticsError::LedgerCorrupt {
        first_bad_index: 0,
        reason: format!("negative value {v} stored"),
    })
}

fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()
        .and_then(|d| i64::try_from(d.as_nanos()).ok())
        .unwrap_or(i64::MAX)
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
    health: Arc<RwLock<Health>>,
    tree: Arc<std::sync::RwLock<MerkleTree>>,
    /// The stored head as this writer last committed it: what the
    /// single-statement path expects to find (see [`commit_expecting`]).
    /// `None` until the first commit, and after any failure, when only the
    /// stored head is known.
    head: Option<CompactTree>,
    /// See [`Committer::connection`].
    connection: Option<PgConnection>,
    /// The service's runtime, where acknowledgements are sent from.
    replies: tokio::runtime::Handle,
}

/// What one committed batch did.
struct Committed {
    /// One result per append, in batch order.
    results: Vec<Result<Appended, AnalyticsError>>,
    /// The tree size before the batch.
    start: u64,
    /// The leaf hashes the batch appended, in index order.
    appended: Vec<Hash>,
    /// The head after the batch.
    head: CompactTree,
}

/// The writer task: batches appends into commits until every sender is
/// gone.
///
/// Group commit without a timer: a batch is whatever is queued when the
/// writer turns to it, so while one batch commits, the next one gathers,
/// and a lone append waits for nothing.
async fn writer(mut committer: Committer, mut rx: mpsc::Receiver<Append>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        committer.settle(batch).await;
    }
}

impl Committer {
    /// Commits a batch and answers each of its callers.
    async fn settle(&mut self, batch: Vec<Append>) {
        let rows: Vec<(&NewRow, &Prepared)> = batch.iter().map(|a| (&a.row, &a.prepared)).collect();
        let fast = match self.head.take() {
            Some(head) if fast_path_applies(&self.db, &rows) => self.commit_fast(head, &rows).await,
            _ => Ok(None),
        };
        let outcome = match fast {
            Ok(Some(committed)) => Ok(committed),
            // No single-statement path for this batch, or the head moved
            // (another process appended), or an event id is already stored
            // (a retry): the locked path reads both under the head's lock
            // and decides.
            Ok(None) => self.commit_locked(&rows).await,
            Err(e) => Err(e),
        };
        drop(rows);
        // After a failure only the stored head is known: the next batch
        // takes the locked path, which reads it.
        self.head = outcome.as_ref().ok().map(|c| c.head.clone());
        self.answer(batch, outcome).await;
    }

    /// The single-statement path on the writer's own connection, laid on
    /// `head` (see [`commit_expecting`]).
    async fn commit_fast(
        &mut self,
        head: CompactTree,
        rows: &[(&NewRow, &Prepared)],
    ) -> Result<Option<Committed>, AnalyticsError> {
        let mut connection = self.connection().await?;
        let outcome = commit_expecting(&mut connection, &self.signer, &self.signer_key_id, head, rows).await;
        // The connection may be what failed: it is dropped, and the next
        // batch opens another.
        if outcome.is_ok() {
            self.connection = Some(connection);
        }
        outcome
    }

    /// The writer's own PostgreSQL connection, opened on the writer's
    /// runtime (so that its replies wake the writer's thread) and kept from
    /// batch to batch. A commit that fails drops it: the next batch opens a
    /// new one.
    async fn connection(&mut self) -> Result<PgConnection, AnalyticsError> {
        if let Some(connection) = self.connection.take() {
            return Ok(connection);
        }
        let pool = self.db.as_postgres().ok_or_else(|| {
            AnalyticsError::Config("the writer's own connection is a PostgreSQL one".to_owned())
        })?;
        Ok(PgConnection::connect_with(&pool.connect_options()).await?)
    }

    /// The general path: under the head's lock, with the stored event ids
    /// looked up first; on PostgreSQL on the writer's own connection.
    async fn commit_locked(&mut self, rows: &[(&NewRow, &Prepared)]) -> Result<Committed, AnalyticsError> {
        if self.db.as_postgres().is_none() {
            return commit(
                &self.db,
                None,
                &self.keys,
                &self.signer,
                &self.signer_key_id,
                rows,
            )
            .await;
        }
        let mut connection = self.connection().await?;
        let outcome = commit(
            &self.db,
            Some(&mut connection),
            &self.keys,
            &self.signer,
            &self.signer_key_id,
            rows,
        )
        .await;
        if outcome.is_ok() {
            self.connection = Some(connection);
        }
        outcome
    }

    /// Answers each caller of a batch with its outcome.
    async fn answer(&self, batch: Vec<Append>, outcome: Result<Committed, AnalyticsError>) {
        match outcome {
            Ok(Committed {
                results,
                start,
                appended,
                head: _,
            }) => {
                // Extend the in-memory index only when it was level with the
                // stored head; otherwise the next proof catches it up.
                let mut tree = write(&self.tree);
                if tree.size() == start {
                    tree.extend(appended);
                }
                drop(tree);
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
                tracing::error!(error = ?e, size = batch.len(), "ledger batch failed");
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
                for append in batch {
                    let err = if is_integrity {
                        AnalyticsError::LedgerCorrupt {
                            first_bad_index: 0,
                            reason: "see log".to_owned(),
                        }
                    } else {
                        AnalyticsError::WriterStopped
                    };
                    let _ = append.reply.send(Err(err));
                }
            }
        }
    }
}

/// Whether a batch can take [`commit_expecting`]: PostgreSQL, only the two
/// high-volume kinds (each already sealed), and no event id twice in it.
fn fast_path_applies(db: &Database, rows: &[(&NewRow, &Prepared)]) -> bool {
    if db.as_postgres().is_none() || rows.is_empty() {
        return false;
    }
    let mut ids = std::collections::HashSet::with_capacity(rows.len());
    rows.iter().all(|(row, prepared)| {
        matches!(row, NewRow::Billing(_) | NewRow::CapsuleRun(_))
            && prepared.seal.is_some()
            && ids.insert(row.event_id())
    })
}

/// One batch of billing events and capsule runs on PostgreSQL in a single
/// statement, which commits on its own (one round trip, one WAL flush).
///
/// The batch is laid on `head`, the head this writer committed last. The
/// head's update is guarded by that head's size and root, and every insert
/// of the statement is conditional on the update having matched. If another
/// process moved the head meanwhile, the guard matches no row (under READ
/// COMMITTED the update waits for the other writer's lock, then re-checks the
/// guard against the row it committed), nothing is written, and `Ok(None)`
/// sends the batch to the locked path. An event id already stored (a client
/// retry) violates `ledger_leaves`' unique constraint: the statement is
/// rolled back whole, and the locked path answers the retry with its stored
/// index. Arrays travel as one parameter per column, so the statement's text
/// is the same for every batch and stays prepared on each connection.
async fn commit_expecting(
    connection: &mut PgConnection,
    signer: &CheckpointSigner,
    signer_key_id: &str,
    head: CompactTree,
    rows: &[(&NewRow, &Prepared)],
) -> Result<Option<Committed>, AnalyticsError> {
    const SQL: &str = "\
        WITH head AS ( \
            UPDATE ledger_head SET tree_size = $1, root = $2, frontier = $3 \
            WHERE id = 1 AND tree_size = $4 AND root = $5 RETURNING 1 AS moved), \
        leaves AS ( \
            INSERT INTO ledger_leaves (leaf_index, event_id, tenant, kind, leaf_hash, appended_at) \
            SELECT l.leaf_index, l.event_id, l.tenant, l.kind, l.leaf_hash, $6 \
            FROM UNNEST($7::bigint[], $8::text[], $9::text[], $10::text[], $11::bytea[]) \
                AS l (leaf_index, event_id, tenant, kind, leaf_hash) \
            WHERE EXISTS (SELECT 1 FROM head)), \
        bills AS ( \
            INSERT INTO billing_events (event_id, tenant, tool, tool_version, currency, amount_micros, \
                fuel_consumed, duration_micros, occurred_at, run_id, recorded_by, ledger_index, row_version, \
                mac_key_id, mac) \
            SELECT * FROM UNNEST($12::text[], $13::text[], $14::text[], $15::text[], $16::text[], \
                $17::bigint[], $18::bigint[], $19::bigint[], $20::bigint[], $21::text[], $22::text[], \
                $23::bigint[], $24::bigint[], $25::text[], $26::bytea[]) \
            WHERE EXISTS (SELECT 1 FROM head)), \
        runs AS ( \
            INSERT INTO capsule_runs (event_id, tenant, capsule_id, tool, run_id, outcome, started_at, \
                duration_nanos, recorded_by, ledger_index, row_version, mac_key_id, mac) \
            SELECT * FROM UNNEST($27::text[], $28::text[], $29::text[], $30::text[], $31::text[], \
                $32::text[], $33::bigint[], $34::bigint[], $35::text[], $36::bigint[], $37::bigint[], \
                $38::text[], $39::bytea[]) \
            WHERE EXISTS (SELECT 1 FROM head)), \
        checkpoint AS ( \
            INSERT INTO ledger_checkpoints (tree_size, root, note, key_id, created_at) \
            SELECT $1, $2, $40, $41, $6 WHERE EXISTS (SELECT 1 FROM head)) \
        SELECT count(*) AS moved FROM head";

    let start = head.size();
    let start_root = head.root();
    let mut tree = head;
    let n = rows.len();
    let mut leaves = LeafColumns::with_capacity(n);
    let mut bills = BillingColumns::default();
    let mut runs = RunColumns::default();
    let mut results = Vec::with_capacity(n);
    let mut appended = Vec::with_capacity(n);
    for (row, prepared) in rows {
        let index = tree.append(prepared.leaf_hash)?;
        let index_i64 = to_i64(index)?;
        leaves.push(index_i64, row, prepared.leaf_hash);
        // `fast_path_applies` admitted only sealed rows of these two kinds.
        match (row, &prepared.seal) {
            (NewRow::Billing(r), Some(seal)) => bills.push(r, index_i64, seal),
            (NewRow::CapsuleRun(r), Some(seal)) => runs.push(r, index_i64, seal),
            _ => return Ok(None),
        }
        appended.push(prepared.leaf_hash);
        results.push(Ok(Appended {
            index,
            leaf_hash: prepared.leaf_hash,
        }));
    }
    let root = tree.root();
    let note = signer.sign(&Checkpoint::new(signer.name(), tree.size(), root)?);
    let query = sqlx::query(SQL)
        .bind(to_i64(tree.size())?)
        .bind(root.as_bytes().to_vec())
        .bind(frontier_bytes(&tree))
        .bind(to_i64(start)?)
        .bind(start_root.as_bytes().to_vec())
        .bind(now_nanos());
    let query = leaves.bind(query);
    let query = bills.bind(query);
    let query = runs.bind(query);
    let outcome = query.bind(note).bind(signer_key_id).fetch_one(connection).await;
    match outcome {
        Ok(row) if row.try_get::<i64, _>("moved")? == 1 => Ok(Some(Committed {
            results,
            start,
            appended,
            head: tree,
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
    }
}

type PgQuery<'q> = sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>;

/// The leaf rows of a batch, column by column (for `UNNEST`).
#[derive(Default)]
struct LeafColumns<'a> {
    index: Vec<i64>,
    event_id: Vec<&'a str>,
    tenant: Vec<&'a str>,
    kind: Vec<&'a str>,
    hash: Vec<Vec<u8>>,
}

impl<'a> LeafColumns<'a> {
    fn with_capacity(n: usize) -> Self {
        Self {
            index: Vec::with_capacity(n),
            event_id: Vec::with_capacity(n),
            tenant: Vec::with_capacity(n),
            kind: Vec::with_capacity(n),
            hash: Vec::with_capacity(n),
        }
    }

    fn push(&mut self, index: i64, row: &'a NewRow, hash: Hash) {
        self.index.push(index);
        self.event_id.push(row.event_id());
        self.tenant.push(row.tenant());
        self.kind.push(row.kind());
        self.hash.push(hash.as_bytes().to_vec());
    }

    fn bind(self, query: PgQuery<'a>) -> PgQuery<'a> {
        query
            .bind(self.index)
            .bind(self.event_id)
            .bind(self.tenant)
            .bind(self.kind)
            .bind(self.hash)
    }
}

/// Billing rows of a batch, column by column.
#[derive(Default)]
struct BillingColumns<'a> {
    event_id: Vec<&'a str>,
    tenant: Vec<&'a str>,
    tool: Vec<&'a str>,
    tool_version: Vec<&'a str>,
    currency: Vec<&'a str>,
    amount_micros: Vec<i64>,
    fuel_consumed: Vec<i64>,
    duration_micros: Vec<i64>,
    occurred_at: Vec<i64>,
    run_id: Vec<&'a str>,
    recorded_by: Vec<&'a str>,
    ledger_index: Vec<i64>,
    row_version: Vec<i64>,
    mac_key_id: Vec<&'a str>,
    mac: Vec<&'a [u8]>,
}

impl<'a> BillingColumns<'a> {
    fn push(&mut self, r: &'a crate::rows::BillingEvent, index: i64, seal: &'a crate::rows::Seal) {
        self.event_id.push(&r.event_id);
        self.tenant.push(&r.tenant);
        self.tool.push(&r.tool);
        self.tool_version.push(&r.tool_version);
        self.currency.push(&r.currency);
        self.amount_micros.push(r.amount_micros);
        self.fuel_consumed.push(r.fuel_consumed);
        self.duration_micros.push(r.duration_micros);
        self.occurred_at.push(r.occurred_at);
        self.run_id.push(&r.run_id);
        self.recorded_by.push(&r.recorded_by);
        self.ledger_index.push(index);
        self.row_version.push(seal.row_version);
        self.mac_key_id.push(&seal.key_id);
        self.mac.push(&seal.mac);
    }

    fn bind(self, query: PgQuery<'a>) -> PgQuery<'a> {
        query
            .bind(self.event_id)
            .bind(self.tenant)
            .bind(self.tool)
            .bind(self.tool_version)
            .bind(self.currency)
            .bind(self.amount_micros)
            .bind(self.fuel_consumed)
            .bind(self.duration_micros)
            .bind(self.occurred_at)
            .bind(self.run_id)
            .bind(self.recorded_by)
            .bind(self.ledger_index)
            .bind(self.row_version)
            .bind(self.mac_key_id)
            .bind(self.mac)
    }
}

/// Capsule-run rows of a batch, column by column.
#[derive(Default)]
struct RunColumns<'a> {
    event_id: Vec<&'a str>,
    tenant: Vec<&'a str>,
    capsule_id: Vec<&'a str>,
    tool: Vec<&'a str>,
    run_id: Vec<&'a str>,
    outcome: Vec<&'a str>,
    started_at: Vec<i64>,
    duration_nanos: Vec<i64>,
    recorded_by: Vec<&'a str>,
    ledger_index: Vec<i64>,
    row_version: Vec<i64>,
    mac_key_id: Vec<&'a str>,
    mac: Vec<&'a [u8]>,
}

impl<'a> RunColumns<'a> {
    fn push(&mut self, r: &'a crate::rows::CapsuleRun, index: i64, seal: &'a crate::rows::Seal) {
        self.event_id.push(&r.event_id);
        self.tenant.push(&r.tenant);
        self.capsule_id.push(&r.capsule_id);
        self.tool.push(&r.tool);
        self.run_id.push(&r.run_id);
        self.outcome.push(&r.outcome);
        self.started_at.push(r.started_at);
        self.duration_nanos.push(r.duration_nanos);
        self.recorded_by.push(&r.recorded_by);
        self.ledger_index.push(index);
        self.row_version.push(seal.row_version);
        self.mac_key_id.push(&seal.key_id);
        self.mac.push(&seal.mac);
    }

    fn bind(self, query: PgQuery<'a>) -> PgQuery<'a> {
        query
            .bind(self.event_id)
            .bind(self.tenant)
            .bind(self.capsule_id)
            .bind(self.tool)
            .bind(self.run_id)
            .bind(self.outcome)
            .bind(self.started_at)
            .bind(self.duration_nanos)
            .bind(self.recorded_by)
            .bind(self.ledger_index)
            .bind(self.row_version)
            .bind(self.mac_key_id)
            .bind(self.mac)
    }
}

/// Commits one batch; the outer error means nothing was written.
async fn commit(
    db: &Database,
    connection: Option<&mut PgConnection>,
    keys: &HmacKeyring,
    signer: &CheckpointSigner,
    signer_key_id: &str,
    rows: &[(&NewRow, &Prepared)],
) -> Result<Committed, AnalyticsError> {
    // The locked path, on a pool of either engine or on the writer's own
    // PostgreSQL connection (each begins the transaction its own way).
    macro_rules! locked {
        ($pool:ident) => {{
            let mut tx = $pool.begin().await?;
            // Take the head's row lock (the write lock on SQLite) before reading
            // it: appenders in every process serialize here.
            // One round trip: the no-op update takes the lock and returns the
            // head as it is once the lock is held.
            let head = sqlx::query(
                "UPDATE ledger_head SET tree_size = tree_size WHERE id = 1 RETURNING tree_size, root, frontier",
            )
            .fetch_one(&mut *tx)
            .await?;
            let start = to_u64(head.try_get::<i64, _>("tree_size")?)?;
            let mut tree = parse_frontier(start, &head.try_get::<Vec<u8>, _>("frontier")?)?;
            if tree.root().as_bytes().as_slice() != head.try_get::<Vec<u8>, _>("root")?.as_slice() {
                return Err(AnalyticsError::LedgerCorrupt {
                    first_bad_index: start,
                    reason: "stored head root does not match its frontier".to_owned(),
                });
            }
            let now = now_nanos();
            let mut results = Vec::with_capacity(rows.len());
            let mut in_batch: std::collections::HashMap<&str, Appended> = std::collections::HashMap::new();
            // Idempotency: the leaves already stored for this batch's event ids,
            // fetched in one round trip per chunk rather than one per event.
            let mut stored: std::collections::HashMap<String, Appended> = std::collections::HashMap::new();
            // The ids travel as one JSON array, so the statement's text is the
            // same for every batch size and stays prepared on each connection.
            let lookup = if db.as_postgres().is_some() {
                "SELECT event_id, leaf_index, leaf_hash FROM ledger_leaves \
                 WHERE event_id = ANY (ARRAY(SELECT jsonb_array_elements_text($1::jsonb)))"
            } else {
                "SELECT event_id, leaf_index, leaf_hash FROM ledger_leaves \
                 WHERE event_id IN (SELECT value FROM json_each($1))"
            };
            for chunk in rows.chunks(LOOKUP_CHUNK) {
                let mut ids = Vec::with_capacity(chunk.len() * 48);
                ids.push(b'[');
                for (i, (row, _)) in chunk.iter().enumerate() {
                    if i > 0 {
                        ids.push(b',');
                    }
                    crate::rows::push_string(&mut ids, row.event_id());
                }
                ids.push(b']');
                // Built from `&str`s and ASCII punctuation: valid UTF-8.
                let ids = String::from_utf8(ids).map_err(|e| AnalyticsError::Config(e.to_string()))?;
                let query = sqlx::query(lookup).bind(ids);
                for r in query.fetch_all(&mut *tx).await? {
                    stored.insert(
                        r.try_get::<String, _>("event_id")?,
                        Appended {
                            index: to_u64(r.try_get::<i64, _>("leaf_index")?)?,
                            leaf_hash: Hash::from_slice(&r.try_get::<Vec<u8>, _>("leaf_hash")?)?,
                        },
                    );
                }
            }
            // New leaves are inserted together after the loop, then the rows
            // that reference them.
            let mut new_leaves: Vec<(i64, &NewRow, Hash, Option<&crate::rows::Seal>)> = Vec::new();
            for (row, prepared) in rows {
                let leaf_hash = prepared.leaf_hash;
                let event_id = row.event_id();
                let earlier = in_batch.get(event_id).or_else(|| stored.get(event_id)).copied();
                if let Some(earlier) = earlier {
                    // Idempotent retry: the same content gets the same index;
                    // other content under the same id is a conflict.
                    results.push(if earlier.leaf_hash == leaf_hash {
                        Ok(earlier)
                    } else if let NewRow::RegressionTransition(t) = row {
                        // Another transition already produced this version.
                        Err(crate::regression::current_state!(tx, &t.regression_id))
                    } else {
                        Err(AnalyticsError::EventIdConflict { event_id: event_id.to_owned() })
                    });
                    continue;
                }
                // A regression transition moves its state row first, guarded by
                // the version it moves from; if the row moved meanwhile the item
                // fails here, before its leaf touches the tree.
                if let NewRow::RegressionTransition(t) = row
                    && let Err(e) = crate::regression::apply_transition!(tx, keys, t)
                {
                    results.push(Err(e));
                    continue;
                }
                let index = tree.append(leaf_hash)?;
                new_leaves.push((to_i64(index)?, *row, leaf_hash, prepared.seal.as_ref()));
                let appended = Appended { index, leaf_hash };
                in_batch.insert(event_id, appended);
                results.push(Ok(appended));
            }
            for chunk in new_leaves.chunks(LOOKUP_CHUNK) {
                let sql = format!(
                    "INSERT INTO ledger_leaves (leaf_index, event_id, tenant, kind, leaf_hash, appended_at) VALUES {}",
                    values_list(chunk.len(), 6)
                );
                let mut query = sqlx::query(&sql);
                for (index_i64, row, leaf_hash, _) in chunk {
                    query = query
                        .bind(*index_i64)
                        .bind(row.event_id())
                        .bind(row.tenant())
                        .bind(row.kind())
                        .bind(leaf_hash.as_bytes().to_vec())
                        .bind(now);
                }
                query.execute(&mut *tx).await?;
            }
            // The two high-volume tables are written with multi-row statements;
            // the other kinds insert (and update) through their own modules.
            let mut runs = Vec::new();
            let mut bills = Vec::new();
            for (index_i64, row, leaf_hash, seal) in &new_leaves {
                let (index_i64, leaf_hash) = (*index_i64, *leaf_hash);
                // `Ledger::append` sealed these rows before they were queued.
                match row {
                    NewRow::CapsuleRun(r) => runs.push((r, index_i64, seal.map_or_else(|| r.seal(keys), |s| Ok(s.clone()))?)),
                    NewRow::Billing(r) => bills.push((r, index_i64, seal.map_or_else(|| r.seal(keys), |s| Ok(s.clone()))?)),
                    NewRow::RegressionTransition(t) => crate::regression::insert_transition!(tx, keys, t, index_i64),
                    NewRow::AnomalyScan(s) => crate::anomaly::insert_scan!(tx, keys, s.as_ref(), index_i64),
                    NewRow::Drill(d) => crate::drills::insert_drill!(tx, keys, d.as_ref(), index_i64, leaf_hash, now),
                }
            }
            for chunk in runs.chunks(ROWS_CHUNK) {
                let sql = format!(
                    "INSERT INTO capsule_runs (event_id, tenant, capsule_id, tool, run_id, outcome, started_at, \
                     duration_nanos, recorded_by, ledger_index, row_version, mac_key_id, mac) VALUES {}",
                    values_list(chunk.len(), 13)
                );
                let mut query = sqlx::query(&sql);
                for (r, index_i64, seal) in chunk {
                    query = query
                        .bind(&r.event_id)
                        .bind(&r.tenant)
                        .bind(&r.capsule_id)
                        .bind(&r.tool)
                        .bind(&r.run_id)
                        .bind(&r.outcome)
                        .bind(r.started_at)
                        .bind(r.duration_nanos)
                        .bind(&r.recorded_by)
                        .bind(*index_i64)
                        .bind(seal.row_version)
                        .bind(&seal.key_id)
                        .bind(&seal.mac);
                }
                query.execute(&mut *tx).await?;
            }
            for chunk in bills.chunks(ROWS_CHUNK) {
                let sql = format!(
                    "INSERT INTO billing_events (event_id, tenant, tool, tool_version, currency, amount_micros, \
                     fuel_consumed, duration_micros, occurred_at, run_id, recorded_by, ledger_index, row_version, \
                     mac_key_id, mac) VALUES {}",
                    values_list(chunk.len(), 15)
                );
                let mut query = sqlx::query(&sql);
                for (r, index_i64, seal) in chunk {
                    query = query
                        .bind(&r.event_id)
                        .bind(&r.tenant)
                        .bind(&r.tool)
                        .bind(&r.tool_version)
                        .bind(&r.currency)
                        .bind(r.amount_micros)
                        .bind(r.fuel_consumed)
                        .bind(r.duration_micros)
                        .bind(r.occurred_at)
                        .bind(&r.run_id)
                        .bind(&r.recorded_by)
                        .bind(*index_i64)
                        .bind(seal.row_version)
                        .bind(&seal.key_id)
                        .bind(&seal.mac);
                }
                query.execute(&mut *tx).await?;
            }
            if tree.size() > start {
                let root = tree.root();
                let checkpoint = Checkpoint::new(signer.name(), tree.size(), root)?;
                let note = signer.sign(&checkpoint);
                sqlx::query("UPDATE ledger_head SET tree_size = $1, root = $2, frontier = $3 WHERE id = 1")
                    .bind(to_i64(tree.size())?)
                    .bind(root.as_bytes().to_vec())
                    .bind(frontier_bytes(&tree))
                    .execute(&mut *tx)
                    .await?;
                sqlx::query(
                    "INSERT INTO ledger_checkpoints (tree_size, root, note, key_id, created_at) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(to_i64(tree.size())?)
                .bind(root.as_bytes().to_vec())
                .bind(&note)
                .bind(signer_key_id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(Committed {
                results,
                start,
                appended: new_leaves.iter().map(|(_, _, hash, _)| *hash).collect(),
                head: tree,
            })
        }};
    }
    match connection {
        Some(connection) => locked!(connection),
        None => on_pool!(db, pool => locked!(pool)),
    }
}

/// Start-up verification: leaves contiguous from 0 to the head's size, the
/// root recomputed from them equal to the head's and to every stored
/// checkpoint's, no checkpoint beyond the head (a rolled-back head), and
/// each leaf equal to the leaf recomputed from its event row where the root
/// check points at a range.
pub(crate) async fn verify(db: &Database) -> Result<Health, AnalyticsError> {
    let (head_size, head_root, leaves, checkpoints) = on_pool!(db, pool => {
        let head = sqlx::query("SELECT tree_size, root FROM ledger_head WHERE id = 1").fetch_one(pool).await?;
        let head_size = to_u64(head.try_get::<i64, _>("tree_size")?)?;
        let head_root = head.try_get::<Vec<u8>, _>("root")?;
        let leaves = sqlx::query("SELECT leaf_index, leaf_hash FROM ledger_leaves ORDER BY leaf_index")
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| -> Result<(i64, Vec<u8>), AnalyticsError> {
                Ok((r.try_get::<i64, _>("leaf_index")?, r.try_get::<Vec<u8>, _>("leaf_hash")?))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let checkpoints = sqlx::query("SELECT tree_size, root FROM ledger_checkpoints ORDER BY tree_size")
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| -> Result<(i64, Vec<u8>), AnalyticsError> {
                Ok((r.try_get::<i64, _>("tree_size")?, r.try_get::<Vec<u8>, _>("root")?))
            })
            .collect::<Result<Vec<_>, _>>()?;
        (head_size, head_root, leaves, checkpoints)
    });

    let corrupt = |i: u64, reason: &str| {
        Ok(Health::Corrupt {
            first_bad_index: i,
            reason: reason.to_owned(),
        })
    };
    let mut tree = CompactTree::new();
    let mut next_checkpoint = checkpoints.iter().peekable();
    let mut last_good: u64 = 0;
    for (position, (index, hash)) in leaves.iter().enumerate() {
        let position = position as u64;
        if u64::try_from(*index).ok() != Some(position) {
            return corrupt(position, "leaf missing: indices are not contiguous");
        }
        let Ok(hash) = Hash::from_slice(hash) else {
            return corrupt(position, "leaf hash is not 32 bytes");
        };
        tree.append(hash)?;
        while let Some((size, root)) = next_checkpoint.peek() {
            let size = u64::try_from(*size).unwrap_or(0);
            if size > tree.size() {
                break;
            }
            if size == tree.size() {
                if tree.root().as_bytes().as_slice() != root.as_slice() {
                    return corrupt(
                        last_good,
                        "recomputed root differs from the checkpoint at this size",
                    );
                }
                last_good = size;
            }
            next_checkpoint.next();
        }
    }
    if tree.size() < head_size {
        return corrupt(
            tree.size(),
            "leaf missing: fewer leaves than the head's tree size",
        );
    }
    if tree.size() > head_size {
        return corrupt(
            head_size,
            "more leaves than the head's tree size (head rolled back)",
        );
    }
    if let Some((size, _)) = next_checkpoint.next() {
        return corrupt(
            head_size,
            &format!("a checkpoint of size {size} is beyond the head (head rolled back)"),
        );
    }
    if tree.root().as_bytes().as_slice() != head_root.as_slice() {
        return corrupt(last_good, "recomputed root differs from the head's root");
    }
    Ok(Health::Sound)
}

/// Rows and their seals, read back for the sweep.
pub(crate) async fn sweep(
    db: &Database,
    keys: &HmacKeyring,
) -> Result<(u64, Vec<(String, String, String)>), AnalyticsError> {
    let mut checked = 0u64;
    let mut failures = Vec::new();
    let runs = crate::read::all_capsule_runs(db).await?;
    let bills = crate::read::all_billing_events(db).await?;
    let leaves: std::collections::HashMap<String, Vec<u8>> = on_pool!(db, pool => sqlx::query(
        "SELECT event_id, leaf_hash FROM ledger_leaves",
    )
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| -> Result<(String, Vec<u8>), AnalyticsError> {
        Ok((r.try_get::<String, _>("event_id")?, r.try_get::<Vec<u8>, _>("leaf_hash")?))
    })
    .collect::<Result<_, _>>()?);
    for (row, seal) in &runs {
        checked += 1;
        check_one(row, seal, keys, &leaves, &mut failures);
    }
    for (row, seal) in &bills {
        checked += 1;
        check_one(row, seal, keys, &leaves, &mut failures);
    }
    // Regression transitions and scans have leaves; regression state rows
    // and findings are MAC-checked only (a scan's leaf binds its findings
    // through their digest).
    let (states, transitions) = crate::regression::all_rows(db).await?;
    for (row, seal) in &transitions {
        checked += 1;
        check_one(row, seal, keys, &leaves, &mut failures);
    }
    let (scans, findings) = crate::anomaly::all_rows(db).await?;
    for (row, seal) in &scans {
        checked += 1;
        check_one(row, seal, keys, &leaves, &mut failures);
    }
    for (row, seal) in &states {
        checked += 1;
        if let Some(reason) = crate::regression::check_state(row, seal, keys, &leaves) {
            failures.push((
                crate::regression::Regression::TABLE.to_owned(),
                row.regression_id.clone(),
                reason,
            ));
        }
    }
    for (row, seal) in &findings {
        checked += 1;
        check_mac_only(row, seal, keys, &mut failures);
    }
    for (row, seal) in &crate::drills::read_drills(db, None, None).await? {
        checked += 1;
        check_one(row, seal, keys, &leaves, &mut failures);
    }
    checked += crate::webhook::sweep_outbox(db, keys, &mut failures).await?;
    Ok((checked, failures))
}

fn check_mac_only<R: crate::rows::EventRow>(
    row: &R,
    seal: &crate::rows::Seal,
    keys: &HmacKeyring,
    failures: &mut Vec<(String, String, String)>,
) {
    if let Err(e) = row.check(keys, seal) {
        failures.push((
            R::TABLE.to_owned(),
            row.event_id().to_owned(),
            format!("row mac: {e}"),
        ));
    }
}

fn check_one<R: crate::rows::EventRow>(
    row: &R,
    seal: &crate::rows::Seal,
    keys: &HmacKeyring,
    leaves: &std::collections::HashMap<String, Vec<u8>>,
    failures: &mut Vec<(String, String, String)>,
) {
    let key = (R::TABLE.to_owned(), row.event_id().to_owned());
    if let Err(e) = row.check(keys, seal) {
        failures.push((key.0, key.1, format!("row mac: {e}")));
        return;
    }
    match (row.leaf_hash(), leaves.get(row.event_id())) {
        (Ok(h), Some(stored)) if h.as_bytes().as_slice() == stored.as_slice() => {}
        (Ok(_), Some(_)) => failures.push((key.0, key.1, "ledger leaf differs from the row".to_owned())),
        (Ok(_), None) => failures.push((key.0, key.1, "no ledger leaf for the row".to_owned())),
        (Err(e), _) => failures.push((key.0, key.1, format!("leaf: {e}"))),
    }
}
