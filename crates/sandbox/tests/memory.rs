//! Resident memory while a memory bomb runs. Alone in its binary: RSS is process-wide, and
//! another test running beside it would blur the figure.

mod common;

use common::{limits, prepare, status_bytes};
use soma_sandbox::{RunLimits, Sandbox, SandboxConfig};

#[test]
fn a_32_mib_memory_bomb_grows_rss_by_at_most_the_cap_and_rss_returns() {
    const CAP: u64 = 32 * 1024 * 1024;
    let sandbox = Sandbox::new(SandboxConfig {
        max_instances: 4,
        ..SandboxConfig::default()
    })
    .expect("sandbox");
    let bomb = prepare(&sandbox, "memory_bomb");
    // One run first so lazily-initialised runtime state is not counted as the bomb's.
    let warm = sandbox.run(
        &bomb,
        b"{}",
        RunLimits {
            memory_bytes: 1024 * 1024,
            ..limits()
        },
    );
    assert_eq!(warm.result.map_err(|e| e.reason()), Err("memory_limit_exceeded"));

    let before = status_bytes("VmRSS");
    // Reset the high-water mark (VmHWM) to the current RSS, so it records this run's peak.
    std::fs::write("/proc/self/clear_refs", "5").expect("reset VmHWM through /proc/self/clear_refs");
    let outcome = sandbox.run(
        &bomb,
        b"{}",
        RunLimits {
            memory_bytes: CAP,
            ..limits()
        },
    );
    let peak = status_bytes("VmHWM");
    let after = status_bytes("VmRSS");

    assert_eq!(
        outcome.result.map_err(|e| e.reason()),
        Err("memory_limit_exceeded")
    );
    assert_eq!(outcome.measured.peak_memory_bytes, CAP);
    let grown = peak.saturating_sub(before);
    let kept = after.saturating_sub(before);
    println!("rss before {before}, peak during the run {peak} (+{grown}), after {after} (+{kept})");
    assert!(
        grown >= CAP / 2,
        "the bomb's pages were not resident: rss grew {grown} bytes"
    );
    assert!(
        grown <= CAP + CAP / 10,
        "rss grew {grown} bytes for a {CAP}-byte cap"
    );
    // The instance's memory is decommitted when it ends.
    let kept = after.saturating_sub(before);
    assert!(
        kept <= CAP / 10,
        "rss still {kept} bytes above the start after the run"
    );
}
