//! Calibration of a screen: are the batch effects visible, and do they
//! confound biology? A linear probe on simple per-image intensity features
//! predicts the plate (batch effects visible) and the label y at every
//! generalization level (IID vs leave-section/plate/series-out).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use bfx_core::image::{ReadOptions, read_image};
use rayon::prelude::*;
use serde::Serialize;

use crate::dataset::{Dataset, DatasetError, EnvLevel, SplitLevel, split};
use crate::linear::{FitOptions, LogisticRegression, accuracy, macro_f1, mean_std};
use crate::synth::Design;

/// Per channel: log of mean, std and the 10/50/90/99th percentiles.
pub const FEATURES_PER_CHANNEL: [&str; 6] = ["mean", "std", "p10", "p50", "p90", "p99"];

/// Intensity features of every site, from the raw files.
pub fn intensity_features(data: &Dataset) -> Result<Vec<Vec<f64>>, DatasetError> {
    let read = ReadOptions::default();
    data.manifest
        .rows
        .par_iter()
        .map(|row| {
            let mut features = Vec::new();
            for path in &row.paths {
                let full = data.root.join(path);
                let plane = read_image(&full, &read)
                    .map_err(|e| DatasetError::Scan(full.clone(), e.to_string()))?
                    .swap_remove(0);
                let mut v = Vec::with_capacity(plane.pixels.len());
                plane.pixels.extend_f32(&mut v);
                features.extend(channel_features(&mut v));
            }
            Ok(features)
        })
        .collect()
}

fn channel_features(v: &mut [f32]) -> [f64; 6] {
    let n = v.len().max(1) as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    v.sort_by(f32::total_cmp);
    let q = |p: f64| {
        v.get(((v.len().saturating_sub(1)) as f64 * p) as usize)
            .copied()
            .unwrap_or(0.0) as f64
    };
    [mean, var.sqrt(), q(0.1), q(0.5), q(0.9), q(0.99)].map(|x| (1.0 + x.max(0.0)).ln())
}

/// One probe result, averaged over folds.
#[derive(Clone, Debug, Serialize)]
pub struct ProbeResult {
    /// What is predicted (`plate`, `label`).
    pub target: String,
    /// Split level.
    pub level: String,
    /// Folds averaged.
    pub folds: usize,
    /// Test sites over all folds.
    pub test_sites: usize,
    /// Mean accuracy.
    pub accuracy: f64,
    /// Std of accuracy over folds.
    pub accuracy_std: f64,
    /// Mean macro-F1.
    pub macro_f1: f64,
    /// Chance accuracy (1 / classes in the test set, averaged).
    pub chance: f64,
}

/// Fit and test the probe on every fold of `level`; test rows whose label
/// never occurs in training are left out (no classifier can name them).
pub fn probe(
    data: &Dataset,
    features: &[Vec<f64>],
    target_name: &str,
    targets: &[usize],
    classes: usize,
    level: SplitLevel,
) -> Result<ProbeResult, DatasetError> {
    let folds = split::fold_units(&data.manifest.rows, level)?.len();
    let (mut accs, mut f1s, mut chances, mut sites) = (Vec::new(), Vec::new(), Vec::new(), 0);
    for fold in 0..folds {
        let s = data.split(level, fold)?;
        let train: Vec<usize> = s.train.iter().chain(&s.val).copied().collect();
        let seen: Vec<usize> = train.iter().map(|&i| targets[i]).collect();
        let trained: BTreeSet<usize> = seen.iter().copied().collect();
        let test: Vec<usize> = s
            .test
            .iter()
            .copied()
            .filter(|&i| trained.contains(&targets[i]))
            .collect();
        if test.is_empty() {
            continue;
        }
        let x: Vec<Vec<f64>> = train.iter().map(|&i| features[i].clone()).collect();
        let model = LogisticRegression::fit(&x, &seen, classes, FitOptions::default());
        let truth: Vec<usize> = test.iter().map(|&i| targets[i]).collect();
        let predicted: Vec<usize> = test.iter().map(|&i| model.predict(&features[i])).collect();
        let mut present = truth.clone();
        present.sort_unstable();
        present.dedup();
        accs.push(accuracy(&truth, &predicted));
        f1s.push(macro_f1(&truth, &predicted));
        chances.push(1.0 / present.len() as f64);
        sites += test.len();
    }
    let mean = |v: &[f64]| mean_std(v).map_or((0.0, 0.0), |m| m);
    let (acc, acc_std) = mean(&accs);
    Ok(ProbeResult {
        target: target_name.to_owned(),
        level: split::level_name(level).to_owned(),
        folds: accs.len(),
        test_sites: sites,
        accuracy: acc,
        accuracy_std: acc_std,
        macro_f1: mean(&f1s).0,
        chance: mean(&chances).0,
    })
}

/// The calibration table: plate from features (IID), label at every level.
pub fn calibrate(data: &Dataset) -> Result<Vec<ProbeResult>, DatasetError> {
    let features = intensity_features(data)?;
    let mut results = Vec::new();
    if let Some((plates, plate_of)) = data.envs(EnvLevel::Plate) {
        results.push(probe(
            data,
            &features,
            "plate",
            &plate_of,
            plates.len(),
            SplitLevel::Iid,
        )?);
    }
    for level in split::LEVELS {
        match probe(
            data,
            &features,
            "label",
            &data.labels,
            data.classes.len(),
            level,
        ) {
            Ok(r) => results.push(r),
            // A manifest without series or sections simply has no such level.
            Err(DatasetError::Split(e)) => tracing::info!("{e}"),
            Err(e) => return Err(e),
        }
    }
    Ok(results)
}

