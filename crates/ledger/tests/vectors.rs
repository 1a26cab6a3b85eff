//! Every inclusion and consistency probe of transparency-dev/merkle's
//! conformance data (`../shared/vectors/merkle/testdata`, read in place).
//!
//! Valid probes must verify, every `wantErr` probe must be refused. Hashes in
//! the files are base64; `proof` may be `null` (an empty proof). Every probe
//! goes to a verifier: `verify_*_bytes` takes the hashes as the files give
//! them, so a probe whose hashes are not 32 bytes (this crate types every
//! hash as SHA-256) is still refused by the verifier, for its first fault in
//! the verifier's documented order (sizes and index, then the number of
//! proof hashes, then each hash's length), and that exact error is asserted.
//! Probes whose hashes are all 32 bytes also go through the typed verifier,
//! which must agree. Exactly one valid probe has placeholder hashes; it is
//! named below and asserted to fail for that reason only.
//!
//! Happy-path probes over the RFC reference tree are also regenerated from
//! the reference leaves and compared with the files byte for byte.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use soma_ledger::{
    Hash, LedgerError, consistency_proof, inclusion_proof, leaf_hash, root, verify_consistency,
    verify_consistency_bytes, verify_inclusion, verify_inclusion_bytes,
};

const TESTDATA: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../../shared/vectors/merkle/testdata"
);

/// The one valid probe whose roots are 12-byte placeholders ("don't care 2"):
/// it checks that equal sizes with equal roots and an empty proof verify,
/// which `consistency/0/happy-path.json` checks with real 32-byte roots.
const UNREPRESENTABLE_VALID: &[&str] =
    &["consistency/additional/sizes-are-equal-one-and-proof-is-empty.json"];

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct InclusionProbe {
    leaf_idx: u64,
    tree_size: u64,
    root: Option<String>,
    leaf_hash: Option<String>,
    proof: Option<Vec<Option<String>>>,
    desc: String,
    want_err: bool,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ConsistencyProbe {
    size1: u64,
    size2: u64,
    root1: Option<String>,
    root2: Option<String>,
    proof: Option<Vec<Option<String>>>,
    desc: String,
    want_err: bool,
}

#[derive(Default, Debug)]
struct Tally {
    valid_verified: usize,
    /// Invalid probes with 32-byte hashes: refused by both verifiers alike.
    invalid_refused: usize,
    /// Invalid probes with a hash of another length: refused by the byte
    /// verifier with the exact error their first fault calls for.
    invalid_with_odd_hashes_refused_exactly: usize,
    valid_unrepresentable: usize,
    regenerated: usize,
}

fn testdata() -> PathBuf {
    let path = PathBuf::from(TESTDATA);
    assert!(
        path.is_dir(),
        "\n\n*** RFC 9162 conformance vectors are missing: {} does not exist. ***\n\
         *** They come from transparency-dev/merkle (see ../shared/vectors/README.md); CI always has them. ***\n",
        path.display()
    );
    path
}

fn json_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            json_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "json") {
            out.push(path);
        }
    }
}

fn probes_in(kind: &str) -> Vec<(String, PathBuf)> {
    let base = testdata();
    let mut files = Vec::new();
    json_files(&base.join(kind), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| (p.strip_prefix(&base).unwrap().display().to_string(), p))
        .collect()
}

/// A hash of a vector file as its bytes, whatever their length. The files
/// are canonical base64; a decoding failure is a broken file, not a probe.
fn bytes(name: &str, text: Option<&str>) -> Vec<u8> {
    STANDARD
        .decode(text.unwrap_or(""))
        .unwrap_or_else(|e| panic!("{name}: not base64: {e}"))
}

fn proof_bytes(name: &str, proof: &Option<Vec<Option<String>>>) -> Vec<Vec<u8>> {
    proof
        .iter()
        .flatten()
        .map(|h| bytes(name, h.as_deref()))
        .collect()
}

/// The typed hashes, when every one is 32 bytes.
fn typed(hashes: &[&[u8]]) -> Option<Vec<Hash>> {
    hashes.iter().map(|h| Hash::from_slice(h).ok()).collect()
}

/// The first hash, in the order given, that is not 32 bytes: the error the
/// byte verifiers give once sizes and proof length pass.
fn first_odd_length(hashes: &[&[u8]]) -> Option<String> {
    hashes
        .iter()
        .find(|h| h.len() != Hash::LEN)
        .map(|h| format!("hash is {} bytes long, expected 32", h.len()))
}

