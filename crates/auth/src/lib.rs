//! The signed claims envelope of SomaStack: after the gateway has verified a
//! caller, it seals the result as a protobuf `VerifiedClaims`, signs it with
//! its Ed25519 key ([`ClaimsSigner`]) and sends both as binary gRPC metadata
//! ([`CLAIMS_METADATA`], [`SIGNATURE_METADATA`]); each backend checks them
//! with a [`ClaimsVerifier`] before its handlers see the claims.
//!
//! It also verifies the tenant's bearer token that precedes all this: a
//! [`JwtVerifier`] checks a compact JWS (HS256, RS256, ES256, EdDSA) against
//! the keys of the configured issuers, from secret files, JWKS files and
//! JWKS URLs, then its claims, and refuses with a [`JwtError`] whose
//! [`JwtError::reason`] the gateway returns as the 401 reason.
//!
//! It does not map errors to gRPC statuses or HTTP responses: the caller
//! turns every [`AuthError`] into `UNAUTHENTICATED` and every [`JwtError`]
//! into a 401. It never follows key references in tokens (`jku`, `x5u`,
//! `jwk`, `x5c`) and understands no `crit` extension.
//!
//! Security-relevant defaults: envelopes are accepted only from the one
//! gateway peer identity, only for this service's audience, only for at most
//! [`MAX_ENVELOPE_LIFETIME`]; the signature covers the exact received bytes
//! behind a domain separator ([`DOMAIN_SEPARATOR`]); a request without an
//! envelope yields no claims, never default ones. A token's algorithm is
//! fixed by the key its `kid` selects, never by the token; `none` is never
//! accepted; an unknown `kid` in a token of a public-key algorithm refetches
//! a JWKS URL at most once per refresh interval (an HS256 token never does:
//! a key set holds no secrets), and a failing URL keeps the last good key set.

mod dirwatch;
mod envelope;
mod error;
mod jose;
mod jwk;
mod jwks;
mod jwt;
mod keys;
mod scan;
mod signer;
mod verifier;

pub use envelope::{
    CLAIMS_METADATA, DOMAIN_SEPARATOR, MAX_CLOCK_SKEW, MAX_ENVELOPE_LIFETIME, SIGNATURE_METADATA,
    SignedClaims,
};
pub use error::{AuthError, JwtConfigError, JwtError};
pub use jwk::{ALL_ZERO_HMAC_KEY, Algorithm, Jwk};
pub use jwt::{
    DEFAULT_JWKS_REFRESH_INTERVAL, DEFAULT_LEEWAY, DEFAULT_MAX_LIFETIME, DEFAULT_MAX_TOKEN_BYTES,
    IssuerSettings, JwtSettings, JwtVerifier, MAX_LIFETIME_CEILING, TokenClaims, verify_compact_jws,
};
pub use signer::ClaimsSigner;
pub use soma_proto::v1::VerifiedClaims;
pub use verifier::{ClaimsVerifier, EnvelopeCounts, VERIFIED_ENVELOPES_CAPACITY};
