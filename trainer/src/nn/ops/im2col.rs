//! Convolution geometry and the copies around the GEMMs, each over a
//! chunk of images: im2col (input patches as the columns of a matrix),
//! col2im (its adjoint, summing patches back into an image) and the
//! batch/channel transposes between Candle's `[n, c, p]` layout and the
//! GEMMs' `[c, n * p]`.
//!
//! Every loop is parallel over disjoint output rows or planes, so no
//! two threads write one element.

use std::ops::Range;

use candle_core::{Result, WithDType};
use rayon::prelude::*;

/// Stride, padding, dilation and groups of a convolution (square, as
/// the models use them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvConfig {
    /// Stride.
    pub stride: usize,
    /// Zero padding on every side.
    pub padding: usize,
    /// Dilation.
    pub dilation: usize,
    /// Groups (input and output channels split evenly).
    pub groups: usize,
}

impl Default for ConvConfig {
    fn default() -> Self {
        ConvConfig {
            stride: 1,
            padding: 0,
            dilation: 1,
            groups: 1,
        }
    }
}

/// Every size of one convolution `[n, c, h, w] * [o, c/g, kh, kw] -> [n, o, ho, wo]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Batch.
    pub n: usize,
    /// Input channels.
    pub c: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Output channels.
    pub o: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Output height.
    pub ho: usize,
    /// Output width.
    pub wo: usize,
    /// Stride, padding, dilation, groups.
    pub cfg: ConvConfig,
}

impl Geometry {
    /// The geometry of convolving `x` dims by a kernel of `k` dims.
    pub fn conv(x: &[usize], k: &[usize], cfg: ConvConfig) -> Result<Geometry> {
        let (&[n, c, h, w], &[o, cg, kh, kw]) = (x, k) else {
            candle_core::bail!("convolution wants 4-d input and kernel, got {x:?} and {k:?}");
        };
        let ConvConfig {
            stride,
            padding,
            dilation,
            groups,
        } = cfg;
        if stride == 0 || dilation == 0 || groups == 0 {
            candle_core::bail!("convolution stride, dilation and groups must be >= 1 ({cfg:?})");
        }
        if c % groups != 0 || o % groups != 0 || cg != c / groups {
            candle_core::bail!(
                "convolution of {c} input channels by kernel {k:?} in {groups} groups does not fit"
            );
        }
        let out = |size: usize, k: usize| -> Result<usize> {
            if k == 0 {
                candle_core::bail!("convolution kernel of size 0");
            }
            let span = dilation * (k - 1) + 1;
            if size + 2 * padding < span {
                candle_core::bail!(
                    "convolution kernel {k} (dilation {dilation}) exceeds input {size} padded by {padding}"
                );
            }
            Ok((size + 2 * padding - span) / stride + 1)
        };
        Ok(Geometry {
            n,
            c,
            h,
            w,
            o,
            kh,
            kw,
            ho: out(h, kh)?,
            wo: out(w, kw)?,
            cfg,
        })
    }

    /// The geometry of the convolution whose input gradient is the
    /// transposed convolution of `x` dims by a kernel of `k` dims
    /// (`[c_in, c_out/g, kh, kw]`, PyTorch's layout).
    pub fn transposed(
        x: &[usize],
        k: &[usize],
        cfg: ConvConfig,
        output_padding: usize,
    ) -> Result<Geometry> {
        let (&[n, cin, h, w], &[kin, coutg, kh, kw]) = (x, k) else {
            candle_core::bail!(
                "transposed convolution wants 4-d input and kernel, got {x:?} and {k:?}"
            );
        };
        let ConvConfig {
            stride,
            padding,
            dilation,
            groups,
        } = cfg;
        if kin != cin || groups == 0 || cin % groups != 0 {
            candle_core::bail!(
                "transposed convolution of {cin} channels by kernel {k:?} in {groups} groups does not fit"
            );
        }
        if output_padding >= stride.max(dilation) {
            candle_core::bail!(
                "output padding {output_padding} must be smaller than stride or dilation"
            );
        }
        let size = |i: usize, k: usize| -> Result<usize> {
            if i == 0 || k == 0 {
                candle_core::bail!("transposed convolution of size {i} by kernel {k}");
            }
            let full = (i - 1) * stride + dilation * (k - 1) + output_padding + 1;
            full.checked_sub(2 * padding)
                .filter(|s| *s > 0)
                .ok_or_else(|| {
                    candle_core::Error::Msg(format!(
                        "transposed convolution of size {i} with padding {padding} is empty"
                    ))
                })
        };
        let geometry = Geometry::conv(
            &[n, coutg * groups, size(h, kh)?, size(w, kw)?],
            &[cin, coutg, kh, kw],
            cfg,
        )?;
        debug_assert_eq!((geometry.ho, geometry.wo), (h, w));
        Ok(geometry)
    }

