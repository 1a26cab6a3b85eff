//! [`JwtVerifier`]: the gateway's check of a tenant's bearer token
//! (RFC 7515 compact JWS, RFC 7519 claims, RFC 8725 best practices).
//!
//! The order of the checks is part of the contract: size, then structure,
//! then the header (which may refuse a token without looking further), then
//! the issuer read from the unverified payload only to pick its keys, then
//! the key and its algorithm, then the signature, and only then the claims.

use std::borrow::Cow;
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
use crate::jwks::{UrlSource, WatchedFile, monotonic_millis};
use crate::scan::{self, Scan};

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
    /// Sorted by issuer name, each named once (validated): a binary search
    /// finds a token's issuer without hashing attacker-chosen bytes.
    issuers: Vec<(String, IssuerState)>,
    leeway: i64,
    max_token_bytes: usize,
    /// [`JwtSettings::max_lifetime`] in seconds.
    max_lifetime: i64,
    fetch_count: Arc<AtomicU64>,
    /// Stats of the key files (see [`JwtVerifier::key_file_check_count`]).
    key_file_checks: Arc<AtomicU64>,
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
        let key_file_checks = Arc::new(AtomicU64::new(0));
        let mut issuers = Vec::with_capacity(settings.issuers.len());
        for s in settings.issuers {
            let secret_file = s
                .hmac_secret_file
                .as_deref()
                .map(|p| WatchedFile::load(p, KeyKind::Secret, Arc::clone(&key_file_checks)))
                .transpose()?;
            let jwks_file = s
                .jwks_file
                .as_deref()
                .map(|p| WatchedFile::load(p, KeyKind::Public, Arc::clone(&key_file_checks)))
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
            issuers.push((s.issuer, state));
        }
        issuers.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
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
                key_file_checks,
            }),
        })
    }

    /// Verifies `token` at `now_unix` (seconds) and returns its claims, or
    /// the first check it fails (see [`JwtError::reason`]).
    pub async fn verify(&self, token: &str, now_unix: i64) -> Result<TokenClaims, JwtError> {
        match self.verify_with_keys_at_hand(token, now_unix, OnMiss::Reload)? {
            Step::Accepted(claims) => Ok(claims),
            Step::Refetch(url) => {
                // Boxed: the fetch's state would otherwise size every
                // verification future, though almost none of them fetch.
                Box::pin(url.refetch_on_miss()).await;
                // Every check runs again from the start, on the keys as
                // fresh as the rate limit allows; a second miss is final.
                match self.verify_with_keys_at_hand(token, now_unix, OnMiss::Refuse)? {
                    Step::Accepted(claims) => Ok(claims),
                    Step::Refetch(_) => Err(JwtError::UnknownKid),
                }
            }
        }
    }

    /// The whole verification with the keys in memory, without awaiting:
    /// the decoded parts live in this frame's buffers, never in a future.
    /// It stops early only when the token names a kid no key has and a
    /// JWKS URL that may serve a key of the token's algorithm is due for a
    /// refetch.
    fn verify_with_keys_at_hand(
        &self,
        token: &str,
        now_unix: i64,
        on_miss: OnMiss,
    ) -> Result<Step<'_>, JwtError> {
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
        let state = self.issuer(&issuer).ok_or(JwtError::UnknownIssuer)?;
        if !state.algorithms.contains(&header.alg) {
            return Err(JwtError::AlgNotAllowed);
        }

        let key = match state.find_key(header.kid.as_deref(), header.alg, on_miss) {
            Found::Key(key) => key,
            Found::Unknown => return Err(JwtError::UnknownKid),
            Found::Refetch(url) => return Ok(Step::Refetch(url)),
        };
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
        .map(Step::Accepted)
    }

    /// The configured issuer named exactly `name`.
    fn issuer(&self, name: &str) -> Option<&IssuerState> {
        let issuers = &self.inner.issuers;
        issuers
            .binary_search_by(|(configured, _)| configured.as_str().cmp(name))
            .ok()
            .map(|at| &issuers[at].1)
    }

    /// HTTP fetches of JWKS URLs attempted since start, successful or not.
    pub fn jwks_fetch_count(&self) -> u64 {
        self.inner.fetch_count.load(Ordering::Relaxed)
    }

    /// Checks (`stat`s) of the key files since start: once per second at
    /// most on the request path, and on an unknown kid only after the
    /// file's directory changed.
    pub fn key_file_check_count(&self) -> u64 {
        self.inner.key_file_checks.load(Ordering::Relaxed)
    }
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Issuer names and counters only: no key material, no file content.
        let issuers: Vec<&str> = self.inner.issuers.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("JwtVerifier")
            .field("issuers", &issuers)
            .field("leeway", &self.inner.leeway)
            .field("max_token_bytes", &self.inner.max_token_bytes)
            .field("max_lifetime", &self.inner.max_lifetime)
            .field("jwks_fetch_count", &self.jwks_fetch_count())
            .field("key_file_check_count", &self.key_file_check_count())
            .finish()
    }
}

