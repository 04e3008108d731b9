//! ONNX Runtime, fetched from PyPI by scripts/fetch-onnxruntime.sh, loads
//! through `ort` and runs a model built by the `onnx` Python package.

use bfx_config::daemon::ExecutionProvider;
use bfx_daemon::runtime::{self, LibrarySource};
use bfx_tests::run_python;
use ndarray::{Array2, array};
use ort::value::TensorRef;

/// y = relu(x @ W + b) with x: [N, 4] (symbolic N), W: [4, 3], b: [3], opset 17 / IR 8.
const BUILD_MODEL: &str = r#"
import sys, numpy as np, onnx
from onnx import helper, TensorProto, numpy_helper
W = np.array([[1, -2, 0.5], [0, 1, -1], [2, 0, 0.25], [-1, 3, 1]], dtype=np.float32)
b = np.array([0.5, -1, 0], dtype=np.float32)
graph = helper.make_graph(
    [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["z"]), helper.make_node("Relu", ["z"], ["y"])],
    "tiny",
    [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
    [numpy_helper.from_array(W, "W"), numpy_helper.from_array(b, "b")],
)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
onnx.checker.check_model(model, full_check=True)
onnx.save(model, sys.argv[1])
"#;

fn expected(x: &Array2<f32>) -> Array2<f32> {
    let w = array![
        [1.0f32, -2.0, 0.5],
        [0.0, 1.0, -1.0],
        [2.0, 0.0, 0.25],
        [-1.0, 3.0, 1.0]
    ];
    let b = array![0.5f32, -1.0, 0.0];
    (x.dot(&w) + &b).mapv(|v| v.max(0.0))
}

#[test]
fn fetched_onnx_runtime_runs_a_tiny_model() {
    let dir = tempfile::tempdir().expect("temp dir");
    let model = dir.path().join("tiny.onnx");
    run_python(BUILD_MODEL, &[model.as_os_str()]);

    let rt = runtime::init(None, ExecutionProvider::Cpu).unwrap_or_else(|e| panic!("{e}"));
    assert!(rt.library.exists());
    // The links made by the fetch script lead to the pinned release.
    let real = std::fs::canonicalize(&rt.library).expect("library path resolves");
    assert_eq!(
        real.file_name().and_then(|n| n.to_str()),
        Some("libonnxruntime.so.1.31.1"),
        "{}",
        real.display()
    );
    assert!(
        rt.build_info().contains("build type=Release"),
        "{}",
        rt.build_info()
    );
    let mut session = rt.session(&model, 1, false).expect("session");
    assert_eq!(session.inputs()[0].name(), "x");
    assert_eq!(session.outputs()[0].name(), "y");

    for n in [1usize, 5] {
        let x = Array2::from_shape_fn((n, 4), |(i, j)| {
            (i as f32 - 2.0) * 0.75 + j as f32 * 0.5 - 1.0
        });
        let outputs = session
            .run(ort::inputs![
                TensorRef::from_array_view(&x).expect("tensor")
            ])
            .expect("run");
        let (shape, y) = outputs["y"]
            .try_extract_tensor::<f32>()
            .expect("f32 output");
        assert_eq!(shape.to_vec(), vec![n as i64, 3]);
        let want = expected(&x);
        if n > 1 {
            assert!(
                want.iter().any(|&v| v > 0.0) && want.iter().any(|&v| v == 0.0),
                "the inputs exercise both sides of relu"
            );
        }
        for (got, want) in y.iter().zip(want.iter()) {
            assert!((got - want).abs() < 1e-6, "got {got}, want {want}");
        }
    }
}

#[test]
fn library_candidates_follow_the_documented_order() {
    let configured = std::path::Path::new("/opt/bfx/lib/libonnxruntime.so");
    let list = runtime::candidates(Some(configured), ExecutionProvider::Cuda);
    let sources: Vec<_> = list.iter().map(|(s, _)| *s).collect();
    // ORT_DYLIB_PATH may or may not be set where the tests run.
    let expected_without_env = [
        LibrarySource::Config,
        LibrarySource::Installation,
        LibrarySource::Checkout,
        LibrarySource::Checkout,
    ];
    let filtered: Vec<_> = sources
        .iter()
        .copied()
        .filter(|s| *s != LibrarySource::Environment)
        .collect();
    assert_eq!(filtered, expected_without_env);
    assert_eq!(list[0].1, configured);
    // CUDA prefers the GPU build; CPU prefers the CPU build.
    let checkout: Vec<_> = list
        .iter()
        .filter(|(s, _)| *s == LibrarySource::Checkout)
        .map(|(_, p)| p.clone())
        .collect();
    assert!(
        checkout[0].ends_with(".ort/gpu/libonnxruntime.so")
            && checkout[1].ends_with(".ort/cpu/libonnxruntime.so"),
        "{checkout:?}"
    );
    let cpu = runtime::candidates(None, ExecutionProvider::Cpu);
    assert!(
        cpu.iter()
            .rev()
            .nth(1)
            .expect("two checkout entries")
            .1
            .ends_with(".ort/cpu/libonnxruntime.so")
    );
}
