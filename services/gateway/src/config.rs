//! The gateway's settings: its region, the residency allow-list, token
//! issuers, the edge listener and its limits, MFA, moderation and rate
//! limits. Parsed and validated before any port is bound.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use soma_auth::JwtSettings;

use crate::error::GatewayConfigError;
use crate::ratelimit::RateLimitSettings;

/// The environment variable holding the residency allow-list (the name the
/// platform fixed; it wins over the file's `residency_allowed`).
pub const RESIDENCY_ENV: &str = "SOMAGENT_GATEWAY_RESIDENCY_ALLOWED";
/// The environment variable naming the gateway's config file.
pub const CONFIG_ENV: &str = "SOMA_GATEWAY_CONFIG";
/// The environment variable overriding the gateway's own region.
pub const REGION_ENV: &str = "SOMA_GATEWAY_REGION";
/// The environment variable overriding the edge's listen address.
pub const EDGE_ADDR_ENV: &str = "SOMA_EDGE_ADDR";
/// How long a unary call waits for its backend unless configured
/// otherwise (Envoy's default route timeout).
pub const DEFAULT_BACKEND_TIMEOUT: Duration = Duration::from_secs(15);
/// The longest `backend_timeout` accepted.
pub const MAX_BACKEND_TIMEOUT: Duration = Duration::from_secs(3600);

/// A region name: lowercase ASCII letters, digits and inner dashes, at most
/// 63 bytes (`eu-west-1`, `local`). Compared byte for byte, so `EU-WEST-1`,
/// `eu-west-1 ` and look-alike code points never equal it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Region(String);

impl Region {
    /// Parses a region name from configuration.
    pub fn parse(value: &str) -> Result<Self, String> {
        let ok_char = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-';
        let bytes = value.as_bytes();
        if bytes.is_empty() || bytes.len() > 63 {
            return Err(format!("region {value:?} must be 1 to 63 bytes"));
        }
        if !bytes.iter().all(|&c| ok_char(c)) || bytes[0] == b'-' || bytes[bytes.len() - 1] == b'-' {
            return Err(format!(
                "region {value:?} may hold only lowercase ASCII letters, digits and inner dashes"
            ));
        }
        Ok(Self(value.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Which tenant regions this gateway may serve.
///
/// `SOMAGENT_GATEWAY_RESIDENCY_ALLOWED` is a comma-separated list of
/// regions, with optional per-tenant entries `tenant=region|region`. A tenant
/// with its own entry is served only in the regions of that entry; every
/// other tenant only in the listed regions. Nothing the client sends takes
/// part: the region is the verified token's `region` claim.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Residency {
    regions: BTreeSet<Region>,
    tenants: BTreeMap<String, BTreeSet<Region>>,
}

impl Residency {
    /// Parses the allow-list. Empty entries, bad region or tenant names, a
    /// tenant listed twice, or a list allowing nothing are errors: a gateway
    /// with an unusable allow-list does not start (it fails closed).
    pub fn parse(value: &str) -> Result<Self, String> {
        let mut regions = BTreeSet::new();
        let mut tenants = BTreeMap::new();
        for entry in value.split(',') {
            let entry = entry.trim_matches(|c| c == ' ' || c == '\t');
            if entry.is_empty() {
                return Err("an entry is empty".to_owned());
            }
            match entry.split_once('=') {
                None => {
                    regions.insert(Region::parse(entry)?);
                }
                Some((tenant, list)) => {
                    if !crate::context::is_valid_tenant(tenant) {
                        return Err(format!("tenant {tenant:?} is not a valid tenant name"));
                    }
                    let set = list
                        .split('|')
                        .map(Region::parse)
                        .collect::<Result<BTreeSet<_>, _>>()?;
                    if tenants.insert(tenant.to_owned(), set).is_some() {
                        return Err(format!("tenant {tenant:?} is listed twice"));
                    }
                }
            }
        }
        if regions.is_empty() && tenants.is_empty() {
            return Err("the list allows no region".to_owned());
        }
        Ok(Self { regions, tenants })
    }

    /// Only `region`.
    pub fn only(region: Region) -> Self {
        Self {
            regions: BTreeSet::from([region]),
            tenants: BTreeMap::new(),
        }
    }

    /// Whether `tenant` may be served when its verified region is `region`
    /// (exact bytes).
    pub fn allows(&self, tenant: &str, region: &str) -> bool {
        let set = self.tenants.get(tenant).unwrap_or(&self.regions);
        set.iter().any(|r| r.as_str() == region)
    }
}

/// Limits checked before any token is verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EdgeLimits {
    /// Largest request body, bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Largest sum of header names and values, bytes (431 beyond).
    pub max_header_bytes: usize,
    /// Deepest JSON nesting of a body (400 beyond).
    pub max_json_depth: usize,
}

impl Default for EdgeLimits {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            max_header_bytes: 16 * 1024,
            max_json_depth: 32,
        }
    }
}

