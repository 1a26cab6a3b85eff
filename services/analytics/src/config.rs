//! Analytics' configuration: typed settings read from the environment and
//! key files, checked before any port is bound.

use std::path::PathBuf;

use soma_ledger::CheckpointSigner;
use soma_sign::HmacKeyring;

use crate::drills::DrillConfig;
use crate::error::AnalyticsError;

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
    pub max_export_span: std::time::Duration,
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
pub const DEFAULT_MAX_EXPORT_SPAN: std::time::Duration = std::time::Duration::from_secs(31 * 24 * 3600);

/// Parses a span such as `31d` or `744h` (seconds, minutes, hours, days).
fn parse_span(value: &str) -> Result<std::time::Duration, AnalyticsError> {
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
    Ok(std::time::Duration::from_secs(secs))
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

/// Parses a span: a whole number followed by `ms`, `s`, `m`, `h` or `d`.
pub(crate) fn span_nanos(text: &str) -> Result<i64, String> {
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
    use super::AnomalyConfig;

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
}
