//! `bfx-trainer swap`: SCBD's qualitative check. Held-out images of
//! different classes (and plates, where the split allows) are decoded
//! with the z_c of one and the z_e of another: down a column the
//! phenotype should change, along a row the plate's look.
//!
//! Layout: the top-left cell is empty, the top row holds the images
//! giving z_e, the left column the images giving z_c, and cell (i, j) the
//! decoding of z_c of row image i with z_e of column image j.

use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};

use crate::fit::batches::batch;
use crate::fit::checkpoint::{self, BEST};
use crate::fit::{FitError, load_data};
use crate::methods::{self, MethodContext};
use crate::model::{Classifier, MODEL_PREFIX};
use crate::sheet::{GAP, GAP_GREY, channel_ranges, paint_field, write_png};

/// What a written grid shows.
#[derive(Clone, Debug)]
pub struct SwapGrid {
    /// `plate/well class` of each image, in row (and column) order.
    pub images: Vec<String>,
}

/// Write the swap grid of the best checkpoint in `run` to `out`, with up
/// to `n` images, each field scaled `zoom` times.
pub fn swap_grid(
    run: &Path,
    out: &Path,
    n: usize,
    zoom: usize,
    device: &Device,
) -> Result<SwapGrid, FitError> {
    let (meta, tensors) = checkpoint::load(run, BEST, device)?;
    if meta.config.method.name != "scbd" {
        return Err(FitError::Config(format!(
            "{}: a swap grid needs an SCBD run, this one trained {}",
            run.display(),
            meta.config.method.name
        )));
    }
    let data = load_data(&meta.config, &indicatif::ProgressBar::hidden())?;
    let map = VarMap::new();
    let model = Classifier::new(
        &meta.model,
        VarBuilder::from_varmap(&map, DType::F32, device).pp(MODEL_PREFIX),
    )?;
    let ctx = MethodContext {
        map: &map,
        device,
        spec: &meta.model,
        envs: meta.train_plates,
        steps: meta.config.optim.steps,
        seed: 0,
        image: data.images.shape,
    };
    let params = methods::parse(&meta.config.method.params)?;
    let scbd = methods::scbd::Scbd::new(params, &ctx)?;
    checkpoint::restore(&map, &tensors, run)?;

    // One held-out image per class, each from a plate not used yet when possible.
    let test = &data.parts.test;
    let mut chosen: Vec<usize> = Vec::new();
    let mut classes: Vec<usize> = test.classes.clone();
    classes.sort_unstable();
    classes.dedup();
    for &c in classes.iter().take(n.max(2)) {
        let of_class: Vec<usize> = (0..test.images.len())
            .filter(|&i| test.classes[i] == c)
            .collect();
        let fresh = of_class
            .iter()
            .find(|&&i| chosen.iter().all(|&k| test.plates[k] != test.plates[i]));
        if let Some(&i) = fresh.or(of_class.first()) {
            chosen.push(i);
        }
    }
    if chosen.len() < 2 {
        return Err(FitError::Config(
            "the split's test set has fewer than two classes to swap between".into(),
        ));
    }
    let x = batch(&data.images, test, &chosen, None, device)?.x;
    let decoded = scbd.swap(&model, &x)?;
    let k = chosen.len();
    let [c, h, w] = data.images.shape;
    let planes = |t: &candle_core::Tensor| -> Result<Vec<Vec<Vec<f32>>>, FitError> {
        let v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        Ok(v.chunks(c * h * w)
            .map(|img| img.chunks(h * w).map(<[f32]>::to_vec).collect())
            .collect())
    };
    let originals = planes(&x)?;
    let swapped = planes(&decoded)?;
    // One colour scale for originals and decodings, from the originals.
    let ranges = channel_ranges(originals.iter(), c, 1e-6);
    let (fh, fw) = (h * zoom, w * zoom);
    let (width, height) = ((k + 1) * (fw + GAP) + GAP, (k + 1) * (fh + GAP) + GAP);
    let mut rgb = vec![GAP_GREY; width * height * 3];
    let at = |row: usize, col: usize| (GAP + col * (fw + GAP), GAP + row * (fh + GAP));
    for i in 0..k {
        paint_field(
            &mut rgb,
            width,
            at(0, i + 1),
            &originals[i],
            (h, w),
            zoom,
            &ranges,
        );
        paint_field(
            &mut rgb,
            width,
            at(i + 1, 0),
            &originals[i],
            (h, w),
            zoom,
            &ranges,
        );
        for j in 0..k {
            let cell = &swapped[i * k + j];
            paint_field(
                &mut rgb,
                width,
                at(i + 1, j + 1),
                cell,
                (h, w),
                zoom,
                &ranges,
            );
        }
    }
    write_png(out, width, height, &rgb).map_err(|e| FitError::Config(e.to_string()))?;
    let images = chosen
        .iter()
        .map(|&i| {
            let row = &data.data.manifest.rows[data.images.site_of[test.images[i]]];
            format!(
                "{}/{} {}",
                row.plate, row.well, data.data.classes[test.classes[i]]
            )
        })
        .collect();
    Ok(SwapGrid { images })
}
