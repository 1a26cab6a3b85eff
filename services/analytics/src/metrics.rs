//! Analytics' own series on `/metrics`: the ledger as this process knows
//! it (its leaves, its latest checkpoint), and the drills recorded since it
//! started.
//!
//! Rendering only reads: the in-memory authenticated view of the ledger
//! (under its read lock, held for two loads), the start-up integrity verdict
//! (skipped for one scrape if the writer holds it), and atomics.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use soma_mesh::{MetricsSource, Seconds};

use crate::ledger::Ledger;
use crate::tables::drills::DrillRow;

/// The last drill recorded since start-up, and the drill counts.
#[derive(Debug, Default)]
pub(crate) struct DrillGauges {
    recorded: AtomicU64,
    failed: AtomicU64,
    /// Nanoseconds; -1 before the first drill.
    last_rto: AtomicI64,
    last_rpo: AtomicI64,
    last_rto_objective: AtomicI64,
    last_rpo_objective: AtomicI64,
    last_passed: AtomicU64,
}

impl DrillGauges {
    pub(crate) fn new() -> Self {
        let gauges = Self::default();
        for g in [
            &gauges.last_rto,
            &gauges.last_rpo,
            &gauges.last_rto_objective,
            &gauges.last_rpo_objective,
        ] {
            g.store(-1, Ordering::Relaxed);
        }
        gauges
    }

    /// A drill was recorded (its row is in the ledger).
    pub(crate) fn observe(&self, row: &DrillRow) {
        self.last_rto.store(row.rto_nanos, Ordering::Relaxed);
        self.last_rpo.store(row.rpo_nanos, Ordering::Relaxed);
        let (rto, rpo) = row
            .objective
            .as_ref()
            .map_or((-1, -1), |o| (o.rto_nanos, o.rpo_nanos));
        self.last_rto_objective.store(rto, Ordering::Relaxed);
        self.last_rpo_objective.store(rpo, Ordering::Relaxed);
        self.last_passed.store(u64::from(row.passed), Ordering::Relaxed);
        if !row.passed {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
        self.recorded.fetch_add(1, Ordering::Relaxed);
    }
}

/// The source registered with the runtime.
#[derive(Debug)]
pub(crate) struct AnalyticsMetrics {
    pub(crate) ledger: Ledger,
    pub(crate) drills: Arc<DrillGauges>,
}

impl MetricsSource for AnalyticsMetrics {
    fn render(&self, out: &mut String) {
        let (leaves, unknown) = {
            let known = self
                .ledger
                .known()
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            (known.size(), known.unknown())
        };
        gauge(
            out,
            "soma_ledger_leaves",
            "Leaves of the Merkle ledger this process has authenticated.",
            leaves,
        );
        gauge(
            out,
            "soma_ledger_unauthenticated_leaves",
            "Leaves whose row failed its MAC (tampered or damaged): no export covering them can be proven complete.",
            unknown,
        );
        // The latest checkpoint: described always, sampled once there is
        // one (an empty ledger has none stored).
        let last = self.ledger.last_checkpoint().get();
        let _ = writeln!(
            out,
            "# HELP soma_ledger_last_checkpoint_timestamp_seconds When the latest checkpoint this process signed (or found stored at start-up) was signed (Unix time).\n# TYPE soma_ledger_last_checkpoint_timestamp_seconds gauge"
        );
        if let Some((_, at)) = last {
            let _ = writeln!(
                out,
                "soma_ledger_last_checkpoint_timestamp_seconds {}",
                Seconds(at)
            );
        }
        let _ = writeln!(
            out,
            "# HELP soma_ledger_last_checkpoint_tree_size Tree size (the head: the next leaf's index) the latest checkpoint commits to.\n# TYPE soma_ledger_last_checkpoint_tree_size gauge"
        );
        if let Some((size, _)) = last {
            let _ = writeln!(out, "soma_ledger_last_checkpoint_tree_size {size}");
        }
        if let Some(sound) = self.ledger.sound_now() {
            gauge(
                out,
                "soma_ledger_sound",
                "1 when the ledger passed its integrity check at start-up, 0 when it failed.",
                u64::from(sound),
            );
        }
        let d = &self.drills;
        counter(
            out,
            "soma_drills_recorded_total",
            "Disaster-recovery drills recorded since start-up.",
            d.recorded.load(Ordering::Relaxed),
        );
        counter(
            out,
            "soma_drills_failed_total",
            "Drills recorded since start-up that failed their objectives or a step.",
            d.failed.load(Ordering::Relaxed),
        );
        // The last drill's figures: described always, sampled once a drill
        // was recorded (a gauge without a value is absent, not zero).
        let _ = writeln!(
            out,
            "# HELP soma_drill_last_passed 1 when the last drill recorded passed, 0 when it failed.\n# TYPE soma_drill_last_passed gauge"
        );
        if d.recorded.load(Ordering::Relaxed) > 0 {
            let _ = writeln!(
                out,
                "soma_drill_last_passed {}",
                d.last_passed.load(Ordering::Relaxed)
            );
        }
        for (name, help, value) in [
            (
                "soma_drill_last_rto_seconds",
                "RTO of the last drill recorded.",
                &d.last_rto,
            ),
            (
                "soma_drill_last_rpo_seconds",
                "RPO of the last drill recorded.",
                &d.last_rpo,
            ),
            (
                "soma_drill_last_rto_objective_seconds",
                "RTO objective the last drill was judged against (-1: none configured).",
                &d.last_rto_objective,
            ),
            (
                "soma_drill_last_rpo_objective_seconds",
                "RPO objective the last drill was judged against (-1: none configured).",
                &d.last_rpo_objective,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            if d.recorded.load(Ordering::Relaxed) > 0 {
                let nanos = value.load(Ordering::Relaxed);
                let seconds = if nanos < 0 { -1.0 } else { nanos as f64 / 1e9 };
                let _ = writeln!(out, "{name} {seconds}");
            }
        }
    }
}

fn gauge(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}");
}

fn counter(out: &mut String, name: &str, help: &str, value: u64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
}
