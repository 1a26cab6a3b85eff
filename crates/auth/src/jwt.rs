//! [`JwtVerifier`]: the gateway's check of a tenant's bearer token
//! (RFC 7515 compact JWS, RFC 7519 claims, RFC 8725 best practices).
//!
//! The order of the checks is part of the contract: size, then structure,
//! then the header (which may refuse a token without looking further), then
//! the issuer read from the unverified payload only to pick its keys, then
//! the key and its algorithm, then the signature, and only then the claims.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

use crate::error::{JwtConfigError, JwtError};
use crate::jose::{Decoded, b64url_decode_into};
use crate::jwk::{Algorithm, Jwk, KeyKind};
use crate::jwks::{UrlSource, WatchedFile};

/// Default clock leeway for `exp`, `nbf` and `iat`.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
/// Default largest token accepted, in bytes.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8192;
/// Default least time between two fetches of a JWKS URL.
pub const DEFAULT_JWKS_REFRESH_INTERVAL: Duration = Duration::from_secs(30);
/// Default longest token lifetime: `exp - iat`, or `exp - now` for a token
/// without `iat`.
pub const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// The largest `max_lifetime` a configuration may set: a token that lives
/// longer is a credential nobody can revoke in practice.
pub const MAX_LIFETIME_CEILING: Duration = Duration::from_secs(30 * 24 * 3600);
/// Longest `kid` accepted.
const MAX_KID_CHARS: usize = 128;

/// Settings of the verifier, as the gateway's TOML file holds them.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSettings {
    /// The trusted issuers.
    pub issuers: Vec<IssuerSettings>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat` (humantime, "30s").
    #[serde(default = "default_leeway", deserialize_with = "humantime_duration")]
    pub leeway: Duration,
    /// Longest token accepted; checked before anything is decoded.
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    /// Longest token lifetime accepted (humantime, "24h"): `exp - iat`, or
    /// for a token without `iat`, how far `exp` lies beyond now (plus the
    /// leeway). Positive and at most [`MAX_LIFETIME_CEILING`].
    #[serde(default = "default_max_lifetime", deserialize_with = "humantime_duration")]
    pub max_lifetime: Duration,
}

/// One trusted issuer and where its keys come from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerSettings {
    /// Compared byte for byte with the token's `iss`.
    pub issuer: String,
    /// The token's `aud` must contain at least one of these.
    pub audiences: Vec<String>,
    /// Algorithms accepted from this issuer.
    pub algorithms: Vec<Algorithm>,
    /// A JWK or JWK Set of `oct` keys, re-read when the file changes.
    #[serde(default)]
    pub hmac_secret_file: Option<PathBuf>,
    /// A JWK Set of public keys, re-read when the file changes; also the
    /// keys in service while `jwks_url` is down.
    #[serde(default)]
    pub jwks_file: Option<PathBuf>,
    /// An `http://` or `https://` JWK Set URL.
    #[serde(default)]
    pub jwks_url: Option<String>,
    /// PEM roots for an `https://` `jwks_url`.
    #[serde(default)]
    pub jwks_ca_file: Option<PathBuf>,
    /// Least time between two fetches of `jwks_url` (humantime, "30s").
    #[serde(default = "default_refresh_interval", deserialize_with = "humantime_duration")]
    pub jwks_refresh_interval: Duration,
    /// Whether this issuer speaks for operators: only its tokens can carry
    /// `"operator": true` (from any other issuer the claim grants nothing).
    /// Default false.
    #[serde(default)]
    pub operator: bool,
}

impl Default for JwtSettings {
    fn default() -> Self {
        Self {
            issuers: Vec::new(),
            leeway: DEFAULT_LEEWAY,
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
            max_lifetime: DEFAULT_MAX_LIFETIME,
        }
    }
}

impl Default for IssuerSettings {
    fn default() -> Self {
        Self {
            issuer: String::new(),
            audiences: Vec::new(),
            algorithms: Vec::new(),
            hmac_secret_file: None,
            jwks_file: None,
            jwks_url: None,
            jwks_ca_file: None,
            jwks_refresh_interval: DEFAULT_JWKS_REFRESH_INTERVAL,
            operator: false,
        }
    }
}

