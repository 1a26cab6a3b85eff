//! Integrity: the start-up verification of the stored tree, the re-seal of
//! rows sealed under the previous row-MAC scheme, the sweep behind
//! `VerifyStore` and `soma verify store`, and the check of a leaf and its
//! row before a proof of it is served. It walks every table of
//! [`crate::tables::REGISTRY`] and names none.
//!
//! The sweep checks the bijection between the ledger and the event rows:
//! the leaves are contiguous from 0 and their root is the head's and every
//! checkpoint's; every leaf row is sealed and its MAC verifies; every
//! ledgered row verifies and sits at the index of the leaf recomputed from
//! it, which names its tenant, event and kind; no index is claimed twice;
//! and every leaf has its row.

use std::collections::{BTreeMap, HashMap};
use std::sync::RwLock;

use soma_ledger::{CompactTree, Hash};
use soma_sign::HmacKeyring;
use soma_store::{Database, on_pool, retry_on_pool};

use crate::convert::to_u64;
use crate::error::AnalyticsError;
use crate::ledger::{Known, Owner};
use crate::tables::leaves::{LeafFacts, LeafRow};
use crate::tables::row::{LEGACY_MAC_SCHEME, MAC_SCHEME};
use crate::tables::{self, Get, Leaves, Registration, Seal, Sealed, Value, bind_values};

/// The ledger's health, decided at start-up (and on a commit that finds
/// the stored head inconsistent).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Health {
    Sound,
    Corrupt { first_bad_index: u64, reason: String },
}

/// Start-up verification: leaves contiguous from 0 to the head's size, the
/// root recomputed from them equal to the head's and to every stored
/// checkpoint's, no checkpoint beyond the head (a rolled-back head), and
/// each leaf equal to the leaf recomputed from its event row where the root
/// check points at a range.
///
/// The head, the leaves and the checkpoints are read in one snapshot (a
/// `REPEATABLE READ` transaction on PostgreSQL, one read transaction on
/// SQLite): another instance may be appending while this one starts (an
/// Analytics standby beside the writer), and a leaf committed between two
/// separate reads would look like a rolled-back head.
pub(crate) async fn verify(db: &Database) -> Result<Health, AnalyticsError> {
    let postgres = db.as_postgres().is_some();
    // A read: retried on a new connection when the connection is lost.
    let (head_size, head_root, leaves, checkpoints) = retry_on_pool!(db, "ledger_verify", AnalyticsError, pool => {
        let mut tx = pool.begin().await?;
        if postgres {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(&mut *tx)
                .await?;
        }
        let head = sqlx::query("SELECT tree_size, root FROM ledger_head WHERE id = 1").fetch_one(&mut *tx).await?;
        let head_size = to_u64(head.int("tree_size")?)?;
        let head_root = head.bytes("root")?;
        let leaves = sqlx::query("SELECT leaf_index, leaf_hash FROM ledger_leaves ORDER BY leaf_index")
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| -> Result<(i64, Vec<u8>), AnalyticsError> {
                Ok((r.int("leaf_index")?, r.bytes("leaf_hash")?))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let checkpoints = sqlx::query("SELECT tree_size, root FROM ledger_checkpoints ORDER BY tree_size")
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| -> Result<(i64, Vec<u8>), AnalyticsError> {
                Ok((r.int("tree_size")?, r.bytes("root")?))
            })
            .collect::<Result<Vec<_>, _>>()?;
        tx.commit().await?;
        (head_size, head_root, leaves, checkpoints)
    })?;

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

/// The result of a sweep of every Analytics row (the `VerifyStore` RPC and
/// `soma verify store`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreReport {
    /// Rows checked, failed or not (leaf rows are not counted).
    pub rows_checked: u64,
    /// The rows and leaves that failed, in sweep order.
    pub failures: Vec<StoreFailure>,
}

/// One row (or ledger leaf) that failed the sweep.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreFailure {
    /// Table of the row, e.g. `billing_events`; `ledger_leaves` for a leaf.
    pub table: String,
    /// The row's key within its tenant; a leaf's index.
    pub primary_key: String,
    /// Why it failed (a MAC that does not verify, a leaf that differs, a
    /// leaf without its row); for a ledgered row or a leaf, naming the
    /// tenant and the ledger index.
    pub reason: String,
}

impl StoreFailure {
    fn leaf(index: i64, reason: String) -> Self {
        Self {
            table: "ledger_leaves".to_owned(),
            primary_key: index.to_string(),
            reason,
        }
    }
}

