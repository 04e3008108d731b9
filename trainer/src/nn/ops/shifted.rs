//! Stride-1 "same" convolutions on large planes without a patch matrix:
//! each kernel tap is one GEMM on a shifted view of the zero-padded
//! chunk, summed over the taps.
//!
//! With every plane of a chunk zero-padded by `pad` on each side and the
//! planes of a channel side by side (`[c, L]`), output position `q` (in
//! padded coordinates) of tap `(i, j)` reads input position `q + shift`,
//! `shift = (i*d - pad) * wp + (j*d - pad)`, for every image at once. So
//! `Y = sum_t W_t X[shift_t]`, `dW_t = dY X[shift_t]^T` and
//! `dX = sum_t W_t^T dY[-shift_t]`, each a GEMM with the channels as
//! inner dimension. The padding's positions are computed too and thrown
//! away (6% more work at 64x64, 13% at 32x32), where im2col writes nine
//! copies of the input. In the IST generator's decoder (planes up to
//! 64x64, few channels) that copy, not the GEMM, set the pace: its
//! training step went from 0.215 to 0.184 s (`generator-step`, width 32).

use candle_core::WithDType;
use rayon::prelude::*;

use super::conv::{sum_parts, zeros_if};
use super::gemm::{Strides, gemm};
use super::im2col::Geometry;
use super::scratch::Scratch;
use super::threads;

/// Smallest plane (`h * w`) this path takes. At 16x16 (27% padding) it
/// made the width-64 ResNet's training step slower (`training-step`,
/// five runs alternating with this limit: median 0.291 against 0.276 s),
/// though the IST generator's a little faster.
const SMALLEST_PLANE: usize = 1024;

/// Bytes of padded input and output planes per chunk of images.
const CHUNK_BYTES: usize = 4 << 20;

/// Whether the convolution `g` takes this path: stride 1, one group,
/// output planes the size of the input's, and large.
pub fn applies(g: &Geometry) -> bool {
    g.cfg.groups == 1 && g.ho == g.h && g.p() >= SMALLEST_PLANE && g.same_shift(0, 0).is_some()
}

/// The padded layout of chunks of `b` images.
#[derive(Clone, Copy)]
struct Padded {
    /// Padded plane width and size.
    wp: usize,
    plane: usize,
    /// Zeros before and after the planes, at least the largest shift.
    guard: usize,
    /// Positions of the chunk's padded planes (`b * plane`).
    n: usize,
    /// Row length: `guard + n + guard`.
    len: usize,
}

impl Padded {
    fn new(g: &Geometry, b: usize) -> Padded {
        let pad = g.cfg.padding;
        let (wp, hp) = (g.w + 2 * pad, g.h + 2 * pad);
        let guard = pad * wp + pad;
        Padded {
            wp,
            plane: wp * hp,
            guard,
            n: b * wp * hp,
            len: 2 * guard + b * wp * hp,
        }
    }

    /// Tap `t`'s shift.
    fn shift(&self, g: &Geometry, t: usize) -> isize {
        let (d, pad) = (g.cfg.dilation as isize, g.cfg.padding as isize);
        let (i, j) = ((t / g.kw) as isize, (t % g.kw) as isize);
        (i * d - pad) * self.wp as isize + (j * d - pad)
    }

    /// Where, in a row of the chunk's padded planes (after any guard),
    /// row `r` of image `n`'s unpadded plane starts: `pad` rows and
    /// columns into that image's padded plane.
    fn at(&self, g: &Geometry, n: usize, r: usize) -> usize {
        let pad = g.cfg.padding;
        n * self.plane + (r + pad) * self.wp + pad
    }
}

/// Images per chunk, at least one.
fn images_per_chunk<T>(g: &Geometry) -> usize {
    let pad = g.cfg.padding;
    let plane = (g.w + 2 * pad) * (g.h + 2 * pad) * std::mem::size_of::<T>();
    (CHUNK_BYTES / ((g.c + g.o) * plane).max(1)).clamp(1, g.n.max(1))
}

/// `rows` rows of `len` (`[rows, len]`) from the images `imgs` of `src`
/// (`[n, rows, h, w]`), each plane at its padded place after `start`
/// positions of the row, zeros everywhere else.
fn pad_into<T: WithDType>(
    src: &[T],
    g: &Geometry,
    rows: usize,
    imgs: std::ops::Range<usize>,
    at: &Padded,
    start: usize,
    dst: &mut [T],
) {
    let zero = T::from_f64(0.0);
    dst[..rows * at.len]
        .par_chunks_mut(at.len)
        .enumerate()
        .for_each(|(c, row)| {
            row.fill(zero);
            for (slot, n) in imgs.clone().enumerate() {
                let plane = &src[(n * rows + c) * g.h * g.w..][..g.h * g.w];
                for (r, line) in plane.chunks(g.w).enumerate() {
                    let to = start + at.at(g, slot, r);
                    row[to..to + g.w].copy_from_slice(line);
                }
            }
        });
}

