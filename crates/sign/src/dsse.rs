//! DSSE v1, the Dead Simple Signing Envelope (secure-systems-lab/dsse,
//! `protocol.md` and `envelope.md`).
//!
//! A signature covers `PAE(payloadType, payload)`, never the payload alone,
//! so the same bytes signed under one type cannot be replayed as another, and
//! the length prefixes keep `type` and `body` from sliding into each other.
//!
//! Parsing is strict where the specification leaves room: the envelope is
//! I-JSON ([`jcs::parse_strict`]: no duplicate members, no lone surrogates),
//! it carries exactly `payload`, `payloadType` and `signatures` (each
//! signature exactly `keyid` and `sig`; `keyid` may be omitted, as
//! `envelope.md` allows for empty fields, and then reads as `""`), and no
//! other member. Base64 is accepted in both alphabets the protocol requires
//! verifiers to accept, standard and URL-safe, padded or not, but one
//! alphabet per string and with the unused trailing bits zero, so each byte
//! string has at most two accepted spellings. [`DsseEnvelope::to_json`] writes
//! standard padded base64.

use base64::Engine as _;
use base64::alphabet;
use base64::engine::general_purpose::STANDARD;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde_json::{Map, Value};

use crate::ed25519::{Ed25519Signer, verify_ed25519_strict};
use crate::error::SignError;
use crate::jcs;

/// Decoding configuration: padding optional, trailing bits must be zero.
const LENIENT_PADDING: GeneralPurposeConfig = GeneralPurposeConfig::new()
    .with_decode_padding_mode(DecodePaddingMode::Indifferent)
    .with_decode_allow_trailing_bits(false);

/// Standard alphabet (`+/`), padded or not.
const STANDARD_ANY_PAD: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT_PADDING);

/// URL-safe alphabet (`-_`), padded or not.
const URL_SAFE_ANY_PAD: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT_PADDING);

/// A DSSE JSON envelope: a typed payload and its signatures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsseEnvelope {
    /// How to interpret `payload` (authenticated: part of the signed PAE).
    pub payload_type: String,
    /// The serialized body, exactly the bytes that were signed.
    pub payload: Vec<u8>,
    /// Signatures over `PAE(payload_type, payload)`.
    pub signatures: Vec<DsseSignature>,
}

/// One signature of a [`DsseEnvelope`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsseSignature {
    /// Unauthenticated hint naming the key; only ever used to choose which
    /// signature to check against a key the verifier already trusts.
    pub keyid: String,
    /// The signature bytes.
    pub sig: Vec<u8>,
}

/// The DSSE v1 Pre-Authentication Encoding:
/// `"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`, where `LEN` is the
/// byte length in ASCII decimal without leading zeros.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let type_len = payload_type.len().to_string();
    let body_len = payload.len().to_string();
    let mut out =
        Vec::with_capacity(10 + type_len.len() + payload_type.len() + body_len.len() + payload.len());
    out.extend_from_slice(b"DSSEv1 ");
    out.extend_from_slice(type_len.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload_type.as_bytes());
    out.push(b' ');
    out.extend_from_slice(body_len.as_bytes());
    out.push(b' ');
    out.extend_from_slice(payload);
    out
}

impl DsseEnvelope {
    /// Signs `payload` as `payload_type` with Ed25519 over the PAE; the one
    /// signature's `keyid` is the signer's [`KeyId`](crate::KeyId).
    pub fn sign(payload_type: &str, payload: Vec<u8>, signer: &Ed25519Signer) -> Self {
        let sig = signer.sign(&pae(payload_type, &payload)).to_vec();
        Self {
            payload_type: payload_type.to_owned(),
            payload,
            signatures: vec![DsseSignature {
                keyid: signer.key_id().to_string(),
                sig,
            }],
        }
    }

    /// Verifies the signature whose `keyid` is `keyid` with the Ed25519
    /// `public_key`, strictly ([`verify_ed25519_strict`]) over the PAE.
    ///
    /// Errors: [`SignError::DsseNoSignatureForKey`] when no signature names
    /// `keyid`, [`SignError::DsseAmbiguousKeyId`] when several do (the
    /// envelope would otherwise verify by whichever one is tried first), and
    /// the strict verifier's own reason when the signature does not verify.
    pub fn verify_ed25519(&self, keyid: &str, public_key: &[u8]) -> Result<(), SignError> {
        let mut matching = self.signatures.iter().filter(|s| s.keyid == keyid);
        let signature = matching.next().ok_or_else(|| SignError::DsseNoSignatureForKey {
            keyid: keyid.to_owned(),
        })?;
        if matching.next().is_some() {
            return Err(SignError::DsseAmbiguousKeyId {
                keyid: keyid.to_owned(),
            });
        }
        verify_ed25519_strict(
            public_key,
            &pae(&self.payload_type, &self.payload),
            &signature.sig,
        )
    }

