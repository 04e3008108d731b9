//! Direct weight gradient vectorized over output channels, in f32 on
//! CPUs with AVX-512: 3x3 convolutions with padding 1, stride 1 or 2,
//! whose output rows are 4, 8 or 16 wide, and 7x7 ones (a stem) whose
//! output rows are 8, 16, ... wide (the adjoint of [`super::narrow`]'s
//! layout).
//!
//! `dW[o][c][tap] = sum over images and positions q of dy[o][q] *
//! x[c][q + tap]`: a GEMM whose inner dimension is every position of the
//! batch. As im2col + GEMM it writes the patch matrix (9x the input, 12x
//! for a 7x7 at stride 2) and packs it again. Measured at batch 32
//! against that path (and PyTorch): 64 channels at 16x16 2.4 against
//! 3.8-4.6 ms (2.0), 32 channels at 16x16 0.84 against 2.1 (0.66), 128
//! channels at 8x8 2.1 against 3.1; the stride-2 convolution from 64
//! channels at 16x16 to 128 at 8x8 1.7 against 3.9 (1.6); the stem (5 to
//! 64 channels, 7x7, 64x64 to 32x32) 6.3 against 11-14 (17.8); 128
//! channels at 4x4 0.70 against 1.0 (0.68), level at 256 channels. On
//! rows 2 wide it was slower (512 channels: 4.2 against 2.7 ms).
//!
//! For a block of [`OUTPUTS`] output channels, one input channel and up
//! to 9 taps (a whole 3x3 kernel, or one row of a 7x7), the taps' sums
//! stay in registers over a run of images: per position it loads the
//! output gradient of the block's channels (two vectors, from a copy with
//! the channels innermost) and multiplies them by the input values under
//! the taps, read from a zero-padded copy. A task is one block over as
//! many images as keep its output gradient in a core's cache, and the
//! tasks' partial sums are added up at the end.
#![allow(unsafe_code)]

use rayon::prelude::*;

use super::direct::has_avx512;
use super::direct::padded;
use super::im2col::Geometry;
use super::narrow::OUTPUTS;

/// Values in one 512-bit vector of f32.
const LANES: usize = 16;

/// Whether the f32 convolution `g`'s weight gradient takes this path.
pub fn applies(g: &Geometry) -> bool {
    let c = g.cfg;
    let shape = match (g.kh, g.kw) {
        (3, 3) => c.padding == 1 && matches!(g.wo, 4 | 8 | 16),
        (7, 7) => g.wo.is_multiple_of(8),
        _ => false,
    };
    has_avx512()
        && c.groups == 1
        && matches!(c.stride, 1 | 2)
        && c.dilation == 1
        && shape
        && g.o.is_multiple_of(OUTPUTS)
        // Empty tensors take the general path, which allows for them.
        && g.n * g.c * g.o > 0
}

/// Bytes of a block's output gradient per task: the images of a task are
/// as many as keep it in a core's cache.
const TASK_BYTES: usize = 512 << 10;

