//! SCBD (Supervised Contrastive Block Disentanglement): two encoders, f_c
//! for the biology and f_e for the environment, each with a projection
//! head onto the unit sphere. z_c is pulled together by class (SupCon on
//! y) and made equally close to its own and to other environments
//! (the invariance penalty, weight alpha); z_e is pulled together by
//! environment, or by (class, environment) for domain generalization.
//!
//! The model's f_c is the classifier's encoder and projection head (the
//! exported embedding is z_c); f_e lives under `method.env`. The class
//! head never shapes the embedding: at every validation it is refitted as
//! a linear probe on the training images' z_c (`fit::probe`), which gives
//! `eval`, export and the daemon their class scores.
//! Training draws y-grouped minibatches so every anchor has positives.

use candle_core::{DType, Result, Tensor};
use candle_nn::{Module, VarBuilder};
use serde::Deserialize;

use super::contrastive::{invariance, supcon};
use super::{Batch, Method, MethodContext, Terms};
use crate::dataset::SamplerKind;
use crate::model::{Classifier, Embed, EmbedHead, seeded_init};
use crate::nn::{NormPass, ResNet};
use crate::optim::AdamW;

/// What z_e is trained to group by.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum EnvLabels {
    /// The environment (plate): batch correction.
    Env,
    /// The pair (class, environment): domain generalization.
    ClassEnv,
}

/// `[trainer.method.params]` of SCBD.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    /// Weight of the invariance penalty (default 64).
    pub alpha: f64,
    /// Temperature of both contrastive losses (default 0.1).
    pub temperature: f64,
    /// Labels of z_e's contrastive loss (default `env`).
    pub env_labels: EnvLabels,
    /// Images per class in a y-grouped minibatch (default 4; the batch
    /// holds `batch_size / per_class` classes: 8 at batch 32, so each
    /// anchor meets negatives of many classes).
    pub per_class: usize,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            alpha: 64.0,
            temperature: 0.1,
            env_labels: EnvLabels::Env,
            per_class: 4,
        }
    }
}

/// SCBD training.
pub struct Scbd {
    params: Params,
    envs: u32,
    env_encoder: ResNet,
    env_embed: Embed,
}

/// SCBD's loss terms of one batch.
struct Losses {
    class: Tensor,
    env: Tensor,
    invariance: Tensor,
    total: Tensor,
}

impl Scbd {
    /// SCBD with its environment encoder under `method.env`.
    pub fn new(
        params: Params,
        ctx: &MethodContext,
    ) -> std::result::Result<Scbd, super::MethodError> {
        if params.per_class < 2 {
            return Err(super::MethodError::Params(
                "per_class must be at least 2 so every image has a positive".into(),
            ));
        }
        let temperature_ok = params.temperature.is_finite() && params.temperature > 0.0;
        let alpha_ok = params.alpha.is_finite() && params.alpha >= 0.0;
        if !temperature_ok || !alpha_ok {
            return Err(super::MethodError::Params(
                "temperature must be > 0 and alpha >= 0".into(),
            ));
        }
        let vb = VarBuilder::from_varmap(ctx.map, DType::F32, ctx.device).pp("method.env");
        let spec = &ctx.spec.encoder;
        let env_encoder = ResNet::new(spec, vb.pp("encoder"))?;
        let env_embed = Embed::new(
            EmbedHead::Projection,
            spec.feature_dim(),
            ctx.spec.embedding_dim,
            vb.pp("embed"),
        )?;
        seeded_init(ctx.map, "method.env", ctx.seed)?;
        Ok(Scbd {
            params,
            envs: ctx.envs as u32,
            env_encoder,
            env_embed,
        })
    }

    /// z_e's contrastive labels.
    fn env_labels(&self, y: &[u32], e: &[u32]) -> Vec<u32> {
        match self.params.env_labels {
            EnvLabels::Env => e.to_vec(),
            EnvLabels::ClassEnv => y.iter().zip(e).map(|(y, e)| y * self.envs + e).collect(),
        }
    }

    fn losses(&self, model: &Classifier, batch: &Batch, pass: fn() -> NormPass) -> Result<Losses> {
        let tau = self.params.temperature;
        let y = batch.y.to_vec1::<u32>()?;
        let e = batch.env.to_vec1::<u32>()?;
        let z_c = model.embed(&model.features_with(&batch.x, &mut pass(), &mut |_, t| Ok(t))?)?;
        let z_e = self
            .env_embed
            .forward(&self.env_encoder.forward(&batch.x, &mut pass())?)?;
        let class = supcon(&z_c, &y, tau)?;
        let env = supcon(&z_e, &self.env_labels(&y, &e), tau)?;
        let invariance = invariance(&z_c, &e, tau)?;
        let total = ((&class + &env)? + (&invariance * self.params.alpha)?)?;
        Ok(Losses {
            class,
            env,
            invariance,
            total,
        })
    }
}

impl Method for Scbd {
    fn sampler(&self, batch_size: usize) -> SamplerKind {
        SamplerKind::YGrouped {
            classes: (batch_size / self.params.per_class).max(1),
            per_class: self.params.per_class,
        }
    }

    fn step(
        &mut self,
        model: &Classifier,
        batch: &Batch,
        opt: &mut AdamW,
        _: usize,
    ) -> Result<Terms> {
        let l = self.losses(model, batch, NormPass::train)?;
        opt.step(&l.total.backward()?)?;
        let scalar = |t: &Tensor| t.to_scalar::<f32>();
        Ok(vec![
            ("loss", scalar(&l.total)?),
            ("supcon_c", scalar(&l.class)?),
            ("supcon_e", scalar(&l.env)?),
            ("inv", scalar(&l.invariance)?),
        ])
    }

    fn fits_probe_head(&self) -> bool {
        true
    }

    /// SCBD's own loss with running statistics; a batch where no two
    /// images share a class (or an environment label) has no contrastive
    /// term to measure and is skipped.
    fn validation_loss(
        &self,
        model: &Classifier,
        batch: &Batch,
        _: &Tensor,
    ) -> Result<Option<f32>> {
        let y = batch.y.to_vec1::<u32>()?;
        let e = batch.env.to_vec1::<u32>()?;
        let pairs = |l: &[u32]| l.iter().enumerate().any(|(i, a)| l[i + 1..].contains(a));
        if !pairs(&y) || !pairs(&self.env_labels(&y, &e)) {
            return Ok(None);
        }
        let l = self.losses(model, batch, NormPass::eval)?;
        Ok(Some(l.total.to_scalar::<f32>()?))
    }
}
