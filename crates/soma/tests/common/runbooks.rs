//! The runbooks of `docs/runbooks/`, as the tests run them: every ```sh
//! block of one runbook, in order, in one `bash` session with `set -euo
//! pipefail` (a variable one block sets, the next uses; a failing command
//! stops it), from the repository's root, with the test's `soma` first on
//! the `PATH` (and as `SOMA` for the scripts) and the variables the
//! runbook's first block asks for in the environment (`SOMA_DATA`,
//! `REGION`, `HA_DIR`).

use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

/// The repository's root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `docs/runbooks/`.
pub fn dir() -> PathBuf {
    root().join("docs/runbooks")
}

/// The runbooks (every `.md` of `docs/runbooks/` but its index), by file name.
pub fn all() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".md") && n != "README.md")
        .collect();
    names.sort();
    names
}

/// The ```sh blocks of a Markdown text, in order.
pub fn sh_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        match (&mut current, line.trim_end()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    assert!(current.is_none(), "an unterminated ```sh block");
    blocks
}

/// The ```sh blocks of runbook `name`; a runbook without any fails the test.
pub fn blocks(name: &str) -> Vec<String> {
    let text = std::fs::read_to_string(dir().join(name)).unwrap();
    let blocks = sh_blocks(&text);
    assert!(!blocks.is_empty(), "{name} has no ```sh command block");
    blocks
}

/// Runs every block of runbook `name` in one shell session with `env`;
/// each block announced on standard error as `runbook NAME: block I/N`.
pub fn run(name: &str, env: &[(&str, &str)]) -> Output {
    run_blocks(name, env, |_| true)
}

/// Runs the blocks of runbook `name` whose index (from 0) `which` selects,
/// in order, in one shell session with `env`: one section of a runbook
/// (the first block, which sets the variables, and that section's blocks),
/// when its sections are steps taken at different times (install now,
/// roll back after a failed drill).
pub fn run_blocks(name: &str, env: &[(&str, &str)], which: impl Fn(usize) -> bool) -> Output {
    let blocks = blocks(name);
    let mut script = String::from("set -euo pipefail\n");
    for (i, block) in blocks.iter().enumerate() {
        if !which(i) {
            continue;
        }
        script.push_str(&format!(
            "echo 'runbook {name}: block {}/{}' >&2\n",
            i + 1,
            blocks.len()
        ));
        script.push_str(block);
    }
    let soma = Path::new(env!("CARGO_BIN_EXE_soma"));
    let path = format!(
        "{}:{}",
        soma.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    std::process::Command::new("bash")
        .arg("-c")
        .arg(script)
        .current_dir(root())
        .env("PATH", path)
        .env("SOMA", soma)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// Asserts that a run of runbook `name` succeeded, showing its output.
pub fn assert_ran(name: &str, output: &Output) {
    assert!(
        output.status.success(),
        "runbook {name} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
