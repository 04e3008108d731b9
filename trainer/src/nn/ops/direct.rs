//! Direct convolution for stride-1 "same" convolutions of planes 16,
//! 32, ... wide, in f32 on CPUs with AVX-512, without a patch matrix.
//!
//! An im2col GEMM writes and reads a patch matrix 9x the input (3x3) and
//! the GEMM packs it again, for only as many multiply-adds per patch
//! entry as there are output channels: at 32 channels, 16x16 planes, the
//! forward pass took 2.0 ms where PyTorch takes 0.5. Here a tile of
//! [`OUTPUTS`] output channels by [`VECTORS`] vectors of 16 positions is
//! summed in registers straight from a zero-padded copy of the input,
//! like a GEMM microkernel whose other operand is the input itself: tap
//! `(i, j)` of the 16 positions from `(r, col)` reads 16 consecutive
//! values of padded row `r + i` from column `col + j`. That needs rows
//! a whole number of vectors wide; narrower planes keep im2col. Measured
//! against im2col (or the shifted GEMMs from 32x32) on batch 32: 0.8
//! against 2.0 ms at 32 channels 16x16, 2.9 against 4.9 at 32 channels
//! 32x32, 2.6 against 3.6 at 64 channels 16x16.
#![allow(unsafe_code)]

use candle_core::WithDType;
use rayon::prelude::*;

use super::im2col::Geometry;
use super::{narrow, narrow_grad};

/// Positions in one 512-bit vector of f32.
const LANES: usize = 16;

/// Output channels summed at once.
const OUTPUTS: usize = 6;

/// Vectors of positions summed at once.
const VECTORS: usize = 4;

/// Most output channels that take this path (the most measured: at 128
/// channels, 16x16 planes, 9.5 ms against the GEMM's 13.3).
const MOST_OUTPUTS: usize = 128;

/// An element type of the convolution kernels: f32 takes the direct
/// kernel where it applies, f64 (the gradient checks' precision) never.
pub trait Direct: WithDType {
    /// [`forward`] in this element type, where it applies.
    fn direct_forward(x: &[Self], w: &[Self], g: &Geometry) -> Option<Vec<Self>>;

    /// The weight gradient by [`narrow_grad`], where it applies.
    fn direct_weight_grad(x: &[Self], dy: &[Self], g: &Geometry) -> Option<Vec<Self>>;
}

impl Direct for f32 {
    fn direct_forward(x: &[f32], w: &[f32], g: &Geometry) -> Option<Vec<f32>> {
        forward(x, w, g).or_else(|| narrow::forward(x, w, g))
    }

    fn direct_weight_grad(x: &[f32], dy: &[f32], g: &Geometry) -> Option<Vec<f32>> {
        narrow_grad::weight_grad(x, dy, g)
    }
}

impl Direct for f64 {
    fn direct_forward(_: &[f64], _: &[f64], _: &Geometry) -> Option<Vec<f64>> {
        None
    }

    fn direct_weight_grad(_: &[f64], _: &[f64], _: &Geometry) -> Option<Vec<f64>> {
        None
    }
}

/// Whether the f32 convolution `g` takes this path.
pub fn applies(g: &Geometry) -> bool {
    let c = g.cfg;
    has_avx512()
        && c.groups == 1
        && c.stride == 1
        && c.dilation == 1
        && g.ho == g.h
        && g.wo == g.w
        && g.w.is_multiple_of(LANES)
        && g.o <= MOST_OUTPUTS
        && g.kh == 2 * c.padding + 1
        && g.kw == 2 * c.padding + 1
}

/// Whether this CPU runs the kernel.
pub(super) fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A convolution and the sizes of its padded input.
#[derive(Clone, Copy)]
struct Kernel {
    g: Geometry,
    /// Padded width.
    wp: usize,
    /// Padded plane.
    plane: usize,
}

