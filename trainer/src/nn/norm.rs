//! Normalization layers with explicit statistics.
//!
//! BatchNorm is written here rather than taken from candle-nn because
//! AdaBN needs more than train/eval: normalizing with the current batch's
//! statistics without touching the running ones, recording the statistics
//! every layer computed (for a plate), and normalizing with given
//! statistics (a plate's, at any batch size). One [`NormPass`] carries the
//! mode and the per-layer statistics through a forward pass. InstanceNorm
//! is candle-nn's GroupNorm with one group per channel (verified against
//! PyTorch, see ../shared/NOTES.md).

use candle_core::{Result, Tensor, Var};
use candle_nn::{GroupNorm, Init, Module, VarBuilder};

use super::ops::{self, Grouping};

pub use bfx_core::arch::NORM_EPS;

/// How BatchNorm layers normalize in one forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BnMode {
    /// Training: batch statistics, running statistics updated (PyTorch
    /// semantics: momentum 0.1, unbiased variance in the running estimate).
    Train,
    /// Inference with the running statistics from training.
    Running,
    /// AdaBN per batch: the batch's own statistics, nothing updated.
    Batch,
    /// AdaBN per plate: statistics given in [`NormPass::given`], layer by layer.
    Given,
}

/// Mean and biased variance of one BatchNorm layer, `[channels]` each.
#[derive(Clone, Debug)]
pub struct LayerStats {
    /// Per-channel mean.
    pub mean: Tensor,
    /// Per-channel biased variance.
    pub var: Tensor,
}

/// The state of one forward pass through a network's BatchNorm layers.
#[derive(Debug)]
pub struct NormPass {
    /// The mode every BatchNorm layer uses.
    pub mode: BnMode,
    /// Statistics for [`BnMode::Given`], in layer order.
    pub given: Vec<LayerStats>,
    /// Statistics each layer computed (batch modes), in layer order, when recording.
    pub recorded: Vec<LayerStats>,
    record: bool,
    cursor: usize,
}

impl NormPass {
    /// A pass in `mode` that records nothing.
    pub fn new(mode: BnMode) -> NormPass {
        NormPass {
            mode,
            given: Vec::new(),
            recorded: Vec::new(),
            record: false,
            cursor: 0,
        }
    }

    /// Training pass.
    pub fn train() -> NormPass {
        NormPass::new(BnMode::Train)
    }

    /// Inference with running statistics.
    pub fn eval() -> NormPass {
        NormPass::new(BnMode::Running)
    }

    /// A batch-statistics pass that records every layer's statistics.
    pub fn recording() -> NormPass {
        NormPass {
            record: true,
            ..NormPass::new(BnMode::Batch)
        }
    }

    /// A pass normalizing with `stats`, one entry per BatchNorm layer.
    pub fn with_stats(stats: Vec<LayerStats>) -> NormPass {
        NormPass {
            given: stats,
            ..NormPass::new(BnMode::Given)
        }
    }

    /// Whether this is a training pass (dropout-like behaviour, MixStyle, ...).
    pub fn training(&self) -> bool {
        self.mode == BnMode::Train
    }
}

/// BatchNorm over `[n, c, h, w]` (or `[n, c]`) with learnable scale and shift.
#[derive(Clone, Debug)]
pub struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Var,
    running_var: Var,
    eps: f64,
    momentum: f64,
}

impl BatchNorm {
    /// A layer of `channels` with variables under `vb`: `weight`, `bias`,
    /// `running_mean`, `running_var` (the names PyTorch and ONNX exporters expect).
    pub fn new(channels: usize, vb: VarBuilder) -> Result<BatchNorm> {
        let weight = vb.get_with_hints(channels, "weight", Init::Const(1.0))?;
        let bias = vb.get_with_hints(channels, "bias", Init::Const(0.0))?;
        // VarMap hands out variables; from_tensor keeps the same storage, so
        // `set` below updates what checkpoints save.
        let running_mean =
            Var::from_tensor(&vb.get_with_hints(channels, "running_mean", Init::Const(0.0))?)?;
        let running_var =
            Var::from_tensor(&vb.get_with_hints(channels, "running_var", Init::Const(1.0))?)?;
        Ok(BatchNorm {
            weight,
            bias,
            running_mean,
            running_var,
            eps: NORM_EPS,
            momentum: 0.1,
        })
    }

    /// Normalize `x` as `pass` says.
    pub fn forward(&self, x: &Tensor, pass: &mut NormPass) -> Result<Tensor> {
        self.forward_then(x, pass, false)
    }

    /// Normalize `x` as `pass` says, then apply a ReLU if `relu` (one op
    /// on bfx's kernels).
    fn forward_then(&self, x: &Tensor, pass: &mut NormPass, relu: bool) -> Result<Tensor> {
        let layer = pass.cursor;
        pass.cursor += 1;
        let (mean, var) = match pass.mode {
            BnMode::Running => (
                self.running_mean.as_detached_tensor(),
                self.running_var.as_detached_tensor(),
            ),
            BnMode::Given => {
                let s = pass.given.get(layer).ok_or_else(|| {
                    candle_core::Error::Msg(format!(
                        "AdaBN statistics for {} layer(s) given, but layer {layer} needs them",
                        pass.given.len()
                    ))
                })?;
                (s.mean.clone(), s.var.clone())
            }
            BnMode::Train | BnMode::Batch if ops::fast(x) => {
                let (y, mean, var) = ops::normalize_batch(
                    x,
                    &self.weight,
                    &self.bias,
                    self.eps,
                    Grouping::Channel,
                    relu,
                )?;
                self.after_batch_stats(&mean, &var, x, pass)?;
                return Ok(y);
            }
            BnMode::Train | BnMode::Batch => {
                let (mean, var) = batch_stats(x)?;
                self.after_batch_stats(&mean, &var, x, pass)?;
                (mean, var)
            }
        };
        if ops::fast(x) {
            return ops::normalize_given(x, &mean, &var, self.eps, &self.weight, &self.bias, relu);
        }
        let y = normalize(x, &mean, &var, self.eps, &self.weight, &self.bias)?;
        if relu { ops::relu(&y) } else { Ok(y) }
    }

