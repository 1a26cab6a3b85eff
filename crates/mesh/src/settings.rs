//! Typed settings of a service, loaded and validated before any port is
//! bound: a TOML file (optional) overridden by environment variables.
//! Strings become domain types here, once.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

/// Which of the four services a process runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ServiceKind {
    /// The gateway.
    Gateway,
    /// The tool registry.
    ToolRegistry,
    /// The capsule repository.
    CapsuleRepo,
    /// Analytics.
    Analytics,
}

impl ServiceKind {
    /// All four, in start-up order (callees before callers).
    pub const ALL: [Self; 4] = [
        Self::Analytics,
        Self::CapsuleRepo,
        Self::ToolRegistry,
        Self::Gateway,
    ];

    /// Short name: `gateway`, `tool-registry`, `capsule-repo`, `analytics`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Gateway => "gateway",
            Self::ToolRegistry => "tool-registry",
            Self::CapsuleRepo => "capsule-repo",
            Self::Analytics => "analytics",
        }
    }

    /// Fully-qualified gRPC service name.
    pub fn grpc_name(self) -> &'static str {
        match self {
            Self::Gateway => "somastack.v1.Gateway",
            Self::ToolRegistry => "somastack.v1.ToolRegistry",
            Self::CapsuleRepo => "somastack.v1.CapsuleRepo",
            Self::Analytics => "somastack.v1.Analytics",
        }
    }

    /// Path of the service's SPIFFE ID: `/svc/<name>`.
    pub fn spiffe_path(self) -> String {
        format!("/svc/{}", self.name())
    }
}

impl fmt::Display for ServiceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ServiceKind {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| ConfigError::Invalid {
                key: "service",
                reason: format!("{s:?} is not one of gateway, tool-registry, capsule-repo, analytics"),
            })
    }
}

/// Resource limits of the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest request message accepted, bytes.
    pub max_recv_message_bytes: usize,
    /// Largest response message sent, bytes.
    pub max_send_message_bytes: usize,
    /// Time a client has to complete the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time in-flight calls get to finish at shutdown.
    pub drain_timeout: Duration,
    /// Concurrent HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_recv_message_bytes: 4 * 1024 * 1024,
            max_send_message_bytes: 4 * 1024 * 1024,
            handshake_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(10),
            max_concurrent_streams: 256,
        }
    }
}

/// Where another service listens: `host:port`, the host a DNS name or an IP
/// address, resolved at each connect (so a Kubernetes Service name works).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAddr(String);

impl PeerAddr {
    /// Parses `host:port` (`[v6]:port` for IPv6 literals).
    pub fn parse(value: &str) -> Result<Self, String> {
        let value = value.trim();
        if let Ok(addr) = value.parse::<SocketAddr>() {
            return Ok(Self(addr.to_string()));
        }
        let (host, port) = value
            .rsplit_once(':')
            .ok_or_else(|| format!("{value:?} is not host:port"))?;
        port.parse::<u16>()
            .map_err(|_| format!("{value:?} has no valid port"))?;
        let valid_host = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            });
        if !valid_host {
            return Err(format!("{value:?} has an invalid host name"));
        }
        Ok(Self(value.to_owned()))
    }

    /// The `host:port` text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<SocketAddr> for PeerAddr {
    fn from(addr: SocketAddr) -> Self {
        Self(addr.to_string())
    }
}

/// Where the instances of another service listen: one address, or several
/// (`host:port,host:port`) of which a client sends to the one that serves
/// (an active instance and its standbys, see [`crate::MeshChannel`]).
/// Never empty; no address twice.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAddrs(Vec<PeerAddr>);

impl PeerAddrs {
    /// Most instances of one peer.
    pub const MAX: usize = 8;

    /// Parses `host:port` or a comma-separated list of them.
    pub fn parse(value: &str) -> Result<Self, String> {
        Self::from_list(value.split(','))
    }

