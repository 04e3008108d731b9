//! From a site's image files to model input: the one implementation that
//! trainer and daemon share, so a model sees at inference exactly what it
//! saw in training.
//!
//! Steps: read the planes, stack them in the spec's channel order as f32,
//! normalize each channel over the full field, then resize (area averaging)
//! or cut into tiles.

mod geometry;
mod percentile;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::image::{ImageError, Pages, Pixels, Plane, ReadOptions, read_image};

pub use geometry::{resize_area, tile_origins};
pub use percentile::fit_percentiles;

/// How images become model input; stored in checkpoints and bundles.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessSpec {
    /// Channel identifiers (as the naming scheme writes them) in model input order.
    pub channels: Vec<String>,
    /// Intensity normalization.
    pub normalization: Normalization,
    /// Output geometry.
    pub geometry: Geometry,
}

/// Intensity normalization, per channel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Normalization {
    /// Per image and channel: `(x - mean) / (std + eps)`, mean and (biased)
    /// std over the whole field. Removes gain and offset per image.
    SelfStandardize {
        /// Added to the std so flat images stay finite.
        eps: f32,
    },
    /// Per channel `(x - low) / (high - low)` with percentiles measured on
    /// training data and stored here; optionally clipped to [0, 1].
    Percentile {
        /// Low percentile value per channel.
        low: Vec<f32>,
        /// High percentile value per channel.
        high: Vec<f32>,
        /// Clip the result to [0, 1].
        clip: bool,
    },
}

/// Output geometry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Geometry {
    /// The whole field resized to `height` x `width` by area averaging.
    Resize {
        /// Output height.
        height: u32,
        /// Output width.
        width: u32,
    },
    /// `size` x `size` tiles every `stride` pixels; the last row and column
    /// of tiles are aligned to the field's edge so every pixel is covered.
    Tile {
        /// Tile side.
        size: u32,
        /// Step between tiles.
        stride: u32,
    },
}

/// The files of one site: one per channel, or one multi-page file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SiteFiles {
    /// `(channel, path)` pairs, any order.
    PerChannel(Vec<(String, PathBuf)>),
    /// One file whose pages are the spec's channels in order.
    MultiPage(PathBuf),
}

/// Model input of one site: `n` images (1, or the tile count) of `c` channels.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelInput {
    /// `[n, c, h, w]`.
    pub shape: [usize; 4],
    /// Row-major samples.
    pub data: Vec<f32>,
    /// Top-left `(y, x)` of each tile in the field (`[(0, 0)]` for a resize).
    pub origins: Vec<(u32, u32)>,
}

/// Why a site cannot become model input.
#[derive(Debug, Error)]
pub enum PreprocessError {
    /// A file could not be read.
    #[error(transparent)]
    Image(#[from] ImageError),
    /// The spec is unusable.
    #[error("invalid preprocessing spec: {0}")]
    Spec(String),
    /// A channel of the spec has no file.
    #[error("channel {0:?} is missing")]
    MissingChannel(String),
    /// A file's channel is not in the spec.
    #[error("{path}: channel {channel:?} is not one of the model's channels {expected:?}")]
    UnknownChannel {
        /// The file.
        path: PathBuf,
        /// Its channel.
        channel: String,
        /// The spec's channels.
        expected: Vec<String>,
    },
    /// Two channels of a site differ in size.
    #[error(
        "{path}: {width}x{height} pixels, but channel {first:?} is {first_width}x{first_height}"
    )]
    SizeMismatch {
        /// The file of the odd channel.
        path: PathBuf,
        /// Its width.
        width: u32,
        /// Its height.
        height: u32,
        /// The first channel.
        first: String,
        /// First channel's width.
        first_width: u32,
        /// First channel's height.
        first_height: u32,
    },
    /// A multi-page file has another number of pages than channels.
    #[error("{path}: {pages} page(s), but the model has {channels} channels")]
    PageCount {
        /// The file.
        path: PathBuf,
        /// Pages read.
        pages: usize,
        /// Channels expected.
        channels: usize,
    },
    /// NaN or infinite samples (float TIFFs).
    #[error("{path}: {count} NaN or infinite pixel(s)")]
    NonFinite {
        /// The file.
        path: PathBuf,
        /// How many.
        count: usize,
    },
    /// The field is smaller than one tile.
    #[error("the field is {width}x{height}, smaller than the {size}x{size} tile")]
    TooSmallForTile {
        /// Field width.
        width: u32,
        /// Field height.
        height: u32,
        /// Tile size.
        size: u32,
    },
}

