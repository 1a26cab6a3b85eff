//! [`ClaimsVerifier`]: a backend's side of the envelope.
//!
//! The gateway reuses an envelope for every request with the same claims
//! while it is young (requests admitted without a moderation decision), so a
//! backend sees the same envelope many times: the verdict of its signature
//! check is kept, keyed by the exact bytes of both metadata entries as
//! received ([`VerifiedEnvelopes`]). Everything else still runs on every
//! request: the peer must be the gateway, each entry must be present exactly
//! once, the audience must be this service, and the time checks (issued at,
//! lifetime, expiry) are made against the request's `now`. Only envelopes
//! that passed the signature check and carry no request id and no moderation
//! decision (the reusable kind) are kept; one byte changed anywhere in
//! either entry is another key, verified in full.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
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

/// Most envelopes whose signature verdict a verifier keeps. The gateway
/// makes one reusable envelope per distinct claims and audience every half
/// lifetime (30 s), so this covers thousands of active subjects; when it is
/// full, expired envelopes are dropped first, then all of them.
pub const VERIFIED_ENVELOPES_CAPACITY: usize = 4096;

/// What a backend checks before it trusts the claims on a request: who sent
/// them (the gateway, over mTLS), who signed them (a known gateway key), whom
/// they are for (this service) and when (a short, current window).
pub struct ClaimsVerifier {
    gateway_id: SpiffeId,
    /// This service's SPIFFE ID in canonical string form: the required audience.
    audience: String,
    keys: HashMap<String, [u8; ED25519_PUBLIC_KEY_LEN]>,
    verified: VerifiedEnvelopes,
    counts: EnvelopeCounts,
}

/// How a verifier's envelopes were checked, shared with whoever reports
/// them (a service's `/metrics`): counters only, never claims or keys.
#[derive(Clone, Debug, Default)]
pub struct EnvelopeCounts(Arc<Counts>);

#[derive(Debug, Default)]
struct Counts {
    /// Signatures checked in full (the Ed25519 verification ran).
    signature_checks: AtomicU64,
    /// Envelopes whose signature verdict was taken from those verified.
    reuses: AtomicU64,
}

impl EnvelopeCounts {
    /// Envelopes whose signature was verified in full (whatever the
    /// outcome): one per envelope sealed for a single request, one per
    /// reusable envelope the first time it is seen.
    pub fn signature_checks(&self) -> u64 {
        self.0.signature_checks.load(Ordering::Relaxed)
    }

    /// Requests whose envelope's signature verdict was taken from the
    /// envelopes already verified.
    pub fn reuses(&self) -> u64 {
        self.0.reuses.load(Ordering::Relaxed)
    }
}

/// Envelopes whose signature (by a key of this verifier, which never
/// changes its keys) verified over exactly these bytes and whose audience is
/// this service, keyed by `claims entry || 0x00 || signature entry` as
/// received (base64 text: no entry can hold the separator, so no two pairs
/// of entries share a key). Only a verified envelope is ever inserted.
#[derive(Default)]
struct VerifiedEnvelopes {
    entries: Mutex<HashMap<Box<[u8]>, VerifiedClaims>>,
}

impl VerifiedEnvelopes {
    fn key(claims_entry: &HeaderValue, signature_entry: &HeaderValue) -> Vec<u8> {
        let (claims, signature) = (claims_entry.as_bytes(), signature_entry.as_bytes());
        let mut key = Vec::with_capacity(claims.len() + 1 + signature.len());
        key.extend_from_slice(claims);
        key.push(0);
        key.extend_from_slice(signature);
        key
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Box<[u8]>, VerifiedClaims>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn get(&self, key: &[u8]) -> Option<VerifiedClaims> {
        self.lock().get(key).cloned()
    }

    /// Keeps `claims` under `key` when it is of the reusable kind (no
    /// request id, no moderation decision: one sealed for a single request
    /// is never seen again, and would only push reusable ones out).
    fn insert(&self, key: Vec<u8>, claims: &VerifiedClaims, now: i64) {
        if !claims.request_id.is_empty() || !claims.moderation_decision_id.is_empty() {
            return;
        }
        let mut entries = self.lock();
        if entries.len() >= VERIFIED_ENVELOPES_CAPACITY {
            entries.retain(|_, kept| kept.expires_at > now);
            if entries.len() >= VERIFIED_ENVELOPES_CAPACITY {
                entries.clear();
            }
        }
        entries.insert(key.into_boxed_slice(), claims.clone());
    }
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
            verified: VerifiedEnvelopes::default(),
            counts: EnvelopeCounts::default(),
        }
    }

    /// This verifier's counters (signatures verified in full, verdicts
    /// reused: see the module's documentation), as a handle that outlives a
    /// borrow of it.
    pub fn counts(&self) -> EnvelopeCounts {
        self.counts.clone()
    }

    /// Envelopes whose signature verdict is kept now (at most
    /// [`VERIFIED_ENVELOPES_CAPACITY`]).
    pub fn verified_envelopes(&self) -> usize {
        self.verified.lock().len()
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
        let key = VerifiedEnvelopes::key(claims_entry, signature_entry);
        let claims = match self.verified.get(&key) {
            Some(claims) => {
                self.counts.0.reuses.fetch_add(1, Ordering::Relaxed);
                claims
            }
            None => {
                let claims = self.verified_signature(claims_entry, signature_entry)?;
                if claims.audience == self.audience {
                    self.verified.insert(key, &claims, unix_seconds(now)?);
                }
                claims
            }
        };
        self.current(claims, now)
    }

    /// The claims of an envelope whose signature verifies over the claims
    /// entry's bytes exactly as received, by the key it names.
    fn verified_signature(
        &self,
        claims_entry: &HeaderValue,
        signature_entry: &HeaderValue,
    ) -> Result<VerifiedClaims, AuthError> {
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
        self.counts.0.signature_checks.fetch_add(1, Ordering::Relaxed);
        UnparsedPublicKey::new(&ED25519, public_key)
            .verify(&signing_input(&encoded), &signature)
            .map_err(|_| AuthError::BadSignature)?;
        Ok(claims)
    }

    /// The checks of a signed envelope made at every use: the audience,
    /// then the times against `now`.
    fn current(&self, claims: VerifiedClaims, now: SystemTime) -> Result<Option<VerifiedClaims>, AuthError> {
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
