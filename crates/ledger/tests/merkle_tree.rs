//! `MerkleTree` against the slice functions it indexes: for every tree size
//! 1..=130, every leaf index and every pair of sizes, its roots and proofs are
//! byte-identical to `root`, `inclusion_proof` and `consistency_proof` over
//! the same leaves and verify with `verify_inclusion` / `verify_consistency`;
//! a pseudo-random 10,000-leaf tree is sampled the same way; refused
//! arguments give the same exact errors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use soma_ledger::{
    CompactTree, EMPTY_ROOT, Hash, LedgerError, MerkleTree, consistency_proof, inclusion_proof, leaf_hash,
    root, verify_consistency, verify_inclusion,
};

/// The largest tree checked exhaustively.
const EXHAUSTIVE: u64 = 130;

/// xorshift64*, fixed seed: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform enough in `[low, high]` for sampling.
    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }
}

/// Leaf hashes of pseudo-random entries of pseudo-random lengths.
fn pseudo_random_leaves(n: u64, seed: u64) -> Vec<Hash> {
    let mut rng = Rng(seed);
    (0..n)
        .map(|_| {
            let value = rng.next();
            let len = (value % 40) as usize;
            let data: Vec<u8> = value.to_le_bytes().iter().copied().cycle().take(len).collect();
            leaf_hash(&data)
        })
        .collect()
}

fn flip_bit(hash: &Hash, bit: usize) -> Hash {
    let mut bytes = *hash.as_bytes();
    bytes[bit / 8] ^= 1 << (bit % 8);
    Hash::from_bytes(bytes)
}

/// The root of every prefix of `leaves` (`roots[s]` for the first `s`),
/// from the independently built compact tree.
fn prefix_roots(leaves: &[Hash]) -> Vec<Hash> {
    let mut compact = CompactTree::new();
    let mut roots = vec![compact.root()];
    for leaf in leaves {
        compact.append(*leaf).unwrap();
        roots.push(compact.root());
    }
    roots
}

/// Inclusion of `index` in the first `size` leaves: same proof as the slice
/// function, and it verifies against the root of that size (and fails for a
/// tampered leaf, so the check itself can fail).
fn check_inclusion(tree: &MerkleTree, leaves: &[Hash], roots: &[Hash], index: u64, size: u64) {
    let proof = tree.inclusion_proof(index, size).unwrap();
    let expected = inclusion_proof(leaves, index, size).unwrap();
    assert_eq!(proof, expected, "inclusion proof of {index} in {size}");
    let tree_root = roots[size as usize];
    verify_inclusion(&leaves[index as usize], index, size, &proof, &tree_root)
        .unwrap_or_else(|e| panic!("inclusion of {index} in {size} does not verify: {e}"));
    let err = verify_inclusion(
        &flip_bit(&leaves[index as usize], 7),
        index,
        size,
        &proof,
        &tree_root,
    )
    .unwrap_err();
    assert!(
        matches!(err, LedgerError::RootMismatch { .. }),
        "{index}/{size}: {err}"
    );
}

/// Consistency from `size1` to `size2`: same proof as the slice function,
/// verifying against the roots of those sizes.
fn check_consistency(tree: &MerkleTree, leaves: &[Hash], roots: &[Hash], size1: u64, size2: u64) {
    let proof = tree.consistency_proof(size1, size2).unwrap();
    let expected = consistency_proof(leaves, size1, size2).unwrap();
    assert_eq!(proof, expected, "consistency proof {size1} -> {size2}");
    let (root1, root2) = (roots[size1 as usize], roots[size2 as usize]);
    verify_consistency(size1, size2, &proof, &root1, &root2)
        .unwrap_or_else(|e| panic!("consistency {size1} -> {size2} does not verify: {e}"));
    if size1 < size2 {
        let err = verify_consistency(size1, size2, &proof, &root1, &flip_bit(&root2, 0)).unwrap_err();
        assert!(
            matches!(err, LedgerError::RootMismatch { .. }),
            "{size1} -> {size2}: {err}"
        );
    }
}

