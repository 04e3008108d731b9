//! What an embedding still knows about the batch, and what it recovers of
//! the biology: linear probes predicting the plate and the plate-well
//! (SCBD's batch-effect sensitivity; lower is better), and recovery of
//! known relationships between classes (SCBD's CORUM task, here against
//! the class families of a synthetic screen's `design.json`).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::linear::{FitOptions, LogisticRegression, macro_f1};

/// Share of each group's items the probe trains on (the rest test it).
pub const PROBE_TRAIN_SHARE: f64 = 0.6;

/// A linear probe's scores on its held-out items.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Probe {
    /// Macro-F1 over the groups in the held-out items.
    pub macro_f1: f64,
    /// Mean one-vs-rest AUROC over those groups.
    pub auroc: f64,
    /// Groups.
    pub groups: usize,
}

/// How well the batch can be read from an embedding.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BatchSensitivity {
    /// Images probed.
    pub images: usize,
    /// Predicting the plate.
    pub plate: Probe,
    /// Predicting the plate-well.
    pub plate_well: Probe,
}

/// Relationship recovery against known class families.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Relationships {
    /// Area under the precision-recall curve (average precision) of
    /// ranking class pairs by similarity, "same family" the positives.
    pub auprc: f64,
    /// Class pairs scored.
    pub pairs: usize,
    /// Of them, pairs of one family (the AUPRC of a random ranking).
    pub related: usize,
}

/// A logistic regression predicting `groups` from the embeddings, trained
/// on the first 60% (rounded, at least one, and one fewer than all) of
/// each group's items and tested on the rest; `None` when fewer than two
/// groups or no held-out item remain.
pub fn group_probe(e: &[Vec<f32>], groups: &[usize]) -> Option<Probe> {
    let classes = groups.iter().max().map_or(0, |m| m + 1);
    let mut size = vec![0usize; classes];
    groups.iter().for_each(|&g| size[g] += 1);
    let mut seen = vec![0usize; classes];
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for (i, &g) in groups.iter().enumerate() {
        // At least one item trains and, from two items on, one tests.
        let keep = ((size[g] as f64 * PROBE_TRAIN_SHARE).round() as usize)
            .clamp(1, size[g].saturating_sub(1).max(1));
        if seen[g] < keep {
            &mut train
        } else {
            &mut test
        }
        .push(i);
        seen[g] += 1;
    }
    if test.is_empty() || size.iter().filter(|&&n| n > 0).count() < 2 {
        return None;
    }
    let x = |idx: &[usize]| -> Vec<Vec<f64>> {
        idx.iter()
            .map(|&i| e[i].iter().map(|&v| v as f64).collect())
            .collect()
    };
    let y: Vec<usize> = train.iter().map(|&i| groups[i]).collect();
    let model = LogisticRegression::fit(&x(&train), &y, classes, FitOptions::default());
    let truth: Vec<usize> = test.iter().map(|&i| groups[i]).collect();
    let proba: Vec<Vec<f64>> = x(&test).iter().map(|r| model.predict_proba(r)).collect();
    let predicted: Vec<usize> = proba.iter().map(|p| crate::linear::argmax(p)).collect();
    let mut present: Vec<usize> = truth.clone();
    present.sort_unstable();
    present.dedup();
    let aucs: Vec<f64> = present
        .iter()
        .filter_map(|&g| {
            let scores: Vec<f64> = proba.iter().map(|p| p[g]).collect();
            let positive: Vec<bool> = truth.iter().map(|&t| t == g).collect();
            auroc(&scores, &positive)
        })
        .collect();
    Some(Probe {
        macro_f1: macro_f1(&truth, &predicted),
        auroc: aucs.iter().sum::<f64>() / aucs.len().max(1) as f64,
        groups: present.len(),
    })
}

/// Area under the ROC curve: the chance that a random positive scores
/// above a random negative (ties count half); `None` without both.
pub fn auroc(scores: &[f64], positive: &[bool]) -> Option<f64> {
    let (mut wins, mut pairs) = (0.0, 0usize);
    for (i, &p) in positive.iter().enumerate() {
        if !p {
            continue;
        }
        for (j, &q) in positive.iter().enumerate() {
            if q {
                continue;
            }
            pairs += 1;
            wins += match scores[i].partial_cmp(&scores[j]) {
                Some(std::cmp::Ordering::Greater) => 1.0,
                Some(std::cmp::Ordering::Equal) => 0.5,
                _ => 0.0,
            };
        }
    }
    (pairs > 0).then(|| wins / pairs as f64)
}

/// Average precision of ranking by `scores` (highest first): the mean
/// over positives of the precision at their rank; `None` without positives.
pub fn average_precision(scores: &[f64], positive: &[bool]) -> Option<f64> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    let (mut hits, mut sum) = (0usize, 0.0);
    for (rank, &i) in order.iter().enumerate() {
        if positive[i] {
            hits += 1;
            sum += hits as f64 / (rank + 1) as f64;
        }
    }
    (hits > 0).then(|| sum / hits as f64)
}