/// How the edge treats connections: timeouts that close what is stalled or
/// idle, and caps that refuse what is too many. Each has a safe default (the
/// figures nginx and Envoy ship with, or tighter); zero and absurd values are
/// refused at load, because an edge without them keeps every half-open
/// connection until its file descriptors run out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EdgeConnections {
    /// A complete request head must arrive within this, counted from the
    /// connection's start (after the TLS handshake, which has its own 10 s)
    /// or, on an HTTP/1.1 keep-alive connection, from the first byte of the
    /// next request. Slowloris ends here.
    pub header_read_timeout: Duration,
    /// A request body must arrive whole within this, counted from the end
    /// of its head: the minimum rate is `max_body_bytes` per this duration.
    pub body_read_timeout: Duration,
    /// A connection with no request in progress (HTTP/1.1 keep-alive between
    /// requests, HTTP/2 with no open stream) is closed after this.
    pub idle_timeout: Duration,
    /// A connection whose peer takes nothing of what the edge writes (the
    /// socket refuses every byte) for this long is closed: nginx's
    /// `send_timeout`, counted between two writes that made progress, so a
    /// slow reader keeps its connection and one that stopped reading does
    /// not hold a response, its backend call and its buffers forever.
    pub send_timeout: Duration,
    /// Concurrent streams on one HTTP/2 connection (SETTINGS).
    pub max_concurrent_streams: u32,
    /// Open connections the edge holds at once; a connection beyond it is
    /// closed at accept, before any TLS or HTTP work.
    pub max_connections: usize,
    /// Open connections one peer IP address holds at once.
    pub max_connections_per_client: usize,
    /// Header fields in one HTTP/1.1 request head: beyond it, 431
    /// `too_many_headers` (HTTP/2 is bounded by `limits.max_header_bytes`
    /// instead).
    pub max_headers: usize,
}

impl Default for EdgeConnections {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            send_timeout: Duration::from_secs(60),
            max_concurrent_streams: 100,
            max_connections: 10_000,
            max_connections_per_client: 1024,
            max_headers: 100,
        }
    }
}

/// The shortest timeout accepted: below it, a loaded client on a slow
/// network cannot send a head at all.
pub const MIN_CONNECTION_TIMEOUT: Duration = Duration::from_millis(100);
/// The longest header or body read timeout accepted.
pub const MAX_READ_TIMEOUT: Duration = Duration::from_secs(3600);
/// The longest idle timeout accepted.
pub const MAX_IDLE_TIMEOUT: Duration = Duration::from_secs(24 * 3600);
/// The most HTTP/2 streams one connection may be allowed.
pub const MAX_CONCURRENT_STREAMS: u32 = 10_000;
/// The most connections the edge may be allowed (far above any file
/// descriptor limit: a larger figure is a typing mistake).
pub const MAX_CONNECTIONS: usize = 1_000_000;
/// The most header fields one HTTP/1.1 head may be allowed.
pub const MAX_HEADERS: usize = 1000;

impl EdgeConnections {
    /// Checks every setting against its bounds; the error names the key.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let timeouts = [
            (
                "connections.header_read_timeout",
                self.header_read_timeout,
                MAX_READ_TIMEOUT,
            ),
            (
                "connections.body_read_timeout",
                self.body_read_timeout,
                MAX_READ_TIMEOUT,
            ),
            ("connections.idle_timeout", self.idle_timeout, MAX_IDLE_TIMEOUT),
            ("connections.send_timeout", self.send_timeout, MAX_READ_TIMEOUT),
        ];
        for (key, value, max) in timeouts {
            if value < MIN_CONNECTION_TIMEOUT || value > max {
                return Err((
                    key,
                    format!(
                        "{} is outside {} to {}",
                        humantime::format_duration(value),
                        humantime::format_duration(MIN_CONNECTION_TIMEOUT),
                        humantime::format_duration(max)
                    ),
                ));
            }
        }
        let counts = [
            (
                "connections.max_concurrent_streams",
                self.max_concurrent_streams as usize,
                MAX_CONCURRENT_STREAMS as usize,
            ),
            (
                "connections.max_connections",
                self.max_connections,
                MAX_CONNECTIONS,
            ),
            (
                "connections.max_connections_per_client",
                self.max_connections_per_client,
                self.max_connections,
            ),
            ("connections.max_headers", self.max_headers, MAX_HEADERS),
        ];
        for (key, value, max) in counts {
            if value == 0 || value > max {
                return Err((key, format!("{value} is outside 1 to {max}")));
            }
        }
        Ok(())
    }
}

