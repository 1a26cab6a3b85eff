//! One call: fresh instance, limits, the ABI exchange, and what was measured.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use wasmtime::{Engine, PoolConcurrencyLimitError, ResourceLimiter, Store, Trap};

use crate::config::{RunLimits, SandboxConfig};
use crate::error::SandboxError;
use crate::sandbox::{AtomicCounters, EpochClock, MAX_TABLE_ELEMENTS, MAX_WASM_STACK, Prepared, hex};

/// What a run measured, whatever its result.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Measured {
    /// `limits.fuel` minus the fuel left at the end (all of it when fuel ran out).
    pub fuel_consumed: u64,
    /// Wall time from the start of `run` to the end of the copy-out.
    pub wall: Duration,
    /// The largest linear-memory size the limiter allowed, in bytes.
    pub peak_memory_bytes: u64,
}

/// A run's result and its measurements.
#[derive(Debug)]
pub struct Outcome {
    /// The guest's output (UTF-8 JSON text, unparsed) or why there is none.
    pub result: Result<Vec<u8>, SandboxError>,
    /// Fuel, wall time and peak memory.
    pub measured: Measured,
}

/// Store data: the memory limiter and its records.
#[derive(Debug)]
pub(crate) struct RunState {
    limiter: Limiter,
}

/// Caps linear memory at the run's limit and records the peak it allowed and the first growth it
/// denied (the denial is the reason reported even if the guest then traps or loops).
#[derive(Debug)]
struct Limiter {
    cap_bytes: usize,
    peak_bytes: usize,
    denied_bytes: Option<usize>,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.cap_bytes {
            self.denied_bytes.get_or_insert(desired);
            return Ok(false);
        }
        // Above the module's own declared maximum wasmtime refuses anyway; that is the
        // module's limit, not ours, so it is not recorded as a denial.
        if maximum.is_some_and(|max| desired > max) {
            return Ok(false);
        }
        self.peak_bytes = self.peak_bytes.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= MAX_TABLE_ELEMENTS && maximum.is_none_or(|max| desired <= max))
    }

    fn instances(&self) -> usize {
        1
    }

    fn tables(&self) -> usize {
        1
    }

    fn memories(&self) -> usize {
        1
    }
}

/// Why a run stopped: a wasmtime error still to be classified, or an ABI/limit refusal.
enum Stop {
    Wasm(wasmtime::Error),
    Refused(SandboxError),
}

impl From<wasmtime::Error> for Stop {
    fn from(e: wasmtime::Error) -> Self {
        Self::Wasm(e)
    }
}

impl From<SandboxError> for Stop {
    fn from(e: SandboxError) -> Self {
        Self::Refused(e)
    }
}

pub(crate) fn run(
    engine: &Engine,
    config: &SandboxConfig,
    counters: &AtomicCounters,
    clock: &EpochClock,
    prepared: &Prepared,
    input: &[u8],
    limits: RunLimits,
) -> Outcome {
    let started = Instant::now();
    // The epoch advances while this guard lives: through the whole run.
    let running = clock.enter(limits.deadline);
    let deadline_ticks = running.deadline_ticks;
    let mut measured = Measured::default();
    let result = match admit(engine, config, prepared, input, limits) {
        Ok(()) => execute(
            engine,
            config,
            counters,
            prepared,
            input,
            limits,
            deadline_ticks,
            started,
            &mut measured,
        ),
        Err(e) => Err(e),
    };
    measured.wall = started.elapsed();
    if let Err(e) = &result {
        tracing::debug!(
            digest = %hex(&prepared.inner.digest),
            reason = e.reason(),
            fuel_consumed = measured.fuel_consumed,
            wall_us = measured.wall.as_micros() as u64,
            "sandbox run failed: {e}"
        );
    }
    Outcome { result, measured }
}

