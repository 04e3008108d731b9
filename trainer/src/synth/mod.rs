//! Synthetic high-content screens with known ground truth.
//!
//! `generate` writes an acquisition tree the way a microscope would (one
//! 16-bit TIFF per channel per site, named by an instrument preset), a
//! `manifest.csv` in the dataset layer's format and a `design.json` with
//! the class definitions, the effects of every environment and the
//! cross-validation folds. The same preset and seed give the same bytes:
//! every site draws from its own ChaCha8 stream, so the parallel
//! rendering order does not matter.

mod design;
mod effects;
mod files;
mod phenotype;
mod preset;
mod render;

use std::path::{Path, PathBuf};

use bfx_core::naming::{NamingScheme, Preset};
use indicatif::ProgressBar;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use thiserror::Error;

use crate::dataset::{Manifest, SiteRow, split};
pub use design::{Channel, Design, Environment, LevelFolds, PlateDesign, WellDesign};
pub use effects::{Effects, Optics, gaussian_blur};
pub use phenotype::{ClassSpec, Morphology};
pub use preset::{ClassPlan, Shape, SynthPreset};

/// Channels of every synthetic screen, in order.
pub const CHANNELS: usize = 4;
/// What each channel shows.
pub const STAINS: [&str; CHANNELS] = ["dna", "actin", "mito", "lyso"];
/// Manifest file name inside the output folder.
pub const MANIFEST_FILE: &str = "manifest.csv";
/// Design file name inside the output folder.
pub const DESIGN_FILE: &str = "design.json";

