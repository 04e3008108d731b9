//! The convolution kernels: forward and both backward passes as
//! im2col/col2im + GEMM (the Candle ops on them are in `conv_op`; large
//! stride-1 planes skip the patch matrix, in `shifted`).
//!
//! With the geometry `g` of a convolution `y = x * w` (`x: [n, c, h, w]`,
//! `w: [o, c/g, kh, kw]`) and `X = im2col(x)`, `Y = y` as `[o, n*p]`:
//! - forward: `Y = W X`;
//! - weight gradient: `dW = dY X^T`;
//! - input gradient: `dx = col2im(W^T dY)`, skipped when `x` needs none
//!   (the image going into the first layer).
//!
//! In f32 on CPUs with AVX-512, direct kernels take over where they were
//! measured faster: stride-1 same convolutions of planes 16, 32, ... wide
//! with up to 128 output channels (`direct`) and 3x3 ones of planes 8
//! wide (`narrow`), forward and for the input gradient; stride-2 ones
//! with output rows of 8, 16, ... forward (`narrow`); and the weight
//! gradient of 3x3 ones at stride 1 or 2 with output rows 4, 8 or 16
//! wide and of 7x7 stems (`narrow_grad`).
//!
//! A transposed convolution is the input gradient of the convolution
//! with the same kernel, so it uses the same three kernels with the
//! roles swapped.

use std::ops::Range;

use candle_core::WithDType;
use rayon::prelude::*;

use super::direct::{self, Direct};
use super::gemm::{Strides, gemm, splits_by_columns};
use super::im2col::{Geometry, col2im_add, gather_rows, im2col_into, scatter_rows};
use super::same;
use super::scratch::Scratch;
use super::shifted;
use super::threads;

/// Bytes of patch matrix per chunk of images. The batch is convolved a
/// few images at a time so that each chunk's patch matrix is read by
/// its GEMM while still in cache, and no step allocates (and the kernel
/// zeroes) a patch matrix of the whole batch (9x the input for 3x3).
const CHUNK_BYTES: usize = 4 << 20;

/// Images per chunk: as many as fit in [`CHUNK_BYTES`], at least one.
fn images_per_chunk<T>(g: &Geometry) -> usize {
    let per_image = g.c * g.kh * g.kw * g.p() * std::mem::size_of::<T>();
    (CHUNK_BYTES / per_image.max(1)).clamp(1, g.n.max(1))
}

/// The batch `0..n` in consecutive runs of `b` images.
fn chunks(n: usize, b: usize) -> impl Iterator<Item = Range<usize>> {
    (0..n).step_by(b.max(1)).map(move |s| s..(s + b).min(n))
}

/// `[n, o, p]` output of the convolution `g` of `x` by `w`.
pub fn forward<T: Scratch + Direct>(x: &[T], w: &[T], g: &Geometry) -> Vec<T> {
    if let Some(y) = T::direct_forward(x, w, g) {
        return y;
    }
    if shifted::applies(g) {
        return shifted::forward(x, w, g);
    }
    forward_in_chunks(x, w, g, images_per_chunk::<T>(g))
}

/// A chunk's temporaries: its patch matrix (`groups * k * b * p`), an
/// output-shaped buffer (`o * b * p`) and, for [`same`] convolutions,
/// an input-shaped one (`c * b * p`).
struct ChunkScratch<'a, T> {
    cols: &'a mut [T],
    out: &'a mut [T],
    stage: &'a mut [T],
}

