//! BatchNorm and InstanceNorm as one fused op each way: statistics and
//! normalization in two passes forward, and the whole input, scale and
//! shift gradient in two passes backward (Candle's composite version
//! takes a dozen broadcast passes and as many allocations).
//!
//! Either can be followed by a ReLU (`relu`), as a ResNet's stem and
//! every block's first normalization are: applied in the forward pass,
//! gated into the gradient in one pass before the backward ones. A
//! separate ReLU op would take one more pass forward and one more
//! gradient for Candle to allocate and sum backward.
//!
//! Both are "normalize each group of planes by its statistics": a
//! BatchNorm statistic covers channel `c` of every image, an
//! InstanceNorm statistic one image's channel. Planes are indexed
//! `q = n * channels + c`; scale and shift are per channel.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::pointwise::relu_grad_into;
use super::scratch::Scratch;
use super::{contiguous, cpu_slice, from_vec};

/// Which planes share a statistic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Grouping {
    /// One statistic per channel over the batch (BatchNorm).
    Channel,
    /// One statistic per image and channel (InstanceNorm).
    Plane,
}

/// Sizes of one normalization.
#[derive(Clone, Copy, Debug)]
struct Dims {
    n: usize,
    c: usize,
    hw: usize,
    grouping: Grouping,
}

impl Dims {
    fn of(dims: &[usize], grouping: Grouping) -> Result<Dims> {
        let (n, c) = match dims {
            [n, c, ..] => (*n, *c),
            _ => candle_core::bail!("normalization wants at least [n, c], got {dims:?}"),
        };
        Ok(Dims {
            n,
            c,
            hw: dims[2..].iter().product(),
            grouping,
        })
    }

    fn stats(&self) -> usize {
        match self.grouping {
            Grouping::Channel => self.c,
            Grouping::Plane => self.n * self.c,
        }
    }

    fn stat_of(&self, q: usize) -> usize {
        match self.grouping {
            Grouping::Channel => q % self.c,
            Grouping::Plane => q,
        }
    }

    /// Planes of statistic `s`.
    fn planes(&self, s: usize) -> impl Iterator<Item = usize> {
        let (count, step) = match self.grouping {
            Grouping::Channel => (self.n, self.c),
            Grouping::Plane => (1, 1),
        };
        (0..count).map(move |i| s + i * step)
    }

    /// Planes per parallel task: enough for [`TASK_ELEMENTS`] (late
    /// ResNet stages have planes of 2x2).
    fn planes_per_task(&self) -> usize {
        (TASK_ELEMENTS / self.hw.max(1)).max(1)
    }

    /// Elements per statistic.
    fn members(&self) -> usize {
        match self.grouping {
            Grouping::Channel => self.n * self.hw,
            Grouping::Plane => self.hw,
        }
    }
}

/// Elements a parallel task works on at least: a task per plane cost
/// more in scheduling than the arithmetic (10x for 2x2 planes).
const TASK_ELEMENTS: usize = 1 << 14;

/// Per statistic: the two sums of `f(plane, plane elements)` over its
/// planes, in f64.
fn per_stat(
    d: &Dims,
    f: impl Fn(usize, std::ops::Range<usize>) -> [f64; 2] + Sync,
) -> Vec<[f64; 2]> {
    let per_task = (TASK_ELEMENTS / d.members().max(1)).max(1);
    (0..d.stats())
        .into_par_iter()
        .with_min_len(per_task)
        .map(|s| {
            let mut acc = [0.0; 2];
            for q in d.planes(s) {
                let [a, b] = f(q, q * d.hw..(q + 1) * d.hw);
                acc[0] += a;
                acc[1] += b;
            }
            acc
        })
        .collect()
}

/// Mean and biased variance of each statistic's planes of `x`, in one
/// pass (f64 sums of x and x^2 keep E[x^2] - E[x]^2 exact enough for f32
/// activations).
fn moments<T: WithDType>(x: &[T], d: &Dims) -> (Vec<f64>, Vec<f64>) {
    let m = d.members().max(1) as f64;
    per_stat(d, |_, r| {
        x[r].iter().fold([0.0, 0.0], |[s, q], v| {
            let v = v.to_f64();
            [s + v, q + v * v]
        })
    })
    .into_iter()
    .map(|[s, q]| {
        let mean = s / m;
        (mean, (q / m - mean * mean).max(0.0))
    })
    .unzip()
}

