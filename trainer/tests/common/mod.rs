//! What the trainer's integration tests share: a tiny screen and a config.

use std::path::Path;

use bfx_core::naming::Preset;
use bfx_trainer::synth::{self, SynthPreset};
use indicatif::ProgressBar;

/// `bfx-trainer` run with `args` to completion.
// Not every test binary that includes this module runs the CLI.
#[allow(dead_code)]
pub fn trainer<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_bfx-trainer"))
        .args(args)
        .output()
        .expect("bfx-trainer runs")
}

/// A tiny screen and a config training on it, in `dir`.
pub fn setup(dir: &Path, extra: &str) -> std::path::PathBuf {
    synth::generate(
        SynthPreset::Tiny,
        &dir.join("screen"),
        0,
        Preset::Imagexpress,
        &ProgressBar::hidden(),
    )
    .expect("tiny screen");
    let config = dir.join("fit.toml");
    std::fs::write(
        &config,
        format!(
            r#"[trainer]
out = "run"
[trainer.data]
root = "screen"
manifest = "screen/manifest.csv"
cache_dir = "cache"
[trainer.preprocess]
channels = ["w1", "w2", "w3", "w4"]
# Percentiles keep the intensity differences between classes.
normalization = {{ kind = "percentile", low = [100.0, 100.0, 100.0, 100.0], high = [5000.0, 2500.0, 5000.0, 3000.0], clip = false }}
geometry = {{ kind = "resize", height = 32, width = 32 }}
[trainer.model]
width = 8
embedding_dim = 32
[trainer.optim]
lr = 1e-3
batch_size = 16
steps = 200
{extra}"#
        ),
    )
    .expect("writable temp dir");
    config
}
