//! Offline proof verification (RFC 9162 §2.1.3.2 and §2.1.4.2).
//!
//! The verifiers take untrusted sizes, indexes and proofs. They check every
//! precondition before touching the proof, compute the exact proof length the
//! sizes require, and never index, shift or subtract out of range, so no input
//! can make them panic. The proof-length decomposition is the bitwise form of
//! the RFC algorithm used by transparency-dev/merkle: an inclusion proof splits
//! into the `inner` part below the point where the paths to `index` and to the
//! last leaf diverge, and the `border` part along the right edge above it.

use crate::error::LedgerError;
use crate::hash::{Hash, node_hash};

/// Checks that `proof` proves leaf `index` (with hash `leaf_hash`) is in the
/// tree of `tree_size` leaves whose root is `root` (RFC 9162 §2.1.3.2).
///
/// Errors: [`LedgerError::IndexOutOfRange`] when `index >= tree_size` (so any
/// proof against the empty tree fails), [`LedgerError::WrongProofLength`] when
/// the proof does not have exactly the length the index and size require, and
/// [`LedgerError::RootMismatch`] when it leads to another root.
pub fn verify_inclusion(
    leaf_hash: &Hash,
    index: u64,
    tree_size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), LedgerError> {
    let inner = inclusion_shape(index, tree_size, proof.len())?;
    let (inner_part, border_part) = proof.split_at(inner);
    let computed = chain_border_right(chain_inner(*leaf_hash, inner_part, index), border_part);
    expect_root(root, computed)
}

/// [`verify_inclusion`] over hashes as untrusted byte strings: a proof as
/// read from a file or the wire, before any hash is typed.
///
/// The checks run in a fixed order and the first fault is the error: the
/// index against the size ([`LedgerError::IndexOutOfRange`]), the number of
/// proof hashes ([`LedgerError::WrongProofLength`]), then the length of each
/// hash (leaf, proof hashes in order, root: each must be 32 bytes, else
/// [`LedgerError::InvalidHashLength`]), then the root
/// ([`LedgerError::RootMismatch`]). So a proof is refused for what is wrong
/// with its structure even when its hashes are not SHA-256 sized, as
/// transparency-dev/merkle's verifier (over byte strings) does.
pub fn verify_inclusion_bytes(
    leaf_hash: &[u8],
    index: u64,
    tree_size: u64,
    proof: &[&[u8]],
    root: &[u8],
) -> Result<(), LedgerError> {
    inclusion_shape(index, tree_size, proof.len())?;
    let leaf_hash = Hash::from_slice(leaf_hash)?;
    let proof = typed(proof)?;
    let root = Hash::from_slice(root)?;
    verify_inclusion(&leaf_hash, index, tree_size, &proof, &root)
}

/// Checks `index < tree_size` and that the proof has exactly the length they
/// require; returns the length of its inner part.
fn inclusion_shape(index: u64, tree_size: u64, proof_len: usize) -> Result<usize, LedgerError> {
    if index >= tree_size {
        return Err(LedgerError::IndexOutOfRange { index, tree_size });
    }
    let (inner, border) = decompose_inclusion(index, tree_size);
    let want = inner + border;
    if proof_len != want {
        return Err(LedgerError::WrongProofLength { got: proof_len, want });
    }
    Ok(inner)
}

