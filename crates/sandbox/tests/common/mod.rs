//! Builders shared by the sandbox tests: real wasmtime, the repository's adapters.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::time::Duration;

use soma_sandbox::{ADAPTER_ENTRYPOINT, Prepared, RunLimits, Sandbox, SandboxConfig, adapter, sha256};

/// A sandbox with the default ceilings but a small pool, so parallel tests stay light.
pub fn sandbox() -> Sandbox {
    Sandbox::new(SandboxConfig {
        max_instances: 8,
        ..SandboxConfig::default()
    })
    .unwrap_or_else(|e| panic!("sandbox: {e}"))
}

/// The compiled bytes of a repository adapter.
pub fn module(name: &str) -> Vec<u8> {
    adapter(name).unwrap_or_else(|| panic!("adapter {name} is unknown or does not parse"))
}

/// Prepares a repository adapter with its true digest.
pub fn prepare(sandbox: &Sandbox, name: &str) -> Prepared {
    let bytes = module(name);
    sandbox
        .prepare(sha256(&bytes), &bytes, ADAPTER_ENTRYPOINT)
        .unwrap_or_else(|e| panic!("prepare {name}: {e}"))
}

/// Generous limits: 1e9 fuel, 16 MiB, 5 s.
pub fn limits() -> RunLimits {
    RunLimits {
        fuel: 1_000_000_000,
        memory_bytes: 16 * 1024 * 1024,
        deadline: Duration::from_secs(5),
    }
}

/// A field of `/proc/self/status` in bytes (`VmRSS`, `VmHWM`).
pub fn status_bytes(field: &str) -> u64 {
    let status =
        std::fs::read_to_string("/proc/self/status").unwrap_or_else(|e| panic!("/proc/self/status: {e}"));
    let line = status
        .lines()
        .find(|l| l.starts_with(&format!("{field}:")))
        .unwrap_or_else(|| panic!("{field} missing from /proc/self/status"));
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("unreadable line {line:?}"));
    kib * 1024
}

/// The `/proc/self/task` directories of this process's threads whose name starts with `prefix`
/// (Linux truncates names to 15 bytes).
fn tasks_named(prefix: &str) -> impl Iterator<Item = std::path::PathBuf> + '_ {
    std::fs::read_dir("/proc/self/task")
        .unwrap_or_else(|e| panic!("/proc/self/task: {e}"))
        .filter_map(Result::ok)
        .map(|task| task.path())
        .filter(move |task| {
            std::fs::read_to_string(task.join("comm")).is_ok_and(|comm| comm.trim_end().starts_with(prefix))
        })
}

/// Threads of this process whose name starts with `prefix`.
pub fn threads_named(prefix: &str) -> usize {
    tasks_named(prefix).count()
}

/// Context switches (voluntary and not) of the threads of this process whose name starts with
/// `prefix`, from `/proc/self/task/*/status`: how often they woke.
pub fn thread_switches(prefix: &str) -> u64 {
    tasks_named(prefix)
        .filter_map(|task| std::fs::read_to_string(task.join("status")).ok())
        .flat_map(|status| {
            status
                .lines()
                .filter(|l| {
                    l.starts_with("voluntary_ctxt_switches:") || l.starts_with("nonvoluntary_ctxt_switches:")
                })
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .collect::<Vec<_>>()
        })
        .sum()
}

/// The repository's `infinite_loop` adapter run with all the fuel there is and `deadline`: only
/// the deadline can stop it.
pub fn run_infinite_loop(sandbox: &Sandbox, deadline: Duration) -> soma_sandbox::Outcome {
    let prepared = prepare(sandbox, "infinite_loop");
    sandbox.run(
        &prepared,
        b"{}",
        RunLimits {
            fuel: SandboxConfig::default().max_fuel,
            deadline,
            ..limits()
        },
    )
}
