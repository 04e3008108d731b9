//! DANN (Ganin et al.): an environment classifier on the embedding behind
//! a gradient-reversal layer, so the encoder learns features the plate
//! cannot be told from.

use candle_core::Result;
use candle_nn::{Linear, Module, VarBuilder, linear};
use serde::Deserialize;

use super::layers::grad_reverse;
use super::{Batch, Method, MethodContext, Terms, cross_entropy};
use crate::dataset::SamplerKind;
use crate::model::{Classifier, seeded_init};
use crate::nn::NormPass;
use crate::optim::AdamW;

/// `[trainer.method.params]` of DANN.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    /// Final weight of the reversed environment loss (default 1.0).
    pub lambda: f64,
    /// Hidden width of the environment classifier (default 64).
    pub hidden: usize,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            lambda: 1.0,
            hidden: 64,
        }
    }
}

/// Domain-adversarial training.
pub struct Dann {
    params: Params,
    hidden: Linear,
    out: Linear,
    steps: usize,
}

impl Dann {
    /// DANN with its environment classifier under `method.domain`.
    pub fn new(params: Params, ctx: &MethodContext) -> Result<Dann> {
        let vb = VarBuilder::from_varmap(ctx.map, candle_core::DType::F32, ctx.device)
            .pp("method.domain");
        let hidden = linear(ctx.spec.embedding_dim, params.hidden, vb.pp("hidden"))?;
        let out = linear(params.hidden, ctx.envs.max(2), vb.pp("out"))?;
        seeded_init(ctx.map, "method.domain", ctx.seed)?;
        Ok(Dann {
            params,
            hidden,
            out,
            steps: ctx.steps,
        })
    }
}

impl Method for Dann {
    fn sampler(&self, _: usize) -> SamplerKind {
        SamplerKind::Uniform
    }

    fn step(
        &mut self,
        model: &Classifier,
        batch: &Batch,
        opt: &mut AdamW,
        step: usize,
    ) -> Result<Terms> {
        // The paper's schedule: the reversal weight grows from 0 to lambda.
        let p = step as f64 / self.steps.max(1) as f64;
        let lambda = self.params.lambda * (2.0 / (1.0 + (-10.0 * p).exp()) - 1.0);
        let (embedding, logits) = model.forward(&batch.x, &mut NormPass::train())?;
        let ce = cross_entropy(&logits, &batch.y)?;
        let domain = self.out.forward(
            &self
                .hidden
                .forward(&grad_reverse(&embedding, lambda)?)?
                .relu()?,
        )?;
        let env = cross_entropy(&domain, &batch.env)?;
        let loss = (&ce + &env)?;
        opt.step(&loss.backward()?)?;
        Ok(vec![
            ("ce", ce.to_scalar::<f32>()?),
            ("env", env.to_scalar::<f32>()?),
            ("lambda", lambda as f32),
        ])
    }
}