    /// Parses each of `values` as one `host:port`.
    pub fn from_list<'a>(values: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut addrs: Vec<PeerAddr> = Vec::new();
        for value in values {
            if value.trim().is_empty() {
                return Err("an address in the list is empty".to_owned());
            }
            let addr = PeerAddr::parse(value)?;
            if addrs.contains(&addr) {
                return Err(format!("{addr} is listed twice"));
            }
            addrs.push(addr);
        }
        if addrs.is_empty() {
            return Err("no address".to_owned());
        }
        if addrs.len() > Self::MAX {
            return Err(format!("{} addresses (at most {})", addrs.len(), Self::MAX));
        }
        Ok(Self(addrs))
    }

    /// The addresses, in the order configured.
    pub fn iter(&self) -> std::slice::Iter<'_, PeerAddr> {
        self.0.iter()
    }

    /// How many instances.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Always `false`: a list holds at least one address.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The first address configured.
    pub fn first(&self) -> &PeerAddr {
        // Never empty: every constructor refuses an empty list.
        &self.0[0]
    }
}

impl fmt::Display for PeerAddrs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, addr) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(addr.as_str())?;
        }
        Ok(())
    }
}

impl From<PeerAddr> for PeerAddrs {
    fn from(addr: PeerAddr) -> Self {
        Self(vec![addr])
    }
}

impl From<SocketAddr> for PeerAddrs {
    fn from(addr: SocketAddr) -> Self {
        Self(vec![addr.into()])
    }
}

impl<'a> IntoIterator for &'a PeerAddrs {
    type Item = &'a PeerAddr;
    type IntoIter = std::slice::Iter<'a, PeerAddr>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// Addresses of the other services this one calls.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Peers {
    /// The gateway.
    pub gateway: Option<PeerAddrs>,
    /// The tool registry.
    pub tool_registry: Option<PeerAddrs>,
    /// The capsule repository.
    pub capsule_repo: Option<PeerAddrs>,
    /// Analytics: its active instance and its standby, when it runs one.
    pub analytics: Option<PeerAddrs>,
}

/// Everything a service needs to start.
#[derive(Clone, Debug)]
pub struct MeshSettings {
    /// The service this process runs.
    pub service: ServiceKind,
    /// mTLS gRPC listen address.
    pub listen_addr: SocketAddr,
    /// Plaintext admin listen address (loopback by default).
    pub admin_addr: SocketAddr,
    /// Workload API endpoint (`unix:///path`); `None`: `SPIFFE_ENDPOINT_SOCKET`.
    pub workload_api_socket: Option<String>,
    /// How long to wait for the first SVID at start-up.
    pub identity_timeout: Duration,
    /// Directory of the embedded SQLite databases.
    pub data_dir: PathBuf,
    /// PostgreSQL URL; `None`: embedded SQLite.
    pub database_url: Option<String>,
    /// The gateway's Ed25519 claims public key (PEM), for backends.
    pub gateway_claims_public_key_file: Option<PathBuf>,
    /// The gateway's Ed25519 claims private key (PKCS#8 PEM), for the gateway.
    pub gateway_claims_key_file: Option<PathBuf>,
    /// Id of the gateway's claims key.
    pub claims_key_id: String,
    /// Other services.
    pub peers: Peers,
    /// Limits.
    pub limits: Limits,
    /// Whether the runtime counts and times RPCs (`SOMA_METRICS`: `on`, the
    /// default, or `off`). Off leaves `/metrics` with the services' own
    /// series and the runtime's at zero; it exists to measure what the
    /// counting costs.
    pub metrics: bool,
}

/// Why the settings are unusable. The binary prints it on one line and
/// exits with code 64.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML for these settings.
    #[error("config file {path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
    /// A setting has an invalid value.
    #[error("setting {key}: {reason}")]
    Invalid {
        /// The setting (file key or environment variable).
        key: &'static str,
        /// Why.
        reason: String,
    },
}

/// The config file's shape; every field optional, unknown keys refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    listen_addr: Option<String>,
    admin_addr: Option<String>,
    workload_api_socket: Option<String>,
    identity_timeout: Option<String>,
    data_dir: Option<PathBuf>,
    database_url: Option<String>,
    gateway_claims_public_key_file: Option<PathBuf>,
    gateway_claims_key_file: Option<PathBuf>,
    claims_key_id: Option<String>,
    #[serde(default)]
    peers: FilePeers,
    #[serde(default)]
    limits: FileLimits,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePeers {
    gateway: Option<FilePeer>,
    tool_registry: Option<FilePeer>,
    capsule_repo: Option<FilePeer>,
    analytics: Option<FilePeer>,
}