/// The inverse of [`pad_into`] without the padding: the planes of
/// `rows` rows of `src` (`[rows, n]`, no guard) written to the images'
/// part `dst` of an `[n, rows, h, w]` tensor.
fn unpad<T: WithDType>(src: &[T], g: &Geometry, rows: usize, at: &Padded, dst: &mut [T]) {
    dst.par_chunks_mut((g.h * g.w).max(1))
        .enumerate()
        .for_each(|(q, plane)| {
            let (slot, c) = (q / rows, q % rows);
            for (r, line) in plane.chunks_mut(g.w).enumerate() {
                let from = c * at.n + at.at(g, slot, r);
                line.copy_from_slice(&src[from..from + g.w]);
            }
        });
}

/// `dst (m x n) = sum_t lhs_t (m x k) * rows[shift_t * sign]`: the
/// kernel taps' GEMMs, `lhs_t` at offset `t` of `lhs` with strides
/// `lhs_s`, and the `k` rows of `rows` (`[k, at.len]`) read `sign *
/// shift_t` positions on.
#[allow(clippy::too_many_arguments)]
fn sum_over_taps<T: WithDType>(
    g: &Geometry,
    at: &Padded,
    (m, k): (usize, usize),
    dst: &mut [T],
    lhs: &[T],
    lhs_s: Strides,
    rows: &[T],
    sign: isize,
) {
    for t in 0..g.kh * g.kw {
        let from = at.guard.saturating_add_signed(sign * at.shift(g, t));
        gemm(
            (m, at.n, k),
            dst,
            Strides::row_major(at.n),
            t > 0,
            &lhs[t..],
            lhs_s,
            &rows[from..],
            Strides { rs: at.len, cs: 1 },
            threads(),
        );
    }
}

/// `[n, o, h, w]` output of the convolution `g` of `x` by `w`.
pub fn forward<T: Scratch>(x: &[T], w: &[T], g: &Geometry) -> Vec<T> {
    let (b, taps, p) = (images_per_chunk::<T>(g), g.kh * g.kw, g.p());
    let at = Padded::new(g, b);
    let mut y = vec![T::from_f64(0.0); g.n * g.o * p];
    T::with_scratch(g.c * at.len + g.o * at.n, |scratch| {
        let (stage, grid) = scratch.split_at_mut(g.c * at.len);
        for imgs in (0..g.n).step_by(b).map(|s| s..(s + b).min(g.n)) {
            let at = Padded::new(g, imgs.len());
            pad_into(x, g, g.c, imgs.clone(), &at, at.guard, stage);
            let w_s = Strides {
                rs: g.c * taps,
                cs: taps,
            };
            sum_over_taps(g, &at, (g.o, g.c), grid, w, w_s, stage, 1);
            unpad(
                grid,
                g,
                g.o,
                &at,
                &mut y[imgs.start * g.o * p..imgs.end * g.o * p],
            );
        }
    });
    y
}

/// The weight gradient (when `x` is given) and the input gradient (when
/// `w` is given) of the convolution `g` from its output gradient `dy`;
/// a gradient not asked for is empty.
pub fn grads<T: Scratch>(
    x: Option<&[T]>,
    w: Option<&[T]>,
    dy: &[T],
    g: &Geometry,
) -> (Vec<T>, Vec<T>) {
    let (b, taps) = (images_per_chunk::<T>(g), g.kh * g.kw);
    let at = Padded::new(g, b);
    let k = g.c * taps;
    // Partial weight gradients, one per thread (each sums its share of
    // the positions: dW is small and its inner dimension long).
    let parts = threads().max(1);
    let mut dw = zeros_if(x.is_some(), parts * g.o * k);
    let mut dx = zeros_if(w.is_some(), g.input_len());
    let chw = g.c * g.h * g.w;
    T::with_scratch(g.c * at.len + g.o * at.len + g.c * at.n, |scratch| {
        let (stage, rest) = scratch.split_at_mut(g.c * at.len);
        let (dyp, dxg) = rest.split_at_mut(g.o * at.len);
        for imgs in (0..g.n).step_by(b).map(|s| s..(s + b).min(g.n)) {
            let at = Padded::new(g, imgs.len());
            pad_into(dy, g, g.o, imgs.clone(), &at, at.guard, dyp);
            if let Some(x) = x {
                pad_into(x, g, g.c, imgs.clone(), &at, at.guard, stage);
                let (stage, dyp) = (&*stage, &*dyp);
                dw.par_chunks_mut(g.o * k)
                    .enumerate()
                    .for_each(|(part, dw)| {
                        let span = at.n * part / parts..at.n * (part + 1) / parts;
                        for t in 0..taps {
                            let from = at.guard.saturating_add_signed(at.shift(g, t));
                            gemm(
                                (g.o, g.c, span.len()),
                                &mut dw[t..],
                                Strides { rs: k, cs: taps },
                                true,
                                &dyp[at.guard + span.start..],
                                Strides::row_major(at.len),
                                &stage[from + span.start..],
                                Strides { rs: 1, cs: at.len },
                                1,
                            );
                        }
                    });
            }
            if let Some(w) = w {
                // W_t^T, read in place: W is small here.
                let wt_s = Strides { rs: taps, cs: k };
                sum_over_taps(g, &at, (g.c, g.o), dxg, w, wt_s, dyp, -1);
                unpad(dxg, g, g.c, &at, &mut dx[imgs.start * chw..imgs.end * chw]);
            }
        }
    });
    if x.is_some() {
        dw = sum_parts(dw, g.o * k);
    }
    (dw, dx)
}
