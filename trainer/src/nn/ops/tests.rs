//! The custom ops against Candle's reference ops and finite differences.

use candle_core::{DType, Device, Tensor, Var};

use super::*;
use crate::nn::gradcheck::{TOLERANCE, max_error, random};

/// Largest relative difference of two tensors of one shape.
fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    let a = a
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let b = b
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let scale = a
        .iter()
        .chain(&b)
        .fold(0.0f64, |m, v| m.max(v.abs()))
        .max(1e-12);
    a.iter()
        .zip(&b)
        .fold(0.0, |m, (x, y)| m.max((x - y).abs() / scale))
}

/// Output, input gradient and weight gradient of `f(x, w)` against a
/// fixed random output direction.
fn value_and_grads(
    x: &Tensor,
    w: &Tensor,
    f: &dyn Fn(&Tensor, &Tensor) -> candle_core::Result<Tensor>,
) -> (Tensor, Tensor, Tensor) {
    let (xv, wv) = (Var::from_tensor(x).unwrap(), Var::from_tensor(w).unwrap());
    let y = f(xv.as_tensor(), wv.as_tensor()).unwrap();
    let r = random(y.dims(), 7).to_dtype(x.dtype()).unwrap();
    let grads = (&y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    (
        y,
        grads.get(xv.as_tensor()).expect("input gradient").clone(),
        // Functions that ignore `w` (ReLU, pooling) get zeros.
        grads
            .get(wv.as_tensor())
            .cloned()
            .unwrap_or_else(|| w.zeros_like().expect("zeros")),
    )
}

/// Output, input gradient and weight gradient of two `value_and_grads`
/// agree to `tolerance` (relative); `case` names the comparison.
fn assert_agree(
    ours: &(Tensor, Tensor, Tensor),
    reference: &(Tensor, Tensor, Tensor),
    tolerance: f64,
    case: &str,
) {
    for (what, a, b) in [
        ("output", &ours.0, &reference.0),
        ("input gradient", &ours.1, &reference.1),
        ("weight gradient", &ours.2, &reference.2),
    ] {
        let d = rel_diff(a, b);
        assert!(d < tolerance, "{case}: {what} differs by {d}");
    }
}

/// A convolution's stride, padding, dilation and groups.
const fn cfg(stride: usize, padding: usize, dilation: usize, groups: usize) -> ConvConfig {
    ConvConfig {
        stride,
        padding,
        dilation,
        groups,
    }
}

/// Shapes the models use (ResNet stem, 3x3 and strided 1x1 blocks) plus
/// dilation, odd sizes and groups. Square, because Candle's own backward
/// pads a strided input gradient by one amount for both axes.
const CONVS: [([usize; 4], [usize; 4], ConvConfig); 19] = [
    ([2, 5, 19, 17], [4, 5, 7, 7], cfg(2, 3, 1, 1)),
    ([3, 4, 8, 8], [6, 4, 3, 3], cfg(1, 1, 1, 1)),
    ([2, 4, 9, 9], [8, 4, 3, 3], cfg(2, 1, 1, 1)),
    ([2, 4, 8, 8], [8, 4, 1, 1], cfg(2, 0, 1, 1)),
    ([1, 3, 6, 6], [5, 3, 1, 1], cfg(1, 0, 1, 1)),
    ([2, 3, 11, 10], [4, 3, 3, 3], cfg(1, 2, 2, 1)),
    ([2, 6, 7, 7], [6, 2, 3, 3], cfg(2, 1, 1, 3)),
    // The last ResNet stages on small images: planes of 2x2 and 1x1
    // under a 3x3 kernel, where most taps fall entirely in the padding.
    ([2, 3, 2, 2], [4, 3, 3, 3], cfg(1, 1, 1, 1)),
    ([3, 2, 1, 1], [4, 2, 3, 3], cfg(1, 1, 1, 1)),
    // Planes of 32x32 and up take the shifted-GEMM path, with dilation
    // too; more output than input channels and the other way round.
    ([2, 3, 32, 33], [4, 3, 3, 3], cfg(1, 1, 1, 1)),
    ([1, 5, 33, 34], [2, 5, 3, 3], cfg(1, 2, 2, 1)),
    // Planes 16 wide take the direct kernel in f32 (on CPUs with
    // AVX-512): output channels in a full tile and a partial one, tiles
    // of positions full and partial, a 5x5 kernel.
    ([2, 3, 16, 32], [4, 3, 3, 3], cfg(1, 1, 1, 1)),
    ([1, 5, 16, 16], [7, 5, 5, 5], cfg(1, 2, 1, 1)),
    // A kernel wider than the plane, on one image of one channel: the
    // outer taps shift past the whole chunk and read only padding.
    ([1, 1, 2, 2], [2, 1, 5, 5], cfg(1, 2, 1, 1)),
    // A stem on a 1x1 image: no tap but the centre sees a pixel.
    ([2, 3, 1, 1], [2, 3, 7, 7], cfg(2, 3, 1, 1)),
    // 3x3 same convolutions to 32 channels and more take the kernels
    // vectorized over output channels in f32 (on CPUs with AVX-512): on
    // planes 8 wide all three passes, on planes 16 wide the weight
    // gradient.
    ([2, 32, 3, 8], [32, 32, 3, 3], cfg(1, 1, 1, 1)),
    ([2, 5, 16, 16], [32, 5, 3, 3], cfg(1, 1, 1, 1)),
    // And stride 2 down to planes 8 wide (forward and weight gradient),
    // and a stem's 7x7 at stride 2 (forward and weight gradient).
    ([2, 3, 15, 15], [32, 3, 3, 3], cfg(2, 1, 1, 1)),
    ([1, 2, 32, 32], [32, 2, 7, 7], cfg(2, 3, 1, 1)),
];

#[test]
fn convolution_matches_candle_forward_and_backward() {
    for (seed, (xs, ws, cfg)) in CONVS.iter().enumerate() {
        for dtype in [DType::F32, DType::F64] {
            let x = random(xs, seed as u64).to_dtype(dtype).unwrap();
            let w = random(ws, 100 + seed as u64).to_dtype(dtype).unwrap();
            let ours = value_and_grads(&x, &w, &|x, w| conv2d(x, w, *cfg));
            let reference = value_and_grads(&x, &w, &|x, w| {
                x.conv2d(w, cfg.padding, cfg.stride, cfg.dilation, cfg.groups)
            });
            assert_agree(
                &ours,
                &reference,
                1e-5,
                &format!("{xs:?} * {ws:?} {cfg:?} {dtype:?}"),
            );
        }
    }
}

#[test]
fn convolution_gradients_match_finite_differences() {
    for (seed, (xs, ws, cfg)) in CONVS.iter().enumerate() {
        let x = random(xs, seed as u64);
        let w = random(ws, 100 + seed as u64);
        let dx = max_error(&x, &|x| conv2d(x, &w, *cfg)).unwrap();
        let dw = max_error(&w, &|w| conv2d(&x, w, *cfg)).unwrap();
        assert!(
            dx < TOLERANCE && dw < TOLERANCE,
            "{xs:?} {cfg:?}: {dx} {dw}"
        );
    }
}

#[test]
fn non_square_inputs_get_right_gradients() {
    let cfg = cfg(2, 0, 1, 1);
    let (x, w) = (random(&[2, 3, 9, 8], 3), random(&[4, 3, 1, 1], 4));
    let dx = max_error(&x, &|x| conv2d(x, &w, cfg)).unwrap();
    let dw = max_error(&w, &|w| conv2d(&x, w, cfg)).unwrap();
    assert!(dx < TOLERANCE && dw < TOLERANCE, "{dx} {dw}");
}

#[test]
fn transposed_convolution_matches_candle_and_finite_differences() {
    let cases: [([usize; 4], [usize; 4], ConvConfig, usize); 4] = [
        ([2, 4, 5, 5], [4, 3, 3, 3], cfg(2, 1, 1, 1), 1),
        ([1, 3, 4, 6], [3, 2, 2, 2], cfg(2, 0, 1, 1), 0),
        ([2, 2, 6, 5], [2, 3, 3, 3], cfg(1, 1, 1, 1), 0),
        ([2, 3, 4, 4], [3, 2, 3, 3], cfg(1, 2, 2, 1), 0),
    ];
    for (seed, (xs, ws, cfg, op)) in cases.iter().enumerate() {
        let x = random(xs, seed as u64);
        let w = random(ws, 50 + seed as u64);
        let ours = value_and_grads(&x, &w, &|x, w| conv_transpose2d(x, w, *cfg, *op));
        let reference = value_and_grads(&x, &w, &|x, w| {
            x.conv_transpose2d(w, cfg.padding, *op, cfg.stride, cfg.dilation)
        });
        assert_agree(
            &ours,
            &reference,
            1e-10,
            &format!("{xs:?} * {ws:?} {cfg:?}"),
        );
        let dx = max_error(&x, &|x| conv_transpose2d(x, &w, *cfg, *op)).unwrap();
        let dw = max_error(&w, &|w| conv_transpose2d(&x, w, *cfg, *op)).unwrap();
        assert!(
            dx < TOLERANCE && dw < TOLERANCE,
            "{xs:?} {cfg:?}: {dx} {dw}"
        );
    }
    // Groups (Candle has no grouped transposed convolution): finite differences only.
    let cfg = cfg(2, 1, 1, 2);
    let x = random(&[2, 4, 3, 3], 9);
    let w = random(&[4, 3, 3, 3], 10);
    let y = conv_transpose2d(&x, &w, cfg, 1).unwrap();
    assert_eq!(y.dims(), &[2, 6, 6, 6]);
    let dx = max_error(&x, &|x| conv_transpose2d(x, &w, cfg, 1)).unwrap();
    let dw = max_error(&w, &|w| conv_transpose2d(&x, w, cfg, 1)).unwrap();
    assert!(dx < TOLERANCE && dw < TOLERANCE, "grouped: {dx} {dw}");
}

#[test]
fn the_image_gets_no_gradient_but_a_tracked_input_does() {
    let (xs, ws, cfg) = CONVS[0];
    let x = random(&xs, 1).to_dtype(DType::F32).unwrap();
    let w = Var::from_tensor(&random(&ws, 2).to_dtype(DType::F32).unwrap()).unwrap();
    let grads = conv2d(&x, w.as_tensor(), cfg)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(grads.get(&x).is_none());
    assert!(grads.get(w.as_tensor()).is_some());
    // Through another op the input is tracked and gets its gradient.
    let xv = Var::from_tensor(&x).unwrap();
    let h = (xv.as_tensor() * 2.0).unwrap();
    let grads = conv2d(&h, w.as_tensor(), cfg)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    assert!(grads.get(xv.as_tensor()).is_some());
}

#[test]
fn shapes_that_do_not_fit_are_refused() {
    let x = Tensor::zeros((1, 4, 5, 5), DType::F32, &Device::Cpu).unwrap();
    let w = Tensor::zeros((2, 3, 3, 3), DType::F32, &Device::Cpu).unwrap();
    assert!(conv2d(&x, &w, ConvConfig::default()).is_err());
    let w = Tensor::zeros((2, 4, 7, 7), DType::F32, &Device::Cpu).unwrap();
    assert!(conv2d(&x, &w, ConvConfig::default()).is_err());
    let w = Tensor::zeros((2, 4, 0, 0), DType::F32, &Device::Cpu).unwrap();
    assert!(conv2d(&x, &w, ConvConfig::default()).is_err());
    let empty = Tensor::zeros((1, 4, 0, 3), DType::F32, &Device::Cpu).unwrap();
    let w = Tensor::zeros((4, 2, 3, 3), DType::F32, &Device::Cpu).unwrap();
    assert!(conv_transpose2d(&empty, &w, ConvConfig::default(), 0).is_err());
}

#[test]
fn fused_normalization_matches_the_composite_one() {
    use crate::nn::norm::{batch_stats, normalize};
    let x = random(&[3, 4, 5, 6], 11).to_dtype(DType::F32).unwrap();
    let w = random(&[4], 12).to_dtype(DType::F32).unwrap();
    let b = random(&[4], 13).to_dtype(DType::F32).unwrap();
    // BatchNorm with the batch's statistics (gradients through them).
    let ours = value_and_grads(&x, &w, &|x, w| {
        Ok(normalize_batch(x, w, &b, 1e-5, Grouping::Channel, false)?.0)
    });
    let reference = value_and_grads(&x, &w, &|x, w| {
        let (mean, var) = batch_stats(x)?;
        normalize(x, &mean, &var, 1e-5, w, &b)
    });
    assert_agree(&ours, &reference, 1e-5, "batch norm");
    // Given statistics are constants.
    let (mean, var) = batch_stats(&random(&[2, 4, 3, 3], 14)).unwrap();
    let (mean, var) = (
        mean.to_dtype(DType::F32).unwrap(),
        var.to_dtype(DType::F32).unwrap(),
    );
    let ours = value_and_grads(&x, &w, &|x, w| {
        normalize_given(x, &mean, &var, 1e-5, w, &b, false)
    });
    let reference = value_and_grads(&x, &w, &|x, w| normalize(x, &mean, &var, 1e-5, w, &b));
    assert_agree(&ours, &reference, 1e-5, "given statistics");
    // InstanceNorm against candle-nn's GroupNorm with a group per channel.
    let group = candle_nn::GroupNorm::new(w.clone(), b.clone(), 4, 4, 1e-5).unwrap();
    let ours = value_and_grads(&x, &w, &|x, w| {
        Ok(normalize_batch(x, w, &b, 1e-5, Grouping::Plane, false)?.0)
    });
    let (out, dx, _) = value_and_grads(&x, &w, &|x, _| candle_nn::Module::forward(&group, x));
    assert!(rel_diff(&ours.0, &out) < 1e-5 && rel_diff(&ours.1, &dx) < 1e-5);
    // Scale and shift gradients of both against finite differences.
    let x64 = random(&[2, 3, 4, 3], 15);
    let b64 = random(&[3], 16);
    for grouping in [Grouping::Channel, Grouping::Plane] {
        let dw = max_error(&random(&[3], 17), &|w| {
            Ok(normalize_batch(&x64, w, &b64, 1e-5, grouping, false)?.0)
        })
        .unwrap();
        let db = max_error(&b64, &|b| {
            Ok(normalize_batch(&x64, &random(&[3], 17), b, 1e-5, grouping, false)?.0)
        })
        .unwrap();
        let dx = max_error(&x64, &|x| {
            Ok(normalize_batch(x, &random(&[3], 17), &b64, 1e-5, grouping, false)?.0)
        })
        .unwrap();
        assert!(
            dw < TOLERANCE && db < TOLERANCE && dx < TOLERANCE,
            "{grouping:?}: {dw} {db} {dx}"
        );
    }
}

#[test]
fn normalization_with_relu_matches_the_two_ops() {
    let x = random(&[3, 4, 5, 6], 31).to_dtype(DType::F32).unwrap();
    let w = random(&[4], 32).to_dtype(DType::F32).unwrap();
    let b = random(&[4], 33).to_dtype(DType::F32).unwrap();
    let mean = random(&[4], 34).to_dtype(DType::F32).unwrap();
    let var = random(&[4], 35)
        .abs()
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
    type Norm<'a> = Box<dyn Fn(&Tensor, &Tensor, bool) -> candle_core::Result<Tensor> + 'a>;
    let cases: [(&str, Norm); 3] = [
        (
            "batch",
            Box::new(|x, w, r| Ok(normalize_batch(x, w, &b, 1e-5, Grouping::Channel, r)?.0)),
        ),
        (
            "instance",
            Box::new(|x, w, r| Ok(normalize_batch(x, w, &b, 1e-5, Grouping::Plane, r)?.0)),
        ),
        (
            "given",
            Box::new(|x, w, r| normalize_given(x, &mean, &var, 1e-5, w, &b, r)),
        ),
    ];
    for (name, norm) in &cases {
        let fused = value_and_grads(&x, &w, &|x, w| norm(x, w, true));
        let apart = value_and_grads(&x, &w, &|x, w| relu(&norm(x, w, false)?));
        // Many outputs are cut and many pass, so the gate is exercised.
        let cut = fused.0.eq(0.0).unwrap().to_dtype(DType::F32).unwrap();
        let cut = cut.mean_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(
            (0.1..0.9).contains(&cut),
            "{name}: {cut} of the outputs cut"
        );
        assert_agree(&fused, &apart, 1e-5, &format!("{name} norm + relu"));
    }
}

#[test]
fn relu_pool_and_upsampling_match_candle_and_finite_differences() {
    let x = random(&[2, 3, 7, 6], 21);
    // ReLU: same values and gradient as Candle's.
    let (a, da, _) = value_and_grads(&x, &x, &|x, _| relu(x));
    let (b, db, _) = value_and_grads(&x, &x, &|x, _| x.relu());
    assert!(rel_diff(&a, &b) == 0.0 && rel_diff(&da, &db) == 0.0);
    // Residual join: the same as adding, then ReLU.
    let other = random(&[2, 3, 7, 6], 22);
    let (a, da, db_) = value_and_grads(&x, &other, &|x, o| add_relu(x, o));
    let (b, db, dbb) = value_and_grads(&x, &other, &|x, o| (x + o)?.relu());
    assert!(rel_diff(&a, &b) == 0.0 && rel_diff(&da, &db) == 0.0 && rel_diff(&db_, &dbb) == 0.0);
    // Max pool: Candle's forward; finite differences for the gradient
    // (Candle's own max_pool2d gradient is scaled by 1/4).
    let pooled = max_pool_2x2(&x).unwrap();
    let reference = x.narrow(2, 0, 6).unwrap().max_pool2d(2).unwrap();
    assert_eq!(rel_diff(&pooled, &reference), 0.0);
    let err = max_error(&x, &|t| max_pool_2x2(t)).unwrap();
    assert!(err < TOLERANCE, "{err}");
    // A window of ties (ReLU zeros): the gradient goes to one element.
    let zeros =
        Var::from_tensor(&Tensor::zeros((1, 1, 2, 2), DType::F32, &Device::Cpu).unwrap()).unwrap();
    let g = max_pool_2x2(zeros.as_tensor())
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let g = g
        .get(zeros.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    assert_eq!(g, vec![1.0, 0.0, 0.0, 0.0]);
    // Nearest upsampling: Candle's values and gradient.
    let (a, da, _) = value_and_grads(&x, &x, &|x, _| upsample_nearest(x, 3));
    let (b, db, _) = value_and_grads(&x, &x, &|x, _| x.upsample_nearest2d(21, 18));
    assert!(rel_diff(&a, &b) == 0.0 && rel_diff(&da, &db) < 1e-12);
}
