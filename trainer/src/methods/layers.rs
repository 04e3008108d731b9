//! The differentiable pieces the methods add to the network: gradient
//! reversal (DANN), ArcFace logits and Jensen-Shannon divergence (ABRA),
//! statistics mixing (MixStyle) and statistics perturbation (ABRA). Each
//! has a finite-difference gradient test below.

use candle_core::{D, Result, Tensor};
use candle_nn::ops::{log_softmax, softmax};

/// Identity forward, gradient times `-lambda` backward:
/// `(1 + lambda) * stop_grad(x) - lambda * x`.
pub fn grad_reverse(x: &Tensor, lambda: f64) -> Result<Tensor> {
    (x.detach() * (1.0 + lambda))? - (x * lambda)?
}

/// ArcFace logits (additive angular margin): `s * cos(theta_j)` for every
/// class, `s * cos(theta_y + m)` for the target, with theta the angle
/// between the L2-normalized embedding and class weight. Where
/// `theta_y + m` would pass pi the usual linear fallback
/// `cos(theta_y) - m sin(m)` keeps the logit monotonic.
pub fn arcface_logits(
    embedding: &Tensor,
    weight: &Tensor,
    y: &Tensor,
    margin: f64,
    scale: f64,
) -> Result<Tensor> {
    let e = l2_normalize(embedding)?;
    let w = l2_normalize(weight)?;
    let cos = e.matmul(&w.t()?)?.clamp(-1.0 + 1e-7, 1.0 - 1e-7)?;
    let sin = (1.0 - cos.sqr()?)?.sqrt()?;
    let shifted = ((&cos * margin.cos())? - (&sin * margin.sin())?)?;
    let fallback = (&cos - margin * margin.sin())?;
    let in_range = cos.ge((std::f64::consts::PI - margin).cos())?;
    let with_margin = in_range.where_cond(&shifted, &fallback)?;
    let classes = cos.dim(1)?;
    let target = one_hot(y, classes, cos.dtype())?;
    let logits = ((target.clone() * with_margin)? + ((1.0 - target)? * cos)?)?;
    logits * scale
}

/// Rows scaled to unit L2 norm.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    x.broadcast_div(&(x.sqr()?.sum_keepdim(D::Minus1)? + 1e-12)?.sqrt()?)
}

/// `[b, classes]` one-hot rows of u32 labels.
pub fn one_hot(y: &Tensor, classes: usize, dtype: candle_core::DType) -> Result<Tensor> {
    let ids = Tensor::arange(0u32, classes as u32, y.device())?;
    y.unsqueeze(1)?
        .broadcast_eq(&ids.unsqueeze(0)?)?
        .to_dtype(dtype)
}

/// Mean over rows of the Jensen-Shannon divergence between the softmax
/// distributions of two logit matrices.
pub fn js_divergence(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (pa, pb) = (softmax(a, D::Minus1)?, softmax(b, D::Minus1)?);
    let (la, lb) = (log_softmax(a, D::Minus1)?, log_softmax(b, D::Minus1)?);
    // log((pa + pb) / 2) from the log-probabilities, exactly (logsumexp).
    let top = la.maximum(&lb)?;
    let lm = ((top.clone() + ((&la - &top)?.exp()? + (&lb - &top)?.exp()?)?.log()?)?
        - std::f64::consts::LN_2)?;
    let kl = |p: &Tensor, lp: &Tensor| (p * (lp - &lm)?)?.sum(D::Minus1);
    ((kl(&pa, &la)? + kl(&pb, &lb)?)? * 0.5)?.mean_all()
}

/// CutMix: the box `[y0, y0 + h) x [x0, x0 + w)` of every image replaced by
/// the same box of image `perm[i]`. Returns the mixed images and the
/// fraction of each image that stays its own (the weight of its label).
pub fn cutmix(
    x: &Tensor,
    perm: &Tensor,
    (y0, x0, h, w): (usize, usize, usize, usize),
) -> Result<(Tensor, f64)> {
    let (_, _, height, width) = x.dims4()?;
    let other = x.index_select(perm, 0)?;
    let patch = other.narrow(2, y0, h)?.narrow(3, x0, w)?;
    let rows = x.narrow(2, y0, h)?;
    let row_band = Tensor::cat(
        &[
            &rows.narrow(3, 0, x0)?,
            &patch,
            &rows.narrow(3, x0 + w, width - x0 - w)?,
        ],
        3,
    )?;
    let mixed = Tensor::cat(
        &[
            &x.narrow(2, 0, y0)?,
            &row_band,
            &x.narrow(2, y0 + h, height - y0 - h)?,
        ],
        2,
    )?;
    Ok((mixed, 1.0 - (h * w) as f64 / (height * width) as f64))
}

