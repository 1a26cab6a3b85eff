//! Counters of the runtime, exposed in the Prometheus text format.
//!
//! The set of methods is fixed when the service is built, so every counter
//! is a pre-allocated atomic and the request path takes no lock. Names
//! follow the Prometheus conventions (base units, `_total`, `_seconds`);
//! labels are bounded: the method (from the service's fixed set, or
//! `unknown`), the gRPC status code (17 values), a refusal reason (a fixed
//! list). Tenants and request ids are never labels.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

/// Reasons a request or handshake is refused, as metric labels.
const DENY_REASONS: [&str; 6] = [
    "no_policy",
    "caller_not_allowed",
    "foreign_trust_domain",
    "no_peer_identity",
    "claims_rejected",
    // A method that is not read-only, on an instance that stands by.
    "standby",
];

/// The gRPC status codes, by number, as the gRPC specification spells them.
const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// Upper bounds of the latency buckets, in seconds: 100 µs to 10 s.
const BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0,
];

/// Why a handshake failed, as metric labels (see [`HandshakeFailure`]).
const HANDSHAKE_FAILURES: [&str; 7] = [
    "no_client_certificate",
    "invalid_certificate",
    "no_spiffe_id",
    "alert_received",
    "protocol",
    "peer_went_away",
    "other",
];

/// Why one handshake failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum HandshakeFailure {
    /// The client sent no certificate.
    NoClientCertificate,
    /// The client's certificate was refused (not an SVID of this trust
    /// domain's bundle, expired, …).
    InvalidCertificate,
    /// The handshake completed but the peer's certificate names no SPIFFE ID.
    NoSpiffeId,
    /// The client sent a fatal alert.
    AlertReceived,
    /// The client broke the TLS protocol (or offered nothing compatible).
    Protocol,
    /// The connection ended mid-handshake (reset, EOF).
    PeerWentAway,
    /// Anything else.
    Other,
}

impl HandshakeFailure {
    /// The reason of a failed `accept`.
    pub(crate) fn of(err: &std::io::Error) -> Self {
        use rustls::Error as E;
        match err
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            Some(E::NoCertificatesPresented) => Self::NoClientCertificate,
            Some(E::InvalidCertificate(_)) => Self::InvalidCertificate,
            Some(E::AlertReceived(_)) => Self::AlertReceived,
            Some(
                E::InappropriateMessage { .. }
                | E::InappropriateHandshakeMessage { .. }
                | E::InvalidMessage(_)
                | E::PeerIncompatible(_)
                | E::PeerMisbehaved(_),
            ) => Self::Protocol,
            Some(_) => Self::Other,
            None if soma_identity::peer_went_away(err) => Self::PeerWentAway,
            None => Self::Other,
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A method of [`Metrics`], looked up by its path once per RPC (`None`: a
/// path outside the service's set, counted as `unknown`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct MethodId(Option<usize>);

#[derive(Debug, Default)]
struct MethodCounters {
    dispatched: AtomicU64,
    denied: [AtomicU64; DENY_REASONS.len()],
    handled: [AtomicU64; CODES.len()],
    latency: Histogram,
}

/// A latency histogram of atomics (buckets from 100 µs to 10 s): one
/// counter per bucket (not cumulative: summed at render time), the count and
/// the sum in nanoseconds. Observing takes no lock.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    /// Counts one observation of `elapsed`.
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|le| seconds <= *le) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Appends the `_bucket`, `_sum` and `_count` lines of `name{labels}`
    /// (`labels` non-empty, without braces).
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (le, bucket) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        // Read the count after the buckets: a concurrent observation may
        // show in the count and not yet in a bucket, never the other way
        // round, so +Inf is never below a finite bucket.
        let count = self.count.load(Ordering::Relaxed).max(cumulative);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {count}");
        let sum = Duration::from_nanos(self.sum_nanos.load(Ordering::Relaxed)).as_secs_f64();
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {count}");
    }
}

/// Counters a service keeps outside the runtime (the gateway's edge
/// connections), exposed on the same `/metrics` after the runtime's own.
pub trait MetricsSource: Send + Sync + std::fmt::Debug {
    /// Appends this source's series, in the Prometheus text format, to
    /// `out`. Called on every scrape: it must only read counters.
    fn render(&self, out: &mut String);
}

/// A span or a Unix time given in nanoseconds, written as decimal seconds
/// exactly (`1700000000.5`, `0.000001`, `12`): no rounding through a
/// float, so a scraped value can be compared with the stored one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seconds(pub i64);

