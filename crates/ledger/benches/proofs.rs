//! Proof generation and verification over a 1,000,000-leaf ledger.
//!
//! `cargo bench -p soma-ledger --bench proofs` builds a `MerkleTree` of
//! pseudo-random leaf hashes, times every query separately with `Instant`,
//! and prints percentiles beside the service targets (inclusion proof
//! generation ≤ 1 ms, verification ≤ 100 µs). The O(n) slice-based
//! `inclusion_proof` / `consistency_proof` run over the same leaves in the
//! same process as the baseline. Every generated proof is verified, so a
//! wrong proof stops the run instead of being timed.

#![expect(clippy::print_stdout, reason = "the printed table is the benchmark's output")]
#![expect(
    clippy::expect_used,
    reason = "a benchmark stops on the first wrong proof; there is no caller to return to"
)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use soma_ledger::{
    Hash, MerkleTree, consistency_proof, inclusion_proof, leaf_hash, verify_consistency, verify_inclusion,
};

const LEAVES: u64 = 1_000_000;
const LATEST_QUERIES: usize = 10_000;
const EARLIER_QUERIES: usize = 1_000;
const CONSISTENCY_QUERIES: usize = 1_000;
const BASELINE_QUERIES: usize = 5;

const GENERATION_TARGET: Duration = Duration::from_millis(1);
const VERIFICATION_TARGET: Duration = Duration::from_micros(100);

/// xorshift64*, fixed seed, so every run measures the same queries.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }
}

/// Per-query timings of one operation.
#[derive(Debug)]
struct Samples {
    name: &'static str,
    times: Vec<Duration>,
    target: Option<Duration>,
}

impl Samples {
    fn new(name: &'static str, target: Option<Duration>) -> Self {
        Self {
            name,
            times: Vec::new(),
            target,
        }
    }

    /// Times one call of `f` and returns its result.
    fn time<T>(&mut self, f: impl FnOnce() -> T) -> T {
        let start = Instant::now();
        let out = black_box(f());
        self.times.push(start.elapsed());
        out
    }

    fn sorted(&self) -> Vec<Duration> {
        let mut times = self.times.clone();
        times.sort_unstable();
        times
    }

    fn percentile(&self, p: f64) -> Duration {
        let times = self.sorted();
        let rank = ((times.len() as f64 * p).ceil() as usize).clamp(1, times.len());
        times[rank - 1]
    }

    fn mean(&self) -> Duration {
        let total: Duration = self.times.iter().sum();
        total / u32::try_from(self.times.len()).unwrap_or(u32::MAX).max(1)
    }

    fn max(&self) -> Duration {
        self.times.iter().copied().max().unwrap_or_default()
    }

    fn row(&self) {
        let (target, verdict) = match self.target {
            Some(t) => (
                format!("≤ {}", fmt_target(t)),
                if self.percentile(0.99) <= t {
                    "met (p99)"
                } else {
                    "MISSED (p99)"
                },
            ),
            None => ("-".to_owned(), ""),
        };
        println!(
            "| {:<44} | {:>6} | {:>10} | {:>10} | {:>10} | {:>10} | {:>10} | {:<12} |",
            self.name,
            self.times.len(),
            fmt(self.percentile(0.5)),
            fmt(self.percentile(0.99)),
            fmt(self.mean()),
            fmt(self.max()),
            target,
            verdict
        );
    }
}

/// A target as written in the requirements: whole milliseconds or microseconds.
fn fmt_target(d: Duration) -> String {
    if d.as_micros().is_multiple_of(1000) && d >= Duration::from_millis(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{} µs", d.as_micros())
    }
}

fn fmt(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos < 10_000 {
        format!("{:.2} µs", nanos as f64 / 1e3)
    } else if nanos < 10_000_000 {
        format!("{:.1} µs", nanos as f64 / 1e3)
    } else {
        format!("{:.1} ms", nanos as f64 / 1e6)
    }
}

