//! The RFC 6962 / 9162 reference tree (typed here from ../shared/vectors/README.md
//! and transparency-dev/merkle's tests), proof generation checked against the
//! verifiers for every size and index, the compact tree against `root`, and
//! tampered proofs refused with their exact errors.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use soma_ledger::{
    CompactTree, EMPTY_ROOT, Hash, LedgerError, consistency_proof, inclusion_proof, leaf_hash, node_hash,
    root, verify_consistency, verify_inclusion,
};

/// The eight reference leaves, as hex of the raw entries.
const LEAVES_HEX: [&str; 8] = [
    "",
    "00",
    "10",
    "2021",
    "3031",
    "40414243",
    "5051525354555657",
    "606162636465666768696a6b6c6d6e6f",
];

/// Roots of the first 1..=8 reference leaves (transparency-dev/merkle, proof/verify_test.go).
const ROOTS_HEX: [&str; 8] = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
];

fn hex_bytes(text: &str) -> Vec<u8> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap())
        .collect()
}

fn h(text: &str) -> Hash {
    Hash::from_hex(text).unwrap()
}

fn reference_leaves() -> Vec<Hash> {
    LEAVES_HEX.iter().map(|hex| leaf_hash(&hex_bytes(hex))).collect()
}

/// Deterministic pseudo-random leaf hashes (xorshift64*, fixed seed).
fn pseudo_random_leaves(n: usize) -> Vec<Hash> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..n)
        .map(|_| {
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let value = state.wrapping_mul(0x2545_f491_4f6c_dd1d);
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

#[test]
fn reference_roots_match_typed_values() {
    assert_eq!(root(&[]), EMPTY_ROOT);
    assert_eq!(
        EMPTY_ROOT,
        h("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
    );
    let leaves = reference_leaves();
    assert_eq!(
        root(&leaves),
        h("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")
    );
    for (size, want) in (1..=8).zip(ROOTS_HEX) {
        assert_eq!(root(&leaves[..size]), h(want), "root of the first {size} leaves");
    }
    // The RFC's split by hand for three leaves: k = 2.
    let three = node_hash(&node_hash(&leaves[0], &leaves[1]), &leaves[2]);
    assert_eq!(three, h(ROOTS_HEX[2]));
}

#[test]
fn known_proofs_are_generated_byte_for_byte() {
    // Inclusion and consistency proofs of transparency-dev/merkle proof/verify_test.go.
    let leaves = reference_leaves();
    let inclusion: [(u64, u64, &[&str]); 4] = [
        (
            0,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            5,
            8,
            &[
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            3,
            &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
        ),
        (
            1,
            5,
            &[
                "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
    ];
    for (index, size, want) in inclusion {
        let want: Vec<Hash> = want.iter().map(|x| h(x)).collect();
        assert_eq!(
            inclusion_proof(&leaves, index, size).unwrap(),
            want,
            "inclusion {index}/{size}"
        );
    }
    let consistency: [(u64, u64, &[&str]); 5] = [
        (1, 1, &[]),
        (
            1,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            6,
            8,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
        (
            2,
            5,
            &[
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
        (
            6,
            7,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
    ];
    for (size1, size2, want) in consistency {
        let want: Vec<Hash> = want.iter().map(|x| h(x)).collect();
        assert_eq!(
            consistency_proof(&leaves, size1, size2).unwrap(),
            want,
            "consistency {size1}->{size2}"
        );
    }
}

#[test]
fn every_generated_inclusion_proof_verifies_in_the_reference_tree() {
    let leaves = reference_leaves();
    let mut checked = 0;
    for size in 1..=8u64 {
        let tree_root = root(&leaves[..size as usize]);
        for index in 0..size {
            let proof = inclusion_proof(&leaves, index, size).unwrap();
            verify_inclusion(&leaves[index as usize], index, size, &proof, &tree_root).unwrap();
            checked += 1;
        }
    }
    assert_eq!(checked, 36);
}

#[test]
fn every_generated_consistency_proof_verifies_in_the_reference_tree() {
    let leaves = reference_leaves();
    let mut checked = 0;
    for size2 in 1..=8u64 {
        for size1 in 1..=size2 {
            let proof = consistency_proof(&leaves, size1, size2).unwrap();
            let root1 = root(&leaves[..size1 as usize]);
            let root2 = root(&leaves[..size2 as usize]);
            verify_consistency(size1, size2, &proof, &root1, &root2).unwrap();
            checked += 1;
        }
    }
    assert_eq!(checked, 36);
}

#[test]
fn all_proofs_verify_in_pseudo_random_trees_up_to_70() {
    let leaves = pseudo_random_leaves(70);
    let roots: Vec<Hash> = (0..=70).map(|n| root(&leaves[..n])).collect();
    for size in 1..=70u64 {
        for index in 0..size {
            let proof = inclusion_proof(&leaves, index, size).unwrap();
            verify_inclusion(
                &leaves[index as usize],
                index,
                size,
                &proof,
                &roots[size as usize],
            )
            .unwrap();
        }
        for size1 in 1..=size {
            let proof = consistency_proof(&leaves, size1, size).unwrap();
            verify_consistency(size1, size, &proof, &roots[size1 as usize], &roots[size as usize]).unwrap();
        }
    }
}

#[test]
fn compact_tree_matches_root_for_sizes_0_to_70() {
    let leaves = pseudo_random_leaves(70);
    let mut tree = CompactTree::new();
    assert_eq!(tree.root(), EMPTY_ROOT);
    for n in 0..=70usize {
        assert_eq!(tree.size(), n as u64);
        assert_eq!(tree.root(), root(&leaves[..n]), "size {n}");
        assert_eq!(
            CompactTree::from_leaves(&leaves[..n]).unwrap(),
            tree,
            "rebuilt at size {n}"
        );
        if n < 70 {
            assert_eq!(tree.append(leaves[n]).unwrap(), n as u64);
        }
    }
    let reference = reference_leaves();
    assert_eq!(
        CompactTree::from_leaves(&reference).unwrap().root(),
        h(ROOTS_HEX[7])
    );
}

#[test]
fn tampered_inclusion_proofs_are_refused() {
    let leaves = pseudo_random_leaves(21);
    for size in 1..=21u64 {
        let tree_root = root(&leaves[..size as usize]);
        for index in 0..size {
            let leaf = leaves[index as usize];
            let proof = inclusion_proof(&leaves, index, size).unwrap();

            // A flipped bit anywhere in any element (three positions each).
            for i in 0..proof.len() {
                for bit in [0usize, 131, 255] {
                    let mut bad = proof.clone();
                    bad[i] = flip_bit(&bad[i], bit);
                    let err = verify_inclusion(&leaf, index, size, &bad, &tree_root).unwrap_err();
                    assert!(
                        matches!(err, LedgerError::RootMismatch { .. }),
                        "{index}/{size} elem {i}: {err}"
                    );
                }
            }
            // Wrong leaf, wrong root.
            let err = verify_inclusion(&flip_bit(&leaf, 7), index, size, &proof, &tree_root).unwrap_err();
            assert!(matches!(err, LedgerError::RootMismatch { .. }));
            let err = verify_inclusion(&leaf, index, size, &proof, &flip_bit(&tree_root, 7)).unwrap_err();
            assert!(matches!(err, LedgerError::RootMismatch { .. }));
            // Wrong index: every other index of the same tree.
            for other in (0..size).filter(|&o| o != index) {
                assert!(
                    verify_inclusion(&leaf, other, size, &proof, &tree_root).is_err(),
                    "{other}/{size}"
                );
            }
            // Index at or beyond the size.
            let err = verify_inclusion(&leaf, size, size, &proof, &tree_root).unwrap_err();
            assert!(matches!(err, LedgerError::IndexOutOfRange { .. }));
            // Wrong tree size: doubled and halved (as transparency-dev probes).
            // Not every other size: a proof does not bind the size beyond its
            // shape, e.g. leaf 0's proof in a tree of 3 also has the shape of
            // one in a tree of 4.
            for other in [size * 2, size / 2] {
                assert!(
                    verify_inclusion(&leaf, index, other, &proof, &tree_root).is_err(),
                    "{index}/{other}"
                );
            }
            // Removed or added elements.
            let mut longer = proof.clone();
            longer.push(tree_root);
            let err = verify_inclusion(&leaf, index, size, &longer, &tree_root).unwrap_err();
            assert!(matches!(err, LedgerError::WrongProofLength { got, want } if got == want + 1));
            if !proof.is_empty() {
                let err = verify_inclusion(&leaf, index, size, &proof[1..], &tree_root).unwrap_err();
                assert!(matches!(err, LedgerError::WrongProofLength { got, want } if got + 1 == want));
            }
        }
    }
}

#[test]
fn tampered_consistency_proofs_are_refused() {
    let leaves = pseudo_random_leaves(21);
    let roots: Vec<Hash> = (0..=21).map(|n| root(&leaves[..n])).collect();
    for size2 in 1..=21u64 {
        for size1 in 1..size2 {
            let (root1, root2) = (roots[size1 as usize], roots[size2 as usize]);
            let proof = consistency_proof(&leaves, size1, size2).unwrap();
            assert!(!proof.is_empty());
            for i in 0..proof.len() {
                for bit in [0usize, 100, 255] {
                    let mut bad = proof.clone();
                    bad[i] = flip_bit(&bad[i], bit);
                    let err = verify_consistency(size1, size2, &bad, &root1, &root2).unwrap_err();
                    assert!(
                        matches!(err, LedgerError::RootMismatch { .. }),
                        "{size1}->{size2} elem {i}"
                    );
                }
            }
            let err = verify_consistency(size1, size2, &proof, &root2, &root1).unwrap_err();
            assert!(
                matches!(err, LedgerError::RootMismatch { .. }),
                "swapped roots {size1}->{size2}"
            );
            let err = verify_consistency(size1, size2, &proof, &flip_bit(&root1, 3), &root2).unwrap_err();
            assert!(matches!(err, LedgerError::RootMismatch { expected, .. } if expected != root1));
            let err = verify_consistency(size1, size2, &proof, &root1, &flip_bit(&root2, 3)).unwrap_err();
            assert!(matches!(err, LedgerError::RootMismatch { .. }));
            // Wrong sizes, as transparency-dev probes them.
            for other in [size1 - 1, size1 + 1, size1 ^ 2] {
                assert!(
                    verify_consistency(other, size2, &proof, &root1, &root2).is_err(),
                    "{other}->{size2}"
                );
            }
            for other in [size2 * 2, size2 / 2] {
                assert!(
                    verify_consistency(size1, other, &proof, &root1, &root2).is_err(),
                    "{size1}->{other}"
                );
            }
            let err = verify_consistency(size1, size2, &[], &root1, &root2).unwrap_err();
            assert!(matches!(err, LedgerError::WrongProofLength { got: 0, .. }));
            let mut longer = proof.clone();
            longer.insert(0, root1);
            let err = verify_consistency(size1, size2, &longer, &root1, &root2).unwrap_err();
            assert!(matches!(err, LedgerError::WrongProofLength { .. }));
        }
    }
}

#[test]
fn consistency_edge_cases_have_exact_errors() {
    let leaves = reference_leaves();
    let r1 = root(&leaves[..1]);
    let r2 = root(&leaves[..2]);
    struct Case {
        name: &'static str,
        size1: u64,
        size2: u64,
        proof: Vec<Hash>,
        root1: Hash,
        root2: Hash,
        expected: fn(&Result<(), LedgerError>) -> bool,
    }
    let cases = [
        Case {
            name: "equal sizes, equal roots, empty proof",
            size1: 1,
            size2: 1,
            proof: vec![],
            root1: r1,
            root2: r1,
            expected: |r| r.is_ok(),
        },
        Case {
            name: "equal sizes, different roots",
            size1: 1,
            size2: 1,
            proof: vec![],
            root1: r1,
            root2: r2,
            expected: |r| matches!(r, Err(LedgerError::RootMismatch { .. })),
        },
        Case {
            name: "equal sizes, non-empty proof",
            size1: 2,
            size2: 2,
            proof: vec![r1],
            root1: r2,
            root2: r2,
            expected: |r| matches!(r, Err(LedgerError::WrongProofLength { got: 1, want: 0 })),
        },
        Case {
            name: "size1 zero against itself",
            size1: 0,
            size2: 0,
            proof: vec![],
            root1: EMPTY_ROOT,
            root2: EMPTY_ROOT,
            expected: |r| matches!(r, Err(LedgerError::ConsistencyFromEmptyTree)),
        },
        Case {
            name: "size1 zero against a larger tree",
            size1: 0,
            size2: 1,
            proof: vec![],
            root1: EMPTY_ROOT,
            root2: r1,
            expected: |r| matches!(r, Err(LedgerError::ConsistencyFromEmptyTree)),
        },
        Case {
            name: "size1 greater than size2",
            size1: 2,
            size2: 1,
            proof: vec![],
            root1: r2,
            root2: r1,
            expected: |r| matches!(r, Err(LedgerError::SizesOutOfOrder { size1: 2, size2: 1 })),
        },
        Case {
            name: "huge sizes, short proof",
            size1: u64::MAX - 1,
            size2: u64::MAX,
            proof: vec![r1],
            root1: r1,
            root2: r2,
            expected: |r| matches!(r, Err(LedgerError::WrongProofLength { got: 1, .. })),
        },
    ];
    for case in cases {
        let result = verify_consistency(case.size1, case.size2, &case.proof, &case.root1, &case.root2);
        assert!((case.expected)(&result), "{}: got {result:?}", case.name);
    }
}
