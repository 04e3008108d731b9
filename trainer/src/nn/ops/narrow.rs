//! Direct convolution vectorized over output channels, in f32 on CPUs
//! with AVX-512: stride-1 3x3 convolutions with padding 1 on planes 8
//! wide (a ResNet's second stage on 64x64 images) and stride-2 ones down
//! to rows of 8, 16, ... (the stem, the first convolution of a stage).
//!
//! At such planes im2col writes a patch matrix 9x the input (49/4x for a
//! 7x7 stem at stride 2), which the GEMM then packs again; that traffic,
//! not the multiply-adds, set the pace. At 128 channels, 8x8 planes,
//! batch 32, the forward pass took 3.4 ms where PyTorch (oneDNN) takes
//! 1.7; here it takes 2.3 (1.0 against 0.7 at 64 channels). The stride-2
//! convolution from 64 channels at 16x16 to 128 at 8x8 went from 3.4 to
//! 1.6 ms (PyTorch 1.2), the stem (5 to 64 channels, 64x64 to 32x32)
//! from 9.4 to 7.0 (PyTorch 8.0).
//!
//! A tile of [`OUTPUTS`] output channels by [`POSITIONS`] positions of a
//! row is summed in registers straight from a zero-padded copy of each
//! image, like a GEMM microkernel whose other operand is the input
//! itself: for each input channel and tap it loads the tile's weights as
//! two vectors and multiplies them by each position's input value, at
//! offsets known when the kernel is compiled. On stride-1 planes 4 wide
//! (two rows a tile) it was slower than im2col (256 channels: 3.3 against
//! 2.7 ms), and on planes 16 wide level with [`super::direct`]'s kernel,
//! which keeps them.
#![allow(unsafe_code)]

use rayon::prelude::*;

use super::direct::{has_avx512, packed, padded};
use super::im2col::Geometry;

/// Values in one 512-bit vector of f32.
const LANES: usize = 16;

/// Output channels per tile: two vectors.
pub(super) const OUTPUTS: usize = 2 * LANES;

/// Positions per tile: a row of them, or part of one.
const POSITIONS: usize = 8;

/// Whether the f32 convolution `g` takes this path.
pub fn applies(g: &Geometry) -> bool {
    let c = g.cfg;
    has_avx512()
        && c.groups == 1
        && matches!(c.stride, 1 | 2)
        && c.dilation == 1
        && (g.wo == POSITIONS || c.stride == 2 && g.wo.is_multiple_of(POSITIONS))
        && g.o.is_multiple_of(OUTPUTS)
        // Empty tensors take the general path, which allows for them.
        && g.n * g.c * g.o > 0
}

/// A convolution, the sizes of its padded input and the offset of every
/// (input channel, tap) pair's input in a padded image.
struct Kernel {
    g: Geometry,
    /// Padded width and plane.
    wp: usize,
    plane: usize,
    /// Per (channel, tap), as the weights order them: `c * plane + i *
    /// wp + j`.
    offsets: Vec<usize>,
}

