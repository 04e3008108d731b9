//! `bfx-trainer eval`: a trained run measured the way the papers do, on the
//! environments its split held out.

pub mod embed;
pub mod metrics;
pub mod plots;
pub mod probes;
mod report;

use std::path::Path;

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

pub use self::embed::{Adapt, Embedded, PlateStats, embed, plate_stats};
use self::probes::{BatchSensitivity, Relationships};
pub use self::report::write_report;
use crate::fit::batches::Part;
use crate::fit::checkpoint::{self, BEST, CheckpointMeta};
use crate::fit::{FitError, load_data};
use crate::linear::{accuracy, macro_f1};
use crate::model::{Classifier, MODEL_PREFIX};

/// Inference batch sizes of the AdaBN curve.
pub const CURVE_SIZES: [usize; 7] = [1, 2, 4, 8, 16, 32, 64];
/// Neighbours of the kNN batch cross-validation.
pub const KNN_K: usize = 10;
/// LISI perplexity (Harmony's default).
pub const LISI_PERPLEXITY: f64 = 30.0;
/// Styles per image of IST's test-time correction, each a row of the results.
pub const TEST_TIME_STYLES: [usize; 2] = [1, 8];
/// Seed of the test-time styles.
const TEST_TIME_SEED: u64 = 0x157;
/// Training images added to the test images for embedding metrics, at most.
const TRAIN_SAMPLE: usize = 400;

/// Classification and embedding metrics under one inference mode.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ModeMetrics {
    /// Test accuracy.
    pub accuracy: f64,
    /// Test macro-F1.
    pub macro_f1: f64,
    /// kNN accuracy with neighbours from other plates only.
    pub knn_batch_cv: f64,
    /// iLISI over plates (higher: plates better mixed).
    pub ilisi: f64,
    /// cLISI over classes (lower: classes better separated).
    pub clisi: f64,
    /// Macro-F1 of predicting the plate from the embedding (lower: less batch information).
    pub plate_prediction_f1: f64,
}

/// IST's metrics with test-time correction by `styles` random training styles.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TestTime {
    /// Styles averaged per image (K).
    pub styles: usize,
    /// The metrics.
    pub metrics: ModeMetrics,
}

/// One point of the AdaBN curve.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CurvePoint {
    /// Inference batch size.
    pub batch_size: usize,
    /// Accuracy with each batch's own statistics.
    pub per_batch: f64,
    /// Accuracy with the plate's statistics.
    pub per_plate: f64,
}

/// Everything `eval` measures on one run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Evaluation {
    /// Method name.
    pub method: String,
    /// Split level name.
    pub level: String,
    /// Fold.
    pub fold: usize,
    /// Seed.
    pub seed: u64,
    /// Held-out environments.
    pub held_out: Vec<String>,
    /// Test images scored (labels seen in training).
    pub test_images: usize,
    /// With training statistics.
    pub plain: ModeMetrics,
    /// With AdaBN plate statistics (BatchNorm models only).
    pub adabn: Option<ModeMetrics>,
    /// Accuracy against inference batch size (BatchNorm models only).
    pub adabn_curve: Vec<CurvePoint>,
    /// IST runs: the metrics with test-time correction, one entry per K
    /// of [`TEST_TIME_STYLES`].
    #[serde(default)]
    pub test_time: Vec<TestTime>,
    /// Batch-effect sensitivity of the embedding (training statistics)
    /// over every image of the screen; `None` with a single plate.
    #[serde(default)]
    pub batch_sensitivity: Option<BatchSensitivity>,
    /// Relationship recovery over every image of the screen, for screens
    /// whose `design.json` names class families.
    #[serde(default)]
    pub relationships: Option<Relationships>,
}

/// Data kept for the report's projection plot.
pub struct Projection {
    /// 2-D points.
    pub points: Vec<[f32; 2]>,
    /// Class of each point and class names.
    pub classes: (Vec<usize>, Vec<String>),
    /// Plate of each point and plate names.
    pub plates: (Vec<usize>, Vec<String>),
}

/// Load the model of checkpoint `name` in `dir`.
pub fn load_model(
    dir: &Path,
    name: &str,
    device: &Device,
) -> Result<(CheckpointMeta, Classifier), FitError> {
    let (meta, tensors) = checkpoint::load(dir, name, device)?;
    let map = VarMap::new();
    let model = Classifier::new(
        &meta.model,
        VarBuilder::from_varmap(&map, DType::F32, device).pp(MODEL_PREFIX),
    )?;
    checkpoint::restore(&map, &tensors, dir)?;
    Ok((meta, model))
}

