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

/// Why a tenant JWT (or a compact JWS, or a JWK) was refused.
///
/// The gateway answers every refusal with HTTP 401 and [`JwtError::reason`]
/// as the reason: a stable code that names the failed check and nothing of
/// the token or the keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwtError {
    /// The token is longer than the configured maximum; nothing was decoded.
    #[error("token is longer than the configured maximum")]
    TokenTooLarge,
    /// The token is not a compact JWS with a JSON object header and payload.
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    /// `alg` is missing, `none`, unsupported, not allowed for the issuer, or
    /// not the algorithm of the selected key.
    #[error("token algorithm is not allowed")]
    AlgNotAllowed,
    /// The header names a key by reference or embeds one (`jku`, `x5u`,
    /// `jwk`, `x5c`); such keys are never fetched nor trusted.
    #[error("token header carries an untrusted key reference")]
    UntrustedKeyReference,
    /// The header has `crit`: no extension is understood.
    #[error("token header has critical extensions")]
    UnknownCrit,
    /// `kid` is not a string of 1 to 128 characters from `[A-Za-z0-9._~-]`.
    #[error("token key id is invalid")]
    BadKid,
    /// `iss` is missing or is not a configured issuer.
    #[error("token issuer is unknown")]
    UnknownIssuer,
    /// The issuer has no key with the token's `kid` (or the token has no
    /// `kid` and the issuer does not have exactly one key).
    #[error("token key id is unknown")]
    UnknownKid,
    /// The signature does not verify with the selected key.
    #[error("token signature does not verify")]
    BadSignature,
    /// A registered claim has the wrong JSON type.
    #[error("claim {0} has the wrong type")]
    InvalidClaimType(&'static str),
    /// A required claim is absent or empty.
    #[error("claim {0} is missing")]
    MissingClaim(&'static str),
    /// Now is at or after `exp` plus the leeway.
    #[error("token has expired")]
    Expired,
    /// `nbf` is later than now plus the leeway.
    #[error("token is not yet valid")]
    NotYetValid,
    /// `iat` is later than now plus the leeway.
    #[error("token is issued in the future")]
    IssuedInFuture,
    /// `exp - iat` exceeds the configured maximum lifetime, or, without
    /// `iat`, `exp` lies further than that maximum (plus the leeway) ahead.
    #[error("token lifetime exceeds the configured maximum")]
    LifetimeTooLong,
    /// `aud` is absent or names none of the issuer's audiences.
    #[error("token audience does not match")]
    AudienceMismatch,
    /// A JWK is unusable for verification: unsupported type or curve, bad
    /// encoding, too short, private parameters, or not meant for signatures.
    #[error("key is unusable: {0}")]
    InvalidKey(&'static str),
}

impl JwtError {
    /// A stable snake_case code naming the failure: the 401 reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TokenTooLarge => "token_too_large",
            Self::Malformed(_) => "token_malformed",
            Self::AlgNotAllowed => "alg_not_allowed",
            Self::UntrustedKeyReference => "untrusted_key_reference",
            Self::UnknownCrit => "unknown_crit",
            Self::BadKid => "bad_kid",
            Self::UnknownIssuer => "unknown_issuer",
            Self::UnknownKid => "unknown_kid",
            Self::BadSignature => "bad_signature",
            Self::InvalidClaimType(_) => "invalid_claim_type",
            Self::MissingClaim(_) => "missing_claim",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::IssuedInFuture => "issued_in_future",
            Self::LifetimeTooLong => "lifetime_too_long",
            Self::AudienceMismatch => "audience_mismatch",
            Self::InvalidKey(_) => "invalid_key",
        }
    }
}