impl PreprocessSpec {
    /// Height and width of every model input image.
    pub fn output_size(&self) -> (u32, u32) {
        match self.geometry {
            Geometry::Resize { height, width } => (height, width),
            Geometry::Tile { size, .. } => (size, size),
        }
    }

    /// Check internal consistency (channel count, percentile lengths, sizes).
    pub fn validate(&self) -> Result<(), PreprocessError> {
        let bad = |m: String| Err(PreprocessError::Spec(m));
        if self.channels.is_empty() {
            return bad("no channels".into());
        }
        for (i, c) in self.channels.iter().enumerate() {
            if self.channels[..i].contains(c) {
                return bad(format!("channel {c:?} is listed twice"));
            }
        }
        match &self.normalization {
            Normalization::SelfStandardize { eps } if !(*eps > 0.0 && eps.is_finite()) => {
                return bad(format!("eps must be > 0, got {eps}"));
            }
            Normalization::Percentile { low, high, .. } => {
                let n = self.channels.len();
                if low.len() != n || high.len() != n {
                    return bad(format!(
                        "{n} channels but {} low and {} high percentile values",
                        low.len(),
                        high.len()
                    ));
                }
                if let Some(i) = (0..n)
                    .find(|&i| !(low[i].is_finite() && high[i].is_finite() && high[i] > low[i]))
                {
                    return bad(format!(
                        "channel {:?}: high percentile {} must be above low {}",
                        self.channels[i], high[i], low[i]
                    ));
                }
            }
            Normalization::SelfStandardize { .. } => {}
        }
        match self.geometry {
            Geometry::Resize { height, width } if height == 0 || width == 0 => {
                bad(format!("resize to {height}x{width}"))
            }
            Geometry::Tile { size, stride } if size == 0 || stride == 0 => {
                bad(format!("tile size {size} and stride {stride} must be >= 1"))
            }
            _ => Ok(()),
        }
    }

    /// Read a site's files and preprocess them.
    pub fn load_site(
        &self,
        files: &SiteFiles,
        read: &ReadOptions,
    ) -> Result<ModelInput, PreprocessError> {
        let planes = self.read_planes(files, read)?;
        self.preprocess(&planes)
    }

    /// Read a site's planes, returned in the spec's channel order with the file each came from.
    pub fn read_planes(
        &self,
        files: &SiteFiles,
        read: &ReadOptions,
    ) -> Result<Vec<(PathBuf, Plane)>, PreprocessError> {
        match files {
            SiteFiles::MultiPage(path) => {
                let options = ReadOptions {
                    pages: Pages::All,
                    ..*read
                };
                let planes = read_image(path, &options)?;
                if planes.len() != self.channels.len() {
                    return Err(PreprocessError::PageCount {
                        path: path.clone(),
                        pages: planes.len(),
                        channels: self.channels.len(),
                    });
                }
                Ok(planes.into_iter().map(|p| (path.clone(), p)).collect())
            }
            SiteFiles::PerChannel(list) => {
                if let Some((channel, path)) = list.iter().find(|(c, _)| !self.channels.contains(c))
                {
                    return Err(PreprocessError::UnknownChannel {
                        path: path.clone(),
                        channel: channel.clone(),
                        expected: self.channels.clone(),
                    });
                }
                let options = ReadOptions {
                    pages: Pages::First,
                    ..*read
                };
                self.channels
                    .iter()
                    .map(|channel| {
                        let (_, path) = list
                            .iter()
                            .find(|(c, _)| c == channel)
                            .ok_or_else(|| PreprocessError::MissingChannel(channel.clone()))?;
                        let mut planes = read_image(path, &options)?;
                        // Pages::First yields exactly one plane on success.
                        Ok((path.clone(), planes.swap_remove(0)))
                    })
                    .collect()
            }
        }
    }

