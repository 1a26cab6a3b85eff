//! The epoch ticker sleeps while no run is under way, and a run after an idle period still gets
//! exactly its deadline. Alone in its binary so no other test's sandbox is counted.

#![allow(clippy::expect_used, reason = "a test: a failed expectation is the failure")]

mod common;

use std::time::{Duration, Instant};

use common::{limits, prepare, sandbox, thread_switches, threads_named};
use soma_sandbox::{RunLimits, SandboxConfig};

/// Linux keeps 15 bytes of a thread name: "soma-sandbox-epoch" reads "soma-sandbox-ep".
const TICKER: &str = "soma-sandbox-ep";

/// An infinite loop with all the fuel there is, stopped only by its deadline: how long it ran.
fn looped_for(sandbox: &soma_sandbox::Sandbox, deadline: Duration) -> Duration {
    let prepared = prepare(sandbox, "infinite_loop");
    let outcome = sandbox.run(
        &prepared,
        b"{}",
        RunLimits {
            fuel: SandboxConfig::default().max_fuel,
            deadline,
            ..limits()
        },
    );
    let err = outcome.result.expect_err("an infinite loop cannot finish");
    assert_eq!(err.reason(), "deadline_exceeded", "{err}");
    outcome.measured.wall
}

#[test]
fn the_ticker_sleeps_while_idle_and_deadlines_hold_after_an_idle_period() {
    let sandbox = sandbox();
    let started = Instant::now();
    while threads_named(TICKER) == 0 && started.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(threads_named(TICKER), 1);

    // One tick is a millisecond: a ticker that ticked while idle would wake about 400 times here.
    let before = thread_switches(TICKER);
    std::thread::sleep(Duration::from_millis(400));
    let idle_wakeups = thread_switches(TICKER) - before;
    assert!(
        idle_wakeups <= 2,
        "the idle ticker woke {idle_wakeups} times in 400 ms"
    );

    // The idle period is skipped, not applied: the run after it is stopped at its deadline, not
    // before (its epoch would already be past an unadjusted deadline) and not long after.
    let deadline = Duration::from_millis(150);
    for _ in 0..2 {
        let wall = looped_for(&sandbox, deadline);
        assert!(wall >= deadline, "stopped early: {wall:?}");
        assert!(
            wall <= deadline + Duration::from_millis(50),
            "interrupted after {wall:?}"
        );
        // And idle again between the runs.
        std::thread::sleep(Duration::from_millis(300));
    }

    // Ticking while a run is under way (the loop above was stopped by it), asleep once it is over.
    let before = thread_switches(TICKER);
    std::thread::sleep(Duration::from_millis(300));
    let idle_wakeups = thread_switches(TICKER) - before;
    assert!(
        idle_wakeups <= 2,
        "the ticker woke {idle_wakeups} times in 300 ms after the runs"
    );
}
