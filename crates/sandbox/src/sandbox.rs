//! The engine, the compiled-module cache, the counters and the epoch ticker.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, InstancePre, Linker, Module, ModuleExport,
    PoolingAllocationConfig, Strategy,
};

use crate::config::{RunLimits, SandboxConfig};
use crate::error::SandboxError;
use crate::inspect::ModuleInfo;
use crate::run::{self, Outcome, RunState};

/// One epoch tick. Deadlines are rounded up to whole ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);
/// Wasm stack granted to a guest; deeper recursion traps as `stack_overflow`.
pub const MAX_WASM_STACK: usize = 512 * 1024;
/// Guard region after each pooled linear memory.
const MEMORY_GUARD_BYTES: u64 = 32 * 1024 * 1024;
/// Table elements per instance (the limiter and the pool agree on it).
pub(crate) const MAX_TABLE_ELEMENTS: usize = 10_000;
/// WebAssembly page size; the pool's memory slots are a whole number of pages.
const WASM_PAGE: u64 = 64 * 1024;

/// The sandbox: one wasmtime engine with a pooling allocator, a cache of compiled modules keyed by
/// SHA-256, counters, and the epoch ticker thread. Cheap to clone; the ticker stops when the last
/// clone is dropped.
#[derive(Clone)]
pub struct Sandbox {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    config: SandboxConfig,
    cache: Mutex<Cache>,
    counters: AtomicCounters,
    // Dropped with `Inner`, which stops and joins the thread.
    _ticker: Ticker,
}

/// A module ready to run: the prepared instance (a linker with nothing defined: the guest gets no
/// imports) and the resolved ABI exports. Cloning is cheap; the handle refuses to run once the
/// module was [evicted](Sandbox::evict).
#[derive(Clone)]
pub struct Prepared {
    pub(crate) inner: Arc<PreparedInner>,
}

pub(crate) struct PreparedInner {
    pub(crate) digest: [u8; 32],
    pub(crate) entrypoint: String,
    pub(crate) info: ModuleInfo,
    pub(crate) pre: InstancePre<RunState>,
    pub(crate) memory: ModuleExport,
    pub(crate) alloc: ModuleExport,
    pub(crate) entry: ModuleExport,
    /// Shared by every handle prepared from the same cache entry; set by `evict`.
    pub(crate) revoked: Arc<AtomicBool>,
}

/// A snapshot of the sandbox's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Modules compiled by wasmtime (cache misses that got as far as compiling).
    pub compiled: u64,
    /// `prepare` calls answered from the cache.
    pub cache_hits: u64,
    /// Instances created (successful instantiations).
    pub instantiated: u64,
    /// `run` calls, whatever their outcome.
    pub runs: u64,
}

#[derive(Default)]
pub(crate) struct AtomicCounters {
    compiled: AtomicU64,
    cache_hits: AtomicU64,
    pub(crate) instantiated: AtomicU64,
    pub(crate) runs: AtomicU64,
}

struct Cache {
    entries: HashMap<[u8; 32], CacheEntry>,
    /// Compilations under way, by digest.
    compiling: HashMap<[u8; 32], Arc<Flight>>,
    /// Logical clock for least-recently-used replacement.
    clock: u64,
}

struct CacheEntry {
    prepared: Prepared,
    last_used: u64,
}

/// One compilation under way; threads that miss on its digest meanwhile wait for its outcome.
#[derive(Default)]
struct Flight {
    /// `None` while compiling; then `Ok` (compiled, and cached unless the leader's own entry
    /// point failed to resolve) or the compiler's error, which every waiter reports too.
    outcome: Mutex<Option<Result<(), String>>>,
    done: Condvar,
}

impl Flight {
    fn wait(&self) -> Result<(), String> {
        let mut outcome = self.outcome.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if let Some(outcome) = outcome.as_ref() {
                return outcome.clone();
            }
            outcome = self.done.wait(outcome).unwrap_or_else(PoisonError::into_inner);
        }
    }
}

/// The thread compiling a digest. Dropped on every way out of `prepare` (success, error, panic):
/// the flight leaves the cache's table first, then its waiters are told the outcome, so none
/// waits forever and none finds the same flight again.
struct Leading<'a> {
    sandbox: &'a Sandbox,
    digest: [u8; 32],
    flight: Arc<Flight>,
    /// What the waiters are told; `None` (the leader stopped before compiling finished) tells
    /// them the compilation did not finish.
    outcome: Option<Result<(), String>>,
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        {
            let mut cache = self.sandbox.lock_cache();
            if cache
                .compiling
                .get(&self.digest)
                .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
            {
                cache.compiling.remove(&self.digest);
            }
        }
        let outcome = self
            .outcome
            .take()
            .unwrap_or_else(|| Err("the compilation did not finish".to_owned()));
        *self.flight.outcome.lock().unwrap_or_else(PoisonError::into_inner) = Some(outcome);
        self.flight.done.notify_all();
    }
}

