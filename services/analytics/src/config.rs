//! Analytics' configuration: typed settings read from the environment and
//! key files — keys, ledger origin and export span ([`AnalyticsConfig`]),
//! anomaly scans ([`AnomalyConfig`]), drill objectives ([`DrillConfig`]) and
//! webhook receivers ([`WebhookConfig`]) — checked before any port is bound.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use soma_ledger::CheckpointSigner;
use soma_sign::HmacKeyring;
use tokio::sync::watch;

use crate::error::AnalyticsError;
use crate::tables::drills::Objective;
use crate::validate;

const NANOS_PER_SECOND: i64 = 1_000_000_000;

/// Analytics' own settings: its keys, read from files so that rotation is
/// a file change.
#[derive(Debug)]
pub struct AnalyticsConfig {
    /// Row MAC keys (versioned; the primary signs).
    pub row_keys: HmacKeyring,
    /// Ed25519 key (PKCS#8 PEM) that signs checkpoints and exports.
    pub signing_key_pem: String,
    /// Id of that key.
    pub signing_key_id: String,
    /// Checkpoint origin, e.g. `somastack.local/analytics`.
    pub ledger_origin: String,
    /// Longest `[from, to)` window one export may span.
    pub max_export_span: Duration,
    /// Drill objectives and webhook receivers.
    pub drills: DrillConfig,
    /// Anomaly scan threshold and minimum sample size.
    pub anomaly: AnomalyConfig,
}

impl AnalyticsConfig {
    /// Reads `SOMA_ANALYTICS_ROW_KEYS_FILE`, `SOMA_ANALYTICS_SIGNING_KEY_FILE`,
    /// `SOMA_ANALYTICS_SIGNING_KEY_ID` (default `analytics-1`) and
    /// `SOMA_ANALYTICS_LEDGER_ORIGIN` (default `<trust domain>/analytics`).
    pub fn from_env(
        env: impl Fn(&str) -> Option<String>,
        trust_domain: &str,
    ) -> Result<Self, AnalyticsError> {
        let file = |var: &str| -> Result<PathBuf, AnalyticsError> {
            env(var)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .ok_or_else(|| AnalyticsError::Config(format!("{var} is not set")))
        };
        let keys_path = file("SOMA_ANALYTICS_ROW_KEYS_FILE")?;
        let row_keys = HmacKeyring::load(&keys_path)
            .map_err(|e| AnalyticsError::Config(format!("{}: {e}", keys_path.display())))?;
        let signing_path = file("SOMA_ANALYTICS_SIGNING_KEY_FILE")?;
        let signing_key_pem = std::fs::read_to_string(&signing_path)
            .map_err(|e| AnalyticsError::Config(format!("{}: {e}", signing_path.display())))?;
        let config = Self {
            row_keys,
            signing_key_pem,
            signing_key_id: env("SOMA_ANALYTICS_SIGNING_KEY_ID")
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| "analytics-1".to_owned()),
            ledger_origin: env("SOMA_ANALYTICS_LEDGER_ORIGIN")
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| format!("{trust_domain}/analytics")),
            max_export_span: match env("SOMA_ANALYTICS_MAX_EXPORT_SPAN").filter(|v| !v.is_empty()) {
                Some(v) => parse_span(&v)?,
                None => DEFAULT_MAX_EXPORT_SPAN,
            },
            drills: DrillConfig::from_env(&env)?,
            anomaly: AnomalyConfig::from_env(&env)?,
        };
        // Fail now, before any port is bound, if the key does not load.
        CheckpointSigner::from_pkcs8_pem(config.ledger_origin.clone(), &config.signing_key_pem)
            .map_err(|e| AnalyticsError::Config(format!("{}: {e}", signing_path.display())))?;
        Ok(config)
    }
}

/// Default longest export window: 31 days.
pub const DEFAULT_MAX_EXPORT_SPAN: Duration = Duration::from_secs(31 * 24 * 3600);

