//! Train/validation/test splits at the IST paper's levels of generalization.
//!
//! - IID: held-out wells of the training environments, 5 folds stratified
//!   by plate and label.
//! - Level 1, `section`: fold k holds out the k-th section of every plate.
//! - Level 2, `plate`: fold k holds out plate k.
//! - Level 3, `series`: fold k holds out series k.
//!
//! A fold's test units never appear in its training or validation rows.
//! Validation is a tenth of the remaining wells (training-domain
//! validation, as DomainBed does), again stratified by plate and label.

use std::collections::{BTreeMap, BTreeSet};

pub use bfx_config::trainer::SplitLevel;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use thiserror::Error;

use super::manifest::{EnvLevel, SiteRow};

/// Every level, in the order reports list them.
pub const LEVELS: [SplitLevel; 4] = [
    SplitLevel::Iid,
    SplitLevel::Section,
    SplitLevel::Plate,
    SplitLevel::Series,
];

/// Folds of the IID level.
pub const IID_FOLDS: usize = 5;
/// One validation well in this many.
const VALIDATION_EVERY: usize = 10;
/// Fixed seed of the well shuffles: folds are a property of the dataset,
/// not of a training run, so every method and seed sees the same folds.
const FOLD_SEED: u64 = 0x5EED_F01D;

/// A split of a manifest's rows.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Split {
    /// Level.
    pub level: &'static str,
    /// Fold.
    pub fold: usize,
    /// Folds at this level.
    pub folds: usize,
    /// Held-out units: wells (`plate/well`) for IID, else environments.
    pub held_out: Vec<String>,
    /// Row indices for training.
    pub train: Vec<usize>,
    /// Row indices for validation (training environments).
    pub val: Vec<usize>,
    /// Row indices for testing.
    pub test: Vec<usize>,
    /// Test labels that never occur in training (a model cannot predict them).
    pub unseen_labels: Vec<String>,
}

/// Why a split cannot be made.
#[derive(Debug, Error, PartialEq)]
pub enum SplitError {
    /// The manifest lacks the level's column.
    #[error("{level} splits need a `{column}` column in the manifest")]
    MissingLevel {
        /// Level name.
        level: &'static str,
        /// Column name.
        column: &'static str,
    },
    /// Fewer than two units to hold out from.
    #[error("{level} splits need at least two {unit}s, the manifest has {count}")]
    TooFew {
        /// Level name.
        level: &'static str,
        /// What is held out.
        unit: &'static str,
        /// How many there are.
        count: usize,
    },
    /// The fold does not exist.
    #[error("fold {fold} does not exist: the {level} level has folds 0..{folds}")]
    NoFold {
        /// Level name.
        level: &'static str,
        /// Requested fold.
        fold: usize,
        /// Number of folds.
        folds: usize,
    },
}

/// Level name as configs and reports write it.
pub fn level_name(level: SplitLevel) -> &'static str {
    match level {
        SplitLevel::Iid => "iid",
        SplitLevel::Section => "section",
        SplitLevel::Plate => "plate",
        SplitLevel::Series => "series",
    }
}

/// The environment level whose units a split level holds out.
pub fn unit_level(level: SplitLevel) -> EnvLevel {
    match level {
        SplitLevel::Iid => EnvLevel::Well,
        SplitLevel::Section => EnvLevel::Section,
        SplitLevel::Plate => EnvLevel::Plate,
        SplitLevel::Series => EnvLevel::Series,
    }
}

