//! IST (Interventional Style Transfer) in three phases over one run:
//!
//! 1. **Encoder** (`encoder_steps`): E, a ResNet18 of the classifier's
//!    width and norm, learns to predict both the class and the environment
//!    (plate) of every image. Frozen afterwards (BatchNorm with its
//!    running statistics).
//! 2. **Generator** (`generator_steps`): G renders a content image (drawn
//!    class-balanced) in the style of a style image (drawn
//!    environment-balanced), from E's stage maps and the style code (E's
//!    per-channel feature statistics). Its loss: the adversarial term of
//!    the critic D's head for the style image's environment, plus
//!    `lambda_style` x style (Gram matrices), `lambda_cycle` x cycle,
//!    `lambda_content` x content and `lambda_class` x class matching
//!    ([`losses`]). D starts as a copy of E with one real/fake head per
//!    training environment and is trained against G.
//! 3. **Predictor** (the run's `trainer.optim.steps`): the classifier
//!    trains on the interventional distribution: every content image
//!    restyled with a random training image's style.
//!
//! The paper's networks use InstanceNorm (`trainer.model.norm =
//! "instance"`). At 32x32 inputs a ResNet18's last stage is 1x1 and its
//! third 2x2, where InstanceNorm leaves (almost) nothing: ERM with
//! InstanceNorm does not learn the tiny screen at all. So IST uses the
//! configured norm, BatchNorm by default.
//!
//! Phases 1 and 2 are [`Method::pretraining_steps`]: the fit loop validates
//! and selects checkpoints only during phase 3. E, G and D live under
//! `adversary.ist` with AdamW optimizers of their own, whose state is not
//! checkpointed (a resumed run restarts their moments).

pub mod losses;

use candle_core::{DType, Result, Tensor};
use candle_nn::{Module, VarBuilder};
use serde::Deserialize;

use super::{Batch, Method, MethodContext, MethodError, Terms, cross_entropy};
use crate::dataset::SamplerKind;
use crate::model::{Classifier, seeded_init};
use crate::nn::NormPass;
use crate::nn::ist::{IST_PREFIX, StyleTransfer, spec_for, style_code};
use crate::optim::{AdamW, trainable};

/// `[trainer.method.params]` of IST.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Params {
    /// Steps of encoder pre-training (default 200).
    pub encoder_steps: usize,
    /// Steps of generator and critic training (default 400).
    pub generator_steps: usize,
    /// Learning rate of the encoder (default 1e-3).
    pub encoder_lr: f64,
    /// Learning rate of the generator and the critic (default 1e-3).
    pub generator_lr: f64,
    /// Weight of the style loss (lambda_1).
    pub lambda_style: f64,
    /// Weight of the cycle-consistency loss (lambda_2).
    pub lambda_cycle: f64,
    /// Weight of the content loss (lambda_3).
    pub lambda_content: f64,
    /// Weight of the class-matching loss (lambda_4).
    pub lambda_class: f64,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            encoder_steps: 200,
            generator_steps: 400,
            encoder_lr: 1e-3,
            generator_lr: 1e-3,
            lambda_style: 1.0,
            lambda_cycle: 1.0,
            lambda_content: 1.0,
            lambda_class: 1.0,
        }
    }
}

/// The phase a step belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Encoder pre-training.
    Encoder,
    /// Generator and critic.
    Generator,
    /// Predictor on the interventional distribution.
    Predictor,
}

/// IST training.
pub struct Ist {
    params: Params,
    net: StyleTransfer,
    map: candle_nn::VarMap,
    encoder_opt: AdamW,
    generator_opt: AdamW,
    critic_opt: AdamW,
    /// The last step trained (validation measures nothing before phase 3).
    last_step: Option<usize>,
}

