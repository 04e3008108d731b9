//! Convolution and transposed convolution as Candle custom ops whose
//! forward and both backward passes are im2col/col2im + GEMM.
//!
//! With the geometry `g` of a convolution `y = x * w` (`x: [n, c, h, w]`,
//! `w: [o, c/g, kh, kw]`) and `X = im2col(x)`, `Y = y` as `[o, n*p]`:
//! - forward: `Y = W X`;
//! - weight gradient: `dW = dY X^T`;
//! - input gradient: `dx = col2im(W^T dY)`, skipped when `x` needs none
//!   (the image going into the first layer).
//!
//! A transposed convolution is the input gradient of the convolution
//! with the same kernel, so it uses the same three kernels with the
//! roles swapped.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor, WithDType};

use super::gemm::{Strides, gemm};
use super::im2col::{ConvConfig, Geometry, col2im, im2col, swap01};
use super::{contiguous, cpu_slice, from_vec, threads};

/// `[n, o, p]` output of the convolution `g` of `x` by `w`.
pub fn forward<T: WithDType>(x: &[T], w: &[T], g: &Geometry) -> Vec<T> {
    let (np, k, og, groups) = (g.n * g.p(), g.k(), g.o / g.cfg.groups, g.cfg.groups);
    let cols = im2col(x, g);
    let mut yt = vec![T::from_f64(0.0); g.o * np];
    for grp in 0..groups {
        gemm(
            (og, np, k),
            &mut yt[grp * og * np..],
            Strides::row_major(np),
            false,
            &w[grp * og * k..],
            Strides::row_major(k),
            &cols[grp * k * np..],
            Strides::row_major(np),
            threads(),
        );
    }
    swap01(&yt, g.o, g.n, g.p())
}

/// `dY` as `[o, n*p]` from the output gradient `[n, o, p]`.
fn output_grad_t<T: WithDType>(dy: &[T], g: &Geometry) -> Vec<T> {
    swap01(dy, g.n, g.o, g.p())
}

/// Weight gradient `[o, c/g, kh, kw]` from the input and `dY` (`[o, n*p]`).
pub fn weight_grad<T: WithDType>(x: &[T], dyt: &[T], g: &Geometry) -> Vec<T> {
    let (np, k, og, groups) = (g.n * g.p(), g.k(), g.o / g.cfg.groups, g.cfg.groups);
    let cols = im2col(x, g);
    let mut dw = vec![T::from_f64(0.0); g.o * k];
    for grp in 0..groups {
        gemm(
            (og, k, np),
            &mut dw[grp * og * k..],
            Strides::row_major(k),
            false,
            &dyt[grp * og * np..],
            Strides::row_major(np),
            &cols[grp * k * np..],
            Strides::transposed(np),
            threads(),
        );
    }
    dw
}

/// Input gradient `[n, c, h, w]` from the weight and `dY` (`[o, n*p]`).
pub fn input_grad<T: WithDType>(w: &[T], dyt: &[T], g: &Geometry) -> Vec<T> {
    let (np, k, og, groups) = (g.n * g.p(), g.k(), g.o / g.cfg.groups, g.cfg.groups);
    let mut cols = vec![T::from_f64(0.0); groups * k * np];
    for grp in 0..groups {
        gemm(
            (k, np, og),
            &mut cols[grp * k * np..],
            Strides::row_major(np),
            false,
            &w[grp * og * k..],
            Strides::transposed(k),
            &dyt[grp * og * np..],
            Strides::row_major(np),
            threads(),
        );
    }
    col2im(&cols, g)
}

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
fn conv_grads<T: WithDType>(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    g: &Geometry,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let dyt = cpu_slice::<T, _>(dy, |dy| output_grad_t(dy, g))?;
    let dw = cpu_slice::<T, _>(x, |x| weight_grad(x, &dyt, g))?;
    let dx = if x.track_op() {
        Some(cpu_slice::<T, _>(w, |w| input_grad(w, &dyt, g))?)
    } else {
        None
    };
    gradient_tensors(dx, dw, x, w)
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
            (CpuStorage::F32(x), CpuStorage::F32(w)) => {
                let xt = output_grad_t(contiguous(x, xl)?, &g);
                Ok((
                    CpuStorage::F32(input_grad(contiguous(w, wl)?, &xt, &g)),
                    shape,
                ))
            }
            (CpuStorage::F64(x), CpuStorage::F64(w)) => {
                let xt = output_grad_t(contiguous(x, xl)?, &g);
                Ok((
                    CpuStorage::F64(input_grad(contiguous(w, wl)?, &xt, &g)),
                    shape,
                ))
            }
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
fn transposed_grads<T: WithDType>(
    x: &Tensor,
    w: &Tensor,
    dy: &Tensor,
    g: &Geometry,
) -> Result<(Option<Tensor>, Option<Tensor>)> {
    let xt = cpu_slice::<T, _>(x, |x| output_grad_t(x, g))?;
    let dw = cpu_slice::<T, _>(dy, |dy| weight_grad(dy, &xt, g))?;
    let dx = if x.track_op() {
        Some(cpu_slice::<T, _>(dy, |dy| {
            cpu_slice::<T, _>(w, |w| forward(dy, w, g))
        })??)
    } else {
        None
    };
    gradient_tensors(dx, dw, x, w)
}