impl Sandbox {
    /// Builds the engine (Cranelift, fuel, epoch interruption, pooling allocator sized from
    /// `config`) and starts the epoch ticker.
    pub fn new(config: SandboxConfig) -> Result<Self, SandboxError> {
        if config.max_instances == 0 {
            return Err(SandboxError::InvalidConfig(
                "max_instances must be at least 1".into(),
            ));
        }
        if config.max_cached_modules == 0 {
            return Err(SandboxError::InvalidConfig(
                "max_cached_modules must be at least 1".into(),
            ));
        }
        if config.max_memory_bytes < WASM_PAGE || config.max_memory_bytes > 4 * 1024 * 1024 * 1024 {
            return Err(SandboxError::InvalidConfig(format!(
                "max_memory_bytes of {} must be between one 64 KiB page and 4 GiB",
                config.max_memory_bytes
            )));
        }
        let max_memory = usize::try_from(config.max_memory_bytes)
            .map_err(|_| SandboxError::InvalidConfig("max_memory_bytes does not fit in usize".into()))?;

        // Pool sizing: one memory and one table per instance, `max_instances` of each. Each
        // memory slot reserves only `max_memory_bytes` (rounded to whole pages) plus a guard
        // rather than wasmtime's 4 GiB default, so 64 slots take a few GiB of address space, not
        // hundreds; loads then carry an explicit bounds check, which costs little next to
        // instantiation. Nothing is kept resident after an instance ends: memories and tables
        // are decommitted at once, so RSS returns after a memory bomb.
        let reservation = config.max_memory_bytes.div_ceil(WASM_PAGE) * WASM_PAGE;
        let mut pool = PoolingAllocationConfig::new();
        pool.total_core_instances(config.max_instances)
            .total_memories(config.max_instances)
            .total_tables(config.max_instances)
            .max_memories_per_module(1)
            .max_tables_per_module(1)
            .max_memory_size(max_memory)
            .table_elements(MAX_TABLE_ELEMENTS)
            .linear_memory_keep_resident(0)
            .table_keep_resident(0)
            .decommit_batch_size(1);

        let mut engine_config = Config::new();
        engine_config
            .strategy(Strategy::Cranelift)
            .consume_fuel(true)
            .epoch_interruption(true)
            .max_wasm_stack(MAX_WASM_STACK)
            .memory_reservation(reservation)
            .memory_guard_size(MEMORY_GUARD_BYTES)
            .memory_reservation_for_growth(0)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&engine_config).map_err(|e| SandboxError::Engine(format!("{e:#}")))?;
        let ticker = Ticker::start(engine.clone())?;
        Ok(Self {
            inner: Arc::new(Inner {
                engine,
                cache: Mutex::new(Cache {
                    entries: HashMap::new(),
                    compiling: HashMap::new(),
                    clock: 0,
                }),
                counters: AtomicCounters::default(),
                config,
                _ticker: ticker,
            }),
        })
    }

    /// Publish-time check without compiling (wasmparser validation only; the compile counter is
    /// untouched): a valid module, no imports at all, exports `memory`, `alloc: (i32) -> i32` and
    /// `entrypoint: (i32, i32) -> i64`, and a declared memory minimum within the *default*
    /// [`SandboxConfig::max_memory_bytes`]. A registry with its own ceiling calls
    /// [`SandboxConfig::inspect`] (for example `sandbox.config().inspect(..)`).
    pub fn inspect(module: &[u8], entrypoint: &str) -> Result<ModuleInfo, SandboxError> {
        SandboxConfig::default().inspect(module, entrypoint)
    }

    /// The configuration this sandbox was built with.
    pub fn config(&self) -> &SandboxConfig {
        &self.inner.config
    }

    /// The engine, for callers that measure wasmtime itself under the sandbox's exact settings
    /// (the benchmark's baseline).
    pub fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Compiles `module`, or takes it from the cache keyed by `module_sha256`.
    ///
    /// The bytes are hashed first: if they do not match `module_sha256` nothing is looked up or
    /// compiled and the call fails with `module_digest_mismatch`. A cache miss runs the same checks
    /// as [`SandboxConfig::inspect`] (against this sandbox's ceiling) before compiling.
    pub fn prepare(
        &self,
        module_sha256: [u8; 32],
        module: &[u8],
        entrypoint: &str,
    ) -> Result<Prepared, SandboxError> {
        let actual = sha256(module);
        if actual != module_sha256 {
            tracing::warn!(expected = %hex(&module_sha256), actual = %hex(&actual), "module digest mismatch");
            return Err(SandboxError::ModuleDigestMismatch {
                expected: hex(&module_sha256),
                actual: hex(&actual),
            });
        }

        // A hit with another entry point reuses the compiled module but resolves its exports anew.
        let cached = {
            let mut cache = self.lock_cache();
            cache.clock += 1;
            let now = cache.clock;
            cache.entries.get_mut(&module_sha256).map(|entry| {
                entry.last_used = now;
                entry.prepared.clone()
            })
        };
        if let Some(prepared) = cached {
            self.inner.counters.cache_hits.fetch_add(1, Ordering::Relaxed);
            if prepared.inner.entrypoint == entrypoint {
                return Ok(prepared);
            }
            let info = self.inner.config.inspect(module, entrypoint)?;
            let compiled = prepared.inner.pre.module().clone();
            return self.build(
                module_sha256,
                compiled,
                entrypoint,
                info,
                prepared.inner.revoked.clone(),
            );
        }

        let info = self.inner.config.inspect(module, entrypoint)?;
        // Compiling happens outside the cache lock, and once per digest: a miss on a digest
        // another thread is compiling waits for that compilation (the bytes are the same: their
        // digest was checked) and then takes the cache's answer, instead of compiling them again.
        let leading = {
            let mut cache = self.lock_cache();
            match cache.compiling.get(&module_sha256) {
                Some(flight) => Err(Arc::clone(flight)),
                None => {
                    let flight = Arc::new(Flight::default());
                    cache.compiling.insert(module_sha256, Arc::clone(&flight));
                    Ok(Leading {
                        sandbox: self,
                        digest: module_sha256,
                        flight,
                        outcome: None,
                    })
                }
            }
        };
        let mut leading = match leading {
            Ok(leading) => leading,
            Err(flight) => {
                flight.wait().map_err(SandboxError::CompileFailed)?;
                // Compiled and cached by the leader: answered from the cache (or, if it was
                // evicted or replaced meanwhile, prepared as any miss is).
                return self.prepare(module_sha256, module, entrypoint);
            }
        };
        let started = Instant::now();
        let compiled = Module::new(&self.inner.engine, module).map_err(|e| {
            let message = format!("{e:#}");
            leading.outcome = Some(Err(message.clone()));
            SandboxError::CompileFailed(message)
        })?;
        self.inner.counters.compiled.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            digest = %hex(&module_sha256),
            bytes = module.len(),
            compile_ms = started.elapsed().as_millis() as u64,
            "compiled module"
        );
        // Waiters re-read the cache once this returns (the guard tells them when dropped): what
        // is inserted below is what they find.
        leading.outcome = Some(Ok(()));
        let prepared = self.build(
            module_sha256,
            compiled,
            entrypoint,
            info,
            Arc::new(AtomicBool::new(false)),
        )?;

        let mut cache = self.lock_cache();
        if let Some(existing) = cache.entries.get(&module_sha256)
            && existing.prepared.inner.entrypoint == entrypoint
        {
            return Ok(existing.prepared.clone());
        }
        if cache.entries.len() >= self.inner.config.max_cached_modules
            && !cache.entries.contains_key(&module_sha256)
        {
            // Capacity replacement is not revocation: handles already given out keep working.
            if let Some(oldest) = cache
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| *k)
            {
                cache.entries.remove(&oldest);
            }
        }
        cache.clock += 1;
        let last_used = cache.clock;
        cache.entries.insert(
            module_sha256,
            CacheEntry {
                prepared: prepared.clone(),
                last_used,
            },
        );
        Ok(prepared)
    }

    /// Drops a module from the cache and revokes every handle prepared from it, so a revoked
    /// release can run neither from the cache nor from a handle the caller still holds
    /// (`module_evicted`). A later `prepare` of the same bytes compiles afresh.
    pub fn evict(&self, module_sha256: &[u8; 32]) {
        if let Some(entry) = self.lock_cache().entries.remove(module_sha256) {
            entry.prepared.inner.revoked.store(true, Ordering::Release);
            tracing::info!(digest = %hex(module_sha256), "evicted module");
        }
    }

    /// Runs one call in a fresh instance: fuel = `limits.fuel`, memory capped at
    /// `limits.memory_bytes` by a limiter that records denied growth, epoch deadline: never
    /// before `limits.deadline` has passed, at most about two ticks after. Synchronous (callers in async code use
    /// `spawn_blocking`). Always returns what was measured, also on failure.
    pub fn run(&self, prepared: &Prepared, input: &[u8], limits: RunLimits) -> Outcome {
        self.inner.counters.runs.fetch_add(1, Ordering::Relaxed);
        run::run(
            &self.inner.engine,
            &self.inner.config,
            &self.inner.counters,
            &self.inner._ticker.clock,
            prepared,
            input,
            limits,
        )
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> Counters {
        let c = &self.inner.counters;
        Counters {
            compiled: c.compiled.load(Ordering::Relaxed),
            cache_hits: c.cache_hits.load(Ordering::Relaxed),
            instantiated: c.instantiated.load(Ordering::Relaxed),
            runs: c.runs.load(Ordering::Relaxed),
        }
    }

    /// Number of modules in the cache.
    pub fn cached_modules(&self) -> usize {
        self.lock_cache().entries.len()
    }

    fn lock_cache(&self) -> MutexGuard<'_, Cache> {
        // The cache holds no invariant a panicking holder could break half-way (single inserts
        // and removes), so a poisoned lock is still usable.
        self.inner.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn build(
        &self,
        digest: [u8; 32],
        module: Module,
        entrypoint: &str,
        info: ModuleInfo,
        revoked: Arc<AtomicBool>,
    ) -> Result<Prepared, SandboxError> {
        let export = |name: &str, expected: &'static str| {
            module
                .get_export_index(name)
                .ok_or_else(|| SandboxError::MissingExport {
                    name: name.to_owned(),
                    expected,
                })
        };
        let memory = export("memory", "a 32-bit memory")?;
        let alloc = export("alloc", "a function (i32) -> i32")?;
        let entry = export(entrypoint, "a function (i32, i32) -> i64")?;
        // Nothing is defined in the linker: the guest gets no imports (inspect refused any).
        let linker = Linker::<RunState>::new(&self.inner.engine);
        let pre = linker
            .instantiate_pre(&module)
            .map_err(|e| SandboxError::CompileFailed(format!("{e:#}")))?;
        Ok(Prepared {
            inner: Arc::new(PreparedInner {
                digest,
                entrypoint: entrypoint.to_owned(),
                info,
                pre,
                memory,
                alloc,
                entry,
                revoked,
            }),
        })
    }
}

