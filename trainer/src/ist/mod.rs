//! A trained IST run put to use: its style bank (style codes of class- and
//! environment-balanced training images) and test-time correction, which
//! restyles each image into training environments before the predictor
//! ("bringing unseen images to familiar environments"), with K styles per
//! image and the embeddings averaged.

pub mod grid;

use std::collections::BTreeMap;
use std::path::Path;

use bfx_core::style_bank::StyleBank;
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::dataset::Images;
use crate::eval::Embedded;
use crate::fit::FitError;
use crate::fit::batches::{Part, batch};
use crate::fit::checkpoint::{self, CheckpointMeta};
use crate::model::{Classifier, MODEL_PREFIX};
use crate::nn::NormPass;
use crate::nn::ist::StyleTransfer;

/// Training images per (class, environment) cell of the style bank, at most.
pub const BANK_PER_CELL: usize = 4;
/// Images restyled per batch at test time (each `k` times).
const CHUNK: usize = 16;

/// A trained IST run: predictor and style-transfer networks.
pub struct IstRun {
    /// The checkpoint's metadata.
    pub meta: CheckpointMeta,
    /// The predictor.
    pub model: Classifier,
    /// E, G and D.
    pub net: StyleTransfer,
}

/// Load checkpoint `name` of the IST run in `dir`.
pub fn load(dir: &Path, name: &str, device: &Device) -> Result<IstRun, FitError> {
    let (meta, tensors) = checkpoint::load(dir, name, device)?;
    if meta.config.method.name != "ist" {
        return Err(FitError::Config(format!(
            "{}: this needs an IST run, this one trained {}",
            dir.display(),
            meta.config.method.name
        )));
    }
    let map = VarMap::new();
    let model = Classifier::new(
        &meta.model,
        VarBuilder::from_varmap(&map, DType::F32, device).pp(MODEL_PREFIX),
    )?;
    let net = crate::methods::ist::networks(&meta.model, meta.train_plates, &map, device)?;
    checkpoint::restore(&map, &tensors, dir)?;
    Ok(IstRun { meta, model, net })
}

/// The style bank: up to [`BANK_PER_CELL`] training images of every
/// (class, environment) pair, evenly spaced through the pair's images.
pub fn style_bank(
    net: &StyleTransfer,
    images: &Images,
    train: &Part,
    plate_names: &[String],
    device: &Device,
) -> Result<StyleBank, FitError> {
    let mut cells: BTreeMap<(usize, usize), Vec<usize>> = BTreeMap::new();
    for i in 0..train.images.len() {
        cells
            .entry((train.classes[i], train.plates[i]))
            .or_default()
            .push(i);
    }
    let chosen: Vec<usize> = cells
        .values()
        .flat_map(|members| {
            let step = members.len().div_ceil(BANK_PER_CELL);
            members.iter().step_by(step).copied().collect::<Vec<_>>()
        })
        .collect();
    let mut codes = Vec::new();
    for chunk in chosen.chunks(64) {
        let x = batch(images, train, chunk, None, device)?.x;
        let code = net.style_of(&x)?.to_dtype(DType::F32)?;
        codes.extend(code.flatten_all()?.to_vec1::<f32>()?);
    }
    let dim = codes.len() / chosen.len().max(1);
    Ok(StyleBank {
        dim,
        codes,
        environments: chosen.iter().map(|&i| train.plates[i] as u32).collect(),
        environment_names: plate_names.to_vec(),
    })
}

/// The bank indices of the `k` styles image `image` (an index into
/// [`Images`]) is restyled with: drawn uniformly with `seed`, the same for
/// the same image whatever batch it is in.
pub fn styles_for(image: usize, k: usize, bank: usize, seed: u64) -> Vec<usize> {
    let mut rng =
        ChaCha8Rng::seed_from_u64(seed ^ (image as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    (0..k).map(|_| rng.random_range(0..bank)).collect()
}

/// Embeddings of `part`'s images with test-time correction: each image
/// restyled with `k` styles of `bank`, the predictor's embeddings averaged,
/// the class read from the averaged embedding.
#[allow(clippy::too_many_arguments)]
pub fn embed_corrected(
    model: &Classifier,
    net: &StyleTransfer,
    bank: &StyleBank,
    images: &Images,
    part: &Part,
    k: usize,
    seed: u64,
    device: &Device,
) -> Result<Embedded, FitError> {
    let k = k.max(1);
    let codes = Tensor::from_vec(bank.codes.clone(), (bank.len(), bank.dim), device)?;
    let (mut embeddings, mut predicted) = (Vec::new(), Vec::new());
    let all: Vec<usize> = (0..part.images.len()).collect();
    for chunk in all.chunks(CHUNK) {
        let x = batch(images, part, chunk, None, device)?.x;
        let n = chunk.len();
        let repeat: Vec<u32> = (0..n as u32).flat_map(|i| [i].repeat(k)).collect();
        let picks: Vec<u32> = chunk
            .iter()
            .flat_map(|&i| styles_for(part.images[i], k, bank.len(), seed))
            .map(|s| s as u32)
            .collect();
        let x = x.index_select(&Tensor::new(repeat.as_slice(), device)?, 0)?;
        let code = codes.index_select(&Tensor::new(picks.as_slice(), device)?, 0)?;
        let restyled = net.restyle(&x, &code)?;
        let (e, _) = model.forward(&restyled, &mut NormPass::eval())?;
        let dim = e.dim(1)?;
        let mean = e.reshape((n, k, dim))?.mean(1)?;
        let logits = model.logits(&mean)?;
        embeddings.extend(mean.to_dtype(DType::F32)?.to_vec2::<f32>()?);
        predicted.extend(
            logits
                .argmax(1)?
                .to_vec1::<u32>()?
                .into_iter()
                .map(|p| p as usize),
        );
    }
    Ok(Embedded {
        embeddings,
        predicted,
    })
}
