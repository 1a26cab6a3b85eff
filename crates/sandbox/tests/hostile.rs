//! Hostile adapters and hostile limits, each refused with its own reason.

mod common;

use std::time::{Duration, Instant};

use common::{limits, module, prepare, run_infinite_loop, sandbox};
use soma_sandbox::{RunLimits, Sandbox, SandboxConfig, sha256};

const MIB: u64 = 1024 * 1024;

struct Case {
    name: &'static str,
    adapter: &'static str,
    input: Vec<u8>,
    limits: RunLimits,
    expected_reason: &'static str,
    /// A fragment the message must contain (the limit, the trap code, ...).
    message_contains: &'static str,
}

fn case(
    name: &'static str,
    adapter: &'static str,
    input: &[u8],
    limits: RunLimits,
    expected_reason: &'static str,
    message_contains: &'static str,
) -> Case {
    Case {
        name,
        adapter,
        input: input.to_vec(),
        limits,
        expected_reason,
        message_contains,
    }
}

#[test]
fn each_hostile_adapter_and_limit_is_refused_with_its_own_reason() {
    let text = br#"{"text":"a b"}"#;
    let defaults = SandboxConfig::default();
    let cases = vec![
        case(
            "infinite_loop_under_fuel",
            "infinite_loop",
            text,
            RunLimits {
                fuel: 1_000_000,
                ..limits()
            },
            "fuel_exhausted",
            "1000000",
        ),
        case(
            "memory_bomb_at_8_mib",
            "memory_bomb",
            text,
            RunLimits {
                memory_bytes: 8 * MIB,
                ..limits()
            },
            "memory_limit_exceeded",
            "8388608",
        ),
        case(
            "deep_recursion",
            "deep_recursion",
            text,
            limits(),
            "stack_overflow",
            "stack",
        ),
        case("trap", "trap", text, limits(), "trap", "unreachable"),
        case(
            "huge_output_length",
            "huge_output",
            b"x",
            limits(),
            "output_too_large",
            "4294967295",
        ),
        case(
            "huge_output_outside_memory",
            "huge_output",
            b"oob",
            limits(),
            "output_out_of_bounds",
            "4294967232",
        ),
        case(
            "fuel_above_ceiling",
            "text_stats",
            text,
            RunLimits {
                fuel: defaults.max_fuel + 1,
                ..limits()
            },
            "limits_exceed_sandbox",
            "fuel",
        ),
        case(
            "memory_above_ceiling",
            "text_stats",
            text,
            RunLimits {
                memory_bytes: defaults.max_memory_bytes + 1,
                ..limits()
            },
            "limits_exceed_sandbox",
            "memory_bytes",
        ),
        case(
            "deadline_above_ceiling",
            "text_stats",
            text,
            RunLimits {
                deadline: defaults.max_deadline + Duration::from_millis(1),
                ..limits()
            },
            "limits_exceed_sandbox",
            "deadline_ms",
        ),
        case(
            "input_above_max_input",
            "text_stats",
            &vec![b' '; defaults.max_input_bytes + 1],
            limits(),
            "input_too_large",
            "1048577",
        ),
        case(
            "input_not_utf8",
            "text_stats",
            b"{\"text\":\"\xff\"}",
            limits(),
            "input_not_utf8",
            "offset 9",
        ),
        case(
            "memory_cap_below_declared_minimum",
            "text_stats",
            text,
            RunLimits {
                memory_bytes: 64 * 1024,
                ..limits()
            },
            "memory_limit_exceeded",
            "131072",
        ),
        case(
            "text_stats_out_of_fuel",
            "text_stats",
            text,
            RunLimits { fuel: 50, ..limits() },
            "fuel_exhausted",
            "50",
        ),
        case(
            "echo_input_larger_than_memory_cap",
            "echo",
            &vec![b'x'; 512 * 1024],
            RunLimits {
                memory_bytes: 256 * 1024,
                ..limits()
            },
            "memory_limit_exceeded",
            "262144",
        ),
    ];

    let sandbox = sandbox();
    for case in &cases {
        let prepared = prepare(&sandbox, case.adapter);
        let outcome = sandbox.run(&prepared, &case.input, case.limits);
        let err = match outcome.result {
            Ok(out) => panic!(
                "{}: expected {}, got output {:?}",
                case.name, case.expected_reason, out
            ),
            Err(e) => e,
        };
        assert_eq!(err.reason(), case.expected_reason, "case {}: {err}", case.name);
        let message = err.to_string();
        assert!(
            message.contains(case.message_contains),
            "case {}: message {message:?} lacks {:?}",
            case.name,
            case.message_contains
        );
        assert_eq!(
            message,
            message.to_lowercase(),
            "case {}: message not lowercase",
            case.name
        );
    }
}