/// Why a [`JwtVerifier`](crate::JwtVerifier) could not be built from its
/// settings. A JWKS URL that does not answer is not one of them: it is
/// logged and fetched again later.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwtConfigError {
    /// No issuer is configured.
    #[error("no issuer is configured")]
    NoIssuers,
    /// An issuer string is empty.
    #[error("an issuer is empty")]
    EmptyIssuer,
    /// The same issuer is configured twice.
    #[error("issuer {0:?} is configured twice")]
    DuplicateIssuer(String),
    /// An issuer lists no audience.
    #[error("issuer {0:?} has no audience")]
    NoAudiences(String),
    /// An issuer allows no algorithm.
    #[error("issuer {0:?} allows no algorithm")]
    NoAlgorithms(String),
    /// An issuer has no key source (secret file, JWKS file or JWKS URL).
    #[error("issuer {0:?} has no key source")]
    NoKeySource(String),
    /// `jwks_refresh_interval` is zero, which would allow a fetch per request.
    #[error("issuer {0:?} has a zero jwks refresh interval")]
    ZeroRefreshInterval(String),
    /// `max_token_bytes` is zero.
    #[error("max token bytes must be positive")]
    ZeroMaxTokenBytes,
    /// `max_lifetime` is zero or longer than 30 days.
    #[error("max_lifetime {0:?} must be positive and at most 30 days")]
    MaxLifetime(std::time::Duration),
    /// A key file could not be read.
    #[error("cannot read {path}")]
    ReadFile {
        /// The file.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A key file holds no usable key set.
    #[error("{path} holds no usable keys: {reason}")]
    InvalidKeyFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A JWKS URL is not an absolute `http://` or `https://` URL.
    #[error("jwks url {url:?} is invalid: {reason}")]
    InvalidJwksUrl {
        /// The URL.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An `https://` JWKS URL has no usable CA file.
    #[error("jwks ca file for {url:?} is unusable: {reason}")]
    CaFile {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One example of every [`AuthError`] variant, derived from the enum
    /// itself: each row is a pattern and an example of it. The patterns form
    /// a `match` with no wildcard (allowed here, inside the crate, where
    /// `#[non_exhaustive]` does not apply), so a new variant is a compile
    /// error until it gets its row; and each example must match its own
    /// pattern, so no row can stand in for another.
    macro_rules! one_of_each {
        ($($pattern:pat => $example:expr),+ $(,)?) => {{
            // Never called: it exists for the compiler's exhaustiveness check.
            #[allow(dead_code, reason = "only compiled, for exhaustiveness")]
            fn exhaustive(error: &AuthError) {
                match error {
                    $($pattern => {})+
                }
            }
            vec![$({
                let example: AuthError = $example;
                assert!(
                    matches!(example, $pattern),
                    "{example:?} is not an example of {}",
                    stringify!($pattern)
                );
                example
            }),+]
        }};
    }

    fn every_auth_error() -> Vec<AuthError> {
        let peer = SpiffeId::parse("spiffe://a.test/svc/other").unwrap();
        one_of_each![
            AuthError::MissingPeerIdentity => AuthError::MissingPeerIdentity,
            AuthError::NotFromGateway { .. } => AuthError::NotFromGateway { peer },
            AuthError::MissingClaims => AuthError::MissingClaims,
            AuthError::MissingSignature => AuthError::MissingSignature,
            AuthError::DuplicateClaims => AuthError::DuplicateClaims,
            AuthError::DuplicateSignature => AuthError::DuplicateSignature,
            AuthError::MalformedClaims => AuthError::MalformedClaims,
            AuthError::MalformedSignature => AuthError::MalformedSignature,
            AuthError::UnknownKey { .. } => AuthError::UnknownKey {
                key_id: "k".to_owned(),
            },
            AuthError::BadSignature => AuthError::BadSignature,
            AuthError::WrongAudience { .. } => AuthError::WrongAudience {
                audience: "a".to_owned(),
            },
            AuthError::IssuedInFuture => AuthError::IssuedInFuture,
            AuthError::LifetimeNotPositive => AuthError::LifetimeNotPositive,
            AuthError::LifetimeTooLong => AuthError::LifetimeTooLong,
            AuthError::Expired => AuthError::Expired,
            AuthError::ClockOutOfRange => AuthError::ClockOutOfRange,
            AuthError::EmptyKeyId => AuthError::EmptyKeyId,
            AuthError::InvalidPem(_) => AuthError::InvalidPem("x"),
            AuthError::InvalidKey(_) => AuthError::InvalidKey("x".to_owned()),
            AuthError::TtlTooShort => AuthError::TtlTooShort,
            AuthError::Random => AuthError::Random,
        ]
    }

    /// Every variant there is has its own snake_case reason (logged, and
    /// counted in metrics), and reads as a lowercase message.
    #[test]
    fn every_auth_error_has_a_distinct_snake_case_reason() {
        let errors = every_auth_error();
        let mut reasons: Vec<&str> = errors.iter().map(AuthError::reason).collect();
        for (error, reason) in errors.iter().zip(&reasons) {
            assert!(
                !reason.is_empty() && reason.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{error:?}: {reason}"
            );
            let message = error.to_string();
            assert!(
                message.starts_with(|c: char| c.is_ascii_lowercase()),
                "{error:?}: {message}"
            );
        }
        reasons.sort_unstable();
        reasons.dedup();
        assert_eq!(reasons.len(), errors.len(), "two variants share a reason");
    }
}