/// The verified claims of a tenant token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenClaims {
    /// `iss`, one of the configured issuers.
    pub issuer: String,
    /// `sub`.
    pub subject: String,
    /// `tenant`.
    pub tenant: String,
    /// `region`.
    pub region: String,
    /// `scope`, split on spaces.
    pub scope: Vec<String>,
    /// `amr`, the authentication methods.
    pub amr: Vec<String>,
    /// `auth_time`, Unix seconds.
    pub auth_time: Option<i64>,
    /// `jti`.
    pub jti: Option<String>,
    /// `exp`, Unix seconds.
    pub expires_at: i64,
    /// `iat`, Unix seconds.
    pub issued_at: Option<i64>,
    /// The `kid` of the key that verified the token (empty when the token
    /// had none and the issuer's only key has none).
    pub key_id: String,
    /// Whether the token speaks for an operator: it came from an issuer
    /// configured with `operator = true` and carried `"operator": true`.
    /// Never true for a token of any other issuer, whatever it claims.
    pub operator: bool,
}

/// Verifies tenant JWTs against the configured issuers. Cheap to clone:
/// clones share keys, caches and the fetch counter.
#[derive(Clone)]
pub struct JwtVerifier {
    inner: Arc<Inner>,
}

struct Inner {
    issuers: HashMap<String, IssuerState>,
    leeway: i64,
    max_token_bytes: usize,
    /// [`JwtSettings::max_lifetime`] in seconds.
    max_lifetime: i64,
    fetch_count: Arc<AtomicU64>,
}

/// One issuer's policy and key sources.
struct IssuerState {
    audiences: Vec<String>,
    algorithms: Vec<Algorithm>,
    secret_file: Option<WatchedFile>,
    jwks_file: Option<WatchedFile>,
    jwks_url: Option<UrlSource>,
    /// Whether the `operator` claim of this issuer's tokens is honoured.
    operator: bool,
}

impl JwtSettings {
    /// The checks that need no file and no network: at least one issuer,
    /// each named once with an audience, an algorithm and a key source; a
    /// positive token size and refresh interval; a lifetime bound that is
    /// positive and at most [`MAX_LIFETIME_CEILING`]. The gateway runs them
    /// when it loads its configuration, so a bad file exits before any port
    /// is bound; [`JwtVerifier::new`] runs them again.
    pub fn validate(&self) -> Result<(), JwtConfigError> {
        if self.issuers.is_empty() {
            return Err(JwtConfigError::NoIssuers);
        }
        if self.max_token_bytes == 0 {
            return Err(JwtConfigError::ZeroMaxTokenBytes);
        }
        if self.max_lifetime.is_zero() || self.max_lifetime > MAX_LIFETIME_CEILING {
            return Err(JwtConfigError::MaxLifetime(self.max_lifetime));
        }
        let mut seen = std::collections::HashSet::new();
        for s in &self.issuers {
            if s.issuer.is_empty() {
                return Err(JwtConfigError::EmptyIssuer);
            }
            if !seen.insert(s.issuer.as_str()) {
                return Err(JwtConfigError::DuplicateIssuer(s.issuer.clone()));
            }
            if s.audiences.is_empty() {
                return Err(JwtConfigError::NoAudiences(s.issuer.clone()));
            }
            if s.algorithms.is_empty() {
                return Err(JwtConfigError::NoAlgorithms(s.issuer.clone()));
            }
            if s.hmac_secret_file.is_none() && s.jwks_file.is_none() && s.jwks_url.is_none() {
                return Err(JwtConfigError::NoKeySource(s.issuer.clone()));
            }
            if s.jwks_refresh_interval.is_zero() {
                return Err(JwtConfigError::ZeroRefreshInterval(s.issuer.clone()));
            }
        }
        Ok(())
    }
}

