//! The wire form of a claims envelope: two binary metadata entries, and the
//! exact bytes a signature covers.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use tonic::metadata::{BinaryMetadataValue, MetadataKey, MetadataMap};

use crate::error::AuthError;

/// Metadata key of the protobuf-encoded `VerifiedClaims` (binary metadata).
pub const CLAIMS_METADATA: &str = "soma-claims-bin";

/// Metadata key of the Ed25519 signature over the claims (binary metadata).
pub const SIGNATURE_METADATA: &str = "soma-claims-sig-bin";

/// Longest envelope lifetime (`expires_at - issued_at`) a verifier accepts,
/// and the cap the signer puts on any requested time-to-live.
pub const MAX_ENVELOPE_LIFETIME: Duration = Duration::from_secs(60);

/// How far in the future a verifier accepts an envelope's `issued_at`, for
/// clocks that disagree slightly.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5);

/// Prefix of every signed message: the signature covers
/// `DOMAIN_SEPARATOR || encoded claims`, so that a signature made by the
/// gateway key for any other purpose can never pass as a claims signature.
pub const DOMAIN_SEPARATOR: &[u8] = b"somastack.v1.VerifiedClaims\0";

/// Standard base64 as gRPC binary metadata uses it: tonic sends it without
/// padding, other stacks with; both are accepted. Non-canonical trailing
/// bits are refused.
pub(crate) const METADATA_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// A signed envelope, ready to be attached to an outgoing request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedClaims {
    /// The protobuf-encoded `VerifiedClaims`, exactly as signed.
    pub encoded: Vec<u8>,
    /// Ed25519 signature over `DOMAIN_SEPARATOR || encoded`.
    pub signature: [u8; 64],
}

impl SignedClaims {
    /// Sets both metadata entries on `md`, replacing any already there (so an
    /// envelope a client sent can never travel beside the gateway's own).
    pub fn insert_into(&self, md: &mut MetadataMap) {
        md.insert_bin(
            MetadataKey::from_static(CLAIMS_METADATA),
            BinaryMetadataValue::from_bytes(&self.encoded),
        );
        md.insert_bin(
            MetadataKey::from_static(SIGNATURE_METADATA),
            BinaryMetadataValue::from_bytes(&self.signature),
        );
    }
}

/// The message an envelope signature covers.
pub(crate) fn signing_input(encoded: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(DOMAIN_SEPARATOR.len() + encoded.len());
    message.extend_from_slice(DOMAIN_SEPARATOR);
    message.extend_from_slice(encoded);
    message
}

/// `time` as whole Unix seconds.
pub(crate) fn unix_seconds(time: SystemTime) -> Result<i64, AuthError> {
    let since_epoch = time
        .duration_since(UNIX_EPOCH)
        .map_err(|_| AuthError::ClockOutOfRange)?;
    i64::try_from(since_epoch.as_secs()).map_err(|_| AuthError::ClockOutOfRange)
}