/// `y = (x - mean) * invstd * weight + bias`; gradients flow to x
/// through the statistics too when they are the batch's own.
struct Normalize {
    d: Dims,
    mean: Vec<f64>,
    invstd: Vec<f64>,
    batch_stats: bool,
    relu: bool,
}

impl Normalize {
    fn forward<T: WithDType>(&self, x: &[T], w: &[T], b: &[T]) -> Vec<T> {
        let d = self.d;
        let mut y = vec![T::from_f64(0.0); x.len()];
        let per_task = d.planes_per_task();
        y.par_chunks_mut(d.hw.max(1) * per_task)
            .enumerate()
            .for_each(|(t, planes)| {
                for (j, out) in planes.chunks_mut(d.hw.max(1)).enumerate() {
                    let q = t * per_task + j;
                    let (s, c) = (d.stat_of(q), q % d.c);
                    let scale = self.invstd[s] * w[c].to_f64();
                    let shift = b[c].to_f64() - self.mean[s] * scale;
                    for (o, v) in out.iter_mut().zip(&x[q * d.hw..][..d.hw]) {
                        let v = v.to_f64() * scale + shift;
                        *o = T::from_f64(if self.relu { v.max(0.0) } else { v });
                    }
                }
            });
        y
    }

    /// `(dx, dweight, dbias)`, given the output `y` (read only after a
    /// ReLU, whose gradient passes where `y > 0`).
    fn backward<T: Scratch>(
        &self,
        x: &[T],
        w: &[T],
        y: &[T],
        dy: &[T],
    ) -> (Vec<T>, Vec<T>, Vec<T>) {
        if !self.relu {
            return self.backward_normalization(x, w, dy);
        }
        // The ReLU's gradient first, in its own pass: gating each element
        // inside the two passes below made them 3-5x slower (a
        // data-dependent select per element keeps them from vectorizing).
        T::with_scratch(dy.len(), |gated| {
            relu_grad_into(y, dy, gated);
            self.backward_normalization(x, w, gated)
        })
    }

    /// `(dx, dweight, dbias)` of the normalization alone.
    fn backward_normalization<T: WithDType>(
        &self,
        x: &[T],
        w: &[T],
        dy: &[T],
    ) -> (Vec<T>, Vec<T>, Vec<T>) {
        let d = self.d;
        // Per statistic: sum dy and sum dy * xhat.
        let sums = per_stat(&d, |q, r| {
            let s = d.stat_of(q);
            let (mu, inv) = (self.mean[s], self.invstd[s]);
            x[r.clone()]
                .iter()
                .zip(&dy[r])
                .fold([0.0, 0.0], |[a, b], (v, g)| {
                    let g = g.to_f64();
                    [a + g, b + g * (v.to_f64() - mu) * inv]
                })
        });
        let (mut dw, mut db) = (vec![0.0f64; d.c], vec![0.0f64; d.c]);
        for (s, [sdy, sdyx]) in sums.iter().enumerate() {
            let c = s % d.c;
            db[c] += sdy;
            dw[c] += sdyx;
        }
        let m = d.members().max(1) as f64;
        let mut dx = vec![T::from_f64(0.0); x.len()];
        let per_task = d.planes_per_task();
        dx.par_chunks_mut(d.hw.max(1) * per_task)
            .enumerate()
            .flat_map_iter(|(t, planes)| {
                planes
                    .chunks_mut(d.hw.max(1))
                    .enumerate()
                    .map(move |(j, out)| (t * per_task + j, out))
            })
            .for_each(|(q, out)| {
                let (s, c) = (d.stat_of(q), q % d.c);
                let (mu, inv) = (self.mean[s], self.invstd[s]);
                let k = w[c].to_f64() * inv;
                let (xs, gs) = (&x[q * d.hw..][..d.hw], &dy[q * d.hw..][..d.hw]);
                if self.batch_stats {
                    let [sdy, sdyx] = sums[s];
                    let (mean_dy, mean_dyx) = (sdy / m, sdyx / m);
                    for ((o, v), g) in out.iter_mut().zip(xs).zip(gs) {
                        let xhat = (v.to_f64() - mu) * inv;
                        *o = T::from_f64(k * (g.to_f64() - mean_dy - xhat * mean_dyx));
                    }
                } else {
                    for (o, g) in out.iter_mut().zip(gs) {
                        *o = T::from_f64(k * g.to_f64());
                    }
                }
            });
        let cast = |v: Vec<f64>| v.into_iter().map(T::from_f64).collect();
        (dx, cast(dw), cast(db))
    }
}

