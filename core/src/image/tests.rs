use std::io::Cursor;

use tiff::encoder::{Compression, DeflateLevel, TiffEncoder, colortype};

use super::*;

const W: u32 = 37;
const H: u32 = 23;

fn ramp_u16() -> Vec<u16> {
    (0..W * H).map(|i| (i * 2711 % 65536) as u16).collect()
}

fn compressions() -> [Compression; 4] {
    [
        Compression::Uncompressed,
        Compression::Lzw,
        Compression::Deflate(DeflateLevel::Balanced),
        Compression::Packbits,
    ]
}

fn tiff_bytes(
    compression: Compression,
    write: impl FnOnce(&mut TiffEncoder<&mut Cursor<Vec<u8>>>),
) -> Vec<u8> {
    let mut out = Cursor::new(Vec::new());
    let mut encoder = TiffEncoder::new(&mut out)
        .unwrap()
        .with_compression(compression);
    write(&mut encoder);
    out.into_inner()
}

fn decode_all(bytes: &[u8]) -> Result<Vec<Plane>, ImageErrorKind> {
    decode_image(
        bytes,
        &ReadOptions {
            pages: Pages::All,
            ..ReadOptions::default()
        },
    )
}

#[test]
fn tiff_round_trips_every_sample_type_and_compression() {
    let u16s = ramp_u16();
    let u8s: Vec<u8> = u16s.iter().map(|&x| (x >> 8) as u8).collect();
    let f32s: Vec<f32> = u16s.iter().map(|&x| f32::from(x) / 7.0 - 100.0).collect();
    for (i, compression) in compressions().into_iter().enumerate() {
        let bytes = tiff_bytes(compression, |e| {
            e.write_image::<colortype::Gray8>(W, H, &u8s).unwrap()
        });
        assert_eq!(
            decode_all(&bytes).unwrap(),
            vec![Plane {
                width: W,
                height: H,
                pixels: Pixels::U8(u8s.clone())
            }]
        );
        let bytes = tiff_bytes(compression, |e| {
            e.write_image::<colortype::Gray16>(W, H, &u16s).unwrap()
        });
        assert_eq!(
            decode_all(&bytes).unwrap()[0].pixels,
            Pixels::U16(u16s.clone()),
            "compression {i}"
        );
        let bytes = tiff_bytes(compression, |e| {
            e.write_image::<colortype::Gray32Float>(W, H, &f32s)
                .unwrap()
        });
        assert_eq!(
            decode_all(&bytes).unwrap()[0].pixels,
            Pixels::F32(f32s.clone()),
            "compression {i}"
        );
    }
}

#[test]
fn multi_page_files_give_one_plane_per_page_on_request() {
    let pages: Vec<Vec<u16>> = (0..3u16)
        .map(|p| ramp_u16().iter().map(|x| x.wrapping_add(p)).collect())
        .collect();
    let bytes = tiff_bytes(Compression::Lzw, |e| {
        for page in &pages {
            e.write_image::<colortype::Gray16>(W, H, page).unwrap();
        }
    });
    let all = decode_all(&bytes).unwrap();
    assert_eq!(all.len(), 3);
    for (plane, page) in all.iter().zip(&pages) {
        assert_eq!(plane.pixels, Pixels::U16(page.clone()));
    }
    let first = decode_image(&bytes, &ReadOptions::default()).unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0], all[0]);
    let few = ReadOptions {
        pages: Pages::All,
        limits: ReadLimits {
            max_pages: 2,
            ..ReadLimits::default()
        },
    };
    assert!(matches!(
        decode_image(&bytes, &few),
        Err(ImageErrorKind::TooManyPages(2))
    ));
}

#[test]
fn pages_of_different_sizes_are_refused() {
    let bytes = tiff_bytes(Compression::Uncompressed, |e| {
        e.write_image::<colortype::Gray8>(4, 4, &[1; 16]).unwrap();
        e.write_image::<colortype::Gray8>(5, 4, &[1; 20]).unwrap();
    });
    let err = decode_all(&bytes).unwrap_err();
    assert_eq!(err.to_string(), "page 1 is 5x4, page 0 is 4x4");
}