/// Weight gradient `[o, c, kh, kw]` of the convolution `g` of `x` from
/// its output gradient `dy`; `None` where [`applies`] is false.
pub fn weight_grad(x: &[f32], dy: &[f32], g: &Geometry) -> Option<Vec<f32>> {
    if !applies(g) {
        return None;
    }
    let (p, blocks, kk) = (g.ho * g.wo, g.o / OUTPUTS, g.kh * g.kw);
    let np = g.n * p;
    let xp = padded(x, g);
    // dy per block of output channels with the channels innermost:
    // [o / OUTPUTS, n * p, OUTPUTS].
    let mut dyt = vec![0f32; g.o * np];
    dyt.par_chunks_mut(np * OUTPUTS)
        .enumerate()
        .for_each(|(ob, block)| {
            for n in 0..g.n {
                for oo in 0..OUTPUTS {
                    let plane = &dy[(n * g.o + ob * OUTPUTS + oo) * p..][..p];
                    for (q, v) in plane.iter().enumerate() {
                        block[(n * p + q) * OUTPUTS + oo] = *v;
                    }
                }
            }
        });
    // One task per (block, run of images): its share of the block's
    // output gradient stays in cache while every input channel and
    // kernel row is summed over it. Each task's partial gradient is
    // `[OUTPUTS, c, kh * kw]`, the block's rows of dW.
    let per_task = (TASK_BYTES / (p * OUTPUTS * 4)).clamp(1, g.n);
    let runs = g.n.div_ceil(per_task);
    let row_len = g.c * kk;
    let partials: Vec<Vec<f32>> = (0..blocks * runs)
        .into_par_iter()
        .map(|task| {
            let (ob, run) = (task / runs, task % runs);
            let imgs = run * per_task..((run + 1) * per_task).min(g.n);
            let block = &dyt[(ob * np + imgs.start * p) * OUTPUTS..][..imgs.len() * p * OUTPUTS];
            let mut part = vec![0f32; OUTPUTS * row_len];
            let mut sums = [0f32; 9 * OUTPUTS];
            for c in 0..g.c {
                // Kernel rows `i0..i0 + rows`: all 9 taps of a 3x3, one
                // row of a 7x7 (the accumulators one register file holds).
                let rows = if g.kh == 3 { 3 } else { 1 };
                for i0 in (0..g.kh).step_by(rows) {
                    let at = Sums {
                        g,
                        xp: &xp,
                        dyt: block,
                        imgs: imgs.clone(),
                        c,
                        i0,
                    };
                    #[cfg(target_arch = "x86_64")]
                    // SAFETY: `applies` checked that the CPU has AVX-512F.
                    unsafe {
                        match (g.kh, g.cfg.stride) {
                            (3, 1) => avx512::sums::<3, 3, 9, 1>(&at, &mut sums),
                            (3, _) => avx512::sums::<3, 3, 9, 2>(&at, &mut sums),
                            (_, 1) => avx512::sums::<1, 7, 7, 1>(&at, &mut sums),
                            _ => avx512::sums::<1, 7, 7, 2>(&at, &mut sums),
                        }
                    }
                    #[cfg(not(target_arch = "x86_64"))]
                    {
                        let _ = at;
                        unreachable!("applies() is false off x86-64");
                    }
                    let taps = rows * g.kw;
                    for oo in 0..OUTPUTS {
                        let to = &mut part[oo * row_len + c * kk + i0 * g.kw..][..taps];
                        for (t, v) in to.iter_mut().enumerate() {
                            *v = sums[t * OUTPUTS + oo];
                        }
                    }
                }
            }
            part
        })
        .collect();
    let mut dw = vec![0f32; g.o * row_len];
    for (task, part) in partials.iter().enumerate() {
        let ob = task / runs;
        let rows = &mut dw[ob * OUTPUTS * row_len..][..OUTPUTS * row_len];
        for (d, v) in rows.iter_mut().zip(part) {
            *d += *v;
        }
    }
    Some(dw)
}

