//! TIFF decoding with the `tiff` crate: strips or tiles, uncompressed,
//! PackBits, LZW or Deflate (tags 8 and 32946), one page or all.

use std::io::{Cursor, ErrorKind};

use tiff::decoder::{Decoder, DecodingResult, Limits};
use tiff::{ColorType, TiffError};

use super::lzw_fallback;
use super::{ImageErrorKind, Pages, Pixels, Plane, ReadOptions, check_pixels, plane};

pub(super) fn decode(bytes: &[u8], options: &ReadOptions) -> Result<Vec<Plane>, ImageErrorKind> {
    let limits = &options.limits;
    // A plane of max_pixels float samples is the largest buffer we accept.
    let max_bytes = usize::try_from(limits.max_pixels.saturating_mul(4)).unwrap_or(usize::MAX);
    let mut tiff_limits = Limits::default();
    tiff_limits.decoding_buffer_size = max_bytes;
    tiff_limits.intermediate_buffer_size = max_bytes;
    let mut decoder = Decoder::new(Cursor::new(bytes))
        .map_err(from_tiff)?
        .with_limits(tiff_limits);

    let mut planes: Vec<Plane> = Vec::new();
    loop {
        let (width, height) = decoder.dimensions().map_err(from_tiff)?;
        check_pixels(width, height, limits)?;
        let color = decoder.colortype().map_err(from_tiff)?;
        if !matches!(color, ColorType::Gray(8 | 16 | 32)) {
            return Err(ImageErrorKind::Unsupported(format!("{color:?} pixels")));
        }
        let pixels = match decoder.read_image() {
            Ok(DecodingResult::U8(v)) => Pixels::U8(v),
            Ok(DecodingResult::U16(v)) => Pixels::U16(v),
            Ok(DecodingResult::F32(v)) => Pixels::F32(v),
            Ok(other) => return Err(ImageErrorKind::Unsupported(sample_name(&other).to_owned())),
            Err(e) if e.to_string().contains(lzw_fallback::TRIGGER) => {
                lzw_fallback::decode_page(&mut decoder, bytes, width, height)
                    .ok_or_else(|| from_tiff(e))?
            }
            Err(e) => return Err(from_tiff(e)),
        };
        let page = plane(width, height, pixels)?;
        if let Some(first) = planes.first()
            && (first.width, first.height) != (width, height)
        {
            return Err(ImageErrorKind::PageSizeMismatch {
                page: planes.len(),
                width,
                height,
                first_width: first.width,
                first_height: first.height,
            });
        }
        planes.push(page);
        if options.pages == Pages::First || !decoder.more_images() {
            return Ok(planes);
        }
        if planes.len() >= limits.max_pages {
            return Err(ImageErrorKind::TooManyPages(limits.max_pages));
        }
        decoder.next_image().map_err(from_tiff)?;
    }
}

fn sample_name(result: &DecodingResult) -> &'static str {
    match result {
        DecodingResult::U8(_) => "uint8",
        DecodingResult::U16(_) => "uint16",
        DecodingResult::U32(_) => "uint32 samples",
        DecodingResult::U64(_) => "uint64 samples",
        DecodingResult::F16(_) => "float16 samples",
        DecodingResult::F32(_) => "float32",
        DecodingResult::F64(_) => "float64 samples",
        DecodingResult::I8(_) => "int8 samples",
        DecodingResult::I16(_) => "int16 samples",
        DecodingResult::I32(_) => "int32 samples",
        DecodingResult::I64(_) => "int64 samples",
    }
}

fn from_tiff(error: TiffError) -> ImageErrorKind {
    match error {
        TiffError::UnsupportedError(e) => ImageErrorKind::Unsupported(e.to_string()),
        TiffError::IoError(e) if e.kind() == ErrorKind::UnexpectedEof => {
            ImageErrorKind::Corrupt("the file ends early".to_owned())
        }
        TiffError::LimitsExceeded => {
            ImageErrorKind::Corrupt("a buffer would exceed the decoding limits".to_owned())
        }
        other => ImageErrorKind::Corrupt(other.to_string()),
    }
}
