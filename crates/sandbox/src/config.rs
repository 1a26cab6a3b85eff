//! The sandbox's ceilings and one run's limits.

use std::time::Duration;

use crate::error::SandboxError;
use crate::inspect::{self, ModuleInfo};

/// Ceilings for everything a release may ask for, and the size of the instance pool.
///
/// A release's own limits ([`RunLimits`]) must stay at or below these; the pooling allocator is
/// sized from them once, at [`Sandbox::new`](crate::Sandbox::new).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxConfig {
    /// Ceiling for any release's `limits.memory_bytes`; also the pool's per-memory slot size.
    pub max_memory_bytes: u64,
    /// Ceiling for `limits.fuel`.
    pub max_fuel: u64,
    /// Ceiling for `limits.deadline`.
    pub max_deadline: Duration,
    /// Largest input the host writes into a guest.
    pub max_input_bytes: usize,
    /// Largest output the host copies out of a guest.
    pub max_output_bytes: usize,
    /// Concurrent instances (pooled slots); one more call at once is `sandbox_busy`.
    pub max_instances: u32,
    /// Compiled modules kept in the cache (least recently used dropped first).
    pub max_cached_modules: usize,
}

impl SandboxConfig {
    /// The publish-time check of [`Sandbox::inspect`](crate::Sandbox::inspect), against this
    /// configuration's memory ceiling instead of the default one. Never compiles.
    pub fn inspect(&self, module: &[u8], entrypoint: &str) -> Result<ModuleInfo, SandboxError> {
        inspect::inspect(module, entrypoint, self.max_memory_bytes)
    }
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            max_memory_bytes: 64 * 1024 * 1024,
            max_fuel: 10_000_000_000,
            max_deadline: Duration::from_secs(10),
            max_input_bytes: 1024 * 1024,
            max_output_bytes: 1024 * 1024,
            max_instances: 64,
            max_cached_modules: 256,
        }
    }
}

/// One call's budget, taken from the release's manifest; each value at most the sandbox ceiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunLimits {
    /// Fuel units (roughly one per wasm instruction).
    pub fuel: u64,
    /// Largest linear memory the guest may grow to, in bytes.
    pub memory_bytes: u64,
    /// Wall-clock budget, counted from the start of instantiation; enforced by epochs.
    pub deadline: Duration,
}