/// Checks done before any instance exists.
fn admit(
    engine: &Engine,
    config: &SandboxConfig,
    prepared: &Prepared,
    input: &[u8],
    limits: RunLimits,
) -> Result<(), SandboxError> {
    let exceeds = |limit, requested, ceiling| SandboxError::LimitsExceedSandbox {
        limit,
        requested,
        ceiling,
    };
    if limits.fuel > config.max_fuel {
        return Err(exceeds("fuel", limits.fuel, config.max_fuel));
    }
    if limits.memory_bytes > config.max_memory_bytes {
        return Err(exceeds(
            "memory_bytes",
            limits.memory_bytes,
            config.max_memory_bytes,
        ));
    }
    if limits.deadline > config.max_deadline {
        return Err(exceeds(
            "deadline_ms",
            millis(limits.deadline),
            millis(config.max_deadline),
        ));
    }
    if input.len() > config.max_input_bytes {
        return Err(SandboxError::InputTooLarge {
            len: input.len(),
            max: config.max_input_bytes,
        });
    }
    if let Err(e) = std::str::from_utf8(input) {
        return Err(SandboxError::InputNotUtf8 {
            offset: e.valid_up_to(),
        });
    }
    if prepared.inner.revoked.load(Ordering::Acquire) {
        return Err(SandboxError::ModuleEvicted {
            digest: hex(&prepared.inner.digest),
        });
    }
    // Instantiating a module compiled by another engine would panic inside wasmtime.
    if !Engine::same(engine, prepared.inner.pre.module().engine()) {
        return Err(SandboxError::ForeignPrepared);
    }
    Ok(())
}

#[expect(
    clippy::too_many_arguments,
    reason = "one private call site; the values are the run's inputs"
)]
fn execute(
    engine: &Engine,
    config: &SandboxConfig,
    counters: &AtomicCounters,
    prepared: &Prepared,
    input: &[u8],
    limits: RunLimits,
    deadline_ticks: u64,
    started: Instant,
    measured: &mut Measured,
) -> Result<Vec<u8>, SandboxError> {
    let cap_bytes = usize::try_from(limits.memory_bytes).unwrap_or(usize::MAX);
    let mut store = Store::new(
        engine,
        RunState {
            limiter: Limiter {
                cap_bytes,
                peak_bytes: 0,
                denied_bytes: None,
            },
        },
    );
    store.limiter(|state| &mut state.limiter);
    // Fuel and the deadline are set before instantiation so a start function is bounded too.
    if let Err(e) = store.set_fuel(limits.fuel) {
        return Err(SandboxError::Instantiate(format!("{e:#}")));
    }
    store.set_epoch_deadline(deadline_ticks);
    store.epoch_deadline_trap();

    let result = exchange(config, counters, prepared, input, &mut store);

    let remaining = store.get_fuel().unwrap_or(0);
    measured.fuel_consumed = limits.fuel.saturating_sub(remaining);
    let state = store.data();
    measured.peak_memory_bytes = state.limiter.peak_bytes as u64;
    match result {
        Ok(output) => Ok(output),
        Err(Stop::Refused(e)) => Err(e),
        Err(Stop::Wasm(e)) => Err(classify(&e, state, config, limits, started)),
    }
}