/// A peer in the config file: `"host:port"` (or `"host:port,host:port"`),
/// or a list of `"host:port"`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FilePeer {
    One(String),
    Many(Vec<String>),
}

impl FilePeer {
    /// As the environment variable would spell it.
    fn text(self) -> String {
        match self {
            Self::One(text) => text,
            Self::Many(list) => list.join(","),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    max_recv_message_bytes: Option<usize>,
    max_send_message_bytes: Option<usize>,
    handshake_timeout: Option<String>,
    drain_timeout: Option<String>,
    max_concurrent_streams: Option<u32>,
}

impl MeshSettings {
    /// Loads the settings of `service` from `file` (if any), then the
    /// environment as read by `env` (the process environment in `main`).
    pub fn load(
        service: ServiceKind,
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let f = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                toml::from_str::<FileSettings>(&text).map_err(|e| ConfigError::Parse {
                    path: path.to_owned(),
                    reason: e.message().to_owned(),
                })?
            }
            None => FileSettings::default(),
        };
        // The environment wins over the file; empty variables count as unset.
        let pick = |var: &str, from_file: Option<String>| env(var).filter(|v| !v.is_empty()).or(from_file);
        let defaults = Limits::default();
        Ok(Self {
            service,
            listen_addr: addr("SOMA_SERVICE_ADDR", pick("SOMA_SERVICE_ADDR", f.listen_addr))?
                .unwrap_or_else(loopback_any),
            admin_addr: addr("SOMA_ADMIN_ADDR", pick("SOMA_ADMIN_ADDR", f.admin_addr))?
                .unwrap_or_else(loopback_any),
            workload_api_socket: pick("SPIFFE_ENDPOINT_SOCKET", f.workload_api_socket),
            identity_timeout: duration(
                "SOMA_IDENTITY_TIMEOUT",
                pick("SOMA_IDENTITY_TIMEOUT", f.identity_timeout),
            )?
            .unwrap_or(Duration::from_secs(30)),
            data_dir: pick(
                "SOMA_DATA_DIR",
                f.data_dir.map(|p| p.to_string_lossy().into_owned()),
            )
            .map_or_else(|| PathBuf::from("./data"), PathBuf::from),
            database_url: pick("DATABASE_URL", f.database_url),
            gateway_claims_public_key_file: pick(
                "SOMA_GATEWAY_CLAIMS_PUBLIC_KEY_FILE",
                f.gateway_claims_public_key_file
                    .map(|p| p.to_string_lossy().into_owned()),
            )
            .map(PathBuf::from),
            gateway_claims_key_file: pick(
                "SOMA_GATEWAY_CLAIMS_KEY_FILE",
                f.gateway_claims_key_file
                    .map(|p| p.to_string_lossy().into_owned()),
            )
            .map(PathBuf::from),
            claims_key_id: pick("SOMA_CLAIMS_KEY_ID", f.claims_key_id)
                .unwrap_or_else(|| "gateway-1".to_owned()),
            peers: Peers {
                gateway: peer(
                    "SOMA_PEER_GATEWAY",
                    pick("SOMA_PEER_GATEWAY", f.peers.gateway.map(FilePeer::text)),
                )?,
                tool_registry: peer(
                    "SOMA_PEER_TOOL_REGISTRY",
                    pick(
                        "SOMA_PEER_TOOL_REGISTRY",
                        f.peers.tool_registry.map(FilePeer::text),
                    ),
                )?,
                capsule_repo: peer(
                    "SOMA_PEER_CAPSULE_REPO",
                    pick("SOMA_PEER_CAPSULE_REPO", f.peers.capsule_repo.map(FilePeer::text)),
                )?,
                analytics: peer(
                    "SOMA_PEER_ANALYTICS",
                    pick("SOMA_PEER_ANALYTICS", f.peers.analytics.map(FilePeer::text)),
                )?,
            },
            metrics: switch("SOMA_METRICS", env("SOMA_METRICS"))?,
            limits: Limits {
                max_recv_message_bytes: bytes(
                    "SOMA_MAX_RECV_MESSAGE_BYTES",
                    env("SOMA_MAX_RECV_MESSAGE_BYTES"),
                    f.limits.max_recv_message_bytes,
                )?
                .unwrap_or(defaults.max_recv_message_bytes),
                max_send_message_bytes: bytes(
                    "SOMA_MAX_SEND_MESSAGE_BYTES",
                    env("SOMA_MAX_SEND_MESSAGE_BYTES"),
                    f.limits.max_send_message_bytes,
                )?
                .unwrap_or(defaults.max_send_message_bytes),
                handshake_timeout: duration(
                    "SOMA_HANDSHAKE_TIMEOUT",
                    pick("SOMA_HANDSHAKE_TIMEOUT", f.limits.handshake_timeout),
                )?
                .unwrap_or(defaults.handshake_timeout),
                drain_timeout: duration(
                    "SOMA_DRAIN_TIMEOUT",
                    pick("SOMA_DRAIN_TIMEOUT", f.limits.drain_timeout),
                )?
                .unwrap_or(defaults.drain_timeout),
                max_concurrent_streams: f
                    .limits
                    .max_concurrent_streams
                    .unwrap_or(defaults.max_concurrent_streams),
            },
        })
    }
}

