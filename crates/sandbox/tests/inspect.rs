//! Publish-time inspection: wasmparser only, nothing compiled.

mod common;

use common::{module, sandbox};
use soma_sandbox::{ADAPTER_ENTRYPOINT, ADAPTERS, Sandbox, SandboxConfig, adapter};

struct Case {
    name: &'static str,
    module: Vec<u8>,
    entrypoint: &'static str,
    expected_reason: &'static str,
    message_contains: &'static str,
}

fn wat(text: &str) -> Vec<u8> {
    wat::parse_str(text).unwrap_or_else(|e| panic!("wat: {e}"))
}

const ALLOC: &str = r#"(func (export "alloc") (param i32) (result i32) (i32.const 0))"#;
const RUN: &str = r#"(func (export "run") (param i32 i32) (result i64) (i64.const 0))"#;

#[test]
fn inspect_refuses_each_malformed_module_with_its_reason() {
    let cases = vec![
        Case {
            name: "not_wasm",
            module: b"not wasm at all".to_vec(),
            entrypoint: "run",
            expected_reason: "invalid_module",
            message_contains: "invalid module",
        },
        Case {
            name: "truncated",
            module: module("text_stats")[..20].to_vec(),
            entrypoint: "run",
            expected_reason: "invalid_module",
            message_contains: "invalid module",
        },
        Case {
            name: "wasi_import",
            module: module("wasi_import"),
            entrypoint: "run",
            expected_reason: "module_imports_forbidden",
            message_contains: "wasi_snapshot_preview1::fd_write",
        },
        Case {
            name: "imported_memory",
            module: wat(&format!(
                r#"(module (import "env" "memory" (memory 1)) {ALLOC} {RUN})"#
            )),
            entrypoint: "run",
            expected_reason: "module_imports_forbidden",
            message_contains: "env::memory",
        },
        Case {
            name: "no_memory_export",
            module: wat(&format!(r#"(module (memory 1) {ALLOC} {RUN})"#)),
            entrypoint: "run",
            expected_reason: "missing_export",
            message_contains: "`memory`",
        },
        Case {
            name: "memory_is_a_function",
            module: wat(&format!(
                r#"(module (memory 1) (func (export "memory")) {ALLOC} {RUN})"#
            )),
            entrypoint: "run",
            expected_reason: "export_wrong_type",
            message_contains: "`memory` is a function",
        },
        Case {
            name: "no_alloc",
            module: wat(&format!(r#"(module (memory (export "memory") 1) {RUN})"#)),
            entrypoint: "run",
            expected_reason: "missing_export",
            message_contains: "`alloc`",
        },
        Case {
            name: "alloc_wrong_signature",
            module: wat(&format!(
                r#"(module (memory (export "memory") 1) (func (export "alloc") (param i64) (result i32) (i32.const 0)) {RUN})"#
            )),
            entrypoint: "run",
            expected_reason: "export_wrong_type",
            message_contains: "(i64) -> (i32)",
        },
        Case {
            name: "no_entrypoint",
            module: module("text_stats"),
            entrypoint: "main",
            expected_reason: "missing_export",
            message_contains: "`main`",
        },
        Case {
            name: "entrypoint_wrong_signature",
            module: wat(&format!(
                r#"(module (memory (export "memory") 1) {ALLOC} (func (export "run") (param i32 i32) (result i32) (i32.const 0)))"#
            )),
            entrypoint: "run",
            expected_reason: "export_wrong_type",
            message_contains: "(i32, i32) -> (i32)",
        },
        Case {
            name: "entrypoint_is_a_global",
            module: wat(&format!(
                r#"(module (memory (export "memory") 1) {ALLOC} (global (export "run") i32 (i32.const 0)))"#
            )),
            entrypoint: "run",
            expected_reason: "export_wrong_type",
            message_contains: "a global",
        },
        Case {
            name: "memory_minimum_above_ceiling",
            module: wat(&format!(
                r#"(module (memory (export "memory") 1025) {ALLOC} {RUN})"#
            )),
            entrypoint: "run",
            expected_reason: "memory_too_large",
            message_contains: "67174400",
        },
        Case {
            name: "shared_memory_needs_threads",
            module: wat(&format!(
                r#"(module (memory (export "memory") 1 1 shared) {ALLOC} {RUN})"#
            )),
            entrypoint: "run",
            expected_reason: "invalid_module",
            message_contains: "invalid module",
        },
    ];
    for case in &cases {
        let err = Sandbox::inspect(&case.module, case.entrypoint)
            .err()
            .unwrap_or_else(|| panic!("{}: inspect accepted the module", case.name));
        assert_eq!(err.reason(), case.expected_reason, "case {}: {err}", case.name);
        assert!(
            err.to_string().contains(case.message_contains),
            "case {}: {err} lacks {:?}",
            case.name,
            case.message_contains
        );
    }
}

#[test]
fn inspect_describes_the_text_adapter() {
    let info = Sandbox::inspect(&module("text_stats"), ADAPTER_ENTRYPOINT).expect("inspect");
    assert_eq!(info.memory_min_bytes, 2 * 65536);
    assert_eq!(info.memory_max_bytes, None);
    assert_eq!(info.exports, ["memory", "alloc", "run"]);
}

#[test]
fn every_repository_adapter_parses_and_all_but_wasi_import_pass_inspection() {
    for name in ADAPTERS {
        let bytes = adapter(name).unwrap_or_else(|| panic!("{name} does not parse"));
        let inspected = Sandbox::inspect(&bytes, ADAPTER_ENTRYPOINT);
        if *name == "wasi_import" {
            assert_eq!(
                inspected.map_err(|e| e.reason()).err(),
                Some("module_imports_forbidden")
            );
        } else {
            assert!(inspected.is_ok(), "{name}: {inspected:?}");
        }
    }
    assert!(adapter("no_such_adapter").is_none());
}

#[test]
fn the_configured_ceiling_applies_to_config_inspect_and_prepare() {
    let config = SandboxConfig {
        max_memory_bytes: 65536,
        max_instances: 2,
        ..SandboxConfig::default()
    };
    let bytes = module("text_stats");
    let err = config
        .inspect(&bytes, ADAPTER_ENTRYPOINT)
        .expect_err("two pages above one");
    assert_eq!(err.reason(), "memory_too_large");

    let small = Sandbox::new(config).expect("sandbox");
    let err = small
        .prepare(soma_sandbox::sha256(&bytes), &bytes, ADAPTER_ENTRYPOINT)
        .expect_err("too large");
    assert_eq!(err.reason(), "memory_too_large");
    assert_eq!(small.counters().compiled, 0);
}

#[test]
fn inspect_does_not_compile() {
    let sandbox = sandbox();
    for name in ADAPTERS {
        let _ = Sandbox::inspect(&module(name), ADAPTER_ENTRYPOINT);
        let _ = sandbox.config().inspect(&module(name), ADAPTER_ENTRYPOINT);
    }
    assert_eq!(sandbox.counters().compiled, 0);
}
