//! Pure Ed25519 over a streamed message in one pass, with a hedged nonce.
//!
//! RFC 8032 derives the nonce from the message, `r = SHA-512(prefix ‖ M)`,
//! so a signer that streams `M` must hash it twice (see
//! [`crate::Ed25519StreamSigner`]): the challenge `k = SHA-512(R ‖ A ‖ M)`
//! needs `R = r·B` first. [`Ed25519HedgedSigner`] draws the nonce before the
//! first byte instead,
//!
//! ```text
//! r = SHA-512(prefix ‖ Z ‖ "somastack ed25519 hedged stream nonce v1" ‖ n ‖ t) mod ℓ
//! ```
//!
//! with `prefix` the secret half of the expanded key (RFC 8032 §5.1.5), `Z`
//! 32 fresh bytes from the operating system's CSPRNG (ring's
//! `SystemRandom`, the `getrandom` system call: kernel state, unaffected by
//! `fork`), `n` a process-wide signature counter and `t` the wall clock in
//! nanoseconds. It computes `R = r·B` up front and hashes the challenge
//! while the message streams by, once. The signature `R ‖ S` with
//! `S = r + k·s mod ℓ` is an ordinary pure Ed25519 signature: verification
//! (RFC 8032 §5.1.7, ring, Python `cryptography`, [`crate::verify_ed25519_strict`])
//! checks `[S]B = R + [k]A` and never asks how `r` was chosen. What changes
//! is that signing the same message twice gives two different signatures,
//! both valid.
//!
//! Why this is safe. Ed25519's security needs the nonce to be secret,
//! uniformly distributed mod ℓ, and never used for two different
//! challenges (two signatures sharing `r` with `k ≠ k'` reveal the secret
//! scalar `s = (S − S') / (k − k')`). The deterministic RFC 8032 nonce gets
//! this from the message; here:
//! - **Secret and uniform.** `r` is SHA-512 of a secret key-derived prefix
//!   and 256 fresh random bits: unpredictable to anyone without the key,
//!   and uniform mod ℓ up to a 2⁻²⁵⁹ bias (a 512-bit value reduced mod ℓ).
//!   Even a broken generator leaves it secret, since `prefix` is (hedging:
//!   the randomness and the key each suffice for secrecy).
//! - **Never reused.** Each signer draws its own `Z`; a repeat of 256
//!   random bits is a 2⁻¹²⁸ event over 2⁶⁴ signatures. `n` and `t` guard
//!   against a generator that does repeat (a virtual machine resumed twice
//!   from one snapshot, whose clock still moves). A failing generator is an
//!   error ([`SignError::Random`]), never a fallback: no signature is made
//!   without fresh randomness.
//! - **Not chosen by anyone else.** The nonce's input is never derived from
//!   data an outsider controls: nothing of the message enters it, and `Z`
//!   never leaves this signer (it is wiped with `r` when the signer is
//!   dropped). A deterministic signature made with the same key over a
//!   message `M'` shares this nonce only if `M' = Z ‖ label ‖ n ‖ t`, which
//!   nobody but this signer knows.
//! - **Bound to the whole message.** The challenge covers `R`, the public
//!   key and every byte, so the signature proves the same thing the RFC 8032
//!   one does; a streamed message needs no replay, hence nothing to replay
//!   differently (the two-pass signer's worry).
//!
//! `R` is never the identity (it would be a small-order point a strict
//! verifier refuses): a nonce `r ≡ 0 (mod ℓ)` — a 2⁻²⁵² event — is drawn
//! again. Where byte-exact RFC 8032 output matters (test vectors, a
//! signature that must equal a one-shot one), use
//! [`crate::Ed25519Signer::sign`] or the two-pass [`crate::Ed25519StreamSigner`].

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use curve25519_dalek::edwards::EdwardsPoint;
use curve25519_dalek::scalar::Scalar;
use ring::digest::{Context, SHA256, SHA512};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

use crate::ed25519::ED25519_SIGNATURE_LEN;
use crate::ed25519_stream::{ExpandedKey, StreamSignature};
use crate::error::SignError;

