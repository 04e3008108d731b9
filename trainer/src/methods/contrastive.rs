//! The losses of SCBD (Supervised Contrastive Block Disentanglement): the
//! supervised contrastive loss of Khosla et al., and the invariance
//! penalty that makes an embedding equally close to examples of its own
//! environment and of the others.
//!
//! Both read one row-wise log-softmax of `z z^T / tau` (`z` L2-normalized,
//! one row per image). As in the reference implementations of SupCon and
//! SCBD, each row's denominator keeps the image's similarity to itself;
//! only the targets leave it out.

use candle_core::{Result, Tensor};

/// `log_softmax(z z^T / tau)` over each row.
fn log_prob(z: &Tensor, tau: f64) -> Result<Tensor> {
    candle_nn::ops::log_softmax(&(z.matmul(&z.t()?)? / tau)?, 1)
}

/// A `[b, b]` tensor of `weight(i, j)` in `z`'s dtype and device.
fn pairwise(z: &Tensor, b: usize, weight: impl Fn(usize, usize) -> f64) -> Result<Tensor> {
    let w: Vec<f64> = (0..b * b).map(|k| weight(k / b, k % b)).collect();
    Tensor::from_vec(w, (b, b), z.device())?.to_dtype(z.dtype())
}

/// Supervised contrastive loss of `z` (`[b, d]`, rows L2-normalized) with
/// `labels`: for each anchor, the cross-entropy of its row against a
/// target uniform over its positives (same label, itself excluded),
/// averaged over the anchors that have a positive. Fails when none has
/// (y-grouped batches always give every anchor one).
pub fn supcon(z: &Tensor, labels: &[u32], tau: f64) -> Result<Tensor> {
    let b = labels.len();
    let positives: Vec<usize> = (0..b)
        .map(|i| (0..b).filter(|&j| j != i && labels[j] == labels[i]).count())
        .collect();
    let anchors = positives.iter().filter(|&&p| p > 0).count();
    if anchors == 0 {
        candle_core::bail!(
            "supervised contrastive loss: no image in the batch shares a label with another"
        );
    }
    let target = pairwise(z, b, |i, j| {
        if i != j && labels[i] == labels[j] {
            1.0 / positives[i] as f64
        } else {
            0.0
        }
    })?;
    (target * log_prob(z, tau)?)?.sum_all()? / -(anchors as f64)
}

/// Invariance penalty of `z` (`[b, d]`, rows L2-normalized) to `envs`:
/// for each anchor, the absolute difference between the mean
/// log-probability over the other images of its environment and over the
/// images of other environments (both means over the full row length
/// `b`), averaged over anchors.
pub fn invariance(z: &Tensor, envs: &[u32], tau: f64) -> Result<Tensor> {
    let b = envs.len();
    let n = b as f64;
    // +1/b on same-environment entries, -1/b on others: a row's weighted
    // sum is the difference of the two means.
    let weight = pairwise(z, b, |i, j| {
        if i == j {
            0.0
        } else if envs[i] == envs[j] {
            1.0 / n
        } else {
            -1.0 / n
        }
    })?;
    (weight * log_prob(z, tau)?)?.sum(1)?.abs()?.mean_all()
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};

    use super::*;
    use crate::nn::gradcheck::{TOLERANCE, max_error, random};

    fn l2(z: &Tensor) -> Result<Tensor> {
        z.broadcast_div(&z.sqr()?.sum_keepdim(1)?.sqrt()?)
    }

    /// Three unit vectors: two equal, one orthogonal, so every
    /// similarity is 1 or 0 and each row's softmax has a closed form.
    fn three() -> Tensor {
        Tensor::new(&[[1.0f64, 0.0], [0.0, 1.0], [1.0, 0.0]], &Device::Cpu).unwrap()
    }

    #[test]
    fn supcon_matches_the_hand_computed_value() {
        // Labels [0, 1, 0]: anchors 0 and 2 have one positive each (the
        // other), whose log-probability in the row [1, 0, 1] at tau = 1 is
        // 1 - ln(2e + 1); anchor 1 has none and is left out.
        let e = std::f64::consts::E;
        let got = supcon(&three(), &[0, 1, 0], 1.0)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let want = (2.0 * e + 1.0).ln() - 1.0;
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        // Temperature scales the logits: at tau = 0.5 the row is [2, 0, 2].
        let got = supcon(&three(), &[0, 1, 0], 0.5)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        let want = (2.0 * e * e + 1.0).ln() - 2.0;
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        // No anchor with a positive: refused.
        assert!(supcon(&three(), &[0, 1, 2], 1.0).is_err());
    }

    #[test]
    fn invariance_matches_the_hand_computed_value() {
        // Environments [0, 0, 1], tau = 1, c = ln(2e + 1), d = ln(e + 2).
        // Row 0 ([1, 0, 1]): same env {1} has -c, other {2} has 1 - c: |(-1)/3|.
        // Row 1 ([0, 1, 0]): same {0} and other {2} both -d: 0.
        // Row 2 ([1, 0, 1]): no same-env image; others {0, 1}: 1 - 2c.
        let e = std::f64::consts::E;
        let c = (2.0 * e + 1.0).ln();
        let want = (1.0 / 3.0 + 0.0 + (2.0 * c - 1.0).abs() / 3.0) / 3.0;
        let got = invariance(&three(), &[0, 0, 1], 1.0)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        // Clustering by environment is penalized far more than the same
        // clusters across environments (about 5.2 against 0.18 at tau = 0.1).
        let (a, b) = ([1.0f64, 0.0], [0.0f64, 1.0]);
        let score = |rows: [[f64; 2]; 4]| {
            let z = Tensor::new(&rows, &Device::Cpu).unwrap();
            invariance(&z, &[0, 0, 1, 1], 0.1)
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        };
        let (by_env, across) = (score([a, a, b, b]), score([a, b, a, b]));
        assert!(by_env > 20.0 * across, "{by_env} vs {across}");
    }

    #[test]
    fn gradients_match_finite_differences() {
        let z = random(&[6, 4], 3);
        let labels = [0, 1, 0, 2, 1, 2];
        let envs = [0, 0, 1, 1, 2, 0];
        let sup = max_error(&z, &|z| supcon(&l2(z)?, &labels, 0.1)).unwrap();
        let inv = max_error(&z, &|z| invariance(&l2(z)?, &envs, 0.1)).unwrap();
        assert!(
            sup < TOLERANCE && inv < TOLERANCE,
            "supcon {sup}, invariance {inv}"
        );
        // And in f32, the dtype training runs in.
        let z32 = l2(&z).unwrap().to_dtype(DType::F32).unwrap();
        let a = supcon(&z32, &labels, 0.1)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        let b = supcon(&l2(&z).unwrap(), &labels, 0.1)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap();
        assert!((f64::from(a) - b).abs() < 1e-5, "{a} vs {b}");
    }
}