/// The exact refusal of an invalid inclusion probe with a hash that is not
/// 32 bytes, from what the probe is: an index outside the tree; one empty
/// element added before or after an otherwise right proof ("garbage"); else
/// the first odd hash among leaf, proof, root.
fn expected_inclusion_refusal(probe: &InclusionProbe, hashes: &[&[u8]], proof_len: usize) -> String {
    if probe.leaf_idx >= probe.tree_size {
        return format!(
            "leaf index {} is out of range for tree size {}",
            probe.leaf_idx, probe.tree_size
        );
    }
    if probe.desc.ends_with("garbage") {
        return format!("proof has {proof_len} hashes, expected {}", proof_len - 1);
    }
    first_odd_length(hashes).expect("a probe with an odd hash")
}

/// The exact refusal of an invalid consistency probe with a hash that is not
/// 32 bytes: sizes out of order; a proof from the empty tree; one empty
/// element added to a right proof; the one probe whose proof is missing
/// (sizes 1 to 2 need one hash); else the first odd hash among root1, root2,
/// proof.
fn expected_consistency_refusal(probe: &ConsistencyProbe, hashes: &[&[u8]], proof_len: usize) -> String {
    if probe.size1 > probe.size2 {
        return format!(
            "first tree size {} is larger than second tree size {}",
            probe.size1, probe.size2
        );
    }
    if probe.size1 == 0 {
        return "a consistency proof from the empty tree is meaningless".to_owned();
    }
    if probe.desc.ends_with("garbage") {
        return format!("proof has {proof_len} hashes, expected {}", proof_len - 1);
    }
    if probe.desc == "sizes do not watch and proof is empty" {
        assert_eq!((probe.size1, probe.size2, proof_len), (1, 2, 0));
        return "proof has 0 hashes, expected 1".to_owned();
    }
    first_odd_length(hashes).expect("a probe with an odd hash")
}

/// The reference leaves of the README and transparency-dev's tests.
fn reference_leaves() -> Vec<Hash> {
    let data: [&[u8]; 8] = [
        &[],
        &[0x00],
        &[0x10],
        &[0x20, 0x21],
        &[0x30, 0x31],
        &[0x40, 0x41, 0x42, 0x43],
        &[0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57],
        &[
            0x60, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x6b, 0x6c, 0x6d, 0x6e, 0x6f,
        ],
    ];
    data.iter().map(|d| leaf_hash(d)).collect()
}

#[test]
fn every_inclusion_probe() {
    let reference = reference_leaves();
    let mut tally = Tally::default();
    let probes = probes_in("inclusion");
    for (name, path) in &probes {
        let probe: InclusionProbe = serde_json::from_str(&fs::read_to_string(path).unwrap())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let leaf_bytes = bytes(name, probe.leaf_hash.as_deref());
        let proof_owned = proof_bytes(name, &probe.proof);
        let proof_slices: Vec<&[u8]> = proof_owned.iter().map(Vec::as_slice).collect();
        let root_bytes = bytes(name, probe.root.as_deref());
        let by_bytes = verify_inclusion_bytes(
            &leaf_bytes,
            probe.leaf_idx,
            probe.tree_size,
            &proof_slices,
            &root_bytes,
        );
        let mut order: Vec<&[u8]> = vec![&leaf_bytes];
        order.extend(&proof_slices);
        order.push(&root_bytes);
        match (typed(&order), probe.want_err) {
            (Some(hashes), want_err) => {
                let (leaf, proof, tree_root) =
                    (hashes[0], &hashes[1..hashes.len() - 1], hashes[hashes.len() - 1]);
                let result = verify_inclusion(&leaf, probe.leaf_idx, probe.tree_size, proof, &tree_root);
                assert_eq!(
                    by_bytes.as_ref().map_err(ToString::to_string),
                    result.as_ref().map_err(ToString::to_string),
                    "{name}: the byte and typed verifiers disagree"
                );
                if want_err {
                    assert!(result.is_err(), "{name} ({}): invalid probe accepted", probe.desc);
                    tally.invalid_refused += 1;
                    continue;
                }
                assert!(
                    result.is_ok(),
                    "{name} ({}): valid probe refused: {result:?}",
                    probe.desc
                );
                tally.valid_verified += 1;
                // Regenerate proofs over the reference tree when this is one.
                if let Ok(size) = usize::try_from(probe.tree_size)
                    && size <= reference.len()
                    && root(&reference[..size]) == tree_root
                    && reference.get(probe.leaf_idx as usize) == Some(&leaf)
                {
                    let generated = inclusion_proof(&reference, probe.leaf_idx, probe.tree_size).unwrap();
                    assert_eq!(generated, proof, "{name}: generated proof differs");
                    tally.regenerated += 1;
                }
            }
            (None, true) => {
                let expected = expected_inclusion_refusal(&probe, &order, proof_slices.len());
                let refusal = by_bytes
                    .err()
                    .unwrap_or_else(|| panic!("{name} ({}): invalid probe accepted", probe.desc));
                assert_eq!(refusal.to_string(), expected, "{name} ({})", probe.desc);
                tally.invalid_with_odd_hashes_refused_exactly += 1;
            }
            (None, false) => panic!(
                "{name} ({}): valid probe with a hash that is not 32 bytes",
                probe.desc
            ),
        }
    }
    println!("inclusion probes: {} files, {tally:?}", probes.len());
    assert!(tally.valid_verified > 0, "no valid inclusion probe ran");
    assert!(tally.invalid_refused > 0, "no invalid inclusion probe ran");
    assert!(
        tally.invalid_with_odd_hashes_refused_exactly > 0,
        "no inclusion probe with an odd hash ran"
    );
    assert!(tally.regenerated > 0, "no inclusion proof was regenerated");
    assert_eq!(tally.valid_unrepresentable, 0);
    assert_eq!(
        tally.valid_verified + tally.invalid_refused + tally.invalid_with_odd_hashes_refused_exactly,
        probes.len()
    );
}

