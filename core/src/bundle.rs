//! The model bundle: a directory of ONNX graphs plus `manifest.json`, the
//! contract between `bfx-trainer export` and `bfx-daemon`.
//!
//! The manifest is versioned and lists the sha256 of every file, so a
//! daemon can refuse a bundle that was altered, truncated, written for
//! another format version, or trained on other channels.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::preprocess::PreprocessSpec;

/// The manifest format this build reads and writes.
pub const BUNDLE_FORMAT_VERSION: u32 = 1;
/// The manifest's file name inside a bundle.
pub const MANIFEST_FILE: &str = "manifest.json";

/// How the daemon may correct batch effects with a bundle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CorrectionMode {
    /// The predictor as trained.
    None,
    /// BatchNorm with the statistics of the plate being imaged.
    Adabn,
    /// IST test-time correction: restyle each image into training environments.
    Ist,
}

/// The graph files of a bundle, by role.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Graphs {
    /// Image batch -> embedding, logits.
    pub predictor: String,
    /// Image batch -> embedding, logits and every BatchNorm layer's batch mean and variance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predictor_stats: Option<String>,
    /// Image batch + per-layer mean/variance -> embedding, logits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predictor_plate: Option<String>,
    /// Content image + style code -> restyled image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ist_generator: Option<String>,
    /// Style codes of training reference images with their environments (safetensors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub style_bank: Option<String>,
}

impl Graphs {
    fn all(&self) -> impl Iterator<Item = &String> {
        std::iter::once(&self.predictor).chain(
            [
                &self.predictor_stats,
                &self.predictor_plate,
                &self.ist_generator,
                &self.style_bank,
            ]
            .into_iter()
            .flatten(),
        )
    }
}

/// One BatchNorm layer whose statistics AdaBN exchanges.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NormLayer {
    /// Layer name (the prefix of its graph inputs and outputs).
    pub name: String,
    /// Channels: the length of its mean and variance vectors.
    pub channels: usize,
}

/// Size and digest of one bundle file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDigest {
    /// Lower-case hex sha256.
    pub sha256: String,
    /// Size in bytes.
    pub bytes: u64,
}

/// Where a model came from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    /// `bfx-trainer` version that trained it.
    pub trainer_version: String,
    /// sha256 of the dataset manifest it was trained on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset_manifest_sha256: Option<String>,
    /// Git commit of the trainer, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_commit: Option<String>,
    /// The training configuration as used.
    #[serde(default)]
    pub config: serde_json::Value,
}

/// `manifest.json` of a bundle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleManifest {
    /// [`BUNDLE_FORMAT_VERSION`] at writing time.
    pub format_version: u32,
    /// Training method (`erm`, `abra`, `scbd`, `ist`, ...).
    pub method: String,
    /// The trainer's architecture spec, recorded for provenance; the daemon
    /// needs only the graphs.
    pub architecture: serde_json::Value,
    /// Preprocessing, including the channel order.
    pub preprocess: PreprocessSpec,
    /// Model input per image: channels, height, width.
    pub input_shape: [usize; 3],
    /// Length of the embedding vector.
    pub embedding_dim: usize,
    /// Class names of the classifier head, empty if none.
    #[serde(default)]
    pub class_names: Vec<String>,
    /// Modes the daemon may run.
    pub correction_modes: Vec<CorrectionMode>,
    /// Graph files by role.
    pub graphs: Graphs,
    /// BatchNorm layers in forward order: the statistics `predictor_stats`
    /// outputs and `predictor_plate` takes, as `<name>.mean` and `<name>.var`.
    #[serde(default)]
    pub adabn_layers: Vec<NormLayer>,
    /// Every file of the bundle but the manifest, by name.
    #[serde(default)]
    pub files: BTreeMap<String, FileDigest>,
    /// Training provenance.
    pub provenance: Provenance,
    /// Headline evaluation metrics.
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
}

