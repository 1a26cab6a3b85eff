//! The figures of a transactional outbox, for `/metrics`: how many events
//! wait, how long the oldest has waited, how many were delivered and how
//! many attempts failed.
//!
//! A scrape never queries the database: the outbox's deliverer measures
//! the backlog once per delivery round (a `COUNT` and a `MIN` it runs
//! anyway, between rounds or on its idle poll) and counts the outcome of
//! each attempt; rendering reads atomics and the clock. The backlog is
//! therefore as fresh as the deliverer's last round (about a second on an
//! idle outbox), and absent until its first one: a process whose
//! deliverer does not run (no receiver configured) exposes no backlog
//! rather than a made-up zero. The age of the oldest event is computed at
//! scrape time from its stored creation time, so it keeps growing between
//! rounds as it does in the database.
//!
//! One outbox per process: each source renders its own `# HELP`/`# TYPE`
//! lines, so two of them on one `/metrics` would describe each name twice.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::metrics::{MetricsSource, Seconds};

/// The figures of one outbox, named by a fixed `outbox` label value.
#[derive(Debug)]
pub struct OutboxMetrics {
    name: &'static str,
    /// Rows waiting at the last measurement; -1 before the first.
    pending: AtomicI64,
    /// Creation time (Unix nanoseconds) of the oldest row waiting at the
    /// last measurement; 0 when none was.
    oldest_created: AtomicI64,
    delivered: AtomicU64,
    failures: AtomicU64,
}

impl OutboxMetrics {
    /// The figures of the outbox labelled `outbox="<name>"` (a fixed value
    /// of `[a-z_]`, documented with the series).
    pub fn new(name: &'static str) -> Self {
        debug_assert!(
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
            "an outbox label value is [a-z_]+: {name:?}"
        );
        Self {
            name,
            pending: AtomicI64::new(-1),
            oldest_created: AtomicI64::new(0),
            delivered: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }

    /// The backlog as just measured: `pending` rows, the oldest created at
    /// `oldest_created` (Unix nanoseconds; `None` when nothing waits).
    pub fn backlog(&self, pending: i64, oldest_created: Option<i64>) {
        // The creation time first and the count second, read in the other
        // order by `render`: a scrape between the two stores pairs a count
        // with a neighbouring round's creation time, and an empty outbox's
        // creation time (0) renders an age of 0, never the age of the epoch.
        self.oldest_created
            .store(oldest_created.unwrap_or(0).max(0), Ordering::Relaxed);
        self.pending.store(pending.max(0), Ordering::Relaxed);
    }

    /// `n` events were acknowledged by their receiver and left the outbox.
    pub fn delivered(&self, n: u64) {
        self.delivered.fetch_add(n, Ordering::Relaxed);
    }

    /// One delivery attempt failed; its event stays and is tried again.
    pub fn failed(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// Rows waiting at the last measurement (`None` before the first).
    pub fn pending(&self) -> Option<u64> {
        u64::try_from(self.pending.load(Ordering::Relaxed)).ok()
    }
}

impl MetricsSource for OutboxMetrics {
    fn render(&self, out: &mut String) {
        let name = self.name;
        out.push_str(
            "# HELP soma_outbox_pending_events Events waiting in the outbox (parked ones included), as its deliverer last counted them.\n\
             # TYPE soma_outbox_pending_events gauge\n",
        );
        let pending = self.pending.load(Ordering::Relaxed);
        if pending >= 0 {
            let _ = writeln!(out, "soma_outbox_pending_events{{outbox=\"{name}\"}} {pending}");
        }
        out.push_str(
            "# HELP soma_outbox_oldest_pending_age_seconds How long the oldest event waiting in the outbox has waited (0 when none waits).\n\
             # TYPE soma_outbox_oldest_pending_age_seconds gauge\n",
        );
        if pending >= 0 {
            let oldest = self.oldest_created.load(Ordering::Relaxed);
            let age = if pending == 0 || oldest == 0 {
                0
            } else {
                // A row written by another host with a clock ahead of this
                // one's has waited for no time yet, not a negative one.
                now_nanos().saturating_sub(oldest).max(0)
            };
            let _ = writeln!(
                out,
                "soma_outbox_oldest_pending_age_seconds{{outbox=\"{name}\"}} {}",
                Seconds(age)
            );
        }
        out.push_str(
            "# HELP soma_outbox_delivered_total Events their receiver acknowledged, which then left the outbox.\n\
             # TYPE soma_outbox_delivered_total counter\n",
        );
        let _ = writeln!(
            out,
            "soma_outbox_delivered_total{{outbox=\"{name}\"}} {}",
            self.delivered.load(Ordering::Relaxed)
        );
        out.push_str(
            "# HELP soma_outbox_delivery_failures_total Delivery attempts that failed (the event stays and is tried again).\n\
             # TYPE soma_outbox_delivery_failures_total counter\n",
        );
        let _ = writeln!(
            out,
            "soma_outbox_delivery_failures_total{{outbox=\"{name}\"}} {}",
            self.failures.load(Ordering::Relaxed)
        );
    }
}

/// Unix nanoseconds now (0 before 1970, which no stored row predates).
fn now_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(m: &OutboxMetrics) -> String {
        let mut out = String::new();
        m.render(&mut out);
        out
    }

    #[test]
    fn counters_start_at_zero_and_the_backlog_is_absent_until_measured() {
        let m = OutboxMetrics::new("tool_registry");
        let text = rendered(&m);
        assert!(text.contains("soma_outbox_delivered_total{outbox=\"tool_registry\"} 0\n"));
        assert!(text.contains("soma_outbox_delivery_failures_total{outbox=\"tool_registry\"} 0\n"));
        assert!(text.contains("# TYPE soma_outbox_pending_events gauge\n"));
        assert!(!text.contains("soma_outbox_pending_events{"), "{text}");
        assert!(
            !text.contains("soma_outbox_oldest_pending_age_seconds{"),
            "{text}"
        );
        assert_eq!(m.pending(), None);
    }

    #[test]
    fn the_backlog_renders_as_measured_and_an_empty_outbox_has_age_zero() {
        let m = OutboxMetrics::new("capsule_repo");
        let created = now_nanos() - 90 * 1_000_000_000;
        m.backlog(7, Some(created));
        m.delivered(3);
        m.failed();
        let text = rendered(&m);
        assert!(text.contains("soma_outbox_pending_events{outbox=\"capsule_repo\"} 7\n"));
        assert!(text.contains("soma_outbox_delivered_total{outbox=\"capsule_repo\"} 3\n"));
        assert!(text.contains("soma_outbox_delivery_failures_total{outbox=\"capsule_repo\"} 1\n"));
        let age: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("soma_outbox_oldest_pending_age_seconds{outbox=\"capsule_repo\"} "))
            .unwrap()
            .parse()
            .unwrap();
        assert!((90.0..91.0).contains(&age), "{age}");
        m.backlog(0, None);
        let text = rendered(&m);
        assert!(text.contains("soma_outbox_pending_events{outbox=\"capsule_repo\"} 0\n"));
        assert!(text.contains("soma_outbox_oldest_pending_age_seconds{outbox=\"capsule_repo\"} 0\n"));
        assert_eq!(m.pending(), Some(0));
    }

    #[test]
    fn a_row_from_a_clock_ahead_has_waited_zero_seconds() {
        let m = OutboxMetrics::new("drill_webhooks");
        m.backlog(1, Some(now_nanos() + 60 * 1_000_000_000));
        assert!(
            rendered(&m).contains("soma_outbox_oldest_pending_age_seconds{outbox=\"drill_webhooks\"} 0\n")
        );
    }
}
