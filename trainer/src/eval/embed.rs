//! Running a trained classifier over images, with or without AdaBN:
//! training running statistics, each inference batch's own statistics
//! (the ABRA paper's test-time adaptation), or one plate's statistics
//! measured once and used for every batch of that plate.

use std::collections::BTreeMap;

use candle_core::{Device, Result};

use crate::dataset::Images;
use crate::fit::batches::{Part, batch};
use crate::model::Classifier;
use crate::nn::{BnMode, LayerStats, NormPass};

/// Every BatchNorm layer's statistics for each plate index of a part.
pub type PlateStats = BTreeMap<usize, Vec<LayerStats>>;

/// How BatchNorm statistics are chosen at inference.
#[derive(Clone, Copy, Debug)]
pub enum Adapt<'a> {
    /// Training running statistics.
    None,
    /// AdaBN with the statistics of each inference batch of this size
    /// (batches never mix plates).
    PerBatch(usize),
    /// AdaBN with each plate's statistics (from [`plate_stats`]), in
    /// batches of this size.
    PerPlate(&'a PlateStats, usize),
}

/// Each plate's statistics, measured in one batch-statistics pass over up
/// to [`PLATE_SAMPLE`] of its images in `part`.
pub fn plate_stats(
    model: &Classifier,
    images: &Images,
    part: &Part,
    device: &Device,
) -> Result<PlateStats> {
    let mut stats = PlateStats::new();
    for (plate, members) in by_plate(part) {
        let step = members.len().div_ceil(PLATE_SAMPLE);
        let sample: Vec<usize> = members.iter().step_by(step).copied().collect();
        let b = batch(images, part, &sample, None, device)?;
        let mut record = NormPass::recording();
        model.forward(&b.x, &mut record)?;
        stats.insert(plate, record.recorded);
    }
    Ok(stats)
}

/// Positions of `part`'s images, grouped by plate.
fn by_plate(part: &Part) -> BTreeMap<usize, Vec<usize>> {
    let mut groups: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, &plate) in part.plates.iter().enumerate() {
        groups.entry(plate).or_default().push(i);
    }
    groups
}

/// Most images a plate's statistics are measured on.
pub const PLATE_SAMPLE: usize = 256;

/// Embeddings and predicted classes of the images of a part, in part order.
#[derive(Clone, Debug)]
pub struct Embedded {
    /// One row per image.
    pub embeddings: Vec<Vec<f32>>,
    /// Argmax class per image.
    pub predicted: Vec<usize>,
}

/// Run `model` over every image of `part`.
pub fn embed(
    model: &Classifier,
    images: &Images,
    part: &Part,
    adapt: Adapt,
    device: &Device,
) -> Result<Embedded> {
    let n = part.images.len();
    let mut embeddings = vec![Vec::new(); n];
    let mut predicted = vec![0; n];
    let mut run = |chunk: &[usize], pass: &mut NormPass| -> Result<()> {
        let b = batch(images, part, chunk, None, device)?;
        let (e, logits) = model.forward(&b.x, pass)?;
        let e = e.to_dtype(candle_core::DType::F32)?.to_vec2::<f32>()?;
        let p = logits.argmax(1)?.to_vec1::<u32>()?;
        for (k, &i) in chunk.iter().enumerate() {
            embeddings[i] = e[k].clone();
            predicted[i] = p[k] as usize;
        }
        Ok(())
    };
    match adapt {
        Adapt::None => {
            for chunk in (0..n).collect::<Vec<_>>().chunks(64) {
                run(chunk, &mut NormPass::eval())?;
            }
        }
        Adapt::PerBatch(size) => {
            for plate in by_plate(part).values() {
                for chunk in plate.chunks(size.max(1)) {
                    run(chunk, &mut NormPass::new(BnMode::Batch))?;
                }
            }
        }
        Adapt::PerPlate(stats, size) => {
            for (plate, members) in by_plate(part) {
                let layers = stats.get(&plate).ok_or_else(|| {
                    candle_core::Error::Msg(format!("no AdaBN statistics for plate index {plate}"))
                })?;
                for chunk in members.chunks(size.max(1)) {
                    run(chunk, &mut NormPass::with_stats(layers.clone()))?;
                }
            }
        }
    }
    Ok(Embedded {
        embeddings,
        predicted,
    })
}