/// Relationship recovery: each class embedded as the mean of its images,
/// the controls' mean subtracted, every dimension standardized across the
/// perturbed classes; pairs scored by cosine similarity and ranked
/// against "same family". `family[c]` is class `c`'s family (`None` for
/// controls); `None` when there are no controls or no related pair.
pub fn relationship_recovery(
    e: &[Vec<f32>],
    classes: &[usize],
    family: &[Option<String>],
) -> Option<Relationships> {
    let d = e.first()?.len();
    let mean = |keep: &dyn Fn(usize) -> bool| -> Option<Vec<f64>> {
        let rows: Vec<&Vec<f32>> = (0..e.len())
            .filter(|&i| keep(classes[i]))
            .map(|i| &e[i])
            .collect();
        (!rows.is_empty()).then(|| {
            (0..d)
                .map(|j| rows.iter().map(|r| r[j] as f64).sum::<f64>() / rows.len() as f64)
                .collect()
        })
    };
    let control = mean(&|c| family[c].is_none())?;
    let members: Vec<(usize, Vec<f64>)> = (0..family.len())
        .filter(|&c| family[c].is_some())
        .filter_map(|c| mean(&|k| k == c).map(|m| (c, m)))
        .map(|(c, m)| (c, m.iter().zip(&control).map(|(a, b)| a - b).collect()))
        .collect();
    let n = members.len() as f64;
    let mut profiles: Vec<Vec<f64>> = members.iter().map(|(_, m)| m.clone()).collect();
    for j in 0..d {
        let mu = profiles.iter().map(|p| p[j]).sum::<f64>() / n;
        let sd = (profiles.iter().map(|p| (p[j] - mu).powi(2)).sum::<f64>() / n).sqrt();
        for p in &mut profiles {
            p[j] = if sd > 0.0 { (p[j] - mu) / sd } else { 0.0 };
        }
    }
    let cosine = |a: &[f64], b: &[f64]| {
        let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
        dot / (norm(a) * norm(b))
    };
    let (mut scores, mut related) = (Vec::new(), Vec::new());
    for a in 0..members.len() {
        for b in a + 1..members.len() {
            scores.push(cosine(&profiles[a], &profiles[b]));
            related.push(family[members[a].0] == family[members[b].0]);
        }
    }
    Some(Relationships {
        auprc: average_precision(&scores, &related)?,
        pairs: scores.len(),
        related: related.iter().filter(|&&r| r).count(),
    })
}

/// The family of each of `classes` from a synthetic screen's
/// `design.json` in `root` (format 2 or later); `None` for screens
/// without one (real data) or whose design predates families.
pub fn design_families(root: &Path, classes: &[String]) -> Option<Vec<Option<String>>> {
    let text = std::fs::read_to_string(root.join(crate::synth::DESIGN_FILE)).ok()?;
    let design: crate::synth::Design = serde_json::from_str(&text).ok()?;
    if design.format_version < 2 {
        return None;
    }
    let by_name: BTreeMap<&str, &Option<String>> = design
        .classes
        .iter()
        .map(|c| (c.name.as_str(), &c.family))
        .collect();
    classes
        .iter()
        .map(|c| by_name.get(c.as_str()).map(|f| (*f).clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auroc_and_average_precision_match_hand_counts() {
        // Positives at scores 0.9 and 0.4; negatives 0.8, 0.4, 0.1.
        let scores = [0.9, 0.8, 0.4, 0.4, 0.1];
        let positive = [true, false, true, false, false];
        // Pairs won: 0.9 beats all 3; 0.4 beats 0.1, ties 0.4: 1.5 -> 4.5 / 6.
        assert_eq!(auroc(&scores, &positive), Some(0.75));
        // Ranks 1 and 3 (the tie keeps input order): (1/1 + 2/3) / 2.
        let ap = average_precision(&scores, &positive).unwrap();
        assert!((ap - (1.0 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
        assert_eq!(auroc(&scores, &[false; 5]), None);
        assert_eq!(average_precision(&scores, &[false; 5]), None);
    }

    #[test]
    fn group_probe_reads_separable_groups_and_not_noise() {
        // Three groups of 5 items, one-hot apart: perfectly separable.
        let groups: Vec<usize> = (0..15).map(|i| i / 5).collect();
        let e: Vec<Vec<f32>> = groups
            .iter()
            .enumerate()
            .map(|(i, &g)| {
                let mut v = vec![0.01 * (i % 5) as f32; 3];
                v[g] += 1.0;
                v
            })
            .collect();
        let p = group_probe(&e, &groups).unwrap();
        assert_eq!((p.macro_f1, p.auroc, p.groups), (1.0, 1.0, 3));
        // Features that ignore the group: no better than chance.
        let e: Vec<Vec<f32>> = (0..15).map(|i| vec![(i % 5) as f32]).collect();
        let p = group_probe(&e, &groups).unwrap();
        assert!(p.auroc <= 0.5 + 1e-9, "{p:?}");
        assert!(group_probe(&e, &[0; 15]).is_none());
    }

    #[test]
    fn relationships_rank_family_members_first() {
        // Control at 0; family A along +x, family B along +y (with a
        // little of their own), a singleton along -x-y.
        let profiles = [
            (0, vec![0.0, 0.0, 0.0]),
            (1, vec![1.0, 0.1, 0.0]),
            (2, vec![1.0, -0.1, 0.2]),
            (3, vec![0.0, 1.0, 0.1]),
            (4, vec![0.1, 1.0, -0.1]),
            (5, vec![-1.0, -1.0, 0.0]),
        ];
        let mut e = Vec::new();
        let mut classes = Vec::new();
        for (c, p) in &profiles {
            for k in 0..3 {
                e.push(p.iter().map(|v| v + 0.001 * k as f32).collect());
                classes.push(*c);
            }
        }
        let family = [None, Some("A"), Some("A"), Some("B"), Some("B"), Some("C")]
            .map(|f| f.map(str::to_owned));
        let r = relationship_recovery(&e, &classes, &family).unwrap();
        assert_eq!((r.pairs, r.related), (10, 2));
        assert_eq!(r.auprc, 1.0);
        // Families that cut across the profiles rank no better than chance.
        let family = [None, Some("A"), Some("B"), Some("A"), Some("B"), Some("C")]
            .map(|f| f.map(str::to_owned));
        let r = relationship_recovery(&e, &classes, &family).unwrap();
        assert!(r.auprc < 0.5, "{r:?}");
    }
}
