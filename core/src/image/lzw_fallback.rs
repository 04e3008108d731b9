//! A second decoder for LZW pages that the `tiff` crate's streaming reader
//! rejects although they are valid.
//!
//! tiff 0.11.3 reports "no lzw end code found" for some tiled 8-bit LZW
//! files whose right-edge tiles carry padding (seen with files written by
//! tifffile/imagecodecs; each tile's stream is well-formed and ends with
//! the end code). Decoding each chunk in one shot with `weezl`, the same
//! codec, works. This module does only that: one grayscale page, strips or
//! tiles, no predictor or the horizontal one. Anything else keeps the
//! original error.

use std::io::{Read, Seek};

use tiff::decoder::Decoder;
use tiff::tags::{ByteOrder, Tag};

use super::Pixels;

/// The error text of the tiff crate's LZW reader that triggers this path.
pub(super) const TRIGGER: &str = "no lzw end code found";

/// Decode the current page of `decoder` (an LZW page of `file`) as `width x height` samples.
pub(super) fn decode_page<R: Read + Seek>(
    decoder: &mut Decoder<R>,
    file: &[u8],
    width: u32,
    height: u32,
) -> Option<Pixels> {
    let tag = |d: &mut Decoder<R>, t: Tag| d.find_tag_unsigned::<u64>(t).ok().flatten();
    let bits = tag(decoder, Tag::BitsPerSample)?;
    let format = tag(decoder, Tag::SampleFormat).unwrap_or(1);
    let predictor = tag(decoder, Tag::Predictor).unwrap_or(1);
    if tag(decoder, Tag::SamplesPerPixel).unwrap_or(1) != 1
        || !matches!((bits, format, predictor), (8 | 16, 1, 1 | 2) | (32, 3, 1))
    {
        return None;
    }
    let (w, h) = (width as usize, height as usize);
    // Chunk grid: tiles, or full-width strips.
    let (cw, ch, offsets, counts) = match tag(decoder, Tag::TileWidth) {
        Some(tw) => (
            tw as usize,
            tag(decoder, Tag::TileLength)? as usize,
            decoder.get_tag_u64_vec(Tag::TileOffsets).ok()?,
            decoder.get_tag_u64_vec(Tag::TileByteCounts).ok()?,
        ),
        None => (
            w,
            tag(decoder, Tag::RowsPerStrip).map_or(h, |r| (r as usize).min(h)),
            decoder.get_tag_u64_vec(Tag::StripOffsets).ok()?,
            decoder.get_tag_u64_vec(Tag::StripByteCounts).ok()?,
        ),
    };
    if cw == 0 || ch == 0 {
        return None;
    }
    let across = w.div_ceil(cw);
    if offsets.len() != counts.len() || offsets.len() < across * h.div_ceil(ch) {
        return None;
    }
    let bytes_per_sample = (bits / 8) as usize;
    let big_endian = decoder.byte_order() == ByteOrder::BigEndian;
    let mut plane = vec![0u64; w * h];
    for (i, (&offset, &count)) in offsets
        .iter()
        .zip(&counts)
        .enumerate()
        .take(across * h.div_ceil(ch))
    {
        let start = usize::try_from(offset).ok()?;
        let data = file.get(start..start.checked_add(usize::try_from(count).ok()?)?)?;
        let raw = weezl::decode::Decoder::with_tiff_size_switch(weezl::BitOrder::Msb, 8)
            .decode(data)
            .ok()?;
        let (x0, y0) = ((i % across) * cw, (i / across) * ch);
        for (row, y) in (y0..(y0 + ch).min(h)).enumerate() {
            let src = raw.get(row * cw * bytes_per_sample..(row + 1) * cw * bytes_per_sample)?;
            let mut prev = 0u64;
            for (col, sample) in src.chunks_exact(bytes_per_sample).enumerate() {
                let push = |acc: u64, &b: &u8| (acc << 8) | u64::from(b);
                let mut value = if big_endian {
                    sample.iter().fold(0, push)
                } else {
                    sample.iter().rev().fold(0, push)
                };
                if predictor == 2 {
                    value = (value + prev) & ((1u64 << bits) - 1);
                    prev = value;
                }
                if x0 + col < w {
                    plane[y * w + x0 + col] = value;
                }
            }
        }
    }
    // The casts keep exactly `bits` bits, checked above.
    Some(match bits {
        8 => Pixels::U8(plane.into_iter().map(|v| v as u8).collect()),
        16 => Pixels::U16(plane.into_iter().map(|v| v as u16).collect()),
        _ => Pixels::F32(
            plane
                .into_iter()
                .map(|v| f32::from_bits(v as u32))
                .collect(),
        ),
    })
}