#[test]
fn fuel_exhaustion_consumes_exactly_the_fuel_given() {
    let sandbox = sandbox();
    let prepared = prepare(&sandbox, "infinite_loop");
    let outcome = sandbox.run(
        &prepared,
        b"{}",
        RunLimits {
            fuel: 2_000_000,
            ..limits()
        },
    );
    assert_eq!(outcome.result.map_err(|e| e.reason()), Err("fuel_exhausted"));
    assert_eq!(outcome.measured.fuel_consumed, 2_000_000);
}

#[test]
fn memory_bomb_reports_the_cap_as_its_peak() {
    let sandbox = sandbox();
    let prepared = prepare(&sandbox, "memory_bomb");
    let outcome = sandbox.run(
        &prepared,
        b"{}",
        RunLimits {
            memory_bytes: 4 * MIB,
            ..limits()
        },
    );
    assert_eq!(
        outcome.result.map_err(|e| e.reason()),
        Err("memory_limit_exceeded")
    );
    assert_eq!(outcome.measured.peak_memory_bytes, 4 * MIB);
}

/// Keep the deadline at 100 ms or more: the bound asserted is the deadline's own guarantee.
#[test]
fn infinite_loop_with_huge_fuel_stops_at_its_deadline() {
    let sandbox = sandbox();
    let deadline = Duration::from_millis(200);
    let outcome = run_infinite_loop(&sandbox, deadline);
    let err = outcome.result.expect_err("an infinite loop cannot finish");
    assert_eq!(err.reason(), "deadline_exceeded", "{err}");
    assert!(err.to_string().contains("200 ms"), "{err}");
    assert!(
        outcome.measured.wall <= deadline + Duration::from_millis(50),
        "interrupted after {:?}",
        outcome.measured.wall
    );
    // Never before the deadline, even when the ticker thread lags the wall
    // clock and catches up (the deadline is set from wall time).
    assert!(
        outcome.measured.wall >= deadline,
        "stopped early: {:?}",
        outcome.measured.wall
    );
    assert!(outcome.measured.fuel_consumed > 0);
}

