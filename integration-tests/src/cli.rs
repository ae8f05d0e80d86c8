//! Running the real `steward` binary and the project's Python clients,
//! and reading what they printed.

use std::path::{Path, PathBuf};

/// A `steward` command's JSON output; the command must have succeeded.
pub fn cli_json(output: &std::process::Output) -> serde_json::Value {
    assert!(
        output.status.success(),
        "{:?}: {}{}",
        output.status.code(),
        String::from_utf8_lossy(&output.stderr),
        String::from_utf8_lossy(&output.stdout)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Asserts that a `steward` command exited with `code`; returns what it
/// said on standard error.
pub fn exits(output: &std::process::Output, code: i32) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(output.status.code(), Some(code), "{stderr}");
    stderr
}

/// The workspace root (for scripts and built binaries).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

/// The directory holding the workspace's built binaries (`target/<profile>`),
/// found from the running test executable (`target/<profile>/deps/…`).
pub fn binary_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap();
    if deps.file_name().is_some_and(|n| n == "deps") {
        deps.parent().unwrap().to_owned()
    } else {
        deps.to_owned()
    }
}

/// Runs the `steward` CLI binary with `args` off the async runtime, and
/// returns what it printed and how it exited.
pub async fn run_steward(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(binary_dir().join("steward"))
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

/// The interpreter with grpcio installed: `STEWARD_TEST_PYTHON`, or the
/// virtualenv `make test` creates under `target/pyenv`.
/// Panics, saying how to get one, when it is missing.
pub fn python() -> PathBuf {
    let python = match std::env::var_os("STEWARD_TEST_PYTHON") {
        Some(path) => PathBuf::from(path),
        None => workspace_root().join("target/pyenv/bin/python"),
    };
    assert!(
        python.exists(),
        "{} not found: run `make test` (it creates the venv with grpcio) or set STEWARD_TEST_PYTHON",
        python.display()
    );
    python
}
