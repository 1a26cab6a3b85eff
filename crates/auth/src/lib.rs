//! The signed claims envelope of SomaStack: after the gateway has verified a
//! caller, it seals the result as a protobuf `VerifiedClaims`, signs it with
//! its Ed25519 key ([`ClaimsSigner`]) and sends both as binary gRPC metadata
//! ([`CLAIMS_METADATA`], [`SIGNATURE_METADATA`]); each backend checks them
//! with a [`ClaimsVerifier`] before its handlers see the claims.
//!
//! It does not verify end-user tokens (JWTs); that is the gateway's first
//! step, elsewhere. It does not map errors to gRPC statuses either: the
//! caller turns every [`AuthError`] into `UNAUTHENTICATED`.
//!
//! Security-relevant defaults: envelopes are accepted only from the one
//! gateway peer identity, only for this service's audience, only for at most
//! [`MAX_ENVELOPE_LIFETIME`]; the signature covers the exact received bytes
//! behind a domain separator ([`DOMAIN_SEPARATOR`]); a request without an
//! envelope yields no claims, never default ones.

mod envelope;
mod error;
mod keys;
mod signer;
mod verifier;

pub use envelope::{
    CLAIMS_METADATA, DOMAIN_SEPARATOR, MAX_CLOCK_SKEW, MAX_ENVELOPE_LIFETIME, SIGNATURE_METADATA,
    SignedClaims,
};
pub use error::AuthError;
pub use signer::ClaimsSigner;
pub use soma_proto::v1::VerifiedClaims;
pub use verifier::ClaimsVerifier;
