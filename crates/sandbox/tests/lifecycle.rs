//! The epoch ticker thread lives exactly as long as the last `Sandbox` clone. Alone in its binary
//! so no other test's sandbox is counted.

mod common;

use std::time::{Duration, Instant};

use common::threads_named;
use soma_sandbox::{Sandbox, SandboxConfig};

/// Linux keeps 15 bytes of a thread name: "soma-sandbox-epoch" reads "soma-sandbox-ep".
const TICKER: &str = "soma-sandbox-ep";

#[test]
fn the_ticker_stops_when_the_last_clone_drops() {
    assert_eq!(threads_named(TICKER), 0);
    let sandbox = Sandbox::new(SandboxConfig {
        max_instances: 2,
        ..SandboxConfig::default()
    })
    .expect("sandbox");
    let clone = sandbox.clone();
    // The new thread names itself once it runs; give it a moment to do so.
    let started = Instant::now();
    while threads_named(TICKER) == 0 && started.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(threads_named(TICKER), 1);
    drop(sandbox);
    assert_eq!(threads_named(TICKER), 1, "a clone is still alive");
    drop(clone);
    assert_eq!(threads_named(TICKER), 0, "the ticker outlived the last sandbox");
}
