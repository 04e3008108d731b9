//! `bfx-trainer ist-grid`: IST's generator checked on its own.
//!
//! The PNG (like the paper's Figure 4C): the top row holds one style image
//! of each training environment, the left column content images of
//! different classes, and cell (i, j) content i rendered in the style of
//! column j.
//!
//! The numbers, over restyled training images (each rendered in the style
//! of a random image of another training environment):
//! - **content kept**: the nucleus mask (channel 0 above its own mean plus
//!   one standard deviation, so a brighter or dimmer style does not move
//!   it) of the generated image against the content image's, as IoU and
//!   relative area difference; and the per-channel Pearson correlation of
//!   generated and content pixels. Both next to the same numbers for two
//!   unrelated images of the screen, the level of no content kept.
//! - **environment moved**: a plate classifier (logistic regression on
//!   each channel's mean, deviation and 10/50/90th percentiles, fitted on
//!   the training images) reads each generated image: the share assigned
//!   to the style's environment and to the content's.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::load;
use crate::fit::batches::{Part, batch};
use crate::fit::checkpoint::BEST;
use crate::fit::{FitError, load_data};
use crate::linear::{FitOptions, LogisticRegression};
use crate::sheet::{GAP, GAP_GREY, channel_ranges, paint_field, write_png};

/// One image as its channel planes.
type Planes = Vec<Vec<f32>>;
/// A measure of a pair of images.
type PairMeasure = dyn Fn(&[Vec<f32>], &[Vec<f32>]) -> f64;

/// Content images restyled for the numbers, at most.
const CHECKED: usize = 256;

/// What `ist-grid` measured and drew.
#[derive(Clone, Debug, Serialize)]
pub struct GeneratorCheck {
    /// Images restyled for the numbers.
    pub images: usize,
    /// Mean IoU of the nucleus masks of content and generated images.
    pub nucleus_iou: f64,
    /// The same between unrelated images.
    pub nucleus_iou_unrelated: f64,
    /// Mean |area(generated) - area(content)| / area(content) of the nucleus masks.
    pub nucleus_area_change: f64,
    /// Mean per-channel Pearson correlation of content and generated pixels.
    pub pixel_correlation: f64,
    /// The same between unrelated images.
    pub pixel_correlation_unrelated: f64,
    /// Plate classifier's accuracy on real training images (its own fit).
    pub plate_classifier_accuracy: f64,
    /// Share of generated images it assigns to the style's environment.
    pub assigned_to_style_env: f64,
    /// Share it assigns to the content's environment.
    pub assigned_to_content_env: f64,
    /// Row labels of the grid (`plate/well class`).
    pub rows: Vec<String>,
    /// Column labels of the grid (style plates).
    pub columns: Vec<String>,
}