/// What one call of the kernel sums: kernel rows from `i0` of input
/// channel `c`, over the images `imgs`, whose block of the output
/// gradient is `dyt` (`[imgs.len() * ho * wo, OUTPUTS]`); `xp` is the
/// whole padded input.
struct Sums<'a> {
    g: &'a Geometry,
    xp: &'a [f32],
    dyt: &'a [f32],
    imgs: std::ops::Range<usize>,
    c: usize,
    i0: usize,
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{LANES, OUTPUTS, Sums};

    /// The weight gradients of `T = R * KW` taps (`R` kernel rows from
    /// `at.i0`) for one input channel and one block of output channels,
    /// into `out` (`[T, OUTPUTS]`), at stride `S`.
    #[target_feature(enable = "avx512f")]
    pub(super) fn sums<const R: usize, const KW: usize, const T: usize, const S: usize>(
        at: &Sums<'_>,
        out: &mut [f32],
    ) {
        let g = at.g;
        let pad = g.cfg.padding;
        let (wp, hp, p) = (g.w + 2 * pad, g.h + 2 * pad, g.ho * g.wo);
        let plane = wp * hp;
        // Offset of each tap's input from the padded offset of the
        // position's top-left neighbour, kernel row `i0` on.
        let tap: [usize; T] = std::array::from_fn(|t| (at.i0 + t / KW) * wp + t % KW);
        // The largest read of a plane is at S (ho - 1) wp + S (wo - 1) +
        // tap[T - 1], inside the plane; of dyt, at its end (both checked
        // here, relied on below).
        assert!(
            R * KW == T && at.i0 + R <= g.kh && KW == g.kw,
            "narrow_grad: taps"
        );
        assert!(
            S * (g.ho - 1) + g.kh <= hp && S * (g.wo - 1) + g.kw <= wp,
            "narrow_grad: plane"
        );
        let images = at.imgs.len();
        assert!(at.xp.len() == g.n * g.c * plane && at.c < g.c && at.imgs.end <= g.n);
        assert!(at.dyt.len() == images * p * OUTPUTS && out.len() >= T * OUTPUTS);
        let mut acc = [[_mm512_setzero_ps(); 2]; T];
        for (slot, n) in at.imgs.clone().enumerate() {
            let x = &at.xp[(n * g.c + at.c) * plane..][..plane];
            let d = &at.dyt[slot * p * OUTPUTS..][..p * OUTPUTS];
            for r in 0..g.ho {
                for col in 0..g.wo {
                    // SAFETY: the position's gradient is two vectors inside
                    // `d`; its inputs lie inside `x` (see above).
                    unsafe {
                        let dv = d.as_ptr().add((r * g.wo + col) * OUTPUTS);
                        let (d0, d1) = (_mm512_loadu_ps(dv), _mm512_loadu_ps(dv.add(LANES)));
                        let xs = x.as_ptr().add(S * (r * wp + col));
                        for (a, off) in acc.iter_mut().zip(tap) {
                            let v = _mm512_set1_ps(*xs.add(off));
                            a[0] = _mm512_fmadd_ps(d0, v, a[0]);
                            a[1] = _mm512_fmadd_ps(d1, v, a[1]);
                        }
                    }
                }
            }
        }
        for (t, a) in acc.iter().enumerate() {
            for (half, v) in a.iter().enumerate() {
                let to = &mut out[t * OUTPUTS + half * LANES..][..LANES];
                // SAFETY: `to` holds LANES = 16 floats.
                unsafe { _mm512_storeu_ps(to.as_mut_ptr(), *v) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::ops::direct::tests::{geometry, noise};

    /// Empty batches and channel counts leave the path to the general one.
    #[test]
    fn empty_tensors_are_not_taken() {
        for (xs, ks) in [([0, 3, 8, 8], [32, 3, 3, 3]), ([2, 3, 8, 8], [0, 3, 3, 3])] {
            let g = geometry(xs, ks, 1, 1);
            assert!(!applies(&g) && !super::super::narrow::applies(&g), "{g:?}");
        }
    }

    /// The weight gradient equals its definition on every output width
    /// and stride (an odd input width too), several blocks of output
    /// channels, odd channel counts and a 7x7 stem.
    #[test]
    fn weight_gradient_matches_the_definition() {
        for (xs, ks, stride, padding) in [
            ([2, 3, 5, 8], [64, 3, 3, 3], 1, 1),
            ([3, 2, 16, 16], [32, 2, 3, 3], 1, 1),
            ([2, 3, 7, 16], [32, 3, 3, 3], 2, 1),
            ([1, 2, 9, 31], [64, 2, 3, 3], 2, 1),
            ([2, 3, 4, 4], [32, 3, 3, 3], 1, 1),
            ([1, 2, 8, 7], [32, 2, 3, 3], 2, 1),
            // A stem: 7x7, padding 3, stride 2, rows of 16.
            ([3, 2, 6, 32], [32, 2, 7, 7], 2, 3),
        ] {
            let g = geometry(xs, ks, stride, padding);
            assert_eq!(applies(&g), has_avx512(), "{g:?}");
            let (x, dy) = (noise(g.input_len(), 1), noise(g.n * g.o * g.p(), 2));
            let Some(dw) = weight_grad(&x, &dy, &g) else {
                continue;
            };
            for (at, got) in dw.iter().enumerate() {
                let kk = g.kh * g.kw;
                let (o, c, i, j) = (at / (g.c * kk), at / kk % g.c, at / g.kw % g.kh, at % g.kw);
                let mut want = 0.0;
                for n in 0..g.n {
                    for r in 0..g.ho {
                        for col in 0..g.wo {
                            let (s, pad) = (g.cfg.stride, g.cfg.padding);
                            let (ih, iw) = (
                                (s * r + i).wrapping_sub(pad),
                                (s * col + j).wrapping_sub(pad),
                            );
                            if ih < g.h && iw < g.w {
                                let xv = x[((n * g.c + c) * g.h + ih) * g.w + iw] as f64;
                                want += xv * dy[((n * g.o + o) * g.ho + r) * g.wo + col] as f64;
                            }
                        }
                    }
                }
                assert!(
                    (*got as f64 - want).abs() < 1e-4 * want.abs().max(1.0),
                    "{g:?} element {at}: {got} against {want}"
                );
            }
        }
    }
}