/// Sweeps every Analytics row and ledger leaf (see the module doc): each
/// row's MAC under `keys` (the primary or an older enabled version; unknown
/// and retired key ids fail) and the scheme that sealed it, each ledgered
/// row against the leaf at its index, each leaf against its MAC and its
/// row, and what a table checks besides ([`tables::Table::cross_check`]).
/// Each row yields at most one failure (a ledgered row's names its tenant
/// and ledger index); a leaf that no row claims yields one of its own. Only reads; the
/// database must already carry the service's migrations.
pub async fn verify_store(db: &Database, keys: &HmacKeyring) -> Result<StoreReport, AnalyticsError> {
    let mut report = StoreReport::default();
    if let Health::Corrupt {
        first_bad_index,
        reason,
    } = verify(db).await?
    {
        let index = i64::try_from(first_bad_index).unwrap_or(i64::MAX);
        report.failures.push(StoreFailure::leaf(
            index,
            format!("ledger index {index}: {reason}"),
        ));
    }
    let leaves = leaves_where(db, "1 = 1").await?;
    let mut events = Leaves::default();
    for leaf in leaves.values() {
        events.insert(&leaf.tenant, &leaf.event_id);
    }
    let mut sweep = Sweep {
        keys,
        leaves: &leaves,
        events: &events,
        claimed: HashMap::new(),
    };
    for table in tables::registered() {
        for sealed in (table.load_all)(db, None).await? {
            report.rows_checked += 1;
            if let Some(failure) = sweep.row(table, &sealed) {
                report.failures.push(failure);
            }
        }
    }
    for (index, leaf) in &leaves {
        if !sweep.claimed.contains_key(index) {
            report.failures.push(StoreFailure::leaf(
                *index,
                format!(
                    "ledger index {index}: the leaf of tenant {:?} ({} {}) has no row",
                    leaf.tenant, leaf.kind, leaf.event_id
                ),
            ));
        }
    }
    Ok(report)
}

/// The stored leaf rows that `filter` (an SQL condition without
/// parameters) admits, by index.
async fn leaves_where(db: &Database, filter: &str) -> Result<BTreeMap<i64, LeafRow>, AnalyticsError> {
    let sql = format!(
        "SELECT {} FROM ledger_leaves WHERE {filter} ORDER BY leaf_index",
        LeafRow::COLUMNS
    );
    soma_store::retry!(
        db,
        "leaves_where",
        AnalyticsError,
        on_pool!(db, pool => sqlx::query(&sql)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| LeafRow::read(r).map(|leaf| (leaf.index, leaf)))
        .collect())
    )
}

/// The sweep's state: the leaves, and which of them rows claimed.
struct Sweep<'a> {
    keys: &'a HmacKeyring,
    leaves: &'a BTreeMap<i64, LeafRow>,
    events: &'a Leaves,
    /// Index → whether a row that passed claimed it (a failing row claims
    /// its index too, so that one tampered row is one failure, not two).
    claimed: HashMap<i64, bool>,
}

impl Sweep<'_> {
    /// Why a stored row fails the sweep, if it does.
    fn row(&mut self, table: &Registration, (row, seal): &Sealed) -> Option<StoreFailure> {
        // A ledgered row's failure names its tenant and index; the key of a
        // row that is not ledgered is what the listing has always named.
        let at = match seal.ledger_index {
            Some(index) => format!(" (tenant {:?}, ledger index {index})", row.owner()),
            None => String::new(),
        };
        let failure = self.check(table, row.as_ref(), seal).err()?;
        Some(StoreFailure {
            table: row.table_name().to_owned(),
            primary_key: row.key().to_owned(),
            reason: format!("{failure}{at}"),
        })
    }

    fn check(&mut self, table: &Registration, row: &dyn tables::Stored, seal: &Seal) -> Result<(), String> {
        let index = seal.ledger_index;
        let result = self.checks(table, row, seal);
        if let Some(index) = index {
            let passed = result.is_ok();
            match self.claimed.get(&index) {
                Some(true) if passed => {
                    return Err(format!("ledger index {index}: another row claims it too"));
                }
                Some(true) => {}
                _ => {
                    self.claimed.insert(index, passed);
                }
            }
        }
        result
    }

    fn checks(&self, table: &Registration, row: &dyn tables::Stored, seal: &Seal) -> Result<(), String> {
        if seal.scheme != MAC_SCHEME && seal.scheme != LEGACY_MAC_SCHEME {
            return Err(format!("row mac: unknown scheme {}", seal.scheme));
        }
        row.verify(self.keys, seal).map_err(|e| format!("row mac: {e}"))?;
        if table.ledgered {
            let index = seal
                .ledger_index
                .ok_or_else(|| "the row has no ledger index".to_owned())?;
            let leaf = self
                .leaves
                .get(&index)
                .ok_or_else(|| format!("ledger index {index}: no ledger leaf for the row"))?;
            if leaf.tenant != row.owner() || leaf.event_id != row.key() || leaf.kind != table.kind {
                return Err(format!(
                    "ledger index {index}: the leaf there is tenant {:?}'s {} {}, not this row",
                    leaf.tenant, leaf.kind, leaf.event_id
                ));
            }
            match row.leaf() {
                Some(Ok(hash)) if hash.as_bytes().as_slice() == leaf.hash.as_slice() => {}
                Some(Ok(_)) => {
                    return Err(format!("ledger leaf differs from the row (ledger index {index})"));
                }
                Some(Err(e)) => return Err(format!("leaf: {e}")),
                None => return Err(format!("table {} is not ledgered", table.name)),
            }
            if leaf.sealed() {
                leaf.check(self.keys)
                    .map_err(|e| format!("ledger index {index}: {e}"))?;
                if leaf.time != row.at() {
                    return Err(format!(
                        "ledger index {index}: the leaf's event time is not the row's"
                    ));
                }
            } else if seal.scheme == MAC_SCHEME {
                // A row sealed under scheme 2 was appended, or re-sealed,
                // with a sealed leaf: its leaf was unsealed since.
                return Err(format!("ledger index {index}: the leaf row is not sealed"));
            }
        }
        row.cross(seal, self.events).map_or(Ok(()), Err)
    }
}