impl JwtVerifier {
    /// Validates the settings, loads the key files (an unreadable or
    /// invalid file is an error) and fetches each JWKS URL once (a failure
    /// is logged: the URL is tried again on the next unknown kid).
    pub async fn new(settings: JwtSettings) -> Result<Self, JwtConfigError> {
        settings.validate()?;
        let fetch_count = Arc::new(AtomicU64::new(0));
        let mut issuers = HashMap::new();
        for s in settings.issuers {
            let secret_file = s
                .hmac_secret_file
                .as_deref()
                .map(|p| WatchedFile::load(p, KeyKind::Secret))
                .transpose()?;
            let jwks_file = s
                .jwks_file
                .as_deref()
                .map(|p| WatchedFile::load(p, KeyKind::Public))
                .transpose()?;
            let jwks_url = match &s.jwks_url {
                Some(url) => {
                    let source = UrlSource::new(
                        url,
                        s.jwks_ca_file.as_deref(),
                        s.jwks_refresh_interval,
                        Arc::clone(&fetch_count),
                    )?;
                    source.fetch_now().await;
                    Some(source)
                }
                None => None,
            };
            let state = IssuerState {
                audiences: s.audiences,
                algorithms: s.algorithms,
                secret_file,
                jwks_file,
                jwks_url,
                operator: s.operator,
            };
            issuers.insert(s.issuer, state);
        }
        let leeway = i64::try_from(settings.leeway.as_secs()).unwrap_or(i64::MAX);
        // At most 30 days (validated above): the cast is exact.
        let max_lifetime = settings.max_lifetime.as_secs() as i64;
        Ok(Self {
            inner: Arc::new(Inner {
                issuers,
                leeway,
                max_token_bytes: settings.max_token_bytes,
                max_lifetime,
                fetch_count,
            }),
        })
    }

    /// Verifies `token` at `now_unix` (seconds) and returns its claims, or
    /// the first check it fails (see [`JwtError::reason`]).
    pub async fn verify(&self, token: &str, now_unix: i64) -> Result<TokenClaims, JwtError> {
        if token.len() > self.inner.max_token_bytes {
            return Err(JwtError::TokenTooLarge);
        }
        let mut buffers = Buffers::new();
        let jws = CompactJws::parse(token, &mut buffers)?;
        let header = check_header(&jws.header, true)?;
        let payload = RawClaims::parse(&jws.payload)?;

        // The only payload member read before the signature verifies, and
        // only to choose whose keys to use.
        let issuer = match payload.iss {
            None => return Err(JwtError::UnknownIssuer),
            Some(raw) => string(raw, "iss")?,
        };
        let state = self
            .inner
            .issuers
            .get(issuer.as_ref())
            .ok_or(JwtError::UnknownIssuer)?;
        if !state.algorithms.contains(&header.alg) {
            return Err(JwtError::AlgNotAllowed);
        }

        let key = state.find_key(header.kid.as_deref()).await?;
        if key.algorithm() != header.alg {
            return Err(JwtError::AlgNotAllowed);
        }
        key.verify(jws.signing_input, &jws.signature)?;

        claims(
            &payload,
            &issuer,
            key.key_id().unwrap_or(""),
            state,
            now_unix,
            self.inner.leeway,
            self.inner.max_lifetime,
        )
    }

    /// HTTP fetches of JWKS URLs attempted since start, successful or not.
    pub fn jwks_fetch_count(&self) -> u64 {
        self.inner.fetch_count.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Issuer names and counters only: no key material, no file content.
        let mut issuers: Vec<&str> = self.inner.issuers.keys().map(String::as_str).collect();
        issuers.sort_unstable();
        f.debug_struct("JwtVerifier")
            .field("issuers", &issuers)
            .field("leeway", &self.inner.leeway)
            .field("max_token_bytes", &self.inner.max_token_bytes)
            .field("max_lifetime", &self.inner.max_lifetime)
            .field("jwks_fetch_count", &self.jwks_fetch_count())
            .finish()
    }
}

impl IssuerState {
    /// The key the token names. On a miss the key files are stat'ed and the
    /// JWKS URL refetched (rate-limited) before giving up: that is how a
    /// rotation reaches a running verifier.
    async fn find_key(&self, kid: Option<&str>) -> Result<Arc<Jwk>, JwtError> {
        for file in [&self.secret_file, &self.jwks_file].into_iter().flatten() {
            file.check_due();
        }
        if let Some(key) = self.lookup(kid) {
            return Ok(key);
        }
        if kid.is_none() {
            return Err(JwtError::UnknownKid);
        }
        for file in [&self.secret_file, &self.jwks_file].into_iter().flatten() {
            file.check_now();
        }
        if let Some(url) = &self.jwks_url {
            url.refetch_on_miss().await;
        }
        self.lookup(kid).ok_or(JwtError::UnknownKid)
    }

