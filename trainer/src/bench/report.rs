//! The bench's tables: `results.md`, `results.json` and `f1_by_level.png`.

use std::fmt::Write as _;
use std::path::Path;

use bfx_config::TrainerConfig;

use super::{BenchPlan, BenchResult, of_variant, over_seeds};

/// `mean ± std`, or a dash where nothing was measured.
fn cell(v: &Option<(f64, f64)>) -> String {
    v.map_or("–".to_owned(), |(m, s)| format!("{m:.3} ± {s:.3}"))
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
         `+AdaBN` rows are the same runs evaluated with each test plate's own BatchNorm statistics; \
         `+TTC (K=k)` rows are IST's runs with test-time correction (each image restyled with k training styles, embeddings averaged).\n",
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
    probe_table(&mut md, result, plan);
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

/// Batch-effect sensitivity and relationship recovery of each method at
/// the plan's first level (fold average per seed, then mean ± std).
fn probe_table(md: &mut String, result: &BenchResult, plan: &BenchPlan) {
    let Some(level) = result.levels.first() else {
        return;
    };
    type Pick = fn(&crate::eval::Evaluation) -> Option<f64>;
    let columns: [(&str, Pick); 5] = [
        ("plate F1", |e| {
            e.batch_sensitivity.as_ref().map(|b| b.plate.macro_f1)
        }),
        ("plate AUROC", |e| {
            e.batch_sensitivity.as_ref().map(|b| b.plate.auroc)
        }),
        ("plate-well F1", |e| {
            e.batch_sensitivity.as_ref().map(|b| b.plate_well.macro_f1)
        }),
        ("plate-well AUROC", |e| {
            e.batch_sensitivity.as_ref().map(|b| b.plate_well.auroc)
        }),
        ("relationship AUPRC", |e| {
            e.relationships.as_ref().map(|r| r.auprc)
        }),
    ];
    let mut lines = Vec::new();
    for method in &plan.methods {
        let runs = of_variant(&result.runs, &method.to_string());
        let cells: Vec<String> = columns
            .iter()
            .map(|(_, pick)| cell(&over_seeds(&runs, level, &plan.seeds, pick)))
            .collect();
        lines.push(format!("| {} | {} |", method.title(), cells.join(" | ")));
    }
    let chance = result
        .runs
        .iter()
        .find_map(|r| r.evaluation.relationships.as_ref())
        .map(|r| {
            format!(
                " Relationship recovery ranks {} class pairs, {} of one family: a random ranking scores about {:.3}.",
                r.pairs,
                r.related,
                r.related as f64 / r.pairs.max(1) as f64
            )
        })
        .unwrap_or_default();
    let names: Vec<&str> = columns.iter().map(|(n, _)| *n).collect();
    let _ = writeln!(
        md,
        "\n## Batch-effect sensitivity and relationship recovery\n\n\
         From the {} runs: each model embeds every image of the screen (training statistics). \
         A logistic regression reads the plate and the plate-well from the embedding (60% of each group trains it, \
         the rest tests it; lower is less batch information). Classes, as mean embeddings minus the controls', \
         are ranked pairwise by cosine similarity against the synthetic screen's class families (higher is better).{chance} \
         Mean ± std over seeds.\n\n| method | {} |\n|---|{}",
        level_title(level),
        names.join(" | "),
        "---|".repeat(names.len())
    );
    for l in lines {
        let _ = writeln!(md, "{l}");
    }
}