// ---------------------------------------------------------------------------
// Re-seal: scheme 1 → scheme 2

/// Rows re-sealed per transaction.
const RESEAL_BATCH: usize = 256;

/// Re-seals every row still under [`LEGACY_MAC_SCHEME`] under
/// [`MAC_SCHEME`], and seals every leaf row not yet sealed; returns the rows
/// and leaves it refused, and how many rows and leaves it updated.
///
/// A row is re-sealed only after it verifies under the scheme that sealed
/// it and, if ledgered, matches the leaf at its index (the leaf's tenant,
/// event and kind are the row's, and its hash is the one recomputed from
/// the row); its leaf is sealed in the same transaction. A row that fails
/// is reported and left as it is, never re-sealed: the sweep keeps naming
/// it. Runs at start-up, on a tree that [`verify`] found sound (so the leaf
/// hashes are the ones the checkpoints sign), before the writer starts.
/// Idempotent, and safe beside another process doing the same: every
/// update is guarded by the seal it replaces.
///
/// Why at start-up rather than in an operator command: the service is the
/// holder of the row keys, a ledger with unsealed leaves cannot prove any
/// export complete, and running it on every start makes the upgrade one
/// step that cannot be forgotten (after it, each start finds nothing to do,
/// through partial indexes of the unsealed rows).
pub(crate) async fn reseal(
    db: &Database,
    keys: &HmacKeyring,
) -> Result<(Vec<StoreFailure>, u64), AnalyticsError> {
    let mut refused = Vec::new();
    let mut unsealed = leaves_where(db, "mac_scheme = 1").await?;
    let mut resealed = 0u64;
    for table in tables::registered() {
        let old = (table.load_all)(db, Some(LEGACY_MAC_SCHEME)).await?;
        for chunk in old.chunks(RESEAL_BATCH) {
            let mut updates = Vec::with_capacity(chunk.len() * 2);
            for (row, seal) in chunk {
                let fail = |reason: String| StoreFailure {
                    table: row.table_name().to_owned(),
                    primary_key: row.key().to_owned(),
                    reason: format!("not re-sealed: {reason} (tenant {:?})", row.owner()),
                };
                match reseal_row(keys, table, row.as_ref(), seal, &mut unsealed) {
                    Ok(mut more) => updates.append(&mut more),
                    Err(reason) => refused.push(fail(reason)),
                }
            }
            resealed += execute(db, &updates).await?;
        }
    }
    // Leaves left unsealed: their rows were sealed under scheme 2 already
    // (a leaf row reverted to scheme 1 since), or are missing or failing.
    let mut updates = Vec::new();
    for leaf in unsealed.into_values() {
        match seal_leaf_from_row(db, keys, &leaf).await? {
            Ok(update) => updates.push(update),
            Err(reason) => refused.push(StoreFailure::leaf(
                leaf.index,
                format!("ledger index {}: leaf not sealed: {reason}", leaf.index),
            )),
        }
        if updates.len() >= RESEAL_BATCH {
            resealed += execute(db, &std::mem::take(&mut updates)).await?;
        }
    }
    resealed += execute(db, &updates).await?;
    if resealed > 0 || !refused.is_empty() {
        tracing::info!(
            updated = resealed,
            refused = refused.len(),
            "rows and leaves re-sealed under MAC scheme 2"
        );
    }
    Ok((refused, resealed))
}