/// Everything the gateway needs beyond the mesh settings.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// The gateway's own region.
    pub region: Region,
    /// Tenant regions this gateway serves.
    pub residency: Residency,
    /// Token issuers.
    pub jwt: JwtSettings,
    /// The HTTP/JSON edge listener; `None`: no edge (gRPC over mTLS only).
    pub edge_addr: Option<SocketAddr>,
    /// Certificate chain (PEM) of the edge; with `edge_tls_key_file`, HTTPS.
    pub edge_tls_cert_file: Option<PathBuf>,
    /// Private key (PEM) of the edge.
    pub edge_tls_key_file: Option<PathBuf>,
    /// Origins allowed by CORS (exact `scheme://host[:port]`).
    pub cors_allowed_origins: Vec<String>,
    /// Limits checked before any cryptography.
    pub limits: EdgeLimits,
    /// Timeouts and caps of the edge's connections.
    pub connections: EdgeConnections,
    /// Oldest `auth_time` an MFA-required method accepts.
    pub mfa_max_age: Duration,
    /// How often kill switches are re-read from the database.
    pub kill_switch_poll_interval: Duration,
    /// Moderation policy file; `None`: the built-in default policy.
    pub moderation_policy_file: Option<PathBuf>,
    /// Per-tenant rate limit.
    pub rate_limit: RateLimitSettings,
    /// Lifetime of the forwarded claims envelopes (at most 60 s).
    pub envelope_ttl: Duration,
    /// How long a unary call may wait for its backend (sent as
    /// `grpc-timeout`; a gRPC client's shorter deadline wins).
    pub backend_timeout: Duration,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    region: Option<String>,
    residency_allowed: Option<String>,
    jwt: Option<JwtSettings>,
    edge_addr: Option<String>,
    edge_tls_cert_file: Option<PathBuf>,
    edge_tls_key_file: Option<PathBuf>,
    #[serde(default)]
    cors_allowed_origins: Vec<String>,
    #[serde(default)]
    limits: FileLimits,
    #[serde(default)]
    connections: FileConnections,
    mfa_max_age: Option<String>,
    kill_switch_poll_interval: Option<String>,
    moderation_policy_file: Option<PathBuf>,
    rate_limit: Option<RateLimitSettings>,
    envelope_ttl: Option<String>,
    backend_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    max_body_bytes: Option<usize>,
    max_header_bytes: Option<usize>,
    max_json_depth: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConnections {
    header_read_timeout: Option<String>,
    body_read_timeout: Option<String>,
    idle_timeout: Option<String>,
    send_timeout: Option<String>,
    max_concurrent_streams: Option<u32>,
    max_connections: Option<usize>,
    max_connections_per_client: Option<usize>,
    max_headers: Option<usize>,
}

impl GatewayConfig {
    /// Loads the config file named by `SOMA_GATEWAY_CONFIG` (required: it
    /// names the token issuers), then the environment overrides.
    pub fn load(env: impl Fn(&str) -> Option<String>) -> Result<Self, GatewayConfigError> {
        let env = |k: &str| env(k).filter(|v| !v.is_empty());
        let path = env(CONFIG_ENV).ok_or(GatewayConfigError::Invalid {
            key: CONFIG_ENV,
            reason: "not set; the gateway needs a config file naming its token issuers".to_owned(),
        })?;
        Self::from_file(Path::new(&path), env)
    }

    /// Loads `path`, then the environment overrides.
    pub fn from_file(path: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Self, GatewayConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| GatewayConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let file: FileConfig = toml::from_str(&text).map_err(|e| GatewayConfigError::Parse {
            path: path.to_owned(),
            reason: e.message().to_owned(),
        })?;
        Self::from_parts(file, env)
    }

