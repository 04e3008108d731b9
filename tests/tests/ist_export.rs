//! An IST run exports its generator and style bank: `ist_generator.onnx`
//! restyles in ONNX Runtime as the Candle networks do (within 1e-4, at
//! batch sizes 1, 3 and 8, with BatchNorm and with InstanceNorm), passes
//! `onnx.checker`, and the style bank holds the codes of class- and
//! environment-balanced training images.

use std::collections::BTreeSet;

use bfx_config::daemon::ExecutionProvider;
use bfx_core::bundle::CorrectionMode;
use bfx_core::style_bank::StyleBank;
use bfx_daemon::runtime;
use bfx_export::generator::{IMAGE, RESTYLED, STYLE};
use bfx_tests::run_python;
use candle_core::{Device, Tensor};
use ort::value::Tensor as OrtTensor;

const TOLERANCE: f32 = 1e-4;

#[test]
fn a_batch_norm_ist_bundle_restyles_in_onnx_runtime_as_candle_does() {
    check("batch");
}

#[test]
fn an_instance_norm_ist_bundle_restyles_in_onnx_runtime_as_candle_does() {
    check("instance");
}

fn check(norm: &str) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let config = bfx_tests::tiny_run_norm(
        tmp.path(),
        "ist",
        "{ encoder_steps = 6, generator_steps = 6 }",
        4,
        norm,
    );
    let run = config.out.clone();
    let out = tmp.path().join("bundle");
    let bundle = bfx_trainer::export::export(&run, &out, false).unwrap_or_else(|e| panic!("{e}"));
    let m = &bundle.manifest;
    assert_eq!(m.method, "ist");
    // A BatchNorm IST model also has the AdaBN pair.
    let (modes, described) = if norm == "batch" {
        (
            vec![
                CorrectionMode::None,
                CorrectionMode::Adabn,
                CorrectionMode::Ist,
            ],
            "correction  none, adabn, ist",
        )
    } else {
        (
            vec![CorrectionMode::None, CorrectionMode::Ist],
            "correction  none, ist",
        )
    };
    assert_eq!(m.correction_modes, modes);
    let text = bfx_trainer::export::describe(&bundle);
    assert!(text.contains(described), "{text}");

    // The bank: every (class, plate) cell of the training images, codes of the generator's width.
    let ist = bfx_trainer::ist::load(&run, "best", &Device::Cpu).unwrap_or_else(|e| panic!("{e}"));
    let bank = StyleBank::read(&out.join(m.graphs.style_bank.as_deref().expect("bank")))
        .unwrap_or_else(|e| panic!("{e}"));
    let data =
        bfx_trainer::fit::load_data(&config, &indicatif::ProgressBar::hidden()).expect("run data");
    let train = &data.parts.train;
    let cells: BTreeSet<(usize, usize)> = train
        .classes
        .iter()
        .zip(&train.plates)
        .map(|(&c, &p)| (c, p))
        .collect();
    assert!(bank.len() >= cells.len() && bank.len() <= 4 * cells.len());
    assert_eq!(
        bank.environment_names,
        data.parts.plates[..data.parts.train_plates]
    );
    let envs: BTreeSet<u32> = bank.environments.iter().copied().collect();
    assert_eq!(envs.len(), data.parts.train_plates);
    let spec = bfx_trainer::nn::ist::spec_for(&ist.meta.model.encoder, 4, envs.len());
    assert_eq!(bank.dim, spec.style_dim());

    // Parity of the generator graph on the tiny screen's images, each with a bank style.
    let rt = runtime::init(None, ExecutionProvider::Cpu).unwrap_or_else(|e| panic!("{e}"));
    let graph = out.join(m.graphs.ist_generator.as_deref().expect("generator"));
    let mut session = rt
        .session(&graph, 1, false)
        .unwrap_or_else(|e| panic!("{e}"));
    let [c, h, w] = data.images.shape;
    for n in [1usize, 3, 8] {
        let idx: Vec<usize> = (0..n).map(|i| (i * 7) % train.images.len()).collect();
        let x = bfx_trainer::fit::batches::batch(&data.images, train, &idx, None, &Device::Cpu)
            .expect("batch")
            .x;
        let codes: Vec<f32> = (0..n)
            .flat_map(|i| bank.code((i * 5) % bank.len()).to_vec())
            .collect();
        let code = Tensor::from_vec(codes.clone(), (n, bank.dim), &Device::Cpu).expect("codes");
        let want = ist
            .net
            .restyle(&x, &code)
            .and_then(|t| t.flatten_all()?.to_vec1::<f32>())
            .expect("candle restyles");
        let pixels = x
            .flatten_all()
            .and_then(|t| t.to_vec1::<f32>())
            .expect("pixels");
        let outputs = session
            .run(vec![
                (
                    IMAGE.to_string(),
                    OrtTensor::from_array((vec![n, c, h, w], pixels))
                        .expect("image")
                        .into_dyn(),
                ),
                (
                    STYLE.to_string(),
                    OrtTensor::from_array((vec![n, bank.dim], codes))
                        .expect("style")
                        .into_dyn(),
                ),
            ])
            .expect("ist_generator runs");
        let (shape, got) = outputs[RESTYLED]
            .try_extract_tensor::<f32>()
            .expect("f32 output");
        assert_eq!(
            shape.iter().map(|&d| d as usize).collect::<Vec<_>>(),
            [n, c, h, w]
        );
        let worst = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(
            worst <= TOLERANCE,
            "batch {n}: max |onnx - candle| = {worst}"
        );
        // A restyled image is not its content image: the generator did something.
        let moved = want
            .iter()
            .zip(x.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("x"))
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(moved > 1e-3, "generator output equals its input");
    }
    let checked = run_python(
        "import sys, onnx\nonnx.checker.check_model(onnx.load(sys.argv[1]), full_check=True)\nprint('ok')\n",
        &[graph.as_os_str()],
    );
    assert!(checked.contains("ok"), "{checked}");
}