impl fmt::Debug for Sandbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sandbox")
            .field("config", &self.inner.config)
            .field("counters", &self.counters())
            .finish_non_exhaustive()
    }
}

impl Prepared {
    /// SHA-256 of the module this handle runs.
    pub fn digest(&self) -> [u8; 32] {
        self.inner.digest
    }

    /// The export called for each run.
    pub fn entrypoint(&self) -> &str {
        &self.inner.entrypoint
    }

    /// What inspection found (memory bounds, exports).
    pub fn info(&self) -> &ModuleInfo {
        &self.inner.info
    }

    /// Whether [`Sandbox::evict`] revoked this module after the handle was made.
    pub fn is_evicted(&self) -> bool {
        self.inner.revoked.load(Ordering::Acquire)
    }
}

impl fmt::Debug for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prepared")
            .field("digest", &hex(&self.inner.digest))
            .field("entrypoint", &self.inner.entrypoint)
            .field("evicted", &self.is_evicted())
            .finish_non_exhaustive()
    }
}

/// Advances the engine's epoch once per [`EPOCH_TICK`] of wall time while a run is under way,
/// and sleeps, without waking, while none is.
///
/// The epoch counts elapsed ticks of wall time rather than wake-ups, so a late wake-up on a loaded
/// machine catches up at once instead of stretching every deadline. The ticks of an idle period
/// are not applied one by one when the next run starts: they are counted as skipped
/// ([`EpochClock`]), under the same lock as the ticks, at the moment the first run registers, so
/// every deadline is computed against a clock that no longer moves by more than the ticks the
/// thread applies. The thread holds an `Engine` handle only (never the `Sandbox`), so dropping the
/// last `Sandbox` stops it (`Drop` sets the stop flag, wakes it and joins it).
struct Ticker {
    thread: Option<JoinHandle<()>>,
    clock: EpochClock,
}