#[test]
fn every_size_index_and_pair_up_to_130_matches_the_slice_functions() {
    let leaves = pseudo_random_leaves(EXHAUSTIVE, 0x9e37_79b9_7f4a_7c15);
    let roots = prefix_roots(&leaves);
    let mut tree = MerkleTree::new();
    for n in 1..=EXHAUSTIVE {
        assert_eq!(tree.push(leaves[n as usize - 1]), n - 1);
        assert_eq!(tree.size(), n);
        assert_eq!(tree.leaves(), &leaves[..n as usize]);
        assert_eq!(tree.root(), root(&leaves[..n as usize]), "root of {n}");
        assert_eq!(tree.root(), roots[n as usize], "compact root of {n}");
    }
    // The full tree, at every size it has had.
    assert_eq!(tree.root_at(0).unwrap(), EMPTY_ROOT);
    let mut inclusion_checked = 0u64;
    for size in 1..=EXHAUSTIVE {
        assert_eq!(
            tree.root_at(size).unwrap(),
            root(&leaves[..size as usize]),
            "root_at {size}"
        );
        for index in 0..size {
            check_inclusion(&tree, &leaves, &roots, index, size);
            inclusion_checked += 1;
        }
    }
    let mut consistency_checked = 0u64;
    for size2 in 1..=EXHAUSTIVE {
        for size1 in 1..=size2 {
            check_consistency(&tree, &leaves, &roots, size1, size2);
            consistency_checked += 1;
        }
    }
    assert_eq!(inclusion_checked, EXHAUSTIVE * (EXHAUSTIVE + 1) / 2);
    assert_eq!(consistency_checked, EXHAUSTIVE * (EXHAUSTIVE + 1) / 2);
}

#[test]
fn a_tree_of_every_size_up_to_130_answers_like_the_larger_tree() {
    // A tree that stopped growing at `n` has no stored node for its right
    // edge and composes it; the 130-leaf tree (checked against the slice
    // functions above) has more nodes stored. Both must give the same bytes.
    let leaves = pseudo_random_leaves(EXHAUSTIVE, 0x9e37_79b9_7f4a_7c15);
    let full = MerkleTree::from_leaves(&leaves);
    let mut grown = MerkleTree::new();
    for n in 1..=EXHAUSTIVE {
        grown.push(leaves[n as usize - 1]);
        let built = MerkleTree::from_leaves(&leaves[..n as usize]);
        assert_eq!(built, grown, "from_leaves and push agree at {n}");
        assert_eq!(built.root(), full.root_at(n).unwrap(), "root of {n}");
        for index in 0..n {
            assert_eq!(
                built.inclusion_proof(index, n).unwrap(),
                full.inclusion_proof(index, n).unwrap(),
                "inclusion of {index} in {n}"
            );
        }
        for size1 in 1..=n {
            assert_eq!(
                built.consistency_proof(size1, n).unwrap(),
                full.consistency_proof(size1, n).unwrap(),
                "consistency {size1} -> {n}"
            );
        }
    }
}

#[test]
fn sampled_10000_leaf_tree_matches_the_slice_functions() {
    const N: u64 = 10_000;
    let leaves = pseudo_random_leaves(N, 0x0123_4567_89ab_cdef);
    let roots = prefix_roots(&leaves);
    let tree: MerkleTree = leaves.iter().copied().collect();
    assert_eq!(tree.size(), N);
    assert_eq!(tree.stored_hashes(), 2 * N - u64::from(N.count_ones()));

    // Every root against the independently built compact tree, and the last against `root`.
    for size in 0..=N {
        assert_eq!(
            tree.root_at(size).unwrap(),
            roots[size as usize],
            "root_at {size}"
        );
    }
    assert_eq!(tree.root(), root(&leaves));

    // Edges of the tree and of perfect subtrees, then pseudo-random picks.
    let mut inclusion = vec![
        (0, N),
        (N - 1, N),
        (0, 1),
        (8191, 8192),
        (8192, 8193),
        (4095, N),
        (4096, N),
    ];
    let mut consistency = vec![
        (1, N),
        (N - 1, N),
        (N, N),
        (8192, N),
        (8191, 8193),
        (1, 2),
        (4097, 8191),
    ];
    let mut rng = Rng(42);
    for _ in 0..40 {
        let size = rng.between(1, N);
        inclusion.push((rng.between(0, N - 1), N));
        inclusion.push((rng.between(0, size - 1), size));
        let size1 = rng.between(1, N);
        consistency.push((size1, rng.between(size1, N)));
    }
    for (index, size) in inclusion {
        check_inclusion(&tree, &leaves, &roots, index, size);
    }
    for (size1, size2) in consistency {
        check_consistency(&tree, &leaves, &roots, size1, size2);
    }
}