/// Parses a span such as `31d` or `744h` (seconds, minutes, hours, days).
fn parse_span(value: &str) -> Result<Duration, AnalyticsError> {
    let bad = || {
        AnalyticsError::Config(format!(
            "SOMA_ANALYTICS_MAX_EXPORT_SPAN: {value:?} is not like 31d or 12h"
        ))
    };
    let (number, unit) = value.split_at(value.len().saturating_sub(1));
    let n: u64 = number.parse().map_err(|_| bad())?;
    let secs = match unit {
        "s" => Some(n),
        "m" => n.checked_mul(60),
        "h" => n.checked_mul(3600),
        "d" => n.checked_mul(86_400),
        _ => None,
    }
    .filter(|s| *s > 0)
    .ok_or_else(bad)?;
    Ok(Duration::from_secs(secs))
}

/// Default `|M|` above which a value is a finding.
pub const DEFAULT_ANOMALY_THRESHOLD: f64 = 3.5;
/// Default smallest series that is scored.
pub const DEFAULT_ANOMALY_MIN_SAMPLES: usize = 8;

/// Anomaly scan settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AnomalyConfig {
    /// `|M|` strictly above this is a finding.
    pub threshold: f64,
    /// Series with fewer values give no finding.
    pub min_samples: usize,
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        Self {
            threshold: DEFAULT_ANOMALY_THRESHOLD,
            min_samples: DEFAULT_ANOMALY_MIN_SAMPLES,
        }
    }
}

impl AnomalyConfig {
    /// Reads `SOMA_ANALYTICS_ANOMALY_THRESHOLD` (a finite number > 0) and
    /// `SOMA_ANALYTICS_ANOMALY_MIN_SAMPLES` (an integer ≥ 3: fewer values
    /// have no meaningful median absolute deviation).
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Self, AnalyticsError> {
        let mut config = Self::default();
        if let Some(v) = env("SOMA_ANALYTICS_ANOMALY_THRESHOLD").filter(|v| !v.is_empty()) {
            config.threshold = v
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|t| t.is_finite() && *t > 0.0)
                .ok_or_else(|| {
                    AnalyticsError::Config(format!(
                        "SOMA_ANALYTICS_ANOMALY_THRESHOLD: {v:?} is not a number above 0"
                    ))
                })?;
        }
        if let Some(v) = env("SOMA_ANALYTICS_ANOMALY_MIN_SAMPLES").filter(|v| !v.is_empty()) {
            config.min_samples = v
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n >= 3)
                .ok_or_else(|| {
                    AnalyticsError::Config(format!(
                        "SOMA_ANALYTICS_ANOMALY_MIN_SAMPLES: {v:?} is not an integer of at least 3"
                    ))
                })?;
        }
        Ok(config)
    }
}

/// Drill objectives and webhook receivers.
///
/// Read by [`DrillConfig::from_env`]; the default has no objectives (every
/// drill then fails with "no objectives configured for region") and no
/// webhooks.
///
/// **Objectives** (`SOMA_ANALYTICS_DRILL_OBJECTIVES`): entries separated by
/// `;`, each `REGION=rto:SPAN,rpo:SPAN`, where `REGION` is a region
/// identifier or `*` (the default for every region not listed) and `SPAN`
/// is a whole number followed by `ms`, `s`, `m`, `h` or `d`; for example
/// `eu-west-1=rto:15m,rpo:1m;us-east-1=rto:30m,rpo:5m;*=rto:1h,rpo:15m`.
#[derive(Clone, Debug, Default)]
pub struct DrillConfig {
    objectives: BTreeMap<String, Objective>,
    default_objective: Option<Objective>,
    pub(crate) webhooks: WebhookConfig,
}

impl DrillConfig {
    /// Reads the drill settings from the environment:
    /// `SOMA_ANALYTICS_DRILL_OBJECTIVES` (syntax above) and the
    /// webhook settings (`SOMA_ANALYTICS_WEBHOOK_URLS`,
    /// `SOMA_ANALYTICS_WEBHOOK_KEYS_FILE`, `SOMA_ANALYTICS_WEBHOOK_RETRY_BASE`,
    /// `SOMA_ANALYTICS_WEBHOOK_RETRY_MAX`, `SOMA_ANALYTICS_WEBHOOK_TIMEOUT`).
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Self, AnalyticsError> {
        let mut config = Self {
            webhooks: WebhookConfig::from_env(&env)?,
            ..Self::default()
        };
        if let Some(value) = env(OBJECTIVES_VAR).filter(|v| !v.trim().is_empty()) {
            config.parse_objectives(&value)?;
        }
        Ok(config)
    }

