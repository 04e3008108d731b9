//! The screen's design: which classes sit on which plate, section and well,
//! and the batch effects of every environment. Written as `design.json`.

use rand::Rng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use super::SynthError;
use super::effects::{Effects, Strength};
use super::phenotype::ClassSpec;
use super::preset::{ClassPlan, Shape};

/// Ground truth of a generated screen.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Design {
    /// Format of this file.
    pub format_version: u32,
    /// Preset name.
    pub preset: String,
    /// Seed the screen was generated from.
    pub seed: u64,
    /// Naming preset of the files.
    pub naming: String,
    /// Field side in pixels.
    pub image_size: u32,
    /// Mean cells per field before density effects.
    pub cells_per_field: f32,
    /// Log-scale cell-to-cell spread of every feature.
    pub cell_spread: f32,
    /// Channels: identifier as the naming scheme writes it, and the stain.
    pub channels: Vec<Channel>,
    /// Class definitions.
    pub classes: Vec<ClassSpec>,
    /// Series (full replicates) and their effects.
    pub series: Vec<Environment>,
    /// Plates with their series, class set, sections and effects.
    pub plates: Vec<PlateDesign>,
    /// Held-out environments of each fold at each generalization level.
    pub splits: Vec<LevelFolds>,
}

/// One channel.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Channel {
    /// Identifier in file names and manifests (`w1`, `ch1`, ...).
    pub id: String,
    /// What it shows.
    pub stain: String,
}

/// An environment at one level and the effects it adds.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Environment {
    /// Name (series `S1`, section `Q1`, well `B03`).
    pub name: String,
    /// Effects this level adds to everything below it.
    pub effects: Effects,
}

/// One plate.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PlateDesign {
    /// Plate name as the naming scheme reads it back.
    pub name: String,
    /// Series name.
    pub series: String,
    /// Position within the series, from 1.
    pub number: usize,
    /// Classes on this plate (every section holds the same set).
    pub classes: Vec<String>,
    /// The plate's own effects.
    pub effects: Effects,
    /// Sections with their effects.
    pub sections: Vec<Environment>,
    /// Wells in use.
    pub wells: Vec<WellDesign>,
}

/// One well.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct WellDesign {
    /// Well name, e.g. `B03`.
    pub well: String,
    /// Section name.
    pub section: String,
    /// Class label.
    pub label: String,
    /// The well's own effects.
    pub effects: Effects,
}

/// The folds of one generalization level.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LevelFolds {
    /// `iid`, `section`, `plate` or `series`.
    pub level: String,
    /// For each fold, the held-out environments (or wells for `iid`).
    pub folds: Vec<Vec<String>>,
}

/// Version of `design.json` (2: classes carry their family).
pub const DESIGN_VERSION: u32 = 2;

/// Quadrant well slots of a 96-well plate (rows B-D or F-H, columns 2-5 or
/// 8-11): a section holds at most this many wells.
pub const SECTION_SLOTS: usize = 12;

/// Section names in plate order.
const SECTIONS: [&str; 4] = ["Q1", "Q2", "Q3", "Q4"];

/// Class names for a plan: controls first, then perturbations.
pub fn class_names(plan: &ClassPlan) -> (Vec<String>, usize) {
    let (controls, perturbed) = match *plan {
        ClassPlan::Grid { classes, .. } => (1, classes - 1),
        ClassPlan::PlateMap {
            groups,
            per_group,
            controls,
        } => (controls, groups * per_group),
        ClassPlan::Rxrx { classes, controls } => (controls, classes),
    };
    let mut names: Vec<String> = (0..controls)
        .map(|i| {
            if controls == 1 {
                "ctrl".to_owned()
            } else {
                format!("ctrl{}", i + 1)
            }
        })
        .collect();
    names.extend((1..=perturbed).map(|i| format!("p{i:02}")));
    (names, controls)
}

