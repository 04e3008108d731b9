//! `check_config` against real configurations and sealed bundles.

use std::path::Path;

use bfx_core::bundle::{BundleManifest, CorrectionMode, Graphs, Provenance};
use bfx_core::preprocess::{Geometry, Normalization, PreprocessSpec};
use bfx_daemon::check::{Check, check_config};

fn seal_bundle(dir: &Path, channels: &[&str]) {
    std::fs::create_dir_all(dir).expect("bundle dir");
    std::fs::write(dir.join("predictor.onnx"), b"not read by check-config").expect("graph file");
    let mut manifest = BundleManifest {
        format_version: 0,
        method: "erm".into(),
        architecture: serde_json::json!({}),
        preprocess: PreprocessSpec {
            channels: channels.iter().map(|c| c.to_string()).collect(),
            normalization: Normalization::SelfStandardize { eps: 1e-6 },
            geometry: Geometry::Resize {
                height: 32,
                width: 32,
            },
        },
        input_shape: [channels.len(), 32, 32],
        embedding_dim: 16,
        class_names: vec![],
        correction_modes: vec![CorrectionMode::None],
        graphs: Graphs {
            predictor: "predictor.onnx".into(),
            ..Graphs::default()
        },
        adabn_layers: vec![],
        files: Default::default(),
        provenance: Provenance {
            trainer_version: "test".into(),
            ..Provenance::default()
        },
        metrics: Default::default(),
    };
    manifest.seal(dir, &[]).expect("sealed bundle");
}

fn run(dir: &Path, extra: &str) -> Vec<Check> {
    std::fs::create_dir_all(dir.join("incoming")).expect("watch root");
    let text = format!(
        "[daemon]\nbundle = \"bundle\"\nstore = \"out.zarr\"\n{extra}\n[daemon.naming]\npreset = \"imagexpress\"\n[daemon.watch]\nroots = [\"incoming\"]\n"
    );
    let config = bfx_config::parse_daemon(&text, &dir.join("daemon.toml")).expect("valid config");
    check_config(&config, false)
}

fn check<'a>(checks: &'a [Check], name: &str) -> &'a Check {
    checks
        .iter()
        .find(|c| c.name == name)
        .unwrap_or_else(|| panic!("no {name} check in {checks:?}"))
}

#[test]
fn a_good_setup_passes_every_check() {
    let dir = tempfile::tempdir().unwrap();
    seal_bundle(&dir.path().join("bundle"), &["w1", "w2"]);
    let checks = run(dir.path(), "channels = [\"w1\", \"w2\"]");
    assert!(checks.iter().all(|c| c.ok), "{checks:#?}");
    assert_eq!(
        checks.iter().map(|c| c.name).collect::<Vec<_>>(),
        ["onnxruntime", "watch root", "bundle"]
    );
    assert!(
        check(&checks, "bundle")
            .detail
            .contains("method erm, channels [\"w1\", \"w2\"], embedding 16")
    );
}

#[test]
fn mismatches_fail_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    seal_bundle(&dir.path().join("bundle"), &["w1", "w2"]);
    let checks = run(dir.path(), "channels = [\"w2\", \"w1\"]");
    let bundle = check(&checks, "bundle");
    assert!(
        !bundle.ok
            && bundle
                .detail
                .contains("differ from the configured channels"),
        "{bundle}"
    );

    let checks = run(dir.path(), "[daemon.correction]\nmode = \"adabn\"");
    let bundle = check(&checks, "bundle");
    assert!(
        !bundle.ok
            && bundle
                .detail
                .contains("daemon.correction.mode = Adabn but the bundle supports [None]"),
        "{bundle}"
    );

    std::fs::write(dir.path().join("bundle/predictor.onnx"), b"tampered").unwrap();
    let bundle = check(&run(dir.path(), ""), "bundle").clone();
    assert!(
        !bundle.ok && bundle.detail.contains("altered or damaged"),
        "{bundle}"
    );
}

#[test]
fn a_missing_bundle_or_root_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let checks = run(dir.path(), "");
    let bundle = check(&checks, "bundle");
    assert!(
        !bundle.ok && bundle.detail.contains("bfx-trainer export"),
        "{bundle}"
    );
    std::fs::remove_dir(dir.path().join("incoming")).unwrap();
    let config = bfx_config::parse_daemon(
        "[daemon]\nbundle = \"b\"\nstore = \"s\"\n[daemon.naming]\npreset = \"rxrx\"\n[daemon.watch]\nroots = [\"incoming\"]\n",
        &dir.path().join("d.toml"),
    )
    .unwrap();
    let checks = check_config(&config, true);
    assert!(
        checks.iter().all(|c| c.name != "bundle"),
        "--skip-bundle skips it"
    );
    let root = check(&checks, "watch root");
    assert!(
        !root.ok && root.detail.contains("create it or fix daemon.watch.roots"),
        "{root}"
    );
    // The report line a person reads.
    assert!(root.to_string().starts_with("FAIL watch root"), "{root}");
}