/// Why a screen could not be generated.
#[derive(Debug, Error)]
pub enum SynthError {
    /// A file could not be written.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// TIFF encoding failed.
    #[error("{0}: cannot encode TIFF: {1}")]
    Tiff(PathBuf, String),
    /// The output folder is not empty.
    #[error("{0}: the output folder exists and is not empty; choose a new or empty folder")]
    NotEmpty(PathBuf),
    /// The preset cannot be laid out (a bug in a preset) or the naming is unusable.
    #[error("design: {0}")]
    Design(String),
    /// Writing the manifest failed.
    #[error(transparent)]
    Manifest(#[from] crate::dataset::ManifestError),
}

/// What `generate` wrote.
#[derive(Debug)]
pub struct Summary {
    /// The ground truth (also in `design.json`).
    pub design: Design,
    /// The manifest (also in `manifest.csv`).
    pub manifest: Manifest,
    /// Bytes of image files written.
    pub bytes: u64,
}

/// Write a synthetic screen into `out` (created; must be empty if it exists).
pub fn generate(
    preset: SynthPreset,
    out: &Path,
    seed: u64,
    naming: Preset,
    progress: &ProgressBar,
) -> Result<Summary, SynthError> {
    prepare_output(out)?;
    let shape = preset.shape();
    let scheme = NamingScheme::preset(naming).map_err(|e| SynthError::Design(e.to_string()))?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut design = draw_design(preset, &shape, seed, naming, &mut rng)?;

    let jobs: Vec<(usize, usize, usize)> = design
        .plates
        .iter()
        .enumerate()
        .flat_map(|(p, plate)| {
            (0..plate.wells.len())
                .flat_map(move |w| (0..shape.sites_per_well).map(move |s| (p, w, s)))
        })
        .collect();
    progress.set_length(jobs.len() as u64);
    let rows = jobs
        .par_iter()
        .enumerate()
        .map(|(index, &(p, w, s))| {
            let row = write_site(
                &design,
                &shape,
                &scheme,
                naming,
                out,
                seed,
                index,
                (p, w, s),
            );
            progress.inc(1);
            row
        })
        .collect::<Result<Vec<SiteRow>, SynthError>>()?;
    progress.finish_and_clear();

    let manifest = Manifest {
        source: out.join(MANIFEST_FILE),
        channels: design.channels.iter().map(|c| c.id.clone()).collect(),
        has_series: true,
        has_section: true,
        rows,
    };
    manifest.write(&manifest.source)?;
    design.splits = split::LEVELS
        .iter()
        .map(|&level| LevelFolds {
            level: split::level_name(level).to_owned(),
            folds: split::fold_units(&manifest.rows, level).unwrap_or_default(),
        })
        .collect();
    let json = serde_json::to_string_pretty(&design)
        .map_err(|e| SynthError::Design(format!("cannot serialize the design: {e}")))?;
    let path = out.join(DESIGN_FILE);
    std::fs::write(&path, json + "\n").map_err(|e| SynthError::Io(path, e))?;
    let bytes = manifest
        .rows
        .iter()
        .flat_map(|r| &r.paths)
        .filter_map(|p| std::fs::metadata(out.join(p)).ok())
        .map(|m| m.len())
        .sum();
    Ok(Summary {
        design,
        manifest,
        bytes,
    })
}

fn prepare_output(out: &Path) -> Result<(), SynthError> {
    let io = |e| SynthError::Io(out.to_owned(), e);
    if out.exists() && std::fs::read_dir(out).map_err(io)?.next().is_some() {
        return Err(SynthError::NotEmpty(out.to_owned()));
    }
    std::fs::create_dir_all(out).map_err(io)
}

/// Classes, plates, wells and every environment's effects, drawn in a fixed order.
fn draw_design(
    preset: SynthPreset,
    shape: &Shape,
    seed: u64,
    naming: Preset,
    rng: &mut ChaCha8Rng,
) -> Result<Design, SynthError> {
    let (names, controls) = design::class_names(&shape.classes);
    let mut classes: Vec<ClassSpec> = names[..controls]
        .iter()
        .map(|name| ClassSpec::control(name))
        .collect();
    // Families of `family_size` consecutive perturbations share all but
    // one of their changes; a family of one shares nothing.
    for (f, members) in names[controls..]
        .chunks(shape.family_size.max(1))
        .enumerate()
    {
        let shared = if members.len() > 1 {
            phenotype::draw_changes(shape.changes_per_class.saturating_sub(1), &[], rng)
        } else {
            Vec::new()
        };
        for name in members {
            classes.push(ClassSpec::perturbed(
                name,
                &format!("F{}", f + 1),
                &shared,
                shape.changes_per_class,
                shape.class_effect,
                rng,
            ));
        }
    }
    let sets = design::assign_classes(shape, &names, controls, rng)?;
    if let Some(set) = sets
        .iter()
        .find(|s| s.len() * shape.wells_per_class > design::SECTION_SLOTS)
    {
        return Err(SynthError::Design(format!(
            "{} classes x {} wells do not fit the {} wells of a section",
            set.len(),
            shape.wells_per_class,
            design::SECTION_SLOTS
        )));
    }
    let series: Vec<Environment> = (1..=shape.series)
        .map(|s| Environment {
            name: format!("S{s}"),
            effects: Effects::draw(rng, effects::Strength::SERIES),
        })
        .collect();
    let mut plates = Vec::new();
    for (i, set) in sets.iter().enumerate() {
        let series_name = &series[i / shape.plates_per_series].name;
        let number = i % shape.plates_per_series + 1;
        let effects = Effects::draw(rng, effects::Strength::PLATE);
        let (sections, wells) = design::plate_layout(shape, set, &names, rng);
        plates.push(PlateDesign {
            name: files::plate_name(naming, series_name, number),
            series: series_name.clone(),
            number,
            classes: set.iter().map(|&c| names[c].clone()).collect(),
            effects,
            sections,
            wells,
        });
    }
    Ok(Design {
        format_version: design::DESIGN_VERSION,
        preset: preset.name().to_owned(),
        seed,
        naming: naming.name().to_owned(),
        image_size: shape.image_size,
        cells_per_field: shape.cells_per_field,
        cell_spread: shape.cell_spread,
        channels: STAINS
            .iter()
            .enumerate()
            .map(|(c, stain)| Channel {
                id: files::channel_id(naming, c),
                stain: (*stain).to_owned(),
            })
            .collect(),
        classes,
        series,
        plates,
        splits: Vec::new(),
    })
}

/// Render one site, write its channel files and return its manifest row.
#[allow(clippy::too_many_arguments)]
fn write_site(
    design: &Design,
    shape: &Shape,
    scheme: &NamingScheme,
    naming: Preset,
    out: &Path,
    seed: u64,
    index: usize,
    (p, w, s): (usize, usize, usize),
) -> Result<SiteRow, SynthError> {
    let plate = &design.plates[p];
    let well = &plate.wells[w];
    let series = design
        .series
        .iter()
        .find(|e| e.name == plate.series)
        .ok_or_else(|| SynthError::Design(format!("plate {} has no series", plate.name)))?;
    let section = plate
        .sections
        .iter()
        .find(|e| e.name == well.section)
        .ok_or_else(|| SynthError::Design(format!("well {} has no section", well.well)))?;
    let class = design
        .classes
        .iter()
        .find(|c| c.name == well.label)
        .ok_or_else(|| SynthError::Design(format!("well {} has no class", well.well)))?;
    let optics =
        (&(&(&series.effects + &plate.effects) + &section.effects) + &well.effects).realize();

    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index as u64 + 1);
    let side = shape.image_size as usize;
    let mut field = render::Field::new(side);
    // Denser wells hold more cells that spread less; a larger pixel scale
    // (higher magnification) shows fewer of them.
    let expected = shape.cells_per_field * optics.density / (optics.scale * optics.scale);
    let crowding = optics.density.powf(-0.2);
    let count = crate::random::poisson(expected, &mut rng).max(1);
    for _ in 0..count {
        let mut cell = class.cell(shape.cell_spread, &mut rng);
        cell.cell_radius *= crowding;
        let centre = (
            rand::Rng::random::<f32>(&mut rng) * side as f32,
            rand::Rng::random::<f32>(&mut rng) * side as f32,
        );
        field.draw_cell(&cell, centre, optics.scale, &mut rng);
    }
    let images = optics.apply(&field.planes, side, &mut rng);

    let site = files::site_number(naming, s);
    let mut paths = Vec::with_capacity(CHANNELS);
    for (c, pixels) in images.iter().enumerate() {
        let rel = files::image_path(naming, &plate.series, plate.number, &well.well, site, c)?;
        // The tree must read back through bfx-core's naming exactly as designed.
        let key = scheme
            .parse(&rel)
            .map_err(|e| SynthError::Design(format!("written name does not parse: {e}")))?;
        let expected_channel = files::channel_id(naming, c);
        if key.site.plate != plate.name
            || key.site.well.to_string() != well.well
            || key.site.site != site
            || key.channel != expected_channel
        {
            return Err(SynthError::Design(format!(
                "{} reads back as {}, channel {}",
                rel.display(),
                key.site,
                key.channel
            )));
        }
        files::write_tiff(&out.join(&rel), shape.image_size, pixels)?;
        paths.push(rel);
    }
    Ok(SiteRow {
        plate: plate.name.clone(),
        well: well.well.clone(),
        site,
        series: Some(plate.series.clone()),
        section: Some(well.section.clone()),
        label: Some(well.label.clone()),
        paths,
        line: index + 2,
    })
}