    /// Looks the kid up in the URL's set, then the JWKS file, then the
    /// secret file. Without a kid, the issuer's only key, if it has one.
    fn lookup(&self, kid: Option<&str>) -> Option<Arc<Jwk>> {
        // The sources in order, each an Arc snapshot; no allocation on the
        // request path beyond these reference counts.
        let url = self.jwks_url.as_ref().map(UrlSource::keys);
        let file = self.jwks_file.as_ref().map(WatchedFile::keys);
        let secret = self.secret_file.as_ref().map(WatchedFile::keys);
        let mut all = [url.as_deref(), file.as_deref(), secret.as_deref()]
            .into_iter()
            .flatten()
            .flat_map(|set| set.iter());
        match kid {
            Some(kid) => all.find(|key| key.key_id() == Some(kid)).cloned(),
            None => {
                let only = all.next()?;
                all.next().is_none().then(|| Arc::clone(only))
            }
        }
    }
}

/// Verifies a compact JWS with one key and returns its payload bytes: the
/// token path's parsing, header checks, algorithm binding and signature
/// check, without issuers or claims. The payload need not be JSON.
///
/// The `kid` syntax rule is not applied: it guards key lookups, and here
/// the caller has chosen the key. A `kid` must still be a string.
pub fn verify_compact_jws(token: &str, key: &Jwk) -> Result<Vec<u8>, JwtError> {
    let mut buffers = Buffers::new();
    let jws = CompactJws::parse(token, &mut buffers)?;
    let header = check_header(&jws.header, false)?;
    if header.alg != key.algorithm() {
        return Err(JwtError::AlgNotAllowed);
    }
    key.verify(jws.signing_input, &jws.signature)?;
    Ok(jws.payload.to_vec())
}

/// Stack room for the decoded parts of a usual token (a longer part is
/// decoded onto the heap instead, checked the same way).
struct Buffers {
    header: [u8; 256],
    payload: [u8; 768],
    signature: [u8; 128],
}

impl Buffers {
    fn new() -> Self {
        Self {
            header: [0; 256],
            payload: [0; 768],
            signature: [0; 128],
        }
    }
}

/// The three decoded parts of a compact JWS.
struct CompactJws<'a, 'b> {
    /// The decoded header: a JSON object, parsed by [`check_header`].
    header: Decoded<'b>,
    payload: Decoded<'b>,
    signature: Decoded<'b>,
    /// `BASE64URL(header) || '.' || BASE64URL(payload)`, as received.
    signing_input: &'a [u8],
}

impl<'a, 'b> CompactJws<'a, 'b> {
    /// Splits on exactly two dots into three strict base64url parts, the
    /// header and signature non-empty. The JSON serialization, a second
    /// signature, trailing data or whitespace all fail here, since none of
    /// them fits that shape. An empty payload is a valid JWS (RFC 7515
    /// §7.1); the token path refuses it as a payload that is not a JSON
    /// object, with the same reason.
    fn parse(token: &'a str, buffers: &'b mut Buffers) -> Result<Self, JwtError> {
        let bytes = token.as_bytes();
        let mut dots = memchr::memchr_iter(b'.', bytes);
        let (Some(first), Some(second), None) = (dots.next(), dots.next(), dots.next()) else {
            return Err(JwtError::Malformed("not three dot-separated parts"));
        };
        let (header, payload, signature) = (&bytes[..first], &bytes[first + 1..second], &bytes[second + 1..]);
        if header.is_empty() || signature.is_empty() {
            return Err(JwtError::Malformed("empty part"));
        }
        let Buffers {
            header: header_buffer,
            payload: payload_buffer,
            signature: signature_buffer,
        } = buffers;
        let header = b64url_decode_into(header, header_buffer)
            .ok_or(JwtError::Malformed("header is not base64url"))?;
        let payload = b64url_decode_into(payload, payload_buffer)
            .ok_or(JwtError::Malformed("payload is not base64url"))?;
        let signature = b64url_decode_into(signature, signature_buffer)
            .ok_or(JwtError::Malformed("signature is not base64url"))?;
        Ok(Self {
            header,
            payload,
            signature,
            signing_input: &bytes[..second],
        })
    }
}

/// What the header contributes once it passed its checks.
struct Header<'a> {
    alg: Algorithm,
    kid: Option<Cow<'a, str>>,
}