fn main() {
    println!("soma-ledger proofs benchmark: {LEAVES} leaves, release build, one thread");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);

    // Pseudo-random leaf hashes: SHA-256 leaf hashes of random 8-byte entries.
    let start = Instant::now();
    let leaves: Vec<Hash> = (0..LEAVES)
        .map(|_| leaf_hash(&rng.next().to_le_bytes()))
        .collect();
    let leaf_hashing = start.elapsed();

    let start = Instant::now();
    let mut grown = MerkleTree::new();
    for leaf in &leaves {
        grown.push(*leaf);
    }
    let build_push = start.elapsed();
    let start = Instant::now();
    let tree = MerkleTree::from_leaves(&leaves);
    let build_reserved = start.elapsed();
    assert_eq!(black_box(&grown), &tree);
    drop(grown);

    let latest = tree.size();
    let latest_root = tree.root();
    let stored = tree.stored_hashes();

    // Inclusion at the latest size.
    let mut gen_latest = Samples::new(
        "inclusion proof, latest size (MerkleTree)",
        Some(GENERATION_TARGET),
    );
    let mut verify_latest = Samples::new("inclusion verify, latest size", Some(VERIFICATION_TARGET));
    for _ in 0..LATEST_QUERIES {
        let index = rng.between(0, latest - 1);
        let proof = gen_latest.time(|| tree.inclusion_proof(black_box(index), black_box(latest)));
        let proof = proof.expect("index is in range");
        let leaf = &leaves[index as usize];
        verify_latest
            .time(|| verify_inclusion(leaf, black_box(index), latest, &proof, &latest_root))
            .expect("generated inclusion proof verifies");
    }

    // Inclusion at earlier sizes (roots computed outside the timed region).
    let mut gen_earlier = Samples::new(
        "inclusion proof, earlier size (MerkleTree)",
        Some(GENERATION_TARGET),
    );
    let mut verify_earlier = Samples::new("inclusion verify, earlier size", Some(VERIFICATION_TARGET));
    let mut root_at = Samples::new("root_at(earlier size)", None);
    for _ in 0..EARLIER_QUERIES {
        let size = rng.between(1, latest);
        let index = rng.between(0, size - 1);
        let root = root_at
            .time(|| tree.root_at(black_box(size)))
            .expect("size is in range");
        let proof = gen_earlier
            .time(|| tree.inclusion_proof(black_box(index), black_box(size)))
            .expect("index is in range");
        verify_earlier
            .time(|| verify_inclusion(&leaves[index as usize], index, size, &proof, &root))
            .expect("generated inclusion proof verifies");
    }

    // Consistency between random earlier sizes and to the latest size.
    let mut gen_consistency = Samples::new("consistency proof (MerkleTree)", Some(GENERATION_TARGET));
    let mut verify_cons = Samples::new("consistency verify", Some(VERIFICATION_TARGET));
    for i in 0..CONSISTENCY_QUERIES {
        let size1 = rng.between(1, latest);
        let size2 = if i % 2 == 0 {
            latest
        } else {
            rng.between(size1, latest)
        };
        let (root1, root2) = (
            tree.root_at(size1).expect("size is in range"),
            tree.root_at(size2).expect("size is in range"),
        );
        let proof = gen_consistency
            .time(|| tree.consistency_proof(black_box(size1), black_box(size2)))
            .expect("sizes are in order and in range");
        verify_cons
            .time(|| verify_consistency(size1, size2, &proof, &root1, &root2))
            .expect("generated consistency proof verifies");
    }

    // The O(n) slice functions over the same leaves, same process.
    let mut base_inclusion = Samples::new("baseline: slice inclusion_proof (O(n))", None);
    let mut base_consistency = Samples::new("baseline: slice consistency_proof (O(n))", None);
    for _ in 0..BASELINE_QUERIES {
        let index = rng.between(0, latest - 1);
        let proof = base_inclusion
            .time(|| inclusion_proof(black_box(&leaves), black_box(index), black_box(latest)))
            .expect("index is in range");
        assert_eq!(
            proof,
            tree.inclusion_proof(index, latest).expect("index is in range")
        );
        let size1 = rng.between(1, latest);
        let proof = base_consistency
            .time(|| consistency_proof(black_box(&leaves), black_box(size1), black_box(latest)))
            .expect("sizes are in order");
        assert_eq!(
            proof,
            tree.consistency_proof(size1, latest).expect("sizes are in order")
        );
    }

    println!();
    println!("| {:<44} | {:>10} |", "setup", "time");
    println!("|{:-<46}|{:-<12}|", "", "");
    println!(
        "| {:<44} | {:>10} |",
        "hash 1,000,000 leaves (leaf_hash)",
        fmt(leaf_hashing)
    );
    println!(
        "| {:<44} | {:>10} |",
        "build MerkleTree by push (no reservation)",
        fmt(build_push)
    );
    println!(
        "| {:<44} | {:>10} |",
        "build MerkleTree::from_leaves (reserved)",
        fmt(build_reserved)
    );
    println!(
        "stored hashes: {stored} ({:.1} MB of hash data, {:.3} per leaf)",
        (stored * 32) as f64 / 1e6,
        stored as f64 / latest as f64
    );
    println!();
    println!(
        "| {:<44} | {:>6} | {:>10} | {:>10} | {:>10} | {:>10} | {:>10} | {:<12} |",
        "operation", "n", "p50", "p99", "mean", "max", "target", "verdict"
    );
    println!(
        "|{:-<46}|{:-<8}|{:-<12}|{:-<12}|{:-<12}|{:-<12}|{:-<12}|{:-<14}|",
        "", "", "", "", "", "", "", ""
    );
    for samples in [
        &gen_latest,
        &gen_earlier,
        &verify_latest,
        &verify_earlier,
        &gen_consistency,
        &verify_cons,
        &root_at,
        &base_inclusion,
        &base_consistency,
    ] {
        samples.row();
    }
    println!();
    println!("verdicts compare p99 with the target; max includes scheduler preemptions of this process.");
    println!(
        "speed-up of MerkleTree over the slice functions (mean vs mean): inclusion {:.0}x, consistency {:.0}x",
        base_inclusion.mean().as_secs_f64() / gen_latest.mean().as_secs_f64(),
        base_consistency.mean().as_secs_f64() / gen_consistency.mean().as_secs_f64()
    );
}