#[test]
fn a_well_behaved_call_succeeds_while_an_infinite_loop_runs_on_another_thread() {
    let sandbox = sandbox();
    let looping = prepare(&sandbox, "infinite_loop");
    let stats = prepare(&sandbox, "text_stats");
    let before = sandbox.counters().instantiated;

    let spinner = {
        let sandbox = sandbox.clone();
        std::thread::spawn(move || {
            sandbox.run(
                &looping,
                b"{}",
                RunLimits {
                    fuel: 10_000_000_000,
                    deadline: Duration::from_secs(2),
                    ..limits()
                },
            )
        })
    };
    let waited = Instant::now();
    while sandbox.counters().instantiated == before {
        assert!(
            waited.elapsed() < Duration::from_secs(10),
            "the looping instance never started"
        );
        std::thread::yield_now();
    }

    let outcome = sandbox.run(&stats, br#"{"text":"still answering"}"#, limits());
    assert!(
        !spinner.is_finished(),
        "the loop ended before the concurrent call was checked"
    );
    assert_eq!(
        String::from_utf8(outcome.result.expect("concurrent call")).expect("utf-8"),
        r#"{"characters":15,"words":2,"lines":1,"bytes":15}"#
    );

    let looped = spinner.join().expect("spinner thread");
    assert_eq!(looped.result.map_err(|e| e.reason()), Err("deadline_exceeded"));
}

#[test]
fn a_full_pool_answers_sandbox_busy() {
    let sandbox = Sandbox::new(SandboxConfig {
        max_instances: 1,
        ..SandboxConfig::default()
    })
    .expect("sandbox");
    let looping = prepare(&sandbox, "infinite_loop");
    let stats = prepare(&sandbox, "text_stats");
    let spinner = {
        let sandbox = sandbox.clone();
        std::thread::spawn(move || {
            sandbox.run(
                &looping,
                b"{}",
                RunLimits {
                    fuel: 10_000_000_000,
                    deadline: Duration::from_secs(1),
                    ..limits()
                },
            )
        })
    };
    let waited = Instant::now();
    while sandbox.counters().instantiated == 0 {
        assert!(
            waited.elapsed() < Duration::from_secs(10),
            "the looping instance never started"
        );
        std::thread::yield_now();
    }
    let busy = sandbox.run(&stats, br#"{"text":"x"}"#, limits());
    let err = busy.result.expect_err("the only slot is taken");
    assert_eq!(err.reason(), "sandbox_busy", "{err}");
    assert!(err.to_string().contains('1'));

    spinner.join().expect("spinner thread");
    // The slot is free again once the loop was interrupted.
    let again = sandbox.run(&stats, br#"{"text":"x"}"#, limits());
    assert!(again.result.is_ok(), "{:?}", again.result);
}

/// Traps other than `unreachable` name their code too.
#[test]
fn trap_messages_name_the_trap_code() {
    let cases = [
        (
            "divide_by_zero",
            "(i64.extend_i32_u (i32.div_u (i32.const 1) (i32.sub (local.get 1) (local.get 1))))",
            "integer divide by zero",
        ),
        (
            "out_of_bounds_load",
            "(i64.load (i32.const 70000))",
            "out of bounds memory access",
        ),
    ];
    let sandbox = sandbox();
    for (name, body, code) in cases {
        let wat = format!(
            r#"(module (memory (export "memory") 1)
                 (func (export "alloc") (param i32) (result i32) (i32.const 1024))
                 (func (export "run") (param i32 i32) (result i64) {body}))"#
        );
        let bytes = wat::parse_str(&wat).expect("wat");
        let prepared = sandbox.prepare(sha256(&bytes), &bytes, "run").expect("prepare");
        let err = sandbox.run(&prepared, b"{}", limits()).result.expect_err(name);
        assert_eq!(err.reason(), "trap", "{name}: {err}");
        assert_eq!(err.to_string(), format!("trap: {code}"), "{name}");
    }
}

#[test]
fn alloc_pointing_outside_memory_is_refused() {
    let wat = r#"(module (memory (export "memory") 1)
        (func (export "alloc") (param i32) (result i32) (i32.const 65530))
        (func (export "run") (param i32 i32) (result i64) (i64.const 0)))"#;
    let bytes = wat::parse_str(wat).expect("wat");
    let sandbox = sandbox();
    let prepared = sandbox.prepare(sha256(&bytes), &bytes, "run").expect("prepare");
    let err = sandbox
        .run(&prepared, b"0123456789", limits())
        .result
        .expect_err("outside memory");
    assert_eq!(err.reason(), "alloc_out_of_bounds", "{err}");
}

#[test]
fn output_that_is_not_utf8_is_refused() {
    let wat = r#"(module (memory (export "memory") 1)
        (data (i32.const 0) "\ff\fe")
        (func (export "alloc") (param i32) (result i32) (i32.const 1024))
        (func (export "run") (param i32 i32) (result i64) (i64.const 2)))"#;
    let bytes = wat::parse_str(wat).expect("wat");
    let sandbox = sandbox();
    let prepared = sandbox.prepare(sha256(&bytes), &bytes, "run").expect("prepare");
    let err = sandbox
        .run(&prepared, b"{}", limits())
        .result
        .expect_err("not utf-8");
    assert_eq!(err.reason(), "output_not_utf8", "{err}");
}

#[test]
fn a_start_function_is_bounded_by_fuel_too() {
    let wat = r#"(module (memory (export "memory") 1)
        (func $spin (loop $l (br $l)))
        (start $spin)
        (func (export "alloc") (param i32) (result i32) (i32.const 1024))
        (func (export "run") (param i32 i32) (result i64) (i64.const 0)))"#;
    let bytes = wat::parse_str(wat).expect("wat");
    let sandbox = sandbox();
    let prepared = sandbox.prepare(sha256(&bytes), &bytes, "run").expect("prepare");
    let outcome = sandbox.run(
        &prepared,
        b"{}",
        RunLimits {
            fuel: 100_000,
            ..limits()
        },
    );
    assert_eq!(outcome.result.map_err(|e| e.reason()), Err("fuel_exhausted"));
}

#[test]
fn echo_returns_its_input() {
    let sandbox = sandbox();
    let prepared = prepare(&sandbox, "echo");
    let input = module("text_stats").len().to_string();
    let outcome = sandbox.run(&prepared, input.as_bytes(), limits());
    assert_eq!(outcome.result.expect("echo"), input.as_bytes());
}
