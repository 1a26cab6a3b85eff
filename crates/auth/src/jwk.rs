//! JSON Web Keys (RFC 7517, RFC 7518 §6, RFC 8037) reduced to the four
//! verification algorithms SomaStack accepts, each decoded once at load.

use std::fmt;
use std::sync::Arc;

use ed25519_dalek::{Signature as Ed25519Signature, Verifier as _, VerifyingKey};
use ring::hmac;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents, UnparsedPublicKey,
};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::error::JwtError;
use crate::jose::{b64url_decode, parse_object};

/// Shortest HS256 key: RFC 7518 §3.2 requires a key at least as long as the
/// hash output.
const MIN_HMAC_KEY_BYTES: usize = 32;
/// Why an `oct` key of zero bytes only is refused.
pub const ALL_ZERO_HMAC_KEY: &str = "oct key is all zero bytes";
/// RSA moduli accepted, in bits (RFC 7518 §3.3 requires 2048 at least; the
/// upper bound is ring's).
const RSA_MODULUS_BITS: std::ops::RangeInclusive<usize> = 2048..=8192;
/// Length of a P-256 coordinate and of an ES256 `r` or `s`.
const P256_COORDINATE_BYTES: usize = 32;
/// Length of an ES256 signature (`r || s`) and of an Ed25519 signature.
const FIXED_SIGNATURE_BYTES: usize = 64;
/// Private-key members of RSA, EC and OKP JWKs; a public key set carrying
/// any of them is a leaked private key and is refused.
const PRIVATE_MEMBERS: [&str; 7] = ["d", "p", "q", "dp", "dq", "qi", "oth"];

/// A JWS algorithm this crate verifies (RFC 7518 §3.1, RFC 8037 §3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum Algorithm {
    /// HMAC with SHA-256.
    #[serde(rename = "HS256")]
    Hs256,
    /// RSASSA-PKCS1-v1_5 with SHA-256, modulus of 2048 to 8192 bits.
    #[serde(rename = "RS256")]
    Rs256,
    /// ECDSA on P-256 with SHA-256, signature `r || s` of 64 bytes.
    #[serde(rename = "ES256")]
    Es256,
    /// Ed25519, verified strictly (canonical `S`, no small-order keys).
    #[serde(rename = "EdDSA")]
    EdDsa,
}

impl Algorithm {
    /// The algorithm a header `alg` names, compared case-sensitively as
    /// RFC 7515 §4.1.1 requires; `None` for `none` and everything else.
    pub fn from_header(alg: &str) -> Option<Self> {
        match alg {
            "HS256" => Some(Self::Hs256),
            "RS256" => Some(Self::Rs256),
            "ES256" => Some(Self::Es256),
            "EdDSA" => Some(Self::EdDsa),
            _ => None,
        }
    }

