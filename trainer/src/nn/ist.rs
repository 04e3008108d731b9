//! IST's networks in Candle, laid out by [`IstSpec`]: the encoder E with
//! its class and environment heads, the style code, the UNet-AdaIN
//! generator G and the multi-environment critic D.

use candle_core::{DType, Result, Tensor};
use candle_nn::{Linear, Module, VarBuilder, linear};

pub use bfx_core::ist::{FeatureMap, IST_PREFIX, IstSpec, STYLE_EPS, STYLE_MAPS};

use super::ops::{self, Conv, ConvBias, ConvConfig, Grouping};
use super::{EncoderMaps, NormPass, ResNet};

/// Every map of `net` on `x`, its norms as `pass` says.
pub fn features(net: &ResNet, x: &Tensor, pass: &mut NormPass) -> Result<EncoderMaps> {
    net.forward_maps(x, pass)
}

/// Per image and channel of `h`: mean and `sqrt(var + eps)` over space, `[b, c]` each.
fn moments(h: &Tensor) -> Result<(Tensor, Tensor)> {
    let flat = h.flatten_from(2)?;
    let mean = flat.mean_keepdim(2)?;
    let var = flat.broadcast_sub(&mean)?.sqr()?.mean(2)?;
    Ok((mean.squeeze(2)?, (var + STYLE_EPS)?.sqrt()?))
}

/// The style code `[b, style_dim]` of encoder maps: per style map, the
/// channel means then the channel deviations.
pub fn style_code(maps: &EncoderMaps) -> Result<Tensor> {
    let mut parts = Vec::with_capacity(2 * STYLE_MAPS.len());
    for m in STYLE_MAPS {
        let (mean, std) = moments(maps.get(m))?;
        parts.push(mean);
        parts.push(std);
    }
    Tensor::cat(&parts, 1)
}

/// `h` normalized per image and channel, then given `mean` and `std` (`[b, c]`).
pub fn adain(h: &Tensor, mean: &Tensor, std: &Tensor) -> Result<Tensor> {
    let (b, c, _, _) = h.dims4()?;
    let normalized = if ops::fast(h) {
        let ones = Tensor::ones(c, h.dtype(), h.device())?;
        let zeros = Tensor::zeros(c, h.dtype(), h.device())?;
        ops::normalize_batch(h, &ones, &zeros, STYLE_EPS, Grouping::Plane, false)?.0
    } else {
        let flat = h.flatten_from(2)?;
        let m = flat.mean_keepdim(2)?;
        let centred = flat.broadcast_sub(&m)?;
        let var = centred.sqr()?.mean_keepdim(2)?;
        centred
            .broadcast_div(&(var + STYLE_EPS)?.sqrt()?)?
            .reshape(h.shape())?
    };
    normalized
        .broadcast_mul(&std.reshape((b, c, 1, 1))?)?
        .broadcast_add(&mean.reshape((b, c, 1, 1))?)
}

/// One decoder level's convolution: without bias before AdaIN (which
/// removes any bias), with bias otherwise.
#[derive(Clone, Debug)]
enum LevelConv {
    /// Skip map, and the `(offset, channels)` of its style in a code.
    Styled(Conv, FeatureMap, (usize, usize)),
    Plain(ConvBias),
}

/// The generator: content maps + style code -> image.
#[derive(Clone, Debug)]
pub struct Generator {
    levels: Vec<LevelConv>,
    out: ConvBias,
}

