//! `bfx-trainer bench`: fit and evaluate methods x levels x folds x seeds
//! and summarize them in one table like the IST paper's Table 1 (macro-F1
//! per generalization level, mean and std over seeds). Runs that already
//! have their metrics are reused, so an interrupted bench continues.
//! A method may carry parameters (`scbd:alpha=64`), so one bench sweeps them.

mod report;
mod variant;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use bfx_config::TrainerConfig;
use candle_core::Device;
use indicatif::ProgressBar;
use serde::Serialize;

use crate::dataset::split::{self, SplitLevel};
use crate::eval::{self, Evaluation};
use crate::fit::{self, FitError};
use crate::linear::mean_std;

pub use self::report::write_results;
pub use self::variant::MethodVariant;

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchPlan {
    /// Methods, with parameters.
    pub methods: Vec<MethodVariant>,
    /// Levels.
    pub levels: Vec<SplitLevel>,
    /// Folds per level: `None` for all.
    pub folds: Option<Vec<usize>>,
    /// Seeds.
    pub seeds: Vec<u64>,
}

/// One row of the table: a method, with or without AdaBN plate statistics.
#[derive(Clone, Debug, Serialize)]
pub struct Row {
    /// `ERM`, `ERM+AdaBN`, `SCBD (alpha 64)`, ...
    pub name: String,
    /// The method as the plan gave it (`scbd:alpha=64`).
    pub variant: String,
    /// Whether the row is with AdaBN plate statistics.
    pub adabn: bool,
    /// IST's test-time correction with this many styles per image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test_time_styles: Option<usize>,
    /// Per level (in plan order): mean and std over seeds of the
    /// fold-averaged macro-F1, or `None` when not run.
    pub f1: Vec<Option<(f64, f64)>>,
    /// The same for accuracy.
    pub accuracy: Vec<Option<(f64, f64)>>,
}

/// The bench result.
#[derive(Clone, Debug, Serialize)]
pub struct BenchResult {
    /// Level names, column order.
    pub levels: Vec<String>,
    /// Rows.
    pub rows: Vec<Row>,
    /// Every evaluation.
    pub runs: Vec<BenchRun>,
}

/// One run of the bench.
#[derive(Clone, Debug, Serialize)]
pub struct BenchRun {
    /// The method as the plan gave it (`scbd:alpha=64`).
    pub variant: String,
    /// Its evaluation.
    pub evaluation: Evaluation,
}

fn run_dir(
    out: &Path,
    method: &MethodVariant,
    level: SplitLevel,
    fold: usize,
    seed: u64,
) -> PathBuf {
    out.join("runs").join(method.dir_name()).join(format!(
        "{}-fold{fold}-seed{seed}",
        split::level_name(level)
    ))
}

/// Run the plan on `base` (its method, split, seed and out are replaced per run).
pub fn bench(
    base: &TrainerConfig,
    plan: &BenchPlan,
    out: &Path,
    device: &Device,
    interrupt: &AtomicBool,
    progress: &dyn Fn(&str),
) -> Result<BenchResult, FitError> {
    let data = crate::dataset::Dataset::open(
        &base.data.root,
        &base.data.manifest,
        &base.preprocess.channels,
    )?;
    let mut runs = Vec::new();
    for method in &plan.methods {
        for &level in &plan.levels {
            let count = split::fold_units(&data.manifest.rows, level)?.len();
            let folds: Vec<usize> = match &plan.folds {
                None => (0..count).collect(),
                Some(list) => list.clone(),
            };
            if let Some(&bad) = folds.iter().find(|&&f| f >= count) {
                return Err(FitError::Config(format!(
                    "fold {bad} does not exist at the {} level ({count} folds)",
                    split::level_name(level)
                )));
            }
            for &fold in &folds {
                for &seed in &plan.seeds {
                    let dir = run_dir(out, method, level, fold, seed);
                    let metrics = dir.join("report").join("metrics.json");
                    let label = format!(
                        "{method} {} fold {fold} seed {seed}",
                        split::level_name(level)
                    );
                    let done = |evaluation| BenchRun {
                        variant: method.to_string(),
                        evaluation,
                    };
                    if let Some(e) = std::fs::read_to_string(&metrics)
                        .ok()
                        .and_then(|t| serde_json::from_str(&t).ok())
                    {
                        progress(&format!("{label}: done before"));
                        runs.push(done(e));
                        continue;
                    }
                    let mut c = base.clone();
                    c.method.name = method.method.clone();
                    c.method.params = method.table(&base.method.name, &base.method.params);
                    c.split.level = level;
                    c.split.fold = fold;
                    c.seed = seed;
                    c.out = dir.clone();
                    if c.data.cache_dir.is_none() {
                        c.data.cache_dir = Some(out.join("cache"));
                    }
                    progress(&format!("{label}: training"));
                    let report = fit::fit(&c, device, true, interrupt, &ProgressBar::hidden())?;
                    if report.interrupted {
                        return Err(FitError::Config(format!(
                            "interrupted during {label}; run bench again to continue"
                        )));
                    }
                    let (e, projection) = eval::evaluate(&dir, device, &ProgressBar::hidden())?;
                    eval::write_report(&dir.join("report"), &e, &projection)
                        .map_err(FitError::Config)?;
                    progress(&format!(
                        "{label}: macro-F1 {:.3}{}",
                        e.plain.macro_f1,
                        e.adabn
                            .as_ref()
                            .map(|a| format!(", with AdaBN {:.3}", a.macro_f1))
                            .unwrap_or_default()
                    ));
                    runs.push(done(e));
                }
            }
        }
    }
    Ok(summarize(plan, runs))
}

