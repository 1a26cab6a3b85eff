//! Digest checks, the compiled-module cache (one compilation per digest, however many threads
//! miss on it at once), eviction and the counters.

mod common;

use common::{limits, module, prepare, sandbox};
use soma_sandbox::{ADAPTER_ENTRYPOINT, Counters, Prepared, Sandbox, SandboxConfig, sha256};

#[test]
fn a_wrong_digest_is_refused_without_compiling() {
    let sandbox = sandbox();
    let bytes = module("text_stats");
    let mut digest = sha256(&bytes);
    digest[0] ^= 1;
    let err = sandbox
        .prepare(digest, &bytes, ADAPTER_ENTRYPOINT)
        .expect_err("wrong digest");
    assert_eq!(err.reason(), "module_digest_mismatch", "{err}");
    assert_eq!(sandbox.counters().compiled, 0);

    // A right digest for other bytes is just as wrong, even once the module is cached.
    let prepared = sandbox
        .prepare(sha256(&bytes), &bytes, ADAPTER_ENTRYPOINT)
        .expect("prepare");
    assert_eq!(sandbox.counters().compiled, 1);
    let mut tampered = bytes.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0xff;
    let err = sandbox
        .prepare(prepared.digest(), &tampered, ADAPTER_ENTRYPOINT)
        .expect_err("tampered");
    assert_eq!(err.reason(), "module_digest_mismatch");
    assert_eq!(
        sandbox.counters(),
        Counters {
            compiled: 1,
            cache_hits: 0,
            instantiated: 0,
            runs: 0
        }
    );
}

