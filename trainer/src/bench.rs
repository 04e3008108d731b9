//! `bfx-trainer bench`: fit and evaluate methods x levels x folds x seeds
//! and summarize them in one table like the IST paper's Table 1 (macro-F1
//! per generalization level, mean and std over seeds). Runs that already
//! have their metrics are reused, so an interrupted bench continues.

use std::fmt::Write as _;
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

/// What to run.
#[derive(Clone, Debug)]
pub struct BenchPlan {
    /// Methods.
    pub methods: Vec<String>,
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
    /// `ERM`, `ERM+AdaBN`, ...
    pub name: String,
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
    pub runs: Vec<Evaluation>,
}

fn run_dir(out: &Path, method: &str, level: SplitLevel, fold: usize, seed: u64) -> PathBuf {
    out.join("runs").join(method).join(format!(
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
                    if let Some(e) = std::fs::read_to_string(&metrics)
                        .ok()
                        .and_then(|t| serde_json::from_str(&t).ok())
                    {
                        progress(&format!("{label}: done before"));
                        runs.push(e);
                        continue;
                    }
                    let mut c = base.clone();
                    c.method.name = method.clone();
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
                    runs.push(e);
                }
            }
        }
    }
    Ok(summarize(plan, runs))
}

fn pretty(method: &str) -> String {
    match method {
        "erm" => "ERM".into(),
        "abra" => "ABRA".into(),
        "dann" => "DANN".into(),
        "mixstyle" => "MixStyle".into(),
        other => other.to_owned(),
    }
}

fn summarize(plan: &BenchPlan, runs: Vec<Evaluation>) -> BenchResult {
    let levels: Vec<String> = plan
        .levels
        .iter()
        .map(|&l| split::level_name(l).to_owned())
        .collect();
    let mut rows = Vec::new();
    for method in &plan.methods {
        for adabn in [false, true] {
            let pick = |e: &Evaluation| {
                if adabn {
                    e.adabn.clone()
                } else {
                    Some(e.plain.clone())
                }
            };
            if adabn
                && !runs
                    .iter()
                    .any(|e| e.method == *method && e.adabn.is_some())
            {
                continue;
            }
            let stat = |level: &str, f: &dyn Fn(&eval::ModeMetrics) -> f64| {
                // Fold average per seed, then mean and std over seeds.
                let per_seed: Vec<f64> = plan
                    .seeds
                    .iter()
                    .filter_map(|&s| {
                        let v: Vec<f64> = runs
                            .iter()
                            .filter(|e| e.method == *method && e.level == level && e.seed == s)
                            .filter_map(|e| pick(e).map(|m| f(&m)))
                            .collect();
                        mean_std(&v).map(|x| x.0)
                    })
                    .collect();
                mean_std(&per_seed)
            };
            rows.push(Row {
                name: format!("{}{}", pretty(method), if adabn { "+AdaBN" } else { "" }),
                f1: levels.iter().map(|l| stat(l, &|m| m.macro_f1)).collect(),
                accuracy: levels.iter().map(|l| stat(l, &|m| m.accuracy)).collect(),
            });
        }
    }
    BenchResult { levels, rows, runs }
}

fn level_title(level: &str) -> &'static str {
    match level {
        "iid" => "IID",
        "section" => "Level 1 (section out)",
        "plate" => "Level 2 (plate out)",
        _ => "Level 3 (series out)",
    }
}

/// `results.md`, `results.json` and `f1_by_level.png` in `out`; `base`
/// and `plan` are described in the markdown so the table says what it measured.
pub fn write_results(
    out: &Path,
    result: &BenchResult,
    base: &TrainerConfig,
    plan: &BenchPlan,
    command: &str,
) -> Result<(), String> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Benchmark\n\nMade by `{command}`; do not edit by hand.\n"
    );
    let geometry = match base.preprocess.geometry {
        bfx_core::preprocess::Geometry::Resize { height, width } => {
            format!("resized to {height}x{width}")
        }
        bfx_core::preprocess::Geometry::Tile { size, stride } => {
            format!("{size}x{size} tiles every {stride} px")
        }
    };
    let normalization = match base.preprocess.normalization {
        bfx_core::preprocess::Normalization::SelfStandardize { .. } => "per-image standardization",
        bfx_core::preprocess::Normalization::Percentile { .. } => {
            "fixed percentiles (plate intensity differences kept)"
        }
    };
    let _ = writeln!(
        md,
        "Setting: data `{}`; channels {:?} {geometry}, {normalization}; ResNet18 layout, width {}, {:?} norm, embedding {}; \
         AdamW lr {}, weight decay {}, batch {}, {} steps; folds {}; seeds {:?}. \
         `+AdaBN` rows are the same runs evaluated with each test plate's own BatchNorm statistics.\n",
        base.data.manifest.display(),
        base.preprocess.channels,
        base.model.width,
        base.model.norm,
        base.model.embedding_dim,
        base.optim.lr,
        base.optim.weight_decay,
        base.optim.batch_size,
        base.optim.steps,
        plan.folds
            .as_ref()
            .map_or("all".to_owned(), |f| format!("{f:?}")),
        plan.seeds,
    );
    let _ = writeln!(
        md,
        "Macro-F1 on held-out environments, mean ± std over seeds (each seed's value averaged over folds).\n"
    );
    let header: Vec<&str> = result.levels.iter().map(|l| level_title(l)).collect();
    let _ = writeln!(
        md,
        "| method | {} |\n|---|{}",
        header.join(" | "),
        "---|".repeat(header.len())
    );
    let cell =
        |v: &Option<(f64, f64)>| v.map_or("–".to_owned(), |(m, s)| format!("{m:.3} ± {s:.3}"));
    for r in &result.rows {
        let cells: Vec<String> = r.f1.iter().map(cell).collect();
        let _ = writeln!(md, "| {} | {} |", r.name, cells.join(" | "));
    }
    let _ = writeln!(
        md,
        "\nAccuracy, same layout:\n\n| method | {} |\n|---|{}",
        header.join(" | "),
        "---|".repeat(header.len())
    );
    for r in &result.rows {
        let cells: Vec<String> = r.accuracy.iter().map(cell).collect();
        let _ = writeln!(md, "| {} | {} |", r.name, cells.join(" | "));
    }
    let _ = writeln!(md, "\n![macro-F1 by level](f1_by_level.png)");
    std::fs::write(out.join("results.md"), md).map_err(|e| e.to_string())?;
    let json = serde_json::to_string_pretty(result).map_err(|e| e.to_string())?;
    std::fs::write(out.join("results.json"), json + "\n").map_err(|e| e.to_string())?;
    let bars: Vec<(String, Vec<Option<f64>>)> = result
        .rows
        .iter()
        .map(|r| {
            (
                r.name.clone(),
                r.f1.iter().map(|v| v.map(|x| x.0)).collect(),
            )
        })
        .collect();
    let titles: Vec<&str> = result
        .levels
        .iter()
        .map(|l| match l.as_str() {
            "iid" => "IID",
            "section" => "L1 section",
            "plate" => "L2 plate",
            _ => "L3 series",
        })
        .collect();
    crate::eval::plots::level_bars(
        &out.join("f1_by_level.png"),
        "Macro-F1 by generalization level",
        &titles,
        &bars,
    )
}