impl Generator {
    /// The generator of `spec` under `vb` (`up<i>.*`, `out.*`).
    pub fn new(spec: &IstSpec, vb: VarBuilder) -> Result<Generator> {
        let cfg = ConvConfig {
            padding: 1,
            ..ConvConfig::default()
        };
        let levels = spec
            .decoder_levels()
            .into_iter()
            .map(|l| {
                let vb = vb.pp(&l.name);
                Ok(match l.styled {
                    Some((skip, style)) => {
                        let slot = spec.style_slot(style).ok_or_else(|| {
                            candle_core::Error::Msg(format!("{style:?} is not a style map"))
                        })?;
                        LevelConv::Styled(Conv::no_bias(l.cin, l.cout, 3, cfg, vb)?, skip, slot)
                    }
                    None => LevelConv::Plain(ConvBias::new(l.cin, l.cout, vb)?),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Generator {
            levels,
            out: ConvBias::new(spec.encoder.width, spec.encoder.in_channels, vb.pp("out"))?,
        })
    }

    /// The image with the content of `content` (encoder maps) in the
    /// style of `code` (`[b, style_dim]`).
    pub fn forward(&self, content: &EncoderMaps, code: &Tensor) -> Result<Tensor> {
        let mut h = content.get(FeatureMap::Stage(3)).clone();
        for level in &self.levels {
            h = ops::upsample_nearest(&h, 2)?;
            h = match level {
                LevelConv::Styled(conv, skip, (at, c)) => {
                    let h = Tensor::cat(&[&h, content.get(*skip)], 1)?;
                    let mean = code.narrow(1, *at, *c)?;
                    let std = code.narrow(1, at + c, *c)?;
                    ops::relu(&adain(&conv.forward(&h)?, &mean, &std)?)?
                }
                LevelConv::Plain(conv) => ops::relu(&conv.forward(&h)?)?,
            };
        }
        self.out.forward(&h)
    }
}

/// IST's style-transfer model: encoder E with its heads, generator G and critic D.
#[derive(Clone, Debug)]
pub struct StyleTransfer {
    /// E: the classifier's ResNet layout and norm.
    pub encoder: ResNet,
    /// E's class head.
    pub class_head: Linear,
    /// E's environment head.
    pub env_head: Linear,
    /// G.
    pub generator: Generator,
    /// D's trunk, initialized from E after pre-training.
    pub critic: ResNet,
    /// D's real/fake logit per training environment.
    pub critic_head: Linear,
}

impl StyleTransfer {
    /// Every network of `spec` under `vb` (at [`IST_PREFIX`]): `encoder.*`,
    /// `heads.class.*`, `heads.env.*`, `generator.*`, `critic.encoder.*`,
    /// `critic.head.*`.
    pub fn new(spec: &IstSpec, vb: VarBuilder) -> Result<StyleTransfer> {
        let f = spec.encoder.feature_dim();
        Ok(StyleTransfer {
            encoder: ResNet::new(&spec.encoder, vb.pp("encoder"))?,
            class_head: linear(f, spec.classes, vb.pp("heads.class"))?,
            env_head: linear(f, spec.envs, vb.pp("heads.env"))?,
            generator: Generator::new(spec, vb.pp("generator"))?,
            critic: ResNet::new(&spec.encoder, vb.pp("critic.encoder"))?,
            critic_head: linear(f, spec.envs, vb.pp("critic.head"))?,
        })
    }

    /// E's maps of `x` as the frozen encoder gives them (BatchNorm with
    /// its running statistics).
    pub fn encode(&self, x: &Tensor) -> Result<EncoderMaps> {
        features(&self.encoder, x, &mut NormPass::eval())
    }

    /// E's maps of `x` while E is pre-trained (BatchNorm with batch statistics).
    pub fn encode_training(&self, x: &Tensor) -> Result<EncoderMaps> {
        features(&self.encoder, x, &mut NormPass::train())
    }

    /// `content` restyled with `code`, without gradients.
    pub fn restyle(&self, content: &Tensor, code: &Tensor) -> Result<Tensor> {
        let maps = self.encode(content)?.detach();
        Ok(self.generator.forward(&maps, &code.detach())?.detach())
    }

    /// The style codes of `x`, without gradients.
    pub fn style_of(&self, x: &Tensor) -> Result<Tensor> {
        Ok(style_code(&self.encode(x)?)?.detach())
    }

    /// D's logit for environment `env[i]` of each image `[b]`.
    pub fn critic_logit(&self, x: &Tensor, env: &Tensor) -> Result<Tensor> {
        let logits = self
            .critic_head
            .forward(&features(&self.critic, x, &mut NormPass::train())?.pooled)?;
        pick(&logits, env)
    }
}

/// `logits[i, index[i]]` for each row `i`.
pub fn pick(logits: &Tensor, index: &Tensor) -> Result<Tensor> {
    let n = logits.dim(1)?;
    let columns = Tensor::arange(0u32, n as u32, logits.device())?;
    let mask = index
        .to_dtype(DType::U32)?
        .unsqueeze(1)?
        .broadcast_eq(&columns.unsqueeze(0)?)?
        .to_dtype(logits.dtype())?;
    (logits * mask)?.sum(1)
}

/// The IST spec of a classifier encoder: its layout and norm.
pub fn spec_for(encoder: &super::ResNetSpec, classes: usize, envs: usize) -> IstSpec {
    IstSpec {
        encoder: encoder.clone(),
        classes,
        envs,
    }
}