#[test]
fn the_cache_compiles_once_and_evict_forces_a_recompile() {
    let sandbox = sandbox();
    let bytes = module("text_stats");
    let digest = sha256(&bytes);

    let first = sandbox
        .prepare(digest, &bytes, ADAPTER_ENTRYPOINT)
        .expect("prepare");
    assert_eq!(sandbox.counters().compiled, 1);
    let second = sandbox
        .prepare(digest, &bytes, ADAPTER_ENTRYPOINT)
        .expect("prepare again");
    assert_eq!(
        sandbox.counters().compiled,
        1,
        "second prepare must be a cache hit"
    );
    assert_eq!(sandbox.counters().cache_hits, 1);
    assert_eq!(second.digest(), digest);

    assert!(sandbox.run(&first, br#"{"text":"a"}"#, limits()).result.is_ok());
    sandbox.evict(&digest);
    assert_eq!(sandbox.cached_modules(), 0);
    assert!(first.is_evicted() && second.is_evicted());

    // A revoked module runs neither from the cache nor from a handle kept from before.
    let err = sandbox
        .run(&second, br#"{"text":"a"}"#, limits())
        .result
        .expect_err("evicted");
    assert_eq!(err.reason(), "module_evicted", "{err}");

    let third = sandbox
        .prepare(digest, &bytes, ADAPTER_ENTRYPOINT)
        .expect("prepare after evict");
    assert_eq!(
        sandbox.counters().compiled,
        2,
        "evict then prepare compiles again"
    );
    assert!(!third.is_evicted());
    assert!(sandbox.run(&third, br#"{"text":"a"}"#, limits()).result.is_ok());
    assert_eq!(
        sandbox.counters(),
        Counters {
            compiled: 2,
            cache_hits: 1,
            instantiated: 2,
            runs: 3
        }
    );
}

#[test]
fn prepare_refuses_a_module_with_imports_without_compiling() {
    let sandbox = sandbox();
    let bytes = module("wasi_import");
    let err = sandbox
        .prepare(sha256(&bytes), &bytes, ADAPTER_ENTRYPOINT)
        .expect_err("imports");
    assert_eq!(err.reason(), "module_imports_forbidden", "{err}");
    assert!(err.to_string().contains("wasi_snapshot_preview1::fd_write"));
    assert_eq!(sandbox.counters().compiled, 0);
}

#[test]
fn a_cache_hit_with_another_entrypoint_checks_it_without_recompiling() {
    let sandbox = sandbox();
    let bytes = module("text_stats");
    let digest = sha256(&bytes);
    sandbox
        .prepare(digest, &bytes, ADAPTER_ENTRYPOINT)
        .expect("prepare");
    let err = sandbox
        .prepare(digest, &bytes, "alloc")
        .expect_err("alloc is not an entry point");
    assert_eq!(err.reason(), "export_wrong_type");
    let err = sandbox
        .prepare(digest, &bytes, "main")
        .expect_err("no such export");
    assert_eq!(err.reason(), "missing_export");
    assert_eq!(sandbox.counters().compiled, 1);
}

#[test]
fn a_full_cache_drops_the_least_recently_used_module_but_its_handles_still_run() {
    let sandbox = Sandbox::new(SandboxConfig {
        max_cached_modules: 2,
        max_instances: 2,
        ..SandboxConfig::default()
    })
    .expect("sandbox");
    let stats = prepare(&sandbox, "text_stats");
    let _echo = prepare(&sandbox, "echo");
    let _ = prepare(&sandbox, "text_stats"); // text_stats is now the most recently used
    let _trap = prepare(&sandbox, "trap"); // drops echo
    assert_eq!(sandbox.cached_modules(), 2);
    assert_eq!(sandbox.counters().compiled, 3);
    let _ = prepare(&sandbox, "text_stats");
    assert_eq!(sandbox.counters().compiled, 3, "text_stats stayed cached");
    let _ = prepare(&sandbox, "echo");
    assert_eq!(
        sandbox.counters().compiled,
        4,
        "echo was dropped and compiles again"
    );
    // Capacity replacement is not revocation.
    assert!(sandbox.run(&stats, br#"{"text":"a"}"#, limits()).result.is_ok());
}

#[test]
fn a_handle_from_another_sandbox_is_refused() {
    let one = sandbox();
    let other = sandbox();
    let prepared = prepare(&one, "text_stats");
    let err = other
        .run(&prepared, br#"{"text":"a"}"#, limits())
        .result
        .expect_err("foreign");
    assert_eq!(err.reason(), "foreign_prepared");
}

#[test]
fn an_invalid_configuration_is_refused() {
    for (name, config) in [
        (
            "no instances",
            SandboxConfig {
                max_instances: 0,
                ..SandboxConfig::default()
            },
        ),
        (
            "no cache",
            SandboxConfig {
                max_cached_modules: 0,
                ..SandboxConfig::default()
            },
        ),
        (
            "memory below a page",
            SandboxConfig {
                max_memory_bytes: 1000,
                ..SandboxConfig::default()
            },
        ),
        (
            "memory above 4 GiB",
            SandboxConfig {
                max_memory_bytes: 1 << 33,
                ..SandboxConfig::default()
            },
        ),
    ] {
        let err = Sandbox::new(config).expect_err(name);
        assert_eq!(err.reason(), "invalid_config", "{name}: {err}");
    }
}

/// The `echo` adapter with `functions` more functions of arithmetic beside it: valid, importless,
/// adapter-shaped, and long enough to compile that threads missing on it at once all miss.
fn slow_to_compile(functions: usize) -> Vec<u8> {
    let echo = include_str!("../adapters/echo.wat").trim_end();
    let mut text = echo
        .strip_suffix(')')
        .unwrap_or_else(|| panic!("echo.wat ends its module with a parenthesis"))
        .to_owned();
    for f in 0..functions {
        text.push_str(&format!(
            "\n  (func $filler{f} (param $x i64) (result i64) (local $i i32)\n    (loop $again\n"
        ));
        for k in 0..24 {
            text.push_str(&format!(
                "      (local.set $x (i64.xor (i64.mul (local.get $x) (i64.const {})) (i64.rotl (local.get $x) (i64.const {}))))\n",
                2 * (f * 31 + k) + 1,
                k % 63 + 1,
            ));
        }
        text.push_str(
            "      (local.set $i (i32.add (local.get $i) (i32.const 1)))\n      (br_if $again (i32.lt_u (local.get $i) (i32.const 8))))\n    (local.get $x))",
        );
    }
    text.push(')');
    wat::parse_str(&text).unwrap_or_else(|e| panic!("the generated module parses: {e}"))
}

/// Threads that miss on one digest at once compile it once: one compiles, the others wait for it
/// and are answered from the cache, with handles that share its revocation. (Before, each thread
/// that missed compiled the same bytes again and all but one result were thrown away.)
#[test]
fn concurrent_misses_on_one_digest_compile_it_once() {
    const THREADS: usize = 4;
    let sandbox = sandbox();
    let bytes = slow_to_compile(300);
    let digest = sha256(&bytes);
    let barrier = std::sync::Barrier::new(THREADS);
    let started = std::time::Instant::now();
    let handles: Vec<Prepared> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..THREADS)
            .map(|_| {
                scope.spawn(|| {
                    barrier.wait();
                    sandbox
                        .prepare(digest, &bytes, ADAPTER_ENTRYPOINT)
                        .expect("prepare")
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("a preparing thread panicked"))
            .collect()
    });
    let counters = sandbox.counters();
    assert_eq!(
        (counters.compiled, counters.cache_hits),
        (1, THREADS as u64 - 1),
        "one compilation, every other miss answered from the cache ({:?} for {} bytes)",
        started.elapsed(),
        bytes.len()
    );
    assert_eq!(sandbox.cached_modules(), 1);
    // Every handle runs the module ...
    for prepared in &handles {
        let outcome = sandbox.run(prepared, b"{\"a\":1}", limits());
        assert_eq!(outcome.result.as_deref().expect("the module runs"), b"{\"a\":1}");
    }
    // ... and evicting it revokes them all: they are the cache entry's.
    sandbox.evict(&digest);
    assert!(handles.iter().all(Prepared::is_evicted));
    // A later miss compiles afresh, once.
    sandbox
        .prepare(digest, &bytes, ADAPTER_ENTRYPOINT)
        .expect("prepare after eviction");
    assert_eq!(sandbox.counters().compiled, 2);
}
