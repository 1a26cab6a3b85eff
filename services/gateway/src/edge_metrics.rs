//! The edge's request metrics: requests by route and HTTP status, their
//! latency by route, refusals by reason.
//!
//! Labels are bounded. A route is the RPC a request was routed to (the
//! route table is fixed at start-up), or one of `grpc_ingress`, `openapi`,
//! `preflight` and `unrouted` (answered before the request was routed: its
//! headers, token, residency or path were refused). A reason
//! is a refusal's machine-readable code; the first [`MAX_REASONS`] distinct
//! ones are kept and any further one counts as `other`, so a backend that
//! sends unexpected reasons cannot grow the series without bound. Tenants
//! and request ids are never labels.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use soma_mesh::{Histogram, MetricsSource};

/// Distinct refusal reasons kept as labels.
pub const MAX_REASONS: usize = 64;

/// The label of a request answered before it was routed.
pub const UNROUTED: &str = "unrouted";

/// The edge's request counters. Clone = shared.
#[derive(Clone, Debug, Default)]
pub struct EdgeMetrics {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    requests: RwLock<HashMap<(String, u16), Arc<AtomicU64>>>,
    latency: RwLock<HashMap<String, Arc<Histogram>>>,
    refusals: RwLock<HashMap<String, Arc<AtomicU64>>>,
}

impl EdgeMetrics {
    /// One request to `route` answered `status` after `elapsed`, refused
    /// for `reason` if it was.
    pub fn record(&self, route: &str, status: u16, elapsed: Duration, reason: Option<&str>) {
        counter(&self.inner.requests, (route.to_owned(), status)).fetch_add(1, Ordering::Relaxed);
        histogram(&self.inner.latency, route).observe(elapsed);
        if let Some(reason) = reason {
            let bounded = {
                let map = self.inner.refusals.read().unwrap_or_else(PoisonError::into_inner);
                if map.contains_key(reason) || map.len() < MAX_REASONS {
                    reason
                } else {
                    "other"
                }
            };
            counter(&self.inner.refusals, bounded.to_owned()).fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Requests to `route` answered `status` so far.
    pub fn requests(&self, route: &str, status: u16) -> u64 {
        self.inner
            .requests
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(route.to_owned(), status))
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }
}

/// The counter of `key`, created on first use (under the write lock; every
/// later use takes only the read lock).
fn counter<K: std::hash::Hash + Eq>(map: &RwLock<HashMap<K, Arc<AtomicU64>>>, key: K) -> Arc<AtomicU64> {
    if let Some(c) = map.read().unwrap_or_else(PoisonError::into_inner).get(&key) {
        return Arc::clone(c);
    }
    let mut map = map.write().unwrap_or_else(PoisonError::into_inner);
    Arc::clone(map.entry(key).or_default())
}

fn histogram(map: &RwLock<HashMap<String, Arc<Histogram>>>, route: &str) -> Arc<Histogram> {
    if let Some(h) = map.read().unwrap_or_else(PoisonError::into_inner).get(route) {
        return Arc::clone(h);
    }
    let mut map = map.write().unwrap_or_else(PoisonError::into_inner);
    Arc::clone(map.entry(route.to_owned()).or_default())
}

impl MetricsSource for EdgeMetrics {
    fn render(&self, out: &mut String) {
        let inner = &self.inner;
        out.push_str(
            "# HELP soma_edge_requests_total Requests the edge answered, by route and HTTP status.\n",
        );
        out.push_str("# TYPE soma_edge_requests_total counter\n");
        let mut requests: Vec<_> = inner
            .requests
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|((route, status), c)| (route.clone(), *status, c.load(Ordering::Relaxed)))
            .collect();
        requests.sort();
        for (route, status, n) in requests {
            let _ = writeln!(
                out,
                "soma_edge_requests_total{{route=\"{route}\",code=\"{status}\"}} {n}"
            );
        }
        out.push_str(
            "# HELP soma_edge_request_duration_seconds Time from a request's arrival to its response head, by route.\n",
        );
        out.push_str("# TYPE soma_edge_request_duration_seconds histogram\n");
        let mut latency: Vec<_> = inner
            .latency
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(route, h)| (route.clone(), Arc::clone(h)))
            .collect();
        latency.sort_by(|a, b| a.0.cmp(&b.0));
        for (route, h) in latency {
            h.render(
                out,
                "soma_edge_request_duration_seconds",
                &format!("route=\"{route}\""),
            );
        }
        out.push_str("# HELP soma_edge_refusals_total Requests the edge refused, by reason.\n");
        out.push_str("# TYPE soma_edge_refusals_total counter\n");
        let mut refusals: Vec<_> = inner
            .refusals
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(reason, c)| (reason.clone(), c.load(Ordering::Relaxed)))
            .collect();
        refusals.sort();
        for (reason, n) in refusals {
            let _ = writeln!(out, "soma_edge_refusals_total{{reason=\"{reason}\"}} {n}");
        }
    }
}