/// Why a bundle is refused.
#[derive(Debug, Error)]
pub enum BundleError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// The manifest is not valid JSON of the expected shape.
    #[error("{path}: not a valid bundle manifest: {source}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// The cause.
        source: serde_json::Error,
    },
    /// Written by an incompatible trainer.
    #[error(
        "{path}: bundle format version {found}, but this build reads version {supported}; re-export the model with a matching bfx-trainer"
    )]
    FormatVersion {
        /// The manifest file.
        path: PathBuf,
        /// Its version.
        found: u32,
        /// This build's version.
        supported: u32,
    },
    /// A listed file is absent.
    #[error("{path}: listed in the manifest but missing")]
    MissingFile {
        /// The file.
        path: PathBuf,
    },
    /// A file's content differs from the manifest.
    #[error(
        "{path}: sha256 {actual} does not match the manifest's {expected}; the bundle was altered or damaged"
    )]
    HashMismatch {
        /// The file.
        path: PathBuf,
        /// Digest in the manifest.
        expected: String,
        /// Digest of the file.
        actual: String,
    },
    /// The manifest contradicts itself.
    #[error("{path}: {problem}")]
    Inconsistent {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The bundle was trained on other channels than configured.
    #[error("the bundle's channels {bundle:?} differ from the configured channels {configured:?}")]
    ChannelMismatch {
        /// The bundle's channel order.
        bundle: Vec<String>,
        /// The configured order.
        configured: Vec<String>,
    },
}

/// A verified bundle on disk.
#[derive(Clone, Debug, PartialEq)]
pub struct Bundle {
    /// The bundle directory.
    pub dir: PathBuf,
    /// Its manifest.
    pub manifest: BundleManifest,
    /// sha256 of `manifest.json` itself: one identifier for the whole bundle.
    pub sha256: String,
}

impl Bundle {
    /// Read and verify a bundle: format version, every file's digest, and
    /// that the graphs each correction mode needs are present.
    pub fn open(dir: &Path) -> Result<Bundle, BundleError> {
        let path = dir.join(MANIFEST_FILE);
        let bytes = std::fs::read(&path).map_err(|source| io_error(&path, source))?;
        // Read the version alone first so an old or new format gets the
        // version message rather than a confusing field error.
        #[derive(Deserialize)]
        struct Version {
            format_version: u32,
        }
        let version: Version =
            serde_json::from_slice(&bytes).map_err(|source| BundleError::Manifest {
                path: path.clone(),
                source,
            })?;
        if version.format_version != BUNDLE_FORMAT_VERSION {
            return Err(BundleError::FormatVersion {
                path,
                found: version.format_version,
                supported: BUNDLE_FORMAT_VERSION,
            });
        }
        let manifest: BundleManifest =
            serde_json::from_slice(&bytes).map_err(|source| BundleError::Manifest {
                path: path.clone(),
                source,
            })?;
        manifest
            .check_consistency()
            .map_err(|problem| BundleError::Inconsistent {
                path: path.clone(),
                problem,
            })?;
        for (name, digest) in &manifest.files {
            let file = dir.join(name);
            let actual = file_digest(&file).map_err(|source| match source.kind() {
                io::ErrorKind::NotFound => BundleError::MissingFile { path: file.clone() },
                _ => io_error(&file, source),
            })?;
            if actual != *digest {
                return Err(BundleError::HashMismatch {
                    path: file,
                    expected: digest.sha256.clone(),
                    actual: actual.sha256,
                });
            }
        }
        Ok(Bundle {
            dir: dir.to_owned(),
            manifest,
            sha256: hex_sha256(&bytes),
        })
    }

    /// Refuse the bundle unless its channels are exactly `configured`, in order.
    pub fn check_channels(&self, configured: &[String]) -> Result<(), BundleError> {
        let bundle = &self.manifest.preprocess.channels;
        if bundle.as_slice() != configured {
            return Err(BundleError::ChannelMismatch {
                bundle: bundle.clone(),
                configured: configured.to_vec(),
            });
        }
        Ok(())
    }
}

