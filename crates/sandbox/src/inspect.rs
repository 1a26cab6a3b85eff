//! Publish-time module inspection with `wasmparser` alone: nothing is compiled here.

use wasmparser::{ExternalKind, FuncType, Parser, Payload, ValType, Validator, WasmFeatures};

use crate::error::SandboxError;

/// What the ABI requires of the `alloc` export.
const ALLOC_TYPE: &str = "a function (i32) -> i32";
/// What the ABI requires of the entry point export.
const ENTRY_TYPE: &str = "a function (i32, i32) -> i64";
/// What the ABI requires of the `memory` export.
const MEMORY_TYPE: &str = "a 32-bit memory";

/// What [`Sandbox::inspect`](crate::Sandbox::inspect) learned about a module that passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleInfo {
    /// The exported memory's declared minimum, in bytes.
    pub memory_min_bytes: u64,
    /// The exported memory's declared maximum, in bytes, if it has one.
    pub memory_max_bytes: Option<u64>,
    /// Every export name, in module order.
    pub exports: Vec<String>,
}

/// The proposals a release may use: WebAssembly 2.0 (bulk memory, reference types, SIMD,
/// multi-value, ...). Threads, GC, exceptions and memory64 stay off, matching the engine.
pub(crate) fn features() -> WasmFeatures {
    WasmFeatures::WASM2
}

/// Validates `module` and checks the ABI: no imports, `memory`, `alloc` and `entrypoint` exports
/// with the right types, memory minimum within `max_memory_bytes`.
pub(crate) fn inspect(
    module: &[u8],
    entrypoint: &str,
    max_memory_bytes: u64,
) -> Result<ModuleInfo, SandboxError> {
    let invalid = |e: wasmparser::BinaryReaderError| SandboxError::InvalidModule(e.to_string());
    let types = Validator::new_with_features(features())
        .validate_all(module)
        .map_err(invalid)?;

    let mut exports = Vec::new();
    for payload in Parser::new(0).parse_all(module) {
        match payload.map_err(invalid)? {
            Payload::ImportSection(reader) => {
                if let Some(import) = reader.into_imports().next() {
                    let import = import.map_err(invalid)?;
                    return Err(SandboxError::ModuleImportsForbidden {
                        module: import.module.to_owned(),
                        name: import.name.to_owned(),
                    });
                }
            }
            Payload::ExportSection(reader) => {
                for export in reader {
                    let export = export.map_err(invalid)?;
                    exports.push((export.name.to_owned(), export.kind, export.index));
                }
            }
            _ => {}
        }
    }
    let find = |name: &str, expected: &'static str| {
        exports
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, kind, index)| (*kind, *index))
            .ok_or_else(|| SandboxError::MissingExport {
                name: name.to_owned(),
                expected,
            })
    };

    let (kind, index) = find("memory", MEMORY_TYPE)?;
    if kind != ExternalKind::Memory {
        return Err(wrong_type("memory", MEMORY_TYPE, kind_name(kind).to_owned()));
    }
    let memory = types.as_ref().memory_at(index);
    if memory.memory64 || memory.shared {
        return Err(wrong_type(
            "memory",
            MEMORY_TYPE,
            "a 64-bit or shared memory".to_owned(),
        ));
    }
    let page = 1u64 << memory.page_size_log2.unwrap_or(16);
    let memory_min_bytes = memory.initial.saturating_mul(page);
    let memory_max_bytes = memory.maximum.map(|m| m.saturating_mul(page));

    check_func(
        &types,
        find("alloc", ALLOC_TYPE)?,
        "alloc",
        ALLOC_TYPE,
        &[ValType::I32],
        &[ValType::I32],
    )?;
    check_func(
        &types,
        find(entrypoint, ENTRY_TYPE)?,
        entrypoint,
        ENTRY_TYPE,
        &[ValType::I32, ValType::I32],
        &[ValType::I64],
    )?;

    if memory_min_bytes > max_memory_bytes {
        return Err(SandboxError::MemoryTooLarge {
            minimum_bytes: memory_min_bytes,
            max_bytes: max_memory_bytes,
        });
    }
    Ok(ModuleInfo {
        memory_min_bytes,
        memory_max_bytes,
        exports: exports.into_iter().map(|(name, _, _)| name).collect(),
    })
}

fn check_func(
    types: &wasmparser::types::Types,
    (kind, index): (ExternalKind, u32),
    name: &str,
    expected: &'static str,
    params: &[ValType],
    results: &[ValType],
) -> Result<(), SandboxError> {
    if kind != ExternalKind::Func {
        return Err(wrong_type(name, expected, kind_name(kind).to_owned()));
    }
    let types = types.as_ref();
    let ty = types[types.core_function_at(index)].unwrap_func();
    if ty.params() != params || ty.results() != results {
        return Err(wrong_type(
            name,
            expected,
            format!("a function {}", signature(ty)),
        ));
    }
    Ok(())
}

fn wrong_type(name: &str, expected: &'static str, actual: String) -> SandboxError {
    SandboxError::ExportWrongType {
        name: name.to_owned(),
        expected,
        actual,
    }
}

fn kind_name(kind: ExternalKind) -> &'static str {
    match kind {
        ExternalKind::Func | ExternalKind::FuncExact => "a function",
        ExternalKind::Table => "a table",
        ExternalKind::Memory => "a memory",
        ExternalKind::Global => "a global",
        ExternalKind::Tag => "a tag",
    }
}

fn signature(ty: &FuncType) -> String {
    let list = |tys: &[ValType]| tys.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
    format!("({}) -> ({})", list(ty.params()), list(ty.results()))
}