/// Checks that `proof` proves the tree of `size2` leaves with root `root2`
/// extends the tree of `size1` leaves with root `root1` (RFC 9162 §2.1.4.2).
///
/// Conventions (those of transparency-dev/merkle and its conformance vectors):
/// `size1 == size2` requires an empty proof and `root1 == root2`; `size1 == 0`
/// is refused with [`LedgerError::ConsistencyFromEmptyTree`], even against
/// itself, because a consistency proof from the empty tree proves nothing.
///
/// Errors: [`LedgerError::SizesOutOfOrder`] when `size1 > size2`,
/// [`LedgerError::ConsistencyFromEmptyTree`], [`LedgerError::WrongProofLength`],
/// and [`LedgerError::RootMismatch`] naming the root (`root1` or `root2`) that
/// the proof failed to reproduce.
pub fn verify_consistency(
    size1: u64,
    size2: u64,
    proof: &[Hash],
    root1: &Hash,
    root2: &Hash,
) -> Result<(), LedgerError> {
    let Some(ConsistencyShape {
        inner,
        shift,
        old_tree_is_perfect,
    }) = consistency_shape(size1, size2, proof.len())?
    else {
        // Equal sizes: the empty proof (checked above) and the same root.
        return expect_root(root2, *root1);
    };
    let (seed, rest) = if old_tree_is_perfect {
        (*root1, proof)
    } else {
        (proof[0], &proof[1..])
    };
    let (inner_part, border_part) = rest.split_at(inner);
    let mask = (size1 - 1) >> shift;

    let computed1 = chain_border_right(chain_inner_right(seed, inner_part, mask), border_part);
    expect_root(root1, computed1)?;
    let computed2 = chain_border_right(chain_inner(seed, inner_part, mask), border_part);
    expect_root(root2, computed2)
}

/// [`verify_consistency`] over hashes as untrusted byte strings: a proof as
/// read from a file or the wire, before any hash is typed.
///
/// The checks run in a fixed order and the first fault is the error: the
/// sizes ([`LedgerError::SizesOutOfOrder`],
/// [`LedgerError::ConsistencyFromEmptyTree`]), the number of proof hashes
/// ([`LedgerError::WrongProofLength`]), then the length of each hash
/// (`root1`, `root2`, proof hashes in order: each must be 32 bytes, else
/// [`LedgerError::InvalidHashLength`]), then the roots
/// ([`LedgerError::RootMismatch`]).
pub fn verify_consistency_bytes(
    size1: u64,
    size2: u64,
    proof: &[&[u8]],
    root1: &[u8],
    root2: &[u8],
) -> Result<(), LedgerError> {
    consistency_shape(size1, size2, proof.len())?;
    let root1 = Hash::from_slice(root1)?;
    let root2 = Hash::from_slice(root2)?;
    let proof = typed(proof)?;
    verify_consistency(size1, size2, &proof, &root1, &root2)
}

/// Where the hashes of a consistency proof between two different sizes go.
struct ConsistencyShape {
    /// Hashes below the divergence point, above the old tree's last perfect
    /// subtree.
    inner: usize,
    /// Height of that perfect subtree.
    shift: usize,
    /// Whether the old tree is itself perfect (its root is the seed).
    old_tree_is_perfect: bool,
}

/// Checks the sizes and that the proof has exactly the length they require.
/// `None` for equal sizes (whose proof is empty).
fn consistency_shape(
    size1: u64,
    size2: u64,
    proof_len: usize,
) -> Result<Option<ConsistencyShape>, LedgerError> {
    if size1 > size2 {
        return Err(LedgerError::SizesOutOfOrder { size1, size2 });
    }
    if size1 == 0 {
        return Err(LedgerError::ConsistencyFromEmptyTree);
    }
    if size1 == size2 {
        if proof_len != 0 {
            return Err(LedgerError::WrongProofLength {
                got: proof_len,
                want: 0,
            });
        }
        return Ok(None);
    }

    // The proof is the tail of the inclusion proof of leaf `size1 - 1` in the
    // tree of `size2`, starting at the level of the largest perfect subtree
    // that ends at `size1` (`shift` levels up), preceded by that subtree's
    // hash unless the subtree is the whole old tree (then the hash is `root1`).
    let (inner, border) = decompose_inclusion(size1 - 1, size2);
    let shift = size1.trailing_zeros() as usize;
    // `size1 < size2` puts the divergence point above the subtree, so
    // `inner > shift`; saturating keeps hostile input from wrapping regardless.
    let inner = inner.saturating_sub(shift);
    let old_tree_is_perfect = size1.is_power_of_two();
    let start = usize::from(!old_tree_is_perfect);
    let want = start + inner + border;
    if proof_len != want {
        return Err(LedgerError::WrongProofLength { got: proof_len, want });
    }
    Ok(Some(ConsistencyShape {
        inner,
        shift,
        old_tree_is_perfect,
    }))
}