/// The header members the checks read, each kept as raw JSON so its type
/// is checked exactly; a member named twice is malformed (serde refuses a
/// duplicate field), other members are never read.
#[derive(Deserialize)]
struct RawHeader<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    alg: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    typ: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    kid: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    crit: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    jku: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    x5u: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    jwk: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    x5c: Option<&'a RawValue>,
}

/// The header checks, in order: `typ`, `alg`, key references, `crit`, `kid`.
fn check_header(header: &[u8], kid_syntax: bool) -> Result<Header<'_>, JwtError> {
    let malformed = JwtError::Malformed("header is not a json object");
    if header.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(malformed);
    }
    let text = std::str::from_utf8(header).map_err(|_| JwtError::Malformed("header is not a json object"))?;
    let raw: RawHeader<'_> = serde_json::from_str(text).map_err(|_| malformed)?;
    if let Some(typ) = raw.typ {
        let typ = string(typ, "typ").map_err(|_| JwtError::Malformed("typ is not JWT"))?;
        if !(typ.eq_ignore_ascii_case("JWT") || typ.eq_ignore_ascii_case("at+jwt")) {
            return Err(JwtError::Malformed("typ is not JWT"));
        }
    }
    // Case-sensitive: "none", "None", "NONE" and every unknown name fail.
    let alg = raw
        .alg
        .and_then(|a| string(a, "alg").ok())
        .and_then(|a| Algorithm::from_header(&a))
        .ok_or(JwtError::AlgNotAllowed)?;
    // Members that point at or embed a key: a verifier that followed them
    // would let the token pick its own key (RFC 8725 §3.10).
    if raw.jku.is_some() || raw.x5u.is_some() || raw.jwk.is_some() || raw.x5c.is_some() {
        return Err(JwtError::UntrustedKeyReference);
    }
    if raw.crit.is_some() {
        return Err(JwtError::UnknownCrit);
    }
    let kid = match raw.kid {
        None => None,
        Some(kid) => {
            let kid = string(kid, "kid").map_err(|_| JwtError::BadKid)?;
            if kid_syntax && !valid_kid(&kid) {
                return Err(JwtError::BadKid);
            }
            Some(kid)
        }
    };
    Ok(Header { alg, kid })
}

/// 1 to 128 characters from the RFC 3986 unreserved set: no path
/// separators, quotes, spaces or SQL punctuation ever reach a lookup.
fn valid_kid(kid: &str) -> bool {
    (1..=MAX_KID_CHARS).contains(&kid.len())
        && kid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'))
}