    /// Running update (training) and recording of a batch's statistics.
    fn after_batch_stats(
        &self,
        mean: &Tensor,
        var: &Tensor,
        x: &Tensor,
        pass: &mut NormPass,
    ) -> Result<()> {
        if pass.mode == BnMode::Train {
            self.update_running(mean, var, x)?;
        }
        if pass.record {
            pass.recorded.push(LayerStats {
                mean: mean.detach(),
                var: var.detach(),
            });
        }
        Ok(())
    }

    fn update_running(&self, mean: &Tensor, var: &Tensor, x: &Tensor) -> Result<()> {
        let n = (x.elem_count() / x.dim(1)?) as f64;
        let m = self.momentum;
        let unbiased = (var.detach() * (n / (n - 1.0).max(1.0)))?;
        self.running_mean
            .set(&((self.running_mean.as_tensor() * (1.0 - m))? + (mean.detach() * m)?)?)?;
        self.running_var
            .set(&((self.running_var.as_tensor() * (1.0 - m))? + (unbiased * m)?)?)
    }

    /// The running statistics.
    pub fn running(&self) -> LayerStats {
        LayerStats {
            mean: self.running_mean.as_detached_tensor(),
            var: self.running_var.as_detached_tensor(),
        }
    }
}

/// Per-channel mean and biased variance over every axis but 1.
pub fn batch_stats(x: &Tensor) -> Result<(Tensor, Tensor)> {
    let c = x.dim(1)?;
    let flat = x.transpose(0, 1)?.flatten_from(1)?.contiguous()?;
    let mean = flat.mean_keepdim(1)?;
    let var = flat.broadcast_sub(&mean)?.sqr()?.mean_keepdim(1)?;
    Ok((mean.reshape(c)?, var.reshape(c)?))
}

/// `(x - mean) / sqrt(var + eps) * weight + bias`, per channel (axis 1).
pub fn normalize(
    x: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    eps: f64,
    weight: &Tensor,
    bias: &Tensor,
) -> Result<Tensor> {
    let mut shape = vec![1; x.rank()];
    shape[1] = x.dim(1)?;
    let r = |t: &Tensor| t.reshape(shape.as_slice());
    let inv = (r(var)? + eps)?.sqrt()?.recip()?;
    x.broadcast_sub(&r(mean)?)?
        .broadcast_mul(&inv)?
        .broadcast_mul(&r(weight)?)?
        .broadcast_add(&r(bias)?)
}

/// BatchNorm or InstanceNorm, chosen by the architecture spec.
#[derive(Clone, Debug)]
pub enum Norm {
    /// BatchNorm (AdaBN-capable).
    Batch(BatchNorm),
    /// InstanceNorm: per image and channel, affine (scale, shift and
    /// candle-nn's GroupNorm with a group per channel for other devices).
    Instance(Tensor, Tensor, GroupNorm),
}

impl Norm {
    /// A layer of the kind `instance` says.
    pub fn new(channels: usize, instance: bool, vb: VarBuilder) -> Result<Norm> {
        if instance {
            let weight = vb.get_with_hints(channels, "weight", Init::Const(1.0))?;
            let bias = vb.get_with_hints(channels, "bias", Init::Const(0.0))?;
            let group = GroupNorm::new(weight.clone(), bias.clone(), channels, channels, NORM_EPS)?;
            Ok(Norm::Instance(weight, bias, group))
        } else {
            Ok(Norm::Batch(BatchNorm::new(channels, vb)?))
        }
    }

    /// Normalize `x`.
    pub fn forward(&self, x: &Tensor, pass: &mut NormPass) -> Result<Tensor> {
        self.forward_then(x, pass, false)
    }

    /// `relu(norm(x))`, as one op on bfx's kernels (one pass fewer
    /// forward, one gradient fewer for Candle to sum backward).
    pub fn forward_relu(&self, x: &Tensor, pass: &mut NormPass) -> Result<Tensor> {
        self.forward_then(x, pass, true)
    }

    fn forward_then(&self, x: &Tensor, pass: &mut NormPass, relu: bool) -> Result<Tensor> {
        match self {
            Norm::Batch(bn) => bn.forward_then(x, pass, relu),
            Norm::Instance(weight, bias, _) if ops::fast(x) => {
                Ok(ops::normalize_batch(x, weight, bias, NORM_EPS, Grouping::Plane, relu)?.0)
            }
            Norm::Instance(_, _, group) if relu => ops::relu(&group.forward(x)?),
            Norm::Instance(_, _, group) => group.forward(x),
        }
    }
}
