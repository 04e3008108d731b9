//! Embedding metrics from the seed papers: kNN batch cross-validation,
//! LISI (iLISI over environments, cLISI over classes), and a 2-D PCA
//! projection for plots. Linear probes are in [`super::probes`].

/// Rows scaled to unit length, so a dot product is a cosine.
fn unit_rows(e: &[Vec<f32>]) -> Vec<Vec<f32>> {
    e.iter()
        .map(|v| {
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            v.iter().map(|x| x / norm).collect()
        })
        .collect()
}

/// kNN batch cross-validation: each query is classified by majority vote
/// of its `k` nearest (cosine) neighbours among the items of *other*
/// environments; the accuracy over `queries`.
pub fn knn_batch_cv(
    e: &[Vec<f32>],
    labels: &[usize],
    envs: &[usize],
    queries: &[usize],
    k: usize,
) -> f64 {
    if queries.is_empty() {
        return 0.0;
    }
    let unit = unit_rows(e);
    let classes = labels.iter().max().map_or(0, |m| m + 1);
    let correct = queries
        .iter()
        .filter(|&&q| {
            let d: Vec<f32> = unit
                .iter()
                .map(|v| 1.0 - v.iter().zip(&unit[q]).map(|(a, b)| a * b).sum::<f32>())
                .collect();
            let mut others: Vec<usize> = (0..e.len()).filter(|&i| envs[i] != envs[q]).collect();
            others.sort_by(|&a, &b| d[a].total_cmp(&d[b]));
            let mut votes = vec![0usize; classes];
            for &i in others.iter().take(k) {
                votes[labels[i]] += 1;
            }
            let best = (0..classes)
                .max_by_key(|&c| (votes[c], std::cmp::Reverse(c)))
                .unwrap_or(0);
            best == labels[q]
        })
        .count();
    correct as f64 / queries.len() as f64
}

/// Mean LISI of `groups` over the items: for each item, the inverse
/// Simpson index of its neighbours' groups with Gaussian weights whose
/// width gives perplexity `perplexity` (Korsunsky et al., Harmony), over
/// the `3 * perplexity` nearest neighbours (Euclidean).
pub fn lisi(e: &[Vec<f32>], groups: &[usize], perplexity: f64) -> f64 {
    let n = e.len();
    if n < 2 {
        return 1.0;
    }
    let k = ((3.0 * perplexity) as usize).min(n - 1).max(1);
    let target = perplexity.min(k as f64).ln();
    let classes = groups.iter().max().map_or(0, |m| m + 1);
    let total: f64 = (0..n)
        .map(|i| {
            let mut d: Vec<(f64, usize)> = (0..n)
                .filter(|&j| j != i)
                .map(|j| {
                    let s: f32 = e[i].iter().zip(&e[j]).map(|(a, b)| (a - b).powi(2)).sum();
                    (s as f64, j)
                })
                .collect();
            d.sort_by(|a, b| a.0.total_cmp(&b.0));
            d.truncate(k);
            let weights = perplexity_weights(&d.iter().map(|x| x.0).collect::<Vec<_>>(), target);
            let mut p = vec![0.0; classes];
            for (w, (_, j)) in weights.iter().zip(&d) {
                p[groups[*j]] += w;
            }
            1.0 / p.iter().map(|x| x * x).sum::<f64>().max(1e-12)
        })
        .sum();
    total / n as f64
}

/// Gaussian weights over squared distances whose entropy is `target`
/// (natural log of the perplexity), by bisection on the precision.
fn perplexity_weights(d2: &[f64], target: f64) -> Vec<f64> {
    let (mut lo, mut hi, mut beta) = (0.0f64, f64::INFINITY, 1.0f64);
    let min = d2.iter().copied().fold(f64::INFINITY, f64::min);
    let mut w = vec![0.0; d2.len()];
    for _ in 0..60 {
        for (wi, &d) in w.iter_mut().zip(d2) {
            *wi = (-(d - min) * beta).exp();
        }
        let sum: f64 = w.iter().sum();
        let entropy: f64 =
            sum.ln() + beta * w.iter().zip(d2).map(|(wi, &d)| wi * (d - min)).sum::<f64>() / sum;
        if (entropy - target).abs() < 1e-5 {
            break;
        }
        if entropy > target {
            lo = beta;
            beta = if hi.is_finite() {
                (beta + hi) / 2.0
            } else {
                beta * 2.0
            };
        } else {
            hi = beta;
            beta = (beta + lo) / 2.0;
        }
    }
    let sum: f64 = w.iter().sum();
    w.iter().map(|x| x / sum).collect()
}

