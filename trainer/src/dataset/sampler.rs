//! Minibatch samplers over training items (images), each a different answer
//! to "which images go together in one step":
//! uniform epochs, class-balanced, environment-balanced, plate-consistent
//! (every batch from one plate, as AdaBN/ABRA training on RxRx1 needs),
//! y-grouped (SCBD: k classes, n images each), and content/style pairs
//! (IST: content balanced over y, style balanced over environments,
//! drawn independently).

use std::collections::BTreeMap;

use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Which sampler.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum SamplerKind {
    /// Every item once per epoch, in a new random order each epoch.
    Uniform,
    /// Each slot: a class uniformly, then an item of it.
    ClassBalanced,
    /// Each slot: an environment uniformly, then an item of it.
    EnvBalanced,
    /// Each batch: one environment (plate), chosen in proportion to its
    /// size, then items of it without replacement.
    PlateConsistent,
    /// IST's pairs: `batch` content items balanced over classes, then
    /// `batch` style items balanced over environments, drawn independently.
    ContentStyle,
    /// Each batch: `classes` distinct classes drawn in proportion to their
    /// frequency, `per_class` items of each.
    YGrouped {
        /// Classes per batch (k).
        classes: usize,
        /// Items per class (n).
        per_class: usize,
    },
}

/// Why a sampler cannot be built.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SamplerError {
    /// No items.
    #[error("the sampler has no items to draw from")]
    Empty,
    /// Label and environment lists differ in length.
    #[error("{classes} class labels but {envs} environment labels")]
    Mismatch {
        /// Class labels given.
        classes: usize,
        /// Environment labels given.
        envs: usize,
    },
    /// A batch size of 0.
    #[error("batch size must be at least 1")]
    ZeroBatch,
    /// More classes per batch than the data has.
    #[error("y-grouped batches need {wanted} classes, the training data has {have}")]
    TooFewClasses {
        /// k.
        wanted: usize,
        /// Distinct classes.
        have: usize,
    },
}

/// Draws minibatches of item indices.
pub struct Sampler {
    kind: SamplerKind,
    batch: usize,
    rng: ChaCha8Rng,
    by_class: Vec<Vec<usize>>,
    by_env: Vec<Vec<usize>>,
    order: Vec<usize>,
    cursor: usize,
}

/// Items grouped by key, groups in key order.
fn groups(keys: &[usize]) -> Vec<Vec<usize>> {
    let mut map: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, &k) in keys.iter().enumerate() {
        map.entry(k).or_default().push(i);
    }
    map.into_values().collect()
}

impl Sampler {
    /// A sampler over items with class `classes[i]` and environment
    /// `envs[i]` (the level to balance over, or the plate for
    /// plate-consistent batches). `batch` is ignored by y-grouped
    /// batches, which hold `classes * per_class` items.
    pub fn new(
        kind: SamplerKind,
        classes: &[usize],
        envs: &[usize],
        batch: usize,
        seed: u64,
    ) -> Result<Sampler, SamplerError> {
        if classes.is_empty() {
            return Err(SamplerError::Empty);
        }
        if classes.len() != envs.len() {
            return Err(SamplerError::Mismatch {
                classes: classes.len(),
                envs: envs.len(),
            });
        }
        if batch == 0 {
            return Err(SamplerError::ZeroBatch);
        }
        let by_class = groups(classes);
        if let SamplerKind::YGrouped {
            classes: k,
            per_class,
        } = kind
        {
            if k == 0 || per_class == 0 {
                return Err(SamplerError::ZeroBatch);
            }
            if k > by_class.len() {
                return Err(SamplerError::TooFewClasses {
                    wanted: k,
                    have: by_class.len(),
                });
            }
        }
        Ok(Sampler {
            kind,
            batch,
            rng: ChaCha8Rng::seed_from_u64(seed),
            by_class,
            by_env: groups(envs),
            order: (0..classes.len()).collect(),
            cursor: classes.len(),
        })
    }

