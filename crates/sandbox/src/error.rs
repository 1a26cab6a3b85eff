//! The one error type of the crate, with a stable machine-readable reason per variant.

use std::time::Duration;

/// Everything the sandbox refuses or reports. Messages are lowercase and name the limit and the
/// measured value where that helps the tool's author; [`SandboxError::reason`] is the stable code.
#[non_exhaustive]
#[derive(thiserror::Error, Debug)]
pub enum SandboxError {
    /// The configuration cannot build an engine (zero instances, a ceiling the pool cannot hold).
    #[error("invalid sandbox configuration: {0}")]
    InvalidConfig(String),
    /// Wasmtime refused the engine configuration or the epoch ticker could not start.
    #[error("sandbox engine failed to start: {0}")]
    Engine(String),
    /// The bytes are not a valid WebAssembly module, or use a proposal the sandbox does not enable.
    #[error("invalid module: {0}")]
    InvalidModule(String),
    /// The module imports something; the host offers no imports at all.
    #[error("module imports are forbidden (the host offers none): the module imports `{module}::{name}`")]
    ModuleImportsForbidden {
        /// Module part of the first import.
        module: String,
        /// Field name of the first import.
        name: String,
    },
    /// A required export (`memory`, `alloc` or the entry point) is absent.
    #[error("module does not export `{name}` (expected {expected})")]
    MissingExport {
        /// The export's name.
        name: String,
        /// What the ABI expects under that name.
        expected: &'static str,
    },
    /// A required export has the wrong kind or signature.
    #[error("export `{name}` is {actual}, expected {expected}")]
    ExportWrongType {
        /// The export's name.
        name: String,
        /// What the ABI expects under that name.
        expected: &'static str,
        /// What the module declares.
        actual: String,
    },
    /// The module's declared memory minimum is above the sandbox ceiling.
    #[error(
        "module memory minimum of {minimum_bytes} bytes exceeds the sandbox ceiling of {max_bytes} bytes"
    )]
    MemoryTooLarge {
        /// Declared minimum in bytes (saturated at `u64::MAX`).
        minimum_bytes: u64,
        /// The configured ceiling.
        max_bytes: u64,
    },
    /// The module bytes do not hash to the digest they were presented with; nothing was compiled.
    #[error("module sha-256 {actual} differs from the expected digest {expected}")]
    ModuleDigestMismatch {
        /// The digest the caller vouched for (hex).
        expected: String,
        /// The digest of the bytes actually given (hex).
        actual: String,
    },
    /// Wasmtime could not compile or link a module that passed validation.
    #[error("module failed to compile: {0}")]
    CompileFailed(String),
    /// A [`RunLimits`](crate::RunLimits) value is above the sandbox's ceiling.
    #[error("run limit {limit} of {requested} exceeds the sandbox ceiling of {ceiling}")]
    LimitsExceedSandbox {
        /// Which limit (`fuel`, `memory_bytes`, `deadline_ms`).
        limit: &'static str,
        /// The requested value.
        requested: u64,
        /// The configured ceiling.
        ceiling: u64,
    },
    /// The input is longer than `max_input_bytes`.
    #[error("input of {len} bytes exceeds the limit of {max} bytes")]
    InputTooLarge {
        /// Input length.
        len: usize,
        /// The configured limit.
        max: usize,
    },
    /// The input is not UTF-8 (the ABI passes UTF-8 JSON text).
    #[error("input is not utf-8: invalid byte at offset {offset}")]
    InputNotUtf8 {
        /// Offset of the first invalid byte.
        offset: usize,
    },
    /// The guest used all the fuel it was given.
    #[error("fuel exhausted: all {fuel} units consumed")]
    FuelExhausted {
        /// The fuel the run was given.
        fuel: u64,
    },
    /// The run was interrupted at its epoch deadline.
    #[error("deadline of {} ms exceeded (interrupted after {} ms)", .deadline.as_millis(), .elapsed.as_millis())]
    DeadlineExceeded {
        /// The run's deadline.
        deadline: Duration,
        /// Wall time when the interruption was observed.
        elapsed: Duration,
    },
    /// The guest asked for more linear memory than its limit; reported even if it then trapped.
    #[error("memory growth to {requested_bytes} bytes denied at the limit of {limit_bytes} bytes")]
    MemoryLimitExceeded {
        /// The run's memory limit.
        limit_bytes: u64,
        /// The first size asked for above the limit.
        requested_bytes: u64,
    },
    /// The guest exhausted its wasm stack (`max_wasm_stack`).
    #[error("stack overflow: wasm call stack of {max_stack_bytes} bytes exhausted")]
    StackOverflow {
        /// The configured wasm stack size.
        max_stack_bytes: usize,
    },
    /// The guest trapped; `code` names the trap (`unreachable`, `integer divide by zero`, ...).
    #[error("trap: {code}")]
    Trap {
        /// The trap code's description.
        code: String,
    },
    /// `alloc` returned a region outside linear memory for the input.
    #[error("alloc returned {len} bytes at {ptr}, outside the {memory_bytes}-byte memory")]
    AllocOutOfBounds {
        /// Returned pointer.
        ptr: u32,
        /// Requested length.
        len: usize,
        /// Memory size at that moment.
        memory_bytes: usize,
    },
    /// The entry point claimed an output longer than `max_output_bytes`.
    #[error("output of {len} bytes exceeds the limit of {max} bytes")]
    OutputTooLarge {
        /// Claimed output length.
        len: u32,
        /// The configured limit.
        max: usize,
    },
    /// The entry point's output region is outside linear memory.
    #[error("output of {len} bytes at {ptr} is outside the {memory_bytes}-byte memory")]
    OutputOutOfBounds {
        /// Claimed pointer.
        ptr: u32,
        /// Claimed length.
        len: u32,
        /// Memory size at that moment.
        memory_bytes: usize,
    },
    /// The output is not UTF-8 (the ABI returns UTF-8 JSON text).
    #[error("output is not utf-8: invalid byte at offset {offset}")]
    OutputNotUtf8 {
        /// Offset of the first invalid byte.
        offset: usize,
    },
    /// Every pooled instance slot is in use.
    #[error("sandbox busy: all {max_instances} instance slots are in use")]
    SandboxBusy {
        /// The configured pool size.
        max_instances: u32,
    },
    /// The module was evicted (revoked) after this handle was prepared.
    #[error("module {digest} was evicted from the sandbox and may not run")]
    ModuleEvicted {
        /// The module's digest (hex).
        digest: String,
    },
    /// The handle was prepared by a different [`Sandbox`](crate::Sandbox) (another engine).
    #[error("prepared module belongs to another sandbox")]
    ForeignPrepared,
    /// Instantiation failed for a reason not listed above.
    #[error("instantiation failed: {0}")]
    Instantiate(String),
}

