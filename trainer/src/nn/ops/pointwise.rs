//! ReLU and the 2x2 max pool as single passes each way, and integer
//! nearest upsampling as a broadcast (its backward is a sum).

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::{cpu_slice, fast, from_vec};

/// Elements per parallel chunk of elementwise loops.
const CHUNK: usize = 1 << 14;

fn contiguous<'a, T>(data: &'a [T], layout: &Layout) -> Result<&'a [T]> {
    layout
        .contiguous_offsets()
        .map(|(a, b)| &data[a..b])
        .ok_or_else(|| candle_core::Error::Msg("bfx ops want contiguous inputs".into()))
}

struct Relu;

fn relu_fwd<T: WithDType>(x: &[T]) -> Vec<T> {
    let zero = T::from_f64(0.0);
    let mut y = vec![zero; x.len()];
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(y, x)| {
            for (o, v) in y.iter_mut().zip(x) {
                *o = if *v > zero { *v } else { zero };
            }
        });
    y
}

fn relu_bwd<T: WithDType>(y: &[T], dy: &[T]) -> Vec<T> {
    let zero = T::from_f64(0.0);
    let mut dx = vec![zero; y.len()];
    dx.par_chunks_mut(CHUNK)
        .zip(y.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK)))
        .for_each(|(dx, (y, dy))| {
            for ((o, v), g) in dx.iter_mut().zip(y).zip(dy) {
                *o = if *v > zero { *g } else { zero };
            }
        });
    dx
}

impl CustomOp1 for Relu {
    fn name(&self) -> &'static str {
        "bfx-relu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let shape = l.shape().clone();
        match s {
            CpuStorage::F32(x) => Ok((CpuStorage::F32(relu_fwd(contiguous(x, l)?)), shape)),
            CpuStorage::F64(x) => Ok((CpuStorage::F64(relu_fwd(contiguous(x, l)?)), shape)),
            _ => candle_core::bail!("bfx-relu runs on f32 or f64, not {:?}", s.dtype()),
        }
    }

    fn bwd(&self, _: &Tensor, y: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let dx = match y.dtype() {
            candle_core::DType::F32 => from_vec(
                cpu_slice::<f32, _>(y, |y| cpu_slice::<f32, _>(dy, |dy| relu_bwd(y, dy)))??,
                y.dims(),
                y.device(),
            )?,
            _ => from_vec(
                cpu_slice::<f64, _>(y, |y| cpu_slice::<f64, _>(dy, |dy| relu_bwd(y, dy)))??,
                y.dims(),
                y.device(),
            )?,
        };
        Ok(Some(dx))
    }
}

/// `max(x, 0)`; the gradient passes where the output is positive.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    if !fast(x) {
        return x.relu();
    }
    x.contiguous()?.apply_op1(Relu)
}

/// 2x2 max pool with stride 2 over `[n, c, h, w]`; an odd last row or
/// column is dropped. The gradient goes to the first maximum of each
/// window in row-major order (as PyTorch's), not to every tied one.
struct MaxPool2x2;

fn pool_dims(dims: &[usize]) -> Result<(usize, usize, usize, usize, usize)> {
    match dims {
        [n, c, h, w] => Ok((n * c, *h, *w, h / 2, w / 2)),
        _ => candle_core::bail!("max pool wants [n, c, h, w], got {dims:?}"),
    }
}

/// Index within the plane of the first maximum of window `(i, j)`.
fn argmax<T: WithDType>(plane: &[T], w: usize, i: usize, j: usize) -> usize {
    let candidates = [
        2 * i * w + 2 * j,
        2 * i * w + 2 * j + 1,
        (2 * i + 1) * w + 2 * j,
        (2 * i + 1) * w + 2 * j + 1,
    ];
    let mut best = candidates[0];
    for &k in &candidates[1..] {
        if plane[k] > plane[best] {
            best = k;
        }
    }
    best
}