/// Draw the grid of the best checkpoint of `run` into `out` (fields scaled
/// `zoom` times, up to `rows` content images) and measure the generator.
pub fn ist_grid(
    run: &Path,
    out: &Path,
    rows: usize,
    zoom: usize,
    device: &Device,
) -> Result<GeneratorCheck, FitError> {
    let ist = load(run, BEST, device)?;
    let data = load_data(&ist.meta.config, &indicatif::ProgressBar::hidden())?;
    let train = &data.parts.train;
    let envs = data.parts.train_plates;
    let n = train.images.len();
    let mut rng = ChaCha8Rng::seed_from_u64(7);

    // Grid: one content image per class, one style image per environment.
    let mut classes: Vec<usize> = train.classes.clone();
    classes.sort_unstable();
    classes.dedup();
    let content: Vec<usize> = classes
        .iter()
        .take(rows.max(1))
        .filter_map(|&c| (0..n).find(|&i| train.classes[i] == c))
        .collect();
    let styles: Vec<usize> = (0..envs)
        .filter_map(|e| (0..n).find(|&i| train.plates[i] == e))
        .collect();
    let xc = batch(&data.images, train, &content, None, device)?.x;
    let xs = batch(&data.images, train, &styles, None, device)?.x;
    let codes = ist.net.style_of(&xs)?;
    let (k, m) = (content.len(), styles.len());
    let rep = |count: usize, each: usize, outer: bool| -> Vec<u32> {
        (0..count * each)
            .map(|t| if outer { t / each } else { t % each } as u32)
            .collect()
    };
    let xg = xc.index_select(&Tensor::new(rep(k, m, true).as_slice(), device)?, 0)?;
    let cg = codes.index_select(&Tensor::new(rep(k, m, false).as_slice(), device)?, 0)?;
    let generated = planes(&ist.net.restyle(&xg, &cg)?, data.images.shape)?;
    let (pc, ps) = (
        planes(&xc, data.images.shape)?,
        planes(&xs, data.images.shape)?,
    );
    draw(out, &pc, &ps, &generated, data.images.shape, zoom)?;

    // Numbers: random training images, each in another environment's style.
    let checked: Vec<usize> = (0..CHECKED.min(n))
        .map(|_| rng.random_range(0..n))
        .collect();
    let others: Vec<usize> = checked
        .iter()
        .map(|&i| {
            let candidates: Vec<usize> = (0..n)
                .filter(|&j| envs < 2 || train.plates[j] != train.plates[i])
                .collect();
            candidates[rng.random_range(0..candidates.len())]
        })
        .collect();
    let x = batch(&data.images, train, &checked, None, device)?.x;
    let style_x = batch(&data.images, train, &others, None, device)?.x;
    let restyled = ist.net.restyle(&x, &ist.net.style_of(&style_x)?)?;
    let (real, fake) = (
        planes(&x, data.images.shape)?,
        planes(&restyled, data.images.shape)?,
    );
    let unrelated = planes(&style_x, data.images.shape)?;
    let pairs = |a: &[Planes], b: &[Planes], f: &PairMeasure| {
        mean(&a.iter().zip(b).map(|(p, q)| f(p, q)).collect::<Vec<_>>())
    };
    let iou = |p: &[Vec<f32>], q: &[Vec<f32>]| mask_iou(&p[0], &q[0]);
    let area = |p: &[Vec<f32>], q: &[Vec<f32>]| {
        let (a, b) = (mask(&p[0]), mask(&q[0]));
        let (na, nb) = (count(&a) as f64, count(&b) as f64);
        (nb - na).abs() / na.max(1.0)
    };
    let correlation = |p: &[Vec<f32>], q: &[Vec<f32>]| {
        mean(
            &p.iter()
                .zip(q)
                .map(|(a, b)| pearson(a, b))
                .collect::<Vec<_>>(),
        )
    };

    // Plate classifier on intensity statistics of every training image.
    let all = Part {
        images: train.images.clone(),
        classes: train.classes.clone(),
        plates: train.plates.clone(),
    };
    let everything: Vec<usize> = (0..n).collect();
    let mut features = Vec::with_capacity(n);
    for chunk in everything.chunks(256) {
        let x = batch(&data.images, &all, chunk, None, device)?.x;
        features.extend(
            planes(&x, data.images.shape)?
                .iter()
                .map(|p| intensity_features(p)),
        );
    }
    let plate_fit = LogisticRegression::fit(&features, &train.plates, envs, FitOptions::default());
    let hits = |imgs: &[Vec<Vec<f32>>], truth: &dyn Fn(usize) -> usize| {
        imgs.iter()
            .enumerate()
            .filter(|(t, p)| plate_fit.predict(&intensity_features(p)) == truth(*t))
            .count() as f64
            / imgs.len().max(1) as f64
    };
    let train_accuracy = features
        .iter()
        .zip(&train.plates)
        .filter(|(f, p)| plate_fit.predict(f) == **p)
        .count() as f64
        / n.max(1) as f64;
    let label = |i: usize| {
        let row = &data.data.manifest.rows[data.images.site_of[train.images[i]]];
        format!(
            "{}/{} {}",
            row.plate, row.well, data.data.classes[train.classes[i]]
        )
    };
    Ok(GeneratorCheck {
        images: checked.len(),
        nucleus_iou: pairs(&real, &fake, &iou),
        nucleus_iou_unrelated: pairs(&real, &unrelated, &iou),
        nucleus_area_change: pairs(&real, &fake, &area),
        pixel_correlation: pairs(&real, &fake, &correlation),
        pixel_correlation_unrelated: pairs(&real, &unrelated, &correlation),
        plate_classifier_accuracy: train_accuracy,
        assigned_to_style_env: hits(&fake, &|t| train.plates[others[t]]),
        assigned_to_content_env: hits(&fake, &|t| train.plates[checked[t]]),
        rows: content.iter().map(|&i| label(i)).collect(),
        columns: styles
            .iter()
            .map(|&i| data.parts.plates[train.plates[i]].clone())
            .collect(),
    })
}

/// Images `[b, c, h, w]` as per-image lists of channel planes.
fn planes(t: &Tensor, [c, h, w]: [usize; 3]) -> Result<Vec<Vec<Vec<f32>>>, FitError> {
    let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    Ok(v.chunks(c * h * w)
        .map(|img| img.chunks(h * w).map(<[f32]>::to_vec).collect())
        .collect())
}

