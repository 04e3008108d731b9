//! Reading acquired images into grayscale planes.
//!
//! Microscopes write one grayscale TIFF per channel (sometimes one
//! multi-page TIFF per site, pages = channels); RxRx-style datasets use
//! PNG. Every failure is an [`ImageError`] naming the file; no byte
//! sequence makes the reader panic or allocate past [`ReadLimits`].

mod lzw_fallback;
mod png_reader;
mod tiff_reader;

use std::fs::File;
use std::io::Read;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The pixel samples of one plane, row-major.
#[derive(Clone, Debug, PartialEq)]
pub enum Pixels {
    /// 8-bit unsigned.
    U8(Vec<u8>),
    /// 16-bit unsigned.
    U16(Vec<u16>),
    /// 32-bit IEEE float.
    F32(Vec<f32>),
}

impl Pixels {
    /// Number of samples.
    pub fn len(&self) -> usize {
        match self {
            Pixels::U8(v) => v.len(),
            Pixels::U16(v) => v.len(),
            Pixels::F32(v) => v.len(),
        }
    }

    /// True when there are no samples.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The sample type's name, for messages.
    pub fn sample_type(&self) -> &'static str {
        match self {
            Pixels::U8(_) => "uint8",
            Pixels::U16(_) => "uint16",
            Pixels::F32(_) => "float32",
        }
    }

    /// Append the samples as f32 (exact for every supported type).
    pub fn extend_f32(&self, out: &mut Vec<f32>) {
        match self {
            Pixels::U8(v) => out.extend(v.iter().map(|&x| f32::from(x))),
            Pixels::U16(v) => out.extend(v.iter().map(|&x| f32::from(x))),
            Pixels::F32(v) => out.extend_from_slice(v),
        }
    }
}

/// One grayscale image plane.
#[derive(Clone, Debug, PartialEq)]
pub struct Plane {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// `width * height` samples, row-major.
    pub pixels: Pixels,
}

/// Bounds that protect against decompression bombs and runaway files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReadLimits {
    /// Largest accepted width x height of a plane (default 67,108,864 = 8192 x 8192).
    pub max_pixels: u64,
    /// Largest accepted file size in bytes (default 1 GiB).
    pub max_file_bytes: u64,
    /// Most pages read from a multi-page file (default 64).
    pub max_pages: usize,
}

impl Default for ReadLimits {
    fn default() -> Self {
        ReadLimits {
            max_pixels: 8192 * 8192,
            max_file_bytes: 1 << 30,
            max_pages: 64,
        }
    }
}

/// Which pages of a file to read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pages {
    /// The first page only: one file per channel, the usual layout.
    #[default]
    First,
    /// Every page: one file per site, pages are the channels in order.
    All,
}

/// How to read a file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// Size bounds.
    pub limits: ReadLimits,
    /// Pages to read.
    pub pages: Pages,
}

/// A file that could not be read, and why.
#[derive(Debug, Error)]
#[error("{path}: {kind}")]
pub struct ImageError {
    /// The file.
    pub path: PathBuf,
    /// What went wrong.
    pub kind: ImageErrorKind,
}

/// What went wrong reading an image.
#[derive(Debug, Error)]
pub enum ImageErrorKind {
    /// The file could not be opened or read.
    #[error("cannot read the file: {0}")]
    Io(#[from] std::io::Error),
    /// Zero bytes.
    #[error("the file is empty")]
    Empty,
    /// Neither TIFF nor PNG.
    #[error("not a TIFF or PNG file (starts with {0:02x?})")]
    UnknownFormat(Vec<u8>),
    /// Bigger than [`ReadLimits::max_file_bytes`].
    #[error("the file has {bytes} bytes, more than the limit of {limit} (max_file_bytes)")]
    FileTooLarge {
        /// File size.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
    /// A plane bigger than [`ReadLimits::max_pixels`].
    #[error("{width}x{height} pixels exceed the limit of {limit} pixels (max_pixels)")]
    TooManyPixels {
        /// Declared width.
        width: u32,
        /// Declared height.
        height: u32,
        /// The limit.
        limit: u64,
    },
    /// More pages than [`ReadLimits::max_pages`].
    #[error("more than {0} pages (max_pages)")]
    TooManyPages(usize),
    /// Pages of one file differ in size.
    #[error("page {page} is {width}x{height}, page 0 is {first_width}x{first_height}")]
    PageSizeMismatch {
        /// The page index.
        page: usize,
        /// Its width.
        width: u32,
        /// Its height.
        height: u32,
        /// Width of page 0.
        first_width: u32,
        /// Height of page 0.
        first_height: u32,
    },
    /// A valid image of a kind bfx does not read (colour, signed, 64-bit, ...).
    #[error(
        "unsupported image: {0}; bfx reads grayscale 8-bit or 16-bit unsigned and 32-bit float"
    )]
    Unsupported(String),
    /// Damaged or incomplete data.
    #[error("corrupt or truncated image: {0}")]
    Corrupt(String),
    /// The decoder library panicked on this input. Caught so that one bad
    /// file cannot take down a long-running process; a bug to report.
    #[error("the image decoder failed unexpectedly: {0}")]
    DecoderPanic(String),
}

