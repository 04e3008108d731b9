//! PNG decoding (RxRx-style datasets): grayscale 8 or 16 bits; lower bit
//! depths are expanded to 8.

use std::io::Cursor;

use png::{BitDepth, ColorType, Decoder, DecodingError, Transformations};

use super::{ImageErrorKind, Pixels, Plane, ReadOptions, check_pixels, plane};

pub(super) fn decode(bytes: &[u8], options: &ReadOptions) -> Result<Vec<Plane>, ImageErrorKind> {
    let max_bytes =
        usize::try_from(options.limits.max_pixels.saturating_mul(2)).unwrap_or(usize::MAX);
    let mut decoder =
        Decoder::new_with_limits(Cursor::new(bytes), png::Limits { bytes: max_bytes });
    decoder.set_transformations(Transformations::EXPAND);
    let mut reader = decoder.read_info().map_err(from_png)?;
    let (width, height) = reader.info().size();
    check_pixels(width, height, &options.limits)?;
    let (color, depth) = reader.output_color_type();
    if color != ColorType::Grayscale {
        return Err(ImageErrorKind::Unsupported(format!("{color:?} PNG")));
    }
    let size = reader
        .output_buffer_size()
        .ok_or_else(|| ImageErrorKind::Corrupt("the declared size overflows".to_owned()))?;
    let mut buf = vec![0u8; size];
    let frame = reader.next_frame(&mut buf).map_err(from_png)?;
    buf.truncate(frame.buffer_size());
    let pixels = match depth {
        BitDepth::Sixteen => Pixels::U16(
            buf.chunks_exact(2)
                .map(|b| u16::from_be_bytes([b[0], b[1]]))
                .collect(),
        ),
        _ => Pixels::U8(buf),
    };
    Ok(vec![plane(width, height, pixels)?])
}

fn from_png(error: DecodingError) -> ImageErrorKind {
    match error {
        DecodingError::IoError(e) => {
            ImageErrorKind::Corrupt(format!("the file ends early or cannot be read: {e}"))
        }
        DecodingError::LimitsExceeded => {
            ImageErrorKind::Corrupt("a buffer would exceed the decoding limits".to_owned())
        }
        other => ImageErrorKind::Corrupt(other.to_string()),
    }
}
