//! Helpers shared by bfx's cross-crate integration tests (in `tests/tests/`).
//!
//! Fixtures that need an independent implementation (TIFF files written by
//! `tifffile`, ONNX models built with the `onnx` package) come from the test
//! virtual environment that `scripts/setup-venv.sh` creates. A missing venv
//! fails the test with the command that fixes it; nothing is skipped.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository root.
pub fn repo_root() -> PathBuf {
    // This crate lives in `<root>/tests`.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

/// The test venv's Python: `$BFX_PYTHON`, else `<root>/.venv/bin/python`.
pub fn python() -> PathBuf {
    let path = std::env::var_os("BFX_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/python"));
    assert!(
        path.exists(),
        "the test Python {} is missing: run scripts/setup-venv.sh (scripts/test.sh runs it); \
         it installs numpy, tifffile, imagecodecs and onnx from scripts/requirements-test.txt",
        path.display()
    );
    path
}

/// Run a Python script in the test venv with `args`; its stdout, or a panic with its stderr.
pub fn run_python(script: &str, args: &[&OsStr]) -> String {
    let out = Command::new(python())
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("the test Python starts");
    assert!(
        out.status.success(),
        "Python fixture script failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("the fixture scripts print UTF-8")
}