fn loopback_any() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn addr(key: &'static str, value: Option<String>) -> Result<Option<SocketAddr>, ConfigError> {
    value
        .map(|v| {
            v.trim().parse().map_err(|e| ConfigError::Invalid {
                key,
                reason: format!("{v:?} is not host:port ({e})"),
            })
        })
        .transpose()
}

fn peer(key: &'static str, value: Option<String>) -> Result<Option<PeerAddrs>, ConfigError> {
    value
        .map(|v| PeerAddrs::parse(&v).map_err(|reason| ConfigError::Invalid { key, reason }))
        .transpose()
}

/// `on` (the default when unset) or `off`.
fn switch(key: &'static str, value: Option<String>) -> Result<bool, ConfigError> {
    match value.as_deref().map(str::trim) {
        None | Some("" | "on") => Ok(true),
        Some("off") => Ok(false),
        Some(other) => Err(ConfigError::Invalid {
            key,
            reason: format!("{other:?} is neither on nor off"),
        }),
    }
}

fn duration(key: &'static str, value: Option<String>) -> Result<Option<Duration>, ConfigError> {
    value
        .map(|v| {
            humantime::parse_duration(v.trim())
                .map_err(|e| ConfigError::Invalid {
                    key,
                    reason: format!("{v:?} is not a duration ({e})"),
                })
                .and_then(|d| {
                    if d.is_zero() {
                        Err(ConfigError::Invalid {
                            key,
                            reason: "must be greater than zero".to_owned(),
                        })
                    } else {
                        Ok(d)
                    }
                })
        })
        .transpose()
}