/// One guarded UPDATE of the re-seal.
struct Update {
    sql: String,
    values: Vec<Value<'static>>,
}

/// The updates that re-seal one scheme-1 row (and seal its leaf), or why
/// the row is refused.
fn reseal_row(
    keys: &HmacKeyring,
    table: &Registration,
    row: &dyn tables::Stored,
    seal: &Seal,
    unsealed: &mut BTreeMap<i64, LeafRow>,
) -> Result<Vec<Update>, String> {
    row.verify(keys, seal).map_err(|e| format!("row mac: {e}"))?;
    let mut updates = Vec::with_capacity(2);
    if table.ledgered {
        let index = seal
            .ledger_index
            .ok_or_else(|| "the row has no ledger index".to_owned())?;
        let leaf = unsealed
            .get(&index)
            .ok_or_else(|| format!("ledger index {index}: no unsealed leaf there for the row"))?;
        let time = matching(table, row, leaf)?;
        updates.push(seal_leaf(keys, leaf, time));
        unsealed.remove(&index);
    }
    let new = row.reseal(keys, seal).map_err(|e| e.to_string())?;
    updates.push(Update {
        sql: format!(
            "UPDATE {} SET mac_scheme = $1, mac_key_id = $2, mac = $3              WHERE tenant = $4 AND {} = $5 AND mac_scheme = 1 AND mac = $6",
            table.name, table.key
        ),
        values: vec![
            Value::Int(new.scheme),
            Value::Owned(new.key_id),
            Value::OwnedBytes(new.mac),
            Value::Owned(row.owner().to_owned()),
            Value::Owned(row.key().to_owned()),
            Value::OwnedBytes(seal.mac.clone()),
        ],
    });
    Ok(updates)
}

/// Checks that `leaf` is the leaf of `row` (tenant, event, kind, hash);
/// the row's time for the leaf.
fn matching(table: &Registration, row: &dyn tables::Stored, leaf: &LeafRow) -> Result<i64, String> {
    let index = leaf.index;
    if leaf.tenant != row.owner() || leaf.event_id != row.key() || leaf.kind != table.kind {
        return Err(format!(
            "ledger index {index}: the leaf there is tenant {:?}'s {} {}",
            leaf.tenant, leaf.kind, leaf.event_id
        ));
    }
    match row.leaf() {
        Some(Ok(hash)) if hash.as_bytes().as_slice() == leaf.hash.as_slice() => {}
        Some(Ok(_)) => return Err(format!("ledger index {index}: the leaf differs from the row")),
        Some(Err(e)) => return Err(e.to_string()),
        None => return Err(format!("table {} is not ledgered", table.name)),
    }
    row.at()
        .ok_or_else(|| format!("table {} has no event time", table.name))
}

/// The update that seals `leaf` with its event's `time`.
fn seal_leaf(keys: &HmacKeyring, leaf: &LeafRow, time: i64) -> Update {
    let (key_id, mac) = LeafFacts {
        index: leaf.index,
        event_id: &leaf.event_id,
        tenant: &leaf.tenant,
        kind: &leaf.kind,
        time,
        hash: &leaf.hash,
    }
    .seal(keys);
    Update {
        sql: "UPDATE ledger_leaves SET event_time = $1, mac_scheme = $2, mac_key_id = $3, mac = $4               WHERE leaf_index = $5 AND mac_scheme = 1"
            .to_owned(),
        values: vec![
            Value::Int(time),
            Value::Int(MAC_SCHEME),
            Value::Owned(key_id),
            Value::OwnedBytes(mac),
            Value::Int(leaf.index),
        ],
    }
}

/// The update that seals an unsealed leaf whose row is sealed under scheme
/// 2 (so binds its index), or why it cannot be sealed.
async fn seal_leaf_from_row(
    db: &Database,
    keys: &HmacKeyring,
    leaf: &LeafRow,
) -> Result<Result<Update, String>, AnalyticsError> {
    let Some(table) = tables::ledgered_of(&leaf.kind) else {
        return Ok(Err(format!("unknown kind {:?}", leaf.kind)));
    };
    let rows = (table.load_key)(db, Some(&leaf.tenant), &leaf.event_id).await?;
    let [(row, seal)] = rows.as_slice() else {
        return Ok(Err(format!("{} rows for its event", rows.len())));
    };
    if seal.ledger_index != Some(leaf.index) {
        return Ok(Err("its row claims another index".to_owned()));
    }
    if let Err(e) = row.verify(keys, seal) {
        return Ok(Err(format!("row mac: {e}")));
    }
    Ok(matching(table, row.as_ref(), leaf).map(|time| seal_leaf(keys, leaf, time)))
}