/// Where [`JwtVerifier::verify_with_keys_at_hand`] stopped, short of a
/// refusal.
#[expect(
    clippy::large_enum_variant,
    reason = "returned by value once per token; boxing the claims would add an allocation to every acceptance"
)]
enum Step<'v> {
    /// Every check passed.
    Accepted(TokenClaims),
    /// The kid is unknown and this URL may serve it: fetch, then verify again.
    Refetch(&'v UrlSource),
}

/// What a lookup miss may do.
#[derive(Clone, Copy, PartialEq, Eq)]
enum OnMiss {
    /// Re-read the key files now, and ask for a URL refetch.
    Reload,
    /// Nothing more: the sources were just refreshed.
    Refuse,
}

/// What [`IssuerState::find_key`] found.
enum Found<'v> {
    Key(Arc<Jwk>),
    Unknown,
    Refetch(&'v UrlSource),
}

impl IssuerState {
    /// The key the token names. On a miss the key files that may hold a
    /// key of the token's algorithm are stat'ed at once, and the JWKS URL
    /// refetched (rate-limited) if it may: that is how a rotation reaches a
    /// running verifier. A source of the other kind cannot turn the miss
    /// into an acceptance (the key's algorithm must be the token's), so it
    /// is left to its once-per-second check rather than stat'ed for every
    /// unknown kid an attacker sends.
    fn find_key(&self, kid: Option<&str>, alg: Algorithm, on_miss: OnMiss) -> Found<'_> {
        // One clock read for every file's periodic check.
        let now_ms = monotonic_millis();
        for file in [&self.secret_file, &self.jwks_file].into_iter().flatten() {
            file.check_due(now_ms);
        }
        if let Some(key) = self.lookup(kid) {
            return Found::Key(key);
        }
        if kid.is_none() || on_miss == OnMiss::Refuse {
            return Found::Unknown;
        }
        let kind = KeyKind::of(alg);
        let files = [
            (&self.secret_file, KeyKind::Secret),
            (&self.jwks_file, KeyKind::Public),
        ];
        for (file, file_kind) in files {
            if let Some(file) = file
                && file_kind == kind
            {
                file.check_on_miss();
            }
        }
        // A refetch that is not due would return at once: decided here, so
        // that a flood of unknown kids is refused without a second pass.
        if let Some(url) = &self.jwks_url
            && kind == KeyKind::Public
            && url.due()
        {
            return Found::Refetch(url);
        }
        self.lookup(kid).map_or(Found::Unknown, Found::Key)
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

/// The header members the checks read, each as its raw JSON text (so its
/// type is checked exactly); a member named twice is malformed, other
/// members are never read.
#[derive(Debug, Default, PartialEq, Eq)]
struct RawHeader<'a> {
    alg: Option<&'a str>,
    typ: Option<&'a str>,
    kid: Option<&'a str>,
    crit: Option<&'a str>,
    jku: Option<&'a str>,
    x5u: Option<&'a str>,
    jwk: Option<&'a str>,
    x5c: Option<&'a str>,
}

