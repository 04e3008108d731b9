//! The bundle's graphs in ONNX Runtime: embeddings of preprocessed sites
//! with the training statistics, and AdaBN's two steps (a plate's
//! statistics from a sample, then any number of sites with them).
//!
//! A site is one image, or several tiles; its embedding is the mean of
//! its tiles' embeddings. With IST, each tile is first restyled into
//! training environments by the bundle's generator, and the mean runs
//! over tiles and styles.

use std::path::Path;

use bfx_config::daemon::{ExecutionProvider, InferenceConfig};
use bfx_core::bundle::Bundle;
use bfx_core::style_bank::StyleBank;
use ndarray::{Array2, Array4, Axis, concatenate};
use ort::session::Session;
use ort::value::{DynValue, Tensor};
use thiserror::Error;

use crate::model_input::SiteBatch;
use crate::runtime::OnnxRuntime;

/// Why inference failed.
#[derive(Debug, Error)]
pub enum EngineError {
    /// A graph could not be loaded.
    #[error("{path}: cannot load the graph: {message}")]
    Load {
        /// The graph file.
        path: String,
        /// ONNX Runtime's message.
        message: String,
    },
    /// A run failed.
    #[error("inference failed: {0}")]
    Run(String),
    /// The bundle lacks what the configured mode needs.
    #[error("the bundle has no {0} graph")]
    Missing(&'static str),
    /// The style bank is unreadable or does not fit the generator.
    #[error("{0}")]
    StyleBank(String),
}

fn run_error(e: impl std::fmt::Display) -> EngineError {
    EngineError::Run(e.to_string())
}

/// A plate's BatchNorm statistics, per layer in the bundle's order.
#[derive(Clone, Debug, PartialEq)]
pub struct PlateStats {
    /// `(mean, var)` per layer.
    pub layers: Vec<(Vec<f32>, Vec<f32>)>,
}

impl PlateStats {
    /// All means then all variances, layer by layer, as one vector (how the store keeps them).
    pub fn flatten(&self) -> Vec<f32> {
        let mut out = Vec::new();
        for (m, v) in &self.layers {
            out.extend_from_slice(m);
            out.extend_from_slice(v);
        }
        out
    }

    /// The statistics a plate's `uns.adabn_stats` holds (the JSON of
    /// [`PlateStats::flatten`]) for the bundle's BatchNorm layers; `None`
    /// when empty or not of that shape.
    pub fn from_uns(text: &str, layers: &[bfx_core::bundle::NormLayer]) -> Option<PlateStats> {
        let flat: Vec<f32> = serde_json::from_str(text).ok()?;
        let channels: Vec<usize> = layers.iter().map(|l| l.channels).collect();
        PlateStats::unflatten(&flat, &channels)
    }

