//! Running a trained classifier over images, with or without AdaBN:
//! training running statistics, each inference batch's own statistics
//! (the ABRA paper's test-time adaptation), or one plate's statistics
//! measured once and used for every batch of that plate.

use std::collections::BTreeMap;

use candle_core::{Device, Result};

use crate::dataset::Images;
use crate::fit::batches::{Part, batch};
use crate::model::Classifier;
use crate::nn::{BnMode, NormPass};

/// How BatchNorm statistics are chosen at inference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Adapt {
    /// Training running statistics.
    None,
    /// AdaBN with the statistics of each inference batch of this size
    /// (batches never mix plates).
    PerBatch(usize),
    /// AdaBN with each plate's statistics, measured over up to
    /// [`PLATE_SAMPLE`] of its images, then batches of this size.
    PerPlate(usize),
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
    let mut by_plate: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for i in 0..n {
        by_plate.entry(part.plates[i]).or_default().push(i);
    }
    match adapt {
        Adapt::None => {
            for chunk in (0..n).collect::<Vec<_>>().chunks(64) {
                run(chunk, &mut NormPass::eval())?;
            }
        }
        Adapt::PerBatch(size) => {
            for plate in by_plate.values() {
                for chunk in plate.chunks(size.max(1)) {
                    run(chunk, &mut NormPass::new(BnMode::Batch))?;
                }
            }
        }
        Adapt::PerPlate(size) => {
            for plate in by_plate.values() {
                let step = plate.len().div_ceil(PLATE_SAMPLE);
                let sample: Vec<usize> = plate.iter().step_by(step).copied().collect();
                let b = batch(images, part, &sample, None, device)?;
                let mut record = NormPass::recording();
                model.forward(&b.x, &mut record)?;
                for chunk in plate.chunks(size.max(1)) {
                    run(chunk, &mut NormPass::with_stats(record.recorded.clone()))?;
                }
            }
        }
    }
    Ok(Embedded {
        embeddings,
        predicted,
    })
}
