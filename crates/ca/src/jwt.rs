//! JWT-SVIDs (SPIFFE JWT-SVID specification) signed with the authority's
//! ES256 keys, their JWKS bundle, and the validation ValidateJWTSVID performs.
//!
//! Each key is an ECDSA P-256 key persisted as `jwt.key` (PKCS#8 PEM, mode
//! 0600) in the slot of an X.509 root (see [`crate::keys`]): it is created,
//! prepared, activated and retired together with that root, and it expires
//! with it. ES256 is the algorithm SPIRE uses by default and the one both
//! py-spiffe and the `spiffe` crate verify. The bundle is a JWKS with one
//! key per published slot (active, prepared, and retired until expiry), each
//! with `use: jwt-svid` and a `kid` derived from the public key (base64url
//! of its SHA-256), so a new key never reuses a `kid`.
//!
//! Validation accepts only what this authority issues: `alg` ES256 (so
//! `none`, HMAC and every other algorithm are refused before any signature
//! is looked at), a `kid` of a published key that has not expired, no `crit`
//! header, a valid signature, a `sub` that is a SPIFFE ID of this trust
//! domain, an `aud` (string or array) that holds the expected audience, an
//! `exp` in the future and any `nbf` in the past. There is no leeway: both
//! ends share one clock.

use std::fs;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::digest;
use ring::rand::SystemRandom;
use ring::signature::{
    ECDSA_P256_SHA256_FIXED, ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _, UnparsedPublicKey,
};
use serde_json::{Map, Value, json};
use soma_identity::{SpiffeId, TrustDomain};

use crate::error::CaError;
use crate::files::{self, PRIVATE_FILE};
use crate::pem;

/// The one signing algorithm.
const ALG: &str = "ES256";

/// The JWT-SVID signing key of an authority.
pub(crate) struct JwtKey {
    pair: EcdsaKeyPair,
    public: JwtPublicKey,
    rng: SystemRandom,
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The private key is deliberately left out.
        f.debug_struct("JwtKey")
            .field("kid", &self.public.kid)
            .finish_non_exhaustive()
    }
}

/// A JWT-SVID as issued.
#[derive(Clone, Debug)]
pub struct IssuedJwt {
    /// The compact JWS.
    pub token: String,
    /// Its `exp`.
    pub expiry: SystemTime,
}

/// A JWT-SVID that passed validation.
#[derive(Clone, Debug)]
pub struct ValidatedJwt {
    /// The `sub` claim.
    pub spiffe_id: SpiffeId,
    /// Every claim of the token.
    pub claims: Map<String, Value>,
}

impl JwtKey {
    /// Writes a fresh key to `path` (PKCS#8 PEM, mode 0600).
    pub(crate) fn create(path: &Path) -> Result<(), CaError> {
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .map_err(|_| CaError::Random)?;
        files::write_atomic(
            path,
            pem::encode(pem::PRIVATE_KEY, pkcs8.as_ref()).as_bytes(),
            PRIVATE_FILE,
        )
    }

