//! The one error type of `soma-auth`.

use soma_identity::SpiffeId;

/// Why an envelope was refused, or a signing key or envelope could not be
/// made.
///
/// Every refusal of [`ClaimsVerifier::verify`](crate::ClaimsVerifier::verify)
/// has its own variant; callers map all of them to gRPC `UNAUTHENTICATED`
/// and log [`AuthError::reason`], a stable machine-readable code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// The request carries an envelope but the connection has no verified
    /// peer SPIFFE ID.
    #[error("claims envelope received without a verified peer identity")]
    MissingPeerIdentity,
    /// The request carries an envelope but the peer is not the gateway.
    #[error("claims envelope received from {peer}, which is not the gateway")]
    NotFromGateway {
        /// The peer that sent it.
        peer: SpiffeId,
    },
    /// The signature entry is present but the claims entry is not.
    #[error("claims envelope has a signature but no claims")]
    MissingClaims,
    /// The claims entry is present but the signature entry is not.
    #[error("claims envelope has no signature")]
    MissingSignature,
    /// The claims entry appears more than once.
    #[error("claims envelope has more than one claims entry")]
    DuplicateClaims,
    /// The signature entry appears more than once.
    #[error("claims envelope has more than one signature entry")]
    DuplicateSignature,
    /// The claims entry is not base64, or not an encoded `VerifiedClaims`.
    #[error("claims are malformed")]
    MalformedClaims,
    /// The signature entry is not base64 of exactly 64 bytes.
    #[error("claims signature is malformed")]
    MalformedSignature,
    /// The claims name a signing key this verifier does not know.
    #[error("claims are signed with unknown key id {key_id:?}")]
    UnknownKey {
        /// The key id the claims name.
        key_id: String,
    },
    /// The signature does not verify over the received claims bytes.
    #[error("claims signature does not verify")]
    BadSignature,
    /// The envelope is addressed to another service.
    #[error("claims are addressed to {audience:?}, not to this service")]
    WrongAudience {
        /// The audience the envelope names.
        audience: String,
    },
    /// The envelope's issue time is later than now plus the allowed skew.
    #[error("claims are issued in the future")]
    IssuedInFuture,
    /// `expires_at` is not after `issued_at`.
    #[error("claims expire before they are issued")]
    LifetimeNotPositive,
    /// `expires_at - issued_at` exceeds the maximum envelope lifetime.
    #[error("claims lifetime exceeds the maximum envelope lifetime")]
    LifetimeTooLong,
    /// Now is at or after `expires_at`.
    #[error("claims have expired")]
    Expired,
    /// The clock reads a time before the Unix epoch (or beyond `i64` seconds).
    #[error("system clock is outside the representable range")]
    ClockOutOfRange,
    /// A signing key id is empty.
    #[error("key id is empty")]
    EmptyKeyId,
    /// A PEM document is not the expected kind, or its base64 is invalid.
    #[error("pem is invalid: {0}")]
    InvalidPem(&'static str),
    /// A key is not a valid Ed25519 key in the expected encoding.
    #[error("key is not a valid ed25519 key: {0}")]
    InvalidKey(String),
    /// The signing time-to-live is under one second.
    #[error("envelope time-to-live must be at least one second")]
    TtlTooShort,
    /// The system random number generator failed.
    #[error("random number generator failed")]
    Random,
}

impl AuthError {
    /// A stable snake_case code naming the failure, for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MissingPeerIdentity => "missing_peer_identity",
            Self::NotFromGateway { .. } => "not_from_gateway",
            Self::MissingClaims => "missing_claims",
            Self::MissingSignature => "missing_signature",
            Self::DuplicateClaims => "duplicate_claims",
            Self::DuplicateSignature => "duplicate_signature",
            Self::MalformedClaims => "malformed_claims",
            Self::MalformedSignature => "malformed_signature",
            Self::UnknownKey { .. } => "unknown_key",
            Self::BadSignature => "bad_signature",
            Self::WrongAudience { .. } => "wrong_audience",
            Self::IssuedInFuture => "issued_in_future",
            Self::LifetimeNotPositive => "lifetime_not_positive",
            Self::LifetimeTooLong => "lifetime_too_long",
            Self::Expired => "expired",
            Self::ClockOutOfRange => "clock_out_of_range",
            Self::EmptyKeyId => "empty_key_id",
            Self::InvalidPem(_) => "invalid_pem",
            Self::InvalidKey(_) => "invalid_key",
            Self::TtlTooShort => "ttl_too_short",
            Self::Random => "random_failed",
        }
    }
}
