//! SomaStack signing primitives: RFC 8785 canonical JSON, SHA-256,
//! HMAC-SHA256 with versioned keyrings, and Ed25519 with strict verification.
//!
//! What it does: turns JSON into the one byte string that gets signed
//! ([`jcs`]), hashes ([`sha256`]), authenticates with rotating shared secrets
//! ([`HmacKeyring`]), signs with ring ([`Ed25519Signer`]), signs messages
//! too large to hold in two streamed passes ([`Ed25519StreamSigner`]) or,
//! with a hedged random nonce, in one ([`Ed25519HedgedSigner`]), and
//! verifies Ed25519 signatures strictly ([`verify_ed25519_strict`]). It
//! wraps typed payloads in DSSE v1 envelopes ([`DsseEnvelope`], signed over
//! the pre-authentication encoding [`pae`]) and rotates keyrings
//! ([`HmacKeyring::add_generated`], [`HmacKeyring::promote`],
//! [`HmacKeyring::retire`]).
//!
//! What it deliberately does not do: define what a payload means (release
//! manifests, tokens), distribute or store keys, or offer any non-strict
//! verification mode.
//!
//! Security-relevant defaults: JSON is parsed as I-JSON (duplicate keys, lone
//! surrogates and non-finite numbers are errors, not guesses); HMAC tags are
//! compared in constant time and must be the full 32 bytes; retired keys never
//! verify; Ed25519 verification refuses malleable and small-order inputs;
//! secrets never appear in `Debug` output or error messages.

mod digest;
mod dsse;
mod ed25519;
mod ed25519_hedged;
mod ed25519_stream;
mod error;
pub mod hex;
mod hmac;
pub mod jcs;
mod key_id;
mod pem;

pub use digest::sha256;
pub use dsse::{DsseEnvelope, DsseSignature, pae};
pub use ed25519::{
    ED25519_PUBLIC_KEY_LEN, ED25519_SIGNATURE_LEN, Ed25519Signer, ed25519_public_key_from_pem,
    ed25519_public_key_from_spki_der, ed25519_public_key_to_spki_der, verify_ed25519_strict,
};
pub use ed25519_hedged::Ed25519HedgedSigner;
pub use ed25519_stream::{Ed25519StreamSigner, StreamSignature};
pub use error::SignError;
pub use hmac::{HMAC_TAG_LEN, HmacKeyring, KeyStatus, MIN_SECRET_LEN};
pub use key_id::KeyId;