/// Where the scanner puts each member [`RawHeader`] reads: its field order.
fn header_slot(name: &str) -> Option<usize> {
    Some(match name {
        "alg" => 0,
        "typ" => 1,
        "kid" => 2,
        "crit" => 3,
        "jku" => 4,
        "x5u" => 5,
        "jwk" => 6,
        "x5c" => 7,
        _ => return None,
    })
}

impl<'a> RawHeader<'a> {
    /// Reads `text` with the scanner, or with serde where the scanner
    /// defers to it: the same answers either way (see the differential
    /// test in this module).
    fn parse(text: &'a str) -> Option<Self> {
        let mut found = [None; 8];
        match scan::object(text, header_slot, &mut found) {
            Scan::Valid => {
                let [alg, typ, kid, crit, jku, x5u, jwk, x5c] = found;
                Some(Self {
                    alg,
                    typ,
                    kid,
                    crit,
                    jku,
                    x5u,
                    jwk,
                    x5c,
                })
            }
            Scan::Invalid => None,
            Scan::Unsure => Self::parse_serde(text),
        }
    }

    /// The reference reading: serde refuses a repeated field, unescapes
    /// member names before matching them, and accepts any nesting depth.
    fn parse_serde(text: &'a str) -> Option<Self> {
        let raw: SerdeHeader<'a> = serde_json::from_str(text).ok()?;
        Some(Self {
            alg: raw.alg.map(RawValue::get),
            typ: raw.typ.map(RawValue::get),
            kid: raw.kid.map(RawValue::get),
            crit: raw.crit.map(RawValue::get),
            jku: raw.jku.map(RawValue::get),
            x5u: raw.x5u.map(RawValue::get),
            jwk: raw.jwk.map(RawValue::get),
            x5c: raw.x5c.map(RawValue::get),
        })
    }
}

/// [`RawHeader`] as serde reads it.
#[derive(Deserialize)]
struct SerdeHeader<'a> {
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
    let raw = RawHeader::parse(text).ok_or(malformed)?;
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
    let int = |raw: Option<&str>, name| raw.map(|r| integer(r, name)).transpose();
    let text = |raw: Option<&'a str>, name| raw.map(|r| string(r, name)).transpose();
    let exp = int(payload.exp, "exp")?;
    let nbf = int(payload.nbf, "nbf")?;
    let iat = int(payload.iat, "iat")?;
    let auth_time = int(payload.auth_time, "auth_time")?;
    let sub = text(payload.sub, "sub")?;
    let tenant = text(payload.tenant, "tenant")?;
    let region = text(payload.region, "region")?;
    let jti = text(payload.jti, "jti")?;
    let scope = text(payload.scope, "scope")?;
    let operator = match payload.operator {
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
        Some(raw) if raw.starts_with('"') => Some(Audiences::One(string(raw, "aud")?)),
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
#[derive(Debug, Default, PartialEq, Eq)]
struct RawClaims<'a> {
    iss: Option<&'a str>,
    sub: Option<&'a str>,
    aud: Option<&'a str>,
    exp: Option<&'a str>,
    nbf: Option<&'a str>,
    iat: Option<&'a str>,
    jti: Option<&'a str>,
    tenant: Option<&'a str>,
    region: Option<&'a str>,
    scope: Option<&'a str>,
    amr: Option<&'a str>,
    auth_time: Option<&'a str>,
    operator: Option<&'a str>,
}

/// Where the scanner puts each member [`RawClaims`] reads: its field order.
fn claim_slot(name: &str) -> Option<usize> {
    Some(match name {
        "iss" => 0,
        "sub" => 1,
        "aud" => 2,
        "exp" => 3,
        "nbf" => 4,
        "iat" => 5,
        "jti" => 6,
        "tenant" => 7,
        "region" => 8,
        "scope" => 9,
        "amr" => 10,
        "auth_time" => 11,
        "operator" => 12,
        _ => return None,
    })
}