impl BundleManifest {
    /// Problems that make the manifest unusable whatever the files hold.
    fn check_consistency(&self) -> Result<(), String> {
        self.preprocess.validate().map_err(|e| e.to_string())?;
        if self.embedding_dim == 0 {
            return Err("embedding_dim is 0".into());
        }
        if self.correction_modes.is_empty() {
            return Err("no correction modes".into());
        }
        let [c, h, w] = self.input_shape;
        let channels = self.preprocess.channels.len();
        let (gh, gw) = self.preprocess.output_size();
        if c != channels || (h, w) != (gh as usize, gw as usize) {
            return Err(format!(
                "input_shape {:?} does not match the preprocessing ({channels} channels, {gh}x{gw})",
                self.input_shape
            ));
        }
        for name in self.graphs.all() {
            if !self.files.contains_key(name) {
                return Err(format!("graph {name:?} is not listed in `files`"));
            }
        }
        for name in self.files.keys() {
            let p = Path::new(name);
            if name == MANIFEST_FILE || p.components().count() != 1 || p.is_absolute() {
                return Err(format!(
                    "file name {name:?} must be a plain name inside the bundle"
                ));
            }
        }
        let needs = |mode: CorrectionMode, ok: bool, what: &str| {
            if self.correction_modes.contains(&mode) && !ok {
                Err(format!("mode {mode:?} needs {what}"))
            } else {
                Ok(())
            }
        };
        let g = &self.graphs;
        needs(
            CorrectionMode::Adabn,
            g.predictor_stats.is_some() && g.predictor_plate.is_some(),
            "predictor_stats and predictor_plate graphs",
        )?;
        needs(
            CorrectionMode::Adabn,
            !self.adabn_layers.is_empty(),
            "the list of adabn_layers",
        )?;
        needs(
            CorrectionMode::Ist,
            g.ist_generator.is_some() && g.style_bank.is_some(),
            "an ist_generator graph and a style_bank",
        )
    }

    /// Digest the bundle's files (every graph plus `extra` names), then
    /// write the manifest into `dir` atomically.
    pub fn seal(&mut self, dir: &Path, extra: &[&str]) -> Result<(), BundleError> {
        self.format_version = BUNDLE_FORMAT_VERSION;
        self.files.clear();
        let names: Vec<String> = self
            .graphs
            .all()
            .cloned()
            .chain(extra.iter().map(|s| s.to_string()))
            .collect();
        for name in names {
            let path = dir.join(&name);
            let digest = file_digest(&path).map_err(|source| io_error(&path, source))?;
            self.files.insert(name, digest);
        }
        let path = dir.join(MANIFEST_FILE);
        self.check_consistency()
            .map_err(|problem| BundleError::Inconsistent {
                path: path.clone(),
                problem,
            })?;
        // Serializing plain data with string keys cannot fail.
        let json = serde_json::to_vec_pretty(self).expect("manifest serializes");
        let tmp = dir.join(format!("{MANIFEST_FILE}.tmp"));
        std::fs::write(&tmp, json).map_err(|source| io_error(&tmp, source))?;
        std::fs::rename(&tmp, &path).map_err(|source| io_error(&path, source))
    }
}

fn io_error(path: &Path, source: io::Error) -> BundleError {
    BundleError::Io {
        path: path.to_owned(),
        source,
    }
}

/// sha256 and size of a file, streamed.
pub fn file_digest(path: &Path) -> io::Result<FileDigest> {
    let mut file = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        bytes += n as u64;
    }
    Ok(FileDigest {
        sha256: hex(&hasher.finalize()),
        bytes,
    })
}

/// Lower-case hex sha256 of bytes.
pub fn hex_sha256(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
#[path = "bundle_tests.rs"]
mod tests;