fn draw(
    out: &Path,
    content: &[Vec<Vec<f32>>],
    styles: &[Vec<Vec<f32>>],
    generated: &[Vec<Vec<f32>>],
    [c, h, w]: [usize; 3],
    zoom: usize,
) -> Result<(), FitError> {
    let (k, m) = (content.len(), styles.len());
    // One colour scale for every field, from the real images.
    let ranges = channel_ranges(content.iter().chain(styles), c, 1e-6);
    let (fh, fw) = (h * zoom, w * zoom);
    let (width, height) = ((m + 1) * (fw + GAP) + GAP, (k + 1) * (fh + GAP) + GAP);
    let mut rgb = vec![GAP_GREY; width * height * 3];
    let at = |row: usize, col: usize| (GAP + col * (fw + GAP), GAP + row * (fh + GAP));
    let mut paint = |pos, field: &Vec<Vec<f32>>| {
        paint_field(&mut rgb, width, pos, field, (h, w), zoom, &ranges);
    };
    for (j, s) in styles.iter().enumerate() {
        paint(at(0, j + 1), s);
    }
    for (i, x) in content.iter().enumerate() {
        paint(at(i + 1, 0), x);
        for j in 0..m {
            paint(at(i + 1, j + 1), &generated[i * m + j]);
        }
    }
    write_png(out, width, height, &rgb).map_err(|e| FitError::Config(e.to_string()))
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

/// Pixels above the plane's mean plus one standard deviation.
fn mask(plane: &[f32]) -> Vec<bool> {
    let n = plane.len().max(1) as f64;
    let mean = plane.iter().map(|&v| v as f64).sum::<f64>() / n;
    let sd = (plane
        .iter()
        .map(|&v| (v as f64 - mean).powi(2))
        .sum::<f64>()
        / n)
        .sqrt();
    plane.iter().map(|&v| v as f64 > mean + sd).collect()
}

fn count(m: &[bool]) -> usize {
    m.iter().filter(|&&b| b).count()
}

fn mask_iou(a: &[f32], b: &[f32]) -> f64 {
    let (ma, mb) = (mask(a), mask(b));
    let both = ma.iter().zip(&mb).filter(|(x, y)| **x && **y).count();
    let either = ma.iter().zip(&mb).filter(|(x, y)| **x || **y).count();
    if either == 0 {
        1.0
    } else {
        both as f64 / either as f64
    }
}

fn pearson(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().max(1) as f64;
    let (ma, mb) = (
        a.iter().map(|&v| v as f64).sum::<f64>() / n,
        b.iter().map(|&v| v as f64).sum::<f64>() / n,
    );
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (dx, dy) = (x as f64 - ma, y as f64 - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    if saa == 0.0 || sbb == 0.0 {
        0.0
    } else {
        sab / (saa * sbb).sqrt()
    }
}

/// Each channel's mean, deviation and 10/50/90th percentiles.
fn intensity_features(image: &[Vec<f32>]) -> Vec<f64> {
    let mut out = Vec::with_capacity(5 * image.len());
    for plane in image {
        let mut v: Vec<f64> = plane.iter().map(|&x| x as f64).collect();
        let n = v.len().max(1) as f64;
        let mean = v.iter().sum::<f64>() / n;
        let sd = (v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt();
        v.sort_by(f64::total_cmp);
        let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
        out.extend([mean, sd, q(0.1), q(0.5), q(0.9)]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_follow_shape_not_brightness() {
        let spot: Vec<f32> = (0..64)
            .map(|i| if i % 8 < 2 && i < 16 { 5.0 } else { 1.0 })
            .collect();
        let brighter: Vec<f32> = spot.iter().map(|v| 3.0 * v + 10.0).collect();
        assert_eq!(mask_iou(&spot, &brighter), 1.0);
        let moved: Vec<f32> = (0..64)
            .map(|i| if i % 8 >= 6 && i >= 48 { 5.0 } else { 1.0 })
            .collect();
        assert_eq!(mask_iou(&spot, &moved), 0.0);
        assert!((pearson(&spot, &brighter) - 1.0).abs() < 1e-12);
        let f = intensity_features(&[vec![0.0, 1.0, 2.0, 3.0, 4.0]]);
        assert_eq!(f, vec![2.0, 2f64.sqrt(), 0.0, 2.0, 4.0]);
    }
}
