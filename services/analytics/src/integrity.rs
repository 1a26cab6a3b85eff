//! Integrity: the start-up verification of the stored tree, the row
//! sweep behind `VerifyStore` and `soma verify store`, and the check of a
//! row before it is served as proof. It walks every table of
//! [`crate::tables::REGISTRY`] and names none.

use std::collections::HashMap;

use soma_ledger::{CompactTree, Hash};
use soma_sign::HmacKeyring;
use soma_store::{Database, on_pool};

use crate::convert::to_u64;
use crate::error::AnalyticsError;
use crate::tables::{self, Get, Leaves, Sealed};

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
pub(crate) async fn verify(db: &Database) -> Result<Health, AnalyticsError> {
    let (head_size, head_root, leaves, checkpoints) = on_pool!(db, pool => {
        let head = sqlx::query("SELECT tree_size, root FROM ledger_head WHERE id = 1").fetch_one(pool).await?;
        let head_size = to_u64(head.int("tree_size")?)?;
        let head_root = head.bytes("root")?;
        let leaves = sqlx::query("SELECT leaf_index, leaf_hash FROM ledger_leaves ORDER BY leaf_index")
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| -> Result<(i64, Vec<u8>), AnalyticsError> {
                Ok((r.int("leaf_index")?, r.bytes("leaf_hash")?))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let checkpoints = sqlx::query("SELECT tree_size, root FROM ledger_checkpoints ORDER BY tree_size")
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| -> Result<(i64, Vec<u8>), AnalyticsError> {
                Ok((r.int("tree_size")?, r.bytes("root")?))
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

/// The result of a sweep of every Analytics row (the `VerifyStore` RPC and
/// `soma verify store`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreReport {
    /// Rows checked, failed or not.
    pub rows_checked: u64,
    /// The rows that failed, in sweep order.
    pub failures: Vec<StoreFailure>,
}

/// One row that failed the sweep.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreFailure {
    /// Table of the row, e.g. `billing_events`.
    pub table: String,
    /// The row's primary key.
    pub primary_key: String,
    /// Why it failed (a MAC that does not verify, a leaf that differs).
    pub reason: String,
}

/// Sweeps every Analytics row: each row's MAC under `keys` (the primary or
/// an older enabled version; unknown and retired key ids fail), each
/// ledgered row's leaf recomputed and compared with the stored leaf, and
/// what a table checks besides ([`tables::Table::cross_check`]). Only
/// reads; the database must already carry the service's migrations.
pub async fn verify_store(db: &Database, keys: &HmacKeyring) -> Result<StoreReport, AnalyticsError> {
    let leaves: Leaves = on_pool!(db, pool => sqlx::query("SELECT event_id, leaf_hash FROM ledger_leaves")
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| -> Result<(String, Vec<u8>), AnalyticsError> { Ok((r.text("event_id")?, r.bytes("leaf_hash")?)) })
        .collect::<Result<HashMap<_, _>, _>>()?);
    let mut report = StoreReport::default();
    for table in tables::registered() {
        for (row, seal) in (table.load_all)(db).await? {
            report.rows_checked += 1;
            if let Some(reason) = failure(&(row, seal), keys, &leaves) {
                report.failures.push(reason);
            }
        }
    }
    Ok(report)
}

/// Why a stored row fails the sweep, if it does.
fn failure((row, seal): &Sealed, keys: &HmacKeyring, leaves: &Leaves) -> Option<StoreFailure> {
    let fail = |reason: String| {
        Some(StoreFailure {
            table: row.table_name().to_owned(),
            primary_key: row.key().to_owned(),
            reason,
        })
    };
    if let Err(e) = row.verify(keys, seal) {
        return fail(format!("row mac: {e}"));
    }
    match (row.leaf(), leaves.get(row.key())) {
        (None, _) => {}
        (Some(Ok(h)), Some(stored)) if h.as_bytes().as_slice() == stored.as_slice() => {}
        (Some(Ok(_)), Some(_)) => return fail("ledger leaf differs from the row".to_owned()),
        (Some(Ok(_)), None) => return fail("no ledger leaf for the row".to_owned()),
        (Some(Err(e)), _) => return fail(format!("leaf: {e}")),
    }
    row.cross(seal, leaves).and_then(fail)
}

/// Reads an event's row, checks its MAC and that `leaf` is the leaf
/// recomputed from it: a row that fails is never served as valid.
pub(crate) async fn verified_leaf(
    db: &Database,
    keys: &HmacKeyring,
    event_id: &str,
    leaf: &Hash,
) -> Result<(), AnalyticsError> {
    for table in tables::registered().filter(|t| t.ledgered) {
        let Some((row, seal)) = (table.load_one)(db, event_id).await? else {
            continue;
        };
        row.verify(keys, &seal)?;
        let recomputed = row
            .leaf()
            .ok_or_else(|| AnalyticsError::Config(format!("table {} is not ledgered", table.name)))??;
        if &recomputed != leaf {
            return Err(AnalyticsError::RowIntegrity {
                table: "ledger_leaves",
                primary_key: event_id.to_owned(),
            });
        }
        return Ok(());
    }
    Err(AnalyticsError::NotFound(format!("no event row for {event_id}")))
}
