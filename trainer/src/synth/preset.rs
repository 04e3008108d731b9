//! The synthetic screen presets and their sizes.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A synthetic screen preset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum SynthPreset {
    /// 2 series x 2 plates x 2 sections, 4 classes (perturbations in
    /// families of 2), 32x32 fields, 96 sites: for tests.
    Tiny,
    /// GRID-like: 3 series x 2 plates x 4 sections, 8 classes, 4 per plate
    /// (the same set in every section), perturbations in families of 3,
    /// 64x64 fields, 864 sites.
    GridLike,
    /// LINCS-like platemap: 2 series x 3 plates; plate groups hold disjoint
    /// classes except the control; families of 3; 64x64 fields, 864 sites.
    LincsLike,
    /// RxRx1-like: 4 experiments (series) x 4 plates, 40 classes spread
    /// anew over the plates of each experiment plus a control on every
    /// plate, families of 4, 128x128 fields, 1408 sites.
    RxrxLike,
}

impl SynthPreset {
    /// Name as written on the command line.
    pub fn name(self) -> &'static str {
        match self {
            SynthPreset::Tiny => "tiny",
            SynthPreset::GridLike => "grid-like",
            SynthPreset::LincsLike => "lincs-like",
            SynthPreset::RxrxLike => "rxrx-like",
        }
    }

    /// Sizes and design of the preset.
    pub fn shape(self) -> Shape {
        match self {
            SynthPreset::Tiny => Shape {
                image_size: 32,
                series: 2,
                plates_per_series: 2,
                sections: 2,
                wells_per_class: 2,
                sites_per_well: 2,
                cells_per_field: 2.0,
                cell_spread: 0.25,
                class_effect: 0.5,
                changes_per_class: 3,
                family_size: 2,
                classes: ClassPlan::Grid {
                    classes: 4,
                    per_plate: 3,
                },
            },
            SynthPreset::GridLike => Shape {
                image_size: 64,
                series: 3,
                plates_per_series: 2,
                sections: 4,
                wells_per_class: 3,
                sites_per_well: 3,
                cells_per_field: 6.0,
                cell_spread: 0.25,
                class_effect: 0.45,
                changes_per_class: 3,
                family_size: 3,
                classes: ClassPlan::Grid {
                    classes: 8,
                    per_plate: 4,
                },
            },
            SynthPreset::LincsLike => Shape {
                image_size: 64,
                series: 2,
                plates_per_series: 3,
                sections: 4,
                wells_per_class: 3,
                sites_per_well: 3,
                cells_per_field: 6.0,
                cell_spread: 0.25,
                class_effect: 0.45,
                changes_per_class: 3,
                family_size: 3,
                classes: ClassPlan::PlateMap {
                    groups: 3,
                    per_group: 3,
                    controls: 1,
                },
            },
            SynthPreset::RxrxLike => Shape {
                image_size: 128,
                series: 4,
                plates_per_series: 4,
                sections: 4,
                wells_per_class: 1,
                sites_per_well: 2,
                cells_per_field: 22.0,
                cell_spread: 0.25,
                class_effect: 0.4,
                changes_per_class: 3,
                family_size: 4,
                classes: ClassPlan::Rxrx {
                    classes: 40,
                    controls: 1,
                },
            },
        }
    }
}

impl fmt::Display for SynthPreset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Sizes of a screen.
#[derive(Clone, Debug)]
pub struct Shape {
    /// Field side, pixels.
    pub image_size: u32,
    /// Series (full replicates).
    pub series: usize,
    /// Plates in each series.
    pub plates_per_series: usize,
    /// Sections (quadrants) per plate, 1 to 4.
    pub sections: usize,
    /// Wells of each class in each section.
    pub wells_per_class: usize,
    /// Sites (fields) per well.
    pub sites_per_well: usize,
    /// Mean cells per field before density effects.
    pub cells_per_field: f32,
    /// Log-scale cell-to-cell spread of every feature.
    pub cell_spread: f32,
    /// Log-scale shift of a perturbed class's changed features.
    pub class_effect: f32,
    /// How many features each perturbed class changes.
    pub changes_per_class: usize,
    /// Perturbations per family (members share all changes but one); 1: no families.
    pub family_size: usize,
    /// Which classes go where.
    pub classes: ClassPlan,
}

/// How classes are spread over plates.
#[derive(Clone, Copy, Debug)]
pub enum ClassPlan {
    /// GRID-like: a control and `classes - 1` perturbations; each plate
    /// holds `per_plate` of them, plates overlap partly.
    Grid {
        /// Classes in total, the control included.
        classes: usize,
        /// Classes on each plate.
        per_plate: usize,
    },
    /// LINCS-like platemap: plate `i` of every series holds group `i mod
    /// groups`; groups are disjoint except the controls.
    PlateMap {
        /// Plate groups.
        groups: usize,
        /// Perturbations per group.
        per_group: usize,
        /// Control classes on every plate.
        controls: usize,
    },
    /// RxRx1-like: every experiment spreads all perturbations over its
    /// plates in a new random order; controls on every plate.
    Rxrx {
        /// Perturbations.
        classes: usize,
        /// Control classes on every plate.
        controls: usize,
    },
}