#[test]
fn colour_and_signed_tiffs_are_unsupported_not_misread() {
    let rgb = tiff_bytes(Compression::Uncompressed, |e| {
        e.write_image::<colortype::RGB8>(2, 2, &[0; 12]).unwrap()
    });
    assert!(matches!(
        decode_all(&rgb),
        Err(ImageErrorKind::Unsupported(_))
    ));
    let i16s = tiff_bytes(Compression::Uncompressed, |e| {
        e.write_image::<colortype::GrayI16>(2, 2, &[-1; 4]).unwrap()
    });
    let err = decode_all(&i16s).unwrap_err();
    assert!(err.to_string().contains("int16"), "{err}");
}

#[test]
fn png_grayscale_8_and_16_bit() {
    for depth in [png::BitDepth::Eight, png::BitDepth::Sixteen] {
        let samples = ramp_u16();
        let mut data = Vec::new();
        {
            let mut enc = png::Encoder::new(&mut data, W, H);
            enc.set_color(png::ColorType::Grayscale);
            enc.set_depth(depth);
            let mut writer = enc.write_header().unwrap();
            let raw: Vec<u8> = match depth {
                png::BitDepth::Sixteen => samples.iter().flat_map(|x| x.to_be_bytes()).collect(),
                _ => samples.iter().map(|&x| x as u8).collect(),
            };
            writer.write_image_data(&raw).unwrap();
        }
        let planes = decode_all(&data).unwrap();
        let want = match depth {
            png::BitDepth::Sixteen => Pixels::U16(samples),
            _ => Pixels::U8(samples.iter().map(|&x| x as u8).collect()),
        };
        assert_eq!(
            planes,
            vec![Plane {
                width: W,
                height: H,
                pixels: want
            }]
        );
    }
}

/// A minimal little-endian TIFF declaring `width` x `height` 8-bit pixels
/// with one strip of `data`, however large it claims to be.
fn declared_tiff(width: u32, height: u32, data: &[u8]) -> Vec<u8> {
    let entries: [(u16, u16, u32); 8] = [
        (256, 4, width),              // ImageWidth
        (257, 4, height),             // ImageLength
        (258, 3, 8),                  // BitsPerSample
        (259, 3, 1),                  // Compression: none
        (262, 3, 1),                  // PhotometricInterpretation: BlackIsZero
        (273, 4, 8 + 2 + 8 * 12 + 4), // StripOffsets: right after the IFD
        (278, 4, height),             // RowsPerStrip
        (279, 4, data.len() as u32),  // StripByteCounts
    ];
    let mut out = b"II*\0".to_vec();
    out.extend(8u32.to_le_bytes());
    out.extend((entries.len() as u16).to_le_bytes());
    for (tag, kind, value) in entries {
        out.extend(tag.to_le_bytes());
        out.extend(kind.to_le_bytes());
        out.extend(1u32.to_le_bytes());
        match kind {
            3 => out.extend((value as u16).to_le_bytes().into_iter().chain([0, 0])),
            _ => out.extend(value.to_le_bytes()),
        }
    }
    out.extend(0u32.to_le_bytes());
    out.extend_from_slice(data);
    out
}

