//! `bench` end to end on the tiny screen: methods with parameters, the
//! tables it writes, and reuse of finished runs.

use std::process::Command;

mod common;
use common::setup;

fn bench(config: &std::path::Path, out: &std::path::Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_bfx-trainer"))
        .args(["bench", "--config"])
        .arg(config)
        .arg("--out")
        .arg(out)
        .args([
            "--methods",
            "erm,scbd:alpha=0,scbd:alpha=8",
            "--levels",
            "iid",
            "--folds",
            "0",
            "--seeds",
            "0",
            "--steps",
            "6",
        ])
        .output()
        .expect("bfx-trainer runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn bench_sweeps_method_parameters_and_reuses_finished_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let config = setup(tmp.path(), "");
    let out = tmp.path().join("bench");
    let first = bench(&config, &out);
    assert!(
        first.contains("scbd:alpha=8 iid fold 0 seed 0: training"),
        "{first}"
    );
    for variant in ["erm", "scbd-alpha0", "scbd-alpha8"] {
        let metrics = out
            .join("runs")
            .join(variant)
            .join("iid-fold0-seed0/report/metrics.json");
        assert!(metrics.is_file(), "no {}", metrics.display());
    }
    // The variant's parameter reached the method.
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("runs/scbd-alpha8/iid-fold0-seed0/last.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(meta["config"]["method"]["params"]["alpha"], 8, "{meta}");

    let md = std::fs::read_to_string(out.join("results.md")).unwrap();
    for row in [
        "| ERM |",
        "| ERM+AdaBN |",
        "| SCBD (alpha 0) |",
        "| SCBD (alpha 8)+AdaBN |",
    ] {
        assert!(md.contains(row), "no row {row}:\n{md}");
    }
    assert!(
        md.contains("## Batch-effect sensitivity and relationship recovery"),
        "{md}"
    );
    assert!(md.contains("3 class pairs, 1 of one family"), "{md}");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(json["runs"].as_array().unwrap().len(), 3);
    assert_eq!(json["runs"][1]["variant"], "scbd:alpha=0");

    // A second bench trains nothing and writes the same table.
    let second = bench(&config, &out);
    assert_eq!(second.matches("done before").count(), 3, "{second}");
    assert!(!second.contains(": training"), "{second}");
    assert_eq!(std::fs::read_to_string(out.join("results.md")).unwrap(), md);
}