    /// Output positions per image.
    pub fn p(&self) -> usize {
        self.ho * self.wo
    }

    /// Rows of the patch matrix per group: `c/g * kh * kw`.
    pub fn k(&self) -> usize {
        self.c / self.cfg.groups * self.kh * self.kw
    }

    /// Input elements.
    pub fn input_len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }

    /// For a stride-1 convolution whose output is as wide as its input
    /// (a "same" convolution), output position `q = oh * w + ow` of
    /// kernel tap `(i, j)` reads input position `q + shift` of the plane:
    /// returns the positions of the valid output rows, the part of them
    /// whose `q + shift` lies inside the plane, and `shift`. Entries of
    /// that part in columns outside the tap's valid ones wrapped around
    /// a row's edge and belong to the padding.
    pub(super) fn same_shift(
        &self,
        i: usize,
        j: usize,
    ) -> Option<(Range<usize>, Range<usize>, isize)> {
        let (d, pad) = (self.cfg.dilation, self.cfg.padding);
        if self.cfg.stride != 1 || self.wo != self.w {
            return None;
        }
        let shift =
            ((i * d) as isize - pad as isize) * self.w as isize + (j * d) as isize - pad as isize;
        let rows_ok = self.valid(i * d, self.h, self.ho);
        let rows = rows_ok.start * self.w..rows_ok.end * self.w;
        // Clamped into `rows`: a tap may miss the plane entirely (a 3x3
        // kernel's corner on a 1x1 plane).
        let lo = rows.start.max(shift.min(0).unsigned_abs()).min(rows.end);
        let hi = rows
            .end
            .min((self.h * self.w).saturating_add_signed(-shift))
            .max(lo);
        Some((rows, lo..hi, shift))
    }

    /// Output positions `ow` whose input column `ow * stride + offset -
    /// padding` lies inside `0..width`, as a range.
    pub(super) fn valid(
        &self,
        offset: usize,
        width: usize,
        outputs: usize,
    ) -> std::ops::Range<usize> {
        let (s, pad) = (self.cfg.stride, self.cfg.padding);
        // First ow with ow*s + offset >= pad; last with ow*s + offset < pad + width.
        let lo = pad.saturating_sub(offset).div_ceil(s);
        let hi = (pad + width)
            .saturating_sub(offset)
            .div_ceil(s)
            .min(outputs);
        lo.min(hi)..hi
    }
}

/// The patch matrix `[c * kh * kw, b * ho * wo]` of the `b` images
/// `imgs` of `x` (`[n, c, h, w]`), written to `cols`: row `(c, i, j)`,
/// column `(n, oh, ow)` holds `x[n, c, oh*s + i*d - pad, ow*s + j*d -
/// pad]`, zero outside the image. Every element of `cols` is written.
pub fn im2col_into<T: WithDType>(x: &[T], g: &Geometry, imgs: Range<usize>, cols: &mut [T]) {
    let (p, hw, b) = (g.p(), g.h * g.w, imgs.len());
    let (s, d, pad) = (g.cfg.stride, g.cfg.dilation, g.cfg.padding);
    let zero = T::from_f64(0.0);
    cols.par_chunks_mut((b * p).max(1))
        .enumerate()
        .for_each(|(row, out)| {
            let (c, i, j) = (row / (g.kh * g.kw), (row / g.kw) % g.kh, row % g.kw);
            let cols_ok = g.valid(j * d, g.w, g.wo);
            let rows_ok = g.valid(i * d, g.h, g.ho);
            // Input column of the first valid output column (unused, and
            // not below zero, when no column is valid).
            let first = (cols_ok.start * s + j * d).saturating_sub(pad);
            let same = g.same_shift(i, j);
            for (slot, n) in imgs.clone().enumerate() {
                let plane = &x[(n * g.c + c) * hw..][..hw];
                let out = &mut out[slot * p..][..p];
                // Only the entries that fall in the padding are zeroed.
                out[..rows_ok.start * g.wo].fill(zero);
                out[rows_ok.end * g.wo..].fill(zero);
                if let Some((rows, inside, shift)) = same.clone() {
                    // The valid rows in one copy rather than one per row
                    // (rows are 2-16 elements in late ResNet stages), then
                    // the entries that wrapped around a row's edge zeroed.
                    out[rows.start..inside.start].fill(zero);
                    out[inside.end..rows.end].fill(zero);
                    if !inside.is_empty() {
                        out[inside.clone()].copy_from_slice(
                            &plane[inside.start.saturating_add_signed(shift)
                                ..inside.end.saturating_add_signed(shift)],
                        );
                    }
                    if cols_ok.len() < g.wo {
                        for row in out[rows].chunks_mut(g.wo) {
                            row[..cols_ok.start].fill(zero);
                            row[cols_ok.end..].fill(zero);
                        }
                    }
                    continue;
                }
                for oh in rows_ok.clone() {
                    let ih = oh * s + i * d - pad;
                    let src = &plane[ih * g.w..][..g.w];
                    let dst = &mut out[oh * g.wo..][..g.wo];
                    dst[..cols_ok.start].fill(zero);
                    dst[cols_ok.end..].fill(zero);
                    let dst = &mut dst[cols_ok.clone()];
                    if dst.is_empty() {
                        continue;
                    }
                    if s == 1 {
                        dst.copy_from_slice(&src[first..first + dst.len()]);
                    } else {
                        for (o, v) in dst.iter_mut().zip(src[first..].iter().step_by(s)) {
                            *o = *v;
                        }
                    }
                }
            }
        });
}

