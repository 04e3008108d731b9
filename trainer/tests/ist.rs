//! IST end to end on the tiny screen: each phase trains only its own
//! networks (the critic starting from the pre-trained encoder); a tiny
//! run fits, evaluates with test-time correction at K = 1 and 8, and
//! draws its generator grid; other runs are refused clearly.

use std::collections::BTreeMap;

use bfx_trainer::methods::{self, Batch, MethodContext};
use bfx_trainer::model::{self, EmbedHead, ModelSpec};
use bfx_trainer::nn::ResNetSpec;
use bfx_trainer::optim::{AdamW, trainable};
use candle_core::{Device, Tensor};
use candle_nn::VarMap;

mod common;
use common::{setup, trainer};

/// Every variable's values by name.
fn snapshot(map: &VarMap) -> BTreeMap<String, Vec<f32>> {
    map.data()
        .lock()
        .expect("no other thread holds the map")
        .iter()
        .map(|(n, v)| {
            let values = v.as_tensor().flatten_all().and_then(|t| t.to_vec1::<f32>());
            (n.clone(), values.expect("f32 variable"))
        })
        .collect()
}

/// Name prefixes (up to the network) of the variables that differ.
fn changed(before: &BTreeMap<String, Vec<f32>>, after: &BTreeMap<String, Vec<f32>>) -> Vec<String> {
    let mut out: Vec<String> = before
        .iter()
        .filter(|(n, v)| after[*n] != **v)
        .map(|(n, _)| {
            let parts: Vec<&str> = n.split('.').collect();
            let depth = if parts[0] == "model" { 2 } else { 3 };
            parts[..depth].join(".")
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn each_phase_trains_only_its_own_networks() {
    let device = Device::Cpu;
    let spec = ModelSpec {
        arch: "resnet18".into(),
        encoder: ResNetSpec::resnet18(2, 4, false),
        head: EmbedHead::Linear,
        embedding_dim: 8,
        classes: 3,
    };
    let map = VarMap::new();
    let model = model::build(&spec, &map, &device, 0).unwrap();
    let ctx = MethodContext {
        map: &map,
        device: &device,
        spec: &spec,
        envs: 2,
        steps: 2,
        seed: 1,
        image: [2, 32, 32],
    };
    let params: toml::Table = toml::from_str("encoder_steps = 2\ngenerator_steps = 2").unwrap();
    let mut ist = methods::build("ist", &params, &ctx).unwrap();
    assert_eq!(ist.pretraining_steps(), 4);
    let mut opt = AdamW::new(trainable(&map, "model."), 1e-3, 0.0).unwrap();
    let b = Batch {
        x: Tensor::randn(0f32, 1.0, (8, 2, 32, 32), &device).unwrap(),
        y: Tensor::new(&[0u32, 1, 2, 0, 1, 2, 0, 1], &device).unwrap(),
        env: Tensor::new(&[0u32, 1, 0, 1, 0, 1, 0, 1], &device).unwrap(),
    };
    let mut step = |i: usize| {
        let before = snapshot(&map);
        let terms = ist.step(&model, &b, &mut opt, i).unwrap();
        assert!(terms.iter().all(|(_, v)| v.is_finite()), "{terms:?}");
        (before, snapshot(&map), terms)
    };
    let (before, after, terms) = step(0);
    assert_eq!(terms[0].0, "encoder");
    assert_eq!(
        changed(&before, &after),
        ["adversary.ist.encoder", "adversary.ist.heads"]
    );
    step(1);
    let (before, after, terms) = step(2);
    let names: Vec<&str> = terms.iter().map(|t| t.0).collect();
    assert_eq!(
        names,
        [
            "generator",
            "adv",
            "style",
            "content",
            "cycle",
            "class",
            "critic"
        ]
    );
    assert_eq!(
        changed(&before, &after),
        ["adversary.ist.critic", "adversary.ist.generator"]
    );
    // The critic's trunk started as a copy of the encoder: one AdamW step
    // (lr 1e-3) from it, far from its own random initialization.
    let trunk = "stage1.0.conv1.weight";
    let critic = &after[&format!("adversary.ist.critic.encoder.{trunk}")];
    let encoder = &after[&format!("adversary.ist.encoder.{trunk}")];
    let own_init = &before[&format!("adversary.ist.critic.encoder.{trunk}")];
    assert!(
        max_diff(critic, encoder) < 3e-3,
        "{}",
        max_diff(critic, encoder)
    );
    assert!(max_diff(own_init, encoder) > 0.1);
    step(3);
    let (before, after, terms) = step(4);
    assert_eq!(terms[0].0, "predictor");
    let model_only: Vec<String> = changed(&before, &after);
    assert!(
        !model_only.is_empty() && model_only.iter().all(|n| n.starts_with("model.")),
        "{model_only:?}"
    );
}

#[test]
fn a_tiny_ist_run_fits_evaluates_with_test_time_correction_and_draws_its_grid() {
    let tmp = tempfile::tempdir().unwrap();
    let config = setup(
        tmp.path(),
        "[trainer.method]\nname = \"ist\"\nparams = { encoder_steps = 6, generator_steps = 6 }\n",
    );
    let o = trainer(&[
        "fit".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
        "--steps".as_ref(),
        "6".as_ref(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("18 steps"), "{stdout}");
    let run = tmp.path().join("run");
    // The last checkpoint's history: the best one's ends where the
    // validation loss last improved, which is the training's business.
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("last.json")).unwrap()).unwrap();
    // It validates only while the predictor trains.
    let steps: Vec<u64> = meta["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps.first(), Some(&13), "{steps:?}");
    assert_eq!(steps.last(), Some(&18), "{steps:?}");

    let o = trainer(&["eval".as_ref(), "--run".as_ref(), run.as_os_str()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("report/metrics.json")).unwrap())
            .unwrap();
    let ks: Vec<u64> = metrics["test_time"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["styles"].as_u64().unwrap())
        .collect();
    assert_eq!(ks, [1, 8]);
    for t in metrics["test_time"].as_array().unwrap() {
        let f1 = t["metrics"]["macro_f1"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&f1), "{t}");
    }
    let report = std::fs::read_to_string(run.join("report/report.md")).unwrap();
    assert!(
        report.contains("| IST test-time correction, K = 8 |"),
        "{report}"
    );

    let png = tmp.path().join("grid.png");
    let grid = |run: &std::path::Path| {
        trainer(&[
            "ist-grid".as_ref(),
            "--run".as_ref(),
            run.as_os_str(),
            "--out".as_ref(),
            png.as_os_str(),
            "--zoom".as_ref(),
            "1".as_ref(),
        ])
    };
    let o = grid(&run);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let check: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(png.with_extension("json")).unwrap())
            .unwrap();
    // The tiny screen's iid split trains on 4 classes over 4 plates: a
    // 5 x 5 grid of 32 px fields with 3 px gaps.
    assert_eq!(check["rows"].as_array().unwrap().len(), 4, "{check}");
    assert_eq!(check["columns"].as_array().unwrap().len(), 4, "{check}");
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&png).unwrap()));
    let info = decoder.read_info().unwrap().info().clone();
    assert_eq!((info.width, info.height), (5 * 35 + 3, 5 * 35 + 3));
    for key in [
        "nucleus_iou",
        "nucleus_iou_unrelated",
        "pixel_correlation",
        "assigned_to_style_env",
        "assigned_to_content_env",
        "plate_classifier_accuracy",
    ] {
        let v = check[key].as_f64().unwrap_or(f64::NAN);
        assert!((-1.0..=1.0).contains(&v), "{key}: {check}");
    }

    // Runs of other methods have no generator: the refusal says so.
    let erm_config = tmp.path().join("erm.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    let erm =
        text[..text.find("[trainer.method]").unwrap()].replace("out = \"run\"", "out = \"erm\"");
    std::fs::write(&erm_config, erm).unwrap();
    let o = trainer(&[
        "fit".as_ref(),
        "--config".as_ref(),
        erm_config.as_os_str(),
        "--steps".as_ref(),
        "2".as_ref(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = grid(&tmp.path().join("erm"));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && stderr.contains("this needs an IST run, this one trained erm"),
        "{stderr}"
    );
}