impl Ist {
    /// IST with its networks under `adversary.ist`.
    pub fn new(params: Params, ctx: &MethodContext) -> std::result::Result<Ist, MethodError> {
        let lambdas = [
            params.lambda_style,
            params.lambda_cycle,
            params.lambda_content,
            params.lambda_class,
        ];
        if lambdas.iter().any(|l| !l.is_finite() || *l < 0.0)
            || !(params.encoder_lr > 0.0 && params.generator_lr > 0.0)
        {
            return Err(MethodError::Params(
                "the lambdas must be >= 0 and the learning rates > 0".into(),
            ));
        }
        if params.encoder_steps == 0 || params.generator_steps == 0 {
            return Err(MethodError::Params(
                "encoder_steps and generator_steps must be at least 1".into(),
            ));
        }
        let spec = spec_for(&ctx.spec.encoder, ctx.spec.classes, ctx.envs);
        let [_, h, w] = ctx.image;
        spec.check_size(h, w).map_err(MethodError::Params)?;
        let vb = VarBuilder::from_varmap(ctx.map, DType::F32, ctx.device).pp(IST_PREFIX);
        let net = StyleTransfer::new(&spec, vb)?;
        seeded_init(ctx.map, IST_PREFIX, ctx.seed)?;
        let p = |name: &str| trainable(ctx.map, &format!("{IST_PREFIX}.{name}."));
        let mut encoder = p("encoder");
        encoder.extend(p("heads"));
        Ok(Ist {
            encoder_opt: AdamW::new(encoder, params.encoder_lr, 1e-4)?,
            generator_opt: AdamW::new(p("generator"), params.generator_lr, 0.0)?,
            critic_opt: AdamW::new(p("critic"), params.generator_lr, 0.0)?,
            params,
            net,
            map: ctx.map.clone(),
            last_step: None,
        })
    }

    /// The phase of step `step` (0-based, counted over the whole run).
    pub fn phase(&self, step: usize) -> Phase {
        if step < self.params.encoder_steps {
            Phase::Encoder
        } else if step < self.params.encoder_steps + self.params.generator_steps {
            Phase::Generator
        } else {
            Phase::Predictor
        }
    }

    fn encoder_step(&mut self, b: &Batch) -> Result<Terms> {
        let f = self.net.encode_training(&b.x)?;
        let class = cross_entropy(&self.net.class_head.forward(&f.pooled)?, &b.y)?;
        let env = cross_entropy(&self.net.env_head.forward(&f.pooled)?, &b.env)?;
        let loss = (&class + &env)?;
        self.encoder_opt.step(&loss.backward()?)?;
        Ok(vec![
            ("encoder", scalar(&loss)?),
            ("class", scalar(&class)?),
            ("env", scalar(&env)?),
        ])
    }