    /// The `alg` string of this algorithm.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Hs256 => "HS256",
            Self::Rs256 => "RS256",
            Self::Es256 => "ES256",
            Self::EdDsa => "EdDSA",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One verification key. Its algorithm is fixed by its type and curve, so a
/// token can never choose how its signature is checked (RFC 8725 §3.1):
/// an HS256 token naming an RSA key fails before any MAC is computed.
#[derive(Clone)]
pub struct Jwk {
    key_id: Option<String>,
    material: KeyMaterial,
}

/// The decoded key, ready for ring or dalek.
#[derive(Clone)]
enum KeyMaterial {
    Hmac(hmac::Key),
    Rsa {
        components: RsaPublicKeyComponents<Vec<u8>>,
        modulus_bytes: usize,
    },
    Es256(UnparsedPublicKey<Vec<u8>>),
    Ed25519(VerifyingKey),
}

impl Jwk {
    /// Decodes a JWK object. Refused: a `use` other than `sig`; `key_ops`
    /// without `verify`; an `alg` that is not the one its type implies;
    /// private members on an asymmetric key; `oct` keys under 32 bytes, RSA
    /// moduli outside 2048..=8192 bits, curves other than P-256 and Ed25519,
    /// Ed25519 points that do not decode or have small order.
    pub fn from_json(value: &Value) -> Result<Self, JwtError> {
        let obj = value
            .as_object()
            .ok_or(JwtError::InvalidKey("not a json object"))?;
        let kty = str_member(obj, "kty")?.ok_or(JwtError::InvalidKey("kty is missing"))?;
        if let Some(usage) = str_member(obj, "use")?
            && usage != "sig"
        {
            return Err(JwtError::InvalidKey("use is not sig"));
        }
        if let Some(ops) = obj.get("key_ops") {
            let ops = ops
                .as_array()
                .ok_or(JwtError::InvalidKey("key_ops is not an array"))?;
            if !ops.iter().any(|op| op.as_str() == Some("verify")) {
                return Err(JwtError::InvalidKey("key_ops does not allow verify"));
            }
        }
        let key_id = str_member(obj, "kid")?.map(str::to_owned);
        let (algorithm, material) = match kty {
            "oct" => {
                let k = b64_member(obj, "k")?;
                if k.len() < MIN_HMAC_KEY_BYTES {
                    return Err(JwtError::InvalidKey("oct key is shorter than 32 bytes"));
                }
                // A key of zero bytes only is no secret: anyone can MAC with it.
                if k.iter().all(|&b| b == 0) {
                    return Err(JwtError::InvalidKey(ALL_ZERO_HMAC_KEY));
                }
                (
                    Algorithm::Hs256,
                    KeyMaterial::Hmac(hmac::Key::new(hmac::HMAC_SHA256, &k)),
                )
            }
            "RSA" => {
                refuse_private(obj)?;
                let n = b64_member(obj, "n")?;
                let e = b64_member(obj, "e")?;
                let n = strip_leading_zeros(&n);
                let e = strip_leading_zeros(&e);
                let bits = n.len() * 8 - n.first().map_or(8, |b| b.leading_zeros() as usize);
                if !RSA_MODULUS_BITS.contains(&bits) {
                    return Err(JwtError::InvalidKey("rsa modulus is not 2048 to 8192 bits"));
                }
                if e.is_empty() || e.len() > 4 || e[e.len() - 1] & 1 == 0 || e == [1] {
                    return Err(JwtError::InvalidKey("rsa exponent is invalid"));
                }
                let components = RsaPublicKeyComponents {
                    n: n.to_vec(),
                    e: e.to_vec(),
                };
                (
                    Algorithm::Rs256,
                    KeyMaterial::Rsa {
                        components,
                        modulus_bytes: n.len(),
                    },
                )
            }
            "EC" => {
                refuse_private(obj)?;
                if str_member(obj, "crv")? != Some("P-256") {
                    return Err(JwtError::InvalidKey("ec curve is not P-256"));
                }
                let x = b64_member(obj, "x")?;
                let y = b64_member(obj, "y")?;
                if x.len() != P256_COORDINATE_BYTES || y.len() != P256_COORDINATE_BYTES {
                    return Err(JwtError::InvalidKey("p-256 coordinate is not 32 bytes"));
                }
                // SEC 1 uncompressed point, the form ring's ECDSA verifier takes.
                let mut point = Vec::with_capacity(1 + 2 * P256_COORDINATE_BYTES);
                point.push(0x04);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                let key = UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point);
                (Algorithm::Es256, KeyMaterial::Es256(key))
            }
            "OKP" => {
                refuse_private(obj)?;
                if str_member(obj, "crv")? != Some("Ed25519") {
                    return Err(JwtError::InvalidKey("okp curve is not Ed25519"));
                }
                let x = b64_member(obj, "x")?;
                let x = <[u8; 32]>::try_from(x.as_slice())
                    .map_err(|_| JwtError::InvalidKey("ed25519 key is not 32 bytes"))?;
                let key = VerifyingKey::from_bytes(&x)
                    .map_err(|_| JwtError::InvalidKey("ed25519 key is not a curve point"))?;
                if key.is_weak() {
                    return Err(JwtError::InvalidKey("ed25519 key has small order"));
                }
                (Algorithm::EdDsa, KeyMaterial::Ed25519(key))
            }
            _ => return Err(JwtError::InvalidKey("kty is not supported")),
        };
        if let Some(alg) = str_member(obj, "alg")?
            && alg != algorithm.as_str()
        {
            return Err(JwtError::InvalidKey("alg does not match the key type"));
        }
        Ok(Self { key_id, material })
    }

    /// The key id (`kid`), if the JWK has one.
    pub fn key_id(&self) -> Option<&str> {
        self.key_id.as_deref()
    }