/// The claim checks, after the signature verified: every registered claim's
/// type first, then presence, then time (lifetime last), then audience.
fn claims<'a>(
    payload: &RawClaims<'a>,
    issuer: &str,
    key_id: &str,
    state: &IssuerState,
    now: i64,
    leeway: i64,
    max_lifetime: i64,
) -> Result<TokenClaims, JwtError> {
    let int = |raw: Option<&RawValue>, name| raw.map(|r| integer(r, name)).transpose();
    let text = |raw: Option<&'a RawValue>, name| raw.map(|r| string(r, name)).transpose();
    let exp = int(payload.exp, "exp")?;
    let nbf = int(payload.nbf, "nbf")?;
    let iat = int(payload.iat, "iat")?;
    let auth_time = int(payload.auth_time, "auth_time")?;
    let sub = text(payload.sub, "sub")?;
    let tenant = text(payload.tenant, "tenant")?;
    let region = text(payload.region, "region")?;
    let jti = text(payload.jti, "jti")?;
    let scope = text(payload.scope, "scope")?;
    let operator = match payload.operator.map(RawValue::get) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(JwtError::InvalidClaimType("operator")),
    };
    let amr = match payload.amr {
        None => Vec::new(),
        Some(raw) => strings(raw).ok_or(JwtError::InvalidClaimType("amr"))?,
    };
    let aud = match payload.aud {
        None => None,
        Some(raw) if raw.get().starts_with('"') => Some(Audiences::One(string(raw, "aud")?)),
        Some(raw) => Some(Audiences::Several(
            strings(raw).ok_or(JwtError::InvalidClaimType("aud"))?,
        )),
    };

    let exp = exp.ok_or(JwtError::MissingClaim("exp"))?;
    let sub = non_empty(sub, "sub")?;
    let tenant = non_empty(tenant, "tenant")?;
    let region = non_empty(region, "region")?;

    if now >= exp.saturating_add(leeway) {
        return Err(JwtError::Expired);
    }
    if nbf.is_some_and(|nbf| nbf > now.saturating_add(leeway)) {
        return Err(JwtError::NotYetValid);
    }
    if iat.is_some_and(|iat| iat > now.saturating_add(leeway)) {
        return Err(JwtError::IssuedInFuture);
    }
    // A bounded lifetime: a leaked token of 2^63-1 seconds would otherwise
    // be a credential for ever. With `iat`, the lifetime the issuer wrote
    // (in i128: the difference of two i64 cannot overflow there); without
    // it, the time left, which is all the verifier can know.
    let too_long = match iat {
        Some(iat) => i128::from(exp) - i128::from(iat) > i128::from(max_lifetime),
        None => exp > now.saturating_add(max_lifetime).saturating_add(leeway),
    };
    if too_long {
        return Err(JwtError::LifetimeTooLong);
    }
    let accepted = |a: &str| state.audiences.iter().any(|ours| ours == a);
    let addressed = match aud.ok_or(JwtError::AudienceMismatch)? {
        Audiences::One(one) => accepted(&one),
        Audiences::Several(several) => several.iter().any(|a| accepted(a)),
    };
    if !addressed {
        return Err(JwtError::AudienceMismatch);
    }

    Ok(TokenClaims {
        issuer: issuer.to_owned(),
        subject: sub.into_owned(),
        tenant: tenant.into_owned(),
        region: region.into_owned(),
        scope: scope
            .map(|s| {
                s.split(' ')
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default(),
        amr,
        auth_time,
        jti: jti.map(Cow::into_owned),
        expires_at: exp,
        issued_at: iat,
        key_id: key_id.to_owned(),
        // The claim counts only where the issuer is trusted to make it.
        operator: operator && state.operator,
    })
}

/// The registered and SomaStack claims of a payload, each kept as its raw
/// JSON text so that its type is checked exactly (a `null`, a string
/// `"123"` or a float `1.0` where an integer belongs is a type error, never
/// an absence). Other members are validated as JSON and ignored. Reading
/// the payload this way, borrowing from it, keeps the request path free of
/// a generic JSON tree.
#[derive(Deserialize)]
struct RawClaims<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    iss: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    sub: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    aud: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    exp: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    nbf: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    iat: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    jti: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    tenant: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    region: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    scope: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    amr: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    auth_time: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    operator: Option<&'a RawValue>,
}

impl<'a> RawClaims<'a> {
    /// A JSON object (not an array: serde would read an array as a struct
    /// by position); a claim named twice is malformed.
    fn parse(payload: &'a [u8]) -> Result<Self, JwtError> {
        let malformed = JwtError::Malformed("payload is not a json object");
        if payload.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(malformed);
        }
        // A repeated claim this struct reads is an error (serde refuses a
        // duplicate field); members it ignores are never read (RFC 7519 §4).
        // UTF-8 checked once for the whole payload (RFC 8259 §8.1): the
        // parser then reads strings and raw members without checking each.
        let text =
            std::str::from_utf8(payload).map_err(|_| JwtError::Malformed("payload is not a json object"))?;
        serde_json::from_str(text).map_err(|_| malformed)
    }
}

/// A member that is present, whatever its value (`null` included).
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(deserializer).map(Some)
}

/// A NumericDate written as a JSON integer: `-?[0-9]+`, within i64.
fn integer(raw: &RawValue, name: &'static str) -> Result<i64, JwtError> {
    let text = raw.get();
    let digits = text.strip_prefix('-').unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(JwtError::InvalidClaimType(name));
    }
    text.parse().map_err(|_| JwtError::InvalidClaimType(name))
}

/// The `aud` claim (RFC 7519 §4.1.3): one audience, read in place, or
/// several.
enum Audiences<'a> {
    One(Cow<'a, str>),
    Several(Vec<String>),
}

