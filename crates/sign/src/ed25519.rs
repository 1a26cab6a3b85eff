//! Ed25519 (RFC 8032) signing with ring and strict verification.
//!
//! Signing uses ring; a message signed as a stream (see
//! [`Ed25519Signer::stream_signer`]) is signed from the same seed by
//! `ed25519_stream`, to the same bytes. Verification is deliberately stricter than RFC 8032
//! §5.1.7 demands, so that exactly one signature bytestring is valid for a
//! given key and message and no key is valid for many messages at once:
//! wrong lengths, a non-canonical S (S ≥ ℓ), non-canonical point encodings of
//! the public key or of R, and points of small order (as public key or as R)
//! are all refused, each with its own [`SignError`] variant. The final
//! equation check is ed25519-dalek's `verify_strict` (cofactorless).

use std::fmt;
use std::sync::Arc;

use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use ed25519_dalek::{Signature, VerifyingKey};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair as _};

use crate::ed25519_hedged::Ed25519HedgedSigner;
use crate::ed25519_stream::{Ed25519StreamSigner, ExpandedKey, SEED_LEN};
use crate::error::SignError;
use crate::key_id::KeyId;
use crate::pem;

/// Length of an Ed25519 public key.
pub const ED25519_PUBLIC_KEY_LEN: usize = 32;

/// Length of an Ed25519 signature.
pub const ED25519_SIGNATURE_LEN: usize = 64;

/// DER prefix of an RFC 8410 SubjectPublicKeyInfo for Ed25519:
/// SEQUENCE(42) { SEQUENCE(5) { OID 1.3.101.112 }, BIT STRING(33) { 0 unused bits, key } }.
const SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The AlgorithmIdentifier part of [`SPKI_PREFIX`] (bytes 2..9): id-Ed25519, no parameters.
const ED25519_ALGORITHM_ID: [u8; 7] = [0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70];

/// DER prefix of an RFC 8410 OneAsymmetricKey v1 (PKCS#8 v1, no public key) for Ed25519.
const PKCS8_V1_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// Where the 32-byte seed sits in a PKCS#8 document ring accepts, v1 or
/// v2 alike: SEQUENCE { INTEGER version, AlgorithmIdentifier(id-Ed25519),
/// OCTET STRING { OCTET STRING(32) seed } ...}. Bytes 12..16 are the two
/// OCTET STRING headers.
const PKCS8_SEED_AT: usize = 16;

/// An Ed25519 private key with the id it is published under.
///
/// `Debug` prints the key id and the public key only.
pub struct Ed25519Signer {
    key_id: KeyId,
    key_pair: Ed25519KeyPair,
    /// The same key expanded, for streamed signatures.
    expanded: Arc<ExpandedKey>,
}

impl Ed25519Signer {
    /// Loads a PKCS#8 DER private key (RFC 8410).
    ///
    /// A v2 document (with the public key) is checked for consistency by ring;
    /// a v1 document, the form OpenSSL writes, carries only the seed and is
    /// accepted in its one exact 48-byte encoding.
    pub fn from_pkcs8_der(key_id: KeyId, der: &[u8]) -> Result<Self, SignError> {
        let is_v1 = der.len() == PKCS8_V1_PREFIX.len() + 32 && der.starts_with(&PKCS8_V1_PREFIX);
        let key_pair = if is_v1 {
            // v1 has no public key to check: "unchecked" only skips that check.
            Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
        } else {
            Ed25519KeyPair::from_pkcs8(der)
        }
        .map_err(|e| SignError::InvalidPrivateKey {
            reason: e.to_string(),
        })?;
        let expanded = ExpandedKey::from_seed(&pkcs8_seed(der)?);
        // ring parsed the same document: the seed found must be the key it signs with.
        if expanded.public().as_slice() != key_pair.public_key().as_ref() {
            return Err(SignError::InvalidPrivateKey {
                reason: "the seed does not derive the document's public key".to_owned(),
            });
        }
        Ok(Self {
            key_id,
            key_pair,
            expanded: Arc::new(expanded),
        })
    }

    /// Loads a PEM `PRIVATE KEY` document holding PKCS#8 (see [`Ed25519Signer::from_pkcs8_der`]).
    pub fn from_pkcs8_pem(key_id: KeyId, pem_text: &str) -> Result<Self, SignError> {
        let der = pem::decode(pem_text, "PRIVATE KEY")?;
        Self::from_pkcs8_der(key_id, &der)
    }

