//! Pure Ed25519 (RFC 8032 §5.1.6) over a message too large to hold.
//!
//! A pure Ed25519 signature hashes the message twice: the nonce is
//! `r = SHA-512(prefix ‖ M)`, and only once `R = r·B` is known can the
//! challenge `k = SHA-512(R ‖ A ‖ M)` start. [`Ed25519StreamSigner`] takes
//! the message in pieces for the first hash ([`Ed25519StreamSigner::update`])
//! and asks for it once more, in pieces, for the second
//! ([`Ed25519StreamSigner::finish`]); the caller keeps the message where it
//! likes (a spill file, a table) instead of in memory. The result is the
//! exact RFC 8032 signature, byte for byte what [`crate::Ed25519Signer::sign`]
//! returns for the whole message, and any Ed25519 verifier accepts it.
//!
//! Replaying a different message would be fatal: two signatures with one
//! nonce and two challenges reveal the private scalar. The replay is
//! therefore hashed a second way (SHA-256, and its length counted), and a
//! replay that differs from the first pass in a single byte yields
//! [`SignError::StreamReplayMismatch`] and no signature.

use std::fmt;
use std::sync::Arc;

use curve25519_dalek::edwards::EdwardsPoint;
use curve25519_dalek::scalar::Scalar;
use ed25519_dalek::hazmat::ExpandedSecretKey;
use ring::digest::{Context, SHA256, SHA512};

use crate::ed25519::{ED25519_PUBLIC_KEY_LEN, ED25519_SIGNATURE_LEN};
use crate::error::SignError;

/// Length of an Ed25519 seed (the RFC 8032 private key).
pub(crate) const SEED_LEN: usize = 32;

/// The RFC 8032 §5.1.5 expansion of a seed: the secret scalar `s` and the
/// nonce prefix (ed25519-dalek's `ExpandedSecretKey`, zeroed on drop), and
/// the public key `A = s·B`.
pub(crate) struct ExpandedKey {
    secret: ExpandedSecretKey,
    public: [u8; ED25519_PUBLIC_KEY_LEN],
}

impl ExpandedKey {
    /// Expands a seed: `h = SHA-512(seed)`, `s = clamp(h[0..32])`,
    /// `prefix = h[32..64]`, `A = s·B`.
    pub(crate) fn from_seed(seed: &[u8; SEED_LEN]) -> Self {
        let secret = ExpandedSecretKey::from(seed);
        // s·B only depends on s mod ℓ (B has order ℓ), as does S = r + k·s mod ℓ.
        let public = EdwardsPoint::mul_base(&secret.scalar).compress().to_bytes();
        Self { secret, public }
    }

    /// The public key `A`.
    pub(crate) fn public(&self) -> [u8; ED25519_PUBLIC_KEY_LEN] {
        self.public
    }

    /// The secret scalar `s` and the nonce prefix.
    pub(crate) fn secret(&self) -> &ExpandedSecretKey {
        &self.secret
    }
}

/// A pure Ed25519 signature being computed over a streamed message; made
/// by [`crate::Ed25519Signer::stream_signer`].
///
/// Feed the message with [`update`](Self::update) (pass one), then call
/// [`finish`](Self::finish) with a way to read the same bytes again (pass
/// two). Holds no part of the message. `Debug` prints the message length only.
pub struct Ed25519StreamSigner {
    key: Arc<ExpandedKey>,
    /// SHA-512(prefix ‖ M so far): the nonce.
    nonce: Context,
    /// SHA-256(M so far): what the replay must match.
    check: Context,
    len: u64,
}

/// What [`Ed25519StreamSigner::finish`] produced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct StreamSignature {
    /// The Ed25519 signature `R ‖ S` over the message.
    pub signature: [u8; ED25519_SIGNATURE_LEN],
    /// SHA-256 of the message (both passes agreed on it).
    pub message_sha256: [u8; 32],
    /// Length of the message in bytes.
    pub message_len: u64,
}

impl Ed25519StreamSigner {
    pub(crate) fn new(key: Arc<ExpandedKey>) -> Self {
        let mut nonce = Context::new(&SHA512);
        nonce.update(&key.secret.hash_prefix);
        Self {
            key,
            nonce,
            check: Context::new(&SHA256),
            len: 0,
        }
    }

    /// Appends `bytes` to the message (pass one).
    pub fn update(&mut self, bytes: &[u8]) {
        self.nonce.update(bytes);
        self.check.update(bytes);
        self.len += bytes.len() as u64;
    }

    /// Bytes of message taken so far.
    pub fn message_len(&self) -> u64 {
        self.len
    }

    /// Completes the signature (pass two). `replay` must hand the message
    /// given to [`update`](Self::update) once more, in order, in pieces of
    /// any size, to the sink it receives.
    ///
    /// Errors: [`SignError::StreamReplay`] when `replay` fails (its error is
    /// the source), [`SignError::StreamReplayMismatch`] when the replayed
    /// bytes are not the message of pass one. No signature is made then.
    pub fn finish<F>(self, replay: F) -> Result<StreamSignature, SignError>
    where
        F: FnOnce(&mut dyn FnMut(&[u8])) -> std::io::Result<()>,
    {
        let nonce = self.nonce.finish();
        let mut wide = [0u8; 64];
        wide.copy_from_slice(nonce.as_ref());
        let r = Scalar::from_bytes_mod_order_wide(&wide);
        wide.fill(0);
        let big_r = EdwardsPoint::mul_base(&r).compress().to_bytes();

        let mut challenge = Context::new(&SHA512);
        challenge.update(&big_r);
        challenge.update(&self.key.public);
        let mut check = Context::new(&SHA256);
        let mut len: u64 = 0;
        let replayed = replay(&mut |bytes: &[u8]| {
            challenge.update(bytes);
            check.update(bytes);
            len += bytes.len() as u64;
        });
        let first = self.check.finish();
        let second = check.finish();
        match replayed {
            Err(source) => Err(SignError::StreamReplay { source }),
            Ok(()) if len != self.len || !same(first.as_ref(), second.as_ref()) => {
                Err(SignError::StreamReplayMismatch {
                    expected_len: self.len,
                    replayed_len: len,
                })
            }
            Ok(()) => {
                wide.copy_from_slice(challenge.finish().as_ref());
                let k = Scalar::from_bytes_mod_order_wide(&wide);
                let s = r + k * self.key.secret.scalar;
                let mut signature = [0u8; ED25519_SIGNATURE_LEN];
                signature[..32].copy_from_slice(&big_r);
                signature[32..].copy_from_slice(s.as_bytes());
                let mut message_sha256 = [0u8; 32];
                message_sha256.copy_from_slice(first.as_ref());
                Ok(StreamSignature {
                    signature,
                    message_sha256,
                    message_len: len,
                })
            }
        }
    }
}

/// Equality of two digests without an early exit.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl fmt::Debug for Ed25519StreamSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ed25519StreamSigner")
            .field("message_len", &self.len)
            .finish_non_exhaustive()
    }
}
