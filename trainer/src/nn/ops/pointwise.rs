//! ReLU and the 2x2 max pool as single passes each way, and integer
//! nearest upsampling as a broadcast (its backward is a sum).

use std::hint::select_unpredictable;

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor, WithDType};
use rayon::prelude::*;

use super::{contiguous, cpu_slice, fast, from_vec};

// The selects on the data (ReLU's sign, the pool's maximum) are
// `select_unpredictable`: as `if`s they compiled to branches, which a
// ReLU's signs mispredict half the time; the ReLU gradient of 2M
// elements took 10 ms that way and 1 ms as a select.

/// Elements per parallel chunk of elementwise loops.
const CHUNK: usize = 1 << 14;

struct Relu;

fn relu_fwd<T: WithDType>(x: &[T]) -> Vec<T> {
    let zero = T::from_f64(0.0);
    let mut y = vec![zero; x.len()];
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(y, x)| {
            for (o, v) in y.iter_mut().zip(x) {
                *o = select_unpredictable(*v > zero, *v, zero);
            }
        });
    y
}

fn relu_bwd<T: WithDType>(y: &[T], dy: &[T]) -> Vec<T> {
    let mut dx = vec![T::from_f64(0.0); y.len()];
    relu_grad_into(y, dy, &mut dx);
    dx
}

/// The input gradient of a ReLU whose output is `y`, from its output
/// gradient `dy`, written to `dx`: `dy` where `y > 0`, else zero.
pub(super) fn relu_grad_into<T: WithDType>(y: &[T], dy: &[T], dx: &mut [T]) {
    let zero = T::from_f64(0.0);
    dx.par_chunks_mut(CHUNK)
        .zip(y.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK)))
        .for_each(|(dx, (y, dy))| {
            for ((o, v), g) in dx.iter_mut().zip(y).zip(dy) {
                *o = select_unpredictable(*v > zero, *g, zero);
            }
        });
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
        fn grad<T: WithDType>(y: &Tensor, dy: &Tensor) -> Result<Tensor> {
            let dx = cpu_slice::<T, _>(y, |y| cpu_slice::<T, _>(dy, |dy| relu_bwd(y, dy)))??;
            from_vec(dx, y.dims(), y.device())
        }
        Ok(Some(match y.dtype() {
            candle_core::DType::F32 => grad::<f32>(y, dy)?,
            _ => grad::<f64>(y, dy)?,
        }))
    }
}

/// `max(x, 0)`; the gradient passes where the output is positive.
pub fn relu(x: &Tensor) -> Result<Tensor> {
    if !fast(x) {
        return x.relu();
    }
    x.contiguous()?.apply_op1(Relu)
}

/// `max(a + b, 0)`: the residual join of a ResNet block in one pass.
struct AddRelu;

fn add_relu_fwd<T: WithDType>(a: &[T], b: &[T]) -> Vec<T> {
    let zero = T::from_f64(0.0);
    let mut y = vec![zero; a.len()];
    y.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(y, (a, b))| {
            for ((o, u), v) in y.iter_mut().zip(a).zip(b) {
                let s = *u + *v;
                *o = select_unpredictable(s > zero, s, zero);
            }
        });
    y
}

impl CustomOp2 for AddRelu {
    fn name(&self) -> &'static str {
        "bfx-add-relu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if l1.dims() != l2.dims() {
            candle_core::bail!("add-relu of shapes {:?} and {:?}", l1.dims(), l2.dims());
        }
        let shape = l1.shape().clone();
        match (s1, s2) {
            (CpuStorage::F32(a), CpuStorage::F32(b)) => Ok((
                CpuStorage::F32(add_relu_fwd(contiguous(a, l1)?, contiguous(b, l2)?)),
                shape,
            )),
            (CpuStorage::F64(a), CpuStorage::F64(b)) => Ok((
                CpuStorage::F64(add_relu_fwd(contiguous(a, l1)?, contiguous(b, l2)?)),
                shape,
            )),
            _ => candle_core::bail!("bfx-add-relu runs on f32 or f64, not {:?}", s1.dtype()),
        }
    }

    fn bwd(
        &self,
        _: &Tensor,
        _: &Tensor,
        y: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let d = Relu.bwd(y, y, dy)?;
        Ok((d.clone(), d))
    }
}