/// The adjoint of [`im2col_into`]: every patch entry of `cols` (the
/// patch matrix of `b` images) added to the input position it came
/// from, in `x` (`[b, c, h, w]`, those images' part of the input).
/// Entries of `cols` that fall in the padding may be zeroed.
pub fn col2im_add<T: WithDType>(cols: &mut [T], g: &Geometry, x: &mut [T]) {
    let hw = g.h * g.w;
    let (p, b) = (g.p(), x.len() / (g.c * hw).max(1));
    let bp = b * p;
    let (s, d, pad) = (g.cfg.stride, g.cfg.dilation, g.cfg.padding);
    // Per kernel tap (i, j), row-major.
    let same: Vec<_> = (0..g.kh * g.kw)
        .map(|t| g.same_shift(t / g.kw, t % g.kw))
        .collect();
    if same.first().is_some_and(Option::is_some) {
        // Each tap's valid rows are then added in one run per plane; the
        // entries in between that wrapped around a row's edge are padding,
        // zeroed first so that they add nothing.
        let zero = T::from_f64(0.0);
        cols.par_chunks_mut(bp.max(1))
            .enumerate()
            .for_each(|(row, out)| {
                let j = row % g.kw;
                let cols_ok = g.valid(j * d, g.w, g.wo);
                if cols_ok.len() < g.wo {
                    for row in out.chunks_mut(g.wo) {
                        row[..cols_ok.start].fill(zero);
                        row[cols_ok.end..].fill(zero);
                    }
                }
            });
    }
    let cols = &*cols;
    x.par_chunks_mut(hw.max(1))
        .enumerate()
        .for_each(|(q, plane)| {
            let (n, c) = (q / g.c, q % g.c);
            for i in 0..g.kh {
                let rows_ok = g.valid(i * d, g.h, g.ho);
                for j in 0..g.kw {
                    let cols_ok = g.valid(j * d, g.w, g.wo);
                    let row = &cols[((c * g.kh + i) * g.kw + j) * bp + n * p..][..p];
                    if let Some((_, inside, shift)) = same[i * g.kw + j].clone() {
                        if inside.is_empty() {
                            continue;
                        }
                        let dst = &mut plane[inside.start.saturating_add_signed(shift)
                            ..inside.end.saturating_add_signed(shift)];
                        for (a, v) in dst.iter_mut().zip(&row[inside]) {
                            *a += *v;
                        }
                        continue;
                    }
                    for oh in rows_ok.clone() {
                        let ih = oh * s + i * d - pad;
                        let dst = &mut plane[ih * g.w..][..g.w];
                        let src = &row[oh * g.wo..][..g.wo];
                        let first = (cols_ok.start * s + j * d).saturating_sub(pad);
                        if s == 1 {
                            let dst = &mut dst[first..first + cols_ok.len()];
                            for (a, v) in dst.iter_mut().zip(&src[cols_ok.clone()]) {
                                *a += *v;
                            }
                        } else {
                            for (k, ow) in cols_ok.clone().enumerate() {
                                dst[first + k * s] += src[ow];
                            }
                        }
                    }
                }
            }
        });
}

/// `[b, a, p]` (`src`, `b` images) -> `[a, b * p]` (`dst`): the images'
/// planes side by side in each row, as the GEMMs take them.
pub fn gather_rows<T: WithDType>(src: &[T], a: usize, p: usize, dst: &mut [T]) {
    let b = src.len() / (a * p).max(1);
    dst.par_chunks_mut((b * p).max(1))
        .enumerate()
        .for_each(|(ai, row)| {
            for bi in 0..b {
                row[bi * p..][..p].copy_from_slice(&src[(bi * a + ai) * p..][..p]);
            }
        });
}

/// The inverse of [`gather_rows`]: `[a, b * p]` (`src`) -> `[b, a, p]` (`dst`).
pub fn scatter_rows<T: WithDType>(src: &[T], a: usize, p: usize, dst: &mut [T]) {
    let b = dst.len() / (a * p).max(1);
    dst.par_chunks_mut((a * p).max(1))
        .enumerate()
        .for_each(|(bi, image)| {
            for ai in 0..a {
                image[ai * p..][..p].copy_from_slice(&src[ai * b * p + bi * p..][..p]);
            }
        });
}
