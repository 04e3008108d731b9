//! Contact sheets: a PNG grid with one row per class and one column per
//! plate, each cell a few sites of that class on that plate in false
//! colour, so a person sees the phenotypes (down a column) and the batch
//! effects (along a row) at once. An empty cell means the plate does not
//! hold the class: the sparse design is visible too.
//!
//! Intensities are scaled per channel with percentiles over the whole
//! sheet, not per image, so gain and background differences between
//! plates stay visible.

use std::collections::BTreeMap;
use std::path::Path;

use bfx_core::image::{ReadOptions, read_image};
use thiserror::Error;

use crate::dataset::Manifest;

/// False colours (RGB) of channels in manifest order: blue, red, green,
/// yellow, then cyan and magenta for a fifth and sixth channel.
pub(crate) const PALETTE: [[f32; 3]; 6] = [
    [0.15, 0.35, 1.0],
    [1.0, 0.2, 0.15],
    [0.2, 1.0, 0.25],
    [1.0, 0.85, 0.1],
    [0.1, 0.9, 0.9],
    [0.9, 0.2, 0.9],
];
/// Gap between cells and between sites in a cell, pixels.
pub(crate) const GAP: usize = 3;
/// Background of the gaps and of empty cells.
pub(crate) const GAP_GREY: u8 = 40;
const EMPTY_GREY: u8 = 18;