/// Types every proof hash, refusing the first that is not 32 bytes.
fn typed(proof: &[&[u8]]) -> Result<Vec<Hash>, LedgerError> {
    proof.iter().map(|hash| Hash::from_slice(hash)).collect()
}

fn expect_root(expected: &Hash, computed: Hash) -> Result<(), LedgerError> {
    if computed == *expected {
        Ok(())
    } else {
        Err(LedgerError::RootMismatch {
            expected: *expected,
            computed,
        })
    }
}

/// Splits the inclusion proof length for `index` in a tree of `size` leaves
/// (`index < size`) into its inner and border parts.
fn decompose_inclusion(index: u64, size: u64) -> (usize, usize) {
    // Bit length of the XOR: the height at which the paths to `index` and to
    // the last leaf `size - 1` meet. At most 64.
    let inner = (u64::BITS - (index ^ (size - 1)).leading_zeros()) as usize;
    let above = index.checked_shr(inner as u32).unwrap_or(0);
    (inner, above.count_ones() as usize)
}

/// Whether bit `level` of `index` is set (false for levels beyond 63).
fn bit(index: u64, level: usize) -> bool {
    u32::try_from(level)
        .ok()
        .and_then(|l| index.checked_shr(l))
        .is_some_and(|v| v & 1 == 1)
}

/// Hashes up from `seed` at position `index` of its level through `proof`,
/// taking each sibling from the left or the right as the index bits dictate.
fn chain_inner(seed: Hash, proof: &[Hash], index: u64) -> Hash {
    proof.iter().enumerate().fold(seed, |acc, (level, sibling)| {
        if bit(index, level) {
            node_hash(sibling, &acc)
        } else {
            node_hash(&acc, sibling)
        }
    })
}

/// Like [`chain_inner`], but only left siblings count: the result is the
/// hash of the older, smaller tree that ends at the same position.
fn chain_inner_right(seed: Hash, proof: &[Hash], index: u64) -> Hash {
    proof.iter().enumerate().fold(seed, |acc, (level, sibling)| {
        if bit(index, level) {
            node_hash(sibling, &acc)
        } else {
            acc
        }
    })
}