    fn from_parts(
        file: FileConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, GatewayConfigError> {
        let invalid = |key: &'static str| move |reason: String| GatewayConfigError::Invalid { key, reason };
        let region = match env(REGION_ENV).or(file.region) {
            Some(r) => Region::parse(&r).map_err(invalid("region"))?,
            None => Region::parse("local").map_err(invalid("region"))?,
        };
        // Fail closed: no allow-list, no gateway. `soma up` sets it to its
        // own region when the operator did not.
        let residency = env(RESIDENCY_ENV)
            .or(file.residency_allowed)
            .ok_or_else(|| GatewayConfigError::Invalid {
                key: RESIDENCY_ENV,
                reason: "not set; the gateway refuses to guess which regions it may serve".to_owned(),
            })
            .and_then(|v| Residency::parse(&v).map_err(invalid(RESIDENCY_ENV)))?;
        let jwt = file.jwt.ok_or(GatewayConfigError::Invalid {
            key: "jwt",
            reason: "no token issuers configured".to_owned(),
        })?;
        if jwt.issuers.is_empty() {
            return Err(GatewayConfigError::Invalid {
                key: "jwt.issuers",
                reason: "no token issuers configured".to_owned(),
            });
        }
        // Everything the verifier can check without files or network, now,
        // so that a bad `[jwt]` section exits before any port is bound.
        jwt.validate().map_err(|e| GatewayConfigError::Invalid {
            key: match e {
                soma_auth::JwtConfigError::MaxLifetime(_) => "jwt.max_lifetime",
                _ => "jwt.issuers",
            },
            reason: e.to_string(),
        })?;
        let edge_addr = env(EDGE_ADDR_ENV)
            .or(file.edge_addr)
            .map(|a| {
                a.parse::<SocketAddr>()
                    .map_err(|e| invalid("edge_addr")(e.to_string()))
            })
            .transpose()?;
        if file.edge_tls_cert_file.is_some() != file.edge_tls_key_file.is_some() {
            return Err(GatewayConfigError::Invalid {
                key: "edge_tls_cert_file",
                reason: "edge_tls_cert_file and edge_tls_key_file go together".to_owned(),
            });
        }
        for origin in &file.cors_allowed_origins {
            let ok = (origin.starts_with("https://") || origin.starts_with("http://"))
                && !origin.ends_with('/')
                && origin.is_ascii()
                && !origin.contains(char::is_whitespace);
            if !ok {
                return Err(invalid("cors_allowed_origins")(format!(
                    "{origin:?} is not an origin (scheme://host[:port])"
                )));
            }
        }
        let defaults = EdgeLimits::default();
        let limits = EdgeLimits {
            max_body_bytes: file.limits.max_body_bytes.unwrap_or(defaults.max_body_bytes),
            max_header_bytes: file.limits.max_header_bytes.unwrap_or(defaults.max_header_bytes),
            max_json_depth: file.limits.max_json_depth.unwrap_or(defaults.max_json_depth),
        };
        if limits.max_body_bytes == 0 || limits.max_header_bytes == 0 || limits.max_json_depth == 0 {
            return Err(invalid("limits")("limits must be positive".to_owned()));
        }
        let duration = |key: &'static str, v: Option<String>, default: Duration| match v {
            Some(v) => humantime::parse_duration(&v).map_err(|e| invalid(key)(e.to_string())),
            None => Ok(default),
        };
        let c = file.connections;
        let d = EdgeConnections::default();
        let connections = EdgeConnections {
            header_read_timeout: duration(
                "connections.header_read_timeout",
                c.header_read_timeout,
                d.header_read_timeout,
            )?,
            body_read_timeout: duration(
                "connections.body_read_timeout",
                c.body_read_timeout,
                d.body_read_timeout,
            )?,
            idle_timeout: duration("connections.idle_timeout", c.idle_timeout, d.idle_timeout)?,
            send_timeout: duration("connections.send_timeout", c.send_timeout, d.send_timeout)?,
            max_concurrent_streams: c.max_concurrent_streams.unwrap_or(d.max_concurrent_streams),
            max_connections: c.max_connections.unwrap_or(d.max_connections),
            max_connections_per_client: c
                .max_connections_per_client
                .unwrap_or(d.max_connections_per_client),
            max_headers: c.max_headers.unwrap_or(d.max_headers),
        };
        connections
            .validate()
            .map_err(|(key, reason)| invalid(key)(reason))?;
        let envelope_ttl = duration("envelope_ttl", file.envelope_ttl, Duration::from_secs(30))?;
        if envelope_ttl.is_zero() || envelope_ttl > soma_auth::MAX_ENVELOPE_LIFETIME {
            return Err(invalid("envelope_ttl")("must be between 1 s and 60 s".to_owned()));
        }
        let backend_timeout = duration("backend_timeout", file.backend_timeout, DEFAULT_BACKEND_TIMEOUT)?;
        if backend_timeout.is_zero() || backend_timeout > MAX_BACKEND_TIMEOUT {
            return Err(invalid("backend_timeout")(
                "must be between 1 ms and 1 h".to_owned(),
            ));
        }
        let kill_switch_poll_interval = duration(
            "kill_switch_poll_interval",
            file.kill_switch_poll_interval,
            Duration::from_millis(500),
        )?;
        if kill_switch_poll_interval.is_zero() || kill_switch_poll_interval > Duration::from_secs(2) {
            return Err(invalid("kill_switch_poll_interval")(
                "must be between 1 ms and 2 s (replicas must see a switch within 2 s)".to_owned(),
            ));
        }
        let rate_limit = file.rate_limit.unwrap_or_default();
        rate_limit
            .validate()
            .map_err(|e| invalid("rate_limit")(e.to_string()))?;
        Ok(Self {
            region,
            residency,
            jwt,
            edge_addr,
            edge_tls_cert_file: file.edge_tls_cert_file,
            edge_tls_key_file: file.edge_tls_key_file,
            cors_allowed_origins: file.cors_allowed_origins,
            limits,
            connections,
            mfa_max_age: duration("mfa_max_age", file.mfa_max_age, Duration::from_secs(15 * 60))?,
            kill_switch_poll_interval,
            moderation_policy_file: file.moderation_policy_file,
            rate_limit,
            envelope_ttl,
            backend_timeout,
        })
    }
}

