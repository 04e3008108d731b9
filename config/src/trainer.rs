//! The `[trainer]` table: data, preprocessing, model, method, optimizer and split of a `bfx-trainer fit` run.

use std::path::{Path, PathBuf};

use bfx_core::preprocess::PreprocessSpec;
use serde::{Deserialize, Serialize};

use crate::{Invalid, at_least, resolve};

/// `[trainer]`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrainerConfig {
    /// Output folder for checkpoints and reports (required).
    pub out: PathBuf,
    /// Seed of every random choice of the run (default 0).
    #[serde(default)]
    pub seed: u64,
    /// `[trainer.data]` (required).
    pub data: DataConfig,
    /// `[trainer.preprocess]`: channels, normalization and geometry (required).
    pub preprocess: PreprocessSpec,
    /// `[trainer.model]`.
    #[serde(default)]
    pub model: ModelConfig,
    /// `[trainer.method]`.
    #[serde(default)]
    pub method: MethodConfig,
    /// `[trainer.optim]`.
    #[serde(default)]
    pub optim: OptimConfig,
    /// `[trainer.split]`.
    #[serde(default)]
    pub split: SplitConfig,
}

/// `[trainer.data]`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// Acquisition root folder the manifest's paths are relative to (required).
    pub root: PathBuf,
    /// Manifest CSV, one row per site (required).
    pub manifest: PathBuf,
    /// Folder for the decoded-tensor cache (default: `<out>/cache`).
    #[serde(default)]
    pub cache_dir: Option<PathBuf>,
}

/// Normalization layers of the encoder.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NormKind {
    /// BatchNorm (default); enables AdaBN.
    #[default]
    Batch,
    /// InstanceNorm.
    Instance,
}

/// `[trainer.model]`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Encoder architecture (default `resnet18`).
    pub arch: String,
    /// Channels of the first stage; 64 is the standard ResNet18 (default 64).
    pub width: usize,
    /// `batch` (default) or `instance`.
    pub norm: NormKind,
    /// Embedding dimension (default 128).
    pub embedding_dim: usize,
}

impl Default for ModelConfig {
    fn default() -> Self {
        ModelConfig {
            arch: "resnet18".into(),
            width: 64,
            norm: NormKind::Batch,
            embedding_dim: 128,
        }
    }
}

/// `[trainer.method]`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MethodConfig {
    /// Training method (default `erm`).
    pub name: String,
    /// Method-specific parameters, checked by the method.
    pub params: toml::Table,
}

impl Default for MethodConfig {
    fn default() -> Self {
        MethodConfig {
            name: "erm".into(),
            params: toml::Table::new(),
        }
    }
}

/// `[trainer.optim]`.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// Learning rate (default 1e-4).
    pub lr: f64,
    /// AdamW weight decay (default 0.01).
    pub weight_decay: f64,
    /// Images per minibatch (default 32).
    pub batch_size: usize,
    /// Optimizer steps (default 2000).
    pub steps: usize,
}

impl Default for OptimConfig {
    fn default() -> Self {
        OptimConfig {
            lr: 1e-4,
            weight_decay: 0.01,
            batch_size: 32,
            steps: 2000,
        }
    }
}

/// Generalization level of a split (the IST paper's levels).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SplitLevel {
    /// Held-out wells of the training environments (default).
    #[default]
    Iid,
    /// Level 1: leave plate sections out.
    Section,
    /// Level 2: leave plates out.
    Plate,
    /// Level 3: leave series out.
    Series,
}

impl std::str::FromStr for SplitLevel {
    type Err = String;

    /// A level by name or by the IST paper's number: `iid` (or `0`),
    /// `section` (`1`), `plate` (`2`), `series` (`3`), as command-line flags write it.
    fn from_str(s: &str) -> Result<SplitLevel, String> {
        match s.to_ascii_lowercase().as_str() {
            "iid" | "0" => Ok(SplitLevel::Iid),
            "section" | "1" => Ok(SplitLevel::Section),
            "plate" | "2" => Ok(SplitLevel::Plate),
            "series" | "3" => Ok(SplitLevel::Series),
            other => Err(format!(
                "unknown split level {other:?}: use iid (0), section (1), plate (2) or series (3)"
            )),
        }
    }
}

/// `[trainer.split]`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct SplitConfig {
    /// `iid` (default), `section`, `plate` or `series`.
    pub level: SplitLevel,
    /// Cross-validation fold (default 0).
    pub fold: usize,
}

impl TrainerConfig {
    /// Check ranges.
    pub fn validate(&self) -> Result<(), Invalid> {
        self.preprocess
            .validate()
            .map_err(|e| Invalid::new("trainer.preprocess", format!("is invalid: {e}")))?;
        at_least("trainer.model.width", self.model.width, 1)?;
        at_least("trainer.model.embedding_dim", self.model.embedding_dim, 1)?;
        if !(self.optim.lr > 0.0 && self.optim.lr.is_finite()) {
            return Err(Invalid::new(
                "trainer.optim.lr",
                format!("must be > 0, got {}", self.optim.lr),
            ));
        }
        if !(self.optim.weight_decay >= 0.0 && self.optim.weight_decay.is_finite()) {
            return Err(Invalid::new(
                "trainer.optim.weight_decay",
                format!("must be >= 0, got {}", self.optim.weight_decay),
            ));
        }
        at_least("trainer.optim.batch_size", self.optim.batch_size, 1)?;
        at_least("trainer.optim.steps", self.optim.steps, 1)
    }

    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        resolve(base, &mut self.out);
        resolve(base, &mut self.data.root);
        resolve(base, &mut self.data.manifest);
        if let Some(cache) = &mut self.data.cache_dir {
            resolve(base, cache);
        }
    }
}