    /// The one algorithm this key verifies.
    pub fn algorithm(&self) -> Algorithm {
        match self.material {
            KeyMaterial::Hmac(_) => Algorithm::Hs256,
            KeyMaterial::Rsa { .. } => Algorithm::Rs256,
            KeyMaterial::Es256(_) => Algorithm::Es256,
            KeyMaterial::Ed25519(_) => Algorithm::EdDsa,
        }
    }

    /// Whether this is a shared secret (`oct`) rather than a public key.
    pub(crate) fn is_secret(&self) -> bool {
        matches!(self.material, KeyMaterial::Hmac(_))
    }

    /// Checks `signature` over `signing_input`. The caller has already
    /// matched the token's `alg` against [`Jwk::algorithm`].
    pub(crate) fn verify(&self, signing_input: &[u8], signature: &[u8]) -> Result<(), JwtError> {
        match &self.material {
            // Constant-time comparison of the tags.
            KeyMaterial::Hmac(key) => hmac::verify(key, signing_input, signature),
            KeyMaterial::Rsa {
                components,
                modulus_bytes,
            } => {
                if signature.len() != *modulus_bytes {
                    return Err(JwtError::BadSignature);
                }
                components.verify(&RSA_PKCS1_2048_8192_SHA256, signing_input, signature)
            }
            KeyMaterial::Es256(key) => {
                // Only the fixed `r || s` form (RFC 7518 §3.4), never DER;
                // all zeros is refused outright (r = s = 0 is never valid).
                if signature.len() != FIXED_SIGNATURE_BYTES || signature.iter().all(|&b| b == 0) {
                    return Err(JwtError::BadSignature);
                }
                key.verify(signing_input, signature)
            }
            KeyMaterial::Ed25519(key) => {
                let bytes =
                    <[u8; FIXED_SIGNATURE_BYTES]>::try_from(signature).map_err(|_| JwtError::BadSignature)?;
                // The checks of `verify_strict` at the cost of `verify`: the
                // key's order was checked when it was loaded; `verify` refuses
                // a non-canonical S and compares R byte for byte with the
                // canonical encoding of the recomputed point, so of the
                // small-order R values only the eight canonical encodings
                // could pass, and they are refused here.
                if small_order_encodings().iter().any(|e| e[..] == bytes[..32]) {
                    return Err(JwtError::BadSignature);
                }
                return key
                    .verify(signing_input, &Ed25519Signature::from_bytes(&bytes))
                    .map_err(|_| JwtError::BadSignature);
            }
        }
        .map_err(|_| JwtError::BadSignature)
    }
}

/// The canonical encodings of the eight Edwards25519 points of small order.
fn small_order_encodings() -> &'static [[u8; 32]; 8] {
    static ENCODINGS: std::sync::LazyLock<[[u8; 32]; 8]> = std::sync::LazyLock::new(|| {
        curve25519_dalek::constants::EIGHT_TORSION.map(|point| point.compress().to_bytes())
    });
    &ENCODINGS
}

impl fmt::Debug for Jwk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material: an `oct` key is a secret, and public keys
        // add nothing to a log line that the kid does not.
        f.debug_struct("Jwk")
            .field("kid", &self.key_id)
            .field("alg", &self.algorithm())
            .finish_non_exhaustive()
    }
}

/// The keys of one source, in file order.
pub(crate) type KeyList = Vec<Arc<Jwk>>;

/// Which keys a source may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyKind {
    /// Only `oct` keys: the HMAC secret file.
    Secret,
    /// Only public keys: JWKS files and URLs. A symmetric key published in
    /// a key set would let anyone who can read the set mint tokens.
    Public,
}

impl KeyKind {
    /// The kind of source that can hold a key of `alg`.
    pub(crate) fn of(alg: Algorithm) -> Self {
        match alg {
            Algorithm::Hs256 => Self::Secret,
            Algorithm::Rs256 | Algorithm::Es256 | Algorithm::EdDsa => Self::Public,
        }
    }
}

