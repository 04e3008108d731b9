//! Checkpoints: `<name>.safetensors` (every variable, plus the optimizer's
//! moments) and `<name>.json` (architecture, preprocessing, channel and
//! class names, the training configuration and history). Both are written
//! to a temporary name and renamed, so an interrupted save never leaves a
//! half-written checkpoint.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bfx_config::TrainerConfig;
use bfx_core::preprocess::PreprocessSpec;
use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use serde::{Deserialize, Serialize};

use super::FitError;
use crate::model::ModelSpec;
use crate::optim::AdamW;

/// Version of the checkpoint format.
pub const CHECKPOINT_VERSION: u32 = 1;
/// The last state of a run (what `fit` resumes from).
pub const LAST: &str = "last";
/// The state with the lowest validation loss (what `eval` uses).
pub const BEST: &str = "best";

/// One validation measurement.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HistoryPoint {
    /// Optimizer steps done.
    pub step: usize,
    /// Mean training loss since the previous point.
    pub train_loss: f32,
    /// Validation cross-entropy.
    pub val_loss: f32,
    /// Validation accuracy.
    pub val_accuracy: f32,
}

/// The JSON half of a checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CheckpointMeta {
    /// [`CHECKPOINT_VERSION`].
    pub format_version: u32,
    /// The network.
    pub model: ModelSpec,
    /// Preprocessing (channels in model order included).
    pub preprocess: PreprocessSpec,
    /// Class names, in logit order.
    pub classes: Vec<String>,
    /// Plate names; the first `train_plates` are the training plates.
    pub plates: Vec<String>,
    /// How many plates trained.
    pub train_plates: usize,
    /// The run's configuration.
    pub config: TrainerConfig,
    /// Optimizer steps done.
    pub step: usize,
    /// Held-out environments of the split.
    pub held_out: Vec<String>,
    /// Validation history.
    pub history: Vec<HistoryPoint>,
    /// Version of the bfx-trainer that trained it.
    #[serde(default)]
    pub trainer_version: String,
    /// Git commit of that trainer, when the build recorded one
    /// (`BFX_GIT_COMMIT` at build time).
    #[serde(default)]
    pub git_commit: Option<String>,
    /// sha256 of the dataset manifest it trained on.
    #[serde(default)]
    pub dataset_manifest_sha256: Option<String>,
}

/// Git commit of this build, if the build recorded one.
pub fn build_commit() -> Option<String> {
    option_env!("BFX_GIT_COMMIT")
        .filter(|c| !c.is_empty())
        .map(str::to_string)
}

/// Paths of checkpoint `name` in `dir`: the tensors and the metadata.
pub fn paths(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{name}.safetensors")),
        dir.join(format!("{name}.json")),
    )
}

/// Save variables, optimizer state and metadata as checkpoint `name` in `dir`.
pub fn save(
    dir: &Path,
    name: &str,
    map: &VarMap,
    opt: &AdamW,
    meta: &CheckpointMeta,
) -> Result<(), FitError> {
    std::fs::create_dir_all(dir).map_err(|e| FitError::Io(dir.to_owned(), e))?;
    let (weights, json) = paths(dir, name);
    let mut tensors: HashMap<String, Tensor> = map
        .data()
        .lock()
        .map_err(|_| FitError::Checkpoint("variable map lock poisoned".into()))?
        .iter()
        .map(|(n, v)| (n.clone(), v.as_tensor().clone()))
        .collect();
    tensors.extend(opt.state()?);
    let tmp = weights.with_extension("safetensors.tmp");
    candle_core::safetensors::save(&tensors, &tmp)?;
    let text =
        serde_json::to_string_pretty(meta).map_err(|e| FitError::Checkpoint(e.to_string()))?;
    let tmp_json = json.with_extension("json.tmp");
    std::fs::write(&tmp_json, text).map_err(|e| FitError::Io(tmp_json.clone(), e))?;
    std::fs::rename(&tmp, &weights).map_err(|e| FitError::Io(weights.clone(), e))?;
    std::fs::rename(&tmp_json, &json).map_err(|e| FitError::Io(json.clone(), e))
}

/// Read checkpoint `name` in `dir`: its metadata and every tensor.
pub fn load(
    dir: &Path,
    name: &str,
    device: &Device,
) -> Result<(CheckpointMeta, HashMap<String, Tensor>), FitError> {
    let meta = read_meta(dir, name)?;
    let weights = paths(dir, name).0;
    let tensors = candle_core::safetensors::load(&weights, device)
        .map_err(|e| FitError::Checkpoint(format!("{}: {e}", weights.display())))?;
    Ok((meta, tensors))
}

/// Read the metadata of checkpoint `name` in `dir`.
pub fn read_meta(dir: &Path, name: &str) -> Result<CheckpointMeta, FitError> {
    let json = paths(dir, name).1;
    let text = std::fs::read_to_string(&json).map_err(|e| FitError::Io(json.clone(), e))?;
    let meta: CheckpointMeta = serde_json::from_str(&text).map_err(|e| {
        FitError::Checkpoint(format!("{}: not a bfx checkpoint: {e}", json.display()))
    })?;
    if meta.format_version != CHECKPOINT_VERSION {
        return Err(FitError::Checkpoint(format!(
            "{}: checkpoint format {}, this bfx-trainer reads {CHECKPOINT_VERSION}",
            json.display(),
            meta.format_version
        )));
    }
    Ok(meta)
}

/// Set every variable of `map` from `tensors`; names or shapes that do not
/// match are listed in the error.
pub fn restore(
    map: &VarMap,
    tensors: &HashMap<String, Tensor>,
    source: &Path,
) -> Result<(), FitError> {
    let data = map
        .data()
        .lock()
        .map_err(|_| FitError::Checkpoint("variable map lock poisoned".into()))?;
    let mut problems = Vec::new();
    for (name, var) in data.iter() {
        match tensors.get(name) {
            None => problems.push(format!("{name} is missing")),
            Some(t) if t.dims() != var.dims() => problems.push(format!(
                "{name} is {:?}, the model needs {:?}",
                t.dims(),
                var.dims()
            )),
            Some(t) => var.set(&t.to_dtype(var.dtype())?)?,
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        problems.sort();
        Err(FitError::Checkpoint(format!(
            "{} does not fit this model: {}",
            source.display(),
            problems.join("; ")
        )))
    }
}
