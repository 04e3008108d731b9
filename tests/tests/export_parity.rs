//! Exported bundles run in ONNX Runtime exactly as the Candle model runs:
//! the predictor, the AdaBN pair (batch statistics out, plate statistics
//! in), InstanceNorm models and SCBD's projection head, at batch sizes 1,
//! 3 and 32; every graph
//! passes `onnx.checker` with `full_check`; damaged bundles are refused.

use std::collections::HashMap;
use std::path::Path;

use bfx_config::daemon::ExecutionProvider;
use bfx_core::arch::{EmbedHead, ModelSpec, ResNetSpec};
use bfx_core::bundle::{Bundle, BundleError, CorrectionMode, Provenance};
use bfx_core::preprocess::{Geometry, Normalization, PreprocessSpec};
use bfx_daemon::runtime;
use bfx_export::classifier::{EMBEDDING, IMAGE, LOGITS, mean_name, var_name};
use bfx_export::weights::Weights;
use bfx_export::{ClassifierExport, write_classifier_bundle};
use bfx_tests::run_python;
use bfx_trainer::model::{self, Classifier};
use bfx_trainer::nn::{LayerStats, NormPass};
use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use ort::session::Session;
use ort::value::{DynValue, Tensor as OrtTensor};

/// Largest difference allowed, relative to the outputs' scale (at least 1).
const TOLERANCE: f32 = 1e-4;
const SIZES: [usize; 3] = [1, 3, 32];
/// Not square, so a swapped height and width would fail.
const HW: (usize, usize) = (36, 40);

fn spec(instance_norm: bool, head: EmbedHead) -> ModelSpec {
    ModelSpec {
        arch: "resnet18".into(),
        encoder: ResNetSpec::resnet18(3, 8, instance_norm),
        head,
        embedding_dim: 16,
        classes: 5,
    }
}

/// splitmix64 noise in about [-2, 2]: deterministic without an RNG crate.
fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
        })
        .collect()
}

/// A seeded model whose norm scales, shifts and running statistics are
/// far from their initial 1/0 values, as after training; and its
/// variables saved as a checkpoint's safetensors.
fn model_with_weights(spec: &ModelSpec, dir: &Path) -> (Classifier, Weights) {
    let map = VarMap::new();
    let model = model::build(spec, &map, &Device::Cpu, 7).expect("model builds");
    let data = map.data().lock().expect("no other thread holds the map");
    let mut tensors = HashMap::new();
    for (k, (name, var)) in data.iter().enumerate() {
        if var.rank() == 1 {
            let n = var.dims()[0];
            let wave: Vec<f32> = (0..n)
                .map(|i| ((i as f32) * 1.3 + k as f32).sin())
                .collect();
            let values: Vec<f32> = if name.ends_with("running_var") {
                wave.iter().map(|w| 0.6 + 0.5 * (w + 1.0)).collect()
            } else if name.ends_with("running_mean") || name.ends_with("bias") {
                wave.iter().map(|w| 0.3 * w).collect()
            } else {
                wave.iter().map(|w| 1.0 + 0.3 * w).collect()
            };
            var.set(&Tensor::from_vec(values, n, &Device::Cpu).expect("vector"))
                .expect("same shape");
        }
        tensors.insert(name.clone(), var.as_tensor().clone());
    }
    drop(data);
    let path = dir.join("weights.safetensors");
    candle_core::safetensors::save(&tensors, &path).expect("weights saved");
    (model, Weights::read(&path).expect("weights read back"))
}

fn export(spec: &ModelSpec, weights: Weights, out: &Path) -> Bundle {
    let request = ClassifierExport {
        method: "erm".into(),
        spec: spec.clone(),
        weights,
        preprocess: PreprocessSpec {
            channels: vec!["a".into(), "b".into(), "c".into()],
            normalization: Normalization::SelfStandardize { eps: 1e-6 },
            geometry: Geometry::Resize {
                height: HW.0 as u32,
                width: HW.1 as u32,
            },
        },
        class_names: (0..spec.classes).map(|i| format!("class{i}")).collect(),
        provenance: Provenance {
            trainer_version: "test".into(),
            ..Provenance::default()
        },
        metrics: Default::default(),
        ist: None,
    };
    write_classifier_bundle(&request, out, false).unwrap_or_else(|e| panic!("{e}"))
}

fn session(bundle: &Bundle, file: &str) -> Session {
    let rt = runtime::init(None, ExecutionProvider::Cpu).unwrap_or_else(|e| panic!("{e}"));
    rt.session(&bundle.dir.join(file), 1, false)
        .unwrap_or_else(|e| panic!("{file}: {e}"))
}