/// `x` (`[n, c, h, w]`) with every plane zero-padded by the convolution
/// `g`'s padding on each side.
pub(super) fn padded(x: &[f32], g: &Geometry) -> Vec<f32> {
    let pad = g.cfg.padding;
    let wp = g.w + 2 * pad;
    let plane = wp * (g.h + 2 * pad);
    let mut xp = vec![0f32; g.n * g.c * plane];
    xp.par_chunks_mut(plane)
        .zip(x.par_chunks(g.h * g.w))
        .for_each(|(dst, src)| {
            for (r, line) in src.chunks(g.w).enumerate() {
                let at = (r + pad) * wp + pad;
                dst[at..at + g.w].copy_from_slice(line);
            }
        });
    xp
}

/// The kernel `w` (`[o, k]`, `k = c * kh * kw` of the convolution `g`) as
/// `[o / block, k, block]`, zero past `o`: a tap's weights for a tile of
/// `block` output channels are one contiguous run.
pub(super) fn packed(w: &[f32], g: &Geometry, block: usize) -> Vec<f32> {
    let kk = g.k();
    let mut packed = vec![0f32; g.o.div_ceil(block) * kk * block];
    packed
        .par_chunks_mut((kk * block).max(1))
        .zip(w.par_chunks((kk * block).max(1)))
        .for_each(|(panel, rows)| {
            for (oo, row) in rows.chunks(kk).enumerate() {
                for (t, v) in row.iter().enumerate() {
                    panel[t * block + oo] = *v;
                }
            }
        });
    packed
}

/// `[n, o, h, w]` output of the convolution `g` of `x` by `w`; `None`
/// where [`applies`] is false.
pub fn forward(x: &[f32], w: &[f32], g: &Geometry) -> Option<Vec<f32>> {
    if !applies(g) {
        return None;
    }
    let pad = g.cfg.padding;
    let wp = g.w + 2 * pad;
    let k = Kernel {
        g: *g,
        wp,
        plane: wp * (g.h + 2 * pad),
    };
    let xp = padded(x, g);
    let packed = packed(w, g, OUTPUTS);
    let mut y = vec![0f32; g.n * g.o * g.h * g.w];
    let image_len = g.o * g.h * g.w;
    y.par_chunks_mut(image_len).enumerate().for_each(|(n, y)| {
        let xn = &xp[n * g.c * k.plane..];
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `applies` checked that the CPU has AVX-512F.
        unsafe {
            avx512::image(&k, xn, &packed, y)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (xn, y);
            unreachable!("applies() is false off x86-64");
        }
    });
    Some(y)
}