impl SandboxError {
    /// Stable snake_case reason for machines (logs, API responses, metrics labels).
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidConfig(_) => "invalid_config",
            Self::Engine(_) => "engine_failed",
            Self::InvalidModule(_) => "invalid_module",
            Self::ModuleImportsForbidden { .. } => "module_imports_forbidden",
            Self::MissingExport { .. } => "missing_export",
            Self::ExportWrongType { .. } => "export_wrong_type",
            Self::MemoryTooLarge { .. } => "memory_too_large",
            Self::ModuleDigestMismatch { .. } => "module_digest_mismatch",
            Self::CompileFailed(_) => "compile_failed",
            Self::LimitsExceedSandbox { .. } => "limits_exceed_sandbox",
            Self::InputTooLarge { .. } => "input_too_large",
            Self::InputNotUtf8 { .. } => "input_not_utf8",
            Self::FuelExhausted { .. } => "fuel_exhausted",
            Self::DeadlineExceeded { .. } => "deadline_exceeded",
            Self::MemoryLimitExceeded { .. } => "memory_limit_exceeded",
            Self::StackOverflow { .. } => "stack_overflow",
            Self::Trap { .. } => "trap",
            Self::AllocOutOfBounds { .. } => "alloc_out_of_bounds",
            Self::OutputTooLarge { .. } => "output_too_large",
            Self::OutputOutOfBounds { .. } => "output_out_of_bounds",
            Self::OutputNotUtf8 { .. } => "output_not_utf8",
            Self::SandboxBusy { .. } => "sandbox_busy",
            Self::ModuleEvicted { .. } => "module_evicted",
            Self::ForeignPrepared => "foreign_prepared",
            Self::Instantiate(_) => "instantiate_failed",
        }
    }
}