/// `[n, o, ho, wo]` output of the convolution `g` of `x` by `w`; `None`
/// where [`applies`] is false.
pub fn forward(x: &[f32], w: &[f32], g: &Geometry) -> Option<Vec<f32>> {
    if !applies(g) {
        return None;
    }
    let pad = g.cfg.padding;
    let (wp, hp, taps) = (g.w + 2 * pad, g.h + 2 * pad, g.kh * g.kw);
    let k = Kernel {
        g: *g,
        wp,
        plane: wp * hp,
        offsets: (0..g.c * taps)
            .map(|t| (t / taps) * wp * hp + (t % taps / g.kw) * wp + t % g.kw)
            .collect(),
    };
    let xp = padded(x, g);
    // A tap's weights for a tile's output channels: two vectors.
    let packed = packed(w, g, OUTPUTS);
    // A few images per task, every output tile of one block of channels
    // after the other: each block's weights (up to 295 KB at 256
    // channels) are read from cache for all of them.
    let per_task = g.n.div_ceil(2 * super::threads().max(1)).max(1);
    let mut y = vec![0f32; g.n * g.o * g.ho * g.wo];
    y.par_chunks_mut(per_task * g.o * g.ho * g.wo)
        .zip(xp.par_chunks(per_task * g.c * k.plane))
        .for_each(|(y, xs)| {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `applies` checked that the CPU has AVX-512F.
            unsafe {
                match g.cfg.stride {
                    1 => avx512::images::<1>(&k, xs, &packed, y),
                    _ => avx512::images::<2>(&k, xs, &packed, y),
                }
            }
            #[cfg(not(target_arch = "x86_64"))]
            {
                let _ = (xs, y);
                unreachable!("applies() is false off x86-64");
            }
        });
    Some(y)
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::{Kernel, LANES, OUTPUTS, POSITIONS};

    /// The outputs `y` (`[b, o, ho, wo]`) of `b` images from their padded
    /// inputs `xs` (`[b, c, hp, wp]`) and the packed weights `w`, at
    /// stride `S`.
    #[target_feature(enable = "avx512f")]
    pub(super) fn images<const S: usize>(k: &Kernel, xs: &[f32], w: &[f32], y: &mut [f32]) {
        let g = &k.g;
        let (p, kk) = (g.ho * g.wo, g.k());
        let image = g.c * k.plane;
        let b = xs.len() / image;
        // Offset of each of a tile's positions from its first, in the
        // padded image.
        let step: [usize; POSITIONS] = std::array::from_fn(|r| S * r);
        // Every read is at `first + offsets[t] + step[r]` of an image,
        // `first` the padded offset of a tile's first position; the
        // largest lies in the image (checked once here, relied on below).
        let last_first = S * ((g.ho - 1) * k.wp + g.wo - POSITIONS);
        let largest = last_first + k.offsets[kk - 1] + step[POSITIONS - 1];
        assert!(
            largest < image && xs.len() == b * image,
            "narrow: input size"
        );
        assert!(
            w.len() == g.o * kk && k.offsets.len() == kk,
            "narrow: weights"
        );
        assert!(y.len() == b * g.o * p, "narrow: output size");
        for ob in 0..g.o / OUTPUTS {
            let panel = &w[ob * kk * OUTPUTS..][..kk * OUTPUTS];
            for n in 0..b {
                let xn = &xs[n * image..][..image];
                let yn = &mut y[n * g.o * p..][..g.o * p];
                for q in (0..p).step_by(POSITIONS) {
                    let first = S * (q / g.wo * k.wp + q % g.wo);
                    let mut acc = [[_mm512_setzero_ps(); 2]; POSITIONS];
                    for (t, &offset) in k.offsets.iter().enumerate() {
                        // SAFETY: the panel holds kk * OUTPUTS floats, so
                        // two vectors from t * OUTPUTS (t < kk); every input
                        // read is at most `largest`, inside `xn` (asserted
                        // above).
                        unsafe {
                            let wv = panel.as_ptr().add(t * OUTPUTS);
                            let (w0, w1) = (_mm512_loadu_ps(wv), _mm512_loadu_ps(wv.add(LANES)));
                            let x = xn.as_ptr().add(first + offset);
                            for (r, a) in acc.iter_mut().enumerate() {
                                let v = _mm512_set1_ps(*x.add(step[r]));
                                a[0] = _mm512_fmadd_ps(w0, v, a[0]);
                                a[1] = _mm512_fmadd_ps(w1, v, a[1]);
                            }
                        }
                    }
                    // Each vector holds one position of 16 output channels,
                    // which lie a plane apart in `y`.
                    let mut lanes = [0f32; LANES];
                    for (r, a) in acc.iter().enumerate() {
                        for (half, v) in a.iter().enumerate() {
                            // SAFETY: `lanes` holds LANES = 16 floats.
                            unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), *v) };
                            let o = ob * OUTPUTS + half * LANES;
                            for (l, value) in lanes.iter().enumerate() {
                                yn[(o + l) * p + q + r] = *value;
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nn::ops::direct;
    use crate::nn::ops::direct::tests::{geometry, noise};

    /// Forward and input gradient equal the definition (the input
    /// gradient through `<conv(x), dy> = <x, dx>`), on both plane widths,
    /// several tiles of output channels and positions, and a channel
    /// count that is no multiple of a vector.
    #[test]
    fn forward_and_input_gradient_match_the_definition() {
        for (xs, ks, stride, padding) in [
            ([2, 32, 8, 8], [64, 32, 3, 3], 1, 1),
            ([3, 32, 3, 8], [32, 32, 3, 3], 1, 1),
            ([1, 5, 2, 8], [32, 5, 3, 3], 1, 1),
            ([2, 3, 16, 16], [32, 3, 3, 3], 2, 1),
            ([1, 2, 5, 15], [64, 2, 3, 3], 2, 1),
            // A stem: 7x7, padding 3, rows of two tiles.
            ([2, 3, 9, 32], [32, 3, 7, 7], 2, 3),
        ] {
            let g = geometry(xs, ks, stride, padding);
            // Without AVX-512 nothing takes the path (asserted), so there is
            // nothing else to check.
            assert_eq!(applies(&g), has_avx512(), "{g:?}");
            let (x, w) = (noise(g.input_len(), 1), noise(g.o * g.k(), 2));
            let Some(y) = forward(&x, &w, &g) else {
                continue;
            };
            let want = direct::tests::reference(&x, &w, &g);
            for (i, (a, b)) in y.iter().zip(&want).enumerate() {
                assert!(
                    (*a as f64 - b).abs() < 1e-4,
                    "{g:?} forward, element {i}: {a} against {b}"
                );
            }
            if g.c.is_multiple_of(OUTPUTS) && stride == 1 {
                let dy = noise(y.len(), 3);
                let dx = direct::input_grad(&w, &dy, &g).expect("the swapped convolution applies");
                let lhs: f64 = want.iter().zip(&dy).map(|(a, b)| a * *b as f64).sum();
                let rhs: f64 = x.iter().zip(&dx).map(|(a, b)| *a as f64 * *b as f64).sum();
                assert!(
                    (lhs - rhs).abs() < 1e-3 * lhs.abs().max(1.0),
                    "{g:?} adjoint: {lhs} against {rhs}"
                );
            }
        }
    }
}
