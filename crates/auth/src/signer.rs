//! [`ClaimsSigner`]: the gateway's side of the envelope.

use std::fmt;
use std::time::{Duration, SystemTime};

use prost::Message as _;
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use soma_identity::SpiffeId;
use soma_proto::v1::VerifiedClaims;

use crate::envelope::{MAX_ENVELOPE_LIFETIME, SignedClaims, signing_input, unix_seconds};
use crate::error::AuthError;
use crate::keys::{ED25519_PUBLIC_KEY_LEN, decode_pem, ed25519_spki_der, encode_pem};

/// The gateway's envelope signing key: Ed25519, loaded from PKCS#8, named by
/// a key id that verifiers look up.
pub struct ClaimsSigner {
    key_id: String,
    key_pair: Ed25519KeyPair,
    public_key: [u8; ED25519_PUBLIC_KEY_LEN],
}

impl ClaimsSigner {
    /// Generates a fresh key; returns the signer and the key's PKCS#8 v2 DER
    /// (to be stored by whoever provisions the gateway).
    pub fn generate(key_id: &str) -> Result<(Self, Vec<u8>), AuthError> {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| AuthError::Random)?;
        let der = pkcs8.as_ref().to_vec();
        Ok((Self::from_pkcs8_der(key_id, &der)?, der))
    }

    /// Loads a `PRIVATE KEY` PEM block (PKCS#8, as `openssl genpkey
    /// -algorithm ed25519` writes it).
    pub fn from_pkcs8_pem(key_id: &str, pem: &str) -> Result<Self, AuthError> {
        Self::from_pkcs8_der(key_id, &decode_pem(pem, "PRIVATE KEY")?)
    }

    /// Loads a PKCS#8 DER Ed25519 key, v1 (private key only) or v2 (with the
    /// public key, which must then match the private key).
    pub fn from_pkcs8_der(key_id: &str, der: &[u8]) -> Result<Self, AuthError> {
        if key_id.is_empty() {
            return Err(AuthError::EmptyKeyId);
        }
        // `maybe_unchecked` accepts PKCS#8 v1 too, which OpenSSL writes; a v2
        // document's embedded public key is still checked against the private key.
        let key_pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|rejected| AuthError::InvalidKey(rejected.to_string()))?;
        let public_key = <[u8; ED25519_PUBLIC_KEY_LEN]>::try_from(key_pair.public_key().as_ref())
            .map_err(|_| AuthError::InvalidKey("public key is not 32 bytes".to_owned()))?;
        Ok(Self {
            key_id: key_id.to_owned(),
            key_pair,
            public_key,
        })
    }

    /// The id verifiers know this key by.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The raw 32-byte Ed25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.public_key
    }

    /// The public key as a `PUBLIC KEY` (SubjectPublicKeyInfo) PEM block.
    pub fn public_key_pem(&self) -> String {
        encode_pem(&ed25519_spki_der(&self.public_key), "PUBLIC KEY")
    }

    /// Seals `claims` for the service `audience`.
    ///
    /// Overwrites `key_id` (this key's), `audience`, `issued_at` (= `now`,
    /// whole seconds) and `expires_at` (= `issued_at + ttl`, with `ttl`
    /// capped at [`MAX_ENVELOPE_LIFETIME`] and at least one second), encodes
    /// the claims, and signs `DOMAIN_SEPARATOR || encoded` with Ed25519.
    pub fn sign(
        &self,
        mut claims: VerifiedClaims,
        audience: &SpiffeId,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<SignedClaims, AuthError> {
        let ttl = ttl.min(MAX_ENVELOPE_LIFETIME).as_secs();
        if ttl == 0 {
            return Err(AuthError::TtlTooShort);
        }
        let issued_at = unix_seconds(now)?;
        // `ttl` is at most 60, so the cast is exact.
        let expires_at = issued_at
            .checked_add(ttl as i64)
            .ok_or(AuthError::ClockOutOfRange)?;
        claims.key_id.clone_from(&self.key_id);
        claims.audience = audience.to_string();
        claims.issued_at = issued_at;
        claims.expires_at = expires_at;
        let encoded = claims.encode_to_vec();
        let signature = self.key_pair.sign(&signing_input(&encoded));
        let signature = <[u8; 64]>::try_from(signature.as_ref())
            .map_err(|_| AuthError::InvalidKey("signature is not 64 bytes".to_owned()))?;
        Ok(SignedClaims { encoded, signature })
    }
}

// The private key is never printed.
impl fmt::Debug for ClaimsSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClaimsSigner")
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}
