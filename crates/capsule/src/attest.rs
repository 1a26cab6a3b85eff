//! Attestations: DSSE envelopes whose payload is an in-toto Statement v1
//! over a bundle's digest, signed with Ed25519 by registered publisher keys,
//! t of n of them.

use serde_json::Value;
use soma_release::publisher_key_id;
use soma_sign::{DsseEnvelope, DsseSignature, Ed25519Signer, SignError, pae, verify_ed25519_strict};

use crate::bundle::Bundle;
use crate::error::AttestError;
use crate::statement::{PAYLOAD_TYPE, Statement};

/// The predicate type of a SomaStack capsule review: a publisher's
/// statement that it reviewed the bundle (its predicate is free-form JSON,
/// for example `{"reviewer": "...", "notes": "..."}`).
pub const CAPSULE_REVIEW_PREDICATE_TYPE: &str = "https://somastack.dev/capsule-review/v1";

/// The predicate type of SLSA Provenance v1 (slsa.dev/provenance/v1), for
/// bundles built by a CI system that emits provenance.
pub const SLSA_PROVENANCE_PREDICATE_TYPE: &str = "https://slsa.dev/provenance/v1";

/// The predicate types CapsuleRepo accepts unless configured otherwise.
pub const DEFAULT_ALLOWED_PREDICATE_TYPES: [&str; 2] =
    [CAPSULE_REVIEW_PREDICATE_TYPE, SLSA_PROVENANCE_PREDICATE_TYPE];

/// A publisher key registered for attestations: the same record as a tool
/// release's publisher key (id = [`publisher_key_id`] of the key, the
/// lowercase hex SHA-256 of its SubjectPublicKeyInfo DER; retired at or
/// after `retired_at_nanos`), so one registered publisher signs both.
pub use soma_release::PublisherKey as AttestationKey;

/// Parses a DSSE JSON envelope strictly ([`DsseEnvelope::from_json`]),
/// answering with an attestation reason: `attestation_malformed_base64` for a
/// `payload` or `sig` that is not base64, `attestation_envelope_invalid` for
/// any other departure from the DSSE JSON shape.
pub fn envelope_from_json(json: &[u8]) -> Result<DsseEnvelope, AttestError> {
    DsseEnvelope::from_json(json).map_err(|source| match source {
        SignError::DsseBase64 { member } => AttestError::MalformedBase64 { member },
        source => AttestError::EnvelopeInvalid { source },
    })
}

/// Verifies an attestation over the bundle whose digest is `bundle_digest`,
/// at the instant `at_nanos` (Unix nanoseconds) of submission, and returns
/// the statement it carries.
///
/// Signatures first, the statement only after (DSSE: never parse what is
/// not yet authenticated). In order:
/// 1. `threshold` ≥ 1 (`attestation_threshold_invalid`), and `payloadType`
///    is [`PAYLOAD_TYPE`] (`attestation_payload_type`).
/// 2. Each signature, in the envelope's order: its `keyid` (an
///    unauthenticated hint) selects a key of `keys` whose id is derived from
///    its public key; a signature naming no such key is ignored. A key
///    already counted is not checked again: one key counts once, however
///    often it signs. The signature is verified strictly
///    ([`verify_ed25519_strict`]) over `PAE(payloadType, payload)` of the
///    payload bytes *as sent*, never a re-serialised payload. A valid
///    signature of a key retired at or before `at_nanos` does not count.
///    Once `threshold` distinct keys count, the remaining signatures are not
///    examined.
/// 3. Below the threshold, the one reason that explains it:
///    `attestation_key_unknown` when no signature names a registered key;
///    `attestation_key_retired` when the retired keys' valid signatures are
///    what is missing (with them the threshold would be met);
///    `attestation_signature_invalid` when not one signature verified (a
///    signature over another payload, alone, ends here, with the strict
///    verifier's reason as source); otherwise `attestation_below_threshold`
///    (for example 1 valid of 2 required, the other signature over another
///    payload or the same key signing twice).
/// 4. The statement ([`Statement::parse`]: `attestation_malformed`,
///    `attestation_statement_type`), its `predicateType` in
///    `allowed_predicate_types` (`attestation_predicate_type`), and a
///    subject whose `digest.sha256` is `bundle_digest`
///    (`attestation_subject_mismatch`).
pub fn verify_attestation(
    envelope: &DsseEnvelope,
    bundle_digest: &[u8; 32],
    keys: &[AttestationKey],
    threshold: usize,
    allowed_predicate_types: &[&str],
    at_nanos: i64,
) -> Result<Statement, AttestError> {
    if threshold == 0 {
        return Err(AttestError::ThresholdInvalid);
    }
    if envelope.payload_type != PAYLOAD_TYPE {
        return Err(AttestError::PayloadType);
    }
    let message = pae(PAYLOAD_TYPE, &envelope.payload);
    let mut tally = Tally::default();
    for signature in &envelope.signatures {
        tally.examine(signature, keys, &message, at_nanos);
        if tally.counted.len() >= threshold {
            break;
        }
    }
    tally.decide(threshold)?;

    let statement = Statement::parse(&envelope.payload)?;
    if !allowed_predicate_types.contains(&statement.predicate_type()) {
        return Err(AttestError::PredicateType);
    }
    if !statement.names_sha256(bundle_digest) {
        return Err(AttestError::SubjectMismatch);
    }
    Ok(statement)
}