impl CustomOp3 for Normalize {
    fn name(&self) -> &'static str {
        "bfx-normalize"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
        bs: &CpuStorage,
        bl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let shape = xl.shape().clone();
        match (xs, ws, bs) {
            (CpuStorage::F32(x), CpuStorage::F32(w), CpuStorage::F32(b)) => Ok((
                CpuStorage::F32(self.forward(
                    contiguous(x, xl)?,
                    contiguous(w, wl)?,
                    contiguous(b, bl)?,
                )),
                shape,
            )),
            (CpuStorage::F64(x), CpuStorage::F64(w), CpuStorage::F64(b)) => Ok((
                CpuStorage::F64(self.forward(
                    contiguous(x, xl)?,
                    contiguous(w, wl)?,
                    contiguous(b, bl)?,
                )),
                shape,
            )),
            _ => candle_core::bail!("bfx-normalize runs on f32 or f64, not {:?}", xs.dtype()),
        }
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        macro_rules! grads {
            ($t:ty) => {{
                let (dx, dw, db) = cpu_slice::<$t, _>(x, |x| {
                    cpu_slice::<$t, _>(w, |w| {
                        cpu_slice::<$t, _>(y, |y| {
                            cpu_slice::<$t, _>(dy, |dy| self.backward(x, w, y, dy))
                        })
                    })
                })????;
                let device = x.device();
                Ok((
                    Some(from_vec(dx, x.dims(), device)?),
                    Some(from_vec(dw, w.dims(), device)?),
                    Some(from_vec(db, w.dims(), device)?),
                ))
            }};
        }
        match x.dtype() {
            candle_core::DType::F32 => grads!(f32),
            candle_core::DType::F64 => grads!(f64),
            other => candle_core::bail!("bfx-normalize runs on f32 or f64, not {other:?}"),
        }
    }
}

/// Normalize `x` by the statistics of its own groups of planes, then
/// apply a ReLU if `relu`; returns the output and the (detached) mean and
/// biased variance, `[stats]`.
pub fn normalize_batch(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
    grouping: Grouping,
    relu: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    let x = x.contiguous()?;
    let d = Dims::of(x.dims(), grouping)?;
    let (mean, var) = match x.dtype() {
        candle_core::DType::F32 => cpu_slice::<f32, _>(&x, |x| moments(x, &d))?,
        _ => cpu_slice::<f64, _>(&x, |x| moments(x, &d))?,
    };
    let stat_tensor = |v: &[f64]| Tensor::new(v, x.device())?.to_dtype(x.dtype());
    let (mean_t, var_t) = (stat_tensor(&mean)?, stat_tensor(&var)?);
    let invstd = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    let op = Normalize {
        d,
        mean,
        invstd,
        batch_stats: true,
        relu,
    };
    let y = x.apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)?;
    Ok((y, mean_t, var_t))
}

/// Normalize `x` per channel by given (constant) statistics, `[c]` each,
/// then apply a ReLU if `relu`.
pub fn normalize_given(
    x: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    eps: f64,
    weight: &Tensor,
    bias: &Tensor,
    relu: bool,
) -> Result<Tensor> {
    let d = Dims::of(x.dims(), Grouping::Channel)?;
    let mean = mean.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?;
    let var = var.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?;
    if mean.len() != d.c || var.len() != d.c {
        candle_core::bail!(
            "normalization statistics for {} channels given to {} channels",
            mean.len(),
            d.c
        );
    }
    let invstd = var.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
    let op = Normalize {
        d,
        mean,
        invstd,
        batch_stats: false,
        relu,
    };
    x.contiguous()?
        .apply_op3(&weight.contiguous()?, &bias.contiguous()?, op)
}