/// Why a sheet could not be made.
#[derive(Debug, Error)]
pub enum SheetError {
    /// An image could not be read.
    #[error(transparent)]
    Image(#[from] bfx_core::image::ImageError),
    /// Channels of different sizes, or more channels than colours.
    #[error("{0}")]
    Layout(String),
    /// Writing the PNG failed.
    #[error("{0}: {1}")]
    Write(std::path::PathBuf, String),
}

/// Row and column names of a written sheet.
#[derive(Clone, Debug)]
pub struct SheetLegend {
    /// Class of each row, top to bottom.
    pub rows: Vec<String>,
    /// Plate of each column, left to right.
    pub columns: Vec<String>,
    /// Channel colours, in manifest channel order.
    pub colours: Vec<(String, &'static str)>,
}

/// Write a contact sheet of `manifest` (files under `root`) to `out`:
/// up to `sites` sites per class and plate, each field scaled `zoom` times.
pub fn contact_sheet(
    manifest: &Manifest,
    root: &Path,
    out: &Path,
    sites: usize,
    zoom: usize,
) -> Result<SheetLegend, SheetError> {
    let c = manifest.channels.len();
    if c > PALETTE.len() {
        return Err(SheetError::Layout(format!(
            "{c} channels; a contact sheet colours at most {}",
            PALETTE.len()
        )));
    }
    let mut cells: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
    for (i, row) in manifest.rows.iter().enumerate() {
        let key = (row.label.clone().unwrap_or_default(), row.plate.clone());
        let list = cells.entry(key).or_default();
        if list.len() < sites {
            list.push(i);
        }
    }
    let classes: Vec<String> = dedup(cells.keys().map(|k| k.0.clone()));
    let plates: Vec<String> = dedup(manifest.rows.iter().map(|r| r.plate.clone()));

    // Read every shown site: channel planes as f32.
    let read = ReadOptions::default();
    let mut fields: BTreeMap<usize, Vec<Vec<f32>>> = BTreeMap::new();
    let mut side = (0, 0);
    for &i in cells.values().flatten() {
        let mut planes = Vec::with_capacity(c);
        for path in &manifest.rows[i].paths {
            let plane = read_image(&root.join(path), &read)?.swap_remove(0);
            let dims = (plane.height as usize, plane.width as usize);
            if side == (0, 0) {
                side = dims;
            } else if side != dims {
                return Err(SheetError::Layout(format!(
                    "{}: {}x{} pixels, other fields are {}x{}",
                    path.display(),
                    dims.1,
                    dims.0,
                    side.1,
                    side.0
                )));
            }
            let mut v = Vec::with_capacity(plane.pixels.len());
            plane.pixels.extend_f32(&mut v);
            planes.push(v);
        }
        fields.insert(i, planes);
    }
    // Raw camera counts: a span of at least one count.
    let ranges = channel_ranges(fields.values(), c, 1.0);

    let (fh, fw) = (side.0 * zoom, side.1 * zoom);
    let cell_w = sites * fw + (sites - 1) * GAP;
    let width = plates.len() * (cell_w + GAP) + GAP;
    let height = classes.len() * (fh + GAP) + GAP;
    let mut rgb = vec![GAP_GREY; width * height * 3];
    for (r, class) in classes.iter().enumerate() {
        for (col, plate) in plates.iter().enumerate() {
            let y0 = GAP + r * (fh + GAP);
            let x0 = GAP + col * (cell_w + GAP);
            let shown = cells.get(&(class.clone(), plate.clone()));
            for s in 0..sites {
                let xs = x0 + s * (fw + GAP);
                match shown.and_then(|l| l.get(s)).and_then(|i| fields.get(i)) {
                    Some(planes) => {
                        paint_field(&mut rgb, width, (xs, y0), planes, side, zoom, &ranges)
                    }
                    None => {
                        for y in 0..fh {
                            let o = ((y0 + y) * width + xs) * 3;
                            rgb[o..o + fw * 3].fill(EMPTY_GREY);
                        }
                    }
                }
            }
        }
    }
    write_png(out, width, height, &rgb)?;
    let names = ["blue", "red", "green", "yellow", "cyan", "magenta"];
    Ok(SheetLegend {
        rows: classes,
        columns: plates,
        colours: manifest.channels.iter().cloned().zip(names).collect(),
    })
}

/// Display range of each of `c` channels over `fields` (channel planes):
/// the 1st to 99.9th percentile (at least `min_span` wide), so gain
/// differences stay visible.
pub(crate) fn channel_ranges<'a>(
    fields: impl Iterator<Item = &'a Vec<Vec<f32>>> + Clone,
    c: usize,
    min_span: f32,
) -> Vec<(f32, f32)> {
    (0..c)
        .map(|ch| {
            let mut all: Vec<f32> = fields.clone().flat_map(|f| f[ch].iter().copied()).collect();
            all.sort_by(f32::total_cmp);
            let at = |q: f64| {
                all.get(((all.len().saturating_sub(1)) as f64 * q) as usize)
                    .copied()
            };
            let lo = at(0.01).unwrap_or(0.0);
            (lo, at(0.999).unwrap_or(lo + min_span).max(lo + min_span))
        })
        .collect()
}

/// Paint one field (channel planes of `side` = (h, w)) in false colour,
/// scaled `zoom` times, into `rgb` (rows `width` pixels) at `(x0, y0)`.
pub(crate) fn paint_field(
    rgb: &mut [u8],
    width: usize,
    (x0, y0): (usize, usize),
    planes: &[Vec<f32>],
    side: (usize, usize),
    zoom: usize,
    ranges: &[(f32, f32)],
) {
    for y in 0..side.0 * zoom {
        for x in 0..side.1 * zoom {
            let o = ((y0 + y) * width + x0 + x) * 3;
            let p = (y / zoom) * side.1 + x / zoom;
            let mut colour = [0.0f32; 3];
            for (ch, plane) in planes.iter().enumerate() {
                let (lo, hi) = ranges[ch];
                let v = ((plane[p] - lo) / (hi - lo)).clamp(0.0, 1.0);
                for k in 0..3 {
                    colour[k] += v * PALETTE[ch][k];
                }
            }
            for k in 0..3 {
                rgb[o + k] = (colour[k].min(1.0) * 255.0).round() as u8;
            }
        }
    }
}

fn dedup(items: impl Iterator<Item = String>) -> Vec<String> {
    let mut seen = Vec::new();
    for item in items {
        if !seen.contains(&item) {
            seen.push(item);
        }
    }
    seen
}

/// Write an 8-bit RGB PNG, creating its folder.
pub(crate) fn write_png(
    path: &Path,
    width: usize,
    height: usize,
    rgb: &[u8],
) -> Result<(), SheetError> {
    let fail = |e: String| SheetError::Write(path.to_owned(), e);
    let mut bytes = Vec::new();
    {
        let mut encoder = png::Encoder::new(&mut bytes, width as u32, height as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(|e| fail(e.to_string()))?;
        writer
            .write_image_data(rgb)
            .map_err(|e| fail(e.to_string()))?;
        writer.finish().map_err(|e| fail(e.to_string()))?;
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
    }
    std::fs::write(path, bytes).map_err(|e| fail(e.to_string()))
}
