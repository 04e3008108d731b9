//! im2col and col2im of stride-1 "same" convolutions (3x3, padding 1:
//! most of a ResNet's) over a channel-major copy of a chunk of images.
//!
//! In such a convolution kernel tap `(i, j)` reads, for output position
//! `q`, input position `q + shift` of the same plane (or the padding).
//! With the chunk's planes of one channel side by side (`[c, b * p]`),
//! that holds across the whole row: a tap's patch row is one shifted
//! copy of the channel's row, with the positions that fall in the
//! padding zeroed, whatever the plane size. Per image (in
//! [`super::im2col`]) the same copy is one short run per image and tap:
//! at 2x2 and 4x4 planes (late ResNet stages) the loop overhead, not
//! the copying, took most of the time.

use std::ops::Range;

use candle_core::WithDType;
use rayon::prelude::*;

use super::im2col::{Geometry, gather_rows, scatter_rows};

/// Largest plane (`h * w`) this module's path takes. In `training-step`
/// (width 64, batch 32), milliseconds per pass over a stage's stride-1
/// convolutions, this path against the per-image one: im2col 1.1 vs 2.5
/// at 2x2 planes, 1.2 vs 1.7 at 4x4, equal at 8x8; col2im 1.3 vs 5.2,
/// 1.5 vs 3.0 and 2.1 vs 3.1. At 16x16 the channel-major copy costs
/// more than it saves (3.6 vs 3.1 and 5.0 vs 4.6).
const LARGEST_PLANE: usize = 64;

/// Whether the convolution `g` takes this module's path: stride 1,
/// output planes the size of the input's, and small.
pub fn applies(g: &Geometry) -> bool {
    g.ho == g.h && g.p() <= LARGEST_PLANE && g.same_shift(0, 0).is_some()
}

/// Per kernel tap, row-major: its shift and the runs of a chunk's
/// output positions that read the padding.
struct Taps {
    shifts: Vec<isize>,
    padding: Vec<Vec<Range<usize>>>,
}

impl Taps {
    fn new(g: &Geometry, b: usize) -> Taps {
        let (p, d) = (g.p(), g.cfg.dilation);
        let (mut shifts, mut padding) = (Vec::new(), Vec::new());
        for t in 0..g.kh * g.kw {
            let (i, j) = (t / g.kw, t % g.kw);
            let Some((_, _, shift)) = g.same_shift(i, j) else {
                unreachable!("callers check `applies` first");
            };
            shifts.push(shift);
            let rows = g.valid(i * d, g.h, g.ho);
            let cols = g.valid(j * d, g.w, g.wo);
            let mut runs: Vec<Range<usize>> = Vec::new();
            let mut pad = |run: Range<usize>| match runs.last_mut() {
                _ if run.is_empty() => {}
                Some(last) if last.end == run.start => last.end = run.end,
                _ => runs.push(run),
            };
            for n in 0..b {
                let plane = n * p;
                for oh in 0..g.ho {
                    let row = plane + oh * g.wo;
                    if rows.contains(&oh) {
                        pad(row..row + cols.start);
                        pad(row + cols.end..row + g.wo);
                    } else {
                        pad(row..row + g.wo);
                    }
                }
            }
            padding.push(runs);
        }
        Taps { shifts, padding }
    }

    /// The tap's positions `q` in `0..len` whose `q + shift` lies in
    /// `0..len` too, and its shift; every position outside that range
    /// reads the padding.
    fn span(&self, t: usize, len: usize) -> (Range<usize>, isize) {
        let shift = self.shifts[t];
        let lo = shift.min(0).unsigned_abs().min(len);
        let hi = len.saturating_sub(shift.max(0) as usize).max(lo);
        (lo..hi, shift)
    }

    /// Zero the entries of tap `t`'s patch row `row` that read the padding.
    fn zero_padding<T: WithDType>(&self, t: usize, row: &mut [T]) {
        let zero = T::from_f64(0.0);
        for run in &self.padding[t] {
            // Runs are mostly one element (a row's edge): a plain store,
            // not a call to memset.
            if run.len() == 1 {
                row[run.start] = zero;
            } else {
                row[run.clone()].fill(zero);
            }
        }
    }
}

/// The patch matrix (as [`super::im2col::im2col_into`] writes it) of
/// the images `imgs` of `x` (`[n, c, h, w]`), by way of `stage` (at
/// least `c * b * p` elements), which it leaves holding their
/// channel-major copy.
pub fn im2col<T: WithDType>(
    x: &[T],
    g: &Geometry,
    imgs: Range<usize>,
    stage: &mut [T],
    cols: &mut [T],
) {
    let (p, taps, bp) = (g.p(), g.kh * g.kw, imgs.len() * g.p());
    let stage = &mut stage[..g.c * bp];
    gather_rows(&x[imgs.start * g.c * p..imgs.end * g.c * p], g.c, p, stage);
    let stage = &*stage;
    let tap_info = Taps::new(g, imgs.len());
    cols[..g.c * taps * bp]
        .par_chunks_mut(bp.max(1))
        .enumerate()
        .for_each(|(row, out)| {
            let (c, t) = (row / taps, row % taps);
            let (span, shift) = tap_info.span(t, bp);
            // Outside `span` every position reads the padding; a tap that
            // shifts past the whole chunk (a kernel wider than the plane)
            // has no span, and no source to slice.
            if !span.is_empty() {
                let from = c * bp + span.start.saturating_add_signed(shift);
                out[span.clone()].copy_from_slice(&stage[from..from + span.len()]);
            }
            tap_info.zero_padding(t, out);
        });
}

/// The adjoint of [`im2col`]: the patch matrix `cols` of `b` images
/// summed back into `x` (`[b, c, h, w]`, overwritten), by way of `stage`
/// (at least `c * b * p` elements).
///
/// Entries of `cols` that read the padding are zeroed.
pub fn col2im<T: WithDType>(cols: &mut [T], g: &Geometry, stage: &mut [T], x: &mut [T]) {
    let (p, taps) = (g.p(), g.kh * g.kw);
    let b = x.len() / (g.c * p).max(1);
    let bp = b * p;
    let tap_info = Taps::new(g, b);
    let zero = T::from_f64(0.0);
    // Zeroed, the padding's entries add nothing below, which then adds
    // each tap's whole span in one run.
    cols[..g.c * taps * bp]
        .par_chunks_mut(bp.max(1))
        .enumerate()
        .for_each(|(row, out)| tap_info.zero_padding(row % taps, out));
    let cols = &*cols;
    let stage = &mut stage[..g.c * bp];
    stage
        .par_chunks_mut(bp.max(1))
        .enumerate()
        .for_each(|(c, acc)| {
            acc.fill(zero);
            for t in 0..taps {
                let row = &cols[(c * taps + t) * bp..][..bp];
                let (span, shift) = tap_info.span(t, bp);
                if span.is_empty() {
                    continue;
                }
                let from = span.start.saturating_add_signed(shift);
                let dst = &mut acc[from..from + span.len()];
                for (a, v) in dst.iter_mut().zip(&row[span]) {
                    *a += *v;
                }
            }
        });
    scatter_rows(stage, g.c, p, x);
}