    /// Reads the key at `path`; it signs tokens that expire by `not_after`
    /// (the expiry of the root it belongs with).
    pub(crate) fn open(path: &Path, not_after: SystemTime) -> Result<Self, CaError> {
        let rng = SystemRandom::new();
        let invalid = |reason: String| CaError::InvalidRoot {
            path: path.to_owned(),
            reason,
        };
        let text = fs::read(path).map_err(CaError::io("cannot read", path))?;
        let (_, block) =
            x509_parser::pem::parse_x509_pem(&text).map_err(|e| invalid(format!("bad pem: {e}")))?;
        if block.label != pem::PRIVATE_KEY {
            return Err(invalid(format!(
                "pem block is {:?}, expected a private key",
                block.label
            )));
        }
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &block.contents, &rng)
            .map_err(|e| invalid(format!("not an ecdsa p-256 pkcs#8 key: {e}")))?;
        let public = JwtPublicKey::new(pair.public_key().as_ref().to_vec(), not_after);
        Ok(Self { pair, public, rng })
    }

    /// The key id published in the bundle and in every token header.
    pub(crate) fn kid(&self) -> &str {
        &self.public.kid
    }

    /// The public half, as published in the bundle.
    pub(crate) fn public(&self) -> &JwtPublicKey {
        &self.public
    }

    /// Signs a JWT-SVID for `id` with `audience`, valid for `ttl` but never
    /// past the key's own expiry.
    pub(crate) fn issue(
        &self,
        id: &SpiffeId,
        audience: &[String],
        ttl: Duration,
    ) -> Result<IssuedJwt, CaError> {
        let now = unix_seconds(SystemTime::now());
        let exp = (now + ttl.as_secs()).min(unix_seconds(self.public.not_after));
        if exp <= now {
            return Err(CaError::InvalidTtl {
                reason: "the jwt signing key expired",
            });
        }
        let header = json!({"alg": ALG, "kid": self.public.kid, "typ": "JWT"});
        let claims = json!({"sub": id.to_string(), "aud": audience, "exp": exp, "iat": now});
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self
            .pair
            .sign(&self.rng, signing_input.as_bytes())
            .map_err(|_| CaError::Random)?;
        Ok(IssuedJwt {
            token: format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref())),
            expiry: UNIX_EPOCH + Duration::from_secs(exp),
        })
    }
}

/// The public half of a JWT signing key, with the time it stops being
/// published (and accepted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct JwtPublicKey {
    /// The uncompressed P-256 point, `04 || x || y`.
    point: Vec<u8>,
    kid: String,
    not_after: SystemTime,
}

impl JwtPublicKey {
    fn new(point: Vec<u8>, not_after: SystemTime) -> Self {
        let kid = URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, &point));
        Self {
            point,
            kid,
            not_after,
        }
    }

    /// The key id.
    pub(crate) fn kid(&self) -> &str {
        &self.kid
    }

    /// When the key stops being published and accepted.
    pub(crate) fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// The JWK of the bundle: an EC P-256 key with `use: jwt-svid`.
    fn jwk(&self) -> Value {
        let (x, y) = self.point[1..].split_at(32);
        json!({
            "kty": "EC",
            "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(x),
            "y": URL_SAFE_NO_PAD.encode(y),
            "kid": self.kid,
            "use": "jwt-svid",
        })
    }

    /// The record kept for a retired key: its JWK and its expiry.
    pub(crate) fn to_record(&self) -> Vec<u8> {
        let mut record = self.jwk();
        record["not_after"] = json!(unix_seconds(self.not_after));
        let mut bytes = record.to_string().into_bytes();
        bytes.push(b'\n');
        bytes
    }

    /// Reads a record written by [`JwtPublicKey::to_record`]; the `kid` must
    /// be the one its point derives to.
    pub(crate) fn from_record(bytes: &[u8]) -> Result<Self, String> {
        let record: Value = serde_json::from_slice(bytes).map_err(|e| format!("bad json: {e}"))?;
        let field = |name: &str| {
            record
                .get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| format!("no {name}"))
        };
        if field("kty")? != "EC" || field("crv")? != "P-256" {
            return Err("not an ec p-256 key".to_owned());
        }
        let coordinate = |name: &str| -> Result<Vec<u8>, String> {
            let bytes = URL_SAFE_NO_PAD
                .decode(field(name)?)
                .map_err(|_| format!("{name} is not base64url"))?;
            if bytes.len() != 32 {
                return Err(format!("{name} is not 32 bytes"));
            }
            Ok(bytes)
        };
        let mut point = vec![4u8];
        point.extend(coordinate("x")?);
        point.extend(coordinate("y")?);
        let not_after = record
            .get("not_after")
            .and_then(Value::as_u64)
            .ok_or("no numeric not_after")?;
        let key = Self::new(point, UNIX_EPOCH + Duration::from_secs(not_after));
        if field("kid")? != key.kid {
            return Err("kid does not match the key".to_owned());
        }
        Ok(key)
    }
}