/// The epoch as wall time: wall ticks since the ticker started = ticks applied to the engine (the
/// engine's current epoch, since nothing else increments it) + ticks skipped while no run was
/// under way.
#[derive(Clone, Debug)]
pub(crate) struct EpochClock {
    start: Instant,
    shared: Arc<TickShared>,
}

#[derive(Debug)]
struct TickShared {
    state: Mutex<TickState>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct TickState {
    /// Runs under way ([`EpochClock::enter`] guards alive).
    active: usize,
    /// Ticks applied to the engine: its current epoch.
    applied: u64,
    /// Wall ticks the engine's epoch was not advanced by, because no run was under way. Changes
    /// only while `active` is 0, so never during a run whose deadline was computed from it.
    skipped: u64,
    stop: bool,
}

impl EpochClock {
    /// Wall ticks elapsed since the ticker started.
    fn wall_ticks(&self) -> u64 {
        let ticks = self.start.elapsed().as_nanos() / EPOCH_TICK.as_nanos();
        u64::try_from(ticks).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> MutexGuard<'_, TickState> {
        self.shared.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a run, and returns with it the epoch delta to give its store so that it traps no
    /// earlier than `deadline` from now. The ticker advances the epoch until the last guard drops;
    /// the first run after an idle period counts the idle ticks as skipped and wakes the thread.
    ///
    /// The delta: the wall tick at which `now + deadline` has surely passed, plus one (the current
    /// tick is partly over), less the skipped ticks, counted from the epoch the engine is at —
    /// which lags the wall clock when the ticker thread was not scheduled, so a delta taken from
    /// the engine's epoch alone could end a run early when the ticker catches up. Both counts are
    /// read under the lock that registers the run; neither the skipped count nor the mapping
    /// changes while the run is under way.
    pub(crate) fn enter(&self, deadline: Duration) -> Running<'_> {
        let mut state = self.lock();
        if state.active == 0 {
            state.skipped = state.skipped.max(self.wall_ticks().saturating_sub(state.applied));
            self.shared.wake.notify_one();
        }
        state.active += 1;
        let tick = EPOCH_TICK.as_nanos();
        let target = (self.start.elapsed() + deadline).as_nanos().div_ceil(tick) + 1;
        let counted = u128::from(state.skipped) + u128::from(state.applied);
        let deadline_ticks = u64::try_from(target.saturating_sub(counted).max(1)).unwrap_or(u64::MAX);
        Running {
            clock: self,
            deadline_ticks,
        }
    }
}

/// A run under way (see [`EpochClock::enter`]).
pub(crate) struct Running<'a> {
    clock: &'a EpochClock,
    /// The epoch delta of the run's deadline.
    pub(crate) deadline_ticks: u64,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        let mut state = self.clock.lock();
        state.active = state.active.saturating_sub(1);
    }
}

