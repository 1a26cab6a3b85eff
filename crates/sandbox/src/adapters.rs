//! The adapters kept in the repository, as WAT text compiled with `wat` when asked for, so the
//! registry's tests, the `soma` CLI and the benchmarks run the very same modules.

/// The export every adapter here uses as its entry point.
pub const ADAPTER_ENTRYPOINT: &str = "run";

/// Names of the adapters [`adapter`] knows: the real `text_stats`, `echo`, and the hostile ones.
pub const ADAPTERS: &[&str] = &[
    "text_stats",
    "echo",
    "infinite_loop",
    "memory_bomb",
    "deep_recursion",
    "trap",
    "huge_output",
    "wasi_import",
];

/// The WAT source of an adapter.
pub fn adapter_wat(name: &str) -> Option<&'static str> {
    Some(match name {
        "text_stats" => include_str!("../adapters/text_stats.wat"),
        "echo" => include_str!("../adapters/echo.wat"),
        "infinite_loop" => include_str!("../adapters/infinite_loop.wat"),
        "memory_bomb" => include_str!("../adapters/memory_bomb.wat"),
        "deep_recursion" => include_str!("../adapters/deep_recursion.wat"),
        "trap" => include_str!("../adapters/trap.wat"),
        "huge_output" => include_str!("../adapters/huge_output.wat"),
        "wasi_import" => include_str!("../adapters/wasi_import.wat"),
        _ => return None,
    })
}

/// The compiled WebAssembly bytes of an adapter (`None` for an unknown name). The texts are fixed
/// and covered by the crate's tests, so a parse failure cannot happen in a tested build; it would
/// also read as `None` rather than a panic.
pub fn adapter(name: &str) -> Option<Vec<u8>> {
    wat::parse_str(adapter_wat(name)?).ok()
}