impl std::fmt::Display for Seconds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let nanos = i128::from(self.0);
        let sign = if nanos < 0 { "-" } else { "" };
        let (whole, fraction) = (nanos.abs() / 1_000_000_000, nanos.abs() % 1_000_000_000);
        if fraction == 0 {
            return write!(f, "{sign}{whole}");
        }
        let digits = format!("{fraction:09}");
        write!(f, "{sign}{whole}.{}", digits.trim_end_matches('0'))
    }
}

/// The runtime's counters. Clone = shared.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Whether RPCs are counted and timed at all (see `MeshSettings::metrics`).
    enabled: bool,
    /// The service's methods, sorted by path (looked up by binary search),
    /// each with its counters.
    methods: Vec<(String, MethodCounters)>,
    unknown_method: MethodCounters,
    handshakes_ok: AtomicU64,
    handshakes_timed_out: AtomicU64,
    /// Failed handshakes by reason; their sum is the `failed` outcome.
    handshake_failures: [AtomicU64; HANDSHAKE_FAILURES.len()],
    /// Registered once at start-up and read on each scrape; the request
    /// path never touches it.
    sources: RwLock<Vec<Arc<dyn MetricsSource>>>,
}

impl Metrics {
    /// Counters for these method paths (`/package.Service/Method`).
    pub fn new<'a>(paths: impl IntoIterator<Item = &'a str>) -> Self {
        Self::with(paths, true)
    }

    /// Counters for these method paths that count nothing: what the
    /// runtime costs without its metrics.
    pub fn disabled<'a>(paths: impl IntoIterator<Item = &'a str>) -> Self {
        Self::with(paths, false)
    }

    fn with<'a>(paths: impl IntoIterator<Item = &'a str>, enabled: bool) -> Self {
        let mut methods: Vec<(String, MethodCounters)> = paths
            .into_iter()
            .map(|p| (p.to_owned(), MethodCounters::default()))
            .collect();
        methods.sort_by(|a, b| a.0.cmp(&b.0));
        methods.dedup_by(|a, b| a.0 == b.0);
        Self {
            inner: Arc::new(Inner {
                enabled,
                methods,
                ..Inner::default()
            }),
        }
    }

    /// Whether RPCs are counted and timed.
    pub fn enabled(&self) -> bool {
        self.inner.enabled
    }

    /// The counters of `path`, found once per RPC: what [`Metrics::counters`]
    /// reads for every later count of the same RPC.
    pub(crate) fn method(&self, path: &str) -> MethodId {
        MethodId(
            self.inner
                .methods
                .binary_search_by(|(p, _)| p.as_str().cmp(path))
                .ok(),
        )
    }

    fn counters(&self, method: MethodId) -> &MethodCounters {
        method
            .0
            .and_then(|i| self.inner.methods.get(i))
            .map_or(&self.inner.unknown_method, |(_, c)| c)
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
        self.dispatched_at(self.method(path));
    }

    /// [`Metrics::dispatched`] of a method already looked up.
    pub(crate) fn dispatched_at(&self, method: MethodId) {
        if !self.inner.enabled {
            return;
        }
        self.counters(method).dispatched.fetch_add(1, Ordering::Relaxed);
    }

    /// A request was refused before its handler.
    pub(crate) fn denied(&self, path: &str, reason: &str) {
        if !self.inner.enabled {
            return;
        }
        if let Some(i) = DENY_REASONS.iter().position(|r| *r == reason) {
            self.counters(self.method(path)).denied[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// An RPC ended with `code` after `elapsed` (from its arrival to the
    /// end of its response).
    pub(crate) fn handled(&self, path: &str, code: tonic::Code, elapsed: Duration) {
        self.handled_at(self.method(path), code, elapsed);
    }

    /// [`Metrics::handled`] of a method already looked up.
    pub(crate) fn handled_at(&self, method: MethodId, code: tonic::Code, elapsed: Duration) {
        if !self.inner.enabled {
            return;
        }
        let counters = self.counters(method);
        counters.handled[code_index(code)].fetch_add(1, Ordering::Relaxed);
        counters.latency.observe(elapsed);
    }

    /// How many RPCs of a method ended with `code`.
    pub fn handled_count(&self, path: &str, code: tonic::Code) -> u64 {
        self.counters(self.method(path)).handled[code_index(code)].load(Ordering::Relaxed)
    }

    /// How many requests of a method reached its handler.
    pub fn dispatched_count(&self, path: &str) -> u64 {
        self.counters(self.method(path))
            .dispatched
            .load(Ordering::Relaxed)
    }

    /// How many requests of a method were denied for a reason.
    pub fn denied_count(&self, path: &str, reason: &str) -> u64 {
        DENY_REASONS.iter().position(|r| *r == reason).map_or(0, |i| {
            self.counters(self.method(path)).denied[i].load(Ordering::Relaxed)
        })
    }

    /// A handshake failed for `reason` (its `failed` outcome is the sum of
    /// the reasons).
    pub(crate) fn handshake_failed(&self, reason: HandshakeFailure) {
        self.inner.handshake_failures[reason.index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn handshake(&self, outcome: HandshakeOutcome) {
        let counter = match outcome {
            HandshakeOutcome::Ok => &self.inner.handshakes_ok,
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
            "# HELP soma_rpc_server_handled_total RPCs completed, by method and gRPC status code (codes never seen are left out, except OK).\n",
        );
        out.push_str("# TYPE soma_rpc_server_handled_total counter\n");
        let all = inner
            .methods
            .iter()
            .map(|(p, c)| (p.as_str(), c))
            .chain([("unknown", &inner.unknown_method)]);
        for (path, c) in all.clone() {
            for (code, n) in CODES.iter().zip(&c.handled) {
                let n = n.load(Ordering::Relaxed);
                if n > 0 || *code == "OK" {
                    let _ = writeln!(
                        out,
                        "soma_rpc_server_handled_total{{method=\"{path}\",code=\"{code}\"}} {n}"
                    );
                }
            }
        }
        out.push_str(
            "# HELP soma_rpc_server_handling_seconds Time from an RPC's arrival to the end of its response, by method.\n",
        );
        out.push_str("# TYPE soma_rpc_server_handling_seconds histogram\n");
        for (path, c) in all {
            c.latency.render(
                &mut out,
                "soma_rpc_server_handling_seconds",
                &format!("method=\"{path}\""),
            );
        }
        out.push_str(
            "# HELP soma_tls_handshakes_total mTLS handshakes on the service listener, by outcome.\n",
        );
        out.push_str("# TYPE soma_tls_handshakes_total counter\n");
        let failed: u64 = inner
            .handshake_failures
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum();
        for (outcome, n) in [
            ("ok", inner.handshakes_ok.load(Ordering::Relaxed)),
            ("failed", failed),
            ("timed_out", inner.handshakes_timed_out.load(Ordering::Relaxed)),
        ] {
            let _ = writeln!(out, "soma_tls_handshakes_total{{outcome=\"{outcome}\"}} {n}");
        }
        out.push_str("# HELP soma_tls_handshake_failures_total Failed mTLS handshakes on the service listener, by reason.\n");
        out.push_str("# TYPE soma_tls_handshake_failures_total counter\n");
        for (reason, c) in HANDSHAKE_FAILURES.iter().zip(&inner.handshake_failures) {
            let _ = writeln!(
                out,
                "soma_tls_handshake_failures_total{{reason=\"{reason}\"}} {}",
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

/// How the claims envelopes on requests were checked, for `/metrics`: a
/// signature verified in full, or a verdict reused for an envelope already
/// verified (the reusable kind, sealed per claims and audience).
#[derive(Debug)]
pub(crate) struct EnvelopeMetrics {
    pub(crate) counts: soma_auth::EnvelopeCounts,
}

impl MetricsSource for EnvelopeMetrics {
    fn render(&self, out: &mut String) {
        out.push_str(
            "# HELP soma_claims_envelopes_total Claims envelopes on requests by how their signature was checked (verified in full, or the verdict reused for the same bytes).\n",
        );
        out.push_str("# TYPE soma_claims_envelopes_total counter\n");
        let _ = writeln!(
            out,
            "soma_claims_envelopes_total{{check=\"signature\"}} {}",
            self.counts.signature_checks()
        );
        let _ = writeln!(
            out,
            "soma_claims_envelopes_total{{check=\"reused\"}} {}",
            self.counts.reuses()
        );
    }
}

/// The workload's own identity, for `/metrics`: when its SVID expires, and
/// how its rotations went.
#[derive(Debug)]
pub(crate) struct IdentityMetrics {
    pub(crate) store: Arc<soma_identity::SvidStore>,
}

impl MetricsSource for IdentityMetrics {
    fn render(&self, out: &mut String) {
        let svid = self.store.svid();
        let unix =
            |t: std::time::SystemTime| t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        out.push_str(
            "# HELP soma_svid_expiry_timestamp_seconds When the current X.509-SVID expires (Unix time).\n",
        );
        out.push_str("# TYPE soma_svid_expiry_timestamp_seconds gauge\n");
        let _ = writeln!(
            out,
            "soma_svid_expiry_timestamp_seconds {}",
            unix(svid.not_after())
        );
        out.push_str(
            "# HELP soma_svid_valid_from_timestamp_seconds When the current X.509-SVID became valid (Unix time).\n",
        );
        out.push_str("# TYPE soma_svid_valid_from_timestamp_seconds gauge\n");
        let _ = writeln!(
            out,
            "soma_svid_valid_from_timestamp_seconds {}",
            unix(svid.not_before())
        );
        out.push_str(
            "# HELP soma_svid_rotations_total Updates from the Workload API (a new SVID or new bundles) taken.\n",
        );
        out.push_str("# TYPE soma_svid_rotations_total counter\n");
        let _ = writeln!(out, "soma_svid_rotations_total {}", self.store.rotations());
        out.push_str(
            "# HELP soma_svid_rotation_failures_total Updates from the Workload API refused (the current SVID was kept).\n",
        );
        out.push_str("# TYPE soma_svid_rotation_failures_total counter\n");
        let _ = writeln!(
            out,
            "soma_svid_rotation_failures_total {}",
            self.store.refused_rotations()
        );
    }
}

/// How one handshake ended, when it did not fail (a failure is counted by
/// its reason: [`Metrics::handshake_failed`]).
#[derive(Clone, Copy, Debug)]
pub(crate) enum HandshakeOutcome {
    Ok,
    TimedOut,
}

/// The index of `code` in [`CODES`] (its number; an unknown number counts as
/// `UNKNOWN`).
fn code_index(code: tonic::Code) -> usize {
    usize::try_from(code as i32)
        .ok()
        .filter(|i| *i < CODES.len())
        .unwrap_or(2)
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
    fn seconds_are_written_exactly() {
        for (nanos, text) in [
            (0, "0"),
            (12_000_000_000, "12"),
            (1_700_000_000_500_000_000, "1700000000.5"),
            (1_000, "0.000001"),
            (1_700_000_000_123_456_789, "1700000000.123456789"),
            (-1_500_000_000, "-1.5"),
            (i64::MIN, "-9223372036.854775808"),
        ] {
            assert_eq!(Seconds(nanos).to_string(), text);
        }
    }

    #[test]
    fn each_method_is_counted_under_its_own_path() {
        let metrics = Metrics::new(["/p.S/B", "/p.S/A", "/p.S/C", "/p.S/A"]);
        let (a, b, c) = (
            metrics.method("/p.S/A"),
            metrics.method("/p.S/B"),
            metrics.method("/p.S/C"),
        );
        let unknown = metrics.method("/p.S/D");
        assert_eq!(unknown, metrics.method("/other.S/A"));
        assert!(a != b && b != c && a != c && a != unknown);
        metrics.dispatched_at(b);
        metrics.dispatched_at(b);
        metrics.dispatched_at(unknown);
        metrics.handled_at(c, tonic::Code::NotFound, Duration::from_millis(3));
        metrics.handled_at(a, tonic::Code::Ok, Duration::from_micros(50));
        assert_eq!(metrics.dispatched_count("/p.S/A"), 0);
        assert_eq!(metrics.dispatched_count("/p.S/B"), 2);
        assert_eq!(metrics.dispatched_count("/p.S/C"), 0);
        assert_eq!(metrics.handled_count("/p.S/C", tonic::Code::NotFound), 1);
        assert_eq!(metrics.handled_count("/p.S/A", tonic::Code::Ok), 1);
        assert_eq!(metrics.handled_count("/p.S/B", tonic::Code::Ok), 0);
        let text = metrics.render();
        for line in [
            "soma_rpc_dispatched_total{method=\"/p.S/A\"} 0\n",
            "soma_rpc_dispatched_total{method=\"/p.S/B\"} 2\n",
            "soma_rpc_server_handled_total{method=\"/p.S/C\",code=\"NOT_FOUND\"} 1\n",
            "soma_rpc_server_handling_seconds_bucket{method=\"/p.S/A\",le=\"0.0001\"} 1\n",
            "soma_rpc_server_handling_seconds_bucket{method=\"/p.S/C\",le=\"0.0025\"} 0\n",
            "soma_rpc_server_handling_seconds_bucket{method=\"/p.S/C\",le=\"0.005\"} 1\n",
        ] {
            assert!(text.contains(line), "{line} missing from {text}");
        }
        // The duplicate path is one method, rendered once.
        assert_eq!(
            text.matches("soma_rpc_dispatched_total{method=\"/p.S/A\"}")
                .count(),
            1
        );
        // A path outside the set counts as `unknown`, never as a method.
        assert_eq!(metrics.dispatched_count("/p.S/D"), 1);
    }

    #[test]
    fn disabled_metrics_count_nothing() {
        let metrics = Metrics::disabled(["/p.S/A"]);
        let a = metrics.method("/p.S/A");
        metrics.dispatched_at(a);
        metrics.handled_at(a, tonic::Code::Ok, Duration::from_micros(5));
        assert_eq!(metrics.dispatched_count("/p.S/A"), 0);
        assert_eq!(metrics.handled_count("/p.S/A", tonic::Code::Ok), 0);
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