/// The markdown report: design summary, probe table, contact sheet.
pub fn report(
    data: &Dataset,
    design: Option<&Design>,
    results: &[ProbeResult],
    sheet: Option<(&Path, &crate::sheet::SheetLegend)>,
    command: &str,
) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Synthetic screen calibration\n");
    let _ = writeln!(md, "Made by `{command}`; do not edit by hand.\n");
    if let Some(d) = design {
        let _ = writeln!(
            md,
            "## Design: `{}` (seed {})\n\n{} sites of {}x{} px, channels {}; {} classes on {} plates in {} series, {} sections per plate.\n",
            d.preset,
            d.seed,
            data.manifest.rows.len(),
            d.image_size,
            d.image_size,
            d.channels
                .iter()
                .map(|c| format!("`{}` {}", c.id, c.stain))
                .collect::<Vec<_>>()
                .join(", "),
            d.classes.len(),
            d.plates.len(),
            d.series.len(),
            d.plates.first().map_or(0, |p| p.sections.len()),
        );
        let _ = writeln!(
            md,
            "| plate | series | classes (same set in every section) |\n|---|---|---|"
        );
        for p in &d.plates {
            let _ = writeln!(
                md,
                "| {} | {} | {} |",
                p.name,
                p.series,
                p.classes.join(", ")
            );
        }
        let _ = writeln!(
            md,
            "\nBatch effects of series and plate together (sections and wells add smaller ones), \
             as the generator realized them:\n\n\
             | plate | gain dna / actin / mito / lyso | gamma dna | blur sigma (px) | sharpening | \
             pixel scale | cell density | dna bleed into actin | read noise |\n\
             |---|---|---|---|---|---|---|---|---|"
        );
        for p in &d.plates {
            let Some(series) = d.series.iter().find(|s| s.name == p.series) else {
                continue;
            };
            let o = (&series.effects + &p.effects).realize();
            let _ = writeln!(
                md,
                "| {} | {} | {:.2} | {:.2} | {:+.2} | {:.2} | {:.2} | {:.3} | {:.1} |",
                p.name,
                o.gain.map(|g| format!("{g:.2}")).join(" / "),
                o.gamma[0],
                o.blur_sigma,
                o.sharpness,
                o.scale,
                o.density,
                o.bleed[0][1],
                o.read_noise
            );
        }
        let _ = writeln!(
            md,
            "\nPerturbations come in families (the ground truth of relationship recovery): members change the same features in the same direction and one feature of their own.\n\n| class | family | features changed from the control (log-scale shift) |\n|---|---|---|"
        );
        for c in &d.classes {
            let changes: Vec<String> = c
                .changes
                .iter()
                .map(|(f, s)| format!("{f} {s:+.2}"))
                .collect();
            let shown = if changes.is_empty() {
                "none (control)".to_owned()
            } else {
                changes.join(", ")
            };
            let family = c.family.as_deref().unwrap_or("–");
            let _ = writeln!(md, "| {} | {family} | {shown} |", c.name);
        }
    }
    let _ = writeln!(
        md,
        "\n## Linear probe on per-image intensity features\n\n\
         Features: for every channel, the log of the image's mean, standard deviation and 10/50/90/99th percentiles \
         ({} features). Probe: multinomial logistic regression on standardized features (L2 {}, {} Adam iterations). \
         Folds as `bfx-trainer` splits them; test sites whose label never occurs in training are left out.\n",
        FEATURES_PER_CHANNEL.len() * data.manifest.channels.len(),
        FitOptions::default().l2,
        FitOptions::default().iterations,
    );
    let _ = writeln!(
        md,
        "| predicts | split | folds | test sites | accuracy (mean ± sd over folds) | macro-F1 | chance |\n|---|---|---|---|---|---|---|"
    );
    for r in results {
        let split = match r.level.as_str() {
            "iid" => "IID (held-out wells)",
            "section" => "level 1: leave-section-out",
            "plate" => "level 2: leave-plate-out",
            _ => "level 3: leave-series-out",
        };
        let _ = writeln!(
            md,
            "| {} | {split} | {} | {} | {:.3} ± {:.3} | {:.3} | {:.3} |",
            r.target, r.folds, r.test_sites, r.accuracy, r.accuracy_std, r.macro_f1, r.chance
        );
    }
    let find = |t: &str, l: &str| results.iter().find(|r| r.target == t && r.level == l);
    if let (Some(iid), Some(plate)) = (find("label", "iid"), find("label", "plate")) {
        let _ = writeln!(
            md,
            "\nLabel accuracy falls from {:.3} on held-out wells to {:.3} on held-out plates ({:.0}% of IID): \
             what a probe learns about y on seen plates partly rides on plate-specific intensity, which a new plate changes.",
            iid.accuracy,
            plate.accuracy,
            100.0 * plate.accuracy / iid.accuracy.max(1e-9)
        );
    }
    if let Some((png, legend)) = sheet {
        let name = png
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let _ = writeln!(
            md,
            "\n## Contact sheet\n\n![contact sheet]({name})\n\n\
             Rows are classes ({}), top to bottom; columns are plates ({}), left to right; each cell shows sites of that class on that plate, \
             an empty cell a class the plate does not hold. Colours: {}. Intensities are scaled per channel over the whole sheet, \
             so differences between plates are the batch effects.",
            legend.rows.join(", "),
            legend.columns.join(", "),
            legend
                .colours
                .iter()
                .map(|(c, k)| format!("{c} {k}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    md
}
