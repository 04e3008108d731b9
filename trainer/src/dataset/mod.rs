//! Training data: manifests (synthetic or a user's own screen), validation,
//! the decoded-image cache, samplers and cross-validation splits.

mod cache;
mod manifest;
pub mod sampler;
mod scan;
pub mod split;

use std::path::{Path, PathBuf};

use thiserror::Error;

pub use cache::{Images, cache_path, load_images};
pub use manifest::{EnvLevel, Manifest, ManifestError, SiteRow};
pub use sampler::{Sampler, SamplerError, SamplerKind};
pub use scan::{PlateMap, ScanReport, scan_acquisition};
pub use split::{Split, SplitError, SplitLevel};

/// Why a dataset cannot be used.
#[derive(Debug, Error)]
pub enum DatasetError {
    /// The manifest is unreadable or inconsistent.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A split cannot be made.
    #[error(transparent)]
    Split(#[from] SplitError),
    /// The image cache cannot be read or written.
    #[error("image cache {0}: {1}")]
    Cache(PathBuf, String),
    /// Scanning an acquisition folder failed.
    #[error("{0}: {1}")]
    Scan(PathBuf, String),
}

/// A validated, labelled manifest with its acquisition root.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// Folder the manifest's relative paths start from.
    pub root: PathBuf,
    /// The rows.
    pub manifest: Manifest,
    /// Class names, sorted; a row's class is its index here.
    pub classes: Vec<String>,
    /// Class index of every row.
    pub labels: Vec<usize>,
}

impl Dataset {
    /// Read `manifest_path` and validate it against the files under `root`
    /// and the model's `channels`; every row needs a label.
    pub fn open(
        root: &Path,
        manifest_path: &Path,
        channels: &[String],
    ) -> Result<Dataset, DatasetError> {
        let manifest = Manifest::read(manifest_path)?;
        manifest.validate(root, channels, true)?;
        let classes = manifest.labels();
        let labels = manifest
            .rows
            .iter()
            .map(|r| {
                // validate() refused rows without labels, and `classes` holds every label.
                let label = r.label.as_deref().unwrap_or_default();
                classes
                    .binary_search_by(|c| c.as_str().cmp(label))
                    .unwrap_or(0)
            })
            .collect();
        Ok(Dataset {
            root: root.to_owned(),
            manifest,
            classes,
            labels,
        })
    }

    /// Environment index of every row at `level` and the environment names
    /// (sorted); `None` when the manifest lacks the level's column.
    pub fn envs(&self, level: EnvLevel) -> Option<(Vec<String>, Vec<usize>)> {
        let names: Vec<String> = self
            .manifest
            .rows
            .iter()
            .map(|r| r.env(level))
            .collect::<Option<_>>()?;
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        let index = names
            .iter()
            .map(|n| sorted.binary_search(n).unwrap_or(0))
            .collect();
        Some((sorted, index))
    }

    /// The split of this dataset's rows at `level`, fold `fold`.
    pub fn split(&self, level: SplitLevel, fold: usize) -> Result<Split, SplitError> {
        Split::new(&self.manifest.rows, level, fold)
    }
}