    /// The inverse of [`PlateStats::flatten`] for layers of `channels`.
    pub fn unflatten(data: &[f32], channels: &[usize]) -> Option<PlateStats> {
        if data.len() != channels.iter().map(|c| 2 * c).sum::<usize>() {
            return None;
        }
        let mut layers = Vec::new();
        let mut at = 0;
        for &c in channels {
            layers.push((data[at..at + c].to_vec(), data[at + c..at + 2 * c].to_vec()));
            at += 2 * c;
        }
        Some(PlateStats { layers })
    }
}

/// Sessions of one bundle.
pub struct Engine {
    bundle: Bundle,
    predictor: Session,
    stats: Option<Session>,
    plate: Option<Session>,
    /// IST's generator and style bank.
    ist: Option<(Session, StyleBank)>,
    /// The execution provider the sessions run on.
    pub provider: ExecutionProvider,
}

fn session(
    rt: &OnnxRuntime,
    path: &Path,
    config: &InferenceConfig,
    provider: &mut ExecutionProvider,
) -> Result<Session, EngineError> {
    let load = |message: String| EngineError::Load {
        path: path.display().to_string(),
        message,
    };
    if *provider == ExecutionProvider::Cuda {
        let cuda = ort::ep::CUDA::default().build().error_on_failure();
        let attempt = Session::builder(&rt.environment)
            .map_err(|e| e.to_string())
            .and_then(|b| {
                b.with_execution_providers([cuda])
                    .map_err(|e| e.to_string())
            })
            .and_then(|b| {
                b.with_intra_threads(config.intra_op_threads)
                    .map_err(|e| e.to_string())
            })
            .and_then(|b| {
                b.with_intra_op_spinning(config.spinning)
                    .map_err(|e| e.to_string())
            })
            .and_then(|mut b| b.commit_from_file(path).map_err(|e| e.to_string()));
        match attempt {
            Ok(s) => return Ok(s),
            Err(why) => {
                tracing::error!(graph = %path.display(), %why, "the CUDA execution provider cannot be registered; running on CPU");
                *provider = ExecutionProvider::Cpu;
            }
        }
    }
    rt.session(path, config.intra_op_threads, config.spinning)
        .map_err(|e| load(e.to_string()))
}

impl Engine {
    /// Load the bundle's graphs on the configured execution provider
    /// (CUDA falls back to CPU, logged as an error).
    pub fn load(
        rt: &OnnxRuntime,
        bundle: Bundle,
        config: &InferenceConfig,
    ) -> Result<Engine, EngineError> {
        let mut provider = config.execution_provider;
        let g = bundle.manifest.graphs.clone();
        let path = |f: &str| bundle.dir.join(f);
        let predictor = session(rt, &path(&g.predictor), config, &mut provider)?;
        let optional = |f: &Option<String>,
                        provider: &mut ExecutionProvider|
         -> Result<Option<Session>, EngineError> {
            f.as_ref()
                .map(|f| session(rt, &path(f), config, provider))
                .transpose()
        };
        let stats = optional(&g.predictor_stats, &mut provider)?;
        let plate = optional(&g.predictor_plate, &mut provider)?;
        let ist = match (optional(&g.ist_generator, &mut provider)?, &g.style_bank) {
            (Some(generator), Some(bank)) => {
                let bank = StyleBank::read(&path(bank))
                    .map_err(|e| EngineError::StyleBank(e.to_string()))?;
                Some((generator, bank))
            }
            _ => None,
        };
        Ok(Engine {
            bundle,
            predictor,
            stats,
            plate,
            ist,
            provider,
        })
    }

    /// The bundle.
    pub fn bundle(&self) -> &Bundle {
        &self.bundle
    }

    /// Embeddings of the sites of `batch` with the training statistics.
    pub fn embed(&mut self, batch: SiteBatch) -> Result<Array2<f32>, EngineError> {
        let tiles = batch.tiles().to_vec();
        let outputs = self
            .predictor
            .run(vec![(
                "image".to_string(),
                image_value(batch.into_images())?,
            )])
            .map_err(run_error)?;
        site_means(&embedding(&outputs)?, &tiles)
    }

    /// IST test-time correction: each image of site `i` restyled with the
    /// `styles` bank codes [`styles_for`] draws for `keys[i]`, the
    /// predictor's embeddings averaged over the site's images and styles.
    pub fn embed_ist(
        &mut self,
        sites: &SiteBatch,
        keys: &[String],
        styles: usize,
    ) -> Result<Array2<f32>, EngineError> {
        let (generator, bank) = self
            .ist
            .as_mut()
            .ok_or(EngineError::Missing("ist_generator"))?;
        let k = styles.max(1);
        let mut images = Vec::new();
        let mut codes = Vec::new();
        let mut counts = Vec::with_capacity(sites.len());
        let mut tiles = sites.images().outer_iter();
        for (&n, key) in sites.tiles().iter().zip(keys) {
            let picks = styles_for(key, k, bank.len());
            for tile in tiles.by_ref().take(n) {
                for &p in &picks {
                    images.push(tile.insert_axis(Axis(0)));
                    codes.extend_from_slice(bank.code(p));
                }
            }
            counts.push(n * k);
        }
        let batch = concatenate(Axis(0), &images).map_err(run_error)?;
        let style = Tensor::from_array((vec![codes.len() / bank.dim, bank.dim], codes))
            .map_err(run_error)?;
        let restyled = {
            let outputs = generator
                .run(vec![
                    ("image".to_string(), image_value(batch)?),
                    ("style".to_string(), style.into_dyn()),
                ])
                .map_err(run_error)?;
            let (shape, data) = outputs["restyled"]
                .try_extract_tensor::<f32>()
                .map_err(run_error)?;
            let dims: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
            Array4::from_shape_vec((dims[0], dims[1], dims[2], dims[3]), data.to_vec())
                .map_err(run_error)?
        };
        let outputs = self
            .predictor
            .run(vec![("image".to_string(), image_value(restyled)?)])
            .map_err(run_error)?;
        site_means(&embedding(&outputs)?, &counts)
    }

