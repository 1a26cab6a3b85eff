//! [`ClaimsVerifier`]: a backend's side of the envelope.

use std::collections::HashMap;
use std::fmt;
use std::time::SystemTime;

use base64::engine::Engine as _;
use http::{HeaderMap, HeaderValue};
use prost::Message as _;
use ring::signature::{ED25519, UnparsedPublicKey};
use soma_identity::SpiffeId;
use soma_proto::v1::VerifiedClaims;
use tracing::debug;

use crate::envelope::{
    CLAIMS_METADATA, MAX_CLOCK_SKEW, MAX_ENVELOPE_LIFETIME, METADATA_BASE64, SIGNATURE_METADATA,
    signing_input, unix_seconds,
};
use crate::error::AuthError;
use crate::keys::{ED25519_PUBLIC_KEY_LEN, decode_pem, ed25519_public_key_from_spki};

/// Longest key id echoed back in [`AuthError::UnknownKey`].
const MAX_REPORTED_KEY_ID: usize = 128;

/// What a backend checks before it trusts the claims on a request: who sent
/// them (the gateway, over mTLS), who signed them (a known gateway key), whom
/// they are for (this service) and when (a short, current window).
pub struct ClaimsVerifier {
    gateway_id: SpiffeId,
    /// This service's SPIFFE ID in canonical string form: the required audience.
    audience: String,
    keys: HashMap<String, [u8; ED25519_PUBLIC_KEY_LEN]>,
}

impl ClaimsVerifier {
    /// `gateway_id`: the only peer whose envelopes are accepted; `own_id`:
    /// the required audience; `keys`: key id → raw Ed25519 public key (a key
    /// id listed twice keeps its last key).
    pub fn new(gateway_id: SpiffeId, own_id: SpiffeId, keys: Vec<(String, [u8; 32])>) -> Self {
        Self {
            gateway_id,
            audience: own_id.to_string(),
            keys: keys.into_iter().collect(),
        }
    }

    /// The raw key of a `PUBLIC KEY` PEM block holding an Ed25519
    /// SubjectPublicKeyInfo (as [`ClaimsSigner::public_key_pem`](crate::ClaimsSigner::public_key_pem)
    /// and `openssl pkey -pubout` write it).
    pub fn public_key_from_spki_pem(pem: &str) -> Result<[u8; 32], AuthError> {
        ed25519_public_key_from_spki(&decode_pem(pem, "PUBLIC KEY")?)
    }

    /// Checks the envelope on a request.
    ///
    /// `Ok(None)` when the request carries no envelope at all (neither
    /// entry). Otherwise the claims are returned only when every check holds,
    /// in this order: the mTLS `peer` is the gateway; each entry is present
    /// exactly once and well-formed; the key id is known; the signature
    /// verifies over `DOMAIN_SEPARATOR ||` the claims bytes exactly as
    /// received (never a re-encoding, so no byte the gateway did not sign is
    /// accepted); the audience is this service; `issued_at` is at most
    /// [`MAX_CLOCK_SKEW`] ahead of `now`; the lifetime is positive and at most
    /// [`MAX_ENVELOPE_LIFETIME`]; `now` is before `expires_at`.
    pub fn verify(
        &self,
        peer: Option<&SpiffeId>,
        headers: &HeaderMap,
        now: SystemTime,
    ) -> Result<Option<VerifiedClaims>, AuthError> {
        let result = self.check(peer, headers, now);
        if let Err(error) = &result {
            debug!(reason = error.reason(), %error, "claims envelope refused");
        }
        result
    }

    fn check(
        &self,
        peer: Option<&SpiffeId>,
        headers: &HeaderMap,
        now: SystemTime,
    ) -> Result<Option<VerifiedClaims>, AuthError> {
        let claims_entries: Vec<&HeaderValue> = headers.get_all(CLAIMS_METADATA).iter().collect();
        let signature_entries: Vec<&HeaderValue> = headers.get_all(SIGNATURE_METADATA).iter().collect();
        if claims_entries.is_empty() && signature_entries.is_empty() {
            return Ok(None);
        }

        // The sender first: bytes from any peer but the gateway are not
        // even decoded.
        match peer {
            None => return Err(AuthError::MissingPeerIdentity),
            Some(peer) if *peer != self.gateway_id => {
                return Err(AuthError::NotFromGateway { peer: peer.clone() });
            }
            Some(_) => {}
        }

        let claims_entry = match claims_entries.as_slice() {
            [] => return Err(AuthError::MissingClaims),
            [one] => *one,
            _ => return Err(AuthError::DuplicateClaims),
        };
        let signature_entry = match signature_entries.as_slice() {
            [] => return Err(AuthError::MissingSignature),
            [one] => *one,
            _ => return Err(AuthError::DuplicateSignature),
        };
        let encoded = METADATA_BASE64
            .decode(claims_entry.as_bytes())
            .map_err(|_| AuthError::MalformedClaims)?;
        let signature: [u8; 64] = METADATA_BASE64
            .decode(signature_entry.as_bytes())
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or(AuthError::MalformedSignature)?;

        // Decoded before the signature is checked only to learn the key id;
        // nothing else of it is used until the signature holds.
        let claims = VerifiedClaims::decode(encoded.as_slice()).map_err(|_| AuthError::MalformedClaims)?;
        let public_key = self
            .keys
            .get(&claims.key_id)
            .ok_or_else(|| AuthError::UnknownKey {
                key_id: claims.key_id.chars().take(MAX_REPORTED_KEY_ID).collect(),
            })?;
        UnparsedPublicKey::new(&ED25519, public_key)
            .verify(&signing_input(&encoded), &signature)
            .map_err(|_| AuthError::BadSignature)?;

        if claims.audience != self.audience {
            return Err(AuthError::WrongAudience {
                audience: claims.audience,
            });
        }
        let now = unix_seconds(now)?;
        // Both constants are a few seconds: the casts are exact.
        let skew = MAX_CLOCK_SKEW.as_secs() as i64;
        let max_lifetime = i128::from(MAX_ENVELOPE_LIFETIME.as_secs());
        if claims.issued_at > now.saturating_add(skew) {
            return Err(AuthError::IssuedInFuture);
        }
        // In i128: the difference of two arbitrary signed i64 cannot overflow.
        let lifetime = i128::from(claims.expires_at) - i128::from(claims.issued_at);
        if lifetime <= 0 {
            return Err(AuthError::LifetimeNotPositive);
        }
        if lifetime > max_lifetime {
            return Err(AuthError::LifetimeTooLong);
        }
        if now >= claims.expires_at {
            return Err(AuthError::Expired);
        }
        Ok(Some(claims))
    }
}

// Lists key ids, never key material (public, but noise in logs).
impl fmt::Debug for ClaimsVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut key_ids: Vec<&str> = self.keys.keys().map(String::as_str).collect();
        key_ids.sort_unstable();
        f.debug_struct("ClaimsVerifier")
            .field("gateway_id", &self.gateway_id)
            .field("audience", &self.audience)
            .field("key_ids", &key_ids)
            .finish()
    }
}
