//! Linear probes: multinomial logistic regression on standardized features,
//! and the classification metrics the papers report (accuracy, macro-F1).
//! Used to calibrate synthetic screens and, in evaluation, to measure how
//! much batch information an embedding still carries.

/// A fitted multinomial logistic regression.
#[derive(Clone, Debug)]
pub struct LogisticRegression {
    mean: Vec<f64>,
    scale: Vec<f64>,
    /// `classes x (features + 1)`, bias last.
    weights: Vec<Vec<f64>>,
}

/// Fitting options.
#[derive(Clone, Copy, Debug)]
pub struct FitOptions {
    /// L2 penalty on the weights (not the bias), per sample.
    pub l2: f64,
    /// Full-batch optimizer iterations.
    pub iterations: usize,
    /// Adam step size.
    pub learning_rate: f64,
}

impl Default for FitOptions {
    fn default() -> Self {
        FitOptions {
            l2: 1e-3,
            iterations: 400,
            learning_rate: 0.05,
        }
    }
}

impl LogisticRegression {
    /// Fit on rows `x` (all the same length) with labels `y < classes`.
    /// Features are standardized with the training mean and std.
    ///
    /// # Panics
    /// If `x` is empty, rows differ in length, or a label is out of range
    /// (callers build both from one dataset).
    pub fn fit(
        x: &[Vec<f64>],
        y: &[usize],
        classes: usize,
        options: FitOptions,
    ) -> LogisticRegression {
        assert!(
            !x.is_empty() && x.len() == y.len(),
            "one label per non-empty row"
        );
        assert!(
            y.iter().all(|&c| c < classes),
            "labels below the class count"
        );
        let d = x[0].len();
        let n = x.len() as f64;
        let mean: Vec<f64> = (0..d)
            .map(|j| x.iter().map(|r| r[j]).sum::<f64>() / n)
            .collect();
        let scale: Vec<f64> = (0..d)
            .map(|j| {
                let var = x.iter().map(|r| (r[j] - mean[j]).powi(2)).sum::<f64>() / n;
                if var > 1e-12 { var.sqrt() } else { 1.0 }
            })
            .collect();
        let mut model = LogisticRegression {
            mean,
            scale,
            weights: vec![vec![0.0; d + 1]; classes],
        };
        let z: Vec<Vec<f64>> = x.iter().map(|r| model.standardize(r)).collect();
        // Adam on the mean cross-entropy plus the L2 term.
        let (b1, b2, eps) = (0.9, 0.999, 1e-8);
        let mut m = vec![vec![0.0; d + 1]; classes];
        let mut v = vec![vec![0.0; d + 1]; classes];
        for t in 1..=options.iterations {
            let mut grad = vec![vec![0.0; d + 1]; classes];
            for (row, &label) in z.iter().zip(y) {
                let p = model.softmax(row);
                for (k, g) in grad.iter_mut().enumerate() {
                    let err = p[k] - if k == label { 1.0 } else { 0.0 };
                    for j in 0..d {
                        g[j] += err * row[j];
                    }
                    g[d] += err;
                }
            }
            for k in 0..classes {
                for j in 0..=d {
                    let mut g = grad[k][j] / n;
                    if j < d {
                        g += options.l2 * model.weights[k][j];
                    }
                    m[k][j] = b1 * m[k][j] + (1.0 - b1) * g;
                    v[k][j] = b2 * v[k][j] + (1.0 - b2) * g * g;
                    let mh = m[k][j] / (1.0 - b1.powi(t as i32));
                    let vh = v[k][j] / (1.0 - b2.powi(t as i32));
                    model.weights[k][j] -= options.learning_rate * mh / (vh.sqrt() + eps);
                }
            }
        }
        model
    }

    /// The model as one affine map of raw features: `(weights, bias)`
    /// with `logits = weights * row + bias` (the standardization folded in).
    pub fn affine(&self) -> (Vec<Vec<f64>>, Vec<f64>) {
        let d = self.mean.len();
        let weights: Vec<Vec<f64>> = self
            .weights
            .iter()
            .map(|w| (0..d).map(|j| w[j] / self.scale[j]).collect())
            .collect();
        let bias = self
            .weights
            .iter()
            .zip(&weights)
            .map(|(w, raw)| w[d] - (0..d).map(|j| raw[j] * self.mean[j]).sum::<f64>())
            .collect();
        (weights, bias)
    }

    fn standardize(&self, row: &[f64]) -> Vec<f64> {
        row.iter()
            .zip(self.mean.iter().zip(&self.scale))
            .map(|(x, (m, s))| (x - m) / s)
            .collect()
    }

    /// Class probabilities of a standardized row.
    fn softmax(&self, z: &[f64]) -> Vec<f64> {
        let logits: Vec<f64> = self
            .weights
            .iter()
            .map(|w| w[..z.len()].iter().zip(z).map(|(a, b)| a * b).sum::<f64>() + w[z.len()])
            .collect();
        let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let exp: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
        let total: f64 = exp.iter().sum();
        exp.into_iter().map(|e| e / total).collect()
    }

