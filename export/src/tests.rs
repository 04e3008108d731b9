//! Emission and bundle writing without Candle: weights made from the spec.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use bfx_core::arch::{EmbedHead, ModelSpec, ResNetSpec};
use bfx_core::bundle::Provenance;
use bfx_core::preprocess::{Geometry, Normalization, PreprocessSpec};

use crate::classifier::{Variant, emit};
use crate::weights::Weights;
use crate::{ClassifierExport, ExportError, write_classifier_bundle};

fn spec(instance_norm: bool) -> ModelSpec {
    ModelSpec {
        arch: "resnet18".into(),
        encoder: ResNetSpec::resnet18(2, 4, instance_norm),
        head: EmbedHead::Linear,
        embedding_dim: 8,
        classes: 3,
    }
}

fn weights(spec: &ModelSpec) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    spec.tensors()
        .into_iter()
        .map(|(name, shape)| {
            let n = shape.iter().product();
            (name, (shape, vec![0.5; n]))
        })
        .collect()
}

fn request(spec: &ModelSpec) -> ClassifierExport {
    ClassifierExport {
        method: "erm".into(),
        spec: spec.clone(),
        weights: Weights::from_tensors(Path::new("w.safetensors"), weights(spec)),
        preprocess: PreprocessSpec {
            channels: vec!["w1".into(), "w2".into()],
            normalization: Normalization::SelfStandardize { eps: 1e-6 },
            geometry: Geometry::Resize {
                height: 32,
                width: 32,
            },
        },
        class_names: vec!["a".into(), "b".into(), "c".into()],
        provenance: Provenance::default(),
        metrics: BTreeMap::new(),
        ist: None,
    }
}

/// The error of a refused emission (a model's Debug output is too long to print).
fn refused(result: Result<crate::onnx::ModelProto, ExportError>) -> ExportError {
    match result {
        Ok(_) => panic!("emitted a graph that should have been refused"),
        Err(e) => e,
    }
}

#[test]
fn graphs_have_the_inputs_and_outputs_the_daemon_expects() {
    let s = spec(false);
    let w = Weights::from_tensors(Path::new("w"), weights(&s));
    let names = |v: &[crate::onnx::ValueInfoProto]| -> Vec<String> {
        v.iter().map(|i| i.name().to_string()).collect()
    };
    let layers = s.batch_norm_layers();
    let g = emit(&s, &w, 32, 32, Variant::Predictor)
        .unwrap()
        .graph
        .unwrap();
    assert_eq!(names(&g.input), ["image"]);
    assert_eq!(names(&g.output), ["embedding", "logits"]);
    let bn = g
        .node
        .iter()
        .filter(|n| n.op_type() == "BatchNormalization")
        .count();
    assert_eq!(bn, layers.len());

    let g = emit(&s, &w, 32, 32, Variant::Stats).unwrap().graph.unwrap();
    let outputs = names(&g.output);
    assert_eq!(outputs.len(), 2 + 2 * layers.len());
    assert_eq!(outputs[0], "model.encoder.stem.norm.mean");
    assert_eq!(outputs[1], "model.encoder.stem.norm.var");
    assert!(outputs.contains(&"logits".to_string()));

    let g = emit(&s, &w, 32, 32, Variant::Plate).unwrap().graph.unwrap();
    assert_eq!(g.input.len(), 1 + 2 * layers.len());
    assert!(!g.node.iter().any(|n| n.op_type() == "BatchNormalization"));
}

#[test]
fn weights_that_do_not_fit_are_listed() {
    let s = spec(false);
    let mut t = weights(&s);
    t.remove("model.head.bias");
    t.insert(
        "model.embed.weight".into(),
        (vec![8, 31], vec![0.0; 8 * 31]),
    );
    let w = Weights::from_tensors(Path::new("run/best.safetensors"), t);
    let err = refused(emit(&s, &w, 32, 32, Variant::Predictor)).to_string();
    assert_eq!(
        err,
        "run/best.safetensors: does not fit the architecture (2 problem(s)): \
         model.embed.weight is [8, 31], the architecture needs [8, 32]; model.head.bias is missing"
    );
}

#[test]
fn impossible_requests_are_refused() {
    let s = spec(true);
    let w = Weights::from_tensors(Path::new("w"), weights(&s));
    let err = refused(emit(&s, &w, 32, 32, Variant::Stats));
    assert!(
        err.to_string()
            .contains("InstanceNorm model has no BatchNorm statistics"),
        "{err}"
    );
    let err = refused(emit(&s, &w, 2, 64, Variant::Predictor));
    assert!(err.to_string().contains("2x64 input is too small"), "{err}");
}

#[test]
fn a_failed_export_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("bundle");
    let mut r = request(&spec(false));
    r.preprocess.channels.push("w3".into());
    let err = write_classifier_bundle(&r, &out, false).unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot export: the preprocessing lists 3 channels, the model takes 2"
    );
    let mut r = request(&spec(false));
    r.weights = Weights::from_tensors(Path::new("w"), HashMap::new());
    assert!(matches!(
        write_classifier_bundle(&r, &out, false),
        Err(ExportError::Weights { .. })
    ));
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);

    let bundle = write_classifier_bundle(&request(&spec(true)), &out, false).unwrap();
    assert_eq!(bundle.manifest.files.len(), 1);
    let err = write_classifier_bundle(&request(&spec(false)), &out, false).unwrap_err();
    assert!(
        err.to_string()
            .ends_with("exists; choose another output folder or replace it"),
        "{err}"
    );
    let bundle = write_classifier_bundle(&request(&spec(false)), &out, true).unwrap();
    assert_eq!(bundle.manifest.files.len(), 3);
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 1);
}
