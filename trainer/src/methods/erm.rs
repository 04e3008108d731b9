//! ERM: plain cross-entropy on uniformly drawn minibatches.

use candle_core::Result;
use serde::Deserialize;

use super::{Batch, Method, Terms, cross_entropy};
use crate::dataset::SamplerKind;
use crate::model::Classifier;
use crate::nn::NormPass;
use crate::optim::AdamW;

/// ERM has no parameters.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Params {}

/// Empirical risk minimization.
pub struct Erm;

impl Erm {
    /// ERM.
    pub fn new(_: Params) -> Erm {
        Erm
    }
}

impl Method for Erm {
    fn sampler(&self, _: usize) -> SamplerKind {
        SamplerKind::Uniform
    }

    fn step(
        &mut self,
        model: &Classifier,
        batch: &Batch,
        opt: &mut AdamW,
        _: usize,
    ) -> Result<Terms> {
        let (_, logits) = model.forward(&batch.x, &mut NormPass::train())?;
        let loss = cross_entropy(&logits, &batch.y)?;
        opt.step(&loss.backward()?)?;
        Ok(vec![("ce", loss.to_scalar::<f32>()?)])
    }
}