/// Parses a JWK (only for [`KeyKind::Secret`]) or a JWK Set. Unusable
/// members of a public set are skipped with a warning so one exotic key
/// does not take down the others; a secret file must be entirely valid.
pub(crate) fn parse_key_source(bytes: &[u8], kind: KeyKind) -> Result<KeyList, String> {
    let doc = parse_object(bytes).ok_or("not a json object with unique member names")?;
    let entries: Vec<Value> = match doc.get("keys") {
        Some(Value::Array(keys)) => keys.clone(),
        Some(_) => return Err("keys is not an array".to_owned()),
        None if kind == KeyKind::Secret => vec![Value::Object(doc)],
        None => return Err("not a jwk set".to_owned()),
    };
    let mut keys = KeyList::new();
    for entry in &entries {
        let parsed = Jwk::from_json(entry).and_then(|key| match (kind, key.is_secret()) {
            (KeyKind::Secret, true) | (KeyKind::Public, false) => Ok(key),
            (KeyKind::Secret, false) => Err(JwtError::InvalidKey("not an oct key")),
            (KeyKind::Public, true) => Err(JwtError::InvalidKey("oct key in a public key set")),
        });
        match parsed {
            Ok(key) => {
                let duplicate = key.key_id.is_some() && keys.iter().any(|k| k.key_id == key.key_id);
                if duplicate {
                    // Two keys under one kid make the choice ambiguous; the
                    // first is kept, as a lookup would find it first anyway.
                    tracing::warn!(kid = ?key.key_id, "duplicate kid in key set, later key ignored");
                } else {
                    keys.push(Arc::new(key));
                }
            }
            Err(err) if kind == KeyKind::Secret => return Err(err.to_string()),
            Err(err) => {
                let kid = entry.get("kid").and_then(Value::as_str).unwrap_or("");
                tracing::warn!(kid, error = %err, "key skipped");
            }
        }
    }
    if keys.is_empty() {
        return Err("no usable key".to_owned());
    }
    Ok(keys)
}

/// A string member, `None` when absent; present with another type is an error.
fn str_member<'a>(obj: &'a Map<String, Value>, name: &'static str) -> Result<Option<&'a str>, JwtError> {
    match obj.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(JwtError::InvalidKey("member is not a string")),
    }
}

/// A required member holding strict base64url.
fn b64_member(obj: &Map<String, Value>, name: &'static str) -> Result<Vec<u8>, JwtError> {
    let text = str_member(obj, name)?.ok_or(JwtError::InvalidKey("key member is missing"))?;
    b64url_decode(text.as_bytes()).ok_or(JwtError::InvalidKey("key member is not base64url"))
}

fn refuse_private(obj: &Map<String, Value>) -> Result<(), JwtError> {
    if PRIVATE_MEMBERS.iter().any(|m| obj.contains_key(*m)) {
        return Err(JwtError::InvalidKey("public key carries private members"));
    }
    Ok(())
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every Wycheproof Ed25519 vector (`../shared/vectors/wycheproof/ed25519_test.json`)
    /// gives the same answer through this key type as the file says, which
    /// shows the `verify` + small-order-R path keeps `verify_strict`'s answers.
    #[test]
    fn ed25519_wycheproof_vectors_give_the_files_answers() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/vectors/wycheproof/ed25519_test.json");
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("conformance vectors missing at {}: {e}", path.display()));
        let doc: Value = serde_json::from_str(&text).unwrap();
        let hex = |s: &str| -> Vec<u8> {
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect()
        };
        let mut checked = 0;
        for group in doc["testGroups"].as_array().unwrap() {
            let key = Jwk::from_json(&group["publicKeyJwk"]).unwrap();
            for test in group["tests"].as_array().unwrap() {
                let ok = key
                    .verify(
                        &hex(test["msg"].as_str().unwrap()),
                        &hex(test["sig"].as_str().unwrap()),
                    )
                    .is_ok();
                assert_eq!(ok, test["result"] == "valid", "tcId {}", test["tcId"]);
                checked += 1;
            }
        }
        assert_eq!(checked, doc["numberOfTests"].as_u64().unwrap());
    }

    #[test]
    fn the_small_order_encodings_are_eight_distinct_points_of_small_order() {
        let encodings = small_order_encodings();
        for (i, e) in encodings.iter().enumerate() {
            let point = curve25519_dalek::edwards::CompressedEdwardsY(*e)
                .decompress()
                .unwrap();
            assert!(point.is_small_order());
            assert!(encodings[..i].iter().all(|other| other != e));
        }
        // The identity, encoded as y = 1.
        assert!(
            encodings
                .iter()
                .any(|e| e[0] == 1 && e[1..].iter().all(|&b| b == 0))
        );
    }
}
