//! `bfx-trainer export` and `inspect`: a checkpoint becomes a model bundle
//! through bfx-export (which reads the safetensors itself), and a bundle
//! is verified and described.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use bfx_core::bundle::{Bundle, Provenance};
use bfx_core::preprocess::Normalization;
use bfx_export::weights::Weights;
use bfx_export::{ClassifierExport, ExportError, IstExport, write_classifier_bundle};
use thiserror::Error;

use crate::eval::Evaluation;
use crate::fit::FitError;
use crate::fit::checkpoint::{self, BEST, CheckpointMeta};

/// Why a checkpoint could not be exported.
#[derive(Debug, Error)]
pub enum ExportRunError {
    /// The checkpoint is unreadable.
    #[error(transparent)]
    Checkpoint(#[from] FitError),
    /// Emission or the bundle failed.
    #[error(transparent)]
    Export(#[from] ExportError),
}

/// Where a checkpoint argument points: a run folder (its best
/// checkpoint), or a checkpoint's `.json` or `.safetensors` file.
pub fn resolve_checkpoint(arg: &Path) -> Result<(PathBuf, String), FitError> {
    if arg.is_dir() {
        return Ok((arg.to_owned(), BEST.to_string()));
    }
    let stem = arg.file_stem().and_then(|s| s.to_str());
    let ext = arg.extension().and_then(|s| s.to_str());
    match (stem, ext) {
        (Some(stem), Some("json" | "safetensors")) => Ok((
            arg.parent().unwrap_or(Path::new(".")).to_owned(),
            stem.to_string(),
        )),
        _ => Err(FitError::Config(format!(
            "{}: not a run folder or a checkpoint (.json or .safetensors)",
            arg.display()
        ))),
    }
}

/// Headline metrics of the run's `eval` report, if one was written to
/// `<run>/report/metrics.json`.
fn headline_metrics(dir: &Path) -> BTreeMap<String, f64> {
    let path = dir.join("report").join("metrics.json");
    let Some(eval) = std::fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Evaluation>(&b).ok())
    else {
        return BTreeMap::new();
    };
    let mut out = BTreeMap::new();
    let modes = [("", Some(&eval.plain)), ("adabn.", eval.adabn.as_ref())];
    for (prefix, mode) in modes {
        let Some(m) = mode else { continue };
        for (name, value) in [
            ("accuracy", m.accuracy),
            ("macro_f1", m.macro_f1),
            ("knn_batch_cv", m.knn_batch_cv),
            ("ilisi", m.ilisi),
            ("clisi", m.clisi),
            ("plate_prediction_f1", m.plate_prediction_f1),
        ] {
            out.insert(format!("{prefix}{name}"), value);
        }
    }
    out
}

fn provenance(meta: &CheckpointMeta) -> Provenance {
    Provenance {
        trainer_version: if meta.trainer_version.is_empty() {
            "unknown".into()
        } else {
            meta.trainer_version.clone()
        },
        dataset_manifest_sha256: meta.dataset_manifest_sha256.clone(),
        git_commit: meta.git_commit.clone(),
        // Serializing a plain config struct cannot fail.
        config: serde_json::to_value(&meta.config).expect("config serializes"),
    }
}

/// Export checkpoint `arg` to the bundle folder `out`.
pub fn export(arg: &Path, out: &Path, replace: bool) -> Result<Bundle, ExportRunError> {
    let (dir, name) = resolve_checkpoint(arg)?;
    let meta = checkpoint::read_meta(&dir, &name)?;
    let (weights, _) = checkpoint::paths(&dir, &name);
    let request = ClassifierExport {
        method: meta.config.method.name.clone(),
        spec: meta.model.clone(),
        weights: Weights::read(&weights)?,
        preprocess: meta.preprocess.clone(),
        class_names: meta.classes.clone(),
        provenance: provenance(&meta),
        metrics: headline_metrics(&dir),
        ist: ist_export(&dir, &name, &meta)?,
    };
    Ok(write_classifier_bundle(&request, out, replace)?)
}

/// IST's generator spec and style bank for an IST run (which reads the
/// run's training images for the bank); `None` for other methods.
fn ist_export(
    dir: &Path,
    name: &str,
    meta: &CheckpointMeta,
) -> Result<Option<IstExport>, FitError> {
    if meta.config.method.name != "ist" {
        return Ok(None);
    }
    let device = candle_core::Device::Cpu;
    let ist = crate::ist::load(dir, name, &device)?;
    let run = crate::fit::load_data(&meta.config, &indicatif::ProgressBar::hidden())?;
    let plates = &run.parts.plates[..run.parts.train_plates];
    let bank = crate::ist::style_bank(&ist.net, &run.images, &run.parts.train, plates, &device)?;
    Ok(Some(IstExport {
        spec: crate::nn::ist::spec_for(&meta.model.encoder, meta.model.classes, meta.train_plates),
        bank,
    }))
}

/// A human-readable description of a verified bundle.
pub fn describe(bundle: &Bundle) -> String {
    let m = &bundle.manifest;
    let mut s = String::new();
    // Writing into a String cannot fail.
    let mut line = |text: String| writeln!(s, "{text}").expect("write to String");
    line(format!("bundle      {}", bundle.dir.display()));
    line(format!("sha256      {} (manifest.json)", bundle.sha256));
    line(format!("format      version {}", m.format_version));
    line(format!("method      {}", m.method));
    if let Ok(spec) = serde_json::from_value::<bfx_core::arch::ModelSpec>(m.architecture.clone()) {
        let e = &spec.encoder;
        line(format!(
            "model       {} width {}, {}, blocks {:?}",
            spec.arch,
            e.width,
            if e.instance_norm {
                "InstanceNorm"
            } else {
                "BatchNorm"
            },
            e.blocks
        ));
    }
    let [c, h, w] = m.input_shape;
    line(format!(
        "input       {c} x {h} x {w}, channels {}",
        m.preprocess.channels.join(", ")
    ));
    line(format!(
        "normalize   {}",
        match &m.preprocess.normalization {
            Normalization::SelfStandardize { eps } => format!("self-standardize (eps {eps})"),
            Normalization::Percentile { low, high, clip } => format!(
                "percentile low {low:?} high {high:?}{}",
                if *clip { " clipped" } else { "" }
            ),
        }
    ));
    line(format!("geometry    {:?}", m.preprocess.geometry));
    line(format!("embedding   {} dimensions", m.embedding_dim));
    line(format!(
        "classes     {} ({})",
        m.class_names.len(),
        m.class_names.join(", ")
    ));
    let modes: Vec<String> = m
        .correction_modes
        .iter()
        .map(|c| format!("{c:?}").to_lowercase())
        .collect();
    line(format!("correction  {}", modes.join(", ")));
    if !m.adabn_layers.is_empty() {
        line(format!(
            "adabn       {} BatchNorm layers",
            m.adabn_layers.len()
        ));
    }
    for (name, d) in &m.files {
        line(format!(
            "file        {name:<24} {:>10} bytes  sha256 {}",
            d.bytes,
            &d.sha256[..16]
        ));
    }
    let p = &m.provenance;
    line(format!(
        "trainer     {} (commit {})",
        p.trainer_version,
        p.git_commit.as_deref().unwrap_or("unknown")
    ));
    if let Some(d) = &p.dataset_manifest_sha256 {
        line(format!("dataset     manifest sha256 {d}"));
    }
    for (k, v) in &m.metrics {
        line(format!("metric      {k:<24} {v:.4}"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_arguments_resolve_or_are_refused() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let (dir, name) = resolve_checkpoint(tmp.path()).expect("a folder");
        assert_eq!((dir.as_path(), name.as_str()), (tmp.path(), BEST));
        let (dir, name) = resolve_checkpoint(&tmp.path().join("last.safetensors")).expect("a file");
        assert_eq!((dir.as_path(), name.as_str()), (tmp.path(), "last"));
        let err = resolve_checkpoint(Path::new("run/model.pt")).expect_err("not a checkpoint");
        assert_eq!(
            err.to_string(),
            "run/model.pt: not a run folder or a checkpoint (.json or .safetensors)"
        );
        // A run folder without checkpoints names the file it looked for.
        let err = export(tmp.path(), &tmp.path().join("b"), false).expect_err("no checkpoint");
        assert!(err.to_string().contains("best.json"), "{err}");
    }
}
