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
//!
//! With `decoder = true` a decoder (under `adversary.scbd_decoder`, with
//! its own AdamW) learns to reconstruct each image from its detached
//! (z_c, z_e); `bfx-trainer swap` then decodes z_c of one image with z_e
//! of another. Its optimizer state is not checkpointed: on `--resume` it
//! restarts, the embeddings do not change.

use candle_core::{DType, Result, Tensor};
use candle_nn::{Module, VarBuilder};
use serde::Deserialize;

use super::contrastive::{invariance, supcon};
use super::decoder::Decoder;
use super::{Batch, Method, MethodContext, Terms};
use crate::dataset::SamplerKind;
use crate::model::{Classifier, Embed, EmbedHead, seeded_init};
use crate::nn::{NormPass, ResNet};
use crate::optim::{AdamW, trainable};

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
    /// Train the decoder for swap grids (default false).
    pub decoder: bool,
    /// Learning rate of the decoder's AdamW (default 1e-3).
    pub decoder_lr: f64,
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
            decoder: false,
            decoder_lr: 1e-3,
        }
    }
}

/// SCBD training.
pub struct Scbd {
    params: Params,
    envs: u32,
    env_encoder: ResNet,
    env_embed: Embed,
    decoder: Option<(Decoder, AdamW)>,
}

/// SCBD's loss terms of one batch.
struct Losses {
    class: Tensor,
    env: Tensor,
    invariance: Tensor,
    total: Tensor,
    z_c: Tensor,
    z_e: Tensor,
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
        let decoder = if params.decoder {
            let prefix = "adversary.scbd_decoder";
            let vb = VarBuilder::from_varmap(ctx.map, DType::F32, ctx.device).pp(prefix);
            let z = 2 * ctx.spec.embedding_dim;
            let d = Decoder::new(z, ctx.image, spec.width, vb)?;
            seeded_init(ctx.map, prefix, ctx.seed ^ 1)?;
            let opt = AdamW::new(trainable(ctx.map, prefix), params.decoder_lr, 0.0)?;
            Some((d, opt))
        } else {
            None
        };
        Ok(Scbd {
            params,
            envs: ctx.envs as u32,
            env_encoder,
            env_embed,
            decoder,
        })
    }

    /// z_e's contrastive labels.
    fn env_labels(&self, y: &[u32], e: &[u32]) -> Vec<u32> {
        match self.params.env_labels {
            EnvLabels::Env => e.to_vec(),
            EnvLabels::ClassEnv => y.iter().zip(e).map(|(y, e)| y * self.envs + e).collect(),
        }
    }

    /// `(z_c, z_e)` of images `x`, each encoder with its own `pass`.
    fn embeddings(
        &self,
        model: &Classifier,
        x: &Tensor,
        pass: fn() -> NormPass,
    ) -> Result<(Tensor, Tensor)> {
        let z_c = model.embed(&model.features_with(x, &mut pass(), &mut |_, t| Ok(t))?)?;
        let z_e = self
            .env_embed
            .forward(&self.env_encoder.forward(x, &mut pass())?)?;
        Ok((z_c, z_e))
    }

    fn losses(&self, model: &Classifier, batch: &Batch, pass: fn() -> NormPass) -> Result<Losses> {
        let tau = self.params.temperature;
        let y = batch.y.to_vec1::<u32>()?;
        let e = batch.env.to_vec1::<u32>()?;
        let (z_c, z_e) = self.embeddings(model, &batch.x, pass)?;
        let class = supcon(&z_c, &y, tau)?;
        let env = supcon(&z_e, &self.env_labels(&y, &e), tau)?;
        let invariance = invariance(&z_c, &e, tau)?;
        let total = ((&class + &env)? + (&invariance * self.params.alpha)?)?;
        Ok(Losses {
            class,
            env,
            invariance,
            total,
            z_c,
            z_e,
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
        let mut terms = vec![
            ("loss", scalar(&l.total)?),
            ("supcon_c", scalar(&l.class)?),
            ("supcon_e", scalar(&l.env)?),
            ("inv", scalar(&l.invariance)?),
        ];
        if let Some((decoder, decoder_opt)) = &mut self.decoder {
            let z = Tensor::cat(&[l.z_c.detach(), l.z_e.detach()], 1)?;
            let recon = (decoder.forward(&z)? - &batch.x)?.sqr()?.mean_all()?;
            decoder_opt.step(&recon.backward()?)?;
            terms.push(("recon", scalar(&recon)?));
        }
        Ok(terms)
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

impl Scbd {
    /// The swap grid of `x` (`n` images): image `n * i + j` decodes z_c of
    /// image `i` with z_e of image `j`, running statistics throughout.
    pub fn swap(&self, model: &Classifier, x: &Tensor) -> Result<Tensor> {
        let Some((decoder, _)) = &self.decoder else {
            candle_core::bail!(
                "this SCBD run was trained without a decoder (method parameter decoder = true)"
            );
        };
        let n = x.dim(0)?;
        let z_c =
            model.embed(&model.features_with(x, &mut NormPass::eval(), &mut |_, t| Ok(t))?)?;
        let z_e = self
            .env_embed
            .forward(&self.env_encoder.forward(x, &mut NormPass::eval())?)?;
        let d = z_c.dim(1)?;
        let content = z_c
            .unsqueeze(1)?
            .broadcast_as((n, n, d))?
            .reshape((n * n, d))?;
        let style = z_e
            .unsqueeze(0)?
            .broadcast_as((n, n, d))?
            .reshape((n * n, d))?;
        decoder.forward(&Tensor::cat(&[content, style], 1)?)
    }
}
