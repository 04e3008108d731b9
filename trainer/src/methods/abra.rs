//! ABRA (Adversarial Batch Representation Augmentation): plate-consistent
//! minibatches; after the last residual stage (the paper's best, `res4`)
//! the batch's channel statistics are perturbed along learnable,
//! batch-shared directions with learnable magnitudes (Gaussian
//! reparameterization). Each step has two phases:
//! 1. adversarial: only the perturbation parameters ascend CE + ArcFace,
//!    the network detached;
//! 2. robust learning: the network minimizes CE + ArcFace on clean and
//!    perturbed features plus the Jensen-Shannon divergence between the
//!    two predictive distributions.
//!
//! At inference the module is off: the exported network is the plain
//! classifier.

use candle_core::{DType, Result, Tensor, Var};
use candle_nn::{Init, VarBuilder};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;

use super::layers::{Perturbation, arcface_logits, cutmix, js_divergence};
use super::{Batch, Method, MethodContext, Terms, cross_entropy};
use crate::dataset::SamplerKind;
use crate::model::{Classifier, seeded_init};
use crate::nn::{BnMode, NormPass};
use crate::optim::AdamW;

/// `[trainer.method.params]` of ABRA.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    /// ArcFace additive angular margin m, radians (default 0.3).
    pub margin: f64,
    /// ArcFace scale s (default 16).
    pub scale: f64,
    /// Weight of the ArcFace terms (default 1).
    pub arcface_weight: f64,
    /// Step size of the adversarial ascent, eta (default 0.1).
    pub eta: f64,
    /// Weight of the Jensen-Shannon term (default 1).
    pub js_weight: f64,
    /// Probability of CutMix within the (single-plate) batch per step (default 0: off).
    pub cutmix: f64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            margin: 0.3,
            scale: 16.0,
            arcface_weight: 1.0,
            eta: 0.1,
            js_weight: 1.0,
            cutmix: 0.0,
        }
    }
}

/// Labels of a batch, and with CutMix the partner's labels and the own share.
struct Labels {
    own: Tensor,
    mixed: Option<(Tensor, f64)>,
}

/// The residual stage ABRA follows (0-based; 3 = `res4`).
const STAGE: usize = 3;

/// ABRA training.
pub struct Abra {
    params: Params,
    /// Direction and magnitude of the mean and of the log-std perturbation.
    d_mu: Var,
    a_mu: Var,
    d_sigma: Var,
    a_sigma: Var,
    arcface: Tensor,
    rng: ChaCha8Rng,
}

impl Abra {
    /// ABRA: perturbation parameters under `adversary.abra` (updated only
    /// by the ascent), ArcFace class weights under `method.arcface`.
    pub fn new(params: Params, ctx: &MethodContext) -> Result<Abra> {
        let c = ctx.spec.encoder.stage_channels(STAGE);
        let vb = VarBuilder::from_varmap(ctx.map, DType::F32, ctx.device);
        let adv = vb.pp("adversary.abra");
        // softplus(-2.25) = 0.1: perturbations start at a tenth of a std.
        let var = |name: &str, init: f64| -> Result<Var> {
            Var::from_tensor(&adv.get_with_hints(c, name, Init::Const(init))?)
        };
        let arcface = vb.pp("method.arcface").get_with_hints(
            (ctx.spec.classes, ctx.spec.embedding_dim),
            "weight",
            Init::Const(0.0),
        )?;
        seeded_init(ctx.map, "method.arcface", ctx.seed)?;
        Ok(Abra {
            d_mu: var("d_mu", 0.0)?,
            a_mu: var("a_mu", -2.25)?,
            d_sigma: var("d_sigma", 0.0)?,
            a_sigma: var("a_sigma", -2.25)?,
            arcface,
            rng: ChaCha8Rng::seed_from_u64(ctx.seed),
            params,
        })
    }

    fn noise(&mut self, c: usize, like: &Tensor) -> Result<Tensor> {
        let v: Vec<f32> = (0..c)
            .map(|_| crate::random::standard_normal(&mut self.rng))
            .collect();
        Tensor::new(v, like.device())?.to_dtype(like.dtype())
    }

    /// CE on the classifier plus weighted ArcFace on the embedding; with
    /// CutMix, CE mixes the two labels by area and ArcFace takes the
    /// label that covers more of the image.
    fn loss(&self, model: &Classifier, embedding: &Tensor, y: &Labels) -> Result<(Tensor, Tensor)> {
        let logits = model.logits(embedding)?;
        let ce = match &y.mixed {
            None => cross_entropy(&logits, &y.own)?,
            Some((other, keep)) => {
                ((cross_entropy(&logits, &y.own)? * *keep)?
                    + (cross_entropy(&logits, other)? * (1.0 - keep))?)?
            }
        };
        let major = match &y.mixed {
            Some((other, keep)) if *keep < 0.5 => other,
            _ => &y.own,
        };
        let arc = arcface_logits(
            embedding,
            &self.arcface,
            major,
            self.params.margin,
            self.params.scale,
        )?;
        Ok((
            ce,
            (cross_entropy(&arc, major)? * self.params.arcface_weight)?,
        ))
    }

