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

/// Threads of this process whose name starts with `prefix` (Linux truncates names to 15 bytes).
pub fn threads_named(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap_or_else(|e| panic!("/proc/self/task: {e}"))
        .filter_map(Result::ok)
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|comm| comm.trim_end().starts_with(prefix))
        })
        .count()
}

/// Context switches (voluntary and not) of the threads of this process whose name starts with
/// `prefix`, from `/proc/self/task/*/status`: how often they woke.
pub fn thread_switches(prefix: &str) -> u64 {
    std::fs::read_dir("/proc/self/task")
        .unwrap_or_else(|e| panic!("/proc/self/task: {e}"))
        .filter_map(Result::ok)
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm"))
                .is_ok_and(|comm| comm.trim_end().starts_with(prefix))
        })
        .filter_map(|task| std::fs::read_to_string(task.path().join("status")).ok())
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
