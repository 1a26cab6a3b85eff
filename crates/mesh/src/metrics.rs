//! Counters of the runtime, exposed in the Prometheus text format.
//!
//! The set of methods is fixed when the service is built, so every counter
//! is a pre-allocated atomic and the request path takes no lock.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

/// Reasons a request or handshake is refused, as metric labels.
const DENY_REASONS: [&str; 5] = [
    "no_policy",
    "caller_not_allowed",
    "foreign_trust_domain",
    "no_peer_identity",
    "claims_rejected",
];

#[derive(Debug, Default)]
struct MethodCounters {
    dispatched: AtomicU64,
    denied: [AtomicU64; DENY_REASONS.len()],
}

/// Counters a service keeps outside the runtime (the gateway's edge
/// connections), exposed on the same `/metrics` after the runtime's own.
pub trait MetricsSource: Send + Sync + std::fmt::Debug {
    /// Appends this source's series, in the Prometheus text format, to
    /// `out`. Called on every scrape: it must only read counters.
    fn render(&self, out: &mut String);
}

/// The runtime's counters. Clone = shared.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    methods: BTreeMap<String, MethodCounters>,
    unknown_method: MethodCounters,
    handshakes_ok: AtomicU64,
    handshakes_failed: AtomicU64,
    handshakes_timed_out: AtomicU64,
    /// Registered once at start-up and read on each scrape; the request
    /// path never touches it.
    sources: RwLock<Vec<Arc<dyn MetricsSource>>>,
}

impl Metrics {
    /// Counters for these method paths (`/package.Service/Method`).
    pub fn new<'a>(paths: impl IntoIterator<Item = &'a str>) -> Self {
        let methods = paths
            .into_iter()
            .map(|p| (p.to_owned(), MethodCounters::default()))
            .collect();
        Self {
            inner: Arc::new(Inner {
                methods,
                ..Inner::default()
            }),
        }
    }

    fn method(&self, path: &str) -> &MethodCounters {
        self.inner.methods.get(path).unwrap_or(&self.inner.unknown_method)
    }

    /// Adds `source`'s series to this runtime's `/metrics`.
    pub fn register(&self, source: Arc<dyn MetricsSource>) {
        self.inner
            .sources
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .push(source);
    }

    /// A request passed authorization and was handed to its handler.
    pub fn dispatched(&self, path: &str) {
        self.method(path).dispatched.fetch_add(1, Ordering::Relaxed);
    }

    /// A request was refused before its handler.
    pub(crate) fn denied(&self, path: &str, reason: &str) {
        if let Some(i) = DENY_REASONS.iter().position(|r| *r == reason) {
            self.method(path).denied[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// How many requests of a method reached its handler.
    pub fn dispatched_count(&self, path: &str) -> u64 {
        self.method(path).dispatched.load(Ordering::Relaxed)
    }

    /// How many requests of a method were denied for a reason.
    pub fn denied_count(&self, path: &str, reason: &str) -> u64 {
        DENY_REASONS
            .iter()
            .position(|r| *r == reason)
            .map_or(0, |i| self.method(path).denied[i].load(Ordering::Relaxed))
    }

    pub(crate) fn handshake(&self, outcome: HandshakeOutcome) {
        let counter = match outcome {
            HandshakeOutcome::Ok => &self.inner.handshakes_ok,
            HandshakeOutcome::Failed => &self.inner.handshakes_failed,
            HandshakeOutcome::TimedOut => &self.inner.handshakes_timed_out,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The Prometheus text exposition of every counter.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let inner = &self.inner;
        out.push_str(
            "# HELP soma_rpc_dispatched_total Requests handed to their handler after authorization.\n",
        );
        out.push_str("# TYPE soma_rpc_dispatched_total counter\n");
        for (path, c) in &inner.methods {
            let _ = writeln!(
                out,
                "soma_rpc_dispatched_total{{method=\"{path}\"}} {}",
                c.dispatched.load(Ordering::Relaxed)
            );
        }
        out.push_str("# HELP soma_rpc_denied_total Requests refused before their handler, by reason.\n");
        out.push_str("# TYPE soma_rpc_denied_total counter\n");
        let all = inner
            .methods
            .iter()
            .map(|(p, c)| (p.as_str(), c))
            .chain([("unknown", &inner.unknown_method)]);
        for (path, c) in all {
            for (i, reason) in DENY_REASONS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "soma_rpc_denied_total{{method=\"{path}\",reason=\"{reason}\"}} {}",
                    c.denied[i].load(Ordering::Relaxed)
                );
            }
        }
        out.push_str(
            "# HELP soma_tls_handshakes_total mTLS handshakes on the service listener, by outcome.\n",
        );
        out.push_str("# TYPE soma_tls_handshakes_total counter\n");
        for (outcome, c) in [
            ("ok", &inner.handshakes_ok),
            ("failed", &inner.handshakes_failed),
            ("timed_out", &inner.handshakes_timed_out),
        ] {
            let _ = writeln!(
                out,
                "soma_tls_handshakes_total{{outcome=\"{outcome}\"}} {}",
                c.load(Ordering::Relaxed)
            );
        }
        for source in inner
            .sources
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            source.render(&mut out);
        }
        out
    }
}

/// How one handshake ended.
#[derive(Clone, Copy, Debug)]
pub(crate) enum HandshakeOutcome {
    Ok,
    Failed,
    TimedOut,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Fixed;

    impl MetricsSource for Fixed {
        fn render(&self, out: &mut String) {
            out.push_str("# TYPE soma_test_total counter\nsoma_test_total 7\n");
        }
    }

    #[test]
    fn a_registered_source_is_rendered_after_the_runtime_counters() {
        let metrics = Metrics::new(["/p.S/M"]);
        assert!(!metrics.render().contains("soma_test_total"));
        metrics.clone().register(Arc::new(Fixed));
        let text = metrics.render();
        assert!(text.ends_with("soma_test_total 7\n"), "{text}");
        assert!(
            text.contains("soma_rpc_dispatched_total{method=\"/p.S/M\"} 0"),
            "{text}"
        );
    }
}