    /// Generates a fresh key pair and returns the signer with its PKCS#8 v2 DER encoding.
    pub fn generate(key_id: KeyId) -> Result<(Self, Vec<u8>), SignError> {
        let document = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| SignError::Random)?;
        let der = document.as_ref().to_vec();
        let signer = Self::from_pkcs8_der(key_id, &der)?;
        Ok((signer, der))
    }

    /// The id this key is published under.
    pub fn key_id(&self) -> &KeyId {
        &self.key_id
    }

    /// Signs `message` (pure Ed25519, no prehash).
    pub fn sign(&self, message: &[u8]) -> [u8; ED25519_SIGNATURE_LEN] {
        let mut out = [0u8; ED25519_SIGNATURE_LEN];
        // An Ed25519 signature is always 64 bytes, so the lengths match.
        out.copy_from_slice(self.key_pair.sign(message).as_ref());
        out
    }

    /// Starts a pure Ed25519 signature over a message given in pieces,
    /// never held whole: the exact signature [`sign`](Self::sign) makes
    /// over the concatenation (see [`Ed25519StreamSigner`]).
    pub fn stream_signer(&self) -> Ed25519StreamSigner {
        Ed25519StreamSigner::new(Arc::clone(&self.expanded))
    }

    /// Starts a pure Ed25519 signature over a message given in pieces, in
    /// one pass: the nonce is drawn from fresh randomness instead of the
    /// message (see [`Ed25519HedgedSigner`]), so the signature verifies as
    /// any other but differs from [`sign`](Self::sign)'s, and from one call
    /// to the next.
    ///
    /// Errors: [`SignError::Random`] when the system generator fails.
    pub fn hedged_stream_signer(&self) -> Result<Ed25519HedgedSigner, SignError> {
        Ed25519HedgedSigner::new(Arc::clone(&self.expanded))
    }

    /// Signs the message that `source` hands, in pieces, to the sink it
    /// receives; `source` is called twice and must hand the same bytes both
    /// times. Equal to [`sign`](Self::sign) of the concatenation.
    ///
    /// Errors: [`SignError::StreamReplay`] when the second call fails,
    /// [`SignError::StreamReplayMismatch`] when it hands other bytes.
    /// A failing first call is returned as [`SignError::StreamReplay`] too.
    pub fn sign_stream<F>(&self, mut source: F) -> Result<[u8; ED25519_SIGNATURE_LEN], SignError>
    where
        F: FnMut(&mut dyn FnMut(&[u8])) -> std::io::Result<()>,
    {
        let mut stream = self.stream_signer();
        source(&mut |bytes: &[u8]| stream.update(bytes))
            .map_err(|source| SignError::StreamReplay { source })?;
        Ok(stream.finish(|sink| source(sink))?.signature)
    }

    /// The 32-byte public key.
    pub fn public_key(&self) -> [u8; ED25519_PUBLIC_KEY_LEN] {
        let mut out = [0u8; ED25519_PUBLIC_KEY_LEN];
        // An Ed25519 public key is always 32 bytes, so the lengths match.
        out.copy_from_slice(self.key_pair.public_key().as_ref());
        out
    }

    /// The public key as an RFC 8410 SubjectPublicKeyInfo in DER.
    pub fn public_key_spki_der(&self) -> Vec<u8> {
        ed25519_public_key_to_spki_der(&self.public_key())
    }

    /// The public key as a PEM `PUBLIC KEY` document (SubjectPublicKeyInfo, RFC 8410).
    pub fn public_key_pem(&self) -> String {
        pem::encode(&self.public_key_spki_der(), "PUBLIC KEY")
    }
}

impl fmt::Debug for Ed25519Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let public: String = self.public_key().iter().map(|b| format!("{b:02x}")).collect();
        f.debug_struct("Ed25519Signer")
            .field("key_id", &self.key_id.as_str())
            .field("public_key", &public)
            .finish_non_exhaustive()
    }
}

/// The seed of a PKCS#8 Ed25519 document that ring has accepted (v1 or v2).
fn pkcs8_seed(der: &[u8]) -> Result<[u8; SEED_LEN], SignError> {
    let headers_ok = der.get(5..12) == Some(&ED25519_ALGORITHM_ID[..])
        && der.get(12..PKCS8_SEED_AT) == Some(&[0x04, 0x22, 0x04, 0x20][..]);
    der.get(PKCS8_SEED_AT..PKCS8_SEED_AT + SEED_LEN)
        .filter(|_| headers_ok)
        .and_then(|seed| <[u8; SEED_LEN]>::try_from(seed).ok())
        .ok_or_else(|| SignError::InvalidPrivateKey {
            reason: "the pkcs#8 document does not hold the seed where rfc 8410 places it".to_owned(),
        })
}