    /// The BatchNorm statistics of the sites of `batch` taken together (AdaBN).
    pub fn plate_stats(&mut self, batch: SiteBatch) -> Result<PlateStats, EngineError> {
        let layers = self.bundle.manifest.adabn_layers.clone();
        let session = self
            .stats
            .as_mut()
            .ok_or(EngineError::Missing("predictor_stats"))?;
        let outputs = session
            .run(vec![(
                "image".to_string(),
                image_value(batch.into_images())?,
            )])
            .map_err(run_error)?;
        let get = |name: String| -> Result<Vec<f32>, EngineError> {
            let (_, data) = outputs[name.as_str()]
                .try_extract_tensor::<f32>()
                .map_err(run_error)?;
            Ok(data.to_vec())
        };
        let layers = layers
            .iter()
            .map(|l| {
                Ok((
                    get(format!("{}.mean", l.name))?,
                    get(format!("{}.var", l.name))?,
                ))
            })
            .collect::<Result<Vec<_>, EngineError>>()?;
        Ok(PlateStats { layers })
    }

    /// Embeddings of the sites of `batch` normalized with a plate's statistics.
    pub fn embed_with(
        &mut self,
        batch: SiteBatch,
        stats: &PlateStats,
    ) -> Result<Array2<f32>, EngineError> {
        let layers = self.bundle.manifest.adabn_layers.clone();
        let session = self
            .plate
            .as_mut()
            .ok_or(EngineError::Missing("predictor_plate"))?;
        let tiles = batch.tiles().to_vec();
        let mut inputs: Vec<(String, DynValue)> =
            vec![("image".to_string(), image_value(batch.into_images())?)];
        for (l, (m, v)) in layers.iter().zip(&stats.layers) {
            for (suffix, values) in [("mean", m), ("var", v)] {
                let t =
                    Tensor::from_array((vec![values.len()], values.clone())).map_err(run_error)?;
                inputs.push((format!("{}.{suffix}", l.name), t.into_dyn()));
            }
        }
        let outputs = session.run(inputs).map_err(run_error)?;
        site_means(&embedding(&outputs)?, &tiles)
    }
}

/// The `k` style-bank rows (of `bank`) site `key` is restyled with: a
/// splitmix64 stream seeded by the key's sha256, so a site gets the same
/// styles in every run and replay.
pub fn styles_for(key: &str, k: usize, bank: usize) -> Vec<usize> {
    let digest = bfx_core::bundle::hex_sha256(key.as_bytes());
    // 16 hex digits are 64 bits; a sha256 hex string has 64 digits.
    let mut state = u64::from_str_radix(&digest[..16], 16).expect("hex digits");
    (0..k)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) % bank.max(1) as u64) as usize
        })
        .collect()
}

fn image_value(batch: Array4<f32>) -> Result<DynValue, EngineError> {
    Ok(Tensor::from_array(batch).map_err(run_error)?.into_dyn())
}

fn embedding(outputs: &ort::session::SessionOutputs<'_>) -> Result<Array2<f32>, EngineError> {
    let (shape, data) = outputs["embedding"]
        .try_extract_tensor::<f32>()
        .map_err(run_error)?;
    let (n, d) = (shape[0] as usize, shape[1] as usize);
    Array2::from_shape_vec((n, d), data.to_vec()).map_err(run_error)
}

/// Mean of each site's tile embeddings.
fn site_means(images: &Array2<f32>, tiles: &[usize]) -> Result<Array2<f32>, EngineError> {
    let d = images.ncols();
    let mut out = Array2::zeros((tiles.len(), d));
    let mut at = 0;
    for (i, &t) in tiles.iter().enumerate() {
        let mean = images
            .slice(ndarray::s![at..at + t, ..])
            .mean_axis(Axis(0))
            .ok_or_else(|| EngineError::Run("a site without images".into()))?;
        out.row_mut(i).assign(&mean);
        at += t;
    }
    Ok(out)
}