fn value(shape: Vec<usize>, data: Vec<f32>) -> DynValue {
    OrtTensor::from_array((shape, data))
        .expect("tensor")
        .into_dyn()
}

/// Run a session; every output by name as `(shape, values)`.
fn run(
    s: &mut Session,
    inputs: Vec<(String, DynValue)>,
) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let outputs = s.run(inputs).expect("run");
    outputs
        .iter()
        .map(|(name, v)| {
            let (shape, data) = v.try_extract_tensor::<f32>().expect("f32 output");
            let shape = shape.iter().map(|&d| d as usize).collect();
            (name.to_string(), (shape, data.to_vec()))
        })
        .collect()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all()
        .and_then(|t| t.to_vec1())
        .expect("f32 tensor")
}

fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let diff = got
        .iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    // Relative to the output's scale (at least 1): f32 rounding grows
    // with it, and two GEMMs summing in another order moved a logit of
    // 15.5 by 1.2e-4 (AVX-512 kernels against ONNX Runtime's).
    let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
    assert!(
        diff <= TOLERANCE * scale,
        "{what}: max abs difference {diff} (outputs up to {scale})"
    );
}

/// `n` noise images of the bundle's input shape, for Candle and for ORT.
fn images(bundle: &Bundle, n: usize, seed: u64) -> (Tensor, DynValue) {
    let [c, h, w] = bundle.manifest.input_shape;
    let shape = vec![n, c, h, w];
    let data = noise(shape.iter().product(), seed);
    let t = Tensor::from_vec(data.clone(), shape.as_slice(), &Device::Cpu).expect("images");
    (t, value(shape, data))
}

/// The AdaBN statistics from an ORT stats run as plate-graph inputs and as Candle stats.
fn stats_inputs(
    bundle: &Bundle,
    out: &HashMap<String, (Vec<usize>, Vec<f32>)>,
) -> (Vec<(String, DynValue)>, Vec<LayerStats>) {
    let mut inputs = Vec::new();
    let mut stats = Vec::new();
    for layer in &bundle.manifest.adabn_layers {
        let get = |name: String| {
            let (shape, data) = out.get(&name).unwrap_or_else(|| panic!("no output {name}"));
            assert_eq!(shape, &vec![layer.channels], "{name}");
            (name, data.clone())
        };
        let (mn, m) = get(mean_name(&layer.name));
        let (vn, v) = get(var_name(&layer.name));
        let t = |d: &Vec<f32>| Tensor::from_vec(d.clone(), d.len(), &Device::Cpu).expect("stats");
        stats.push(LayerStats {
            mean: t(&m),
            var: t(&v),
        });
        inputs.push((mn, value(vec![m.len()], m)));
        inputs.push((vn, value(vec![v.len()], v)));
    }
    (inputs, stats)
}

