//! The ResNet encoder family: ResNet18 layout (four stages of two basic
//! blocks, widths w, 2w, 4w, 8w) with a configurable base width, any
//! input channel count, and BatchNorm or InstanceNorm.
//!
//! The stem is a 7x7 stride-2 convolution followed by a 2x2 max pool
//! instead of ImageNet's 3x3 stride-2 pool: Candle has no backward for
//! overlapping pools, and its 2x2 `max_pool2d` backward is scaled wrongly
//! (../shared/NOTES.md), so the pool here is a reshape and a max, whose
//! gradient is right and tested. Both halve the resolution.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use bfx_core::arch::BlockShape;
pub use bfx_core::arch::ResNetSpec;

use super::norm::{Norm, NormPass};
use super::ops::{Conv, ConvConfig, add_relu};

/// A residual basic block: conv-norm-relu-conv-norm plus a shortcut.
#[derive(Clone, Debug)]
struct BasicBlock {
    conv1: Conv,
    norm1: Norm,
    conv2: Conv,
    norm2: Norm,
    /// 1x1 projection when the shape changes.
    down: Option<(Conv, Norm)>,
}

fn conv(cin: usize, cout: usize, k: usize, stride: usize, vb: VarBuilder) -> Result<Conv> {
    let cfg = ConvConfig {
        padding: k / 2,
        stride,
        ..Default::default()
    };
    Conv::no_bias(cin, cout, k, cfg, vb)
}

impl BasicBlock {
    fn new(shape: &BlockShape, instance: bool, vb: VarBuilder) -> Result<BasicBlock> {
        let BlockShape {
            cin, cout, stride, ..
        } = *shape;
        let down = if shape.projected {
            Some((
                conv(cin, cout, 1, stride, vb.pp("down.conv"))?,
                Norm::new(cout, instance, vb.pp("down.norm"))?,
            ))
        } else {
            None
        };
        Ok(BasicBlock {
            conv1: conv(cin, cout, 3, stride, vb.pp("conv1"))?,
            norm1: Norm::new(cout, instance, vb.pp("norm1"))?,
            conv2: conv(cout, cout, 3, 1, vb.pp("conv2"))?,
            norm2: Norm::new(cout, instance, vb.pp("norm2"))?,
            down,
        })
    }

    fn forward(&self, x: &Tensor, pass: &mut NormPass) -> Result<Tensor> {
        let h = self.norm1.forward_relu(&x.apply(&self.conv1)?, pass)?;
        let h = self.norm2.forward(&h.apply(&self.conv2)?, pass)?;
        let skip = match &self.down {
            Some((c, n)) => n.forward(&x.apply(c)?, pass)?,
            None => x.clone(),
        };
        add_relu(&h, &skip)
    }
}

/// The encoder's intermediate maps (see [`ResNet::forward_maps`]).
pub struct EncoderMaps {
    /// Stem convolution output, before its norm.
    pub stem_conv: Tensor,
    /// Stem activation, before the pool.
    pub stem: Tensor,
    /// Each stage's output, stage 0 first.
    pub stages: Vec<Tensor>,
    /// Spatial mean of the last stage.
    pub pooled: Tensor,
}

impl EncoderMaps {
    /// The map `map` names.
    pub fn get(&self, map: bfx_core::ist::FeatureMap) -> &Tensor {
        match map {
            bfx_core::ist::FeatureMap::StemConv => &self.stem_conv,
            bfx_core::ist::FeatureMap::Stem => &self.stem,
            // The spec names stages 0..4 only, the four every ResNet has.
            bfx_core::ist::FeatureMap::Stage(i) => &self.stages[i],
        }
    }

    /// Every map detached from the graph (a frozen encoder's constants).
    pub fn detach(&self) -> EncoderMaps {
        EncoderMaps {
            stem_conv: self.stem_conv.detach(),
            stem: self.stem.detach(),
            stages: self.stages.iter().map(Tensor::detach).collect(),
            pooled: self.pooled.detach(),
        }
    }

    /// The maps the style and feature losses compare: the stem
    /// convolution's and every stage's.
    pub fn compared(&self) -> Vec<Tensor> {
        std::iter::once(self.stem_conv.clone())
            .chain(self.stages.iter().cloned())
            .collect()
    }
}

/// The encoder.
#[derive(Clone, Debug)]
pub struct ResNet {
    spec: ResNetSpec,
    stem: Conv,
    stem_norm: Norm,
    stages: Vec<Vec<BasicBlock>>,
}

impl ResNet {
    /// Build with variables under `vb` (`stem.conv`, `stem.norm`, `stage<i>.<j>.*`).
    pub fn new(spec: &ResNetSpec, vb: VarBuilder) -> Result<ResNet> {
        let inst = spec.instance_norm;
        let mut stages: Vec<Vec<BasicBlock>> = vec![Vec::new(); spec.blocks.len()];
        for b in spec.block_shapes() {
            stages[b.stage].push(BasicBlock::new(&b, inst, vb.pp(&b.name))?);
        }
        Ok(ResNet {
            spec: spec.clone(),
            stem: conv(spec.in_channels, spec.width, 7, 2, vb.pp("stem.conv"))?,
            stem_norm: Norm::new(spec.width, inst, vb.pp("stem.norm"))?,
            stages,
        })
    }

    /// The spec this encoder was built from.
    pub fn spec(&self) -> &ResNetSpec {
        &self.spec
    }

    /// Pooled features `[n, 8w]`; `hook(stage, features)` may replace the
    /// feature map after each stage (MixStyle, ABRA) and sees it in order.
    pub fn forward_with(
        &self,
        x: &Tensor,
        pass: &mut NormPass,
        hook: &mut dyn FnMut(usize, Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        let h = self.stem_norm.forward_relu(&x.apply(&self.stem)?, pass)?;
        let mut h = super::pool::max_pool_2x2(&h)?;
        for (i, stage) in self.stages.iter().enumerate() {
            for block in stage {
                h = block.forward(&h, pass)?;
            }
            h = hook(i, h)?;
        }
        super::pool::global_avg_pool(&h)
    }

    /// Every map IST's generator reads: the stem convolution's output
    /// (before its norm), the stem's activation (before the pool), each
    /// stage's output; and the pooled features.
    pub fn forward_maps(&self, x: &Tensor, pass: &mut NormPass) -> Result<EncoderMaps> {
        let stem_conv = x.apply(&self.stem)?;
        let stem = self.stem_norm.forward_relu(&stem_conv, pass)?;
        let mut h = super::pool::max_pool_2x2(&stem)?;
        let mut stages = Vec::with_capacity(self.stages.len());
        for stage in &self.stages {
            for block in stage {
                h = block.forward(&h, pass)?;
            }
            stages.push(h.clone());
        }
        Ok(EncoderMaps {
            pooled: super::pool::global_avg_pool(&h)?,
            stem_conv,
            stem,
            stages,
        })
    }

    /// Pooled features without hooks.
    pub fn forward(&self, x: &Tensor, pass: &mut NormPass) -> Result<Tensor> {
        self.forward_with(x, pass, &mut |_, h| Ok(h))
    }
}