    /// CutMix the batch with probability `cutmix`: a box of random area
    /// (uniform) from a random partner of the same batch, thus the same plate.
    fn maybe_cutmix(&mut self, batch: &Batch) -> Result<(Tensor, Labels)> {
        let own = Labels {
            own: batch.y.clone(),
            mixed: None,
        };
        if self.params.cutmix <= 0.0 || self.rng.random::<f64>() >= self.params.cutmix {
            return Ok((batch.x.clone(), own));
        }
        let (b, _, h, w) = batch.x.dims4()?;
        let mut perm: Vec<u32> = (0..b as u32).collect();
        perm.shuffle(&mut self.rng);
        let side = self.rng.random::<f64>().sqrt();
        let (bh, bw) = (((h as f64) * side) as usize, ((w as f64) * side) as usize);
        let y0 = self.rng.random_range(0..=h - bh);
        let x0 = self.rng.random_range(0..=w - bw);
        let perm = Tensor::new(perm, batch.x.device())?;
        let (x, keep) = cutmix(&batch.x, &perm, (y0, x0, bh, bw))?;
        let other = batch.y.index_select(&perm, 0)?;
        Ok((
            x,
            Labels {
                own: batch.y.clone(),
                mixed: Some((other, keep)),
            },
        ))
    }
}

impl Method for Abra {
    fn sampler(&self, _: usize) -> SamplerKind {
        SamplerKind::PlateConsistent
    }

    fn step(
        &mut self,
        model: &Classifier,
        batch: &Batch,
        opt: &mut AdamW,
        _: usize,
    ) -> Result<Terms> {
        let c = self.d_mu.dim(0)?;
        let eps_mu = self.noise(c, &batch.x)?;
        let eps_sigma = self.noise(c, &batch.x)?;
        let b = batch.x.dim(0)?;
        let (x, y) = self.maybe_cutmix(batch)?;

        // Phase 1: the perturbation ascends the loss; the network is detached
        // (features cut at the module, running statistics untouched).
        let adversarial = {
            let p = Perturbation {
                d_mu: self.d_mu.as_tensor(),
                a_mu: self.a_mu.as_tensor(),
                d_sigma: self.d_sigma.as_tensor(),
                a_sigma: self.a_sigma.as_tensor(),
                eps_mu: &eps_mu,
                eps_sigma: &eps_sigma,
            };
            let mut hook = |stage: usize, h: Tensor| {
                if stage == STAGE {
                    p.apply(&h.detach())
                } else {
                    Ok(h)
                }
            };
            let features = model.features_with(&x, &mut NormPass::new(BnMode::Batch), &mut hook)?;
            let (ce, arc) = self.loss(model, &model.embed(&features)?, &y)?;
            (ce + arc)?
        };
        let grads = adversarial.backward()?;
        for v in [&self.d_mu, &self.a_mu, &self.d_sigma, &self.a_sigma] {
            if let Some(g) = grads.get(v.as_tensor()) {
                v.set(&(v.as_tensor() + (g * self.params.eta)?)?)?;
            }
        }

        // Phase 2: the same batch, clean and perturbed side by side (the
        // perturbation fixed), and the network learns from both.
        let p = Perturbation {
            d_mu: &self.d_mu.as_detached_tensor(),
            a_mu: &self.a_mu.as_detached_tensor(),
            d_sigma: &self.d_sigma.as_detached_tensor(),
            a_sigma: &self.a_sigma.as_detached_tensor(),
            eps_mu: &eps_mu,
            eps_sigma: &eps_sigma,
        };
        let mut hook = |stage: usize, h: Tensor| {
            if stage == STAGE {
                Tensor::cat(&[&h, &p.apply(&h)?], 0)
            } else {
                Ok(h)
            }
        };
        let features = model.features_with(&x, &mut NormPass::train(), &mut hook)?;
        let embedding = model.embed(&features)?;
        let (clean, perturbed) = (embedding.narrow(0, 0, b)?, embedding.narrow(0, b, b)?);
        let (ce_clean, arc_clean) = self.loss(model, &clean, &y)?;
        let (ce_pert, arc_pert) = self.loss(model, &perturbed, &y)?;
        let js = js_divergence(&model.logits(&clean)?, &model.logits(&perturbed)?)?;
        let loss = (((&ce_clean + &arc_clean)? + (&ce_pert + &arc_pert)?)?
            + (&js * self.params.js_weight)?)?;
        opt.step(&loss.backward()?)?;
        Ok(vec![
            ("ce", ce_clean.to_scalar::<f32>()?),
            ("ce_pert", ce_pert.to_scalar::<f32>()?),
            ("arc", arc_clean.to_scalar::<f32>()?),
            ("js", js.to_scalar::<f32>()?),
            ("adv", adversarial.to_scalar::<f32>()?),
        ])
    }
}