/// The held-out units of every fold at `level`.
pub fn fold_units(rows: &[SiteRow], level: SplitLevel) -> Result<Vec<Vec<String>>, SplitError> {
    let name = level_name(level);
    let unit = unit_level(level);
    let missing = || SplitError::MissingLevel {
        level: name,
        column: unit.name(),
    };
    let units: BTreeSet<String> = rows
        .iter()
        .map(|r| r.env(unit).ok_or_else(missing))
        .collect::<Result<_, _>>()?;
    if units.len() < 2 {
        return Err(SplitError::TooFew {
            level: name,
            unit: unit.name(),
            count: units.len(),
        });
    }
    Ok(match level {
        SplitLevel::Iid => {
            let mut folds = vec![Vec::new(); IID_FOLDS.min(units.len())];
            let n = folds.len();
            for (i, well) in stratified_wells(rows, &BTreeSet::new())
                .into_iter()
                .enumerate()
            {
                folds[i % n].push(well);
            }
            folds.iter_mut().for_each(|f| f.sort());
            folds
        }
        SplitLevel::Section => {
            // Fold k: the k-th section (in name order) of every plate.
            let mut per_plate: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
            for r in rows {
                per_plate.entry(&r.plate).or_default().extend(r.env(unit));
            }
            let n = per_plate.values().map(BTreeSet::len).max().unwrap_or(0);
            let mut folds = vec![Vec::new(); n];
            for sections in per_plate.values() {
                for (k, s) in sections.iter().enumerate() {
                    folds[k].push(s.clone());
                }
            }
            folds
        }
        SplitLevel::Plate | SplitLevel::Series => units.into_iter().map(|u| vec![u]).collect(),
    })
}

impl Split {
    /// Split `rows` for `fold` of `level`.
    pub fn new(rows: &[SiteRow], level: SplitLevel, fold: usize) -> Result<Split, SplitError> {
        let folds = fold_units(rows, level)?;
        let held_out = folds.get(fold).cloned().ok_or(SplitError::NoFold {
            level: level_name(level),
            fold,
            folds: folds.len(),
        })?;
        let unit = unit_level(level);
        let held: BTreeSet<&String> = held_out.iter().collect();
        // fold_units checked that every row has the level.
        let is_test = |r: &SiteRow| r.env(unit).is_some_and(|u| held.contains(&u));
        let test: Vec<usize> = (0..rows.len()).filter(|&i| is_test(&rows[i])).collect();
        let test_wells: BTreeSet<String> = test
            .iter()
            .filter_map(|&i| rows[i].env(EnvLevel::Well))
            .collect();
        let val_wells: BTreeSet<String> = stratified_wells(rows, &test_wells)
            .into_iter()
            .step_by(VALIDATION_EVERY)
            .collect();
        let (mut train, mut val) = (Vec::new(), Vec::new());
        for (i, r) in rows.iter().enumerate() {
            if is_test(r) {
                continue;
            }
            // Every row has a well.
            let well = r.env(EnvLevel::Well).unwrap_or_default();
            if val_wells.contains(&well) {
                val.push(i);
            } else {
                train.push(i);
            }
        }
        let train_labels: BTreeSet<&String> = train
            .iter()
            .filter_map(|&i| rows[i].label.as_ref())
            .collect();
        let unseen_labels: BTreeSet<String> = test
            .iter()
            .filter_map(|&i| rows[i].label.as_ref())
            .filter(|l| !train_labels.contains(l))
            .cloned()
            .collect();
        Ok(Split {
            level: level_name(level),
            fold,
            folds: folds.len(),
            held_out,
            train,
            val,
            test,
            unseen_labels: unseen_labels.into_iter().collect(),
        })
    }
}

/// Wells (`plate/well`) not in `exclude`, shuffled and then ordered by
/// plate and label, so taking every k-th stratifies by both.
fn stratified_wells(rows: &[SiteRow], exclude: &BTreeSet<String>) -> Vec<String> {
    let mut wells: BTreeMap<String, (String, String)> = BTreeMap::new();
    for r in rows {
        let well = format!("{}/{}", r.plate, r.well);
        if !exclude.contains(&well) {
            wells
                .entry(well)
                .or_insert_with(|| (r.plate.clone(), r.label.clone().unwrap_or_default()));
        }
    }
    let mut list: Vec<(String, (String, String))> = wells.into_iter().collect();
    list.shuffle(&mut ChaCha8Rng::seed_from_u64(FOLD_SEED));
    // A stable sort keeps the shuffled order within each (plate, label).
    list.sort_by(|a, b| a.1.cmp(&b.1));
    list.into_iter().map(|(w, _)| w).collect()
}
