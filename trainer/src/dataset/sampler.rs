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
            SamplerKind::PlateConsistent => {
                let total: usize = self.by_env.iter().map(Vec::len).sum();
                let mut pick = self.rng.random_range(0..total);
                let plate = self
                    .by_env
                    .iter()
                    .find(|g| {
                        let hit = pick < g.len();
                        pick = pick.saturating_sub(g.len());
                        hit
                    })
                    .unwrap_or(&self.by_env[0]);
                distinct(plate, self.batch, &mut self.rng)
            }
            SamplerKind::YGrouped { classes, per_class } => {
                let mut weights: Vec<usize> = self.by_class.iter().map(Vec::len).collect();
                let mut batch = Vec::with_capacity(classes * per_class);
                for _ in 0..classes {
                    let total: usize = weights.iter().sum();
                    let mut pick = self.rng.random_range(0..total);
                    let c = (0..weights.len())
                        .find(|&c| {
                            let hit = pick < weights[c];
                            pick = pick.saturating_sub(weights[c]);
                            hit
                        })
                        .unwrap_or(0);
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

/// IST training pairs: content items balanced over classes and style
/// items balanced over environments, drawn independently of each other.
pub struct PairSampler {
    content: Sampler,
    style: Sampler,
}

impl PairSampler {
    /// Pairs over items with `classes` and `envs`; two independent streams from `seed`.
    pub fn new(
        classes: &[usize],
        envs: &[usize],
        batch: usize,
        seed: u64,
    ) -> Result<PairSampler, SamplerError> {
        Ok(PairSampler {
            content: Sampler::new(SamplerKind::ClassBalanced, classes, envs, batch, seed)?,
            style: Sampler::new(
                SamplerKind::EnvBalanced,
                classes,
                envs,
                batch,
                seed ^ 0x9E37_79B9_7F4A_7C15,
            )?,
        })
    }

    /// The next `(content, style)` index lists, of equal length.
    pub fn next_pairs(&mut self) -> (Vec<usize>, Vec<usize>) {
        (self.content.next_batch(), self.style.next_batch())
    }
}