/// `max(a + b, 0)` in one pass; the gradient passes to both where the
/// output is positive.
pub fn add_relu(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if !fast(a) || a.dims() != b.dims() {
        return (a + b)?.relu();
    }
    a.contiguous()?.apply_op2(&b.contiguous()?, AddRelu)
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
        best = select_unpredictable(plane[k] > plane[best], k, best);
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
        fn grad<T: WithDType>(x: &Tensor, dy: &Tensor) -> Result<Tensor> {
            let dims = x.dims();
            let dx = cpu_slice::<T, _>(x, |x| cpu_slice::<T, _>(dy, |dy| pool_bwd(x, dy, dims)))???;
            from_vec(dx, dims, x.device())
        }
        Ok(Some(match x.dtype() {
            candle_core::DType::F32 => grad::<f32>(x, dy)?,
            _ => grad::<f64>(x, dy)?,
        }))
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

/// Nearest-neighbour upsampling by an integer factor: each input pixel
/// becomes a `factor x factor` block; the backward sums each block.
struct Upsample(usize);

fn upsample_fwd<T: WithDType>(x: &[T], dims: &[usize], f: usize) -> Vec<T> {
    let (h, w) = (dims[2], dims[3]);
    let mut y = vec![T::from_f64(0.0); x.len() * f * f];
    y.par_chunks_mut((h * w * f * f).max(1))
        .enumerate()
        .for_each(|(q, out)| {
            let plane = &x[q * h * w..][..h * w];
            for (oy, row) in out.chunks_mut(w * f).enumerate() {
                let src = &plane[(oy / f) * w..][..w];
                for (o, v) in row.chunks_mut(f).zip(src) {
                    o.fill(*v);
                }
            }
        });
    y
}

fn upsample_bwd<T: WithDType>(dy: &[T], dims: &[usize], f: usize) -> Vec<T> {
    let (h, w) = (dims[2], dims[3]);
    let mut dx = vec![T::from_f64(0.0); dims.iter().product()];
    dx.par_chunks_mut((h * w).max(1))
        .enumerate()
        .for_each(|(q, out)| {
            let grads = &dy[q * h * w * f * f..][..h * w * f * f];
            for (oy, row) in grads.chunks(w * f).enumerate() {
                let dst = &mut out[(oy / f) * w..][..w];
                for (o, block) in dst.iter_mut().zip(row.chunks(f)) {
                    for g in block {
                        *o += *g;
                    }
                }
            }
        });
    dx
}

impl CustomOp1 for Upsample {
    fn name(&self) -> &'static str {
        "bfx-upsample-nearest"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let &[n, c, h, w] = l.dims() else {
            candle_core::bail!("upsampling wants [n, c, h, w], got {:?}", l.dims());
        };
        let f = self.0;
        let shape = Shape::from((n, c, h * f, w * f));
        match s {
            CpuStorage::F32(x) => Ok((
                CpuStorage::F32(upsample_fwd(contiguous(x, l)?, l.dims(), f)),
                shape,
            )),
            CpuStorage::F64(x) => Ok((
                CpuStorage::F64(upsample_fwd(contiguous(x, l)?, l.dims(), f)),
                shape,
            )),
            _ => candle_core::bail!(
                "bfx-upsample-nearest runs on f32 or f64, not {:?}",
                s.dtype()
            ),
        }
    }

    fn bwd(&self, x: &Tensor, _: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        fn grad<T: WithDType>(x: &Tensor, dy: &Tensor, factor: usize) -> Result<Tensor> {
            let dx = cpu_slice::<T, _>(dy, |dy| upsample_bwd(dy, x.dims(), factor))?;
            from_vec(dx, x.dims(), x.device())
        }
        Ok(Some(match x.dtype() {
            candle_core::DType::F32 => grad::<f32>(x, dy, self.0)?,
            _ => grad::<f64>(x, dy, self.0)?,
        }))
    }
}

/// Nearest-neighbour upsampling of `[n, c, h, w]` by an integer factor
/// (Candle's `upsample_nearest2d` backward is a slow grouped
/// convolution); on other devices a broadcast and a reshape, whose
/// backward is the same sum.
pub fn upsample_nearest(x: &Tensor, factor: usize) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    if factor == 0 {
        candle_core::bail!("upsampling factor must be at least 1");
    }
    if fast(x) {
        return x.contiguous()?.apply_op1(Upsample(factor));
    }
    x.reshape((n, c, h, 1, w, 1))?
        .broadcast_as((n, c, h, factor, w, factor))?
        .reshape((n, c, h * factor, w * factor))
}