impl<'a> RawClaims<'a> {
    /// A JSON object (not an array: serde would read an array as a struct
    /// by position); a claim named twice is malformed.
    fn parse(payload: &'a [u8]) -> Result<Self, JwtError> {
        let malformed = JwtError::Malformed("payload is not a json object");
        if payload.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(malformed);
        }
        // UTF-8 checked once for the whole payload (RFC 8259 §8.1): the
        // scanner then reads strings and raw members without checking each.
        let text =
            std::str::from_utf8(payload).map_err(|_| JwtError::Malformed("payload is not a json object"))?;
        let mut found = [None; 13];
        match scan::object(text, claim_slot, &mut found) {
            Scan::Valid => {
                let [
                    iss,
                    sub,
                    aud,
                    exp,
                    nbf,
                    iat,
                    jti,
                    tenant,
                    region,
                    scope,
                    amr,
                    auth_time,
                    operator,
                ] = found;
                Ok(Self {
                    iss,
                    sub,
                    aud,
                    exp,
                    nbf,
                    iat,
                    jti,
                    tenant,
                    region,
                    scope,
                    amr,
                    auth_time,
                    operator,
                })
            }
            Scan::Invalid => Err(malformed),
            Scan::Unsure => Self::parse_serde(text).ok_or(malformed),
        }
    }

    /// The reference reading, where the scanner defers: a repeated claim
    /// this struct reads is an error (serde refuses a duplicate field);
    /// members it ignores are never read (RFC 7519 §4).
    fn parse_serde(text: &'a str) -> Option<Self> {
        let raw: SerdeClaims<'a> = serde_json::from_str(text).ok()?;
        Some(Self {
            iss: raw.iss.map(RawValue::get),
            sub: raw.sub.map(RawValue::get),
            aud: raw.aud.map(RawValue::get),
            exp: raw.exp.map(RawValue::get),
            nbf: raw.nbf.map(RawValue::get),
            iat: raw.iat.map(RawValue::get),
            jti: raw.jti.map(RawValue::get),
            tenant: raw.tenant.map(RawValue::get),
            region: raw.region.map(RawValue::get),
            scope: raw.scope.map(RawValue::get),
            amr: raw.amr.map(RawValue::get),
            auth_time: raw.auth_time.map(RawValue::get),
            operator: raw.operator.map(RawValue::get),
        })
    }
}

/// [`RawClaims`] as serde reads it.
#[derive(Deserialize)]
struct SerdeClaims<'a> {
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

/// A member that is present, whatever its value (`null` included).
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(deserializer).map(Some)
}

/// A NumericDate written as a JSON integer: `-?[0-9]+`, within i64.
fn integer(raw: &str, name: &'static str) -> Result<i64, JwtError> {
    let digits = raw.strip_prefix('-').unwrap_or(raw);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(JwtError::InvalidClaimType(name));
    }
    raw.parse().map_err(|_| JwtError::InvalidClaimType(name))
}

/// The `aud` claim (RFC 7519 §4.1.3): one audience, read in place, or
/// several.
enum Audiences<'a> {
    One(Cow<'a, str>),
    Several(Vec<String>),
}

/// The text of one JSON value that the scanner or serde has validated.
trait RawJson {
    fn text(&self) -> &str;
}

impl RawJson for str {
    fn text(&self) -> &str {
        self
    }
}

impl RawJson for RawValue {
    fn text(&self) -> &str {
        self.get()
    }
}

impl<T: RawJson + ?Sized> RawJson for Box<T> {
    fn text(&self) -> &str {
        T::text(self)
    }
}

/// A JSON string, borrowed when it holds no escapes.
fn string<'a, R: RawJson + ?Sized>(raw: &'a R, name: &'static str) -> Result<Cow<'a, str>, JwtError> {
    let raw = raw.text();
    if !raw.starts_with('"') {
        return Err(JwtError::InvalidClaimType(name));
    }
    // The parser has validated this string token (UTF-8, no control
    // characters, closed). Without a backslash it has no escapes, so no
    // quote inside it either: its content is the text between the quotes.
    if let Some(content) = raw.strip_prefix('"').and_then(|t| t.strip_suffix('"'))
        && !content.contains('\\')
    {
        return Ok(Cow::Borrowed(content));
    }
    serde_json::from_str::<Cow<'a, str>>(raw).map_err(|_| JwtError::InvalidClaimType(name))
}