/// A JSON string, borrowed when it holds no escapes.
fn string<'a>(raw: &'a RawValue, name: &'static str) -> Result<Cow<'a, str>, JwtError> {
    let text = raw.get();
    if !text.starts_with('"') {
        return Err(JwtError::InvalidClaimType(name));
    }
    // The parser has validated this string token (UTF-8, no control
    // characters, closed). Without a backslash it has no escapes, so no
    // quote inside it either: its content is the text between the quotes.
    if let Some(content) = text.strip_prefix('"').and_then(|t| t.strip_suffix('"'))
        && !content.contains('\\')
    {
        return Ok(Cow::Borrowed(content));
    }
    serde_json::from_str::<Cow<'a, str>>(text).map_err(|_| JwtError::InvalidClaimType(name))
}

/// A JSON array of strings.
fn strings(raw: &RawValue) -> Option<Vec<String>> {
    if !raw.get().starts_with('[') {
        return None;
    }
    serde_json::from_str::<Vec<String>>(raw.get()).ok()
}

fn non_empty<'a>(value: Option<Cow<'a, str>>, name: &'static str) -> Result<Cow<'a, str>, JwtError> {
    value
        .filter(|v| !v.is_empty())
        .ok_or(JwtError::MissingClaim(name))
}

fn default_leeway() -> Duration {
    DEFAULT_LEEWAY
}

fn default_max_token_bytes() -> usize {
    DEFAULT_MAX_TOKEN_BYTES
}

fn default_max_lifetime() -> Duration {
    DEFAULT_MAX_LIFETIME
}

fn default_refresh_interval() -> Duration {
    DEFAULT_JWKS_REFRESH_INTERVAL
}

/// A humantime duration string ("30s", "1m 30s").
fn humantime_duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    humantime::parse_duration(&text).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_or_payload_that_is_not_utf8_anywhere_is_malformed() {
        // Invalid UTF-8 in a member the checks never read is refused as well:
        // JSON text is UTF-8 (RFC 8259 §8.1), and the parts are checked whole.
        let payload = b"{\"iss\":\"https://issuer\",\"note\":\"\xff\"}";
        assert!(matches!(RawClaims::parse(payload), Err(JwtError::Malformed(_))));
        let header = b"{\"alg\":\"HS256\",\"note\":\"\xc3\"}";
        assert!(matches!(check_header(header, true), Err(JwtError::Malformed(_))));
        // The same parts in valid UTF-8 parse.
        assert!(RawClaims::parse(b"{\"iss\":\"https://issuer\",\"note\":\"\xc3\xa9\"}").is_ok());
        assert!(check_header(b"{\"alg\":\"HS256\",\"note\":\"\xc3\xa9\"}", true).is_ok());
    }

    #[test]
    fn json_strings_are_read_exactly_with_or_without_escapes() {
        // (raw JSON, the string it holds, whether it is read in place)
        let strings: [(&str, &str, bool); 8] = [
            (r#""acme""#, "acme", true),
            (r#""""#, "", true),
            ("\"\u{e9}t\u{e9}\"", "\u{e9}t\u{e9}", true),
            (r#""a\"b""#, "a\"b", false),
            (r#""ac\u006de""#, "acme", false),
            (r#""a\\b""#, "a\\b", false),
            (r#""\u00e9t\u00e9""#, "\u{e9}t\u{e9}", false),
            (r#""\/\b\f\n\r\t""#, "/\u{8}\u{c}\n\r\t", false),
        ];
        for (json, expected, in_place) in strings {
            let raw = RawValue::from_string(json.to_owned()).unwrap();
            let read = string(&raw, "sub").unwrap();
            assert_eq!(read, expected, "{json}");
            assert_eq!(matches!(read, Cow::Borrowed(_)), in_place, "{json}");
        }
        for json in ["12", "null", "true", r#"["acme"]"#, r#"{"a":"b"}"#] {
            let raw = RawValue::from_string(json.to_owned()).unwrap();
            assert_eq!(
                string(&raw, "sub").unwrap_err().to_string(),
                JwtError::InvalidClaimType("sub").to_string(),
                "{json}"
            );
        }
        // What reading in place relies on: the parser refuses a raw control
        // character and an unclosed string before any claim is read.
        for json in ["\"a\u{1}b\"", "\"a\nb\"", "\"acme"] {
            assert!(RawValue::from_string(json.to_owned()).is_err(), "{json:?}");
        }
    }
}
