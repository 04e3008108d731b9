//! The report folder of one evaluation: `report.md`, `metrics.json`,
//! `adabn_curve.png` (BatchNorm models) and `projection.png`.

use std::fmt::Write as _;
use std::path::Path;

use super::{Evaluation, ModeMetrics, Projection, plots};

/// Write the report folder `out`.
pub fn write_report(out: &Path, e: &Evaluation, projection: &Projection) -> Result<(), String> {
    std::fs::create_dir_all(out).map_err(|err| format!("{}: {err}", out.display()))?;
    let json = serde_json::to_string_pretty(e).map_err(|err| err.to_string())?;
    let write = |name: &str, text: &str| {
        let path = out.join(name);
        std::fs::write(&path, text).map_err(|err| format!("{}: {err}", path.display()))
    };
    write("metrics.json", &(json + "\n"))?;
    plots::projection(
        &out.join("projection.png"),
        &projection.points,
        (&projection.classes.0, &projection.classes.1),
        (&projection.plates.0, &projection.plates.1),
    )?;
    if !e.adabn_curve.is_empty() {
        let sizes: Vec<usize> = e.adabn_curve.iter().map(|p| p.batch_size).collect();
        let per_batch: Vec<f64> = e.adabn_curve.iter().map(|p| p.per_batch).collect();
        let per_plate: Vec<f64> = e.adabn_curve.iter().map(|p| p.per_plate).collect();
        plots::adabn_curve(
            &out.join("adabn_curve.png"),
            &sizes,
            &per_batch,
            &per_plate,
            e.plain.accuracy,
        )?;
    }
    write("report.md", &markdown(e))
}

fn row(md: &mut String, name: &str, m: &ModeMetrics) {
    let _ = writeln!(
        md,
        "| {name} | {:.3} | {:.3} | {:.3} | {:.2} | {:.2} | {:.3} |",
        m.accuracy, m.macro_f1, m.knn_batch_cv, m.ilisi, m.clisi, m.plate_prediction_f1
    );
}

fn markdown(e: &Evaluation) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "# Evaluation: {} at level {} fold {} (seed {})\n\nHeld out: {}. {} test images of classes seen in training.\n",
        e.method,
        e.level,
        e.fold,
        e.seed,
        e.held_out.join(", "),
        e.test_images
    );
    let _ = writeln!(
        md,
        "| inference | accuracy | macro-F1 | kNN batch-CV | iLISI (plates, higher is better) | cLISI (classes, lower is better) | plate prediction F1 (lower is better) |\n|---|---|---|---|---|---|---|"
    );
    row(&mut md, "training statistics", &e.plain);
    if let Some(a) = &e.adabn {
        row(&mut md, "AdaBN, plate statistics", a);
    }
    for t in &e.test_time {
        let name = format!("IST test-time correction, K = {}", t.styles);
        row(&mut md, &name, &t.metrics);
    }
    let _ = writeln!(
        md,
        "\nEmbedding metrics use the test images plus a sample of training images, so several plates are present.\n"
    );
    if let Some(b) = &e.batch_sensitivity {
        let _ = writeln!(
            md,
            "## Batch-effect sensitivity\n\nA logistic regression reads the plate and the plate-well from the embedding of every image ({} images; 60% of each group trains it, the rest tests it). Lower means less batch information.\n\n| predicting | groups | macro-F1 | AUROC |\n|---|---|---|---|\n| plate | {} | {:.3} | {:.3} |\n| plate-well | {} | {:.3} | {:.3} |\n",
            b.images,
            b.plate.groups,
            b.plate.macro_f1,
            b.plate.auroc,
            b.plate_well.groups,
            b.plate_well.macro_f1,
            b.plate_well.auroc
        );
    }
    if let Some(r) = &e.relationships {
        let _ = writeln!(
            md,
            "## Relationship recovery\n\nClasses embedded as mean embeddings minus the controls' mean, standardized; {} pairs ranked by cosine similarity against the screen's class families: AUPRC {:.3} ({} related pairs; a random ranking scores about {:.3}).\n",
            r.pairs,
            r.auprc,
            r.related,
            r.related as f64 / r.pairs.max(1) as f64
        );
    }
    if !e.adabn_curve.is_empty() {
        let _ = writeln!(
            md,
            "## AdaBN against inference batch size\n\n![AdaBN curve](adabn_curve.png)\n\n| batch size | per batch | per plate |\n|---|---|---|"
        );
        for p in &e.adabn_curve {
            let _ = writeln!(
                md,
                "| {} | {:.3} | {:.3} |",
                p.batch_size, p.per_batch, p.per_plate
            );
        }
    }
    let _ = writeln!(
        md,
        "\n## Embedding projection\n\n![projection](projection.png)"
    );
    md
}