#[test]
fn every_consistency_probe() {
    let reference = reference_leaves();
    let mut tally = Tally::default();
    let probes = probes_in("consistency");
    for (name, path) in &probes {
        let probe: ConsistencyProbe = serde_json::from_str(&fs::read_to_string(path).unwrap())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let proof_owned = proof_bytes(name, &probe.proof);
        let proof_slices: Vec<&[u8]> = proof_owned.iter().map(Vec::as_slice).collect();
        let root1_bytes = bytes(name, probe.root1.as_deref());
        let root2_bytes = bytes(name, probe.root2.as_deref());
        let by_bytes = verify_consistency_bytes(
            probe.size1,
            probe.size2,
            &proof_slices,
            &root1_bytes,
            &root2_bytes,
        );
        let mut order: Vec<&[u8]> = vec![&root1_bytes, &root2_bytes];
        order.extend(&proof_slices);
        match (typed(&order), probe.want_err) {
            (Some(hashes), want_err) => {
                let (root1, root2, proof) = (hashes[0], hashes[1], &hashes[2..]);
                let result = verify_consistency(probe.size1, probe.size2, proof, &root1, &root2);
                assert_eq!(
                    by_bytes.as_ref().map_err(ToString::to_string),
                    result.as_ref().map_err(ToString::to_string),
                    "{name}: the byte and typed verifiers disagree"
                );
                if want_err {
                    assert!(result.is_err(), "{name} ({}): invalid probe accepted", probe.desc);
                    tally.invalid_refused += 1;
                    continue;
                }
                assert!(
                    result.is_ok(),
                    "{name} ({}): valid probe refused: {result:?}",
                    probe.desc
                );
                tally.valid_verified += 1;
                if let (Ok(s1), Ok(s2)) = (usize::try_from(probe.size1), usize::try_from(probe.size2))
                    && s2 <= reference.len()
                    && root(&reference[..s1]) == root1
                    && root(&reference[..s2]) == root2
                {
                    let generated = consistency_proof(&reference, probe.size1, probe.size2).unwrap();
                    assert_eq!(generated, proof, "{name}: generated proof differs");
                    tally.regenerated += 1;
                }
            }
            (None, true) => {
                let expected = expected_consistency_refusal(&probe, &order, proof_slices.len());
                let refusal = by_bytes
                    .err()
                    .unwrap_or_else(|| panic!("{name} ({}): invalid probe accepted", probe.desc));
                assert_eq!(refusal.to_string(), expected, "{name} ({})", probe.desc);
                tally.invalid_with_odd_hashes_refused_exactly += 1;
            }
            (None, false) => {
                assert!(
                    UNREPRESENTABLE_VALID.contains(&name.as_str()),
                    "{name} ({}): valid probe with a hash that is not 32 bytes: {by_bytes:?}",
                    probe.desc
                );
                assert!(
                    matches!(by_bytes, Err(LedgerError::InvalidHashLength { len: 12 })),
                    "{name}: {by_bytes:?}"
                );
                tally.valid_unrepresentable += 1;
            }
        }
    }
    println!("consistency probes: {} files, {tally:?}", probes.len());
    assert!(tally.valid_verified > 0, "no valid consistency probe ran");
    assert!(tally.invalid_refused > 0, "no invalid consistency probe ran");
    assert!(
        tally.invalid_with_odd_hashes_refused_exactly > 0,
        "no consistency probe with an odd hash ran"
    );
    assert!(tally.regenerated > 0, "no consistency proof was regenerated");
    assert_eq!(tally.valid_unrepresentable, UNREPRESENTABLE_VALID.len());
    assert_eq!(
        tally.valid_verified
            + tally.invalid_refused
            + tally.invalid_with_odd_hashes_refused_exactly
            + tally.valid_unrepresentable,
        probes.len()
    );
}
