//! The epoch ticker sleeps while no run is under way, and a run after an idle period still gets
//! exactly its deadline. Alone in its binary so no other test's sandbox is counted.

mod common;

use std::time::{Duration, Instant};

use common::{run_infinite_loop, sandbox, thread_switches, threads_named};

/// Linux keeps 15 bytes of a thread name: "soma-sandbox-epoch" reads "soma-sandbox-ep".
const TICKER: &str = "soma-sandbox-ep";

/// How often the ticker thread woke while this thread slept for `period`.
fn ticker_wakeups_over(period: Duration) -> u64 {
    let before = thread_switches(TICKER);
    std::thread::sleep(period);
    thread_switches(TICKER) - before
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
    let idle_wakeups = ticker_wakeups_over(Duration::from_millis(400));
    assert!(
        idle_wakeups <= 2,
        "the idle ticker woke {idle_wakeups} times in 400 ms"
    );

    // The idle period is skipped, not applied: the run after it is stopped at its deadline, not
    // before (its epoch would already be past an unadjusted deadline) and not long after.
    let deadline = Duration::from_millis(150);
    for _ in 0..2 {
        let outcome = run_infinite_loop(&sandbox, deadline);
        let err = outcome.result.expect_err("an infinite loop cannot finish");
        assert_eq!(err.reason(), "deadline_exceeded", "{err}");
        let wall = outcome.measured.wall;
        assert!(wall >= deadline, "stopped early: {wall:?}");
        assert!(
            wall <= deadline + Duration::from_millis(50),
            "interrupted after {wall:?}"
        );
        // And idle again between the runs.
        std::thread::sleep(Duration::from_millis(300));
    }

    // Ticking while a run is under way (the loop above was stopped by it), asleep once it is over.
    let idle_wakeups = ticker_wakeups_over(Duration::from_millis(300));
    assert!(
        idle_wakeups <= 2,
        "the ticker woke {idle_wakeups} times in 300 ms after the runs"
    );
}
