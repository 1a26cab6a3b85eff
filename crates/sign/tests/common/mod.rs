//! Helpers shared by the integration tests: conformance vectors, hex, and
//! scripts run under the interop Python (`soma_testing::python`).
#![allow(
    dead_code,
    reason = "each test binary uses a different subset of these helpers"
)]

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The shared conformance vectors folder; panics loudly, naming the path, when it is absent.
pub fn vectors(rel: &str) -> PathBuf {
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/vectors"));
    let path = root.join(rel);
    assert!(
        path.exists(),
        "conformance vectors missing: {} does not exist (the shared/vectors folder must sit beside the project)",
        path.display()
    );
    path
}

/// Reads and parses a JSON vector file.
pub fn vector_json(rel: &str) -> serde_json::Value {
    let path = vectors(rel);
    let text = std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_slice(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Decodes lowercase or uppercase hex.
pub fn hex(s: &str) -> Vec<u8> {
    assert!(s.len().is_multiple_of(2), "odd hex length: {s}");
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// Encodes lowercase hex.
pub fn to_hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `script` under the interop interpreter with `stdin`, failing loudly if
/// `module` is not importable or the script fails; returns its standard output.
pub fn run_python(module: &str, script: &str, stdin: &str) -> String {
    let py = soma_testing::python();
    let probe = Command::new(&py)
        .args(["-c", &format!("import {module}")])
        .output()
        .unwrap();
    assert!(
        probe.status.success(),
        "Python module {module} is not importable by {} (install it, e.g. `{}/pip install {module}`, \
         or run scripts/test.sh): {}",
        py.display(),
        py.parent().unwrap().display(),
        String::from_utf8_lossy(&probe.stderr)
    );
    let mut child = Command::new(&py)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "python script failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}