/// Hashes up the right border of the tree, where every sibling is on the left.
fn chain_border_right(seed: Hash, proof: &[Hash]) -> Hash {
    proof.iter().fold(seed, |acc, sibling| node_hash(sibling, &acc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::{EMPTY_ROOT, leaf_hash};

    #[test]
    fn decomposition_matches_known_lengths() {
        // (index, size, inner, border)
        let cases = [
            (0u64, 1u64, 0usize, 0usize),
            (0, 8, 3, 0),
            (5, 8, 2, 1),
            (2, 3, 0, 1),
            (1, 5, 3, 0),
        ];
        for (index, size, inner, border) in cases {
            assert_eq!(
                decompose_inclusion(index, size),
                (inner, border),
                "{index}/{size}"
            );
        }
        // Extreme sizes do not overflow.
        assert_eq!(decompose_inclusion(u64::MAX - 1, u64::MAX), (0, 63));
        assert_eq!(decompose_inclusion(0, u64::MAX), (64, 0));
    }

    #[test]
    fn extreme_inputs_are_refused_without_panicking() {
        let h = leaf_hash(b"x");
        let long = vec![h; 130];
        for (index, size) in [
            (0u64, u64::MAX),
            (u64::MAX - 1, u64::MAX),
            (1 << 63, u64::MAX),
            (u64::MAX, 0),
        ] {
            for len in [0usize, 1, 63, 64, 65, 129, 130] {
                assert!(verify_inclusion(&h, index, size, &long[..len], &h).is_err());
            }
        }
        for (s1, s2) in [
            (1u64, u64::MAX),
            (u64::MAX - 1, u64::MAX),
            (1 << 63, u64::MAX),
            (3, 1 << 63),
        ] {
            for len in [0usize, 1, 63, 64, 65, 129, 130] {
                assert!(verify_consistency(s1, s2, &long[..len], &h, &EMPTY_ROOT).is_err());
            }
        }
    }

    /// The byte verifiers refuse for the first fault in their documented
    /// order, and accept what the typed verifiers accept.
    #[test]
    fn byte_verifiers_refuse_the_first_fault_in_order() {
        let leaves: Vec<Hash> = (0u8..3).map(|i| leaf_hash(&[i])).collect();
        let root3 = crate::root(&leaves);
        let root2 = crate::root(&leaves[..2]);
        let inclusion = crate::inclusion_proof(&leaves, 2, 3).unwrap();
        let consistency = crate::consistency_proof(&leaves, 2, 3).unwrap();
        let bytes = |hashes: &[Hash]| hashes.iter().map(|h| h.as_bytes().to_vec()).collect::<Vec<_>>();
        let (inclusion, consistency) = (bytes(&inclusion), bytes(&consistency));
        fn refs(v: &[Vec<u8>]) -> Vec<&[u8]> {
            v.iter().map(Vec::as_slice).collect()
        }
        let short = [7u8; 31];

        let leaf = leaves[2].as_bytes().as_slice();
        let (r2, r3) = (root2.as_bytes().as_slice(), root3.as_bytes().as_slice());
        assert!(verify_inclusion_bytes(leaf, 2, 3, &refs(&inclusion), r3).is_ok());
        assert!(verify_consistency_bytes(2, 3, &refs(&consistency), r2, r3).is_ok());

        let odd_proof: Vec<&[u8]> = vec![&short];
        let cases: [(&str, Result<(), LedgerError>, &str); 7] = [
            (
                "index first, even with an odd leaf",
                verify_inclusion_bytes(&short, 3, 3, &refs(&inclusion), r3),
                "leaf index 3 is out of range for tree size 3",
            ),
            (
                "proof length before hash lengths",
                verify_inclusion_bytes(&short, 2, 3, &[], r3),
                "proof has 0 hashes, expected 1",
            ),
            (
                "odd leaf",
                verify_inclusion_bytes(&short, 2, 3, &refs(&inclusion), r3),
                "hash is 31 bytes long, expected 32",
            ),
            (
                "odd proof hash",
                verify_inclusion_bytes(leaf, 2, 3, &odd_proof, r3),
                "hash is 31 bytes long, expected 32",
            ),
            (
                "odd root",
                verify_inclusion_bytes(leaf, 2, 3, &refs(&inclusion), &short),
                "hash is 31 bytes long, expected 32",
            ),
            (
                "sizes first, even with odd roots",
                verify_consistency_bytes(3, 2, &[], &short, &short),
                "first tree size 3 is larger than second tree size 2",
            ),
            (
                "odd consistency proof hash",
                verify_consistency_bytes(2, 3, &odd_proof, r2, r3),
                "hash is 31 bytes long, expected 32",
            ),
        ];
        for (name, result, expected) in cases {
            assert_eq!(
                result.map_err(|e| e.to_string()),
                Err(expected.to_owned()),
                "{name}"
            );
        }
        // Well-formed bytes reach the root check.
        assert!(matches!(
            verify_consistency_bytes(2, 3, &refs(&consistency), r3, r3),
            Err(LedgerError::RootMismatch { expected, .. }) if expected == root3
        ));
    }
}
