//! Release verification of a 2 KB manifest (JCS + SHA-256 + HMAC + Ed25519)
//! against the raw primitives on the same bytes (target: 1.15× or less).
//!
//! (a) `soma_release::verify` with `module: None`: strict parse, field
//!     checks, canonical comparison, digest, registry HMAC, publisher key id
//!     and the strict Ed25519 signature over the DSSE PAE.
//! (b) the primitives alone on the same bytes: `jcs::parse_strict` +
//!     `jcs::canonicalize` + ring SHA-256 + ring HMAC-SHA256 verify +
//!     `verify_ed25519_strict` of the PAE (built once, outside the timing).
//!
//! Interleaved rounds (the order alternates every round, so drift and
//! frequency changes hit both sides alike); each round times a batch of each,
//! and the p50 of the per-operation times is printed with the ratio. Prints,
//! never asserts. Run with `cargo bench -p soma-release`.

#![expect(
    clippy::print_stdout,
    reason = "a benchmark reports its figures on standard output"
)]

use std::error::Error;
use std::hint::black_box;
use std::time::{Duration, Instant};

use base64::Engine as _;
use soma_release::{Limits, Manifest, PublisherKey, Stored, seal, sign_manifest_with, verify};
use soma_sign::{Ed25519Signer, HmacKeyring, KeyId, jcs, pae, verify_ed25519_strict};

const ROUNDS: usize = 301;
const BATCH: usize = 25;
const TARGET_RATIO: f64 = 1.15;

fn main() -> Result<(), Box<dyn Error>> {
    let (signer, _) = Ed25519Signer::generate(KeyId::new("bench")?)?;
    let (keyring, keyring_json) = HmacKeyring::generate("registry-1")?;
    let module: Vec<u8> = b"\0asm\x01\0\0\0".iter().copied().chain(0..=255).collect();
    let manifest = two_kb_manifest(&module)?;
    let canonical = manifest.canonical();
    let digest = manifest.digest();
    let envelope = sign_manifest_with(&manifest, &signer);
    let (hmac_key_id, hmac) = seal(&keyring, &digest);
    let publisher = PublisherKey::new(signer.public_key());
    let stored = Stored {
        manifest: &canonical,
        manifest_sha256: &digest,
        hmac_key_id: hmac_key_id.as_str(),
        hmac: &hmac,
        envelope: &envelope,
        published_at_nanos: 1,
        revoked: false,
        module: None,
    };
    let failures = verify(&stored, Some(&publisher), &keyring);
    if !failures.is_empty() {
        return Err(format!("the benchmark's release does not verify: {failures:?}").into());
    }

    // The same HMAC key, held by ring directly.
    let doc: serde_json::Value = serde_json::from_slice(&keyring_json)?;
    let secret_b64 = doc["keys"][0]["secret"]
        .as_str()
        .ok_or("keyring without a secret")?;
    let secret = base64::engine::general_purpose::STANDARD.decode(secret_b64)?;
    let raw_hmac_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
    let public_key = signer.public_key();
    let signature = envelope.signatures[0].sig.clone();
    let pae_bytes = pae(&envelope.payload_type, &envelope.payload);

    let release = || {
        let failures = verify(black_box(&stored), Some(&publisher), &keyring);
        black_box(failures.is_empty())
    };
    let raw = || {
        let bytes = black_box(&canonical[..]);
        let ok = jcs::parse_strict(bytes)
            .and_then(|v| jcs::canonicalize(&v))
            .is_ok_and(|c| c == bytes);
        let d = ring::digest::digest(&ring::digest::SHA256, bytes);
        let mac_ok = ring::hmac::verify(&raw_hmac_key, d.as_ref(), black_box(&hmac)).is_ok();
        let sig_ok = verify_ed25519_strict(&public_key, black_box(&pae_bytes), &signature).is_ok();
        black_box(ok && mac_ok && sig_ok)
    };
    if !release() || !raw() {
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
        release();
        raw();
    }
    let mut release_times = Vec::with_capacity(ROUNDS);
    let mut raw_times = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        if round % 2 == 0 {
            release_times.push(batch(&release));
            raw_times.push(batch(&raw));
        } else {
            raw_times.push(batch(&raw));
            release_times.push(batch(&release));
        }
    }
    let release_p50 = percentile(&mut release_times, 50);
    let raw_p50 = percentile(&mut raw_times, 50);
    let ratio = release_p50.as_secs_f64() / raw_p50.as_secs_f64();
    println!(
        "release verification of a {} byte manifest (jcs + sha-256 + hmac + ed25519), {ROUNDS} interleaved rounds of {BATCH}:",
        canonical.len()
    );
    println!(
        "  soma_release::verify (module: None)  p50 {:>9.2} µs  (p10 {:.2}, p90 {:.2})",
        micros(release_p50),
        micros(percentile(&mut release_times, 10)),
        micros(percentile(&mut release_times, 90)),
    );
    println!(
        "  raw primitives, same bytes           p50 {:>9.2} µs  (p10 {:.2}, p90 {:.2})",
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

/// A manifest of about 2048 canonical bytes: a 1024-character description
/// mixing ASCII with two-byte characters, grown until the target is reached.
fn two_kb_manifest(module: &[u8]) -> Result<Manifest, Box<dyn Error>> {
    let limits = Limits {
        fuel: 10_000_000,
        memory_bytes: 64 * 65_536,
        deadline_ms: 2_000,
    };
    for two_byte in 0..=1024 {
        let description: String = "é"
            .repeat(two_byte)
            .chars()
            .chain("Summarises a document into three sentences. ".chars().cycle())
            .take(1024)
            .collect();
        let manifest = Manifest::new("summarise", "2.4.1", "run", limits, &description, module)?;
        if manifest.canonical_bytes().len() >= 2048 {
            return Ok(manifest);
        }
    }
    Err("cannot reach 2048 bytes".into())
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
