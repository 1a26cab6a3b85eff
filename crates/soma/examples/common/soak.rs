//! An open-loop driver for long runs whose memory is measured, beside
//! `bench::open_loop` (which keeps every finished call until the end).
//!
//! Included with `#[path]` by `registry_bench.rs`, together with
//! `common/bench.rs` (whose `Latencies` it returns).
//!
//! Two things would make the process's RSS grow with the run's length
//! whatever the server does: a `JoinSet` keeps each finished task (several
//! KB for a gRPC call's future) until it is joined, and a latency vector
//! grows as calls end. Here finished tasks are reaped at every tick, and
//! the latency vector is allocated and written once before the first call,
//! so that its pages are resident from the start.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::bench::Latencies;

/// Launches one call every `period` on its own task for `duration`, and
/// returns each call's latency, from just before the call is polled to its
/// end; memory held for the calls is bounded by those in flight.
pub async fn open_loop_flat<F, Fut>(
    period: Duration,
    duration: Duration,
    mut call: F,
) -> anyhow::Result<Latencies>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let count = usize::try_from(duration.as_nanos() / period.as_nanos().max(1))?;
    let mut samples = resident_vec(count, Duration::MAX);
    let mut ticker = tokio::time::interval(period);
    // A late tick is caught up at once: the schedule, not the server's pace,
    // decides when calls start (no coordinated omission).
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = tokio::task::JoinSet::new();
    let start = Instant::now();
    for _ in 0..count {
        ticker.tick().await;
        let pending = call();
        tasks.spawn(async move {
            let sent = Instant::now();
            pending.await.map(|()| sent.elapsed())
        });
        while let Some(joined) = tasks.try_join_next() {
            samples.push(joined??);
        }
    }
    let launched_in = start.elapsed();
    while let Some(joined) = tasks.join_next().await {
        samples.push(joined??);
    }
    samples.sort_unstable();
    Ok(Latencies { samples, launched_in })
}

/// An empty vector with room for `capacity` items whose memory has been
/// written (with `filler`), so that filling it later adds nothing to RSS.
pub fn resident_vec<T: Clone>(capacity: usize, filler: T) -> Vec<T> {
    let mut v = vec![filler; capacity];
    v.clear();
    v
}
