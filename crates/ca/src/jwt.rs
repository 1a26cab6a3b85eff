//! JWT-SVIDs (SPIFFE JWT-SVID specification) signed with the authority's
//! ES256 key, its JWKS bundle, and the validation ValidateJWTSVID performs.
//!
//! The key is an ECDSA P-256 key persisted as `DIR/ca/jwt.key` (PKCS#8 PEM,
//! mode 0600) beside the X.509 root, created with the authority and replaced
//! with it (the development authority rotates neither: clearing the
//! directory replaces both). ES256 is the algorithm SPIRE uses by default
//! and the one both py-spiffe and the `spiffe` crate verify. The bundle is a
//! JWKS whose one key carries `use: jwt-svid` and a `kid` derived from the
//! public key (base64url of its SHA-256), so a replaced key never reuses a
//! `kid`.
//!
//! Validation accepts only what this authority issues: `alg` ES256 (so
//! `none`, HMAC and every other algorithm are refused before any signature
//! is looked at), a known `kid`, no `crit` header, a valid signature, a `sub`
//! that is a SPIFFE ID of this trust domain, an `aud` (string or array) that
//! holds the expected audience, an `exp` in the future and any `nbf` in the
//! past. There is no leeway: both ends share one clock.

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
    kid: String,
    rng: SystemRandom,
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The private key is deliberately left out.
        f.debug_struct("JwtKey")
            .field("kid", &self.kid)
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
    /// Reads `CA_DIR/jwt.key`, creating it first if it does not exist.
    pub(crate) fn open_or_create(ca_dir: &Path) -> Result<Self, CaError> {
        let path = ca_dir.join("jwt.key");
        let rng = SystemRandom::new();
        if !path.exists() {
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .map_err(|_| CaError::Random)?;
            files::write_atomic(
                &path,
                pem::encode(pem::PRIVATE_KEY, pkcs8.as_ref()).as_bytes(),
                PRIVATE_FILE,
            )?;
        }
        let invalid = |reason: String| CaError::InvalidRoot {
            path: path.clone(),
            reason,
        };
        let text = fs::read(&path).map_err(CaError::io("cannot read", &path))?;
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
        let kid = URL_SAFE_NO_PAD.encode(digest::digest(&digest::SHA256, pair.public_key().as_ref()));
        Ok(Self { pair, kid, rng })
    }

    /// The key id published in the bundle and in every token header.
    pub(crate) fn kid(&self) -> &str {
        &self.kid
    }

    /// The JWKS bundle (SPIFFE bundle format): one EC key, `use: jwt-svid`.
    pub(crate) fn bundle(&self) -> Vec<u8> {
        // The public key is the uncompressed point 04 || x || y.
        let point = self.pair.public_key().as_ref();
        let (x, y) = point[1..].split_at(32);
        let jwks = json!({
            "keys": [{
                "kty": "EC",
                "crv": "P-256",
                "x": URL_SAFE_NO_PAD.encode(x),
                "y": URL_SAFE_NO_PAD.encode(y),
                "kid": self.kid,
                "use": "jwt-svid",
            }]
        });
        jwks.to_string().into_bytes()
    }

    /// Signs a JWT-SVID for `id` with `audience`, valid for `ttl`.
    pub(crate) fn issue(
        &self,
        id: &SpiffeId,
        audience: &[String],
        ttl: Duration,
    ) -> Result<IssuedJwt, CaError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let exp = now + ttl.as_secs();
        let header = json!({"alg": ALG, "kid": self.kid, "typ": "JWT"});
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

    /// Validates `token` for `audience` (see the module documentation).
    pub(crate) fn validate(
        &self,
        token: &str,
        audience: &str,
        trust_domain: &TrustDomain,
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
        match header.get("kid") {
            Some(Value::String(kid)) if *kid == self.kid => {}
            Some(Value::String(kid)) => return Err(reject(format!("unknown key id {kid:?}"))),
            _ => return Err(reject("header has no kid".to_owned())),
        }
        let signature = URL_SAFE_NO_PAD
            .decode(signature_b64)
            .map_err(|_| reject("malformed signature".to_owned()))?;
        let signing_input = &token[..header_b64.len() + 1 + claims_b64.len()];
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, self.pair.public_key().as_ref())
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
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
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
}

/// A base64url (unpadded) JSON object.
fn json_object(part: &str) -> Option<Map<String, Value>> {
    let bytes = URL_SAFE_NO_PAD.decode(part).ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}
