//! Publisher keys and the publisher's DSSE signature over a manifest.

use soma_sign::{
    DsseEnvelope, Ed25519Signer, KeyId, ed25519_public_key_from_pem, ed25519_public_key_to_spki_der, sha256,
};

use crate::error::ReleaseError;
use crate::manifest::{Manifest, PAYLOAD_TYPE};
use soma_sign::hex;

/// The id of a publisher's Ed25519 key: the lowercase hex SHA-256 of its
/// RFC 8410 SubjectPublicKeyInfo DER (what
/// [`Ed25519Signer::public_key_spki_der`] gives, and what
/// `openssl pkey -pubout -outform DER | sha256sum` prints).
///
/// Derived from the key, so an id can never be re-pointed at another key.
pub fn publisher_key_id(public_key: &[u8; 32]) -> String {
    hex::encode(&sha256(&ed25519_public_key_to_spki_der(public_key)))
}

/// A publisher key as the registry holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublisherKey {
    /// [`publisher_key_id`] of `public_key` (checked again at every verification).
    pub key_id: String,
    /// The raw 32-byte Ed25519 public key.
    pub public_key: [u8; 32],
    /// When the key was retired (Unix nanoseconds); releases published at or
    /// after that instant are refused.
    pub retired_at_nanos: Option<i64>,
}

impl PublisherKey {
    /// An active key with its id derived from `public_key`.
    pub fn new(public_key: [u8; 32]) -> Self {
        Self {
            key_id: publisher_key_id(&public_key),
            public_key,
            retired_at_nanos: None,
        }
    }

    /// An active key read from a PEM `PUBLIC KEY` document (RFC 8410 SubjectPublicKeyInfo).
    pub fn from_pem(pem: &str) -> Result<Self, soma_sign::SignError> {
        ed25519_public_key_from_pem(pem).map(Self::new)
    }

    /// Whether the key counts as retired for a release published at `at_nanos`
    /// (retired at or before that instant).
    pub fn is_retired_at(&self, at_nanos: i64) -> bool {
        self.retired_at_nanos.is_some_and(|retired| retired <= at_nanos)
    }

    /// Whether `key_id` is the id derived from `public_key`.
    pub(crate) fn id_matches_key(&self) -> bool {
        self.key_id == publisher_key_id(&self.public_key)
    }
}

/// Signs `manifest`'s canonical bytes in a DSSE envelope of type
/// [`PAYLOAD_TYPE`] with the Ed25519 key in `signer_pkcs8_pem` (a PEM
/// `PRIVATE KEY`, PKCS#8); the signature's `keyid` is [`publisher_key_id`].
pub fn sign_manifest(manifest: &Manifest, signer_pkcs8_pem: &str) -> Result<DsseEnvelope, ReleaseError> {
    // The id is derived from the key itself below; this one only names the signer while it loads.
    let placeholder = KeyId::new("publisher").map_err(|source| ReleaseError::SigningKeyInvalid { source })?;
    let signer = Ed25519Signer::from_pkcs8_pem(placeholder, signer_pkcs8_pem)
        .map_err(|source| ReleaseError::SigningKeyInvalid { source })?;
    Ok(sign_manifest_with(manifest, &signer))
}

/// [`sign_manifest`] with a loaded signer; the `keyid` is
/// [`publisher_key_id`] of the signer's public key, whatever its own key id.
pub fn sign_manifest_with(manifest: &Manifest, signer: &Ed25519Signer) -> DsseEnvelope {
    let mut envelope = DsseEnvelope::sign(PAYLOAD_TYPE, manifest.canonical(), signer);
    let keyid = publisher_key_id(&signer.public_key());
    for signature in &mut envelope.signatures {
        signature.keyid.clone_from(&keyid);
    }
    envelope
}

/// Verifies a publication: the envelope a publisher sends, checked against
/// the publisher key the registry holds, at the instant `at_nanos` of
/// publication. Returns the manifest it carries.
///
/// In order, each with its reason: the payload type; exactly one signature;
/// its `keyid` is the publisher key's id and that id is derived from the key
/// (`publisher_unknown`); the key not retired at `at_nanos`; the strict
/// Ed25519 signature over the PAE; and only then the payload, parsed as a
/// canonical [`Manifest`] (DSSE: verify before parsing).
pub fn verify_publication(
    envelope: &DsseEnvelope,
    publisher: &PublisherKey,
    at_nanos: i64,
) -> Result<Manifest, ReleaseError> {
    if envelope.payload_type != PAYLOAD_TYPE {
        return Err(ReleaseError::EnvelopePayloadType);
    }
    let [signature] = envelope.signatures.as_slice() else {
        return Err(ReleaseError::EnvelopeSignatureCount {
            count: envelope.signatures.len(),
        });
    };
    if signature.keyid != publisher.key_id || !publisher.id_matches_key() {
        return Err(ReleaseError::PublisherUnknown);
    }
    if publisher.is_retired_at(at_nanos) {
        return Err(ReleaseError::PublisherRetired);
    }
    envelope
        .verify_ed25519(&publisher.key_id, &publisher.public_key)
        .map_err(|source| ReleaseError::SignatureInvalid { source })?;
    Manifest::parse(&envelope.payload)
}