    fn parse_objectives(&mut self, value: &str) -> Result<(), AnalyticsError> {
        for entry in value.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let bad = |why: &str| AnalyticsError::Config(format!("{OBJECTIVES_VAR}: entry {entry:?}: {why}"));
            let (region, spec) = entry
                .split_once('=')
                .ok_or_else(|| bad("expected REGION=rto:SPAN,rpo:SPAN"))?;
            let region = region.trim();
            let (mut rto, mut rpo) = (None, None);
            for part in spec.split(',').map(str::trim) {
                let (name, span_text) = part
                    .split_once(':')
                    .ok_or_else(|| bad("expected rto:SPAN and rpo:SPAN"))?;
                let nanos = span_nanos(span_text.trim()).map_err(|why| bad(&why))?;
                let slot = match name.trim() {
                    "rto" => &mut rto,
                    "rpo" => &mut rpo,
                    other => return Err(bad(&format!("unknown objective {other:?} (rto or rpo)"))),
                };
                if slot.replace(nanos).is_some() {
                    return Err(bad(&format!("{} given twice", name.trim())));
                }
            }
            let objective = Objective {
                rto_nanos: rto.ok_or_else(|| bad("rto is missing"))?,
                rpo_nanos: rpo.ok_or_else(|| bad("rpo is missing"))?,
            };
            let duplicate = if region == "*" {
                self.default_objective.replace(objective).is_some()
            } else {
                validate::identifier("region", region).map_err(|e| bad(&e.to_string()))?;
                self.objectives.insert(region.to_owned(), objective).is_some()
            };
            if duplicate {
                return Err(bad("region listed twice"));
            }
        }
        Ok(())
    }

    /// The objective that applies to `region`: its own, else the `*` default.
    pub(crate) fn objective(&self, region: &str) -> Option<Objective> {
        self.objectives.get(region).copied().or(self.default_objective)
    }
}

const OBJECTIVES_VAR: &str = "SOMA_ANALYTICS_DRILL_OBJECTIVES";

/// Webhook receivers, their signing keys and the retry schedule of the
/// delivery task ([`crate::webhook`]).
///
/// `SOMA_ANALYTICS_WEBHOOK_URLS` (comma-separated `http://` URLs;
/// `https://` is refused for now: put a local TLS-terminating relay in
/// front), `SOMA_ANALYTICS_WEBHOOK_KEYS_FILE` (an HMAC keyring file;
/// required when URLs are set), `SOMA_ANALYTICS_WEBHOOK_RETRY_BASE`
/// (default 1s), `SOMA_ANALYTICS_WEBHOOK_RETRY_MAX` (default 5m),
/// `SOMA_ANALYTICS_WEBHOOK_TIMEOUT` (per attempt, default 10s). Spans are
/// written as in the drill objectives (`500ms`, `1s`, `5m`).
#[derive(Clone, Debug)]
pub(crate) struct WebhookConfig {
    /// The receivers a failed drill notifies.
    pub(crate) urls: Vec<String>,
    /// The keys that sign deliveries (`None`: no delivery task).
    pub(crate) keys: Option<Arc<HmacKeyring>>,
    /// The first retry's delay.
    pub(crate) retry_base: Duration,
    /// The longest delay between two attempts.
    pub(crate) retry_max: Duration,
    /// The longest one attempt may take.
    pub(crate) timeout: Duration,
    /// Wakes the delivery task when a failed drill committed; when every
    /// clone of the configuration is gone (the service stopped), the task
    /// sees the channel closed and ends.
    pub(crate) wake: Arc<watch::Sender<u64>>,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            urls: Vec::new(),
            keys: None,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            timeout: Duration::from_secs(10),
            wake: Arc::new(watch::Sender::new(0)),
        }
    }
}