const TIFF_MAGICS: [&[u8]; 4] = [b"II*\0", b"MM\0*", b"II+\0", b"MM\0+"];
const PNG_MAGIC: &[u8] = b"\x89PNG\r\n\x1a\n";

/// Read the planes of an image file (TIFF or PNG, told apart by content).
pub fn read_image(path: &Path, options: &ReadOptions) -> Result<Vec<Plane>, ImageError> {
    let error = |kind| ImageError {
        path: path.to_owned(),
        kind,
    };
    let bytes = read_bounded(path, options.limits.max_file_bytes).map_err(error)?;
    decode_image(&bytes, options).map_err(error)
}

fn read_bounded(path: &Path, limit: u64) -> Result<Vec<u8>, ImageErrorKind> {
    let file = File::open(path)?;
    let bytes = file.metadata()?.len();
    if bytes > limit {
        return Err(ImageErrorKind::FileTooLarge { bytes, limit });
    }
    // Bounded again while reading: the file may grow after the size check.
    let mut buf = Vec::with_capacity(bytes as usize);
    file.take(limit + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > limit {
        return Err(ImageErrorKind::FileTooLarge {
            bytes: buf.len() as u64,
            limit,
        });
    }
    Ok(buf)
}

/// Decode an image held in memory.
pub fn decode_image(bytes: &[u8], options: &ReadOptions) -> Result<Vec<Plane>, ImageErrorKind> {
    if bytes.is_empty() {
        return Err(ImageErrorKind::Empty);
    }
    let decode: fn(&[u8], &ReadOptions) -> Result<Vec<Plane>, ImageErrorKind> =
        if TIFF_MAGICS.iter().any(|m| bytes.starts_with(m)) {
            tiff_reader::decode
        } else if bytes.starts_with(PNG_MAGIC) {
            png_reader::decode
        } else {
            return Err(ImageErrorKind::UnknownFormat(
                bytes[..bytes.len().min(8)].to_vec(),
            ));
        };
    catch_unwind(AssertUnwindSafe(|| decode(bytes, options))).unwrap_or_else(|panic| {
        let message = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".to_owned());
        Err(ImageErrorKind::DecoderPanic(message))
    })
}

/// Check a declared plane size against the limits before anything is allocated.
fn check_pixels(width: u32, height: u32, limits: &ReadLimits) -> Result<(), ImageErrorKind> {
    if width == 0 || height == 0 {
        return Err(ImageErrorKind::Corrupt(format!(
            "declared size {width}x{height}"
        )));
    }
    if u64::from(width) * u64::from(height) > limits.max_pixels {
        return Err(ImageErrorKind::TooManyPixels {
            width,
            height,
            limit: limits.max_pixels,
        });
    }
    Ok(())
}

/// Check that a decoded plane has exactly `width * height` samples.
fn plane(width: u32, height: u32, pixels: Pixels) -> Result<Plane, ImageErrorKind> {
    let expected = u64::from(width) * u64::from(height);
    if pixels.len() as u64 != expected {
        return Err(ImageErrorKind::Corrupt(format!(
            "decoded {} samples for a {width}x{height} plane",
            pixels.len()
        )));
    }
    Ok(Plane {
        width,
        height,
        pixels,
    })
}

#[cfg(test)]
mod tests;