    /// Stack, normalize and shape planes given in the spec's channel order.
    pub fn preprocess(&self, planes: &[(PathBuf, Plane)]) -> Result<ModelInput, PreprocessError> {
        self.validate()?;
        let (height, width, field) = self.stack(planes)?;
        let mut field = field;
        let plane_len = height * width;
        for (c, channel) in field.chunks_exact_mut(plane_len).enumerate() {
            self.normalize(c, channel);
        }
        let c = self.channels.len();
        match self.geometry {
            Geometry::Resize {
                height: oh,
                width: ow,
            } => {
                let (oh, ow) = (oh as usize, ow as usize);
                let data = if (oh, ow) == (height, width) {
                    field
                } else {
                    let mut data = Vec::with_capacity(c * oh * ow);
                    for channel in field.chunks_exact(plane_len) {
                        data.extend(resize_area(channel, height, width, oh, ow));
                    }
                    data
                };
                Ok(ModelInput {
                    shape: [1, c, oh, ow],
                    data,
                    origins: vec![(0, 0)],
                })
            }
            Geometry::Tile { size, stride } => {
                let too_small = || PreprocessError::TooSmallForTile {
                    width: width as u32,
                    height: height as u32,
                    size,
                };
                let ys =
                    tile_origins(height, size as usize, stride as usize).ok_or_else(too_small)?;
                let xs =
                    tile_origins(width, size as usize, stride as usize).ok_or_else(too_small)?;
                let s = size as usize;
                let mut data = Vec::with_capacity(ys.len() * xs.len() * c * s * s);
                let mut origins = Vec::with_capacity(ys.len() * xs.len());
                for &y in &ys {
                    for &x in &xs {
                        origins.push((y as u32, x as u32));
                        for channel in field.chunks_exact(plane_len) {
                            for row in y..y + s {
                                data.extend_from_slice(
                                    &channel[row * width + x..row * width + x + s],
                                );
                            }
                        }
                    }
                }
                Ok(ModelInput {
                    shape: [origins.len(), c, s, s],
                    data,
                    origins,
                })
            }
        }
    }

    /// Channels stacked as f32, `[c, h, w]`, after checking sizes and finiteness.
    fn stack(
        &self,
        planes: &[(PathBuf, Plane)],
    ) -> Result<(usize, usize, Vec<f32>), PreprocessError> {
        if planes.len() != self.channels.len() {
            return Err(PreprocessError::Spec(format!(
                "{} plane(s) given for {} channels",
                planes.len(),
                self.channels.len()
            )));
        }
        let (_, first) = &planes[0];
        let (width, height) = (first.width, first.height);
        let mut field = Vec::with_capacity(planes.len() * (width as usize) * (height as usize));
        for (path, plane) in planes {
            if (plane.width, plane.height) != (width, height) {
                return Err(PreprocessError::SizeMismatch {
                    path: path.clone(),
                    width: plane.width,
                    height: plane.height,
                    first: self.channels[0].clone(),
                    first_width: width,
                    first_height: height,
                });
            }
            // Integer samples are finite by construction; only float planes are counted.
            if let Pixels::F32(values) = &plane.pixels {
                let count = values.iter().filter(|x| !x.is_finite()).count();
                if count > 0 {
                    return Err(PreprocessError::NonFinite {
                        path: path.clone(),
                        count,
                    });
                }
            }
            plane.pixels.extend_f32(&mut field);
        }
        Ok((height as usize, width as usize, field))
    }

    fn normalize(&self, c: usize, channel: &mut [f32]) {
        match &self.normalization {
            Normalization::SelfStandardize { eps } => {
                // f64 sums: 16-bit images of millions of pixels lose digits in f32.
                let n = channel.len() as f64;
                let mean = sum_f64(channel, |x| x) / n;
                let var = sum_f64(channel, |x| (x - mean) * (x - mean)) / n;
                let scale = 1.0 / (var.sqrt() + f64::from(*eps));
                for x in channel {
                    *x = ((f64::from(*x) - mean) * scale) as f32;
                }
            }
            Normalization::Percentile { low, high, clip } => {
                let (lo, span) = (low[c], high[c] - low[c]);
                for x in channel {
                    let y = (*x - lo) / span;
                    *x = if *clip { y.clamp(0.0, 1.0) } else { y };
                }
            }
        }
    }
}

/// Sum of `f(x)` over `values` in f64, in eight interleaved partial sums:
/// one running sum is a chain of dependent additions the compiler may not
/// reorder, eight are independent and vectorize (about 4x faster here).
fn sum_f64(values: &[f32], f: impl Fn(f64) -> f64) -> f64 {
    let mut lanes = [0f64; 8];
    let chunks = values.chunks_exact(lanes.len());
    let rest: f64 = chunks.remainder().iter().map(|&x| f(f64::from(x))).sum();
    for chunk in chunks {
        for (lane, &x) in lanes.iter_mut().zip(chunk) {
            *lane += f(f64::from(x));
        }
    }
    lanes.iter().sum::<f64>() + rest
}

#[cfg(test)]
mod tests;