fn pool_fwd<T: WithDType>(x: &[T], dims: &[usize]) -> Result<Vec<T>> {
    let (planes, h, w, h2, w2) = pool_dims(dims)?;
    let mut y = vec![T::from_f64(0.0); planes * h2 * w2];
    y.par_chunks_mut((h2 * w2).max(1))
        .enumerate()
        .for_each(|(q, out)| {
            let plane = &x[q * h * w..][..h * w];
            for i in 0..h2 {
                for j in 0..w2 {
                    out[i * w2 + j] = plane[argmax(plane, w, i, j)];
                }
            }
        });
    Ok(y)
}

fn pool_bwd<T: WithDType>(x: &[T], dy: &[T], dims: &[usize]) -> Result<Vec<T>> {
    let (_, h, w, h2, w2) = pool_dims(dims)?;
    let mut dx = vec![T::from_f64(0.0); x.len()];
    dx.par_chunks_mut((h * w).max(1))
        .enumerate()
        .for_each(|(q, out)| {
            let plane = &x[q * h * w..][..h * w];
            let grads = &dy[q * h2 * w2..][..h2 * w2];
            for i in 0..h2 {
                for j in 0..w2 {
                    out[argmax(plane, w, i, j)] = grads[i * w2 + j];
                }
            }
        });
    Ok(dx)
}

impl CustomOp1 for MaxPool2x2 {
    fn name(&self) -> &'static str {
        "bfx-max-pool-2x2"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let (n, c) = (l.dims()[0], l.dims().get(1).copied().unwrap_or(1));
        let (_, _, _, h2, w2) = pool_dims(l.dims())?;
        let shape = Shape::from((n, c, h2, w2));
        match s {
            CpuStorage::F32(x) => Ok((
                CpuStorage::F32(pool_fwd(contiguous(x, l)?, l.dims())?),
                shape,
            )),
            CpuStorage::F64(x) => Ok((
                CpuStorage::F64(pool_fwd(contiguous(x, l)?, l.dims())?),
                shape,
            )),
            _ => candle_core::bail!("bfx-max-pool-2x2 runs on f32 or f64, not {:?}", s.dtype()),
        }
    }

    fn bwd(&self, x: &Tensor, _: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let dims = x.dims();
        let dx = match x.dtype() {
            candle_core::DType::F32 => from_vec(
                cpu_slice::<f32, _>(x, |x| cpu_slice::<f32, _>(dy, |dy| pool_bwd(x, dy, dims)))???,
                dims,
                x.device(),
            )?,
            _ => from_vec(
                cpu_slice::<f64, _>(x, |x| cpu_slice::<f64, _>(dy, |dy| pool_bwd(x, dy, dims)))???,
                dims,
                x.device(),
            )?,
        };
        Ok(Some(dx))
    }
}

/// 2x2 max pool (see [`MaxPool2x2`]); other devices use reshape + max.
pub fn max_pool_2x2(x: &Tensor) -> Result<Tensor> {
    if fast(x) {
        return x.contiguous()?.apply_op1(MaxPool2x2);
    }
    let (n, c, h, w) = x.dims4()?;
    let (h2, w2) = (h / 2, w / 2);
    let x = if h % 2 == 1 || w % 2 == 1 {
        x.narrow(2, 0, h2 * 2)?.narrow(3, 0, w2 * 2)?
    } else {
        x.clone()
    };
    x.reshape((n, c, h2, 2, w2, 2))?.max(5)?.max(3)
}

/// Nearest-neighbour upsampling of `[n, c, h, w]` by an integer factor:
/// a broadcast and a reshape, so the backward is a sum over each block
/// (Candle's `upsample_nearest2d` backward is a slow grouped convolution).
pub fn upsample_nearest(x: &Tensor, factor: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if factor == 0 {
        candle_core::bail!("upsampling factor must be at least 1");
    }
    x.reshape((n, c, h, 1, w, 1))?
        .broadcast_as((n, c, h, factor, w, factor))?
        .reshape((n, c, h * factor, w * factor))
}
