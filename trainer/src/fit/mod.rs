//! `bfx-trainer fit`: data, split, model, method and optimizer from a
//! config; the training loop with validation, checkpoints, resume and a
//! clean stop on interrupt.

pub mod batches;
pub mod checkpoint;
pub mod probe;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bfx_config::TrainerConfig;
use bfx_config::trainer::NormKind;
use bfx_core::image::ReadOptions;
use candle_core::Device;
use candle_nn::VarMap;
use indicatif::ProgressBar;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use thiserror::Error;

use self::batches::{Part, Parts, batch};
use self::checkpoint::{BEST, CheckpointMeta, HistoryPoint, LAST};
use crate::dataset::{self, Dataset, DatasetError, Images, Sampler};
use crate::methods::{self, Method, MethodContext, MethodError};
use crate::model::{self, Classifier, ModelSpec};
use crate::nn::{NormPass, ResNetSpec};
use crate::optim::{AdamW, trainable};

/// Why training failed.
#[derive(Debug, Error)]
pub enum FitError {
    /// Data, manifest, cache or split.
    #[error(transparent)]
    Data(#[from] DatasetError),
    /// Split.
    #[error(transparent)]
    Split(#[from] dataset::SplitError),
    /// Sampler.
    #[error(transparent)]
    Sampler(#[from] dataset::SamplerError),
    /// The method.
    #[error(transparent)]
    Method(#[from] MethodError),
    /// Tensor computation.
    #[error("computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// A checkpoint is unusable.
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    /// A file could not be written or read.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// The configuration is unusable here.
    #[error("{0}")]
    Config(String),
}

/// What a run did.
#[derive(Debug)]
pub struct FitReport {
    /// Steps done in total (resumed runs count earlier steps).
    pub steps: usize,
    /// Whether an interrupt stopped it early.
    pub interrupted: bool,
    /// Wall-clock seconds of this invocation.
    pub seconds: f64,
    /// Validation history.
    pub history: Vec<HistoryPoint>,
    /// Training images, validation images, test images.
    pub sizes: [usize; 3],
}

/// Everything a loaded run needs: data, images and their split parts.
pub struct RunData {
    /// The dataset.
    pub data: Dataset,
    /// Decoded images of every site.
    pub images: Images,
    /// The split's parts.
    pub parts: Parts,
    /// The split.
    pub split: dataset::Split,
}

/// Open the data of `config` and split it.
pub fn load_data(config: &TrainerConfig, progress: &ProgressBar) -> Result<RunData, FitError> {
    let data = Dataset::open(
        &config.data.root,
        &config.data.manifest,
        &config.preprocess.channels,
    )?;
    let split = data.split(config.split.level, config.split.fold)?;
    let cache = config
        .data
        .cache_dir
        .clone()
        .unwrap_or_else(|| config.out.join("cache"));
    let images = dataset::load_images(
        &data.manifest,
        &data.root,
        &config.preprocess,
        &ReadOptions::default(),
        Some(&cache),
        progress,
    )?;
    let parts = Parts::new(&data, &split, &images);
    Ok(RunData {
        data,
        images,
        parts,
        split,
    })
}

/// The model spec a config asks for on this data.
pub fn model_spec(config: &TrainerConfig, classes: usize) -> Result<ModelSpec, FitError> {
    if config.model.arch != "resnet18" {
        return Err(FitError::Config(format!(
            "trainer.model.arch: unknown architecture {:?}; available: resnet18",
            config.model.arch
        )));
    }
    Ok(ModelSpec {
        arch: config.model.arch.clone(),
        encoder: ResNetSpec::resnet18(
            config.preprocess.channels.len(),
            config.model.width,
            config.model.norm == NormKind::Instance,
        ),
        head: methods::embed_head(&config.method.name),
        embedding_dim: config.model.embedding_dim,
        classes,
    })
}

/// Train as `config` says; resume from `<out>/last.*` when `resume` is set
/// and it exists. `interrupt` stops the loop after the current step and
/// saves a checkpoint.
pub fn fit(
    config: &TrainerConfig,
    device: &Device,
    resume: bool,
    interrupt: &AtomicBool,
    progress: &ProgressBar,
) -> Result<FitReport, FitError> {
    let started = Instant::now();
    let run = load_data(config, progress)?;
    if run.parts.train.images.is_empty() {
        return Err(FitError::Config(
            "the split leaves no training images".into(),
        ));
    }
    let spec = model_spec(config, run.data.classes.len())?;
    let map = VarMap::new();
    let model = model::build(&spec, &map, device, config.seed)?;
    let ctx = MethodContext {
        map: &map,
        device,
        spec: &spec,
        envs: run.parts.train_plates,
        steps: config.optim.steps,
        seed: config.seed ^ 0xA5A5,
        image: run.images.shape,
    };
    let mut method = methods::build(&config.method.name, &config.method.params, &ctx)?;
    let mut params = trainable(&map, &format!("{}.", model::MODEL_PREFIX));
    params.extend(trainable(&map, "method."));
    let mut opt = AdamW::new(params, config.optim.lr, config.optim.weight_decay)?;
    let mut meta = CheckpointMeta {
        format_version: checkpoint::CHECKPOINT_VERSION,
        model: spec.clone(),
        preprocess: config.preprocess.clone(),
        classes: run.data.classes.clone(),
        plates: run.parts.plates.clone(),
        train_plates: run.parts.train_plates,
        config: config.clone(),
        step: 0,
        held_out: run.split.held_out.clone(),
        history: Vec::new(),
        trainer_version: env!("CARGO_PKG_VERSION").to_string(),
        git_commit: checkpoint::build_commit(),
        dataset_manifest_sha256: bfx_core::bundle::file_digest(&config.data.manifest)
            .ok()
            .map(|d| d.sha256),
    };
    if resume && config.out.join(format!("{LAST}.json")).is_file() {
        let (saved, tensors) = checkpoint::load(&config.out, LAST, device)?;
        let mut same = saved.config.clone();
        same.optim.steps = config.optim.steps;
        if same != *config || saved.model != spec {
            return Err(FitError::Checkpoint(format!(
                "{} was trained with another configuration; only trainer.optim.steps may change on resume (use a new trainer.out to start over)",
                config.out.display()
            )));
        }
        checkpoint::restore(&map, &tensors, &config.out)?;
        opt.load_state(&tensors)?;
        meta.step = saved.step;
        meta.history = saved.history;
    }

    let train = &run.parts.train;
    let kind = method.sampler(config.optim.batch_size);
    let mut sampler = Sampler::new(
        kind,
        &train.classes,
        &train.plates,
        config.optim.batch_size,
        config.seed,
    )?;
    // Replay the sampler and augmentation streams so a resumed run draws
    // the batches an uninterrupted run would have.
    let mut augment_rng = ChaCha8Rng::seed_from_u64(config.seed ^ 0x5EED);
    let [_, h, w] = run.images.shape;
    for _ in 0..meta.step {
        for _ in sampler.next_batch() {
            batches::augmentation(&mut augment_rng, h, w);
        }
    }
    let pretraining = method.pretraining_steps();
    let total = pretraining + config.optim.steps;
    progress.set_length(total as u64);
    progress.set_position(meta.step as u64);
    let eval_every = (config.optim.steps / 10).max(1);
    let mut best = meta
        .history
        .iter()
        .map(|h| h.val_loss)
        .fold(f32::INFINITY, f32::min);
    let (mut loss_sum, mut loss_n) = (0.0f32, 0usize);
    let mut interrupted = false;
    while meta.step < total {
        if interrupt.load(Ordering::Relaxed) {
            interrupted = true;
            break;
        }
        let indices = sampler.next_batch();
        let b = batch(&run.images, train, &indices, Some(&mut augment_rng), device)?;
        let terms = method.step(&model, &b, &mut opt, meta.step)?;
        // The training loss of the history is the classifier's: a
        // method's pretraining losses are other networks'.
        if meta.step >= pretraining
            && let Some((_, loss)) = terms.first()
        {
            loss_sum += loss;
            loss_n += 1;
        }
        meta.step += 1;
        progress.set_position(meta.step as u64);
        progress.set_message(
            terms
                .iter()
                .map(|(k, v)| format!("{k} {v:.3}"))
                .collect::<Vec<_>>()
                .join("  "),
        );
        let trained = meta.step.saturating_sub(pretraining);
        if meta.step > pretraining && (trained.is_multiple_of(eval_every) || meta.step == total) {
            if method.fits_probe_head() {
                probe::fit_head(&model, &map, &run.images, train, device)?;
            }
            let (val_loss, val_accuracy) =
                validate(&model, method.as_ref(), &run.images, &run.parts.val, device)?;
            meta.history.push(HistoryPoint {
                step: meta.step,
                train_loss: loss_sum / loss_n.max(1) as f32,
                val_loss,
                val_accuracy,
            });
            (loss_sum, loss_n) = (0.0, 0);
            if val_loss < best {
                best = val_loss;
                checkpoint::save(&config.out, BEST, &map, &opt, &meta)?;
            }
        }
    }
    checkpoint::save(&config.out, LAST, &map, &opt, &meta)?;
    if !config.out.join(format!("{BEST}.json")).is_file() {
        checkpoint::save(&config.out, BEST, &map, &opt, &meta)?;
    }
    progress.finish_and_clear();
    Ok(FitReport {
        steps: meta.step,
        interrupted,
        seconds: started.elapsed().as_secs_f64(),
        history: meta.history,
        sizes: [
            train.images.len(),
            run.parts.val.images.len(),
            run.parts.test.images.len(),
        ],
    })
}

/// The method's validation loss (mean over the batches that measure it;
/// NaN when none does) and the classifier's accuracy, with running
/// statistics.
pub fn validate(
    model: &Classifier,
    method: &dyn Method,
    images: &Images,
    part: &Part,
    device: &Device,
) -> Result<(f32, f32), FitError> {
    if part.images.is_empty() {
        return Ok((f32::NAN, f32::NAN));
    }
    let (mut loss, mut measured, mut correct) = (0.0f32, 0usize, 0usize);
    let all: Vec<usize> = (0..part.images.len()).collect();
    for chunk in all.chunks(64) {
        let b = batch(images, part, chunk, None, device)?;
        let (_, logits) = model.forward(&b.x, &mut NormPass::eval())?;
        if let Some(l) = method.validation_loss(model, &b, &logits)? {
            loss += l * chunk.len() as f32;
            measured += chunk.len();
        }
        let predicted = logits.argmax(1)?.to_vec1::<u32>()?;
        correct += predicted
            .iter()
            .zip(b.y.to_vec1::<u32>()?)
            .filter(|(p, y)| **p == *y)
            .count();
    }
    let n = part.images.len() as f32;
    let loss = if measured == 0 {
        f32::NAN
    } else {
        loss / measured as f32
    };
    Ok((loss, correct as f32 / n))
}