/// A JSON array of strings. `raw` is one JSON value that the scanner or
/// serde has validated.
fn strings(raw: &str) -> Option<Vec<String>> {
    if !raw.starts_with('[') {
        return None;
    }
    if raw.contains('\\') {
        // Escapes (and the surrogate rules of `\u`): serde decodes them.
        return serde_json::from_str::<Vec<String>>(raw).ok();
    }
    // Valid JSON without a backslash: each string element is the text
    // between a quote and the next one; any other element is refused.
    let bytes = raw.as_bytes();
    let mut items = Vec::new();
    let mut i = scan::whitespace(bytes, 1);
    if bytes.get(i) == Some(&b']') {
        return Some(items);
    }
    loop {
        if bytes.get(i) != Some(&b'"') {
            return None;
        }
        let close = i + 1 + memchr::memchr(b'"', bytes.get(i + 1..)?)?;
        items.push(raw.get(i + 1..close)?.to_owned());
        i = scan::whitespace(bytes, close + 1);
        match bytes.get(i) {
            Some(b',') => i = scan::whitespace(bytes, i + 1),
            Some(b']') => return Some(items),
            _ => return None,
        }
    }
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

    /// One JSON text through both readings of each part: the scanner (with
    /// its serde fallback, as `verify` runs it) and serde alone. They must
    /// agree on acceptance and on every member's raw text. Returns what the
    /// scanner decided by itself for the payload names.
    fn both_readings_agree(text: &str) -> Scan {
        let claims = RawClaims::parse(text.as_bytes()).ok();
        // `parse` refuses a text that does not start with `{` before any
        // JSON is read; serde alone would read an array as a struct.
        let starts_as_object = text.bytes().find(|b| !b.is_ascii_whitespace()) == Some(b'{');
        let reference = RawClaims::parse_serde(text).filter(|_| starts_as_object);
        assert_eq!(claims, reference, "payload {text:?}");
        let header = RawHeader::parse(text);
        // The scanner never reads anything but an object.
        assert!(starts_as_object || header.is_none(), "header {text:?}");
        let reference = RawHeader::parse_serde(text).filter(|_| starts_as_object);
        assert_eq!(header.filter(|_| starts_as_object), reference, "header {text:?}");
        let mut found = [None; 13];
        scan::object(text, claim_slot, &mut found)
    }

    #[test]
    fn the_scanner_reads_hostile_json_exactly_as_serde() {
        struct Case {
            name: &'static str,
            input: String,
            /// Whether it is accepted both as a payload and as a header
            /// (a member read twice is refused only where it is read).
            accepted: bool,
        }
        fn case(name: &'static str, input: impl Into<String>, accepted: bool) -> Case {
            Case {
                name,
                input: input.into(),
                accepted,
            }
        }
        let deep = |n: usize| format!(r#"{{"x":{}{}}}"#, "[".repeat(n), "]".repeat(n));
        let deep_objects = |n: usize| format!(r#"{{"x":{}1{}}}"#, r#"{"a":"#.repeat(n), "}".repeat(n));
        let cases = [
            case("empty object", "{}", true),
            case(
                "whitespace around",
                " \t\r\n{ \"iss\" : \"a\" , \"x\" :[ ] }\n",
                true,
            ),
            case("form feed before", "\u{c}{}", false),
            case("form feed after", "{}\u{c}", false),
            case("form feed inside", "{\u{c}}", false),
            case("trailing comma", r#"{"iss":"a",}"#, false),
            case("missing comma", r#"{"iss":"a" "sub":"b"}"#, false),
            case("missing colon", r#"{"iss" "a"}"#, false),
            case("member without value", r#"{"iss"}"#, false),
            case("leading comma", r#"{,"iss":"a"}"#, false),
            case("single quotes", "{'iss':'a'}", false),
            case("bare name", "{iss:1}", false),
            case("number as name", "{1:1}", false),
            case("duplicate read claim", r#"{"iss":"a","iss":"a"}"#, false),
            case(
                "duplicate read claim, null first",
                r#"{"exp":null,"exp":1}"#,
                false,
            ),
            case("duplicate ignored member", r#"{"x":1,"x":2}"#, true),
            case(
                "duplicate header member",
                r#"{"alg":"HS256","alg":"none"}"#,
                false,
            ),
            case("escaped name", r#"{"\u0069ss":"a"}"#, true),
            case("escaped duplicate", r#"{"iss":"a","\u0069ss":"b"}"#, false),
            case(
                "escaped duplicate of a header member",
                r#"{"alg":"HS256","\u0061lg":"none"}"#,
                false,
            ),
            case("lone surrogate in a name", r#"{"\udc00":1}"#, false),
            case("lone leading surrogate in a name", r#"{"\ud800":1}"#, false),
            case("surrogate pair in a name", r#"{"\ud83d\ude00":1}"#, true),
            case("lone surrogate in an ignored value", r#"{"x":"\udc00"}"#, true),
            case("lone surrogate in a nested name", r#"{"x":{"\udc00":1}}"#, true),
            case("control character in a value", "{\"x\":\"a\u{1}\"}", false),
            case("control character in a name", "{\"a\u{1f}\":1}", false),
            case("raw tab in a value", "{\"x\":\"a\tb\"}", false),
            case("delete character in a value", "{\"x\":\"a\u{7f}\"}", true),
            case("unknown escape", r#"{"x":"\q"}"#, false),
            case("short unicode escape", r#"{"x":"\u12"}"#, false),
            case("non-hex unicode escape", r#"{"x":"\u12G4"}"#, false),
            case("unicode escape at the end", r#"{"x":"\u"#, false),
            case("every escape", r#"{"x":"\"\\\/\b\f\n\r\t\u00e9"}"#, true),
            case("unclosed string", r#"{"x":"abc}"#, false),
            case("unclosed object", r#"{"x":1"#, false),
            case("unclosed nested object", r#"{"x":{"a":1}"#, false),
            case("leading zero", r#"{"exp":01}"#, false),
            case("leading zero, ignored member", r#"{"x":00}"#, false),
            case("negative zero", r#"{"exp":-0}"#, true),
            case("lone minus", r#"{"exp":-}"#, false),
            case("plus sign", r#"{"exp":+1}"#, false),
            case("dot without digits", r#"{"exp":1.}"#, false),
            case("dot first", r#"{"exp":.5}"#, false),
            case("exponent without digits", r#"{"exp":1e}"#, false),
            case("exponent sign without digits", r#"{"exp":1e+}"#, false),
            case("full number", r#"{"exp":-12.50E+07}"#, true),
            case("huge number", r#"{"x":1e999999}"#, true),
            case("hex number", r#"{"x":0x10}"#, false),
            case("NaN", r#"{"x":NaN}"#, false),
            case("Infinity", r#"{"x":Infinity}"#, false),
            case("truncated true", r#"{"x":tru}"#, false),
            case("truncated null", r#"{"x":nul"#, false),
            case("capitalised literal", r#"{"x":True}"#, false),
            case("literals", r#"{"x":[true,false,null]}"#, true),
            case("array trailing comma", r#"{"x":[1,]}"#, false),
            case("array leading comma", r#"{"x":[,1]}"#, false),
            case("array missing comma", r#"{"x":[1 2]}"#, false),
            case("nested trailing comma", r#"{"x":{"a":1,}}"#, false),
            case("mismatched brackets", r#"{"x":[}"#, false),
            case("mismatched braces", r#"{"x":{]}"#, false),
            case("array at the top", r#"[{"iss":"a"}]"#, false),
            case("string at the top", r#""iss""#, false),
            case("empty text", "", false),
            case("only whitespace", "  ", false),
            case("second object", r#"{"a":1}{"b":2}"#, false),
            case("trailing garbage", "{} x", false),
            case("trailing brace", "{}}", false),
            case("nesting 127 deep", deep(127), true),
            case("nesting 128 deep", deep(128), true),
            case("nesting 129 deep (serde decides)", deep(129), true),
            case("nesting 4000 deep (serde decides)", deep(4000), true),
            case("objects nested 200 deep", deep_objects(200), true),
            case(
                "deep and unclosed",
                format!(r#"{{"x":{}}}"#, "[".repeat(300)),
                false,
            ),
            case(
                "multibyte text",
                "{\"sub\":\"\u{e9}\u{1f600}\",\"\u{e9}\":1}",
                true,
            ),
        ];
        let mut failures = Vec::new();
        for Case {
            name,
            input,
            accepted,
        } in &cases
        {
            both_readings_agree(input);
            let read = RawClaims::parse(input.as_bytes()).is_ok() && RawHeader::parse(input).is_some();
            if read != *accepted {
                failures.push(format!("{name}: expected accepted = {accepted}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
        // The members themselves, as the claim checks see them.
        let read = RawClaims::parse(br#"{ "exp" : -12.50E+07 , "\u0069ss":"a", "amr" :[ "x" ] }"#).unwrap();
        assert_eq!(read.exp, Some("-12.50E+07"));
        assert_eq!(read.iss, Some(r#""a""#));
        assert_eq!(read.amr, Some(r#"[ "x" ]"#));
    }

    /// A small deterministic generator (xorshift64*): the same inputs on
    /// every run, so a disagreement is reproducible.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }

        fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
            items[self.below(items.len())]
        }
    }

    /// Whitespace, now and then a form feed or nothing.
    fn gen_space(rng: &mut Rng, out: &mut String) {
        let spaces = ["", "", "", "", "", " ", " ", "  ", "\n\t", "\r "];
        // A form feed (not JSON whitespace) now and then.
        if rng.below(40) == 0 {
            out.push('\u{c}');
        } else {
            out.push_str(rng.pick(&spaces));
        }
    }

    fn gen_string(rng: &mut Rng, out: &mut String) {
        out.push('"');
        for _ in 0..rng.below(6) {
            out.push_str(rng.pick(&[
                "a",
                "Z",
                "0",
                " ",
                "\u{e9}",
                "\u{1f600}",
                "\\\"",
                "\\\\",
                "\\/",
                "\\n",
                "\\u0041",
                "\\udc00",
                "\\ud83d\\ude00",
                "\\ud800",
                "\u{7f}",
                "'",
                "acme",
                "tools:read",
                "b",
            ]));
        }
        // Now and then something serde refuses inside a string.
        if rng.below(30) == 0 {
            out.push_str(rng.pick(&["\\x", "\\u12", "\u{1}", "\\u12G4"]));
        }
        out.push('"');
    }

    fn gen_value(rng: &mut Rng, depth: usize, out: &mut String) {
        let kinds = if depth > 3 { 4 } else { 6 };
        match rng.below(kinds) {
            0 if rng.below(20) == 0 => {
                out.push_str(rng.pick(&[
                    "01", "1.", ".5", "1e", "-", "+1", "00", "1e+", "0x1", "tru", "nul", "True", "NaN",
                ]));
            }
            0 => out.push_str(rng.pick(&[
                "0",
                "-0",
                "1750000000",
                "-17",
                "1.5",
                "1e9",
                "1E-2",
                "9223372036854775808",
                "-9223372036854775809",
                "1.0",
                "-0.0e-0",
                "true",
                "false",
                "null",
            ])),
            1 => gen_string(rng, out),
            2 => out.push_str(rng.pick(&["1750000600", "1750000000", "true", "null", "[]", "{}"])),
            3 => out.push_str(rng.pick(&[r#""HS256""#, r#""JWT""#, r#""acme""#, r#"["pwd","otp"]"#])),
            4 => {
                out.push('[');
                for k in 0..rng.below(4) {
                    if k > 0 {
                        out.push(',');
                    }
                    gen_space(rng, out);
                    gen_value(rng, depth + 1, out);
                    gen_space(rng, out);
                }
                out.push(']');
            }
            _ => gen_object(rng, depth + 1, out),
        }
    }

    fn gen_object(rng: &mut Rng, depth: usize, out: &mut String) {
        const NAMES: [&str; 28] = [
            "iss",
            "sub",
            "aud",
            "exp",
            "nbf",
            "iat",
            "jti",
            "tenant",
            "region",
            "scope",
            "amr",
            "auth_time",
            "operator",
            "alg",
            "typ",
            "kid",
            "crit",
            "jku",
            "x5u",
            "jwk",
            "x5c",
            "x",
            "note",
            "Iss",
            "iss ",
            "\\u0069ss",
            "\\u0061lg",
            "\\udc00",
        ];
        out.push('{');
        for k in 0..rng.below(6) {
            if k > 0 {
                out.push(',');
            }
            gen_space(rng, out);
            out.push('"');
            out.push_str(rng.pick(&NAMES));
            out.push('"');
            gen_space(rng, out);
            out.push(':');
            gen_space(rng, out);
            gen_value(rng, depth, out);
            gen_space(rng, out);
        }
        out.push('}');
    }

    /// A byte-level edit that keeps the text UTF-8: delete, insert or
    /// replace one character with one that matters to JSON.
    fn mutate(rng: &mut Rng, text: &str) -> String {
        let chars: Vec<char> = text.chars().collect();
        if chars.is_empty() {
            return text.to_owned();
        }
        let at = rng.below(chars.len());
        let insert = [
            '"', '\\', ',', ':', '{', '}', '[', ']', '0', '-', 'e', '.', ' ', '\u{c}', '\u{1}', 'u',
        ];
        let c = insert[rng.below(insert.len())];
        let mut out: Vec<char> = chars.clone();
        match rng.below(3) {
            0 => {
                out.remove(at);
            }
            1 => out.insert(at, c),
            _ => out[at] = c,
        }
        out.into_iter().collect()
    }

    #[test]
    fn the_scanner_agrees_with_serde_on_generated_objects() {
        let mut rng = Rng(0x5eed_1234_abcd_0019);
        let (mut valid, mut invalid, mut unsure) = (0u32, 0u32, 0u32);
        for round in 0..60_000 {
            let mut text = String::new();
            gen_space(&mut rng, &mut text);
            gen_object(&mut rng, 0, &mut text);
            gen_space(&mut rng, &mut text);
            // Half the objects as generated, half edited once or twice.
            for _ in 0..rng.below(4).saturating_sub(1) {
                text = mutate(&mut rng, &text);
            }
            match both_readings_agree(&text) {
                Scan::Valid => valid += 1,
                Scan::Invalid => invalid += 1,
                Scan::Unsure => unsure += 1,
            }
            // Arrays of strings: the fast path against serde's Vec<String>.
            if round % 4 == 0 {
                let mut value = String::new();
                gen_value(&mut rng, 3, &mut value);
                if serde_json::from_str::<&RawValue>(&value).is_ok() {
                    assert_eq!(
                        strings(value.as_str()),
                        serde_json::from_str::<Vec<String>>(&value)
                            .ok()
                            .filter(|_| value.starts_with('[')),
                        "{value:?}"
                    );
                }
            }
        }
        println!("scanner decided {valid} valid and {invalid} invalid, deferred {unsure} to serde");
        // Both verdicts are reached by the scanner itself, often: the
        // agreement above is not only the fallback agreeing with itself.
        assert!(
            valid > 5_000 && invalid > 5_000,
            "{valid} valid, {invalid} invalid"
        );
    }

    #[test]
    fn arrays_of_strings_are_read_exactly() {
        for (json, expected) in [
            (r#"[]"#, Some(vec![])),
            (r#"[ ]"#, Some(vec![])),
            (r#"["pwd","otp"]"#, Some(vec!["pwd", "otp"])),
            (r#"[ "pwd" , "" ]"#, Some(vec!["pwd", ""])),
            (r#"["a\"b"]"#, Some(vec!["a\"b"])),
            (r#"["\u0061"]"#, Some(vec!["a"])),
            (r#"["\udc00"]"#, None),
            (r#"["pwd",1]"#, None),
            (r#"["pwd",null]"#, None),
            (r#"[["pwd"]]"#, None),
            (r#"[{"a":"b"}]"#, None),
            (r#""pwd""#, None),
        ] {
            let expected: Option<Vec<String>> = expected.map(|v| v.into_iter().map(str::to_owned).collect());
            assert_eq!(strings(json), expected, "{json}");
        }
    }
}