/// Per-image, per-channel mean and std over the spatial axes, `[b, c, 1, 1]`.
pub fn instance_stats(x: &Tensor, eps: f64) -> Result<(Tensor, Tensor)> {
    let mu = x.mean_keepdim(3)?.mean_keepdim(2)?;
    let var = x
        .broadcast_sub(&mu)?
        .sqr()?
        .mean_keepdim(3)?
        .mean_keepdim(2)?;
    Ok((mu, (var + eps)?.sqrt()?))
}

/// MixStyle: each image's instance statistics (detached, as in the paper)
/// replaced by a mix with those of image `perm[i]`, weight `lambda[i]` on its own.
pub fn mix_style(x: &Tensor, lambda: &Tensor, perm: &Tensor) -> Result<Tensor> {
    let (mu, sig) = instance_stats(x, 1e-6)?;
    mix_with_stats(x, &mu.detach(), &sig.detach(), lambda, perm)
}

/// MixStyle with the instance statistics given (`[b, c, 1, 1]` each).
pub fn mix_with_stats(
    x: &Tensor,
    mu: &Tensor,
    sig: &Tensor,
    lambda: &Tensor,
    perm: &Tensor,
) -> Result<Tensor> {
    let normed = x.broadcast_sub(mu)?.broadcast_div(sig)?;
    let lam = lambda.reshape(((), 1, 1, 1))?;
    let mix = |s: &Tensor| -> Result<Tensor> {
        let other = s.index_select(perm, 0)?;
        s.broadcast_mul(&lam)? + other.broadcast_mul(&(1.0 - &lam)?)?
    };
    normed.broadcast_mul(&mix(sig)?)?.broadcast_add(&mix(mu)?)
}

/// ABRA's perturbation of batch statistics: with the features' channel
/// mean `mu` and std `sigma` over the whole (single-plate) batch,
/// `mu' = mu + (d_mu + eps_mu) * softplus(a_mu) * sigma` and
/// `sigma' = sigma * exp((d_sigma + eps_sigma) * softplus(a_sigma))`,
/// and the features are re-normalized to them. `d_*` (direction) and
/// `a_*` (magnitude) are the learnable, batch-shared parameters, `eps_*`
/// the Gaussian reparameterization noise; all are `[c]`.
pub struct Perturbation<'a> {
    /// Direction of the mean shift.
    pub d_mu: &'a Tensor,
    /// Magnitude (pre-softplus) of the mean shift.
    pub a_mu: &'a Tensor,
    /// Direction of the log-std shift.
    pub d_sigma: &'a Tensor,
    /// Magnitude (pre-softplus) of the log-std shift.
    pub a_sigma: &'a Tensor,
    /// Noise for the mean.
    pub eps_mu: &'a Tensor,
    /// Noise for the std.
    pub eps_sigma: &'a Tensor,
}

