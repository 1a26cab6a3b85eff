//! Verification of a stored release: everything recomputed, every failure listed.

use soma_sign::{DsseEnvelope, HmacKeyring, SignError, sha256};

use crate::error::ReleaseError;
use crate::manifest::{Manifest, PAYLOAD_TYPE};
use crate::publisher::PublisherKey;

/// Everything read back from the registry's storage for one release.
#[derive(Debug, Clone, Copy)]
pub struct Stored<'a> {
    /// The stored canonical manifest bytes.
    pub manifest: &'a [u8],
    /// The stored SHA-256 of the manifest.
    pub manifest_sha256: &'a [u8],
    /// Id of the registry HMAC key that sealed the release.
    pub hmac_key_id: &'a str,
    /// The registry's HMAC-SHA256 over the manifest digest.
    pub hmac: &'a [u8],
    /// The publisher's DSSE envelope.
    pub envelope: &'a DsseEnvelope,
    /// When the release was published (Unix nanoseconds).
    pub published_at_nanos: i64,
    /// Whether the release was revoked.
    pub revoked: bool,
    /// The WebAssembly module; `None` verifies the manifest part only.
    pub module: Option<&'a [u8]>,
}

/// One reason a stored release does not verify.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Failure {
    /// The stored manifest bytes no longer parse, validate or are not canonical.
    #[error("stored manifest is invalid")]
    ManifestInvalid(#[source] ReleaseError),
    /// The stored digest is not the SHA-256 of the stored manifest.
    #[error("stored manifest digest does not match the stored manifest")]
    ManifestDigest,
    /// The registry's HMAC over the manifest's digest does not verify (wrong
    /// tag, or an unknown or retired key id).
    #[error("registry hmac does not verify")]
    RegistryHmac(#[source] SignError),
    /// The envelope's payload type is not the release manifest type.
    #[error("envelope payload type is not the release manifest type")]
    EnvelopePayloadType,
    /// The envelope's payload is not the stored manifest (another release's envelope).
    #[error("envelope payload is not the stored manifest")]
    EnvelopePayload,
    /// The envelope does not carry exactly one signature.
    #[error("envelope carries {count} signatures, exactly one is required")]
    EnvelopeSignatureCount {
        /// How many it carries.
        count: usize,
    },
    /// No publisher key, or one whose id is not the envelope's keyid or not derived from the key.
    #[error("publisher key is unknown")]
    PublisherUnknown,
    /// The publisher's signature does not verify under the publisher key.
    #[error("publisher signature does not verify")]
    PublisherSignature(#[source] SignError),
    /// The publisher key was retired at or before the publication.
    #[error("publisher key was retired at or before publication")]
    PublisherRetired,
    /// The module's length is not the manifest's `module_size`.
    #[error("module is {actual} bytes, the manifest's module_size is {expected}")]
    ModuleSize {
        /// `module_size` from the manifest.
        expected: u64,
        /// The module's length.
        actual: u64,
    },
    /// The module's SHA-256 is not the manifest's `module_sha256`.
    #[error("module sha-256 does not match the manifest")]
    ModuleDigest,
    /// The release is revoked.
    #[error("release is revoked")]
    Revoked,
}

impl Failure {
    /// The stable snake_case name of the failure (`manifest_digest`, `registry_hmac`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Self::ManifestInvalid(_) => "manifest_invalid",
            Self::ManifestDigest => "manifest_digest",
            Self::RegistryHmac(_) => "registry_hmac",
            Self::EnvelopePayloadType => "envelope_payload_type",
            Self::EnvelopePayload => "envelope_payload",
            Self::EnvelopeSignatureCount { .. } => "envelope_signature_count",
            Self::PublisherUnknown => "publisher_unknown",
            Self::PublisherSignature(_) => "publisher_signature",
            Self::PublisherRetired => "publisher_retired",
            Self::ModuleSize { .. } => "module_size",
            Self::ModuleDigest => "module_digest",
            Self::Revoked => "revoked",
        }
    }
}

/// Verifies a stored release against the publisher key and the registry
/// keyring, recomputing everything from the stored bytes, and returns every
/// failure found (it does not stop at the first). An empty list means valid.
///
/// Checked, in the order listed:
/// - `manifest_invalid`: the stored bytes parse as a canonical [`Manifest`];
/// - `manifest_digest`: the stored digest is their SHA-256;
/// - `registry_hmac`: the HMAC verifies over the *recomputed* digest, so a
///   changed manifest fails here even when its stored digest was updated too;
/// - `envelope_payload_type`, `envelope_payload` (the envelope signs exactly
///   the stored bytes: no mixing of two releases), `envelope_signature_count`;
/// - `publisher_unknown`: a publisher key is given, its id is derived from
///   its public key, and the envelope's one signature names it;
/// - `publisher_signature`: strict Ed25519 over the PAE (checked when the
///   publisher is known);
/// - `publisher_retired`: `retired_at_nanos <= published_at_nanos`;
/// - `module_size`, `module_digest` (when the module is given and the
///   manifest parsed);
/// - `revoked`.
pub fn verify(stored: &Stored<'_>, publisher: Option<&PublisherKey>, keyring: &HmacKeyring) -> Vec<Failure> {
    let mut failures = Vec::new();

    let manifest = match Manifest::parse(stored.manifest) {
        Ok(manifest) => Some(manifest),
        Err(e) => {
            failures.push(Failure::ManifestInvalid(e));
            None
        }
    };
    let digest = sha256(stored.manifest);
    if stored.manifest_sha256 != digest {
        failures.push(Failure::ManifestDigest);
    }
    if let Err(e) = keyring.verify(stored.hmac_key_id, &digest, stored.hmac) {
        failures.push(Failure::RegistryHmac(e));
    }

    let envelope = stored.envelope;
    if envelope.payload_type != PAYLOAD_TYPE {
        failures.push(Failure::EnvelopePayloadType);
    }
    if envelope.payload != stored.manifest {
        failures.push(Failure::EnvelopePayload);
    }
    if envelope.signatures.len() != 1 {
        failures.push(Failure::EnvelopeSignatureCount {
            count: envelope.signatures.len(),
        });
    }
    match publisher {
        Some(key) if key.id_matches_key() && envelope.signatures.iter().any(|s| s.keyid == key.key_id) => {
            if let Err(e) = envelope.verify_ed25519(&key.key_id, &key.public_key) {
                failures.push(Failure::PublisherSignature(e));
            }
            if key.is_retired_at(stored.published_at_nanos) {
                failures.push(Failure::PublisherRetired);
            }
        }
        Some(key) => {
            failures.push(Failure::PublisherUnknown);
            if key.is_retired_at(stored.published_at_nanos) {
                failures.push(Failure::PublisherRetired);
            }
        }
        None => failures.push(Failure::PublisherUnknown),
    }

    if let (Some(module), Some(manifest)) = (stored.module, &manifest) {
        let actual = module.len() as u64;
        if actual != manifest.module_size() {
            failures.push(Failure::ModuleSize {
                expected: manifest.module_size(),
                actual,
            });
        }
        if sha256(module) != *manifest.module_sha256() {
            failures.push(Failure::ModuleDigest);
        }
    }
    if stored.revoked {
        failures.push(Failure::Revoked);
    }
    failures
}