/// The ABI: `alloc(len)`, write the input, `entry(ptr, len) -> (out_ptr << 32) | out_len`, copy out.
fn exchange(
    config: &SandboxConfig,
    counters: &AtomicCounters,
    prepared: &Prepared,
    input: &[u8],
    store: &mut Store<RunState>,
) -> Result<Vec<u8>, Stop> {
    let p = &prepared.inner;
    let instance = p.pre.instantiate(&mut *store)?;
    counters.instantiated.fetch_add(1, Ordering::Relaxed);

    // Inspection checked kinds and signatures before compiling; these lookups cannot fail for a
    // module that reached a `Prepared`, but a refusal is still better than a panic.
    let missing = |name: &str, expected: &'static str| {
        Stop::Refused(SandboxError::MissingExport {
            name: name.to_owned(),
            expected,
        })
    };
    let memory = instance
        .get_module_export(&mut *store, &p.memory)
        .and_then(|e| e.into_memory())
        .ok_or_else(|| missing("memory", "a 32-bit memory"))?;
    let alloc = instance
        .get_module_export(&mut *store, &p.alloc)
        .and_then(|e| e.into_func())
        .ok_or_else(|| missing("alloc", "a function (i32) -> i32"))?
        .typed::<i32, i32>(&*store)?;
    let entry = instance
        .get_module_export(&mut *store, &p.entry)
        .and_then(|e| e.into_func())
        .ok_or_else(|| missing(&p.entrypoint, "a function (i32, i32) -> i64"))?
        .typed::<(i32, i32), i64>(&*store)?;

    // `admit` bounded the input by max_input_bytes, far below i32::MAX.
    let len = i32::try_from(input.len()).map_err(|_| SandboxError::InputTooLarge {
        len: input.len(),
        max: config.max_input_bytes,
    })?;
    let ptr = alloc.call(&mut *store, len)?;
    if memory.write(&mut *store, ptr as u32 as usize, input).is_err() {
        return Err(Stop::Refused(SandboxError::AllocOutOfBounds {
            ptr: ptr as u32,
            len: input.len(),
            memory_bytes: memory.data_size(&*store),
        }));
    }
    let packed = entry.call(&mut *store, (ptr, len))? as u64;
    let (out_ptr, out_len) = ((packed >> 32) as u32, packed as u32);

    if out_len as usize > config.max_output_bytes {
        return Err(Stop::Refused(SandboxError::OutputTooLarge {
            len: out_len,
            max: config.max_output_bytes,
        }));
    }
    let data = memory.data(&*store);
    let start = out_ptr as usize;
    let Some(output) = start
        .checked_add(out_len as usize)
        .and_then(|end| data.get(start..end))
    else {
        return Err(Stop::Refused(SandboxError::OutputOutOfBounds {
            ptr: out_ptr,
            len: out_len,
            memory_bytes: data.len(),
        }));
    };
    if let Err(e) = std::str::from_utf8(output) {
        return Err(Stop::Refused(SandboxError::OutputNotUtf8 {
            offset: e.valid_up_to(),
        }));
    }
    Ok(output.to_vec())
}

/// Names a wasmtime failure. A denied memory growth wins over whatever followed it (the trap or
/// loop a module falls into after `memory.grow` returned -1).
fn classify(
    err: &wasmtime::Error,
    state: &RunState,
    config: &SandboxConfig,
    limits: RunLimits,
    started: Instant,
) -> SandboxError {
    if let Some(requested) = state.limiter.denied_bytes {
        return SandboxError::MemoryLimitExceeded {
            limit_bytes: limits.memory_bytes,
            requested_bytes: requested as u64,
        };
    }
    if err.is::<PoolConcurrencyLimitError>() {
        return SandboxError::SandboxBusy {
            max_instances: config.max_instances,
        };
    }
    match err.downcast_ref::<Trap>() {
        Some(Trap::OutOfFuel) => SandboxError::FuelExhausted { fuel: limits.fuel },
        Some(Trap::Interrupt) => SandboxError::DeadlineExceeded {
            deadline: limits.deadline,
            elapsed: started.elapsed(),
        },
        Some(Trap::StackOverflow) => SandboxError::StackOverflow {
            max_stack_bytes: MAX_WASM_STACK,
        },
        Some(Trap::UnreachableCodeReached) => SandboxError::Trap {
            code: "unreachable".to_owned(),
        },
        Some(trap) => {
            let text = trap.to_string();
            let code = text.strip_prefix("wasm trap: ").unwrap_or(&text).to_owned();
            SandboxError::Trap { code }
        }
        None => SandboxError::Instantiate(format!("{err:#}")),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