/// The development issuer's name (`iss`): tenant tokens.
pub const DEV_ISSUER: &str = "soma-dev";
/// The development operator issuer's name (`iss`): configured with
/// `operator = true`, so its tokens may carry `"operator": true`.
pub const DEV_OPERATOR_ISSUER: &str = "soma-dev-operator";
/// The audience the development gateway accepts (`aud`), from both issuers.
pub const DEV_AUDIENCE: &str = "somastack";
/// The key id of the development issuer's key.
pub const DEV_KEY_ID: &str = "soma-dev-1";
/// The key id of the development operator issuer's key.
pub const DEV_OPERATOR_KEY_ID: &str = "soma-dev-operator-1";
/// The file name of the development issuer's JWK.
pub const DEV_ISSUER_JWK_FILE: &str = "dev-issuer.jwk";
/// The file name of the development operator issuer's JWK.
pub const DEV_OPERATOR_ISSUER_JWK_FILE: &str = "dev-operator-issuer.jwk";

/// A fresh development issuer key as a JSON Web Key (`kty` `oct`, `kid`,
/// `alg` HS256, `k`: 256 random bits, base64url), so that any JWT library
/// can mint tokens for it.
pub fn generate_dev_issuer_jwk() -> String {
    generate_hs256_jwk(DEV_KEY_ID)
}

/// A fresh development operator issuer key, like
/// [`generate_dev_issuer_jwk`] but its own key under its own kid: a tenant
/// token's key never signs an operator's token.
pub fn generate_dev_operator_issuer_jwk() -> String {
    generate_hs256_jwk(DEV_OPERATOR_KEY_ID)
}

fn generate_hs256_jwk(kid: &str) -> String {
    use base64::Engine as _;
    use rand::RngCore as _;
    let mut key = [0u8; 32];
    rand::rng().fill_bytes(&mut key);
    serde_json::json!({
        "kty": "oct",
        "kid": kid,
        "alg": "HS256",
        "use": "sig",
        "k": base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(key),
    })
    .to_string()
}

/// The config file of a development gateway: its region, its edge address,
/// the development issuer whose HS256 JWK is `jwk`, and the development
/// operator issuer whose HS256 JWK is `operator_jwk`.
pub fn dev_config_toml(
    jwk: &Path,
    operator_jwk: &Path,
    region: &Region,
    edge_addr: Option<SocketAddr>,
) -> String {
    let mut text = format!("region = {:?}\n", region.as_str());
    if let Some(addr) = edge_addr {
        text.push_str(&format!("edge_addr = \"{addr}\"\n"));
    }
    text.push_str(&format!(
        "\n[jwt]\n\n[[jwt.issuers]]\nissuer = {DEV_ISSUER:?}\naudiences = [{DEV_AUDIENCE:?}]\n\
         algorithms = [\"HS256\"]\nhmac_secret_file = {:?}\n",
        jwk.display().to_string()
    ));
    text.push_str(&format!(
        "\n[[jwt.issuers]]\nissuer = {DEV_OPERATOR_ISSUER:?}\naudiences = [{DEV_AUDIENCE:?}]\n\
         algorithms = [\"HS256\"]\nhmac_secret_file = {:?}\noperator = true\n",
        operator_jwk.display().to_string()
    ));
    text
}