#[test]
fn refused_arguments_give_the_slice_functions_exact_errors() {
    let leaves = pseudo_random_leaves(5, 3);
    let tree = MerkleTree::from_leaves(&leaves);
    let empty = MerkleTree::new();

    struct Case {
        name: &'static str,
        result: Result<Vec<Hash>, LedgerError>,
        slice: Result<Vec<Hash>, LedgerError>,
        expected: fn(&LedgerError) -> bool,
    }
    let cases = [
        Case {
            name: "index equal to tree size",
            result: tree.inclusion_proof(4, 4),
            slice: inclusion_proof(&leaves, 4, 4),
            expected: |e| {
                matches!(
                    e,
                    LedgerError::IndexOutOfRange {
                        index: 4,
                        tree_size: 4
                    }
                )
            },
        },
        Case {
            name: "inclusion in the empty tree",
            result: tree.inclusion_proof(0, 0),
            slice: inclusion_proof(&leaves, 0, 0),
            expected: |e| {
                matches!(
                    e,
                    LedgerError::IndexOutOfRange {
                        index: 0,
                        tree_size: 0
                    }
                )
            },
        },
        Case {
            name: "tree size beyond the tree",
            result: tree.inclusion_proof(0, 6),
            slice: inclusion_proof(&leaves, 0, 6),
            expected: |e| {
                matches!(
                    e,
                    LedgerError::TreeSizeExceedsLeaves {
                        tree_size: 6,
                        available: 5
                    }
                )
            },
        },
        Case {
            name: "size checked before index",
            result: tree.inclusion_proof(u64::MAX, u64::MAX),
            slice: inclusion_proof(&leaves, u64::MAX, u64::MAX),
            expected: |e| {
                matches!(
                    e,
                    LedgerError::TreeSizeExceedsLeaves {
                        tree_size: u64::MAX,
                        available: 5
                    }
                )
            },
        },
        Case {
            name: "inclusion proof from an empty tree",
            result: empty.inclusion_proof(0, 1),
            slice: inclusion_proof(&[], 0, 1),
            expected: |e| {
                matches!(
                    e,
                    LedgerError::TreeSizeExceedsLeaves {
                        tree_size: 1,
                        available: 0
                    }
                )
            },
        },
        Case {
            name: "sizes out of order",
            result: tree.consistency_proof(3, 2),
            slice: consistency_proof(&leaves, 3, 2),
            expected: |e| matches!(e, LedgerError::SizesOutOfOrder { size1: 3, size2: 2 }),
        },
        Case {
            name: "consistency from the empty tree",
            result: tree.consistency_proof(0, 2),
            slice: consistency_proof(&leaves, 0, 2),
            expected: |e| matches!(e, LedgerError::ConsistencyFromEmptyTree),
        },
        Case {
            name: "consistency of the empty tree with itself",
            result: tree.consistency_proof(0, 0),
            slice: consistency_proof(&leaves, 0, 0),
            expected: |e| matches!(e, LedgerError::ConsistencyFromEmptyTree),
        },
        Case {
            name: "second size beyond the tree",
            result: tree.consistency_proof(1, 6),
            slice: consistency_proof(&leaves, 1, 6),
            expected: |e| {
                matches!(
                    e,
                    LedgerError::TreeSizeExceedsLeaves {
                        tree_size: 6,
                        available: 5
                    }
                )
            },
        },
        Case {
            name: "second size beyond the tree and out of order",
            result: tree.consistency_proof(u64::MAX, 7),
            slice: consistency_proof(&leaves, u64::MAX, 7),
            expected: |e| {
                matches!(
                    e,
                    LedgerError::TreeSizeExceedsLeaves {
                        tree_size: 7,
                        available: 5
                    }
                )
            },
        },
    ];
    for case in cases {
        let err = case.result.unwrap_err();
        assert!((case.expected)(&err), "{}: got {err:?}", case.name);
        let slice_err = case.slice.unwrap_err();
        assert_eq!(format!("{err:?}"), format!("{slice_err:?}"), "{}", case.name);
    }

    let err = tree.root_at(6).unwrap_err();
    assert!(matches!(
        err,
        LedgerError::TreeSizeExceedsLeaves {
            tree_size: 6,
            available: 5
        }
    ));
    let err = empty.root_at(1).unwrap_err();
    assert!(matches!(
        err,
        LedgerError::TreeSizeExceedsLeaves {
            tree_size: 1,
            available: 0
        }
    ));
    assert!(tree.consistency_proof(5, 5).unwrap().is_empty());
    assert!(tree.inclusion_proof(0, 1).unwrap().is_empty());
}