/// The first two principal components of the rows (power iteration on
/// the covariance, deflated), as 2-D points.
pub fn pca_2d(e: &[Vec<f32>]) -> Vec<[f32; 2]> {
    let n = e.len();
    let d = e.first().map_or(0, Vec::len);
    if n == 0 || d == 0 {
        return vec![[0.0, 0.0]; n];
    }
    let mean: Vec<f64> = (0..d)
        .map(|j| e.iter().map(|r| r[j] as f64).sum::<f64>() / n as f64)
        .collect();
    let centred: Vec<Vec<f64>> = e
        .iter()
        .map(|r| r.iter().zip(&mean).map(|(a, m)| *a as f64 - m).collect())
        .collect();
    let mut cov = vec![vec![0.0; d]; d];
    for r in &centred {
        for a in 0..d {
            for b in 0..d {
                cov[a][b] += r[a] * r[b] / n as f64;
            }
        }
    }
    let mut components: Vec<Vec<f64>> = Vec::new();
    for c in 0..2 {
        let mut v: Vec<f64> = (0..d).map(|j| 1.0 + ((j * 7 + c * 3) % 5) as f64).collect();
        for _ in 0..200 {
            let mut next: Vec<f64> = (0..d)
                .map(|a| (0..d).map(|b| cov[a][b] * v[b]).sum())
                .collect();
            for p in &components {
                let dot: f64 = next.iter().zip(p).map(|(x, y)| x * y).sum();
                next.iter_mut().zip(p).for_each(|(x, y)| *x -= dot * y);
            }
            let norm = next.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
            v = next.into_iter().map(|x| x / norm).collect();
        }
        components.push(v);
    }
    centred
        .iter()
        .map(|r| {
            let p = |c: &Vec<f64>| r.iter().zip(c).map(|(a, b)| a * b).sum::<f64>() as f32;
            [p(&components[0]), p(&components[1])]
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two tight clusters far apart; `mixed` decides whether each cluster
    /// holds both groups or one.
    fn clusters(mixed: bool) -> (Vec<Vec<f32>>, Vec<usize>) {
        let mut e = Vec::new();
        let mut g = Vec::new();
        for i in 0..40 {
            let cluster = i / 20;
            let jitter = (i % 7) as f32 * 0.01;
            e.push(vec![10.0 * cluster as f32 + jitter, jitter]);
            g.push(if mixed { i % 2 } else { cluster });
        }
        (e, g)
    }

    #[test]
    fn lisi_is_one_for_pure_neighbourhoods_and_two_for_even_mixing() {
        let (e, g) = clusters(false);
        assert!((lisi(&e, &g, 5.0) - 1.0).abs() < 0.01);
        let (e, g) = clusters(true);
        assert!(
            (lisi(&e, &g, 5.0) - 2.0).abs() < 0.25,
            "{}",
            lisi(&e, &g, 5.0)
        );
    }

    #[test]
    fn knn_batch_cv_uses_only_other_environments() {
        // Labels follow the cluster; environments alternate.
        let (e, _) = clusters(false);
        let labels: Vec<usize> = (0..40).map(|i| i / 20).collect();
        let envs: Vec<usize> = (0..40).map(|i| i % 2).collect();
        let all: Vec<usize> = (0..40).collect();
        assert_eq!(knn_batch_cv(&e, &labels, &envs, &all, 5), 1.0);
        // If each cluster is a single environment, no neighbour of the right class is allowed.
        let envs: Vec<usize> = (0..40).map(|i| i / 20).collect();
        assert_eq!(knn_batch_cv(&e, &labels, &envs, &all, 5), 0.0);
    }

    #[test]
    fn pca_finds_the_direction_of_largest_variance() {
        // Points on a line along (3, 4) with small noise across it.
        let e: Vec<Vec<f32>> = (0..50)
            .map(|i| {
                let t = i as f32 - 25.0;
                let noise = ((i * 13) % 5) as f32 * 0.01;
                vec![3.0 * t - 4.0 * noise, 4.0 * t + 3.0 * noise]
            })
            .collect();
        let p = pca_2d(&e);
        let spread = |k: usize| p.iter().map(|x| x[k].powi(2)).sum::<f32>();
        assert!(spread(0) > 1000.0 * spread(1));
        // The first coordinate is the centred position along the line (up to
        // sign), scaled by |(3,4)| = 5: t = 24 minus the mean t of -0.5.
        assert!((p[49][0].abs() - 5.0 * 24.5).abs() < 0.1, "{:?}", p[49]);
    }
}
