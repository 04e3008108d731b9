//! Fast CPU kernels for the layers that dominate a training step, as
//! Candle custom ops with their own backward passes: convolution and
//! transposed convolution as im2col + GEMM (Candle computes every
//! convolution input gradient with direct loops and no GEMM), or with
//! direct AVX-512 kernels for stride-1 convolutions of planes 16, 32, ...
//! wide (`direct`) and 3x3 ones of planes 8 wide (`narrow`, and
//! `narrow_grad` for the weight gradient on planes 8 and 16 wide);
//! BatchNorm/InstanceNorm, ReLU, the residual add+ReLU, the 2x2 max pool
//! and nearest upsampling in one pass each way. (The fused AdamW step is
//! in `optim`.)
//!
//! Each public function takes Candle's path for tensors it does not
//! handle (a CUDA device, half precision), so `cuda` builds keep working
//! with Candle's own (cuDNN) kernels; the results are the same to
//! rounding, which `tests` checks against Candle's reference ops and
//! finite differences.

mod conv;
mod conv_op;
mod direct;
mod gemm;
mod im2col;
mod narrow;
mod narrow_grad;
mod norm;
mod pointwise;
mod same;
mod scratch;
mod shifted;
#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicBool, Ordering};

use candle_core::{DType, Device, Result, Tensor, WithDType};

pub use self::im2col::ConvConfig;
pub use self::norm::{Grouping, normalize_batch, normalize_given};
pub use self::pointwise::{add_relu, max_pool_2x2, relu, upsample_nearest};

static CANDLE_ONLY: AtomicBool = AtomicBool::new(false);

/// Use Candle's own ops everywhere (`true`) or bfx's kernels where they
/// apply (`false`, the default): benchmarks measure both in one run.
pub fn use_candle_ops(on: bool) {
    CANDLE_ONLY.store(on, Ordering::Relaxed);
}

/// Whether `x` takes bfx's kernels: on the CPU, in f32 or f64, unless
/// [`use_candle_ops`] is set.
pub fn fast(x: &Tensor) -> bool {
    !CANDLE_ONLY.load(Ordering::Relaxed)
        && x.device().is_cpu()
        && matches!(x.dtype(), DType::F32 | DType::F64)
}

/// Threads for one GEMM: Candle's own setting (`RAYON_NUM_THREADS`).
fn threads() -> usize {
    candle_core::utils::get_num_threads()
}

/// Run `f` on the elements of `t` (made contiguous) as a slice of `T`.
pub(crate) fn cpu_slice<T: WithDType, R>(t: &Tensor, f: impl FnOnce(&[T]) -> R) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        candle_core::bail!("bfx ops run on the CPU");
    };
    let all = cpu.as_slice::<T>()?;
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(f(&all[start..end])),
        None => candle_core::bail!("bfx ops want contiguous inputs"),
    }
}

/// The elements of a contiguous layout (the dispatch functions make
/// every input contiguous before applying an op).
pub(crate) fn contiguous<'a, T>(data: &'a [T], layout: &candle_core::Layout) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => candle_core::bail!("bfx ops want contiguous inputs"),
    }
}

/// The elements of a contiguous layout, mutably (in-place ops).
pub(crate) fn contiguous_mut<'a, T>(
    data: &'a mut [T],
    layout: &candle_core::Layout,
) -> Result<&'a mut [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&mut data[start..end]),
        None => candle_core::bail!("bfx ops want contiguous inputs"),
    }
}

/// A tensor of `dims` from `data`.
fn from_vec<T: WithDType>(data: Vec<T>, dims: &[usize], device: &Device) -> Result<Tensor> {
    Tensor::from_vec(data, dims, device)
}

/// 2-D convolution of `x` (`[n, c, h, w]`) by `w` (`[o, c/groups, kh, kw]`).
pub fn conv2d(x: &Tensor, w: &Tensor, cfg: ConvConfig) -> Result<Tensor> {
    if !fast(x) {
        return x.conv2d(w, cfg.padding, cfg.stride, cfg.dilation, cfg.groups);
    }
    x.contiguous()?
        .apply_op2(&w.contiguous()?, conv_op::Conv2d(cfg))
}

/// 2-D transposed convolution of `x` (`[n, c_in, h, w]`) by `w`
/// (`[c_in, c_out/groups, kh, kw]`), as PyTorch's `conv_transpose2d`.
pub fn conv_transpose2d(
    x: &Tensor,
    w: &Tensor,
    cfg: ConvConfig,
    output_padding: usize,
) -> Result<Tensor> {
    if !fast(x) {
        if cfg.groups != 1 {
            candle_core::bail!("grouped transposed convolution runs on the CPU only");
        }
        return x.conv_transpose2d(w, cfg.padding, output_padding, cfg.stride, cfg.dilation);
    }
    x.contiguous()?.apply_op2(
        &w.contiguous()?,
        conv_op::ConvTranspose2d {
            cfg,
            output_padding,
        },
    )
}

/// A convolution layer without bias on bfx's kernels (variable `weight`,
/// `[out, in/groups, k, k]`, as candle-nn and PyTorch name it).
#[derive(Clone, Debug)]
pub struct Conv {
    weight: Tensor,
    cfg: ConvConfig,
}

impl Conv {
    /// A `k x k` convolution from `cin` to `cout` channels under `vb`.
    pub fn no_bias(
        cin: usize,
        cout: usize,
        k: usize,
        cfg: ConvConfig,
        vb: candle_nn::VarBuilder,
    ) -> Result<Conv> {
        let weight = vb.get_with_hints(
            (cout, cin / cfg.groups.max(1), k, k),
            "weight",
            candle_nn::init::DEFAULT_KAIMING_NORMAL,
        )?;
        Ok(Conv { weight, cfg })
    }
}

impl candle_nn::Module for Conv {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        conv2d(x, &self.weight, self.cfg)
    }
}

/// A 3x3 convolution with bias and padding 1 (variables `weight`, `bias`).
#[derive(Clone, Debug)]
pub struct ConvBias {
    conv: Conv,
    bias: Tensor,
}

impl ConvBias {
    /// From `cin` to `cout` channels under `vb`.
    pub fn new(cin: usize, cout: usize, vb: candle_nn::VarBuilder) -> Result<ConvBias> {
        let cfg = ConvConfig {
            padding: 1,
            ..ConvConfig::default()
        };
        Ok(ConvBias {
            conv: Conv::no_bias(cin, cout, 3, cfg, vb.clone())?,
            bias: vb.get_with_hints(cout, "bias", candle_nn::Init::Const(0.0))?,
        })
    }
}

impl candle_nn::Module for ConvBias {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let c = self.bias.dims1()?;
        self.conv
            .forward(x)?
            .broadcast_add(&self.bias.reshape((1, c, 1, 1))?)
    }
}