/// Which classes each plate holds; plates in series order.
pub fn assign_classes(
    shape: &Shape,
    names: &[String],
    controls: usize,
    rng: &mut impl Rng,
) -> Result<Vec<Vec<usize>>, SynthError> {
    let plates = shape.series * shape.plates_per_series;
    match shape.classes {
        ClassPlan::Grid { per_plate, .. } => {
            // Sparse like GRID: each plate a subset, every class on several
            // plates in at least two series, so every leave-out fold still
            // trains on every class.
            for _ in 0..1000 {
                let mut uses = vec![0usize; names.len()];
                let sets: Vec<Vec<usize>> = (0..plates)
                    .map(|_| {
                        let mut order: Vec<usize> = (0..names.len()).collect();
                        order.shuffle(rng);
                        order.sort_by_key(|&c| uses[c]);
                        let mut set: Vec<usize> = order[..per_plate].to_vec();
                        set.sort_unstable();
                        set.iter().for_each(|&c| uses[c] += 1);
                        set
                    })
                    .collect();
                if covers(shape, &sets, names.len()) {
                    return Ok(sets);
                }
            }
            Err(SynthError::Design(format!(
                "cannot spread {} classes over {plates} plates of {per_plate} so that every class is on plates of two series",
                names.len()
            )))
        }
        ClassPlan::PlateMap {
            per_group, groups, ..
        } => Ok((0..plates)
            .map(|p| {
                let group = (p % shape.plates_per_series) % groups;
                let first = controls + group * per_group;
                (0..controls).chain(first..first + per_group).collect()
            })
            .collect()),
        ClassPlan::Rxrx { classes, .. } => {
            let per_plate = classes.div_ceil(shape.plates_per_series);
            let mut sets = Vec::with_capacity(plates);
            for _ in 0..shape.series {
                let mut order: Vec<usize> = (controls..controls + classes).collect();
                order.shuffle(rng);
                for chunk in order.chunks(per_plate) {
                    let mut set: Vec<usize> = (0..controls).chain(chunk.iter().copied()).collect();
                    set.sort_unstable();
                    sets.push(set);
                }
            }
            Ok(sets)
        }
    }
}

/// Every class on at least two plates, and in two series when there are two.
fn covers(shape: &Shape, sets: &[Vec<usize>], classes: usize) -> bool {
    (0..classes).all(|c| {
        let plates: Vec<usize> = (0..sets.len()).filter(|&p| sets[p].contains(&c)).collect();
        let mut series: Vec<usize> = plates.iter().map(|p| p / shape.plates_per_series).collect();
        series.dedup();
        plates.len() >= 2 && series.len() >= shape.series.min(2)
    })
}

/// Lay out one plate: sections, wells with labels, and every level's effects.
pub fn plate_layout(
    shape: &Shape,
    classes: &[usize],
    names: &[String],
    rng: &mut impl Rng,
) -> (Vec<Environment>, Vec<WellDesign>) {
    let mut sections = Vec::new();
    let mut wells = Vec::new();
    for (q, section) in SECTIONS.iter().enumerate().take(shape.sections) {
        sections.push(Environment {
            name: (*section).to_owned(),
            effects: Effects::draw(rng, Strength::SECTION),
        });
        let mut labels: Vec<usize> = classes
            .iter()
            .flat_map(|&c| std::iter::repeat_n(c, shape.wells_per_class))
            .collect();
        labels.shuffle(rng);
        for (slot, label) in labels.into_iter().enumerate() {
            let row = (q / 2) * 4 + 1 + slot / 4;
            let col = (q % 2) * 6 + 2 + slot % 4;
            wells.push(WellDesign {
                well: format!("{}{col:02}", (b'A' + row as u8) as char),
                section: (*section).to_owned(),
                label: names[label].clone(),
                effects: Effects::draw(rng, Strength::WELL),
            });
        }
    }
    (sections, wells)
}