impl Ticker {
    fn start(engine: Engine) -> Result<Self, SandboxError> {
        let clock = EpochClock {
            start: Instant::now(),
            shared: Arc::new(TickShared {
                state: Mutex::new(TickState::default()),
                wake: Condvar::new(),
            }),
        };
        let ticking = clock.clone();
        let thread = thread::Builder::new()
            .name("soma-sandbox-epoch".into())
            .spawn(move || tick(&engine, &ticking))
            .map_err(|e| SandboxError::Engine(format!("epoch ticker thread: {e}")))?;
        Ok(Self {
            thread: Some(thread),
            clock,
        })
    }
}

/// The ticker thread: asleep while no run is under way; otherwise, at each tick, brings the
/// engine's epoch up to the wall ticks elapsed less the skipped ones.
fn tick(engine: &Engine, clock: &EpochClock) {
    let mut state = clock.lock();
    loop {
        if state.stop {
            return;
        }
        if state.active == 0 {
            state = clock
                .shared
                .wake
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
            continue;
        }
        state = clock
            .shared
            .wake
            .wait_timeout(state, EPOCH_TICK)
            .unwrap_or_else(PoisonError::into_inner)
            .0;
        let due = clock.wall_ticks().saturating_sub(state.skipped);
        while state.applied < due {
            engine.increment_epoch();
            state.applied += 1;
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.clock.lock().stop = true;
        self.clock.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            // The thread only loops on the lock; it cannot panic short of an allocation failure.
            let _ = thread.join();
        }
    }
}

/// SHA-256 with ring.
pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}
