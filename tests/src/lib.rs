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

/// Synthesize the `tiny` screen into `dir/screen` and train `method` on it
/// for `steps` steps (width 8, embedding 16, 32x32 inputs) into `dir/run`;
/// returns the run's configuration.
pub fn tiny_run(dir: &Path, method: &str, steps: usize) -> bfx_config::TrainerConfig {
    tiny_run_with(dir, method, "{}", steps)
}

/// [`tiny_run`] with the method's parameters as an inline TOML table
/// (`{ encoder_steps = 4 }`).
pub fn tiny_run_with(
    dir: &Path,
    method: &str,
    params: &str,
    steps: usize,
) -> bfx_config::TrainerConfig {
    tiny_run_norm(dir, method, params, steps, "batch")
}

/// [`tiny_run_with`] with `trainer.model.norm` set to `norm`.
pub fn tiny_run_norm(
    dir: &Path,
    method: &str,
    params: &str,
    steps: usize,
    norm: &str,
) -> bfx_config::TrainerConfig {
    bfx_trainer::synth::generate(
        bfx_trainer::synth::SynthPreset::Tiny,
        &dir.join("screen"),
        0,
        bfx_core::naming::Preset::Imagexpress,
        &indicatif::ProgressBar::hidden(),
    )
    .expect("tiny screen");
    let text = format!(
        r#"[trainer]
out = "run"
[trainer.data]
root = "screen"
manifest = "screen/manifest.csv"
cache_dir = "cache"
[trainer.preprocess]
channels = ["w1", "w2", "w3", "w4"]
normalization = {{ kind = "percentile", low = [100.0, 100.0, 100.0, 100.0], high = [5000.0, 2500.0, 5000.0, 3000.0], clip = false }}
geometry = {{ kind = "resize", height = 32, width = 32 }}
[trainer.model]
width = 8
embedding_dim = 16
norm = "{norm}"
[trainer.method]
name = "{method}"
params = {params}
[trainer.optim]
batch_size = 16
steps = {steps}
"#
    );
    let config = bfx_config::parse_trainer(&text, &dir.join("fit.toml")).expect("valid config");
    bfx_trainer::fit::fit(
        &config,
        &candle_core::Device::Cpu,
        false,
        &std::sync::atomic::AtomicBool::new(false),
        &indicatif::ProgressBar::hidden(),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    config
}
