//! Every inclusion and consistency probe of transparency-dev/merkle's
//! conformance data (`../shared/vectors/merkle/testdata`, read in place).
//!
//! Valid probes must verify, every `wantErr` probe must be refused. Hashes in
//! the files are base64; `proof` may be `null` (an empty proof). Probes whose
//! hashes are not 32 bytes are refused at the type boundary by
//! `Hash::from_slice` before any verifier runs: this crate types every hash
//! as SHA-256. Exactly one valid probe is affected; it is named below and
//! asserted to fail for that reason only.
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
    verify_inclusion,
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
    invalid_refused_by_verifier: usize,
    invalid_refused_at_decoding: usize,
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

fn decode_hash(text: Option<&str>) -> Result<Hash, LedgerError> {
    let bytes = STANDARD
        .decode(text.unwrap_or(""))
        .map_err(|source| LedgerError::InvalidBase64 {
            field: "vector hash",
            source,
        })?;
    Hash::from_slice(&bytes)
}

fn decode_proof(proof: &Option<Vec<Option<String>>>) -> Result<Vec<Hash>, LedgerError> {
    proof
        .iter()
        .flatten()
        .map(|h| decode_hash(h.as_deref()))
        .collect()
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
        let decoded = (|| {
            Ok::<_, LedgerError>((
                decode_hash(probe.leaf_hash.as_deref())?,
                decode_proof(&probe.proof)?,
                decode_hash(probe.root.as_deref())?,
            ))
        })();
        match (decoded, probe.want_err) {
            (Ok((leaf, proof, tree_root)), false) => {
                let result = verify_inclusion(&leaf, probe.leaf_idx, probe.tree_size, &proof, &tree_root);
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
            (Ok((leaf, proof, tree_root)), true) => {
                let result = verify_inclusion(&leaf, probe.leaf_idx, probe.tree_size, &proof, &tree_root);
                assert!(result.is_err(), "{name} ({}): invalid probe accepted", probe.desc);
                tally.invalid_refused_by_verifier += 1;
            }
            (Err(_), true) => tally.invalid_refused_at_decoding += 1,
            (Err(e), false) => panic!("{name} ({}): valid probe not decodable: {e}", probe.desc),
        }
    }
    println!("inclusion probes: {} files, {tally:?}", probes.len());
    assert!(tally.valid_verified > 0, "no valid inclusion probe ran");
    assert!(
        tally.invalid_refused_by_verifier > 0,
        "no invalid inclusion probe reached the verifier"
    );
    assert!(tally.regenerated > 0, "no inclusion proof was regenerated");
    assert_eq!(
        tally.valid_verified
            + tally.invalid_refused_by_verifier
            + tally.invalid_refused_at_decoding
            + tally.valid_unrepresentable,
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
        let decoded = (|| {
            Ok::<_, LedgerError>((
                decode_proof(&probe.proof)?,
                decode_hash(probe.root1.as_deref())?,
                decode_hash(probe.root2.as_deref())?,
            ))
        })();
        match (decoded, probe.want_err) {
            (Ok((proof, root1, root2)), false) => {
                let result = verify_consistency(probe.size1, probe.size2, &proof, &root1, &root2);
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
            (Ok((proof, root1, root2)), true) => {
                let result = verify_consistency(probe.size1, probe.size2, &proof, &root1, &root2);
                assert!(result.is_err(), "{name} ({}): invalid probe accepted", probe.desc);
                tally.invalid_refused_by_verifier += 1;
            }
            (Err(_), true) => tally.invalid_refused_at_decoding += 1,
            (Err(e), false) => {
                assert!(
                    UNREPRESENTABLE_VALID.contains(&name.as_str()),
                    "{name} ({}): valid probe not decodable: {e}",
                    probe.desc
                );
                assert!(
                    matches!(e, LedgerError::InvalidHashLength { len: 12 }),
                    "{name}: {e}"
                );
                tally.valid_unrepresentable += 1;
            }
        }
    }
    println!("consistency probes: {} files, {tally:?}", probes.len());
    assert!(tally.valid_verified > 0, "no valid consistency probe ran");
    assert!(
        tally.invalid_refused_by_verifier > 0,
        "no invalid consistency probe reached the verifier"
    );
    assert!(tally.regenerated > 0, "no consistency proof was regenerated");
    assert_eq!(tally.valid_unrepresentable, UNREPRESENTABLE_VALID.len());
    assert_eq!(
        tally.valid_verified
            + tally.invalid_refused_by_verifier
            + tally.invalid_refused_at_decoding
            + tally.valid_unrepresentable,
        probes.len()
    );
}