    /// Class probabilities of a raw feature row.
    pub fn predict_proba(&self, row: &[f64]) -> Vec<f64> {
        self.softmax(&self.standardize(row))
    }

    /// Most probable class of a raw feature row.
    pub fn predict(&self, row: &[f64]) -> usize {
        argmax(&self.predict_proba(row))
    }
}

/// Index of the largest value (the first on ties; 0 for an empty slice).
pub fn argmax(values: &[f64]) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best
}

/// Mean and population standard deviation; `None` for no values.
pub fn mean_std(v: &[f64]) -> Option<(f64, f64)> {
    if v.is_empty() {
        return None;
    }
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64;
    Some((m, var.sqrt()))
}

/// Fraction of predictions equal to the truth (0 for no predictions).
pub fn accuracy(truth: &[usize], predicted: &[usize]) -> f64 {
    if truth.is_empty() {
        return 0.0;
    }
    truth.iter().zip(predicted).filter(|(a, b)| a == b).count() as f64 / truth.len() as f64
}

/// Macro-F1 over the classes present in `truth` (a class never true but
/// predicted lowers precision of nothing it is averaged over, as in
/// scikit-learn with `labels` = the true classes).
pub fn macro_f1(truth: &[usize], predicted: &[usize]) -> f64 {
    let mut classes: Vec<usize> = truth.to_vec();
    classes.sort_unstable();
    classes.dedup();
    if classes.is_empty() {
        return 0.0;
    }
    let f1 = |c: usize| {
        let tp = truth
            .iter()
            .zip(predicted)
            .filter(|&(&t, &p)| t == c && p == c)
            .count() as f64;
        let fp = truth
            .iter()
            .zip(predicted)
            .filter(|&(&t, &p)| t != c && p == c)
            .count() as f64;
        let fn_ = truth
            .iter()
            .zip(predicted)
            .filter(|&(&t, &p)| t == c && p != c)
            .count() as f64;
        if tp == 0.0 {
            0.0
        } else {
            2.0 * tp / (2.0 * tp + fp + fn_)
        }
    };
    classes.iter().map(|&c| f1(c)).sum::<f64>() / classes.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separable_classes_are_learned_and_noise_is_not() {
        // Three Gaussian blobs in 2-D plus a pure-noise feature.
        let mut x = Vec::new();
        let mut y = Vec::new();
        let centres = [(0.0, 0.0), (4.0, 0.0), (0.0, 4.0)];
        for i in 0..300 {
            let c = i % 3;
            let jitter = |k: usize| ((i * 7919 + k * 104_729) % 1000) as f64 / 1000.0 - 0.5;
            x.push(vec![
                centres[c].0 + jitter(1),
                centres[c].1 + jitter(2),
                100.0 * jitter(3),
            ]);
            y.push(c);
        }
        let model = LogisticRegression::fit(&x, &y, 3, FitOptions::default());
        let predicted: Vec<usize> = x.iter().map(|r| model.predict(r)).collect();
        assert_eq!(accuracy(&y, &predicted), 1.0);
        // The folded affine map gives the same probabilities on raw rows.
        let (w, b) = model.affine();
        for row in x.iter().step_by(37) {
            let logits: Vec<f64> = w
                .iter()
                .zip(&b)
                .map(|(wc, bc)| wc.iter().zip(row).map(|(a, v)| a * v).sum::<f64>() + bc)
                .collect();
            let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let total: f64 = logits.iter().map(|l| (l - max).exp()).sum();
            for (l, p) in logits.iter().zip(model.predict_proba(row)) {
                assert!(((l - max).exp() / total - p).abs() < 1e-9);
            }
        }
        // Labels unrelated to the features are predicted at about chance.
        let shuffled: Vec<usize> = (0..300).map(|i| (i * 31 / 7) % 3).collect();
        let noise_model =
            LogisticRegression::fit(&x[..150], &shuffled[..150], 3, FitOptions::default());
        let p: Vec<usize> = x[150..].iter().map(|r| noise_model.predict(r)).collect();
        assert!(accuracy(&shuffled[150..], &p) < 0.6);
    }

    #[test]
    fn macro_f1_matches_hand_computed_values() {
        // Class 0: tp 2, fp 1, fn 0 -> 0.8; class 1: tp 1, fp 0, fn 1 -> 2/3.
        let truth = [0, 0, 1, 1];
        let predicted = [0, 0, 0, 1];
        assert!((macro_f1(&truth, &predicted) - (0.8 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
        assert_eq!(accuracy(&truth, &predicted), 0.75);
        assert_eq!(macro_f1(&[], &[]), 0.0);
    }
}