fn bytes(key: &'static str, env: Option<String>, file: Option<usize>) -> Result<Option<usize>, ConfigError> {
    let value = match env.filter(|v| !v.is_empty()) {
        Some(v) => Some(v.trim().parse::<usize>().map_err(|e| ConfigError::Invalid {
            key,
            reason: format!("{v:?} is not a byte count ({e})"),
        })?),
        None => file,
    };
    match value {
        Some(0) => Err(ConfigError::Invalid {
            key,
            reason: "must be greater than zero".to_owned(),
        }),
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(vars: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned())
    }

    #[test]
    fn defaults_bind_loopback_and_use_sqlite() {
        let s = MeshSettings::load(ServiceKind::Analytics, None, env_of(&[])).unwrap();
        assert!(s.listen_addr.ip().is_loopback());
        assert!(s.admin_addr.ip().is_loopback());
        assert_eq!(s.database_url, None);
        assert_eq!(s.limits, Limits::default());
    }

    #[test]
    fn environment_overrides_file_and_bad_values_name_their_key() {
        let dir = std::env::temp_dir().join(format!("soma-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("soma.toml");
        std::fs::write(
            &file,
            "listen_addr = \"127.0.0.1:7000\"\n[peers]\nanalytics = \"127.0.0.1:7001\"\n",
        )
        .unwrap();
        let s = MeshSettings::load(
            ServiceKind::Gateway,
            Some(&file),
            env_of(&[("SOMA_SERVICE_ADDR", "127.0.0.1:7100")]),
        )
        .unwrap();
        assert_eq!(s.listen_addr, "127.0.0.1:7100".parse().unwrap());
        assert_eq!(s.peers.analytics.unwrap().to_string(), "127.0.0.1:7001");
        let s = MeshSettings::load(
            ServiceKind::Gateway,
            None,
            env_of(&[("SOMA_PEER_ANALYTICS", "analytics.somastack.svc:8443")]),
        )
        .unwrap();
        assert_eq!(
            s.peers.analytics.unwrap().to_string(),
            "analytics.somastack.svc:8443"
        );

        struct Case {
            name: &'static str,
            env: &'static [(&'static str, &'static str)],
            key: &'static str,
        }
        let cases = [
            Case {
                name: "bad listen",
                env: &[("SOMA_SERVICE_ADDR", "localhost")],
                key: "SOMA_SERVICE_ADDR",
            },
            Case {
                name: "bad peer port",
                env: &[("SOMA_PEER_ANALYTICS", "x:y")],
                key: "SOMA_PEER_ANALYTICS",
            },
            Case {
                name: "peer without port",
                env: &[("SOMA_PEER_ANALYTICS", "analytics")],
                key: "SOMA_PEER_ANALYTICS",
            },
            Case {
                name: "bad peer host",
                env: &[("SOMA_PEER_ANALYTICS", "ana_lytics:80")],
                key: "SOMA_PEER_ANALYTICS",
            },
            Case {
                name: "empty address in a peer list",
                env: &[("SOMA_PEER_ANALYTICS", "127.0.0.1:7001,")],
                key: "SOMA_PEER_ANALYTICS",
            },
            Case {
                name: "one peer twice",
                env: &[("SOMA_PEER_ANALYTICS", "127.0.0.1:7001, 127.0.0.1:7001")],
                key: "SOMA_PEER_ANALYTICS",
            },
            Case {
                name: "bad second peer",
                env: &[("SOMA_PEER_ANALYTICS", "127.0.0.1:7001,analytics")],
                key: "SOMA_PEER_ANALYTICS",
            },
            Case {
                name: "zero timeout",
                env: &[("SOMA_HANDSHAKE_TIMEOUT", "0s")],
                key: "SOMA_HANDSHAKE_TIMEOUT",
            },
            Case {
                name: "bad limit",
                env: &[("SOMA_MAX_RECV_MESSAGE_BYTES", "-1")],
                key: "SOMA_MAX_RECV_MESSAGE_BYTES",
            },
        ];
        for c in cases {
            match MeshSettings::load(ServiceKind::Gateway, None, env_of(c.env)) {
                Err(ConfigError::Invalid { key, .. }) => assert_eq!(key, c.key, "{}", c.name),
                other => panic!("{}: expected invalid {}, got {other:?}", c.name, c.key),
            }
        }

        // Several instances of one peer: a list in the file, a comma-separated
        // value in the environment; the order is kept.
        std::fs::write(
            &file,
            "[peers]\nanalytics = [\"127.0.0.1:7001\", \"analytics-b.somastack.svc:8443\"]\n",
        )
        .unwrap();
        let s = MeshSettings::load(ServiceKind::Gateway, Some(&file), env_of(&[])).unwrap();
        let analytics = s.peers.analytics.unwrap();
        assert_eq!(analytics.len(), 2);
        assert_eq!(
            analytics.to_string(),
            "127.0.0.1:7001,analytics-b.somastack.svc:8443"
        );
        let s = MeshSettings::load(
            ServiceKind::Gateway,
            None,
            env_of(&[("SOMA_PEER_ANALYTICS", "127.0.0.1:7002, 127.0.0.1:7001")]),
        )
        .unwrap();
        let analytics = s.peers.analytics.unwrap();
        assert_eq!(
            analytics.iter().map(PeerAddr::as_str).collect::<Vec<_>>(),
            ["127.0.0.1:7002", "127.0.0.1:7001"]
        );

        std::fs::write(&file, "listen_adr = \"127.0.0.1:7000\"\n").unwrap();
        assert!(matches!(
            MeshSettings::load(ServiceKind::Gateway, Some(&file), env_of(&[])),
            Err(ConfigError::Parse { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