/// Every graph of `bundle` against the Candle `model`.
fn check_parity(model: &Classifier, bundle: &Bundle) {
    let g = &bundle.manifest.graphs;
    let mut predictor = session(bundle, &g.predictor);
    let mut adabn = g.predictor_stats.as_ref().map(|stats| {
        let plate = g.predictor_plate.as_ref().expect("the pair");
        (session(bundle, stats), session(bundle, plate))
    });
    let mut plate_stats = None;
    for (k, n) in SIZES.into_iter().enumerate() {
        let (x, ort_x) = images(bundle, n, k as u64);
        let (emb, logits) = model.forward(&x, &mut NormPass::eval()).expect("forward");
        // Guard against comparing two constant outputs.
        let e = flat(&emb);
        assert!(
            e.iter().any(|v| (v - e[0]).abs() > 1e-3),
            "constant embedding"
        );
        let out = run(&mut predictor, vec![(IMAGE.into(), ort_x)]);
        assert_close(
            &format!("predictor embedding, batch {n}"),
            &out[EMBEDDING].1,
            &flat(&emb),
        );
        assert_close(
            &format!("predictor logits, batch {n}"),
            &out[LOGITS].1,
            &flat(&logits),
        );

        let Some((stats_session, plate_session)) = adabn.as_mut() else {
            continue;
        };
        // Train-mode BatchNorm output: the batch's own statistics.
        let mut pass = NormPass::recording();
        let (emb, logits) = model.forward(&x, &mut pass).expect("forward");
        let out = run(
            stats_session,
            vec![(IMAGE.into(), images(bundle, n, k as u64).1)],
        );
        assert_close(
            &format!("stats embedding, batch {n}"),
            &out[EMBEDDING].1,
            &flat(&emb),
        );
        assert_close(
            &format!("stats logits, batch {n}"),
            &out[LOGITS].1,
            &flat(&logits),
        );
        let (mut inputs, stats) = stats_inputs(bundle, &out);
        if n == 32 {
            plate_stats = Some(out);
        }
        assert_eq!(stats.len(), pass.recorded.len());
        for (i, (got, want)) in stats.iter().zip(&pass.recorded).enumerate() {
            assert_close(
                &format!("layer {i} mean, batch {n}"),
                &flat(&got.mean),
                &flat(&want.mean),
            );
            assert_close(
                &format!("layer {i} var, batch {n}"),
                &flat(&got.var),
                &flat(&want.var),
            );
        }
        // The plate graph fed those statistics reproduces the same output.
        inputs.push((IMAGE.into(), images(bundle, n, k as u64).1));
        let out = run(plate_session, inputs);
        assert_close(
            &format!("plate embedding, batch {n}"),
            &out[EMBEDDING].1,
            &flat(&emb),
        );
        assert_close(
            &format!("plate logits, batch {n}"),
            &out[LOGITS].1,
            &flat(&logits),
        );
    }
    // A 32-image sample's statistics applied to images one and three at a time.
    let Some((_, plate_session)) = adabn.as_mut() else {
        return;
    };
    let plate_stats = plate_stats.expect("batch 32 ran");
    for n in [1, 3] {
        let (x, ort_x) = images(bundle, n, 100 + n as u64);
        let (mut inputs, stats) = stats_inputs(bundle, &plate_stats);
        let (emb, logits) = model
            .forward(&x, &mut NormPass::with_stats(stats))
            .expect("forward");
        inputs.push((IMAGE.into(), ort_x));
        let out = run(plate_session, inputs);
        assert_close(
            &format!("plate-statistics embedding, batch {n}"),
            &out[EMBEDDING].1,
            &flat(&emb),
        );
        assert_close(
            &format!("plate-statistics logits, batch {n}"),
            &out[LOGITS].1,
            &flat(&logits),
        );
    }
}

/// `onnx.checker.check_model(full_check=True)` on every graph of `bundle`.
fn check_with_onnx(bundle: &Bundle) {
    let files: Vec<std::ffi::OsString> = bundle
        .manifest
        .files
        .keys()
        .filter(|f| f.ends_with(".onnx"))
        .map(|f| bundle.dir.join(f).into_os_string())
        .collect();
    let args: Vec<&std::ffi::OsStr> = files.iter().map(|f| f.as_os_str()).collect();
    let out = run_python(
        "import sys, onnx\nfor f in sys.argv[1:]:\n    onnx.checker.check_model(onnx.load(f), full_check=True)\n    print('ok', f)\n",
        &args,
    );
    assert_eq!(
        out.lines().filter(|l| l.starts_with("ok ")).count(),
        files.len(),
        "{out}"
    );
}

#[test]
fn batch_norm_bundles_match_candle_with_running_batch_and_plate_statistics() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let spec = spec(false, EmbedHead::Linear);
    let (model, weights) = model_with_weights(&spec, tmp.path());
    let bundle = export(&spec, weights, &tmp.path().join("bundle"));
    let m = &bundle.manifest;
    assert_eq!(
        m.correction_modes,
        vec![CorrectionMode::None, CorrectionMode::Adabn]
    );
    assert_eq!(m.adabn_layers.len(), 20);
    assert_eq!(m.input_shape, [3, HW.0, HW.1]);
    check_with_onnx(&bundle);
    check_parity(&model, &bundle);
}

#[test]
fn instance_norm_bundles_match_candle() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let spec = spec(true, EmbedHead::Linear);
    let (model, weights) = model_with_weights(&spec, tmp.path());
    let bundle = export(&spec, weights, &tmp.path().join("bundle"));
    assert_eq!(bundle.manifest.correction_modes, vec![CorrectionMode::None]);
    assert!(bundle.manifest.graphs.predictor_stats.is_none());
    assert!(bundle.manifest.adabn_layers.is_empty());
    check_with_onnx(&bundle);
    check_parity(&model, &bundle);
}

