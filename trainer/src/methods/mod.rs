//! Training methods, each a small unit with one training step
//! (DomainBed-style). Adding a method: one file here and one line in
//! [`build`].

mod abra;
pub mod contrastive;
mod dann;
pub mod decoder;
mod erm;
pub mod ist;
pub mod layers;
mod mixstyle;
pub mod scbd;

use candle_core::{Device, Result, Tensor};
use candle_nn::VarMap;
use serde::de::DeserializeOwned;
use thiserror::Error;

use crate::dataset::SamplerKind;
use crate::model::{Classifier, EmbedHead, ModelSpec};
use crate::optim::AdamW;

/// One minibatch on the training device.
pub struct Batch {
    /// Images `[b, c, h, w]`.
    pub x: Tensor,
    /// Class index per image, u32 `[b]`.
    pub y: Tensor,
    /// Training environment (plate) index per image, u32 `[b]`.
    pub env: Tensor,
}

/// Named loss terms of one step, for the progress bar and logs.
pub type Terms = Vec<(&'static str, f32)>;

/// What a method knows about the run when it is built.
pub struct MethodContext<'a> {
    /// Variables: the model's under `model.`, the method's own under
    /// `method.` (optimized with the model) or `adversary.` (not).
    pub map: &'a VarMap,
    /// Device.
    pub device: &'a Device,
    /// The model's architecture.
    pub spec: &'a ModelSpec,
    /// Training environments (plates).
    pub envs: usize,
    /// Total optimizer steps of the run (for schedules).
    pub steps: usize,
    /// Seed of the method's own random choices.
    pub seed: u64,
    /// Shape `[c, h, w]` of the training images.
    pub image: [usize; 3],
}

/// A training method.
pub trait Method {
    /// The minibatches it trains on.
    fn sampler(&self, batch_size: usize) -> SamplerKind;
    /// One training step on `batch`: losses, backward, `opt.step`.
    fn step(
        &mut self,
        model: &Classifier,
        batch: &Batch,
        opt: &mut AdamW,
        step: usize,
    ) -> Result<Terms>;
    /// Steps the method trains its own networks before the classifier
    /// (IST's encoder and generator); the run lasts this many steps plus
    /// `trainer.optim.steps`, and validates only during the latter.
    fn pretraining_steps(&self) -> usize {
        0
    }
    /// Whether the class head is not trained by the method but fitted as
    /// a linear probe on the training embeddings at every validation.
    fn fits_probe_head(&self) -> bool {
        false
    }
    /// The loss of one validation batch (running statistics) that model
    /// selection minimizes, given the classifier's `logits` for it;
    /// `None` when the batch cannot measure it. By default the
    /// classifier's cross-entropy.
    fn validation_loss(
        &self,
        _model: &Classifier,
        batch: &Batch,
        logits: &Tensor,
    ) -> Result<Option<f32>> {
        Ok(Some(
            cross_entropy(logits, &batch.y)?
                .to_dtype(candle_core::DType::F32)?
                .to_scalar::<f32>()?,
        ))
    }
}

/// Why a method could not be built.
#[derive(Debug, Error)]
pub enum MethodError {
    /// No such method.
    #[error("unknown method {name:?}; methods: {}", METHODS.join(", "))]
    Unknown {
        /// The name asked for.
        name: String,
    },
    /// Its parameters are wrong.
    #[error("trainer.method.params: {0}")]
    Params(String),
    /// Creating its variables failed.
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// Registered method names.
pub const METHODS: [&str; 6] = ["erm", "abra", "dann", "mixstyle", "scbd", "ist"];

/// The embedding head method `name` trains (SCBD embeds on the unit sphere).
pub fn embed_head(name: &str) -> EmbedHead {
    match name {
        "scbd" => EmbedHead::Projection,
        _ => EmbedHead::Linear,
    }
}

/// Build method `name` with its `params` table.
pub fn build(
    name: &str,
    params: &toml::Table,
    ctx: &MethodContext,
) -> std::result::Result<Box<dyn Method>, MethodError> {
    Ok(match name {
        "erm" => Box::new(erm::Erm::new(parse(params)?)),
        "abra" => Box::new(abra::Abra::new(parse(params)?, ctx)?),
        "dann" => Box::new(dann::Dann::new(parse(params)?, ctx)?),
        "mixstyle" => Box::new(mixstyle::MixStyle::new(parse(params)?, ctx)),
        "scbd" => Box::new(scbd::Scbd::new(parse(params)?, ctx)?),
        "ist" => Box::new(ist::Ist::new(parse(params)?, ctx)?),
        other => {
            return Err(MethodError::Unknown {
                name: other.to_owned(),
            });
        }
    })
}

/// A method's parameters from its table (unknown keys refused, defaults filled).
pub fn parse<P: DeserializeOwned>(params: &toml::Table) -> std::result::Result<P, MethodError> {
    toml::Value::Table(params.clone())
        .try_into()
        .map_err(|e: toml::de::Error| MethodError::Params(e.message().to_owned()))
}

/// Mean cross-entropy of logits against class indices.
pub fn cross_entropy(logits: &Tensor, y: &Tensor) -> Result<Tensor> {
    candle_nn::loss::cross_entropy(logits, y)
}
