//! The WebAssembly sandbox in which ToolRegistry runs tenant-facing tool adapters.
//!
//! What it does: checks a module at publish time without compiling it ([`Sandbox::inspect`]),
//! compiles verified releases once and caches them by SHA-256 ([`Sandbox::prepare`]), refusing
//! bytes whose digest differs from the one it was given, and runs each call in a fresh pooled
//! instance under fuel, a memory cap and a wall-clock deadline ([`Sandbox::run`]), returning the
//! output together with what was measured (fuel, wall time, peak memory).
//!
//! What it deliberately does not do: offer any import to the guest (no WASI, no host functions,
//! no clock, no network), run asynchronously, parse JSON (the registry does), or verify release
//! signatures (the registry does, before `prepare`).
//!
//! Security-relevant defaults: the guest imports nothing; every run has fuel, a memory cap
//! and an epoch deadline no larger than the [`SandboxConfig`] ceilings (64 MiB, 10^10 fuel, 10 s);
//! input and output are bounded (1 MiB each) and must be UTF-8; the wasm stack is 512 KiB so deep
//! recursion is a `stack_overflow` trap, not a crash; an evicted module refuses to run even from a
//! handle prepared before the eviction; no module or input makes the sandbox panic.
//!
//! # ABI
//!
//! A module exports a memory named `memory`, a function `alloc(len: i32) -> i32` and an entry
//! point `ENTRYPOINT(ptr: i32, len: i32) -> i64`, and imports nothing.
//!
//! 1. The host calls `alloc(len)` with the input's length; it returns a pointer to `len` writable
//!    bytes of linear memory.
//! 2. The host writes the input there: UTF-8 JSON text (the sandbox checks UTF-8, not JSON).
//! 3. The host calls `ENTRYPOINT(ptr, len)`. The result packs the output as
//!    `(out_ptr << 32) | out_len`, both unsigned 32-bit.
//! 4. The host copies `out_len` bytes from `out_ptr` after checking them against
//!    `max_output_bytes` (`output_too_large`), the memory's bounds (`output_out_of_bounds`) and
//!    UTF-8 (`output_not_utf8`). The output is UTF-8 JSON text, passed on unparsed.
//!
//! Each call gets a fresh instance, so a guest keeps no state between calls; a bump allocator
//! that never frees is enough.
//!
//! # Limits and reasons
//!
//! Fuel counts wasm operations (`fuel_exhausted`); the deadline is enforced by epoch interruption
//! with a 1 ms tick, rounded up to whole ticks (`deadline_exceeded`; the ticker thread ticks only
//! while a call is under way and sleeps otherwise); memory growth above
//! `limits.memory_bytes` is denied and reported as `memory_limit_exceeded` even when the guest
//! then traps. Every failure carries a stable [`SandboxError::reason`].

mod adapters;
mod config;
mod error;
mod inspect;
mod run;
mod sandbox;

pub use adapters::{ADAPTER_ENTRYPOINT, ADAPTERS, adapter, adapter_wat};
pub use config::{RunLimits, SandboxConfig};
pub use error::SandboxError;
pub use inspect::ModuleInfo;
pub use run::{Measured, Outcome};
pub use sandbox::{Counters, EPOCH_TICK, MAX_WASM_STACK, Prepared, Sandbox, sha256};
