//! The edge's request metrics: requests by route and HTTP status, their
//! latency by route, refusals by reason.
//!
//! Labels are bounded. A route is the RPC a request was routed to (the
//! route table is fixed at start-up), or one of `grpc_ingress`, `openapi`,
//! `preflight` and `unrouted` (answered before the request was routed: its
//! headers, its declared body size or its path were refused). A request
//! refused by admission (token, residency, capability, MFA, kill switch,
//! rate limit) was routed, and counts under its route. A reason
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
    routes: RwLock<HashMap<String, Arc<RouteCounters>>>,
    refusals: RwLock<HashMap<String, Arc<AtomicU64>>>,
}

/// One route's answers by HTTP status, and their latency.
#[derive(Debug, Default)]
struct RouteCounters {
    statuses: RwLock<HashMap<u16, Arc<AtomicU64>>>,
    latency: Histogram,
}

impl EdgeMetrics {
    /// One request to `route` answered `status` after `elapsed`, refused
    /// for `reason` if it was.
    pub fn record(&self, route: &str, status: u16, elapsed: Duration, reason: Option<&str>) {
        let counters = entry(&self.inner.routes, route);
        entry(&counters.statuses, &status).fetch_add(1, Ordering::Relaxed);
        counters.latency.observe(elapsed);
        if let Some(reason) = reason {
            let bounded = {
                let map = self.inner.refusals.read().unwrap_or_else(PoisonError::into_inner);
                if map.contains_key(reason) || map.len() < MAX_REASONS {
                    reason
                } else {
                    "other"
                }
            };
            entry(&self.inner.refusals, bounded).fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Requests to `route` answered `status` so far.
    pub fn requests(&self, route: &str, status: u16) -> u64 {
        let routes = self.inner.routes.read().unwrap_or_else(PoisonError::into_inner);
        routes.get(route).map_or(0, |counters| {
            counters
                .statuses
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&status)
                .map_or(0, |c| c.load(Ordering::Relaxed))
        })
    }
}

/// The value of `key`, created on first use (under the write lock; every
/// later use takes only the read lock and allocates nothing).
fn entry<K, Q, V>(map: &RwLock<HashMap<K, Arc<V>>>, key: &Q) -> Arc<V>
where
    K: std::borrow::Borrow<Q> + std::hash::Hash + Eq,
    Q: std::hash::Hash + Eq + ToOwned<Owned = K> + ?Sized,
    V: Default,
{
    if let Some(v) = map.read().unwrap_or_else(PoisonError::into_inner).get(key) {
        return Arc::clone(v);
    }
    let mut map = map.write().unwrap_or_else(PoisonError::into_inner);
    Arc::clone(map.entry(key.to_owned()).or_default())
}

impl MetricsSource for EdgeMetrics {
    fn render(&self, out: &mut String) {
        let inner = &self.inner;
        let mut routes: Vec<(String, Arc<RouteCounters>)> = inner
            .routes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(route, c)| (route.clone(), Arc::clone(c)))
            .collect();
        routes.sort_by(|a, b| a.0.cmp(&b.0));
        out.push_str(
            "# HELP soma_edge_requests_total Requests the edge answered, by route and HTTP status.\n",
        );
        out.push_str("# TYPE soma_edge_requests_total counter\n");
        for (route, counters) in &routes {
            let mut statuses: Vec<(u16, u64)> = counters
                .statuses
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
                .map(|(status, c)| (*status, c.load(Ordering::Relaxed)))
                .collect();
            statuses.sort_unstable();
            for (status, n) in statuses {
                let _ = writeln!(
                    out,
                    "soma_edge_requests_total{{route=\"{route}\",code=\"{status}\"}} {n}"
                );
            }
        }
        out.push_str(
            "# HELP soma_edge_request_duration_seconds Time from a request's arrival to its response head, by route.\n",
        );
        out.push_str("# TYPE soma_edge_request_duration_seconds histogram\n");
        for (route, counters) in &routes {
            counters.latency.render(
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