    /// The next minibatch.
    pub fn next_batch(&mut self) -> Vec<usize> {
        match self.kind {
            SamplerKind::Uniform => self.uniform(),
            SamplerKind::ClassBalanced => balanced(&self.by_class, self.batch, &mut self.rng),
            SamplerKind::EnvBalanced => balanced(&self.by_env, self.batch, &mut self.rng),
            SamplerKind::ContentStyle => {
                let mut both = balanced(&self.by_class, self.batch, &mut self.rng);
                both.extend(balanced(&self.by_env, self.batch, &mut self.rng));
                both
            }
            SamplerKind::PlateConsistent => {
                let sizes: Vec<usize> = self.by_env.iter().map(Vec::len).collect();
                let plate = weighted_index(&sizes, &mut self.rng);
                distinct(&self.by_env[plate], self.batch, &mut self.rng)
            }
            SamplerKind::YGrouped { classes, per_class } => {
                let mut weights: Vec<usize> = self.by_class.iter().map(Vec::len).collect();
                let mut batch = Vec::with_capacity(classes * per_class);
                for _ in 0..classes {
                    let c = weighted_index(&weights, &mut self.rng);
                    // Without replacement: a class is drawn once per batch.
                    weights[c] = 0;
                    batch.extend(distinct(&self.by_class[c], per_class, &mut self.rng));
                }
                batch
            }
        }
    }

    fn uniform(&mut self) -> Vec<usize> {
        let mut batch = Vec::with_capacity(self.batch);
        while batch.len() < self.batch {
            if self.cursor == self.order.len() {
                self.order.shuffle(&mut self.rng);
                self.cursor = 0;
            }
            let take = (self.batch - batch.len()).min(self.order.len() - self.cursor);
            batch.extend_from_slice(&self.order[self.cursor..self.cursor + take]);
            self.cursor += take;
        }
        batch
    }
}

/// An index drawn with probability proportional to its weight (the
/// weights sum to more than 0: every group and kept class has items).
fn weighted_index(weights: &[usize], rng: &mut impl Rng) -> usize {
    let mut pick = rng.random_range(0..weights.iter().sum::<usize>());
    for (i, &w) in weights.iter().enumerate() {
        if pick < w {
            return i;
        }
        pick -= w;
    }
    // Unreachable: pick is below the sum of the weights.
    weights.len() - 1
}

/// `n` slots, each: a group uniformly, then an item of it uniformly.
fn balanced(groups: &[Vec<usize>], n: usize, rng: &mut impl Rng) -> Vec<usize> {
    (0..n)
        .map(|_| {
            let g = &groups[rng.random_range(0..groups.len())];
            g[rng.random_range(0..g.len())]
        })
        .collect()
}