#[test]
fn decompression_bombs_are_refused_before_allocating() {
    assert_eq!(
        decode_all(&declared_tiff(3, 2, &[1, 2, 3, 4, 5, 6])).unwrap()[0].pixels,
        Pixels::U8(vec![1, 2, 3, 4, 5, 6])
    );
    let err = decode_all(&declared_tiff(100_000, 100_000, &[0; 64])).unwrap_err();
    assert_eq!(
        err.to_string(),
        "100000x100000 pixels exceed the limit of 67108864 pixels (max_pixels)"
    );
    let tight = ReadOptions {
        limits: ReadLimits {
            max_pixels: 5,
            ..ReadLimits::default()
        },
        ..ReadOptions::default()
    };
    assert!(matches!(
        decode_image(&declared_tiff(3, 2, &[0; 6]), &tight),
        Err(ImageErrorKind::TooManyPixels { .. })
    ));
    // Declared within limits but the strip is short: an error, not garbage.
    assert!(matches!(
        decode_all(&declared_tiff(64, 64, &[0; 10])),
        Err(ImageErrorKind::Corrupt(_))
    ));
}

#[test]
fn file_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("A01_s1_w1.tif");
    let err = read_image(&missing, &ReadOptions::default()).unwrap_err();
    assert!(matches!(err.kind, ImageErrorKind::Io(_)));
    assert!(
        err.to_string()
            .starts_with(&format!("{}: cannot read the file", missing.display())),
        "{err}"
    );

    let empty = dir.path().join("empty.tif");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(
        read_image(&empty, &ReadOptions::default())
            .unwrap_err()
            .kind,
        ImageErrorKind::Empty
    ));

    let text = dir.path().join("notes.tif");
    std::fs::write(&text, b"hello, not a tiff").unwrap();
    let err = read_image(&text, &ReadOptions::default()).unwrap_err();
    assert!(
        err.to_string()
            .ends_with("not a TIFF or PNG file (starts with [68, 65, 6c, 6c, 6f, 2c, 20, 6e])"),
        "{err}"
    );

    let big = dir.path().join("big.tif");
    std::fs::write(&big, declared_tiff(3, 2, &[0; 6])).unwrap();
    let small = ReadOptions {
        limits: ReadLimits {
            max_file_bytes: 16,
            ..ReadLimits::default()
        },
        ..ReadOptions::default()
    };
    assert!(matches!(
        read_image(&big, &small).unwrap_err().kind,
        ImageErrorKind::FileTooLarge { limit: 16, .. }
    ));
    assert_eq!(
        read_image(&big, &ReadOptions::default()).unwrap()[0].width,
        3
    );
}

/// xorshift64: deterministic variants without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn truncated_and_bit_flipped_files_never_panic() {
    let u16s = ramp_u16();
    let mut originals: Vec<Vec<u8>> = compressions()
        .into_iter()
        .map(|c| {
            tiff_bytes(c, |e| {
                e.write_image::<colortype::Gray16>(W, H, &u16s).unwrap();
                e.write_image::<colortype::Gray16>(W, H, &u16s).unwrap();
            })
        })
        .collect();
    originals.push(declared_tiff(3, 2, &[1, 2, 3, 4, 5, 6]));
    let options = ReadOptions {
        pages: Pages::All,
        // Small limits keep a flipped size field from making the test slow;
        // the limit path itself is part of what is exercised.
        limits: ReadLimits {
            max_pixels: 1 << 20,
            ..ReadLimits::default()
        },
    };
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut ok, mut refused) = (0, 0);
    for i in 0..1000 {
        let mut bytes = originals[i % originals.len()].clone();
        if i % 2 == 0 {
            bytes.truncate(rng.below(bytes.len()));
        } else {
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(bytes.len());
                bytes[at] ^= 1 << rng.below(8);
            }
        }
        match decode_image(&bytes, &options) {
            Ok(planes) => {
                ok += 1;
                for p in planes {
                    assert_eq!(
                        p.pixels.len() as u64,
                        u64::from(p.width) * u64::from(p.height)
                    );
                }
            }
            Err(ImageErrorKind::DecoderPanic(message)) => {
                panic!("variant {i}: decoder panicked: {message}")
            }
            Err(_) => refused += 1,
        }
    }
    assert_eq!(ok + refused, 1000);
    assert!(
        refused >= 500,
        "every truncation must be refused; refused only {refused}"
    );
}