#[test]
fn projection_head_bundles_match_candle() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let spec = spec(false, EmbedHead::Projection);
    let (model, weights) = model_with_weights(&spec, tmp.path());
    let bundle = export(&spec, weights, &tmp.path().join("bundle"));
    check_with_onnx(&bundle);
    check_parity(&model, &bundle);
}

#[test]
fn a_trained_scbd_checkpoint_exports_its_unit_length_z_c() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let run_dir = bfx_tests::tiny_run(tmp.path(), "scbd", 12).out;
    let bundle = bfx_trainer::export::export(&run_dir, &tmp.path().join("bundle"), false)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(bundle.manifest.method, "scbd");
    assert_eq!(
        bundle.manifest.correction_modes,
        vec![CorrectionMode::None, CorrectionMode::Adabn]
    );
    let (_, model) = bfx_trainer::eval::load_model(&run_dir, "best", &Device::Cpu)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(model.spec().head, EmbedHead::Projection);
    check_parity(&model, &bundle);
    let mut predictor = session(&bundle, &bundle.manifest.graphs.predictor);
    let out = run(
        &mut predictor,
        vec![(IMAGE.into(), images(&bundle, 5, 9).1)],
    );
    for row in out[EMBEDDING].1.chunks(bundle.manifest.embedding_dim) {
        let norm: f32 = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "embedding norm {norm}");
    }
}

#[test]
fn a_trained_abra_checkpoint_exports_to_a_bundle_that_matches_it() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let run = bfx_tests::tiny_run(tmp.path(), "abra", 12).out;
    let out = tmp.path().join("bundle");
    let bundle = bfx_trainer::export::export(&run, &out, false).unwrap_or_else(|e| panic!("{e}"));
    let m = &bundle.manifest;
    assert_eq!(m.method, "abra");
    assert_eq!(m.input_shape, [4, 32, 32]);
    assert_eq!(m.preprocess.channels, ["w1", "w2", "w3", "w4"]);
    assert_eq!(m.class_names.len(), 4);
    assert_eq!(m.provenance.trainer_version, env!("CARGO_PKG_VERSION"));
    let manifest_csv = tmp.path().join("screen/manifest.csv");
    assert_eq!(
        m.provenance.dataset_manifest_sha256.as_deref(),
        Some(
            bfx_core::bundle::file_digest(&manifest_csv)
                .expect("manifest")
                .sha256
                .as_str()
        )
    );
    assert_eq!(m.provenance.config["method"]["name"], "abra");
    let (_, model) =
        bfx_trainer::eval::load_model(&run, "best", &Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
    check_parity(&model, &bundle);
    let text = bfx_trainer::export::describe(&bundle);
    assert!(text.contains("method      abra"), "{text}");
    assert!(text.contains("correction  none, adabn"), "{text}");

    // An existing bundle is not overwritten unless asked.
    let err = bfx_trainer::export::export(&run, &out, false).expect_err("exists");
    assert!(err.to_string().contains("exists"), "{err}");
    bfx_trainer::export::export(&run.join("last.json"), &out, true).expect("replaced");

    // Damage is refused, naming the problem.
    let refused = |damage: &dyn Fn(&Path)| -> BundleError {
        let copy = tmp.path().join("damaged");
        let _ = std::fs::remove_dir_all(&copy);
        std::fs::create_dir(&copy).expect("copy dir");
        for entry in std::fs::read_dir(&out).expect("bundle") {
            let entry = entry.expect("entry");
            std::fs::copy(entry.path(), copy.join(entry.file_name())).expect("copy");
        }
        damage(&copy);
        Bundle::open(&copy).expect_err("damaged bundle refused")
    };
    let err = refused(&|d| {
        let path = d.join("predictor_plate.onnx");
        let mut bytes = std::fs::read(&path).expect("graph");
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x01;
        std::fs::write(&path, bytes).expect("write");
    });
    assert!(matches!(err, BundleError::HashMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains("predictor_plate.onnx: sha256"),
        "{err}"
    );
    let err = refused(&|d| std::fs::remove_file(d.join("predictor_stats.onnx")).expect("rm"));
    assert!(
        err.to_string()
            .ends_with("predictor_stats.onnx: listed in the manifest but missing"),
        "{err}"
    );
    let err = refused(&|d| {
        let path = d.join("manifest.json");
        let text = std::fs::read_to_string(&path).expect("manifest");
        std::fs::write(
            &path,
            text.replace("\"format_version\": 1", "\"format_version\": 2"),
        )
        .expect("write");
    });
    assert!(
        err.to_string()
            .contains("bundle format version 2, but this build reads version 1"),
        "{err}"
    );
}