impl Perturbation<'_> {
    /// Perturbed features of `x` `[b, c, h, w]`.
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let (mean, var) = crate::nn::norm::batch_stats(x)?;
        let sigma = (var + 1e-5)?.sqrt()?;
        let shape = (1, (), 1, 1);
        let softplus = |a: &Tensor| -> Result<Tensor> { (a.exp()? + 1.0)?.log() };
        let mu2 = (&mean + ((self.d_mu + self.eps_mu)? * softplus(self.a_mu)?)?.mul(&sigma)?)?;
        let sigma2 =
            (&sigma * ((self.d_sigma + self.eps_sigma)? * softplus(self.a_sigma)?)?.exp()?)?;
        x.broadcast_sub(&mean.reshape(shape)?)?
            .broadcast_div(&sigma.reshape(shape)?)?
            .broadcast_mul(&sigma2.reshape(shape)?)?
            .broadcast_add(&mu2.reshape(shape)?)
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Var};

    use super::*;
    use crate::nn::gradcheck::{TOLERANCE, max_error, random};

    #[test]
    fn cutmix_pastes_the_box_from_the_partner() {
        let x = random(&[2, 1, 4, 5], 9);
        let perm = Tensor::new(&[1u32, 0], &Device::Cpu).unwrap();
        let (mixed, keep) = cutmix(&x, &perm, (1, 2, 2, 3)).unwrap();
        assert!((keep - (1.0 - 6.0 / 20.0)).abs() < 1e-12);
        assert_eq!(mixed.dims(), x.dims());
        let (mv, xv) = (
            mixed.flatten_from(1).unwrap().to_vec2::<f64>().unwrap(),
            x.flatten_from(1).unwrap().to_vec2::<f64>().unwrap(),
        );
        for (i, image) in mv.iter().enumerate() {
            for y in 0..4 {
                for c in 0..5 {
                    let inside = (1..3).contains(&y) && (2..5).contains(&c);
                    let source = if inside { 1 - i } else { i };
                    assert_eq!(
                        image[y * 5 + c],
                        xv[source][y * 5 + c],
                        "image {i} at ({y}, {c})"
                    );
                }
            }
        }
        assert!(
            max_error(&random(&[2, 1, 4, 5], 10), &|t| Ok(cutmix(
                t,
                &perm,
                (1, 2, 2, 3)
            )?
            .0))
            .unwrap()
                < TOLERANCE
        );
    }

    #[test]
    fn gradient_reversal_flips_and_scales_the_gradient() {
        let x = Var::new(&[1.0f64, 2.0], &Device::Cpu).unwrap();
        let y = grad_reverse(x.as_tensor(), 0.5).unwrap();
        assert_eq!(y.to_vec1::<f64>().unwrap(), [1.0, 2.0]);
        let g = (y * 3.0).unwrap().sum_all().unwrap().backward().unwrap();
        assert_eq!(
            g.get(x.as_tensor()).unwrap().to_vec1::<f64>().unwrap(),
            [-1.5, -1.5]
        );
    }

    #[test]
    fn arcface_matches_its_definition_and_gradient() {
        let e = random(&[3, 4], 1);
        let w = random(&[5, 4], 2);
        let y = Tensor::new(&[0u32, 3, 4], &Device::Cpu).unwrap();
        let logits = arcface_logits(&e, &w, &y, 0.3, 8.0)
            .unwrap()
            .to_vec2::<f64>()
            .unwrap();
        // By hand for row 1: cosines with every class, the target's angle widened by 0.3.
        let ev = e.to_vec2::<f64>().unwrap();
        let wv = w.to_vec2::<f64>().unwrap();
        let norm = |v: &[f64]| v.iter().map(|a| a * a).sum::<f64>().sqrt();
        for j in 0..5 {
            let cos = ev[1].iter().zip(&wv[j]).map(|(a, b)| a * b).sum::<f64>()
                / (norm(&ev[1]) * norm(&wv[j]));
            let expected = if j == 3 {
                8.0 * (cos.acos() + 0.3).cos()
            } else {
                8.0 * cos
            };
            let expected = if j == 3 && cos.acos() + 0.3 > std::f64::consts::PI {
                8.0 * (cos - 0.3 * 0.3f64.sin())
            } else {
                expected
            };
            assert!(
                (logits[1][j] - expected).abs() < 1e-9,
                "class {j}: {} vs {expected}",
                logits[1][j]
            );
        }
        let err = max_error(&e, &|t| arcface_logits(t, &w, &y, 0.3, 8.0)).unwrap();
        assert!(err < TOLERANCE, "embedding {err}");
        let err = max_error(&w, &|t| arcface_logits(&e, t, &y, 0.3, 8.0)).unwrap();
        assert!(err < TOLERANCE, "weight {err}");
    }

    #[test]
    fn js_divergence_values_and_gradient() {
        let a = random(&[2, 3], 3);
        assert!(
            js_divergence(&a, &a)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
                .abs()
                < 1e-12
        );
        // Two certain, disjoint predictions: ln 2.
        let x = Tensor::new(&[[60.0f64, 0.0], [0.0, 60.0]], &Device::Cpu).unwrap();
        let y = Tensor::new(&[[0.0f64, 60.0], [60.0, 0.0]], &Device::Cpu).unwrap();
        let js = js_divergence(&x, &y).unwrap().to_scalar::<f64>().unwrap();
        assert!((js - 2f64.ln()).abs() < 1e-9, "{js}");
        let b = random(&[2, 3], 4);
        assert!(max_error(&a, &|t| js_divergence(t, &b)).unwrap() < TOLERANCE);
    }

    #[test]
    fn mixstyle_swaps_statistics_and_has_the_right_gradient() {
        let x = random(&[2, 3, 4, 4], 5);
        let perm = Tensor::new(&[1u32, 0], &Device::Cpu).unwrap();
        // lambda 0: image 0 takes image 1's statistics entirely.
        let lam = Tensor::new(&[0.0f64, 1.0], &Device::Cpu).unwrap();
        let out = mix_style(&x, &lam, &perm).unwrap();
        let (mu_out, sig_out) = instance_stats(&out, 1e-6).unwrap();
        let (mu_x, sig_x) = instance_stats(&x, 1e-6).unwrap();
        let d = |a: Tensor, b: Tensor| {
            (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        assert!(d(mu_out.get(0).unwrap(), mu_x.get(1).unwrap()) < 1e-9);
        assert!(d(sig_out.get(0).unwrap(), sig_x.get(1).unwrap()) < 1e-5);
        assert!(
            d(out.get(1).unwrap(), x.get(1).unwrap()) < 1e-5,
            "lambda 1 keeps the image"
        );
        // The statistics are constants to the gradient (detached, as in the
        // paper): autograd through mix_style equals finite differences of
        // the mix with the statistics held fixed.
        let lam = Tensor::new(&[0.3f64, 0.8], &Device::Cpu).unwrap();
        let fixed = |t: &Tensor| mix_with_stats(t, &mu_x, &sig_x, &lam, &perm);
        assert!(max_error(&x, &fixed).unwrap() < TOLERANCE);
        let r = random(&[2, 3, 4, 4], 8);
        let grad = |f: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>| {
            let v = Var::from_tensor(&x.copy().unwrap()).unwrap();
            let g = (f(v.as_tensor()).unwrap() * &r)
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            g.get(v.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap()
        };
        let (a, b) = (grad(&|t| mix_style(t, &lam, &perm)), grad(&fixed));
        assert!(a.iter().zip(&b).all(|(p, q)| (p - q).abs() < 1e-9));
    }

    #[test]
    fn abra_perturbation_moves_batch_statistics_and_has_the_right_gradients() {
        let x = random(&[3, 2, 3, 3], 6);
        let zero = Tensor::zeros(2, DType::F64, &Device::Cpu).unwrap();
        let d_mu = Tensor::new(&[1.0f64, -0.5], &Device::Cpu).unwrap();
        let a = Tensor::new(&[0.2f64, -1.0], &Device::Cpu).unwrap();
        let eps = random(&[2], 7);
        let run = |d_mu: &Tensor, a: &Tensor, x: &Tensor| {
            Perturbation {
                d_mu,
                a_mu: a,
                d_sigma: d_mu,
                a_sigma: a,
                eps_mu: &eps,
                eps_sigma: &zero,
            }
            .apply(x)
        };
        // No direction, no noise: the features come back unchanged.
        let quiet = Perturbation {
            d_mu: &zero,
            a_mu: &a,
            d_sigma: &zero,
            a_sigma: &a,
            eps_mu: &zero,
            eps_sigma: &zero,
        };
        let same = (quiet.apply(&x).unwrap() - &x)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        assert!(same.to_scalar::<f64>().unwrap() < 1e-6);
        // The new batch mean is the old one plus the designed shift.
        let out = run(&d_mu, &a, &x).unwrap();
        let (m0, v0) = crate::nn::norm::batch_stats(&x).unwrap();
        let (m1, _) = crate::nn::norm::batch_stats(&out).unwrap();
        let (m0, v0, m1) = (
            m0.to_vec1::<f64>().unwrap(),
            v0.to_vec1::<f64>().unwrap(),
            m1.to_vec1::<f64>().unwrap(),
        );
        let e = eps.to_vec1::<f64>().unwrap();
        let sp = |v: f64| (v.exp() + 1.0).ln();
        let expected = m0[0] + (1.0 + e[0]) * sp(0.2) * (v0[0] + 1e-5).sqrt();
        assert!((m1[0] - expected).abs() < 1e-9, "{} vs {expected}", m1[0]);
        // Gradients: features, direction, magnitude.
        assert!(max_error(&x, &|t| run(&d_mu, &a, t)).unwrap() < TOLERANCE);
        assert!(max_error(&d_mu, &|t| run(t, &a, &x)).unwrap() < TOLERANCE);
        assert!(max_error(&a, &|t| run(&d_mu, t, &x)).unwrap() < TOLERANCE);
    }
}