/// Domain label of the hedged nonce: no other hash of this crate's keys
/// takes these bytes after the prefix and the random bytes.
const NONCE_LABEL: &[u8] = b"somastack ed25519 hedged stream nonce v1";

/// Fresh random bytes per signature.
const RANDOM_LEN: usize = 32;

/// Signatures started by this process: mixed into every nonce.
static SIGNATURES: AtomicU64 = AtomicU64::new(0);

/// A pure Ed25519 signature computed in one pass over a streamed message,
/// with a hedged nonce (see the module doc); made by
/// [`crate::Ed25519Signer::hedged_stream_signer`].
///
/// Feed the message with [`update`](Self::update), then
/// [`finish`](Self::finish). Holds no part of the message. `Debug` prints
/// the message length only; the nonce is wiped when the signer is dropped.
pub struct Ed25519HedgedSigner {
    key: Arc<ExpandedKey>,
    /// The secret nonce `r`.
    nonce: Zeroizing<Scalar>,
    /// `R = r·B`, compressed.
    big_r: [u8; 32],
    /// SHA-512(R ‖ A ‖ M so far): the challenge.
    challenge: Context,
    /// SHA-256(M so far).
    digest: Context,
    len: u64,
}

impl Ed25519HedgedSigner {
    /// Draws the nonce and starts the challenge. Errors:
    /// [`SignError::Random`] when the system generator fails.
    pub(crate) fn new(key: Arc<ExpandedKey>) -> Result<Self, SignError> {
        let rng = SystemRandom::new();
        let nonce = loop {
            let mut random = Zeroizing::new([0u8; RANDOM_LEN]);
            rng.fill(random.as_mut()).map_err(|_| SignError::Random)?;
            let count = SIGNATURES.fetch_add(1, Ordering::Relaxed);
            // A clock before 1970 only weakens a defence in depth: 0 then.
            let time = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let mut hash = Context::new(&SHA512);
            hash.update(&key.secret().hash_prefix);
            hash.update(random.as_ref());
            hash.update(NONCE_LABEL);
            hash.update(&count.to_le_bytes());
            hash.update(&time.to_le_bytes());
            let mut wide = Zeroizing::new([0u8; 64]);
            wide.copy_from_slice(hash.finish().as_ref());
            let r = Zeroizing::new(Scalar::from_bytes_mod_order_wide(&wide));
            if *r != Scalar::ZERO {
                break r;
            }
        };
        let big_r = EdwardsPoint::mul_base(&nonce).compress().to_bytes();
        let mut challenge = Context::new(&SHA512);
        challenge.update(&big_r);
        challenge.update(&key.public());
        Ok(Self {
            key,
            nonce,
            big_r,
            challenge,
            digest: Context::new(&SHA256),
            len: 0,
        })
    }

    /// Appends `bytes` to the message.
    pub fn update(&mut self, bytes: &[u8]) {
        self.challenge.update(bytes);
        self.digest.update(bytes);
        self.len += bytes.len() as u64;
    }

    /// Bytes of message taken so far.
    pub fn message_len(&self) -> u64 {
        self.len
    }

    /// The signature over every byte given to [`update`](Self::update),
    /// with the message's SHA-256 and length.
    pub fn finish(self) -> StreamSignature {
        let mut wide = Zeroizing::new([0u8; 64]);
        wide.copy_from_slice(self.challenge.finish().as_ref());
        let k = Scalar::from_bytes_mod_order_wide(&wide);
        let s = *self.nonce + k * self.key.secret().scalar;
        let mut signature = [0u8; ED25519_SIGNATURE_LEN];
        signature[..32].copy_from_slice(&self.big_r);
        signature[32..].copy_from_slice(s.as_bytes());
        let mut message_sha256 = [0u8; 32];
        message_sha256.copy_from_slice(self.digest.finish().as_ref());
        StreamSignature {
            signature,
            message_sha256,
            message_len: self.len,
        }
    }
}

impl fmt::Debug for Ed25519HedgedSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ed25519HedgedSigner")
            .field("message_len", &self.len)
            .finish_non_exhaustive()
    }
}