/// The JWKS bundle (SPIFFE bundle format) of `keys`.
pub(crate) fn bundle<'a>(keys: impl IntoIterator<Item = &'a JwtPublicKey>) -> Vec<u8> {
    let keys: Vec<Value> = keys.into_iter().map(JwtPublicKey::jwk).collect();
    json!({ "keys": keys }).to_string().into_bytes()
}

/// Validates `token` for `audience` against the published `keys` (see the
/// module documentation).
pub(crate) fn validate<'a>(
    token: &str,
    audience: &str,
    trust_domain: &TrustDomain,
    keys: impl IntoIterator<Item = &'a JwtPublicKey>,
) -> Result<ValidatedJwt, CaError> {
    let reject = |reason: String| CaError::InvalidJwtSvid { reason };
    let parts: Vec<&str> = token.split('.').collect();
    let [header_b64, claims_b64, signature_b64] = parts.as_slice() else {
        return Err(reject("not a compact jws (three dot-separated parts)".to_owned()));
    };
    let header = json_object(header_b64).ok_or_else(|| reject("malformed header".to_owned()))?;
    match header.get("alg") {
        Some(Value::String(alg)) if alg == ALG => {}
        Some(Value::String(alg)) => return Err(reject(format!("unsupported algorithm {alg:?}"))),
        _ => return Err(reject("header has no alg".to_owned())),
    }
    match header.get("typ") {
        None => {}
        Some(Value::String(typ)) if typ == "JWT" || typ == "JOSE" => {}
        Some(typ) => return Err(reject(format!("unsupported typ {typ}"))),
    }
    if header.contains_key("crit") {
        return Err(reject("crit header not supported".to_owned()));
    }
    let now_time = SystemTime::now();
    let key = match header.get("kid") {
        Some(Value::String(kid)) => keys
            .into_iter()
            .find(|key| key.kid == *kid && key.not_after > now_time)
            .ok_or_else(|| reject(format!("unknown key id {kid:?}")))?,
        _ => return Err(reject("header has no kid".to_owned())),
    };
    let signature = URL_SAFE_NO_PAD
        .decode(signature_b64)
        .map_err(|_| reject("malformed signature".to_owned()))?;
    let signing_input = &token[..header_b64.len() + 1 + claims_b64.len()];
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &key.point)
        .verify(signing_input.as_bytes(), &signature)
        .map_err(|_| reject("signature does not verify with the bundle's key".to_owned()))?;

    let claims = json_object(claims_b64).ok_or_else(|| reject("malformed claims".to_owned()))?;
    let spiffe_id = match claims.get("sub") {
        Some(Value::String(sub)) => {
            SpiffeId::parse(sub).map_err(|e| reject(format!("sub is not a spiffe id: {e}")))?
        }
        _ => return Err(reject("token has no sub".to_owned())),
    };
    if spiffe_id.trust_domain() != trust_domain {
        return Err(reject(format!(
            "sub {spiffe_id} is not in trust domain {trust_domain}"
        )));
    }
    let audiences: Vec<&str> = match claims.get("aud") {
        Some(Value::String(aud)) => vec![aud.as_str()],
        Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
        _ => return Err(reject("token has no aud".to_owned())),
    };
    if !audiences.contains(&audience) {
        return Err(reject(format!(
            "audience {audience:?} not in token audience {audiences:?}"
        )));
    }
    let now = unix_seconds(now_time);
    match claims.get("exp").and_then(Value::as_u64) {
        Some(exp) if now < exp => {}
        Some(_) => return Err(reject("token has expired".to_owned())),
        None => return Err(reject("token has no numeric exp".to_owned())),
    }
    if let Some(nbf) = claims.get("nbf") {
        match nbf.as_u64() {
            Some(nbf) if nbf <= now => {}
            _ => return Err(reject("token is not valid yet".to_owned())),
        }
    }
    Ok(ValidatedJwt { spiffe_id, claims })
}

/// Whole seconds since the epoch (0 before it).
fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// A base64url (unpadded) JSON object.
fn json_object(part: &str) -> Option<Map<String, Value>> {
    let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}
