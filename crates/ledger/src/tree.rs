//! Tree heads and proofs computed from the full list of leaf hashes
//! (RFC 9162 §2.1.1 MTH, §2.1.3.1 PATH, §2.1.4.1 PROOF/SUBPROOF).
//!
//! These functions follow the RFC's recursive definitions literally. Each
//! call hashes O(n) nodes for a tree of n leaves and recurses O(log n) deep;
//! they need no stored interior nodes, which keeps this crate storage-free.

use crate::error::LedgerError;
use crate::hash::{EMPTY_ROOT, Hash, node_hash};

/// The Merkle tree hash of `leaves` (RFC 9162 §2.1.1): [`EMPTY_ROOT`] for no
/// leaves, the leaf hash itself for one, and otherwise
/// `node_hash(MTH(D[0:k]), MTH(D[k:n]))` where `k` is the largest power of
/// two strictly less than `n`.
///
/// `leaves` are leaf hashes (see [`crate::leaf_hash`]), not raw entries.
pub fn root(leaves: &[Hash]) -> Hash {
    if leaves.is_empty() {
        EMPTY_ROOT
    } else {
        mth(leaves)
    }
}

/// The inclusion proof (audit path) of leaf `index` in the tree formed by the
/// first `tree_size` of `leaves` (RFC 9162 §2.1.3.1), ordered from the leaf's
/// sibling up to the child of the root.
///
/// Fails when `index >= tree_size` or when `tree_size` exceeds the number of
/// leaves supplied.
pub fn inclusion_proof(leaves: &[Hash], index: u64, tree_size: u64) -> Result<Vec<Hash>, LedgerError> {
    let tree = prefix(leaves, tree_size)?;
    if index >= tree_size {
        return Err(LedgerError::IndexOutOfRange { index, tree_size });
    }
    // `index < tree_size <= leaves.len()`, so it fits in usize.
    let index = usize::try_from(index).map_err(|_| LedgerError::IndexOutOfRange { index, tree_size })?;
    let mut proof = Vec::new();
    path(index, tree, &mut proof);
    Ok(proof)
}

/// The consistency proof between the trees formed by the first `size1` and
/// the first `size2` of `leaves` (RFC 9162 §2.1.4.1).
///
/// `size1 == size2` gives an empty proof. `size1 == 0` is refused with
/// [`LedgerError::ConsistencyFromEmptyTree`], following transparency-dev/merkle
/// (`proof.Consistency`): every tree extends the empty tree, so such a proof
/// would prove nothing, and [`crate::verify_consistency`] refuses it too.
pub fn consistency_proof(leaves: &[Hash], size1: u64, size2: u64) -> Result<Vec<Hash>, LedgerError> {
    let tree = prefix(leaves, size2)?;
    if size1 > size2 {
        return Err(LedgerError::SizesOutOfOrder { size1, size2 });
    }
    if size1 == 0 {
        return Err(LedgerError::ConsistencyFromEmptyTree);
    }
    // `size1 <= size2 <= leaves.len()`, so it fits in usize.
    let m = usize::try_from(size1).map_err(|_| LedgerError::SizesOutOfOrder { size1, size2 })?;
    let mut proof = Vec::new();
    subproof(m, tree, true, &mut proof);
    Ok(proof)
}

/// The first `size` leaves, or an error if fewer were supplied.
fn prefix(leaves: &[Hash], size: u64) -> Result<&[Hash], LedgerError> {
    let available = leaves.len() as u64;
    match usize::try_from(size) {
        Ok(n) if n <= leaves.len() => Ok(&leaves[..n]),
        _ => Err(LedgerError::TreeSizeExceedsLeaves {
            tree_size: size,
            available,
        }),
    }
}

/// The largest power of two strictly less than `n`; requires `n >= 2`.
fn split(n: usize) -> usize {
    debug_assert!(n >= 2);
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// MTH of a non-empty slice.
fn mth(leaves: &[Hash]) -> Hash {
    match leaves {
        [leaf] => *leaf,
        _ => {
            let k = split(leaves.len());
            node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
        }
    }
}

/// PATH(m, D[n]) appended to `out`; requires `m < leaves.len()`.
fn path(m: usize, leaves: &[Hash], out: &mut Vec<Hash>) {
    let n = leaves.len();
    if n <= 1 {
        return;
    }
    let k = split(n);
    if m < k {
        path(m, &leaves[..k], out);
        out.push(mth(&leaves[k..]));
    } else {
        path(m - k, &leaves[k..], out);
        out.push(mth(&leaves[..k]));
    }
}

/// SUBPROOF(m, D[n], b) appended to `out`; requires `0 < m <= leaves.len()`.
fn subproof(m: usize, leaves: &[Hash], complete: bool, out: &mut Vec<Hash>) {
    let n = leaves.len();
    if m == n {
        if !complete {
            out.push(mth(leaves));
        }
        return;
    }
    let k = split(n);
    if m <= k {
        subproof(m, &leaves[..k], complete, out);
        out.push(mth(&leaves[k..]));
    } else {
        subproof(m - k, &leaves[k..], false, out);
        out.push(mth(&leaves[..k]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_is_largest_power_of_two_below() {
        let cases = [
            (2usize, 1usize),
            (3, 2),
            (4, 2),
            (5, 4),
            (8, 4),
            (9, 8),
            (1 << 20, 1 << 19),
        ];
        for (n, k) in cases {
            assert_eq!(split(n), k, "n = {n}");
        }
    }

    #[test]
    fn generation_refuses_bad_arguments() {
        let leaves = [EMPTY_ROOT; 4];
        assert!(matches!(
            inclusion_proof(&leaves, 4, 4),
            Err(LedgerError::IndexOutOfRange {
                index: 4,
                tree_size: 4
            })
        ));
        assert!(matches!(
            inclusion_proof(&leaves, 0, 0),
            Err(LedgerError::IndexOutOfRange {
                index: 0,
                tree_size: 0
            })
        ));
        assert!(matches!(
            inclusion_proof(&leaves, 0, 5),
            Err(LedgerError::TreeSizeExceedsLeaves {
                tree_size: 5,
                available: 4
            })
        ));
        assert!(matches!(
            inclusion_proof(&leaves, 0, u64::MAX),
            Err(LedgerError::TreeSizeExceedsLeaves { .. })
        ));
        assert!(matches!(
            consistency_proof(&leaves, 3, 2),
            Err(LedgerError::SizesOutOfOrder { size1: 3, size2: 2 })
        ));
        assert!(matches!(
            consistency_proof(&leaves, 0, 2),
            Err(LedgerError::ConsistencyFromEmptyTree)
        ));
        assert!(matches!(
            consistency_proof(&leaves, 0, 0),
            Err(LedgerError::ConsistencyFromEmptyTree)
        ));
        assert!(matches!(
            consistency_proof(&leaves, 1, 5),
            Err(LedgerError::TreeSizeExceedsLeaves {
                tree_size: 5,
                available: 4
            })
        ));
        assert!(consistency_proof(&leaves, 3, 3).unwrap().is_empty());
    }
}