/// `n` items of `group`, distinct while the group is large enough.
fn distinct(group: &[usize], n: usize, rng: &mut impl Rng) -> Vec<usize> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let take = (n - out.len()).min(group.len());
        out.extend(group.choose_multiple(rng, take).copied());
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    /// 100 items: class = i % 4 with class 0 four times as frequent, env = i / 25.
    fn skewed() -> (Vec<usize>, Vec<usize>) {
        let classes: Vec<usize> = (0..100)
            .map(|i| if i < 55 { 0 } else { 1 + i % 3 })
            .collect();
        let envs: Vec<usize> = (0..100)
            .map(|i| if i < 70 { 0 } else { 1 + i % 2 })
            .collect();
        (classes, envs)
    }

    fn frequencies(batches: &[Vec<usize>], key: &[usize]) -> BTreeMap<usize, f64> {
        let total: usize = batches.iter().map(Vec::len).sum();
        let mut f = BTreeMap::new();
        for &i in batches.iter().flatten() {
            *f.entry(key[i]).or_insert(0.0) += 1.0 / total as f64;
        }
        f
    }

    #[test]
    fn uniform_visits_every_item_once_per_epoch() {
        let (classes, envs) = skewed();
        let mut s = Sampler::new(SamplerKind::Uniform, &classes, &envs, 30, 1).unwrap();
        // 10 batches of 30 = exactly 3 epochs of 100.
        let all: Vec<usize> = (0..10).flat_map(|_| s.next_batch()).collect();
        for epoch in all.chunks(100) {
            let seen: BTreeSet<usize> = epoch.iter().copied().collect();
            assert_eq!(seen.len(), 100);
        }
        assert_ne!(&all[..100], &all[100..200], "each epoch is reshuffled");
    }

    #[test]
    fn balanced_samplers_equalize_skewed_groups() {
        let (classes, envs) = skewed();
        let mut s = Sampler::new(SamplerKind::ClassBalanced, &classes, &envs, 32, 2).unwrap();
        let batches: Vec<Vec<usize>> = (0..300).map(|_| s.next_batch()).collect();
        for (_, f) in frequencies(&batches, &classes) {
            assert!((f - 0.25).abs() < 0.03, "class frequency {f}");
        }
        let mut s = Sampler::new(SamplerKind::EnvBalanced, &classes, &envs, 32, 2).unwrap();
        let batches: Vec<Vec<usize>> = (0..300).map(|_| s.next_batch()).collect();
        for (_, f) in frequencies(&batches, &envs) {
            assert!((f - 1.0 / 3.0).abs() < 0.03, "environment frequency {f}");
        }
    }

    #[test]
    fn plate_consistent_batches_never_mix_plates() {
        let (classes, envs) = skewed();
        let mut s = Sampler::new(SamplerKind::PlateConsistent, &classes, &envs, 16, 3).unwrap();
        let mut per_plate = BTreeMap::new();
        for _ in 0..400 {
            let b = s.next_batch();
            assert_eq!(b.len(), 16);
            let plates: BTreeSet<usize> = b.iter().map(|&i| envs[i]).collect();
            assert_eq!(plates.len(), 1, "batch mixes plates {plates:?}");
            // Without replacement up to the plate's size (70, 15 and 15 items).
            let distinct: BTreeSet<usize> = b.iter().copied().collect();
            let size = envs.iter().filter(|&&e| e == envs[b[0]]).count();
            assert_eq!(distinct.len(), size.min(16));
            *per_plate.entry(envs[b[0]]).or_insert(0) += 1;
        }
        // Plates are drawn in proportion to their size (70 / 15 / 15).
        assert!(
            (per_plate[&0] as f64 / 400.0 - 0.7).abs() < 0.08,
            "{per_plate:?}"
        );
        assert!(per_plate.len() == 3);
    }

    #[test]
    fn y_grouped_batches_hold_k_classes_of_n() {
        let (classes, envs) = skewed();
        let kind = SamplerKind::YGrouped {
            classes: 2,
            per_class: 5,
        };
        let mut s = Sampler::new(kind, &classes, &envs, 999, 4).unwrap();
        let mut with_class0 = 0;
        for _ in 0..300 {
            let b = s.next_batch();
            assert_eq!(b.len(), 10);
            let mut counts: BTreeMap<usize, usize> = BTreeMap::new();
            for &i in &b {
                *counts.entry(classes[i]).or_insert(0) += 1;
            }
            assert_eq!(counts.values().copied().collect::<Vec<_>>(), vec![5, 5]);
            with_class0 += usize::from(counts.contains_key(&0));
        }
        // Drawn by frequency: the class with 55% of the items is in most batches.
        assert!(with_class0 > 240, "class 0 in {with_class0} of 300 batches");
        let too_many = SamplerKind::YGrouped {
            classes: 5,
            per_class: 2,
        };
        assert_eq!(
            Sampler::new(too_many, &classes, &envs, 8, 0).err(),
            Some(SamplerError::TooFewClasses { wanted: 5, have: 4 })
        );
    }

    #[test]
    fn content_style_pairs_decorrelate_class_and_environment() {
        // Perfect confounding in the data: class c lives only in environment c.
        let classes: Vec<usize> = (0..120).map(|i| i % 3).collect();
        let envs = classes.clone();
        let mut s = Sampler::new(SamplerKind::ContentStyle, &classes, &envs, 32, 5).unwrap();
        let mut table = [[0usize; 3]; 3];
        for _ in 0..400 {
            let both = s.next_batch();
            assert_eq!(both.len(), 64);
            let (content, style) = both.split_at(32);
            for (c, st) in content.iter().zip(style) {
                table[classes[*c]][envs[*st]] += 1;
            }
        }
        // Every (content class, style environment) pair is about equally frequent.
        let expected = 400.0 * 32.0 / 9.0;
        for row in table {
            for n in row {
                assert!((n as f64 / expected - 1.0).abs() < 0.1, "{table:?}");
            }
        }
    }

    #[test]
    fn bad_inputs_are_refused() {
        assert_eq!(
            Sampler::new(SamplerKind::Uniform, &[], &[], 4, 0).err(),
            Some(SamplerError::Empty)
        );
        assert_eq!(
            Sampler::new(SamplerKind::Uniform, &[0, 1], &[0], 4, 0).err(),
            Some(SamplerError::Mismatch {
                classes: 2,
                envs: 1
            })
        );
        assert_eq!(
            Sampler::new(SamplerKind::Uniform, &[0], &[0], 0, 0).err(),
            Some(SamplerError::ZeroBatch)
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_batches() {
        let (classes, envs) = skewed();
        let draw = |seed| {
            let mut s = Sampler::new(SamplerKind::ClassBalanced, &classes, &envs, 8, seed).unwrap();
            (0..5).map(|_| s.next_batch()).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }
}
