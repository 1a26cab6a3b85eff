//! Instantiate + run of the `text_stats` adapter from the cache, against wasmtime's own
//! `InstancePre::instantiate` + call of the same module on the same engine, measured in the same
//! binary in interleaved rounds. Prints figures; asserts nothing.
//!
//! Target (issue): sandbox p50 <= 1.3x the wasmtime p50, and <= 50 us.
#![expect(clippy::print_stdout, reason = "a benchmark prints its figures")]

use std::time::{Duration, Instant};

use soma_sandbox::{ADAPTER_ENTRYPOINT, RunLimits, Sandbox, SandboxConfig, adapter, sha256};
use wasmtime::{InstancePre, Linker, Module, Store, StoreLimits, StoreLimitsBuilder};

const ROUNDS: usize = 10;
const CALLS_PER_ROUND: usize = 2_000;

type Failure = Box<dyn std::error::Error>;

fn main() -> Result<(), Failure> {
    let limits = RunLimits {
        fuel: 10_000_000,
        memory_bytes: 16 * 1024 * 1024,
        deadline: Duration::from_secs(1),
    };
    let input = r#"{"text":"The quick brown fox jumps over the lazy dog.\nZwölf Boxkämpfer jagen Viktor quer über den großen Sylter Deich.\n\u65e5\u672c\u8a9e \ud83c\udf89 tab\there, \"quoted\" end."}"#.as_bytes();

    let sandbox = Sandbox::new(SandboxConfig::default())?;
    let bytes = adapter("text_stats").ok_or("text_stats adapter missing")?;
    let prepared = sandbox.prepare(sha256(&bytes), &bytes, ADAPTER_ENTRYPOINT)?;

    // The baseline: plain wasmtime on the sandbox's own engine (same Cranelift settings, fuel,
    // epochs, pooling allocator), its own compiled copy of the module, exports resolved once.
    let engine = sandbox.engine().clone();
    let module = Module::new(&engine, &bytes).map_err(|e| format!("{e:#}"))?;
    let pre: InstancePre<StoreLimits> = Linker::new(&engine)
        .instantiate_pre(&module)
        .map_err(|e| format!("{e:#}"))?;
    let memory_export = module.get_export_index("memory").ok_or("memory export")?;
    let alloc_export = module.get_export_index("alloc").ok_or("alloc export")?;
    let run_export = module.get_export_index(ADAPTER_ENTRYPOINT).ok_or("run export")?;
    let memory_limit = usize::try_from(limits.memory_bytes)?;
    let ticks = limits
        .deadline
        .as_nanos()
        .div_ceil(soma_sandbox::EPOCH_TICK.as_nanos());
    let ticks = u64::try_from(ticks)?;

    let raw_call = || -> Result<Vec<u8>, Failure> {
        let mut store = Store::new(
            &engine,
            StoreLimitsBuilder::new().memory_size(memory_limit).build(),
        );
        store.limiter(|limits| limits);
        store.set_fuel(limits.fuel).map_err(|e| format!("{e:#}"))?;
        store.set_epoch_deadline(ticks);
        store.epoch_deadline_trap();
        let instance = pre.instantiate(&mut store).map_err(|e| format!("{e:#}"))?;
        let memory = instance
            .get_module_export(&mut store, &memory_export)
            .and_then(|e| e.into_memory())
            .ok_or("memory")?;
        let alloc = instance
            .get_module_export(&mut store, &alloc_export)
            .and_then(|e| e.into_func())
            .ok_or("alloc")?
            .typed::<i32, i32>(&store)
            .map_err(|e| format!("{e:#}"))?;
        let run = instance
            .get_module_export(&mut store, &run_export)
            .and_then(|e| e.into_func())
            .ok_or("run")?
            .typed::<(i32, i32), i64>(&store)
            .map_err(|e| format!("{e:#}"))?;
        let len = i32::try_from(input.len())?;
        let ptr = alloc.call(&mut store, len).map_err(|e| format!("{e:#}"))?;
        memory
            .write(&mut store, ptr as u32 as usize, input)
            .map_err(|e| format!("{e}"))?;
        let packed = run.call(&mut store, (ptr, len)).map_err(|e| format!("{e:#}"))? as u64;
        let (out_ptr, out_len) = ((packed >> 32) as usize, (packed & 0xffff_ffff) as usize);
        let output = memory
            .data(&store)
            .get(out_ptr..out_ptr + out_len)
            .ok_or("output out of bounds")?;
        Ok(output.to_vec())
    };

    // Both sides must compute the same thing.
    let expected = raw_call()?;
    let got = sandbox.run(&prepared, input, limits).result?;
    println!(
        "input {} bytes -> output {}",
        input.len(),
        String::from_utf8_lossy(&got)
    );
    if got != expected {
        println!(
            "WARNING: sandbox and wasmtime outputs differ: {:?}",
            String::from_utf8_lossy(&expected)
        );
    }
    // `cargo test --all-targets` runs this once as a test, without
    // `--bench`: both sides ran once above; figures only under `cargo bench`.
    if !std::env::args().any(|a| a == "--bench") {
        return Ok(());
    }

    // Warm-up of both paths (pool slots, caches).
    for _ in 0..CALLS_PER_ROUND {
        raw_call()?;
        sandbox.run(&prepared, input, limits).result?;
    }

    let mut sandbox_times = Vec::with_capacity(ROUNDS * CALLS_PER_ROUND);
    let mut raw_times = Vec::with_capacity(ROUNDS * CALLS_PER_ROUND);
    let mut fuel = 0;
    for round in 0..ROUNDS {
        // Alternate which side goes first so neither always runs on a warmer machine.
        let sandbox_first = round % 2 == 0;
        for side in 0..2 {
            if (side == 0) == sandbox_first {
                for _ in 0..CALLS_PER_ROUND {
                    let started = Instant::now();
                    let outcome = sandbox.run(&prepared, input, limits);
                    sandbox_times.push(started.elapsed());
                    outcome.result?;
                    fuel = outcome.measured.fuel_consumed;
                }
            } else {
                for _ in 0..CALLS_PER_ROUND {
                    let started = Instant::now();
                    let output = raw_call();
                    raw_times.push(started.elapsed());
                    output?;
                }
            }
        }
    }

    let (s50, s90) = percentiles(&mut sandbox_times);
    let (r50, r90) = percentiles(&mut raw_times);
    let ratio = s50.as_secs_f64() / r50.as_secs_f64();
    println!("{ROUNDS} interleaved rounds x {CALLS_PER_ROUND} calls per side; fuel per call {fuel}");
    println!(
        "(a) Sandbox::run (cached Prepared)         p50 {:>8.2} us  p90 {:>8.2} us",
        us(s50),
        us(s90)
    );
    println!(
        "(b) wasmtime InstancePre::instantiate+call p50 {:>8.2} us  p90 {:>8.2} us",
        us(r50),
        us(r90)
    );
    println!("ratio (a)/(b) of p50s: {ratio:.3}  (target <= 1.3; sandbox p50 target <= 50 us)");
    println!("counters: {:?}", sandbox.counters());
    Ok(())
}

fn percentiles(times: &mut [Duration]) -> (Duration, Duration) {
    times.sort_unstable();
    let at = |q: f64| times[((times.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.9))
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