/// Run `f` on this thread's scratch memory split into the temporaries
/// of chunks of `b` images.
fn with_chunk_scratch<T: Scratch, R>(
    g: &Geometry,
    b: usize,
    f: impl FnOnce(ChunkScratch<'_, T>) -> R,
) -> R {
    let cols_len = g.cfg.groups * g.k() * b * g.p();
    let out_len = g.o * b * g.p();
    let stage_len = if same::applies(g) { g.c * b * g.p() } else { 0 };
    T::with_scratch(cols_len + out_len + stage_len, |scratch| {
        let (cols, rest) = scratch.split_at_mut(cols_len);
        let (out, stage) = rest.split_at_mut(out_len);
        f(ChunkScratch { cols, out, stage })
    })
}

/// The patch matrix of the images `imgs` of `x`, through `stage` where
/// the faster [`same`] path applies.
fn patches<T: WithDType>(
    x: &[T],
    g: &Geometry,
    imgs: Range<usize>,
    stage: &mut [T],
    cols: &mut [T],
) {
    if same::applies(g) {
        same::im2col(x, g, imgs, stage, cols);
    } else {
        im2col_into(x, g, imgs, cols);
    }
}

fn forward_in_chunks<T: Scratch>(x: &[T], w: &[T], g: &Geometry, b: usize) -> Vec<T> {
    let mut y = vec![T::from_f64(0.0); g.n * g.o * g.p()];
    with_chunk_scratch(g, b, |scratch| {
        forward_chunks_into(x, w, g, b, scratch, &mut y)
    });
    y
}

/// [`forward_in_chunks`] with its temporaries in `scratch`.
fn forward_chunks_into<T: WithDType>(
    x: &[T],
    w: &[T],
    g: &Geometry,
    b: usize,
    scratch: ChunkScratch<'_, T>,
    y: &mut [T],
) {
    let (p, k, og, groups) = (g.p(), g.k(), g.o / g.cfg.groups, g.cfg.groups);
    let ChunkScratch {
        cols,
        out: yt,
        stage,
    } = scratch;
    for imgs in chunks(g.n, b) {
        let bp = imgs.len() * p;
        patches(x, g, imgs.clone(), stage, &mut cols[..groups * k * bp]);
        for grp in 0..groups {
            gemm(
                (og, bp, k),
                &mut yt[grp * og * bp..],
                Strides::row_major(bp),
                false,
                &w[grp * og * k..],
                Strides::row_major(k),
                &cols[grp * k * bp..],
                Strides::row_major(bp),
                threads(),
            );
        }
        let out = &mut y[imgs.start * g.o * p..imgs.end * g.o * p];
        scatter_rows(&yt[..g.o * bp], g.o, p, out);
    }
}

/// Weight gradient `[o, c/g, kh, kw]` of the convolution `g` of `x`,
/// from its output gradient `dy` (`[n, o, p]`).
pub fn weight_grad<T: Scratch + Direct>(x: &[T], dy: &[T], g: &Geometry) -> Vec<T> {
    backward_in_chunks(Some(x), None, dy, g, images_per_chunk::<T>(g)).0
}

/// Input gradient `[n, c, h, w]` of the convolution `g` by `w`, from its
/// output gradient `dy` (`[n, o, p]`).
pub fn input_grad<T: Scratch + Direct>(w: &[T], dy: &[T], g: &Geometry) -> Vec<T> {
    backward_in_chunks(None, Some(w), dy, g, images_per_chunk::<T>(g)).1
}

/// Both gradients in one pass over `dy`: the weight gradient, and the
/// input gradient when `w` is given (empty otherwise).
pub fn grads<T: Scratch + Direct>(
    x: &[T],
    w: Option<&[T]>,
    dy: &[T],
    g: &Geometry,
) -> (Vec<T>, Vec<T>) {
    backward_in_chunks(Some(x), w, dy, g, images_per_chunk::<T>(g))
}

/// The weight gradient (when `x` is given) and the input gradient (when
/// `w` is given) of the convolution `g`, chunk by chunk of `b` images;
/// a gradient not asked for is empty.
fn backward_in_chunks<T: Scratch + Direct>(
    x: Option<&[T]>,
    w: Option<&[T]>,
    dy: &[T],
    g: &Geometry,
    b: usize,
) -> (Vec<T>, Vec<T>) {
    // Where a direct kernel takes one gradient, the other (if wanted)
    // goes its own way.
    let direct_dw = x.and_then(|x| T::direct_weight_grad(x, dy, g));
    let direct_dx = w.and_then(|w| direct::input_grad(w, dy, g));
    if direct_dw.is_some() || direct_dx.is_some() {
        let dw = direct_dw.unwrap_or_else(|| match x {
            Some(_) => backward_in_chunks(x, None, dy, g, b).0,
            None => Vec::new(),
        });
        let dx = direct_dx.unwrap_or_else(|| match w {
            Some(_) => backward_in_chunks(None, w, dy, g, b).1,
            None => Vec::new(),
        });
        return (dw, dx);
    }
    if shifted::applies(g) {
        return shifted::grads(x, w, dy, g);
    }
    with_chunk_scratch(g, b, |scratch| {
        backward_chunks_with(x, w, dy, g, b, scratch)
    })
}

/// [`backward_in_chunks`] with its temporaries in `scratch`.
fn backward_chunks_with<T: WithDType>(
    x: Option<&[T]>,
    w: Option<&[T]>,
    dy: &[T],
    g: &Geometry,
    b: usize,
    scratch: ChunkScratch<'_, T>,
) -> (Vec<T>, Vec<T>) {
    let (p, k, og, groups) = (g.p(), g.k(), g.o / g.cfg.groups, g.cfg.groups);
    let ChunkScratch {
        cols,
        out: dyt,
        stage,
    } = scratch;
    let chw = g.c * g.h * g.w;
    let parts = weight_grad_parts::<T>(g);
    let mut dw_parts = zeros_if(x.is_some(), parts * g.o * k);
    let mut dx = zeros_if(w.is_some(), g.input_len());
    for (chunk, imgs) in chunks(g.n, b).enumerate() {
        let bp = imgs.len() * p;
        let dyt = &mut dyt[..g.o * bp];
        gather_rows(&dy[imgs.start * g.o * p..imgs.end * g.o * p], g.o, p, dyt);
        let cols = &mut cols[..groups * k * bp];
        if let Some(x) = x {
            // dW = dY X^T, summed over the chunks.
            patches(x, g, imgs.clone(), stage, cols);
            weight_grad_chunk(&mut dw_parts, chunk > 0, dyt, cols, g, bp);
        }
        if let Some(w) = w {
            // dx = col2im(W^T dY), image by image of the chunk.
            for grp in 0..groups {
                gemm(
                    (k, bp, og),
                    &mut cols[grp * k * bp..],
                    Strides::row_major(bp),
                    false,
                    &w[grp * og * k..],
                    Strides::transposed(k),
                    &dyt[grp * og * bp..],
                    Strides::row_major(bp),
                    threads(),
                );
            }
            let dx = &mut dx[imgs.start * chw..imgs.end * chw];
            if same::applies(g) {
                same::col2im(cols, g, stage, dx);
            } else {
                col2im_add(cols, g, dx);
            }
        }
    }
    if x.is_some() {
        dw_parts = sum_parts(dw_parts, g.o * k);
    }
    (dw_parts, dx)
}

/// `len` zeros, or nothing when the gradient is `wanted` by no one.
pub(super) fn zeros_if<T: WithDType>(wanted: bool, len: usize) -> Vec<T> {
    if wanted {
        vec![T::from_f64(0.0); len]
    } else {
        Vec::new()
    }
}

/// The partial weight gradients `parts` (each `len` elements) added up
/// into the first, which is returned.
pub(super) fn sum_parts<T: WithDType>(mut parts: Vec<T>, len: usize) -> Vec<T> {
    let (sum, rest) = parts.split_at_mut(len);
    for part in rest.chunks(len) {
        for (a, b) in sum.iter_mut().zip(part) {
            *a += *b;
        }
    }
    parts.truncate(len);
    // The gradient tensor keeps this buffer until the optimizer step.
    parts.shrink_to_fit();
    parts
}

/// Largest per-thread partial weight gradient, in bytes (see
/// [`weight_grad_parts`]): about a quarter of a core's L2 cache.
const PARTIAL_BYTES: usize = 1 << 20;

/// How many partial weight gradients the backward pass sums into.
///
/// The weight gradient sums over every output position: a long inner
/// dimension and, in early layers, a small result that one GEMM cannot
/// split well across threads. There each thread sums its share of the
/// columns into its own copy of dW, added up at the end. In late layers
/// dW is large (9.4 MB for 512 channels) and the columns few (128 at
/// 2x2 planes and batch 32): a copy per thread no longer fits in cache
/// and the threads' GEMMs spend their time writing it. One GEMM on all
/// threads, split over dW's rows and columns, took half the time there
/// (512 channels at 2x2) and a fifth less at 256 channels (4x4) in
/// `training-step`, width 64, batch 32. Where dW has at most 64 rows
/// and enough columns, [`gemm`] itself gives each thread its own columns
/// of dW and the whole sum: at 64 channels (16x16 planes) that took
/// 0.66 ms per chunk against 1.14 for per-thread copies.
fn weight_grad_parts<T>(g: &Geometry) -> usize {
    let too_large = g.o * g.k() * std::mem::size_of::<T>() > PARTIAL_BYTES;
    if too_large || splits_by_columns(g.o / g.cfg.groups, g.k(), threads()) {
        1
    } else {
        threads().max(1)
    }
}

/// Add (or write, unless `accumulate`) one chunk's `dY X^T` to the
/// per-thread partial weight gradients `parts` (each `[o, k]`), the
/// chunk's `bp` columns split evenly between them.
fn weight_grad_chunk<T: WithDType>(
    parts: &mut [T],
    accumulate: bool,
    dyt: &[T],
    cols: &[T],
    g: &Geometry,
    bp: usize,
) {
    let (k, og, groups) = (g.k(), g.o / g.cfg.groups, g.cfg.groups);
    let n = parts.len() / (g.o * k).max(1);
    // One part: one GEMM on all threads; several: one thread each.
    let gemm_threads = if n == 1 { threads() } else { 1 };
    parts
        .par_chunks_mut((g.o * k).max(1))
        .enumerate()
        .for_each(|(t, dw)| {
            let columns = bp * t / n..bp * (t + 1) / n;
            for grp in 0..groups {
                gemm(
                    (og, k, columns.len()),
                    &mut dw[grp * og * k..],
                    Strides::row_major(k),
                    accumulate,
                    &dyt[grp * og * bp + columns.start..],
                    Strides::row_major(bp),
                    &cols[grp * k * bp + columns.start..],
                    Strides::transposed(bp),
                    gemm_threads,
                );
            }
        });
}

#[cfg(test)]
mod tests {
    use super::super::ConvConfig;
    use super::*;

    /// Deterministic values in [-1, 1).
    fn noise(len: usize, seed: u64) -> Vec<f64> {
        (0..len as u64)
            .map(|i| ((i * 2654435761 + seed * 97) % 1009) as f64 / 504.5 - 1.0)
            .collect()
    }

    /// Convolving a few images at a time gives what one chunk of the
    /// whole batch gives (the GEMMs only sum in another order), for
    /// chunks that do and do not divide the batch.
    #[test]
    fn any_chunking_of_the_batch_gives_the_same_result() {
        let cfg = ConvConfig {
            stride: 2,
            padding: 1,
            dilation: 1,
            groups: 2,
        };
        let g = Geometry::conv(&[5, 4, 7, 6], &[6, 2, 3, 3], cfg).unwrap();
        let x = noise(g.input_len(), 1);
        let w = noise(g.o * g.k(), 2);
        let dy = noise(g.n * g.o * g.p(), 3);
        let whole = forward_in_chunks(&x, &w, &g, g.n);
        let (dw, dx) = backward_in_chunks(Some(&x), Some(&w), &dy, &g, g.n);
        assert_eq!((dw.len(), dx.len()), (g.o * g.k(), g.input_len()));
        let close = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(a, b)| (a - b).abs() < 1e-12);
        for b in [1, 2, 3] {
            assert!(
                close(&forward_in_chunks(&x, &w, &g, b), &whole),
                "forward, chunks of {b}"
            );
            let (dw_b, dx_b) = backward_in_chunks(Some(&x), Some(&w), &dy, &g, b);
            assert!(close(&dw_b, &dw), "weight gradient, chunks of {b}");
            assert!(close(&dx_b, &dx), "input gradient, chunks of {b}");
        }
        // The weight gradient split between any number of threads' partial
        // sums adds up to the same.
        let bp = g.n * g.p();
        let mut cols = vec![0.0; g.cfg.groups * g.k() * bp];
        im2col_into(&x, &g, 0..g.n, &mut cols);
        let mut dyt = vec![0.0; g.o * bp];
        gather_rows(&dy, g.o, g.p(), &mut dyt);
        for parts in [1, 2, 3, 7] {
            let mut partial = vec![f64::NAN; parts * g.o * g.k()];
            weight_grad_chunk(&mut partial, false, &dyt, &cols, &g, bp);
            let summed: Vec<f64> = (0..g.o * g.k())
                .map(|i| (0..parts).map(|t| partial[t * g.o * g.k() + i]).sum())
                .collect();
            assert!(close(&summed, &dw), "weight gradient in {parts} parts");
        }
        // Gradients not asked for are not computed.
        assert!(backward_in_chunks(Some(&x), None, &dy, &g, 2).1.is_empty());
        assert!(backward_in_chunks(None, Some(&w), &dy, &g, 2).0.is_empty());
    }

    /// A weight gradient too large for per-thread copies, or one that
    /// the GEMM splits between threads by columns (at most 64 rows and
    /// 576 columns: so on two or more threads), is one GEMM, and sums to
    /// what per-thread partial sums give.
    #[test]
    fn a_weight_gradient_in_one_gemm_matches_per_thread_parts() {
        let cfg = ConvConfig {
            padding: 1,
            ..ConvConfig::default()
        };
        let large = Geometry::conv(&[3, 128, 2, 2], &[128, 128, 3, 3], cfg).unwrap();
        assert_eq!(
            weight_grad_parts::<f64>(&large),
            1,
            "o * k is 1.2 MB in f64"
        );
        let few_rows = Geometry::conv(&[3, 64, 4, 4], &[8, 64, 3, 3], cfg).unwrap();
        for g in [large, few_rows] {
            let x = noise(g.input_len(), 4);
            let dy = noise(g.n * g.o * g.p(), 5);
            let dw = weight_grad(&x, &dy, &g);
            let bp = g.n * g.p();
            let mut cols = vec![0.0; g.k() * bp];
            im2col_into(&x, &g, 0..g.n, &mut cols);
            let mut dyt = vec![0.0; g.o * bp];
            gather_rows(&dy, g.o, g.p(), &mut dyt);
            let mut partial = vec![f64::NAN; 2 * g.o * g.k()];
            weight_grad_chunk(&mut partial, false, &dyt, &cols, &g, bp);
            let (first, second) = partial.split_at(g.o * g.k());
            for (i, (a, b)) in first.iter().zip(second).enumerate() {
                assert!((a + b - dw[i]).abs() < 1e-12, "{g:?}: element {i}");
            }
        }
    }
}
