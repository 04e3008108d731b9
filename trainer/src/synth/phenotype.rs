//! Biological classes: the morphology a perturbation gives its cells.
//!
//! A class is the mean of each cell feature; every cell draws its own
//! features around those means with large log-normal spread, so classes
//! overlap and a single cell rarely tells its class.
//!
//! Perturbed classes come in families, like the members of one protein
//! complex: members change the same features in the same direction (with
//! their own magnitudes) and each one more feature of its own, so they
//! are distinct classes whose profiles resemble each other. That is the
//! ground truth of the relationship-recovery benchmark.

use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::random::standard_normal;

/// Features a class can change, as log-scale multipliers of the control.
pub const FEATURES: [&str; 10] = [
    "nucleus_radius",
    "nucleus_elongation",
    "cell_radius",
    "mito_density",
    "mito_length",
    "spot_count",
    "spot_clustering",
    "dna_intensity",
    "actin_intensity",
    "lyso_intensity",
];

/// One biological class: the mean morphology of its cells.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassSpec {
    /// Label written to the manifest.
    pub name: String,
    /// Family of related classes (none for controls).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    /// Which features differ from the control, with their log-scale shift.
    pub changes: Vec<(String, f32)>,
    /// Mean features of the class's cells.
    #[serde(flatten)]
    pub mean: Morphology,
}

impl ClassSpec {
    /// The unperturbed cell.
    pub fn control(name: &str) -> ClassSpec {
        ClassSpec {
            name: name.to_owned(),
            family: None,
            changes: Vec::new(),
            mean: Morphology {
                nucleus_radius: 4.2,
                nucleus_elongation: 1.25,
                cell_radius: 9.0,
                mito_density: 1.6,
                mito_length: 6.0,
                spot_count: 9.0,
                spot_clustering: 0.35,
                intensity: [2600.0, 700.0, 1300.0, 900.0],
            },
        }
    }

    /// A perturbed class of `family`: the family's `shared` changes
    /// (feature, direction), each with this class's own magnitude around
    /// `effect` (log scale), plus features of its own up to `n_changes`.
    /// Real perturbations change a few features, not all.
    pub fn perturbed(
        name: &str,
        family: &str,
        shared: &[(usize, f32)],
        n_changes: usize,
        effect: f32,
        rng: &mut impl Rng,
    ) -> ClassSpec {
        let mut class = ClassSpec::control(name);
        class.family = Some(family.to_owned());
        let taken: Vec<usize> = shared.iter().map(|&(f, _)| f).collect();
        let own = draw_changes(n_changes.saturating_sub(shared.len()), &taken, rng);
        for &(feature, sign) in shared.iter().chain(&own) {
            let shift = sign * effect * rng.random_range(0.8..1.25);
            class.shift(feature, shift);
            class.changes.push((FEATURES[feature].to_owned(), shift));
        }
        class
    }

    fn shift(&mut self, feature: usize, log_shift: f32) {
        let m = log_shift.exp();
        let c = &mut self.mean;
        match feature {
            0 => c.nucleus_radius *= m,
            1 => c.nucleus_elongation = 1.0 + (c.nucleus_elongation - 1.0) * m * m,
            2 => c.cell_radius *= m,
            3 => c.mito_density *= m,
            4 => c.mito_length *= m * m,
            5 => c.spot_count *= m * m,
            6 => c.spot_clustering = (c.spot_clustering * m * m).clamp(0.0, 1.0),
            7 => c.intensity[0] *= m,
            8 => c.intensity[1] *= m,
            _ => c.intensity[3] *= m,
        }
    }

    /// One cell's features: the class means times log-normal cell-to-cell
    /// variation (`spread` is the log-scale standard deviation).
    pub fn cell(&self, spread: f32, rng: &mut impl Rng) -> Morphology {
        let c = &self.mean;
        let mut v = |mean: f32, sd: f32| mean * (sd * standard_normal(rng)).exp();
        let nucleus_radius = v(c.nucleus_radius, spread * 0.8);
        // A cell is never smaller than its nucleus plus a rim of cytoplasm.
        let cell_radius = v(c.cell_radius, spread).max(nucleus_radius * 1.35 + 1.0);
        Morphology {
            nucleus_radius,
            nucleus_elongation: 1.0 + v(c.nucleus_elongation - 1.0, spread * 1.5),
            cell_radius,
            mito_density: v(c.mito_density, spread),
            mito_length: v(c.mito_length, spread),
            spot_count: v(c.spot_count, spread * 1.2),
            spot_clustering: (c.spot_clustering + 0.15 * standard_normal(rng)).clamp(0.0, 1.0),
            intensity: c
                .intensity
                .map(|i| i * (spread * 0.8 * standard_normal(rng)).exp()),
        }
    }
}

/// `n` distinct features not in `taken`, each with a random direction (+-1).
pub fn draw_changes(n: usize, taken: &[usize], rng: &mut impl Rng) -> Vec<(usize, f32)> {
    let mut free: Vec<usize> = (0..FEATURES.len()).filter(|f| !taken.contains(f)).collect();
    let mut out = Vec::new();
    for i in 0..n.min(free.len()) {
        let j = rng.random_range(i..free.len());
        free.swap(i, j);
        let sign = if rng.random::<bool>() { 1.0 } else { -1.0 };
        out.push((free[i], sign));
    }
    out
}

/// Cell features: a class's means, or one drawn cell (lengths in pixels
/// at pixel scale 1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Morphology {
    /// Nucleus radius (geometric mean of the axes).
    pub nucleus_radius: f32,
    /// Major/minor axis ratio of the nucleus (>= 1).
    pub nucleus_elongation: f32,
    /// Cell radius: how far the cell spreads.
    pub cell_radius: f32,
    /// Mitochondrial filaments per 100 px^2 of cytoplasm.
    pub mito_density: f32,
    /// Filament length (fragmented vs tubular mitochondria).
    pub mito_length: f32,
    /// Expected puncta (lysosome-like spots) per cell.
    pub spot_count: f32,
    /// 0: spots spread over the cytoplasm; 1: packed around the nucleus.
    pub spot_clustering: f32,
    /// Brightness per channel (dna, actin, mito, lyso).
    pub intensity: [f32; 4],
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    use super::*;

    #[test]
    fn family_members_share_all_changes_but_their_own() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let shared = draw_changes(2, &[], &mut rng);
        let members: Vec<ClassSpec> = (0..3)
            .map(|i| ClassSpec::perturbed(&format!("p{i}"), "F1", &shared, 3, 0.45, &mut rng))
            .collect();
        let mut own = Vec::new();
        for m in &members {
            assert_eq!(m.family.as_deref(), Some("F1"));
            assert_eq!(m.changes.len(), 3);
            for (k, &(feature, sign)) in shared.iter().enumerate() {
                let (name, shift) = &m.changes[k];
                assert_eq!(name, FEATURES[feature]);
                assert_eq!(shift.signum(), sign);
                assert!((0.8 * 0.45..1.25 * 0.45).contains(&shift.abs()), "{shift}");
            }
            let (name, _) = &m.changes[2];
            assert!(shared.iter().all(|&(f, _)| FEATURES[f] != name));
            own.push(name.clone());
        }
        // A family of one shares nothing: all its changes are its own, distinct.
        let single = ClassSpec::perturbed("p9", "F2", &[], 3, 0.45, &mut rng);
        let mut names: Vec<&String> = single.changes.iter().map(|(n, _)| n).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), 3);
        assert!(
            members[0].mean != members[1].mean,
            "members are distinct classes"
        );
    }
}