/// Runs `updates` in one transaction; the rows they changed.
async fn execute(db: &Database, updates: &[Update]) -> Result<u64, AnalyticsError> {
    if updates.is_empty() {
        return Ok(0);
    }
    let mut changed = 0;
    on_pool!(db, pool => {
        let mut tx = pool.begin().await?;
        for update in updates {
            changed += bind_values!(sqlx::query(&update.sql), &update.values)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
    });
    Ok(changed)
}

// ---------------------------------------------------------------------------
// Before a proof

/// Checks a stored leaf row and its event row before a proof of the leaf
/// is served, and returns the leaf's hash: the leaf row must be the leaf the
/// ledger appended at its index (hash, tenant and kind as `known` holds
/// them, which were authenticated), and exactly one row of its tenant must
/// hold its event, verify under its MAC, sit at that index and recompute
/// that hash. Anything else is refused with `DATA_LOSS` naming the index:
/// a row that fails is never served as valid.
pub(crate) async fn verified_leaf(
    db: &Database,
    keys: &HmacKeyring,
    known: &RwLock<Known>,
    leaf: &LeafRow,
) -> Result<Hash, AnalyticsError> {
    let index = to_u64(leaf.index)?;
    let stored = Hash::from_slice(&leaf.hash)?;
    {
        let known = crate::ledger::read(known);
        let appended = match (known.hash(index), known.owner(index)) {
            (Some(hash), Some(Owner::Known { tenant, kind, .. })) => {
                *hash == stored && tenant == leaf.tenant && kind == leaf.kind
            }
            _ => false,
        };
        if !appended {
            return Err(AnalyticsError::LedgerLeafMismatch {
                index,
                detail: format!(
                    "the leaf row of tenant {:?}'s event {} is not the leaf the ledger appended",
                    leaf.tenant, leaf.event_id
                ),
            });
        }
    }
    let table = tables::ledgered_of(&leaf.kind).ok_or_else(|| AnalyticsError::LedgerLeafMismatch {
        index,
        detail: format!("unknown kind {:?}", leaf.kind),
    })?;
    let rows = (table.load_key)(db, Some(&leaf.tenant), &leaf.event_id).await?;
    if let Some((_, seal)) = rows.iter().find(|(_, s)| s.ledger_index != Some(leaf.index)) {
        let claimed = seal.ledger_index.unwrap_or(-1);
        return Err(match rows.len() {
            1 => AnalyticsError::LedgerRowMissing {
                index,
                detail: format!(
                    "the row of tenant {:?}'s event {} claims ledger index {claimed}",
                    leaf.tenant, leaf.event_id
                ),
            },
            _ => AnalyticsError::LedgerLeafMismatch {
                index: u64::try_from(claimed).unwrap_or(index),
                detail: format!(
                    "a second row of tenant {:?}'s event {} (whose leaf is at {index}) claims this index",
                    leaf.tenant, leaf.event_id
                ),
            },
        });
    }
    let [(row, seal)] = rows.as_slice() else {
        return Err(AnalyticsError::LedgerRowMissing {
            index,
            detail: format!(
                "the leaf of tenant {:?}'s {} {} has no row",
                leaf.tenant, leaf.kind, leaf.event_id
            ),
        });
    };
    let failed = || AnalyticsError::RowIntegrityAt {
        table: table.name,
        primary_key: leaf.event_id.clone(),
        index: leaf.index,
    };
    row.verify(keys, seal).map_err(|_| failed())?;
    match row.leaf() {
        Some(Ok(hash)) if hash == stored => Ok(stored),
        _ => Err(failed()),
    }
}

/// The ledger index of a row of `event_id` (of `tenant`, or of any tenant
/// when `None`) in a ledgered table, if one exists: a row whose leaf is
/// missing (or names another tenant) is a gap, not an unknown event.
pub(crate) async fn orphan_row(
    db: &Database,
    tenant: Option<&str>,
    event_id: &str,
) -> Result<Option<(u64, String)>, AnalyticsError> {
    for table in tables::registered().filter(|t| t.ledgered) {
        if let Some((row, seal)) = (table.load_key)(db, tenant, event_id).await?.into_iter().next() {
            let index = seal.ledger_index.and_then(|i| u64::try_from(i).ok()).unwrap_or(0);
            return Ok(Some((index, row.owner().to_owned())));
        }
    }
    Ok(None)
}
