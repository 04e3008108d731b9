use super::*;
use crate::preprocess::{Geometry, Normalization};

fn manifest() -> BundleManifest {
    BundleManifest {
        format_version: 0,
        method: "erm".into(),
        architecture: serde_json::json!({"family": "resnet", "blocks": [2, 2, 2, 2], "width": 16}),
        preprocess: PreprocessSpec {
            channels: vec!["w1".into(), "w2".into()],
            normalization: Normalization::SelfStandardize { eps: 1e-6 },
            geometry: Geometry::Resize {
                height: 64,
                width: 64,
            },
        },
        input_shape: [2, 64, 64],
        embedding_dim: 32,
        class_names: vec!["ctrl".into(), "a".into()],
        correction_modes: vec![CorrectionMode::None, CorrectionMode::Adabn],
        graphs: Graphs {
            predictor: "predictor.onnx".into(),
            predictor_stats: Some("predictor_stats.onnx".into()),
            predictor_plate: Some("predictor_plate.onnx".into()),
            ..Graphs::default()
        },
        adabn_layers: vec![NormLayer {
            name: "stem.norm".into(),
            channels: 16,
        }],
        files: BTreeMap::new(),
        provenance: Provenance {
            trainer_version: "0.1.0".into(),
            ..Provenance::default()
        },
        metrics: BTreeMap::from([("iid_macro_f1".into(), 0.9)]),
    }
}

fn sealed() -> (tempfile::TempDir, BundleManifest) {
    let dir = tempfile::tempdir().unwrap();
    for (name, body) in [
        ("predictor.onnx", "p"),
        ("predictor_stats.onnx", "ps"),
        ("predictor_plate.onnx", "pp"),
        ("README", "hi"),
    ] {
        std::fs::write(dir.path().join(name), body).unwrap();
    }
    let mut m = manifest();
    m.seal(dir.path(), &["README"]).unwrap();
    (dir, m)
}

#[test]
fn a_sealed_bundle_opens_with_its_manifest() {
    let (dir, m) = sealed();
    let bundle = Bundle::open(dir.path()).unwrap();
    assert_eq!(bundle.manifest, m);
    assert_eq!(bundle.manifest.format_version, BUNDLE_FORMAT_VERSION);
    assert_eq!(
        bundle.manifest.files["predictor.onnx"],
        FileDigest {
            sha256: hex_sha256(b"p"),
            bytes: 1
        }
    );
    assert_eq!(bundle.manifest.files.len(), 4);
    assert_eq!(
        bundle.sha256,
        hex_sha256(&std::fs::read(dir.path().join(MANIFEST_FILE)).unwrap())
    );
    assert!(!dir.path().join("manifest.json.tmp").exists());
    // sha256 of the empty string, a known vector.
    assert_eq!(
        hex_sha256(b""),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
}

#[test]
fn a_flipped_byte_is_refused_naming_the_file() {
    let (dir, _) = sealed();
    std::fs::write(dir.path().join("predictor_plate.onnx"), "pq").unwrap();
    let err = Bundle::open(dir.path()).unwrap_err();
    assert!(matches!(err, BundleError::HashMismatch { .. }));
    let message = err.to_string();
    assert!(
        message.contains("predictor_plate.onnx: sha256") && message.contains("altered or damaged"),
        "{message}"
    );
}

#[test]
fn a_missing_file_is_refused() {
    let (dir, _) = sealed();
    std::fs::remove_file(dir.path().join("predictor.onnx")).unwrap();
    let err = Bundle::open(dir.path()).unwrap_err();
    assert!(
        err.to_string()
            .ends_with("predictor.onnx: listed in the manifest but missing"),
        "{err}"
    );
    std::fs::remove_file(dir.path().join(MANIFEST_FILE)).unwrap();
    assert!(matches!(
        Bundle::open(dir.path()),
        Err(BundleError::Io { .. })
    ));
}

#[test]
fn another_format_version_is_refused_with_the_versions() {
    let (dir, _) = sealed();
    let path = dir.path().join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("\"format_version\": 1", "\"format_version\": 7");
    std::fs::write(&path, text).unwrap();
    let err = Bundle::open(dir.path()).unwrap_err();
    assert!(
        err.to_string()
            .contains("bundle format version 7, but this build reads version 1"),
        "{err}"
    );
    std::fs::write(&path, "{\"format_version\": 1, \"method\": 3}").unwrap();
    assert!(matches!(
        Bundle::open(dir.path()),
        Err(BundleError::Manifest { .. })
    ));
}

#[test]
fn channel_lists_must_match_in_order() {
    let (dir, _) = sealed();
    let bundle = Bundle::open(dir.path()).unwrap();
    bundle.check_channels(&["w1".into(), "w2".into()]).unwrap();
    let err = bundle
        .check_channels(&["w2".into(), "w1".into()])
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "the bundle's channels [\"w1\", \"w2\"] differ from the configured channels [\"w2\", \"w1\"]"
    );
}

#[test]
fn inconsistent_manifests_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("predictor.onnx"), "p").unwrap();
    let mut m = manifest();
    m.graphs.predictor_stats = None;
    m.graphs.predictor_plate = None;
    let err = m.seal(dir.path(), &[]).unwrap_err();
    assert!(
        err.to_string()
            .ends_with("mode Adabn needs predictor_stats and predictor_plate graphs"),
        "{err}"
    );
    m.correction_modes = vec![CorrectionMode::None];
    m.seal(dir.path(), &[]).unwrap();
    // A hand-edited manifest pointing outside the bundle.
    let path = dir.path().join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("\"predictor.onnx\"", "\"../predictor.onnx\"");
    std::fs::write(&path, text).unwrap();
    let err = Bundle::open(dir.path()).unwrap_err();
    assert!(
        err.to_string()
            .contains("must be a plain name inside the bundle"),
        "{err}"
    );
}

#[test]
fn input_shape_and_adabn_layers_must_fit_the_rest() {
    let (dir, _) = sealed();
    let mut m = manifest();
    m.input_shape = [2, 64, 32];
    let err = m.seal(dir.path(), &["README"]).unwrap_err();
    assert!(
        err.to_string().ends_with(
            "input_shape [2, 64, 32] does not match the preprocessing (2 channels, 64x64)"
        ),
        "{err}"
    );
    let mut m = manifest();
    m.adabn_layers.clear();
    let err = m.seal(dir.path(), &["README"]).unwrap_err();
    assert!(
        err.to_string()
            .ends_with("mode Adabn needs the list of adabn_layers"),
        "{err}"
    );
}