/// `value` of the `runs` at `level`: the fold average per seed, then the
/// mean and std over `seeds`; `None` when no run has a value.
fn over_seeds(
    runs: &[&Evaluation],
    level: &str,
    seeds: &[u64],
    value: impl Fn(&Evaluation) -> Option<f64>,
) -> Option<(f64, f64)> {
    let per_seed: Vec<f64> = seeds
        .iter()
        .filter_map(|&s| {
            let v: Vec<f64> = runs
                .iter()
                .filter(|e| e.level == level && e.seed == s)
                .filter_map(|e| value(e))
                .collect();
            mean_std(&v).map(|x| x.0)
        })
        .collect();
    mean_std(&per_seed)
}

/// The evaluations of the runs of `variant`.
fn of_variant<'a>(runs: &'a [BenchRun], variant: &str) -> Vec<&'a Evaluation> {
    runs.iter()
        .filter(|r| r.variant == variant)
        .map(|r| &r.evaluation)
        .collect()
}

fn summarize(plan: &BenchPlan, runs: Vec<BenchRun>) -> BenchResult {
    let levels: Vec<String> = plan
        .levels
        .iter()
        .map(|&l| split::level_name(l).to_owned())
        .collect();
    let mut rows = Vec::new();
    for method in &plan.methods {
        let variant = method.to_string();
        let of_method = of_variant(&runs, &variant);
        // Training statistics, AdaBN, then each K of IST's test-time correction.
        let mut views: Vec<(String, bool, Option<usize>)> = vec![(method.title(), false, None)];
        if of_method.iter().any(|e| e.adabn.is_some()) {
            views.push((format!("{}+AdaBN", method.title()), true, None));
        }
        for k in eval::TEST_TIME_STYLES {
            if of_method
                .iter()
                .any(|e| e.test_time.iter().any(|t| t.styles == k))
            {
                views.push((format!("{}+TTC (K={k})", method.title()), false, Some(k)));
            }
        }
        for (name, adabn, styles) in views {
            let pick = |e: &Evaluation| match (adabn, styles) {
                (true, _) => e.adabn.clone(),
                (false, Some(k)) => e
                    .test_time
                    .iter()
                    .find(|t| t.styles == k)
                    .map(|t| t.metrics.clone()),
                (false, None) => Some(e.plain.clone()),
            };
            let stat = |level: &str, f: &dyn Fn(&eval::ModeMetrics) -> f64| {
                over_seeds(&of_method, level, &plan.seeds, |e| pick(e).map(|m| f(&m)))
            };
            rows.push(Row {
                name,
                variant: variant.clone(),
                adabn,
                test_time_styles: styles,
                f1: levels.iter().map(|l| stat(l, &|m| m.macro_f1)).collect(),
                accuracy: levels.iter().map(|l| stat(l, &|m| m.accuracy)).collect(),
            });
        }
    }
    BenchResult { levels, rows, runs }
}