impl WebhookConfig {
    /// Reads the webhook settings (see the type's doc).
    pub(crate) fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Self, AnalyticsError> {
        let mut config = Self::default();
        let get = |var: &str| env(var).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        if let Some(list) = get("SOMA_ANALYTICS_WEBHOOK_URLS") {
            for url in list.split(',').map(str::trim).filter(|u| !u.is_empty()) {
                config.urls.push(webhook_url(url)?);
            }
        }
        match get("SOMA_ANALYTICS_WEBHOOK_KEYS_FILE") {
            Some(path) => {
                let keys = HmacKeyring::load(&path).map_err(|e| {
                    AnalyticsError::Config(format!("SOMA_ANALYTICS_WEBHOOK_KEYS_FILE: {path}: {e}"))
                })?;
                config.keys = Some(Arc::new(keys));
            }
            None if !config.urls.is_empty() => {
                return Err(AnalyticsError::Config(
                    "SOMA_ANALYTICS_WEBHOOK_KEYS_FILE is required when SOMA_ANALYTICS_WEBHOOK_URLS is set"
                        .to_owned(),
                ));
            }
            None => {}
        }
        for (var, slot) in [
            ("SOMA_ANALYTICS_WEBHOOK_RETRY_BASE", &mut config.retry_base),
            ("SOMA_ANALYTICS_WEBHOOK_RETRY_MAX", &mut config.retry_max),
            ("SOMA_ANALYTICS_WEBHOOK_TIMEOUT", &mut config.timeout),
        ] {
            if let Some(value) = get(var) {
                let nanos =
                    span_nanos(&value).map_err(|why| AnalyticsError::Config(format!("{var}: {why}")))?;
                let nanos = u64::try_from(nanos)
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| AnalyticsError::Config(format!("{var}: must be positive")))?;
                *slot = Duration::from_nanos(nanos);
            }
        }
        if config.retry_max < config.retry_base {
            return Err(AnalyticsError::Config(
                "SOMA_ANALYTICS_WEBHOOK_RETRY_MAX is shorter than SOMA_ANALYTICS_WEBHOOK_RETRY_BASE"
                    .to_owned(),
            ));
        }
        Ok(config)
    }

    /// The URLs a failed drill notifies.
    pub(crate) fn urls(&self) -> Vec<String> {
        self.urls.clone()
    }

    /// Tells the delivery task that new rows are pending.
    pub(crate) fn wake(&self) {
        self.wake.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The delay before attempt `attempts + 1`, after `attempts` failures.
    pub(crate) fn backoff(&self, attempts: i64) -> Duration {
        let doublings = u32::try_from(attempts.saturating_sub(1).clamp(0, 30)).unwrap_or(30);
        self.retry_base
            .checked_mul(1u32 << doublings)
            .unwrap_or(self.retry_max)
            .min(self.retry_max)
    }
}