/// Encodes a 32-byte Ed25519 public key as its RFC 8410 SubjectPublicKeyInfo
/// in DER (44 bytes), the one encoding [`ed25519_public_key_from_spki_der`] accepts.
pub fn ed25519_public_key_to_spki_der(public_key: &[u8; ED25519_PUBLIC_KEY_LEN]) -> Vec<u8> {
    let mut der = SPKI_PREFIX.to_vec();
    der.extend_from_slice(public_key);
    der
}

/// Extracts the 32-byte key from an RFC 8410 SubjectPublicKeyInfo in DER.
///
/// Strict: the AlgorithmIdentifier must be exactly 1.3.101.112 with absent
/// parameters, the encoding exactly the 44 DER bytes RFC 8410 defines. The key
/// itself is returned unchecked; [`verify_ed25519_strict`] checks it.
pub fn ed25519_public_key_from_spki_der(der: &[u8]) -> Result<[u8; ED25519_PUBLIC_KEY_LEN], SignError> {
    if der.get(2..9) != Some(&ED25519_ALGORITHM_ID[..]) {
        // Distinguish "some other algorithm" (or Ed25519 with parameters) from
        // bytes that are not an SPKI at all.
        return Err(
            if der.len() > 9 && der.first() == Some(&0x30) && der.get(2) == Some(&0x30) {
                SignError::SpkiNotEd25519
            } else {
                SignError::SpkiMalformed { len: der.len() }
            },
        );
    }
    if der.len() != SPKI_PREFIX.len() + ED25519_PUBLIC_KEY_LEN || !der.starts_with(&SPKI_PREFIX) {
        return Err(SignError::SpkiMalformed { len: der.len() });
    }
    let mut key = [0u8; ED25519_PUBLIC_KEY_LEN];
    key.copy_from_slice(&der[SPKI_PREFIX.len()..]);
    Ok(key)
}

/// Extracts the 32-byte key from a PEM `PUBLIC KEY` document (see [`ed25519_public_key_from_spki_der`]).
pub fn ed25519_public_key_from_pem(pem_text: &str) -> Result<[u8; ED25519_PUBLIC_KEY_LEN], SignError> {
    let der = pem::decode(pem_text, "PUBLIC KEY")?;
    ed25519_public_key_from_spki_der(&der)
}

/// Verifies an Ed25519 signature strictly (see the module documentation).
///
/// Checks in order, each with its own error: lengths; the public key decodes,
/// is canonically encoded and not of small order; S < ℓ; R decodes, is
/// canonically encoded and not of small order; then the verification equation.
pub fn verify_ed25519_strict(public_key: &[u8], message: &[u8], signature: &[u8]) -> Result<(), SignError> {
    let pk: &[u8; ED25519_PUBLIC_KEY_LEN] =
        public_key.try_into().map_err(|_| SignError::PublicKeyLength {
            len: public_key.len(),
        })?;
    let sig: &[u8; ED25519_SIGNATURE_LEN] = signature
        .try_into()
        .map_err(|_| SignError::SignatureLength { len: signature.len() })?;

    let a = decode_point(pk).ok_or(SignError::PublicKeyNotOnCurve)?;
    if a.compress().as_bytes() != pk {
        return Err(SignError::NonCanonicalPublicKey);
    }
    if a.is_small_order() {
        return Err(SignError::WeakPublicKey);
    }

    let mut s = [0u8; 32];
    s.copy_from_slice(&sig[32..]);
    if bool::from(Scalar::from_canonical_bytes(s).is_none()) {
        return Err(SignError::NonCanonicalS);
    }

    let mut r_bytes = [0u8; 32];
    r_bytes.copy_from_slice(&sig[..32]);
    let r = decode_point(&r_bytes).ok_or(SignError::SignatureRNotOnCurve)?;
    if r.compress().as_bytes() != &r_bytes {
        return Err(SignError::NonCanonicalR);
    }
    if r.is_small_order() {
        return Err(SignError::SmallOrderR);
    }

    let key = VerifyingKey::from_bytes(pk).map_err(|_| SignError::PublicKeyNotOnCurve)?;
    // Redundant with the small-order check above; kept as a second, independent guard.
    if key.is_weak() {
        return Err(SignError::WeakPublicKey);
    }
    key.verify_strict(message, &Signature::from_bytes(sig))
        .map_err(|_| SignError::SignatureMismatch)
}

fn decode_point(bytes: &[u8; 32]) -> Option<EdwardsPoint> {
    CompressedEdwardsY(*bytes).decompress()
}