/// Evaluate the best checkpoint of the run in `dir` on its split's test environments.
pub fn evaluate(
    dir: &Path,
    device: &Device,
    progress: &ProgressBar,
) -> Result<(Evaluation, Projection), FitError> {
    // An IST run's checkpoint also holds its style-transfer networks: read it once.
    let (meta, model, ist_net) = if checkpoint::read_meta(dir, BEST)?.config.method.name == "ist" {
        let ist = crate::ist::load(dir, BEST, device)?;
        (ist.meta, ist.model, Some(ist.net))
    } else {
        let (meta, model) = load_model(dir, BEST, device)?;
        (meta, model, None)
    };
    let run = load_data(&meta.config, progress)?;
    // Only labels the model was trained on can be predicted.
    let trained: std::collections::BTreeSet<usize> =
        run.parts.train.classes.iter().copied().collect();
    let test = subset(&run.parts.test, |i| {
        trained.contains(&run.parts.test.classes[i])
    });
    if test.images.is_empty() {
        return Err(FitError::Config(
            "the split's test set has no image of a trained class".into(),
        ));
    }
    let step = run.parts.train.images.len().div_ceil(TRAIN_SAMPLE);
    let train_sample = subset(&run.parts.train, |i| i % step == 0);
    let both = concat(&test, &train_sample);
    let is_bn = !meta.model.encoder.instance_norm;

    let score = |e: Embedded| -> (ModeMetrics, Embedded) {
        let n = test.images.len();
        let truth = &test.classes;
        let predicted = &e.predicted[..n];
        let queries: Vec<usize> = (0..n).collect();
        (
            ModeMetrics {
                accuracy: accuracy(truth, predicted),
                macro_f1: macro_f1(truth, predicted),
                knn_batch_cv: metrics::knn_batch_cv(
                    &e.embeddings,
                    &both.classes,
                    &both.plates,
                    &queries,
                    KNN_K,
                ),
                ilisi: metrics::lisi(&e.embeddings, &both.plates, LISI_PERPLEXITY),
                clisi: metrics::lisi(&e.embeddings, &both.classes, LISI_PERPLEXITY),
                plate_prediction_f1: probes::group_probe(&e.embeddings, &both.plates)
                    .map_or(0.0, |p| p.macro_f1),
            },
            e,
        )
    };
    let mode = |adapt: Adapt<'_>| -> Result<(ModeMetrics, Embedded), FitError> {
        Ok(score(embed(&model, &run.images, &both, adapt, device)?))
    };
    let (plain, embedded) = mode(Adapt::None)?;
    let mut test_time = Vec::new();
    if let Some(net) = &ist_net {
        let plates = &run.parts.plates[..run.parts.train_plates];
        let bank = crate::ist::style_bank(net, &run.images, &run.parts.train, plates, device)?;
        for styles in TEST_TIME_STYLES {
            let e = crate::ist::embed_corrected(
                &model,
                net,
                &bank,
                &run.images,
                &both,
                styles,
                TEST_TIME_SEED,
                device,
            )?;
            test_time.push(TestTime {
                styles,
                metrics: score(e).0,
            });
        }
    }
    let mut adabn = None;
    let mut curve = Vec::new();
    if is_bn {
        let both_stats = plate_stats(&model, &run.images, &both, device)?;
        adabn = Some(mode(Adapt::PerPlate(&both_stats, 64))?.0);
        // The test plates' statistics, measured once for every batch size.
        let test_stats = plate_stats(&model, &run.images, &test, device)?;
        for &size in &CURVE_SIZES {
            let acc = |adapt| -> Result<f64, FitError> {
                let e = embed(&model, &run.images, &test, adapt, device)?;
                Ok(accuracy(&test.classes, &e.predicted))
            };
            curve.push(CurvePoint {
                batch_size: size,
                per_batch: acc(Adapt::PerBatch(size))?,
                per_plate: acc(Adapt::PerPlate(&test_stats, size))?,
            });
        }
    }
    let (batch_sensitivity, relationships) = screen_probes(&model, &run, device)?;
    let evaluation = Evaluation {
        method: meta.config.method.name.clone(),
        level: crate::dataset::split::level_name(meta.config.split.level).to_owned(),
        fold: meta.config.split.fold,
        seed: meta.config.seed,
        held_out: meta.held_out.clone(),
        test_images: test.images.len(),
        plain,
        adabn,
        adabn_curve: curve,
        test_time,
        batch_sensitivity,
        relationships,
    };
    let projection = Projection {
        points: metrics::pca_2d(&embedded.embeddings),
        classes: (both.classes.clone(), run.data.classes.clone()),
        plates: (both.plates.clone(), run.parts.plates.clone()),
    };
    Ok((evaluation, projection))
}

/// The probes that read the whole screen: plate and plate-well from the
/// embedding, and class relationships.
fn screen_probes(
    model: &Classifier,
    run: &crate::fit::RunData,
    device: &Device,
) -> Result<(Option<BatchSensitivity>, Option<Relationships>), FitError> {
    let p = &run.parts;
    let all = concat(&concat(&p.train, &p.val), &p.test);
    let e = embed(model, &run.images, &all, Adapt::None, device)?.embeddings;
    let mut wells = std::collections::BTreeMap::new();
    let plate_well: Vec<usize> = all
        .images
        .iter()
        .map(|&i| {
            let row = &run.data.manifest.rows[run.images.site_of[i]];
            let next = wells.len();
            *wells
                .entry((row.plate.clone(), row.well.clone()))
                .or_insert(next)
        })
        .collect();
    let sensitivity = probes::group_probe(&e, &all.plates).and_then(|plate| {
        Some(BatchSensitivity {
            images: e.len(),
            plate,
            plate_well: probes::group_probe(&e, &plate_well)?,
        })
    });
    let relationships = probes::design_families(&run.data.root, &run.data.classes)
        .and_then(|family| probes::relationship_recovery(&e, &all.classes, &family));
    Ok((sensitivity, relationships))
}

fn subset(part: &Part, keep: impl Fn(usize) -> bool) -> Part {
    let idx: Vec<usize> = (0..part.images.len()).filter(|&i| keep(i)).collect();
    Part {
        images: idx.iter().map(|&i| part.images[i]).collect(),
        classes: idx.iter().map(|&i| part.classes[i]).collect(),
        plates: idx.iter().map(|&i| part.plates[i]).collect(),
    }
}

fn concat(a: &Part, b: &Part) -> Part {
    let mut out = a.clone();
    out.images.extend(&b.images);
    out.classes.extend(&b.classes);
    out.plates.extend(&b.plates);
    out
}