/// Makes the attestation `soma capsule attest` writes: an in-toto Statement
/// v1 with one subject, `name@version` of `bundle` with its SHA-256, of type
/// `predicate_type` with `predicate` (a JSON object), serialised in RFC 8785
/// canonical form and signed over the DSSE PAE by each signer in turn; each
/// signature's `keyid` is [`publisher_key_id`] of the signer's public key.
///
/// Errors: `attestation_no_signer` for an empty `signers`,
/// `attestation_predicate_invalid` for an empty predicate type or a
/// predicate that is not a JSON object (or too deeply nested).
pub fn attest(
    bundle: &Bundle,
    predicate_type: &str,
    predicate: Value,
    signers: &[&Ed25519Signer],
) -> Result<DsseEnvelope, AttestError> {
    if signers.is_empty() {
        return Err(AttestError::NoSigner);
    }
    if predicate_type.is_empty() {
        return Err(AttestError::PredicateInvalid {
            reason: "the predicate type is empty",
        });
    }
    let Value::Object(predicate) = predicate else {
        return Err(AttestError::PredicateInvalid {
            reason: "the predicate is not a json object",
        });
    };
    let payload = Statement::canonical_json(
        &bundle.subject_name(),
        &bundle.digest(),
        predicate_type,
        predicate,
    )?;
    let message = pae(PAYLOAD_TYPE, &payload);
    let signatures = signers
        .iter()
        .map(|signer| DsseSignature {
            keyid: publisher_key_id(&signer.public_key()),
            sig: signer.sign(&message).to_vec(),
        })
        .collect();
    Ok(DsseEnvelope {
        payload_type: PAYLOAD_TYPE.to_owned(),
        payload,
        signatures,
    })
}

/// What the signatures of one envelope have shown so far.
#[derive(Debug, Default)]
struct Tally<'k> {
    /// Some signature named a registered key.
    named_known: bool,
    /// Ids of active keys whose signature verified (each once).
    counted: Vec<&'k str>,
    /// Ids of retired keys whose signature verified (each once).
    retired: Vec<&'k str>,
    /// The strict verifier's reason for the first signature that did not verify.
    first_failure: Option<SignError>,
}

impl<'k> Tally<'k> {
    fn examine(
        &mut self,
        signature: &DsseSignature,
        keys: &'k [AttestationKey],
        message: &[u8],
        at_nanos: i64,
    ) {
        // The id is recomputed from the key only for the entry the hint
        // selects, so a stored id re-pointed at another key never matches.
        let Some(key) = keys
            .iter()
            .find(|k| k.key_id == signature.keyid && k.key_id == publisher_key_id(&k.public_key))
        else {
            return;
        };
        self.named_known = true;
        let id = key.key_id.as_str();
        if self.counted.contains(&id) || self.retired.contains(&id) {
            return;
        }
        match verify_ed25519_strict(&key.public_key, message, &signature.sig) {
            Ok(()) if key.is_retired_at(at_nanos) => self.retired.push(id),
            Ok(()) => self.counted.push(id),
            Err(e) => {
                self.first_failure.get_or_insert(e);
            }
        }
    }

    fn decide(self, threshold: usize) -> Result<(), AttestError> {
        if self.counted.len() >= threshold {
            return Ok(());
        }
        if !self.named_known {
            return Err(AttestError::KeyUnknown);
        }
        if !self.retired.is_empty() && self.counted.len() + self.retired.len() >= threshold {
            return Err(AttestError::KeyRetired);
        }
        match self.first_failure {
            Some(source) if self.counted.is_empty() && self.retired.is_empty() => {
                Err(AttestError::SignatureInvalid { source })
            }
            _ => Err(AttestError::BelowThreshold {
                valid: self.counted.len(),
                threshold,
            }),
        }
    }
}
