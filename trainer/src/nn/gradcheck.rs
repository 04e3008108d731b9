//! Finite-difference gradient checks (f64) for every layer bfx writes.

use candle_core::{DType, Device, Result, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A random f64 tensor with values in (-1, 1).
pub fn random(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).expect("shape matches the data")
}

/// Largest relative error between the analytic gradient of
/// `sum(f(x) * r)` (r random, so no output direction is special) with
/// respect to `x`, and central differences.
pub fn max_error(x: &Tensor, f: &dyn Fn(&Tensor) -> Result<Tensor>) -> Result<f64> {
    assert_eq!(x.dtype(), DType::F64, "gradient checks run in f64");
    let var = Var::from_tensor(&x.copy()?)?;
    let out = f(var.as_tensor())?;
    let r = random(out.dims(), 99);
    let loss = |t: &Tensor| -> Result<f64> { (f(t)? * &r)?.sum_all()?.to_scalar::<f64>() };
    let analytic = (f(var.as_tensor())? * &r)?.sum_all()?.backward()?;
    let grad = analytic
        .get(var.as_tensor())
        .cloned()
        .unwrap_or(var.as_tensor().zeros_like()?)
        .flatten_all()?
        .to_vec1::<f64>()?;
    let base = var.as_tensor().flatten_all()?.to_vec1::<f64>()?;
    let h = 1e-5;
    let mut worst: f64 = 0.0;
    // Every coordinate of small inputs, an even spread of 400 of large ones.
    let step = base.len().div_ceil(400);
    for i in (0..base.len()).step_by(step) {
        let mut plus = base.clone();
        plus[i] += h;
        let mut minus = base.clone();
        minus[i] -= h;
        let t = |v: Vec<f64>| Tensor::from_vec(v, x.dims(), &Device::Cpu);
        let numeric = (loss(&t(plus)?)? - loss(&t(minus)?)?) / (2.0 * h);
        let err = (grad[i] - numeric).abs() / (1e-3 + numeric.abs().max(grad[i].abs()));
        worst = worst.max(err);
    }
    Ok(worst)
}

/// Tolerance for f64 central differences.
pub const TOLERANCE: f64 = 1e-4;

#[cfg(test)]
mod tests {
    use candle_nn::{VarBuilder, VarMap};

    use super::*;
    use crate::nn::norm::{BatchNorm, Norm, NormPass, batch_stats};
    use crate::nn::pool::{global_avg_pool, max_pool_2x2};
    use crate::nn::resnet::{ResNet, ResNetSpec};

    fn vb(map: &VarMap) -> VarBuilder<'_> {
        VarBuilder::from_varmap(map, DType::F64, &Device::Cpu)
    }

    #[test]
    fn the_checker_catches_candles_wrong_max_pool_gradient() {
        // Candle's max_pool2d(2) backward is scaled by 1/4: the checker must see it.
        let x = random(&[1, 2, 4, 4], 1);
        let candle = max_error(&x, &|t| t.max_pool2d(2)).unwrap();
        assert!(
            candle > 0.5,
            "checker missed a 4x gradient error ({candle})"
        );
        let ours = max_error(&x, &|t| max_pool_2x2(t)).unwrap();
        assert!(ours < TOLERANCE, "{ours}");
        // Same forward values.
        let a = x
            .max_pool2d(2)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        let b = max_pool_2x2(&x)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f64>()
            .unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn pooling_gradients_are_right() {
        let x = random(&[2, 3, 5, 6], 2);
        assert!(max_error(&x, &|t| max_pool_2x2(t)).unwrap() < TOLERANCE);
        assert!(max_error(&x, &|t| global_avg_pool(t)).unwrap() < TOLERANCE);
        assert_eq!(max_pool_2x2(&x).unwrap().dims(), [2, 3, 2, 3]);
    }

    #[test]
    fn batch_norm_gradients_and_statistics_are_right() {
        let map = VarMap::new();
        let bn = BatchNorm::new(3, vb(&map).pp("bn")).unwrap();
        let x = random(&[4, 3, 3, 2], 3);
        let err = max_error(&x, &|t| {
            bn.forward(t, &mut NormPass::new(crate::nn::BnMode::Batch))
        })
        .unwrap();
        assert!(err < TOLERANCE, "{err}");
        // Train mode: biased batch variance for normalizing, unbiased in the running estimate.
        let (mean, var) = batch_stats(&x).unwrap();
        let v = x
            .transpose(0, 1)
            .unwrap()
            .flatten_from(1)
            .unwrap()
            .to_vec2::<f64>()
            .unwrap();
        let m0: f64 = v[0].iter().sum::<f64>() / 24.0;
        let var0: f64 = v[0].iter().map(|a| (a - m0).powi(2)).sum::<f64>() / 24.0;
        assert!((mean.to_vec1::<f64>().unwrap()[0] - m0).abs() < 1e-12);
        assert!((var.to_vec1::<f64>().unwrap()[0] - var0).abs() < 1e-12);
        bn.forward(&x, &mut NormPass::train()).unwrap();
        let running = bn.running().var.to_vec1::<f64>().unwrap()[0];
        assert!(
            (running - (0.9 + 0.1 * var0 * 24.0 / 23.0)).abs() < 1e-12,
            "{running}"
        );
        // Recorded statistics replayed as given statistics give the same output.
        let mut rec = NormPass::recording();
        let a = bn.forward(&x, &mut rec).unwrap();
        let b = bn
            .forward(&x, &mut NormPass::with_stats(rec.recorded))
            .unwrap();
        let diff = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!(diff < 1e-12);
        // Gradients reach the scale and shift.
        let weights = map.all_vars();
        let loss = (bn.forward(&x, &mut NormPass::train()).unwrap() * random(&[4, 3, 3, 2], 5))
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        let with_grad = weights
            .iter()
            .filter(|v| grads.get(v.as_tensor()).is_some())
            .count();
        assert_eq!(
            with_grad, 2,
            "weight and bias only, never running statistics"
        );
    }

    #[test]
    fn instance_norm_gradient_is_right() {
        let map = VarMap::new();
        let norm = Norm::new(3, true, vb(&map).pp("in")).unwrap();
        let x = random(&[2, 3, 3, 3], 4);
        let err = max_error(&x, &|t| norm.forward(t, &mut NormPass::train())).unwrap();
        assert!(err < TOLERANCE, "{err}");
    }

    #[test]
    fn resnet_gradient_is_right_with_both_norms() {
        for instance in [false, true] {
            let map = VarMap::new();
            let spec = ResNetSpec {
                in_channels: 2,
                width: 2,
                instance_norm: instance,
                blocks: [1, 1, 1, 1],
            };
            let net = ResNet::new(&spec, vb(&map)).unwrap();
            let x = random(&[3, 2, 32, 32], 6);
            let err = max_error(&x, &|t| {
                net.forward(t, &mut NormPass::new(crate::nn::BnMode::Batch))
            })
            .unwrap();
            assert!(err < 1e-3, "instance {instance}: {err}");
            assert_eq!(
                net.forward(&x, &mut NormPass::train()).unwrap().dims(),
                [3, 16]
            );
        }
    }
}
