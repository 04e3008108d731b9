//! Convolution and transposed convolution as Candle custom ops on the
//! kernels of [`super::conv`]: a transposed convolution is the input
//! gradient of the convolution with the same kernel, so it uses the same
//! three kernels with the roles swapped.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, WithDType};

use super::conv::{forward, grads, input_grad, weight_grad};
use super::direct::Direct;
use super::im2col::{ConvConfig, Geometry};
use super::scratch::Scratch;
use super::{contiguous, cpu_slice, from_vec};

/// `y = conv2d(x, w)` on the CPU.
pub struct Conv2d(pub ConvConfig);

impl CustomOp2 for Conv2d {
    fn name(&self) -> &'static str {
        "bfx-conv2d"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let g = Geometry::conv(xl.dims(), wl.dims(), self.0)?;
        let shape = Shape::from((g.n, g.o, g.ho, g.wo));
        match (xs, ws) {
            (CpuStorage::F32(x), CpuStorage::F32(w)) => Ok((
                CpuStorage::F32(forward(contiguous(x, xl)?, contiguous(w, wl)?, &g)),
                shape,
            )),
            (CpuStorage::F64(x), CpuStorage::F64(w)) => Ok((
                CpuStorage::F64(forward(contiguous(x, xl)?, contiguous(w, wl)?, &g)),
                shape,
            )),
            _ => candle_core::bail!("bfx-conv2d runs on f32 or f64, not {:?}", xs.dtype()),
        }
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = Geometry::conv(x.dims(), w.dims(), self.0)?;
        match x.dtype() {
            candle_core::DType::F32 => conv_grads::<f32>(x, w, dy, &g),
            candle_core::DType::F64 => conv_grads::<f64>(x, w, dy, &g),
            other => candle_core::bail!("bfx-conv2d runs on f32 or f64, not {other:?}"),
        }
    }
}

/// Input (when `x` needs one) and weight gradients of the convolution `g`.
fn conv_grads<T: Scratch + Direct>(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    g: &Geometry,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let need_dx = x.track_op();
    let (dw, dx) = cpu_slice::<T, _>(dy, |dy| {
        cpu_slice::<T, _>(x, |x| {
            cpu_slice::<T, _>(w, |w| grads(x, need_dx.then_some(w), dy, g))
        })
    })???;
    gradient_tensors(need_dx.then_some(dx), dw, x, w)
}

/// Gradients as tensors shaped like the input and the weight.
fn gradient_tensors<T: WithDType>(
    dx: Option<Vec<T>>,
    dw: Vec<T>,
    x: &Tensor,
    w: &Tensor,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    Ok((
        dx.map(|d| from_vec(d, x.dims(), x.device())).transpose()?,
        Some(from_vec(dw, w.dims(), w.device())?),
    ))
}

/// `y = conv_transpose2d(x, w)` on the CPU (`w: [c_in, c_out/g, kh, kw]`).
pub struct ConvTranspose2d {
    /// Stride, padding, dilation, groups.
    pub cfg: ConvConfig,
    /// Extra rows and columns at the bottom/right of the output.
    pub output_padding: usize,
}

impl CustomOp2 for ConvTranspose2d {
    fn name(&self) -> &'static str {
        "bfx-conv-transpose2d"
    }

    fn cpu_fwd(
        &self,
        xs: &CpuStorage,
        xl: &Layout,
        ws: &CpuStorage,
        wl: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        // The output is the input gradient of the convolution `g` whose
        // output gradient is `x`.
        let g = Geometry::transposed(xl.dims(), wl.dims(), self.cfg, self.output_padding)?;
        let shape = Shape::from((g.n, g.c, g.h, g.w));
        match (xs, ws) {
            (CpuStorage::F32(x), CpuStorage::F32(w)) => Ok((
                CpuStorage::F32(input_grad(contiguous(w, wl)?, contiguous(x, xl)?, &g)),
                shape,
            )),
            (CpuStorage::F64(x), CpuStorage::F64(w)) => Ok((
                CpuStorage::F64(input_grad(contiguous(w, wl)?, contiguous(x, xl)?, &g)),
                shape,
            )),
            _ => candle_core::bail!(
                "bfx-conv-transpose2d runs on f32 or f64, not {:?}",
                xs.dtype()
            ),
        }
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = Geometry::transposed(x.dims(), w.dims(), self.cfg, self.output_padding)?;
        match x.dtype() {
            candle_core::DType::F32 => transposed_grads::<f32>(x, w, dy, &g),
            candle_core::DType::F64 => transposed_grads::<f64>(x, w, dy, &g),
            other => candle_core::bail!("bfx-conv-transpose2d runs on f32 or f64, not {other:?}"),
        }
    }
}

/// Gradients of the transposed convolution of `x` by `w`, whose output
/// gradient `dy` has the shape of the convolution `g`'s input: that
/// convolution's forward gives dx, its weight gradient against x (as dY)
/// gives dw.
fn transposed_grads<T: Scratch + Direct>(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    g: &Geometry,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let dw = cpu_slice::<T, _>(dy, |dy| cpu_slice::<T, _>(x, |x| weight_grad(dy, x, g)))??;
    let dx = if x.track_op() {
        Some(cpu_slice::<T, _>(dy, |dy| {
            cpu_slice::<T, _>(w, |w| forward(dy, w, g))
        })??)
    } else {
        None
    };
    gradient_tensors(dx, dw, x, w)
}