    /// Parses a DSSE JSON envelope strictly (see the module documentation).
    pub fn from_json(text: &[u8]) -> Result<Self, SignError> {
        let value = jcs::parse_strict(text)?;
        let Value::Object(mut top) = value else {
            return Err(envelope_error("the envelope is not a json object"));
        };
        refuse_unknown(&top, &["payload", "payloadType", "signatures"])?;
        let payload = decode_base64(&take_string(&mut top, "payload")?, "payload")?;
        let payload_type = take_string(&mut top, "payloadType")?;
        let Some(Value::Array(items)) = top.remove("signatures") else {
            return Err(envelope_error("signatures is missing or not an array"));
        };
        let mut signatures = Vec::with_capacity(items.len());
        for item in items {
            let Value::Object(mut member) = item else {
                return Err(envelope_error("a signature is not a json object"));
            };
            refuse_unknown(&member, &["keyid", "sig"])?;
            // envelope.md: "Empty fields may be omitted" — an absent keyid is the empty hint.
            let keyid = if member.contains_key("keyid") {
                take_string(&mut member, "keyid")?
            } else {
                String::new()
            };
            let sig = decode_base64(&take_string(&mut member, "sig")?, "sig")?;
            signatures.push(DsseSignature { keyid, sig });
        }
        Ok(Self {
            payload_type,
            payload,
            signatures,
        })
    }

    /// The envelope as JSON (RFC 8785 canonical member order, standard padded base64).
    pub fn to_json(&self) -> Vec<u8> {
        let signatures: Vec<Value> = self
            .signatures
            .iter()
            .map(|s| {
                let mut m = Map::new();
                m.insert("keyid".to_owned(), Value::String(s.keyid.clone()));
                m.insert("sig".to_owned(), Value::String(STANDARD.encode(&s.sig)));
                Value::Object(m)
            })
            .collect();
        let mut top = Map::new();
        top.insert(
            "payload".to_owned(),
            Value::String(STANDARD.encode(&self.payload)),
        );
        top.insert("payloadType".to_owned(), Value::String(self.payload_type.clone()));
        top.insert("signatures".to_owned(), Value::Array(signatures));
        // Strings and arrays only, two levels deep: canonicalisation cannot fail.
        jcs::canonicalize(&Value::Object(top)).unwrap_or_default()
    }
}

fn envelope_error(reason: &'static str) -> SignError {
    SignError::DsseEnvelopeFormat { reason }
}

fn refuse_unknown(object: &Map<String, Value>, allowed: &[&str]) -> Result<(), SignError> {
    match object.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(member) => Err(SignError::DsseUnknownMember {
            member: member.clone(),
        }),
        None => Ok(()),
    }
}

fn take_string(object: &mut Map<String, Value>, member: &'static str) -> Result<String, SignError> {
    match object.remove(member) {
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(SignError::DsseMemberType { member }),
        None => Err(SignError::DsseMissingMember { member }),
    }
}

/// Decodes standard or URL-safe base64, padded or not (protocol.md: verifiers
/// MUST accept either alphabet). The alphabet is chosen by the characters
/// present; a string mixing `+/` with `-_` fits neither and is refused.
fn decode_base64(text: &str, member: &'static str) -> Result<Vec<u8>, SignError> {
    let engine = if text.contains(['-', '_']) {
        &URL_SAFE_ANY_PAD
    } else {
        &STANDARD_ANY_PAD
    };
    engine
        .decode(text.as_bytes())
        .map_err(|_| SignError::DsseBase64 { member })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pae_of_empty_type_and_body() {
        assert_eq!(pae("", b""), b"DSSEv1 0  0 ");
    }

    #[test]
    fn base64_alphabets_and_padding() {
        // 0xfb 0xff: "+/8=" in the standard alphabet, "-_8=" in the URL-safe one.
        for text in ["+/8=", "+/8", "-_8=", "-_8"] {
            assert_eq!(decode_base64(text, "payload").unwrap(), [0xfb, 0xff], "{text}");
        }
        for text in ["+_8=", "-/8", "+/9=", "+/8==", "+/8=\n", "+/ 8"] {
            assert!(decode_base64(text, "payload").is_err(), "{text}");
        }
    }
}