impl GatewayConfig {
    /// A development gateway under `dir`: creates the issuer keys
    /// `dir/dev-issuer.jwk` and `dir/dev-operator-issuer.jwk` (once) and
    /// `dir/gateway.toml`, and loads it with the allow-list set to `region`.
    pub fn dev(
        dir: &Path,
        region: &Region,
        edge_addr: Option<SocketAddr>,
    ) -> Result<Self, GatewayConfigError> {
        let write = |path: &Path, text: &str| {
            std::fs::write(path, text).map_err(|source| GatewayConfigError::Read {
                path: path.to_owned(),
                source,
            })
        };
        let jwk = dir.join(DEV_ISSUER_JWK_FILE);
        if !jwk.exists() {
            write(&jwk, &generate_dev_issuer_jwk())?;
        }
        let operator_jwk = dir.join(DEV_OPERATOR_ISSUER_JWK_FILE);
        if !operator_jwk.exists() {
            write(&operator_jwk, &generate_dev_operator_issuer_jwk())?;
        }
        let config = dir.join("gateway.toml");
        write(&config, &dev_config_toml(&jwk, &operator_jwk, region, edge_addr))?;
        let region = region.as_str().to_owned();
        Self::from_file(&config, move |k| (k == RESIDENCY_ENV).then(|| region.clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn residency_is_exact_and_per_tenant_entries_override() {
        let r = Residency::parse("eu-west-1, local,acme=eu-central-1|eu-west-2").unwrap();
        assert!(r.allows("other", "eu-west-1"));
        assert!(r.allows("other", "local"));
        assert!(!r.allows("other", "EU-WEST-1"));
        assert!(!r.allows("other", "eu-west-1 "));
        assert!(!r.allows("other", "eu\u{2010}west-1"));
        assert!(!r.allows("acme", "eu-west-1"));
        assert!(r.allows("acme", "eu-west-2"));
    }

    #[test]
    fn the_deployed_config_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/services/gateway/gateway.toml");
        let config =
            GatewayConfig::from_file(&path, |k| (k == RESIDENCY_ENV).then(|| "eu".to_owned())).unwrap();
        assert_eq!(config.region.as_str(), "eu");
        assert_eq!(config.jwt.issuers.len(), 1);
        assert_eq!(config.edge_addr, Some("0.0.0.0:8080".parse().unwrap()));
        assert_eq!(config.backend_timeout, Duration::from_secs(15));
        // Without the allow-list the gateway does not start.
        let err = GatewayConfig::from_file(&path, |_| None).unwrap_err();
        assert!(err.to_string().contains(RESIDENCY_ENV), "{err}");
        let err =
            GatewayConfig::from_file(&path, |k| (k == RESIDENCY_ENV).then(|| "EU".to_owned())).unwrap_err();
        assert!(err.to_string().contains(RESIDENCY_ENV), "{err}");
    }

    #[test]
    fn backend_timeouts_are_bounded() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/services/gateway/gateway.toml");
        let deployed = std::fs::read_to_string(path).unwrap();
        let load = |line: &str| {
            let text = deployed.replace(r#"backend_timeout = "15s""#, line);
            let file: FileConfig = toml::from_str(&text).unwrap();
            GatewayConfig::from_parts(file, |k| (k == RESIDENCY_ENV).then(|| "eu".to_owned()))
        };
        assert_eq!(load("").unwrap().backend_timeout, DEFAULT_BACKEND_TIMEOUT);
        assert_eq!(
            load(r#"backend_timeout = "250ms""#).unwrap().backend_timeout,
            Duration::from_millis(250)
        );
        assert_eq!(
            load(r#"backend_timeout = "1h""#).unwrap().backend_timeout,
            MAX_BACKEND_TIMEOUT
        );
        for bad in ["0s", "1h 1s", "soon", "-1s"] {
            let err = load(&format!("backend_timeout = {bad:?}")).unwrap_err();
            assert!(err.to_string().contains("backend_timeout"), "{bad}: {err}");
        }
    }

    #[test]
    fn jwt_max_lifetime_is_validated_at_load() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/services/gateway/gateway.toml");
        let deployed = std::fs::read_to_string(path).unwrap();
        let load = |line: &str| {
            let text = deployed.replace(r#"max_lifetime = "24h""#, line);
            let file: FileConfig = toml::from_str(&text).map_err(|e| e.to_string())?;
            GatewayConfig::from_parts(file, |k| (k == RESIDENCY_ENV).then(|| "eu".to_owned()))
                .map_err(|e| e.to_string())
        };
        let day = Duration::from_secs(24 * 3600);
        // (line, Ok(max_lifetime) or Err(text the error names))
        let rows: [(&str, Result<Duration, &str>); 8] = [
            (r#"max_lifetime = "24h""#, Ok(day)),
            ("", Ok(soma_auth::DEFAULT_MAX_LIFETIME)),
            (r#"max_lifetime = "15m""#, Ok(Duration::from_secs(900))),
            (r#"max_lifetime = "30days""#, Ok(30 * day)),
            (r#"max_lifetime = "30days 1s""#, Err("jwt.max_lifetime")),
            (r#"max_lifetime = "0s""#, Err("jwt.max_lifetime")),
            (r#"max_lifetime = "soon""#, Err("max_lifetime")),
            ("max_lifetime = 3600", Err("max_lifetime")),
        ];
        for (line, expected) in rows {
            match (expected, load(line)) {
                (Ok(d), Ok(config)) => assert_eq!(config.jwt.max_lifetime, d, "{line}"),
                (Err(text), Err(err)) => assert!(err.contains(text), "{line}: {err}"),
                (expected, got) => panic!("{line}: expected {expected:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn the_dev_config_has_a_tenant_issuer_and_an_operator_issuer_with_their_own_keys() {
        let dir = tempfile::tempdir().unwrap();
        let config = GatewayConfig::dev(dir.path(), &Region::parse("local").unwrap(), None).unwrap();
        let issuers: Vec<(&str, bool)> = config
            .jwt
            .issuers
            .iter()
            .map(|i| (i.issuer.as_str(), i.operator))
            .collect();
        assert_eq!(issuers, [(DEV_ISSUER, false), (DEV_OPERATOR_ISSUER, true)]);
        for issuer in &config.jwt.issuers {
            assert_eq!(issuer.audiences, [DEV_AUDIENCE]);
        }
        let read = |name: &str| -> serde_json::Value {
            serde_json::from_str(&std::fs::read_to_string(dir.path().join(name)).unwrap()).unwrap()
        };
        let (tenant, operator) = (read(DEV_ISSUER_JWK_FILE), read(DEV_OPERATOR_ISSUER_JWK_FILE));
        assert_eq!(tenant["kid"], DEV_KEY_ID);
        assert_eq!(operator["kid"], DEV_OPERATOR_KEY_ID);
        assert_ne!(tenant["k"], operator["k"], "each issuer has its own key");
        assert_eq!(config.jwt.max_lifetime, soma_auth::DEFAULT_MAX_LIFETIME);
    }

    #[test]
    fn connection_settings_default_safely_and_refuse_zero_or_absurd_values() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/services/gateway/gateway.toml");
        let deployed = std::fs::read_to_string(path).unwrap();
        // The deployed file spells out the defaults.
        let load = |table: &str| {
            let start = deployed
                .find("[connections]")
                .expect("the deployed file has [connections]");
            let end = deployed[start + 1..]
                .find("\n[")
                .map_or(deployed.len(), |i| start + 1 + i);
            let text = format!("{}{table}\n{}", &deployed[..start], &deployed[end..]);
            let file: FileConfig = toml::from_str(&text).unwrap();
            GatewayConfig::from_parts(file, |k| (k == RESIDENCY_ENV).then(|| "eu".to_owned()))
        };
        let from_file = GatewayConfig::from_file(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/services/gateway/gateway.toml"),
            |k| (k == RESIDENCY_ENV).then(|| "eu".to_owned()),
        )
        .unwrap();
        assert_eq!(from_file.connections, EdgeConnections::default());
        // An absent table is the defaults.
        assert_eq!(load("").unwrap().connections, EdgeConnections::default());
        let d = EdgeConnections::default();
        assert_eq!(
            (
                d.header_read_timeout,
                d.body_read_timeout,
                d.idle_timeout,
                d.send_timeout
            ),
            (
                Duration::from_secs(10),
                Duration::from_secs(30),
                Duration::from_secs(60),
                Duration::from_secs(60)
            )
        );
        assert_eq!(
            (
                d.max_concurrent_streams,
                d.max_connections,
                d.max_connections_per_client,
                d.max_headers
            ),
            (100, 10_000, 1024, 100)
        );
        let tuned = load(
            "[connections]\nheader_read_timeout = \"1s\"\nbody_read_timeout = \"2s 500ms\"\n\
             idle_timeout = \"5m\"\nsend_timeout = \"20s\"\nmax_concurrent_streams = 8\nmax_connections = 8\n\
             max_connections_per_client = 8\nmax_headers = 16",
        )
        .unwrap()
        .connections;
        assert_eq!(
            tuned,
            EdgeConnections {
                header_read_timeout: Duration::from_secs(1),
                body_read_timeout: Duration::from_millis(2500),
                idle_timeout: Duration::from_secs(300),
                send_timeout: Duration::from_secs(20),
                max_concurrent_streams: 8,
                max_connections: 8,
                max_connections_per_client: 8,
                max_headers: 16,
            }
        );

        struct Case {
            name: &'static str,
            input: &'static str,
            key: &'static str,
        }
        let cases = [
            Case {
                name: "zero header timeout",
                input: "header_read_timeout = \"0s\"",
                key: "connections.header_read_timeout",
            },
            Case {
                name: "1 ms header timeout",
                input: "header_read_timeout = \"1ms\"",
                key: "connections.header_read_timeout",
            },
            Case {
                name: "header timeout of a day",
                input: "header_read_timeout = \"1day\"",
                key: "connections.header_read_timeout",
            },
            Case {
                name: "header timeout not a duration",
                input: "header_read_timeout = \"10\"",
                key: "connections.header_read_timeout",
            },
            Case {
                name: "negative body timeout",
                input: "body_read_timeout = \"-1s\"",
                key: "connections.body_read_timeout",
            },
            Case {
                name: "zero body timeout",
                input: "body_read_timeout = \"0s\"",
                key: "connections.body_read_timeout",
            },
            Case {
                name: "body timeout of two hours",
                input: "body_read_timeout = \"2h\"",
                key: "connections.body_read_timeout",
            },
            Case {
                name: "zero idle timeout",
                input: "idle_timeout = \"0s\"",
                key: "connections.idle_timeout",
            },
            Case {
                name: "idle timeout of a week",
                input: "idle_timeout = \"7days\"",
                key: "connections.idle_timeout",
            },
            Case {
                name: "zero send timeout",
                input: "send_timeout = \"0s\"",
                key: "connections.send_timeout",
            },
            Case {
                name: "send timeout of two hours",
                input: "send_timeout = \"2h\"",
                key: "connections.send_timeout",
            },
            Case {
                name: "zero streams",
                input: "max_concurrent_streams = 0",
                key: "connections.max_concurrent_streams",
            },
            Case {
                name: "a million streams",
                input: "max_concurrent_streams = 1000000",
                key: "connections.max_concurrent_streams",
            },
            Case {
                name: "zero connections",
                input: "max_connections = 0",
                key: "connections.max_connections",
            },
            Case {
                name: "ten million connections",
                input: "max_connections = 10000000",
                key: "connections.max_connections",
            },
            Case {
                name: "zero per client",
                input: "max_connections_per_client = 0",
                key: "connections.max_connections_per_client",
            },
            Case {
                name: "per client above the global cap",
                input: "max_connections = 100\nmax_connections_per_client = 101",
                key: "connections.max_connections_per_client",
            },
            Case {
                name: "zero headers",
                input: "max_headers = 0",
                key: "connections.max_headers",
            },
            Case {
                name: "a million headers",
                input: "max_headers = 1000000",
                key: "connections.max_headers",
            },
        ];
        for case in cases {
            let err = load(&format!("[connections]\n{}", case.input)).unwrap_err();
            match &err {
                GatewayConfigError::Invalid { key, .. } => assert_eq!(*key, case.key, "{}: {err}", case.name),
                other => panic!("{}: {other}", case.name),
            }
        }
        // A key the gateway does not know is refused, not ignored.
        let text = format!("{deployed}\n");
        let text = text.replace("[connections]\n", "[connections]\nmax_conections = 5\n");
        assert!(toml::from_str::<FileConfig>(&text).is_err());
    }

    #[test]
    fn unusable_residency_lists_are_refused() {
        for bad in [
            "",
            ",",
            "EU-WEST-1",
            "eu west",
            "a=",
            "=eu",
            "a=b,a=c",
            "eu-west-1,",
            "é",
            "-eu",
        ] {
            assert!(Residency::parse(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