/// `[n, c, h, w]` input gradient of the convolution `g` by `w` from its
/// output gradient `dy`: the direct convolution of `dy` by the kernel
/// flipped and with its channels swapped (a same convolution's padding is
/// the same both ways); `None` where the direct kernel does not apply.
pub fn input_grad<T: Direct>(w: &[T], dy: &[T], g: &Geometry) -> Option<Vec<T>> {
    // Only a stride-1 same convolution's input gradient is a convolution
    // of the same shape.
    if g.cfg.stride != 1 || (g.ho, g.wo) != (g.h, g.w) {
        return None;
    }
    let swapped = Geometry::conv(&[g.n, g.o, g.ho, g.wo], &[g.c, g.o, g.kh, g.kw], g.cfg).ok()?;
    if !(applies(&swapped) || narrow::applies(&swapped)) {
        return None;
    }
    // flipped[c][o] is w[o][c] turned by 180 degrees: its taps reversed.
    let taps = g.kh * g.kw;
    let mut flipped = vec![T::from_f64(0.0); w.len()];
    flipped
        .par_chunks_mut((g.o * taps).max(1))
        .enumerate()
        .for_each(|(c, row)| {
            for (o, kernel) in row.chunks_mut(taps).enumerate() {
                let from = &w[(o * g.c + c) * taps..][..taps];
                for (dst, src) in kernel.iter_mut().zip(from.iter().rev()) {
                    *dst = *src;
                }
            }
        });
    T::direct_forward(dy, &flipped, &swapped)
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{Kernel, LANES, OUTPUTS, VECTORS};

    /// The output `y` (`[o, h, w]`) of one image from its padded input
    /// `xn` and the packed weights `w`.
    #[target_feature(enable = "avx512f")]
    pub(super) fn image(k: &Kernel, xn: &[f32], w: &[f32], y: &mut [f32]) {
        let g = &k.g;
        let vectors = g.h * g.w / LANES;
        for o in (0..g.o).step_by(OUTPUTS) {
            for v in (0..vectors).step_by(VECTORS) {
                let tile = Tile { o, v };
                match ((g.o - o).min(OUTPUTS), (vectors - v).min(VECTORS)) {
                    (6, 4) => tile.sum::<6, 4>(k, xn, w, y),
                    (6, n) => tile.rest::<6>(n, k, xn, w, y),
                    (5, n) => tile.rest::<5>(n, k, xn, w, y),
                    (4, n) => tile.rest::<4>(n, k, xn, w, y),
                    (3, n) => tile.rest::<3>(n, k, xn, w, y),
                    (2, n) => tile.rest::<2>(n, k, xn, w, y),
                    (_, n) => tile.rest::<1>(n, k, xn, w, y),
                }
            }
        }
    }

    /// Output channels `o..` by vectors of positions `v..`.
    struct Tile {
        o: usize,
        v: usize,
    }

    impl Tile {
        #[target_feature(enable = "avx512f")]
        fn rest<const O: usize>(&self, n: usize, k: &Kernel, xn: &[f32], w: &[f32], y: &mut [f32]) {
            match n {
                4 => self.sum::<O, 4>(k, xn, w, y),
                3 => self.sum::<O, 3>(k, xn, w, y),
                2 => self.sum::<O, 2>(k, xn, w, y),
                _ => self.sum::<O, 1>(k, xn, w, y),
            }
        }

        /// `O` output channels by `V` vectors of positions, summed in
        /// registers over every input channel and tap.
        #[target_feature(enable = "avx512f")]
        fn sum<const O: usize, const V: usize>(
            &self,
            k: &Kernel,
            xn: &[f32],
            w: &[f32],
            y: &mut [f32],
        ) {
            let g = &k.g;
            let per_row = g.w / LANES;
            let taps = g.kh * g.kw;
            let kk = g.c * taps;
            // Padded offset of each vector's first position.
            let base: [usize; V] = std::array::from_fn(|i| {
                let v = self.v + i;
                (v / per_row) * k.wp + (v % per_row) * LANES
            });
            let mut acc = [[_mm512_setzero_ps(); V]; O];
            for c in 0..g.c {
                let plane = &xn[c * k.plane..(c + 1) * k.plane];
                for i in 0..g.kh {
                    for j in 0..g.kw {
                        let t = c * taps + i * g.kw + j;
                        let shift = i * k.wp + j;
                        let xs: [__m512; V] = std::array::from_fn(|u| {
                            let run = &plane[base[u] + shift..base[u] + shift + LANES];
                            // SAFETY: `run` holds LANES = 16 floats.
                            unsafe { _mm512_loadu_ps(run.as_ptr()) }
                        });
                        let ws = &w[((self.o / OUTPUTS) * kk + t) * OUTPUTS..][..O];
                        for (a, ws) in acc.iter_mut().zip(ws) {
                            let wv = _mm512_set1_ps(*ws);
                            for (a, x) in a.iter_mut().zip(&xs) {
                                *a = _mm512_fmadd_ps(*x, wv, *a);
                            }
                        }
                    }
                }
            }
            let p = g.h * g.w;
            for (oi, a) in acc.iter().enumerate() {
                for (u, a) in a.iter().enumerate() {
                    let at = (self.o + oi) * p + (self.v + u) * LANES;
                    let out = &mut y[at..at + LANES];
                    // SAFETY: `out` holds LANES = 16 floats.
                    unsafe { _mm512_storeu_ps(out.as_mut_ptr(), *a) };
                }
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::nn::ops::ConvConfig;

    /// The convolution (one group, no dilation) as the plain sum of its
    /// definition, in f64.
    pub(in crate::nn::ops) fn reference(x: &[f32], w: &[f32], g: &Geometry) -> Vec<f64> {
        let (pad, s) = (g.cfg.padding as isize, g.cfg.stride as isize);
        let mut y = vec![0.0; g.n * g.o * g.ho * g.wo];
        for n in 0..g.n {
            for o in 0..g.o {
                for r in 0..g.ho {
                    for col in 0..g.wo {
                        let mut sum = 0.0;
                        for c in 0..g.c {
                            for i in 0..g.kh {
                                for j in 0..g.kw {
                                    let (ih, iw) = (
                                        s * r as isize + i as isize - pad,
                                        s * col as isize + j as isize - pad,
                                    );
                                    if (0..g.h as isize).contains(&ih)
                                        && (0..g.w as isize).contains(&iw)
                                    {
                                        let xv = x[((n * g.c + c) * g.h + ih as usize) * g.w
                                            + iw as usize];
                                        sum += xv as f64
                                            * w[((o * g.c + c) * g.kh + i) * g.kw + j] as f64;
                                    }
                                }
                            }
                        }
                        y[((n * g.o + o) * g.ho + r) * g.wo + col] = sum;
                    }
                }
            }
        }
        y
    }

    /// The convolution of `x` (shape `xs`) by a kernel of shape `ks` at
    /// `stride` with `padding`, one group.
    pub(in crate::nn::ops) fn geometry(
        xs: [usize; 4],
        ks: [usize; 4],
        stride: usize,
        padding: usize,
    ) -> Geometry {
        let cfg = ConvConfig {
            stride,
            padding,
            ..ConvConfig::default()
        };
        Geometry::conv(&xs, &ks, cfg).expect("a valid test shape")
    }

    /// Deterministic values in [-1, 1).
    pub(in crate::nn::ops) fn noise(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 7919 + seed * 104729) % 1009) as f32 / 504.5 - 1.0)
            .collect()
    }

    /// Forward and input gradient equal the definition (the input
    /// gradient through its own definition: the convolution of `dy` by
    /// the flipped kernel with its channels swapped), for output channels
    /// in full and partial tiles and planes 16 and 48 wide.
    #[test]
    fn forward_and_input_gradient_match_the_definition() {
        for (xs, ks, padding) in [
            ([2, 3, 16, 48], [13, 3, 3, 3], 1),
            ([1, 4, 17, 16], [2, 4, 5, 5], 2),
            ([2, 7, 2, 16], [6, 7, 1, 1], 0),
        ] {
            let cfg = ConvConfig {
                padding,
                ..ConvConfig::default()
            };
            let g = Geometry::conv(&xs, &ks, cfg).unwrap();
            // Without AVX-512 nothing takes the path (asserted), so there is
            // nothing else to check.
            assert_eq!(applies(&g), has_avx512(), "{g:?}");
            let (x, w) = (noise(g.input_len(), 1), noise(g.o * g.k(), 2));
            let Some(y) = forward(&x, &w, &g) else {
                continue;
            };
            let want = reference(&x, &w, &g);
            for (i, (a, b)) in y.iter().zip(&want).enumerate() {
                assert!(
                    (*a as f64 - b).abs() < 1e-4,
                    "{g:?} forward, element {i}: {a} against {b}"
                );
            }
            // <conv(x), dy> = <x, input_grad(dy)> for every x and dy.
            let dy = noise(y.len(), 3);
            let dx = input_grad(&w, &dy, &g).expect("the swapped convolution applies too");
            let lhs: f64 = want.iter().zip(&dy).map(|(a, b)| a * *b as f64).sum();
            let rhs: f64 = x.iter().zip(&dx).map(|(a, b)| *a as f64 * *b as f64).sum();
            assert!(
                (lhs - rhs).abs() < 1e-3 * lhs.abs().max(1.0),
                "{g:?} adjoint: {lhs} against {rhs}"
            );
        }
    }
}
