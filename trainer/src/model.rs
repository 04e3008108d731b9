//! The classifier every method trains: ResNet encoder, embedding head
//! (linear, or SCBD's projection onto the unit sphere), linear
//! classifier; plus seeded initialization.

use candle_core::{DType, Device, Result, Tensor};
use candle_nn::{Linear, Module, VarBuilder, VarMap, linear};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::nn::{NormPass, ResNet};

pub use bfx_core::arch::{EmbedHead, L2_EPS, MODEL_PREFIX, ModelSpec};

/// Encoder -> embedding -> logits.
#[derive(Clone, Debug)]
pub struct Classifier {
    spec: ModelSpec,
    encoder: ResNet,
    embed: Embed,
    head: Linear,
}

/// Pooled features -> embedding, as [`EmbedHead`] describes.
#[derive(Clone, Debug)]
pub enum Embed {
    /// One linear layer.
    Linear(Linear),
    /// Linear, exact GELU, linear, L2 normalization.
    Projection {
        /// `Linear(r, r)`.
        hidden: Linear,
        /// `Linear(r, z)`.
        out: Linear,
    },
}

impl Embed {
    /// The head `kind` from `features` to `dim` under `vb`.
    pub fn new(kind: EmbedHead, features: usize, dim: usize, vb: VarBuilder) -> Result<Embed> {
        Ok(match kind {
            EmbedHead::Linear => Embed::Linear(linear(features, dim, vb)?),
            EmbedHead::Projection => Embed::Projection {
                hidden: linear(features, features, vb.pp("hidden"))?,
                out: linear(features, dim, vb.pp("out"))?,
            },
        })
    }
}

impl Module for Embed {
    fn forward(&self, features: &Tensor) -> Result<Tensor> {
        match self {
            Embed::Linear(l) => l.forward(features),
            Embed::Projection { hidden, out } => {
                l2_normalize(&out.forward(&hidden.forward(features)?.gelu_erf()?)?)
            }
        }
    }
}

/// Rows scaled to unit length: `x / max(|x|, eps)` as PyTorch's `F.normalize`.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let norm = x.sqr()?.sum_keepdim(1)?.sqrt()?.maximum(L2_EPS)?;
    x.broadcast_div(&norm)
}

impl Classifier {
    /// Build under `vb` (`encoder.*`, `embed.*`, `head.*`).
    pub fn new(spec: &ModelSpec, vb: VarBuilder) -> Result<Classifier> {
        let features = spec.encoder.feature_dim();
        Ok(Classifier {
            spec: spec.clone(),
            encoder: ResNet::new(&spec.encoder, vb.pp("encoder"))?,
            embed: Embed::new(spec.head, features, spec.embedding_dim, vb.pp("embed"))?,
            head: linear(spec.embedding_dim, spec.classes, vb.pp("head"))?,
        })
    }

    /// The spec.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Pooled encoder features, with a hook after each stage.
    pub fn features_with(
        &self,
        x: &Tensor,
        pass: &mut NormPass,
        hook: &mut dyn FnMut(usize, Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        self.encoder.forward_with(x, pass, hook)
    }

    /// Embedding of pooled features.
    pub fn embed(&self, features: &Tensor) -> Result<Tensor> {
        self.embed.forward(features)
    }

    /// Logits of an embedding.
    pub fn logits(&self, embedding: &Tensor) -> Result<Tensor> {
        self.head.forward(embedding)
    }

    /// The classifier's weight `[classes, embedding_dim]` (ArcFace uses it).
    pub fn head_weight(&self) -> &Tensor {
        self.head.weight()
    }

    /// `(embedding, logits)` of an image batch.
    pub fn forward(&self, x: &Tensor, pass: &mut NormPass) -> Result<(Tensor, Tensor)> {
        let e = self.embed(&self.encoder.forward(x, pass)?)?;
        let logits = self.logits(&e)?;
        Ok((e, logits))
    }
}

/// Re-initialize every variable under `prefix` from `seed`, so a run is
/// reproducible (Candle's own initializers draw from an unseeded RNG):
/// convolutions Kaiming-normal (fan in), linear weights uniform in
/// +-1/sqrt(fan in) as PyTorch does, biases 0, norm scales 1, running
/// means 0 and variances 1. Variables are visited in name order.
pub fn seeded_init(map: &VarMap, prefix: &str, seed: u64) -> Result<()> {
    let mut vars: Vec<(String, candle_core::Var)> = map
        .data()
        .lock()
        .map_err(|_| candle_core::Error::Msg("variable map lock poisoned".into()))?
        .iter()
        .filter(|(name, _)| name.starts_with(prefix))
        .map(|(n, v)| (n.clone(), v.clone()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for (name, var) in vars {
        let dims = var.dims().to_vec();
        let n: usize = dims.iter().product();
        let fan_in: f32 = dims.iter().skip(1).product::<usize>().max(1) as f32;
        let values: Vec<f32> = if name.ends_with("running_var") {
            vec![1.0; n]
        } else if name.ends_with("running_mean") || name.ends_with("bias") {
            vec![0.0; n]
        } else if dims.len() == 1 {
            vec![1.0; n]
        } else if dims.len() == 4 {
            let sd = (2.0 / fan_in).sqrt();
            (0..n)
                .map(|_| sd * crate::random::standard_normal(&mut rng))
                .collect()
        } else {
            let bound = 1.0 / fan_in.sqrt();
            (0..n)
                .map(|_| rand::Rng::random_range(&mut rng, -bound..bound))
                .collect()
        };
        let t = Tensor::from_vec(values, dims, &Device::Cpu)?
            .to_dtype(var.dtype())?
            .to_device(var.device())?;
        var.set(&t)?;
    }
    Ok(())
}

/// A fresh classifier with seeded weights, its variables in `map`.
pub fn build(spec: &ModelSpec, map: &VarMap, device: &Device, seed: u64) -> Result<Classifier> {
    let model = Classifier::new(
        spec,
        VarBuilder::from_varmap(map, DType::F32, device).pp(MODEL_PREFIX),
    )?;
    seeded_init(map, MODEL_PREFIX, seed)?;
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::ResNetSpec;

    /// The exporter reads checkpoints by the names and shapes the spec
    /// lists; the Candle modules must create exactly those.
    #[test]
    fn variables_are_the_ones_the_spec_lists() {
        for (instance_norm, head) in [
            (false, EmbedHead::Linear),
            (true, EmbedHead::Linear),
            (false, EmbedHead::Projection),
        ] {
            let spec = ModelSpec {
                arch: "resnet18".into(),
                encoder: ResNetSpec {
                    in_channels: 3,
                    width: 4,
                    instance_norm,
                    blocks: [2, 1, 2, 1],
                },
                head,
                embedding_dim: 6,
                classes: 5,
            };
            let map = VarMap::new();
            build(&spec, &map, &Device::Cpu, 0).expect("model builds");
            let mut made: Vec<(String, Vec<usize>)> = map
                .data()
                .lock()
                .expect("no other thread holds the map")
                .iter()
                .map(|(n, v)| (n.clone(), v.dims().to_vec()))
                .collect();
            made.sort();
            let mut listed = spec.tensors();
            listed.sort();
            assert_eq!(made, listed);
        }
    }
}
