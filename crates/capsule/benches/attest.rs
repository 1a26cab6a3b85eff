//! Attestation verification of a 1 KB in-toto statement signed by 2 of 3
//! registered publisher keys, against two raw strict Ed25519 verifications
//! of the same PAE bytes (target: 1.2× or less).
//!
//! (a) `verify_attestation`: payload type, the PAE built from the payload as
//!     sent, key selection by keyid with the id recomputed from the key,
//!     two strict Ed25519 verifications, the statement parsed strictly, its
//!     predicate type allowed and its subject digest compared.
//! (b) `verify_ed25519_strict` twice over the PAE (built once, outside the timing).
//!
//! Interleaved rounds (the order alternates every round, so drift and
//! frequency changes hit both sides alike); each round times a batch of each,
//! and the p50 of the per-operation times is printed with the ratio. Prints,
//! never asserts. Run with `cargo bench -p soma-capsule`.

#![expect(
    clippy::print_stdout,
    reason = "a benchmark reports its figures on standard output"
)]

use std::error::Error;
use std::hint::black_box;
use std::time::{Duration, Instant};

use serde_json::json;
use soma_capsule::{
    AttestationKey, Bundle, CAPSULE_REVIEW_PREDICATE_TYPE, DEFAULT_ALLOWED_PREDICATE_TYPES, ToolRef, attest,
    verify_attestation,
};
use soma_release::Version;
use soma_sign::{Ed25519Signer, KeyId, pae, verify_ed25519_strict};

const ROUNDS: usize = 301;
const BATCH: usize = 25;
const TARGET_RATIO: f64 = 1.2;
const STATEMENT_BYTES: usize = 1024;
const AT: i64 = 1_750_000_000_000_000_000;

fn main() -> Result<(), Box<dyn Error>> {
    let signers: Vec<Ed25519Signer> = (0..3)
        .map(|i| Ed25519Signer::generate(KeyId::new(format!("publisher-{i}"))?).map(|(s, _)| s))
        .collect::<Result<_, _>>()?;
    let keys: Vec<AttestationKey> = signers
        .iter()
        .map(|s| AttestationKey::new(s.public_key()))
        .collect();
    let bundle = Bundle::new(
        "text-stats",
        "1.0.0",
        "Counts the characters, words, lines and bytes of a text.",
        &[ToolRef {
            tool: "text-stats".to_owned(),
            version: Version::parse("1.0.0")?,
            module_sha256: [0x75; 32],
        }],
        json!({"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}}),
        json!({}),
    )?;
    let digest = bundle.digest();
    // The 2 of 3: the first and the last registered key.
    let envelope = one_kb_attestation(&bundle, [&signers[0], &signers[2]])?;
    let statement_len = envelope.payload.len();

    let pae_bytes = pae(&envelope.payload_type, &envelope.payload);
    let first = (keys[0].public_key, envelope.signatures[0].sig.clone());
    let second = (keys[2].public_key, envelope.signatures[1].sig.clone());

    let attested = || {
        let statement = verify_attestation(
            black_box(&envelope),
            &digest,
            &keys,
            2,
            &DEFAULT_ALLOWED_PREDICATE_TYPES,
            AT,
        );
        black_box(statement.is_ok())
    };
    let raw = || {
        let message = black_box(&pae_bytes[..]);
        let a = verify_ed25519_strict(&first.0, message, black_box(&first.1)).is_ok();
        let b = verify_ed25519_strict(&second.0, message, black_box(&second.1)).is_ok();
        black_box(a && b)
    };
    if !attested() || !raw() {
        return Err("a side of the benchmark does not verify".into());
    }
    // `cargo test --all-targets` runs this once as a test, without
    // `--bench`: both sides were checked above; figures only under
    // `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return Ok(());
    }

    // Warm-up.
    for _ in 0..200 {
        attested();
        raw();
    }
    let mut attested_times = Vec::with_capacity(ROUNDS);
    let mut raw_times = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        if round % 2 == 0 {
            attested_times.push(batch(&attested));
            raw_times.push(batch(&raw));
        } else {
            raw_times.push(batch(&raw));
            attested_times.push(batch(&attested));
        }
    }
    let attested_p50 = percentile(&mut attested_times, 50);
    let raw_p50 = percentile(&mut raw_times, 50);
    let ratio = attested_p50.as_secs_f64() / raw_p50.as_secs_f64();
    println!(
        "attestation verification of a {statement_len} byte in-toto statement, 2-of-3 ed25519, {ROUNDS} interleaved rounds of {BATCH}:"
    );
    println!(
        "  soma_capsule::verify_attestation        p50 {:>9.2} µs  (p10 {:.2}, p90 {:.2})",
        micros(attested_p50),
        micros(percentile(&mut attested_times, 10)),
        micros(percentile(&mut attested_times, 90)),
    );
    println!(
        "  2 × verify_ed25519_strict, same PAE     p50 {:>9.2} µs  (p10 {:.2}, p90 {:.2})",
        micros(raw_p50),
        micros(percentile(&mut raw_times, 10)),
        micros(percentile(&mut raw_times, 90)),
    );
    println!(
        "  ratio {ratio:.3} (target ≤ {TARGET_RATIO}: {})",
        if ratio <= TARGET_RATIO { "met" } else { "NOT met" }
    );
    Ok(())
}

/// An attestation whose statement is exactly [`STATEMENT_BYTES`] long: a
/// review predicate whose notes grow one character at a time.
fn one_kb_attestation(
    bundle: &Bundle,
    signers: [&Ed25519Signer; 2],
) -> Result<soma_sign::DsseEnvelope, Box<dyn Error>> {
    for len in 0..STATEMENT_BYTES {
        let notes: String = "Reviewed the schema, the pinned module digest and the defaults. "
            .chars()
            .cycle()
            .take(len)
            .collect();
        let predicate = json!({"reviewer": "alice@example.com", "decision": "approve", "notes": notes});
        let envelope = attest(bundle, CAPSULE_REVIEW_PREDICATE_TYPE, predicate, &signers)?;
        if envelope.payload.len() >= STATEMENT_BYTES {
            return Ok(envelope);
        }
    }
    Err("cannot reach 1024 bytes".into())
}

fn batch(op: &dyn Fn() -> bool) -> Duration {
    let start = Instant::now();
    for _ in 0..BATCH {
        black_box(op());
    }
    start.elapsed() / BATCH as u32
}

fn percentile(times: &mut [Duration], p: usize) -> Duration {
    times.sort_unstable();
    times[(times.len() - 1) * p / 100]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
