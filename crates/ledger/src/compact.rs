//! An append-only compact range over `[0, size)`: the roots of the perfect
//! subtrees that a tree of `size` leaves decomposes into, one per set bit of
//! `size`, largest (leftmost) first. This is the "frontier" of the tree.

use crate::error::LedgerError;
use crate::hash::{EMPTY_ROOT, Hash, node_hash};

/// An incrementally built Merkle tree that keeps O(log n) hashes.
///
/// Appending a leaf merges equal-sized perfect subtrees like binary carry
/// propagation; [`CompactTree::root`] folds the frontier from the right, which
/// is exactly RFC 9162's MTH because the left child of every MTH split is the
/// largest perfect subtree. The service rebuilds one from stored leaf hashes
/// at startup ([`CompactTree::from_leaves`]) and compares its root with the
/// last stored tree head.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CompactTree {
    size: u64,
    /// Perfect-subtree roots, largest first; `frontier.len() == size.count_ones()`.
    frontier: Vec<Hash>,
}

impl CompactTree {
    /// The empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds the tree of the given leaf hashes, in order.
    pub fn from_leaves(leaves: &[Hash]) -> Result<Self, LedgerError> {
        let mut tree = Self::new();
        for leaf in leaves {
            tree.append(*leaf)?;
        }
        Ok(tree)
    }

    /// Restores a tree from a stored size and frontier (as returned by
    /// [`CompactTree::frontier`]). The frontier must hold exactly one hash per
    /// set bit of `size`; the hashes themselves are trusted as given.
    pub fn from_frontier(size: u64, frontier: Vec<Hash>) -> Result<Self, LedgerError> {
        let want = size.count_ones() as usize;
        if frontier.len() != want {
            return Err(LedgerError::InvalidFrontier {
                size,
                got: frontier.len(),
                want,
            });
        }
        Ok(Self { size, frontier })
    }

    /// Appends one leaf hash and returns its index.
    ///
    /// Fails only with [`LedgerError::TreeFull`] after 2^64 - 1 leaves.
    pub fn append(&mut self, leaf: Hash) -> Result<u64, LedgerError> {
        let index = self.size;
        let new_size = index.checked_add(1).ok_or(LedgerError::TreeFull)?;
        // Each trailing one bit of the old size is a perfect subtree of the
        // same height as the one being carried; merge them right to left.
        let mut carried = leaf;
        for _ in 0..index.trailing_ones() {
            match self.frontier.pop() {
                Some(left) => carried = node_hash(&left, &carried),
                // The invariant `frontier.len() == size.count_ones()` makes
                // this arm unreachable; refuse rather than corrupt the tree.
                None => {
                    return Err(LedgerError::InvalidFrontier {
                        size: index,
                        got: 0,
                        want: index.count_ones() as usize,
                    });
                }
            }
        }
        self.frontier.push(carried);
        self.size = new_size;
        Ok(index)
    }

    /// The number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The root hash; [`EMPTY_ROOT`] for the empty tree.
    pub fn root(&self) -> Hash {
        let mut hashes = self.frontier.iter().rev();
        match hashes.next() {
            None => EMPTY_ROOT,
            Some(last) => hashes.fold(*last, |acc, left| node_hash(left, &acc)),
        }
    }

    /// The perfect-subtree roots, largest first (for persisting the tree).
    pub fn frontier(&self) -> &[Hash] {
        &self.frontier
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::leaf_hash;

    #[test]
    fn frontier_length_tracks_set_bits() {
        let mut tree = CompactTree::new();
        for i in 0u64..40 {
            assert_eq!(tree.append(leaf_hash(&i.to_be_bytes())).unwrap(), i);
            assert_eq!(tree.frontier().len(), tree.size().count_ones() as usize);
        }
        let restored = CompactTree::from_frontier(tree.size(), tree.frontier().to_vec()).unwrap();
        assert_eq!(restored, tree);
    }

    #[test]
    fn from_frontier_refuses_wrong_count() {
        let err = CompactTree::from_frontier(3, vec![EMPTY_ROOT]).unwrap_err();
        assert!(matches!(
            err,
            LedgerError::InvalidFrontier {
                size: 3,
                got: 1,
                want: 2
            }
        ));
    }

    #[test]
    fn full_tree_refuses_append() {
        let mut tree = CompactTree::from_frontier(u64::MAX, vec![EMPTY_ROOT; 64]).unwrap();
        assert!(matches!(tree.append(EMPTY_ROOT), Err(LedgerError::TreeFull)));
        assert_eq!(tree.size(), u64::MAX);
    }
}