/// A webhook URL: `http://host[:port]/path`, checked at start-up.
fn webhook_url(url: &str) -> Result<String, AnalyticsError> {
    let bad = |why: &str| AnalyticsError::Config(format!("SOMA_ANALYTICS_WEBHOOK_URLS: {url:?}: {why}"));
    let uri: http::Uri = url.parse().map_err(|_| bad("not a URL"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(bad(
                "https webhooks are not supported yet; use an http:// URL (e.g. a local TLS-terminating relay)",
            ));
        }
        _ => return Err(bad("the scheme must be http://")),
    }
    let authority = uri.authority().ok_or_else(|| bad("no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad("credentials in the URL are not allowed"));
    }
    Ok(uri.to_string())
}

/// Parses a span: a whole number followed by `ms`, `s`, `m`, `h` or `d`.
fn span_nanos(text: &str) -> Result<i64, String> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let n: i64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not like 15m, 30s or 500ms"))?;
    let scale: i64 = match unit {
        "ms" => 1_000_000,
        "s" => NANOS_PER_SECOND,
        "m" => 60 * NANOS_PER_SECOND,
        "h" => 3600 * NANOS_PER_SECOND,
        "d" => 86_400 * NANOS_PER_SECOND,
        _ => return Err(format!("{text:?}: the unit must be ms, s, m, h or d")),
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_from_env() {
        let none = |_: &str| None;
        assert_eq!(AnomalyConfig::from_env(none).unwrap(), AnomalyConfig::default());
        let set = |k: &str| match k {
            "SOMA_ANALYTICS_ANOMALY_THRESHOLD" => Some("5.5".to_owned()),
            "SOMA_ANALYTICS_ANOMALY_MIN_SAMPLES" => Some("12".to_owned()),
            _ => None,
        };
        assert_eq!(
            AnomalyConfig::from_env(set).unwrap(),
            AnomalyConfig {
                threshold: 5.5,
                min_samples: 12
            }
        );
        for (var, bad) in [
            ("SOMA_ANALYTICS_ANOMALY_THRESHOLD", "0"),
            ("SOMA_ANALYTICS_ANOMALY_THRESHOLD", "NaN"),
            ("SOMA_ANALYTICS_ANOMALY_THRESHOLD", "-1"),
            ("SOMA_ANALYTICS_ANOMALY_MIN_SAMPLES", "2"),
            ("SOMA_ANALYTICS_ANOMALY_MIN_SAMPLES", "x"),
        ] {
            let env = |k: &str| (k == var).then(|| bad.to_owned());
            assert!(AnomalyConfig::from_env(env).is_err(), "{var}={bad}");
        }
    }

    #[test]
    fn objectives_parse_with_a_default_and_refuse_bad_entries() {
        let mut config = DrillConfig::default();
        config
            .parse_objectives("eu-west-1=rto:15m,rpo:1m; us-east-1 = rto:30m, rpo:5m ;*=rto:1h,rpo:500ms")
            .unwrap();
        let m = 60 * NANOS_PER_SECOND;
        assert_eq!(
            config.objective("eu-west-1"),
            Some(Objective {
                rto_nanos: 15 * m,
                rpo_nanos: m
            })
        );
        assert_eq!(
            config.objective("us-east-1"),
            Some(Objective {
                rto_nanos: 30 * m,
                rpo_nanos: 5 * m
            })
        );
        assert_eq!(
            config.objective("ap-south-1"),
            Some(Objective {
                rto_nanos: 60 * m,
                rpo_nanos: 500_000_000
            })
        );
        assert_eq!(DrillConfig::default().objective("eu-west-1"), None);

        for bad in [
            "eu-west-1",
            "eu-west-1=rto:15m",
            "eu-west-1=rto:15m,rpo:1m,rto:2m",
            "eu-west-1=rto:15x,rpo:1m",
            "eu-west-1=rto:-1m,rpo:1m",
            "eu-west-1=rto:15m,rpo:1m,mtbf:3d",
            "eu west=rto:15m,rpo:1m",
            "eu-west-1=rto:15m,rpo:1m;eu-west-1=rto:1m,rpo:1m",
            "*=rto:15m,rpo:1m;*=rto:1m,rpo:1m",
            "x=rto:99999999999d,rpo:1m",
        ] {
            let mut config = DrillConfig::default();
            assert!(
                matches!(config.parse_objectives(bad), Err(AnalyticsError::Config(_))),
                "{bad}"
            );
        }
    }

    fn webhook_config(vars: &[(&str, &str)]) -> Result<WebhookConfig, AnalyticsError> {
        WebhookConfig::from_env(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| (*v).to_owned()))
    }

    #[test]
    fn webhook_urls_need_keys_and_https_is_refused_with_a_clear_reason() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys.json");
        std::fs::write(&keys, HmacKeyring::generate("wh-1").unwrap().1).unwrap();
        let keys = keys.to_str().unwrap();

        let ok = webhook_config(&[
            (
                "SOMA_ANALYTICS_WEBHOOK_URLS",
                "http://127.0.0.1:9/hook, http://hooks.local/x",
            ),
            ("SOMA_ANALYTICS_WEBHOOK_KEYS_FILE", keys),
            ("SOMA_ANALYTICS_WEBHOOK_RETRY_BASE", "200ms"),
            ("SOMA_ANALYTICS_WEBHOOK_RETRY_MAX", "1s"),
        ])
        .unwrap();
        assert_eq!(ok.urls(), ["http://127.0.0.1:9/hook", "http://hooks.local/x"]);
        assert_eq!(ok.backoff(1), Duration::from_millis(200));
        assert_eq!(ok.backoff(2), Duration::from_millis(400));
        assert_eq!(ok.backoff(3), Duration::from_millis(800));
        assert_eq!(ok.backoff(4), Duration::from_secs(1));
        assert_eq!(ok.backoff(1000), Duration::from_secs(1));

        struct Case {
            name: &'static str,
            vars: Vec<(&'static str, String)>,
            expected: &'static str,
        }
        let cases = [
            Case {
                name: "urls without keys",
                vars: vec![("SOMA_ANALYTICS_WEBHOOK_URLS", "http://127.0.0.1:9/".to_owned())],
                expected: "SOMA_ANALYTICS_WEBHOOK_KEYS_FILE is required",
            },
            Case {
                name: "https",
                vars: vec![
                    (
                        "SOMA_ANALYTICS_WEBHOOK_URLS",
                        "https://hooks.example/x".to_owned(),
                    ),
                    ("SOMA_ANALYTICS_WEBHOOK_KEYS_FILE", keys.to_owned()),
                ],
                expected: "https webhooks are not supported yet",
            },
            Case {
                name: "other scheme",
                vars: vec![
                    ("SOMA_ANALYTICS_WEBHOOK_URLS", "ftp://hooks.example/x".to_owned()),
                    ("SOMA_ANALYTICS_WEBHOOK_KEYS_FILE", keys.to_owned()),
                ],
                expected: "the scheme must be http://",
            },
            Case {
                name: "credentials",
                vars: vec![
                    (
                        "SOMA_ANALYTICS_WEBHOOK_URLS",
                        "http://u:p@hooks.example/x".to_owned(),
                    ),
                    ("SOMA_ANALYTICS_WEBHOOK_KEYS_FILE", keys.to_owned()),
                ],
                expected: "credentials in the URL are not allowed",
            },
            Case {
                name: "missing keys file",
                vars: vec![
                    ("SOMA_ANALYTICS_WEBHOOK_URLS", "http://127.0.0.1:9/".to_owned()),
                    (
                        "SOMA_ANALYTICS_WEBHOOK_KEYS_FILE",
                        "/nonexistent/keys.json".to_owned(),
                    ),
                ],
                expected: "SOMA_ANALYTICS_WEBHOOK_KEYS_FILE: /nonexistent/keys.json",
            },
            Case {
                name: "bad retry base",
                vars: vec![("SOMA_ANALYTICS_WEBHOOK_RETRY_BASE", "soon".to_owned())],
                expected: "SOMA_ANALYTICS_WEBHOOK_RETRY_BASE",
            },
            Case {
                name: "zero timeout",
                vars: vec![("SOMA_ANALYTICS_WEBHOOK_TIMEOUT", "0s".to_owned())],
                expected: "SOMA_ANALYTICS_WEBHOOK_TIMEOUT: must be positive",
            },
            Case {
                name: "max below base",
                vars: vec![
                    ("SOMA_ANALYTICS_WEBHOOK_RETRY_BASE", "10s".to_owned()),
                    ("SOMA_ANALYTICS_WEBHOOK_RETRY_MAX", "1s".to_owned()),
                ],
                expected: "SOMA_ANALYTICS_WEBHOOK_RETRY_MAX is shorter",
            },
        ];
        for case in cases {
            let vars: Vec<(&str, &str)> = case.vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
            match webhook_config(&vars) {
                Err(AnalyticsError::Config(message)) => {
                    assert!(message.contains(case.expected), "{}: {message}", case.name);
                }
                other => panic!("{}: expected a configuration error, got {other:?}", case.name),
            }
        }
    }
}
