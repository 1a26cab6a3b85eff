//! What `soma up` tells Analytics about drills: the recovery objectives of
//! its region (`SOMA_ANALYTICS_DRILL_OBJECTIVES`) and the receivers of the
//! signed notifications of failed drills (`SOMA_ANALYTICS_WEBHOOK_URLS`),
//! with the HMAC keyring that signs them (`DIR/secrets/analytics-webhook-keys.json`,
//! created once per data dir, mode 0600, like the other keys). The settings
//! are checked by Analytics' own parser before anything starts, so a bad
//! one stops `soma up` with exit 64 and Analytics' reason.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// `soma up`'s drill flags.
#[derive(Clone, Debug, clap::Args)]
pub struct DrillSettings {
    /// Longest acceptable RTO of a drill in this region (whole milliseconds;
    /// a drill may carry a stricter target of its own, never a looser one).
    #[arg(long, default_value = "15s", value_parser = parse_objective)]
    pub drill_rto_objective: Duration,
    /// Longest acceptable RPO of a drill in this region (`0`: no
    /// acknowledged write may be lost).
    #[arg(long, default_value = "0s", value_parser = parse_objective)]
    pub drill_rpo_objective: Duration,
    /// An http:// receiver of the signed notification of each failed drill
    /// (repeatable).
    #[arg(long = "drill-webhook", value_name = "URL")]
    pub drill_webhooks: Vec<String>,
}

/// The webhook keyring's file under a data dir.
pub(crate) fn webhook_keys_path(data_dir: &Path) -> PathBuf {
    data_dir.join("secrets").join("analytics-webhook-keys.json")
}

/// Id of the first key of a new webhook keyring.
const WEBHOOK_KEY_ID: &str = "webhook-1";

/// An objective: a duration in whole milliseconds (Analytics' spans have no
/// finer unit); `0` alone is zero.
fn parse_objective(s: &str) -> Result<Duration, String> {
    let d = if s.trim() == "0" {
        Duration::ZERO
    } else {
        humantime::parse_duration(s).map_err(|e| e.to_string())?
    };
    if d.subsec_nanos() % 1_000_000 != 0 {
        return Err("must be a whole number of milliseconds".to_owned());
    }
    Ok(d)
}

/// A duration as an Analytics span (`1500ms`).
fn span(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// Creates the webhook keyring when missing and returns the environment
/// Analytics gets for `region`, checked by Analytics' own parser: `Err`
/// carries its reason (a usage error).
pub(crate) fn analytics_env(
    data_dir: &Path,
    region: &str,
    settings: &DrillSettings,
) -> anyhow::Result<Result<Vec<(&'static str, String)>, String>> {
    let keys = webhook_keys_path(data_dir);
    if !keys.exists() {
        let (_, json) = soma_sign::HmacKeyring::generate(WEBHOOK_KEY_ID)?;
        super::write_atomically(&keys, &json)?;
        super::set_mode(&keys, 0o600)?;
    }
    let env = vec![
        (
            "SOMA_ANALYTICS_DRILL_OBJECTIVES",
            format!(
                "{region}=rto:{},rpo:{}",
                span(settings.drill_rto_objective),
                span(settings.drill_rpo_objective)
            ),
        ),
        ("SOMA_ANALYTICS_WEBHOOK_URLS", settings.drill_webhooks.join(",")),
        ("SOMA_ANALYTICS_WEBHOOK_KEYS_FILE", keys.display().to_string()),
    ];
    if settings.drill_webhooks.iter().any(|url| url.contains(',')) {
        return Ok(Err("--drill-webhook: a URL must not contain ','".to_owned()));
    }
    // What Analytics will read: these, and the rest of this environment
    // (which its process inherits: the retry schedule, the timeout).
    let lookup = |name: &str| {
        env.iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var(name).ok())
    };
    if let Err(e) = soma_analytics::DrillConfig::from_env(lookup) {
        return Ok(Err(e.to_string()));
    }
    Ok(Ok(env))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objectives_are_whole_milliseconds() {
        assert_eq!(parse_objective("0"), Ok(Duration::ZERO));
        assert_eq!(parse_objective("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_objective("1500ms"), Ok(Duration::from_millis(1500)));
        assert!(parse_objective("1us").is_err());
        assert!(parse_objective("soon").is_err());
        assert_eq!(span(Duration::from_millis(1500)), "1500ms");
        assert_eq!(span(Duration::ZERO), "0ms");
    }
}
