//! MixStyle (Zhou et al. 2021): after the first two stages, with
//! probability p, each image's feature statistics are mixed with those of
//! another image of the batch, mixing weight ~ Beta(alpha, alpha).

use candle_core::{Result, Tensor};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Beta, Distribution};
use serde::Deserialize;

use super::layers::mix_style;
use super::{Batch, Method, MethodContext, Terms, cross_entropy};
use crate::dataset::SamplerKind;
use crate::model::Classifier;
use crate::nn::NormPass;
use crate::optim::AdamW;

/// `[trainer.method.params]` of MixStyle.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    /// Probability of mixing at each stage (default 0.5).
    pub p: f64,
    /// Beta distribution parameter (default 0.1).
    pub alpha: f64,
    /// Stages after which to mix, 0-based (default [0, 1]: res1 and res2).
    pub stages: Vec<usize>,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            p: 0.5,
            alpha: 0.1,
            stages: vec![0, 1],
        }
    }
}

/// MixStyle training.
pub struct MixStyle {
    params: Params,
    rng: ChaCha8Rng,
}

impl MixStyle {
    /// MixStyle with its own random stream.
    pub fn new(params: Params, ctx: &MethodContext) -> MixStyle {
        MixStyle {
            params,
            rng: ChaCha8Rng::seed_from_u64(ctx.seed),
        }
    }
}

impl Method for MixStyle {
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
        let b = batch.x.dim(0)?;
        let beta = Beta::new(self.params.alpha, self.params.alpha)
            .map_err(|e| candle_core::Error::Msg(format!("trainer.method.params.alpha: {e}")))?;
        let (params, rng) = (&self.params, &mut self.rng);
        let mut hook = |stage: usize, h: Tensor| -> Result<Tensor> {
            if !params.stages.contains(&stage) || rng.random::<f64>() >= params.p {
                return Ok(h);
            }
            let lambda: Vec<f32> = (0..b).map(|_| beta.sample(rng) as f32).collect();
            let mut perm: Vec<u32> = (0..b as u32).collect();
            perm.shuffle(rng);
            let lambda = Tensor::new(lambda, h.device())?.to_dtype(h.dtype())?;
            mix_style(&h, &lambda, &Tensor::new(perm, h.device())?)
        };
        let features = model.features_with(&batch.x, &mut NormPass::train(), &mut hook)?;
        let logits = model.logits(&model.embed(&features)?)?;
        let loss = cross_entropy(&logits, &batch.y)?;
        opt.step(&loss.backward()?)?;
        Ok(vec![("ce", loss.to_scalar::<f32>()?)])
    }
}