    /// D's trunk becomes a copy of the pre-trained E.
    fn init_critic(&self) -> Result<()> {
        let data = self
            .map
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("variable map lock poisoned".into()))?;
        let from = format!("{IST_PREFIX}.encoder.");
        for (name, var) in data.iter() {
            if let Some(rest) = name.strip_prefix(&from) {
                let to = format!("{IST_PREFIX}.critic.encoder.{rest}");
                if let Some(target) = data.get(&to) {
                    target.set(var.as_tensor())?;
                }
            }
        }
        Ok(())
    }

    fn generator_step(&mut self, b: &Batch) -> Result<Terms> {
        let (content, style) = halves(b)?;
        let net = &self.net;
        let fa = net.encode(&content.x)?.detach();
        let fb = net.encode(&style.x)?.detach();
        let (code_a, code_b) = (style_code(&fa)?, style_code(&fb)?);
        let generated = net.generator.forward(&fa, &code_b)?;
        let fg = net.encode(&generated)?;
        let style_loss = losses::style(&fg.compared(), &fb.compared())?;
        let content_loss = losses::content(&generated, &content.x, &fg.compared(), &fa.compared())?;
        let reconstructed = net.generator.forward(&fg, &code_a)?;
        let cycle = losses::cycle(&reconstructed, &content.x)?;
        let class = losses::class_matching(
            &net.class_head.forward(&fg.pooled)?,
            &net.class_head.forward(&fa.pooled)?,
        )?;
        let adversarial = losses::real(&net.critic_logit(&generated, &style.env)?)?;
        let p = &self.params;
        let total = (&adversarial
            + (&style_loss * p.lambda_style)?
            + (&cycle * p.lambda_cycle)?
            + (&content_loss * p.lambda_content)?
            + (&class * p.lambda_class)?)?;
        self.generator_opt.step(&total.backward()?)?;
        let fake = generated.detach();
        let critic = (losses::real(&net.critic_logit(&style.x, &style.env)?)?
            + losses::fake(&net.critic_logit(&fake, &style.env)?)?)?;
        self.critic_opt.step(&critic.backward()?)?;
        Ok(vec![
            ("generator", scalar(&total)?),
            ("adv", scalar(&adversarial)?),
            ("style", scalar(&style_loss)?),
            ("content", scalar(&content_loss)?),
            ("cycle", scalar(&cycle)?),
            ("class", scalar(&class)?),
            ("critic", scalar(&critic)?),
        ])
    }

    fn predictor_step(&self, model: &Classifier, b: &Batch, opt: &mut AdamW) -> Result<Terms> {
        let (content, style) = halves(b)?;
        let code = self.net.style_of(&style.x)?;
        let x = self.net.restyle(&content.x, &code)?;
        let (_, logits) = model.forward(&x, &mut NormPass::train())?;
        let loss = cross_entropy(&logits, &content.y)?;
        opt.step(&loss.backward()?)?;
        Ok(vec![("predictor", scalar(&loss)?)])
    }
}

fn scalar(t: &Tensor) -> Result<f32> {
    t.to_dtype(DType::F32)?.to_scalar::<f32>()
}

/// The content half and the style half of a [`SamplerKind::ContentStyle`] batch.
fn halves(b: &Batch) -> Result<(Batch, Batch)> {
    let n = b.x.dim(0)?;
    if n < 2 || n % 2 != 0 {
        candle_core::bail!("IST batches hold content and style images in equal numbers, got {n}");
    }
    let half = |start| -> Result<Batch> {
        Ok(Batch {
            x: b.x.narrow(0, start, n / 2)?,
            y: b.y.narrow(0, start, n / 2)?,
            env: b.env.narrow(0, start, n / 2)?,
        })
    };
    Ok((half(0)?, half(n / 2)?))
}

impl Method for Ist {
    fn sampler(&self, _batch_size: usize) -> SamplerKind {
        SamplerKind::ContentStyle
    }

    fn pretraining_steps(&self) -> usize {
        self.params.encoder_steps + self.params.generator_steps
    }

    fn step(
        &mut self,
        model: &Classifier,
        batch: &Batch,
        opt: &mut AdamW,
        step: usize,
    ) -> Result<Terms> {
        self.last_step = Some(step);
        match self.phase(step) {
            Phase::Encoder => self.encoder_step(batch),
            Phase::Generator => {
                if step == self.params.encoder_steps {
                    self.init_critic()?;
                }
                self.generator_step(batch)
            }
            Phase::Predictor => self.predictor_step(model, batch, opt),
        }
    }

    fn validation_loss(
        &self,
        _model: &Classifier,
        batch: &Batch,
        logits: &Tensor,
    ) -> Result<Option<f32>> {
        match self.last_step.map(|s| self.phase(s)) {
            Some(Phase::Predictor) => Ok(Some(scalar(&cross_entropy(logits, &batch.y)?)?)),
            _ => Ok(None),
        }
    }
}

/// The style-transfer networks of an IST run, read from its checkpoint
/// variables (`map` must hold them).
pub fn networks(
    model: &crate::model::ModelSpec,
    envs: usize,
    map: &candle_nn::VarMap,
    device: &candle_core::Device,
) -> Result<StyleTransfer> {
    let spec = spec_for(&model.encoder, model.classes, envs);
    StyleTransfer::new(
        &spec,
        VarBuilder::from_varmap(map, DType::F32, device).pp(IST_PREFIX),
    )
}
