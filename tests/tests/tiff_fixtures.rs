//! The TIFF reader against files written by Python's `tifffile` (an
//! independent encoder): every sample type, compression (including both
//! Deflate tags), strips and tiles, predictors, byte orders, BigTIFF and
//! multi-page files; then corrupted variants of all of them.

use std::path::Path;

use bfx_core::image::{
    ImageErrorKind, Pages, Pixels, ReadLimits, ReadOptions, decode_image, read_image,
};
use bfx_tests::run_python;

/// Writes the fixture matrix into argv[1] and prints one JSON line per file.
const WRITE_FIXTURES: &str = r#"
import itertools, json, os, sys
import numpy as np, tifffile
out = sys.argv[1]
rng = np.random.default_rng(7)
h, w = 37, 50  # not a multiple of the 16-pixel tiles: partial edge tiles
base = rng.integers(0, 2**16, size=(h, w))
arrays = {
    "uint8": (base % 256).astype(np.uint8),
    "uint16": base.astype(np.uint16),
    "float32": (base.astype(np.float32) / 3.0 - 1000.0),
}
codecs = {"none": None, "packbits": "packbits", "lzw": "lzw", "deflate8": "adobe_deflate", "deflate32946": "deflate"}
n = 0
for (dtype, arr), (cname, codec), layout, predictor in itertools.product(arrays.items(), codecs.items(), ["strips", "tiles"], [False, True]):
    if predictor and codec in (None, "packbits"):
        continue
    name = f"{dtype}_{cname}_{layout}_{'pred' if predictor else 'nopred'}.tif"
    kw = dict(compression=codec, photometric="minisblack")
    if predictor:
        kw["predictor"] = True
    if layout == "tiles":
        kw["tile"] = (16, 16)
    else:
        kw["rowsperstrip"] = 7
    path = os.path.join(out, name)
    tifffile.imwrite(path, arr, **kw)
    with tifffile.TiffFile(path) as t:
        page = t.pages[0]
        meta = dict(compression=int(page.compression), tiled=page.is_tiled, predictor=int(page.predictor))
    arr.astype("<" + arr.dtype.str[1:]).tofile(path + ".raw")
    print(json.dumps(dict(file=name, dtype=dtype, pages=1, height=h, width=w, **meta)))
# Big-endian, BigTIFF and a 3-page file.
for name, kw in [("be_uint16_lzw.tif", dict(byteorder=">", compression="lzw")), ("bigtiff_uint16_deflate.tif", dict(bigtiff=True, compression="adobe_deflate"))]:
    path = os.path.join(out, name)
    tifffile.imwrite(path, arrays["uint16"], photometric="minisblack", **kw)
    arrays["uint16"].astype("<u2").tofile(path + ".raw")
    with tifffile.TiffFile(path) as t:
        c = int(t.pages[0].compression)
    print(json.dumps(dict(file=name, dtype="uint16", pages=1, height=h, width=w, compression=c, tiled=False, predictor=1)))
stack = np.stack([arrays["uint16"], arrays["uint16"][::-1], arrays["uint16"] // 2])
path = os.path.join(out, "multipage_uint16_lzw.tif")
tifffile.imwrite(path, stack, photometric="minisblack", compression="lzw", metadata=None)
stack.astype("<u2").tofile(path + ".raw")
print(json.dumps(dict(file="multipage_uint16_lzw.tif", dtype="uint16", pages=3, height=h, width=w, compression=5, tiled=False, predictor=1)))
"#;

struct Fixture {
    file: String,
    dtype: String,
    pages: usize,
    compression: u64,
    tiled: bool,
    predictor: u64,
}

fn write_fixtures(dir: &Path) -> Vec<Fixture> {
    run_python(WRITE_FIXTURES, &[dir.as_os_str()])
        .lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("fixture index is JSON");
            Fixture {
                file: v["file"].as_str().expect("file").to_owned(),
                dtype: v["dtype"].as_str().expect("dtype").to_owned(),
                pages: v["pages"].as_u64().expect("pages") as usize,
                compression: v["compression"].as_u64().expect("compression"),
                tiled: v["tiled"].as_bool().expect("tiled"),
                predictor: v["predictor"].as_u64().expect("predictor"),
            }
        })
        .collect()
}

fn expected(raw: &[u8], dtype: &str) -> Pixels {
    match dtype {
        "uint8" => Pixels::U8(raw.to_vec()),
        "uint16" => Pixels::U16(
            raw.chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .collect(),
        ),
        "float32" => Pixels::F32(
            raw.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
        ),
        other => panic!("unknown dtype {other}"),
    }
}

#[test]
fn tifffile_fixtures_decode_bit_exactly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let fixtures = write_fixtures(dir.path());
    // The matrix really covers what the reader promises.
    for (tag, what) in [
        (1, "none"),
        (5, "LZW"),
        (8, "Deflate"),
        (32773, "PackBits"),
        (32946, "legacy Deflate"),
    ] {
        assert!(
            fixtures.iter().any(|f| f.compression == tag),
            "no fixture with compression {what} ({tag})"
        );
    }
    assert!(fixtures.iter().any(|f| f.tiled) && fixtures.iter().any(|f| !f.tiled));
    assert!(
        fixtures.iter().any(|f| f.predictor == 2),
        "no horizontal-predictor fixture"
    );
    for dtype in ["uint8", "uint16", "float32"] {
        assert!(
            fixtures
                .iter()
                .any(|f| f.dtype == dtype && f.tiled && f.compression == 32946)
        );
    }

    let options = ReadOptions {
        pages: Pages::All,
        ..ReadOptions::default()
    };
    let mut failures = Vec::new();
    for f in &fixtures {
        let path = dir.path().join(&f.file);
        let raw = std::fs::read(dir.path().join(format!("{}.raw", f.file))).expect("raw pixels");
        match read_image(&path, &options) {
            Ok(planes) => {
                assert_eq!(planes.len(), f.pages, "{}", f.file);
                let plane_bytes = raw.len() / f.pages;
                for (i, plane) in planes.iter().enumerate() {
                    assert_eq!((plane.width, plane.height), (50, 37), "{}", f.file);
                    let want = expected(&raw[i * plane_bytes..(i + 1) * plane_bytes], &f.dtype);
                    assert!(plane.pixels == want, "{} page {i}: pixels differ", f.file);
                }
            }
            Err(e) => failures.push(format!(
                "{} (compression {}, predictor {}): {e}",
                f.file, f.compression, f.predictor
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} fixtures failed:\n{}",
        failures.len(),
        fixtures.len(),
        failures.join("\n")
    );
}

#[test]
fn corrupted_tifffile_fixtures_never_panic() {
    let dir = tempfile::tempdir().expect("temp dir");
    let originals: Vec<Vec<u8>> = write_fixtures(dir.path())
        .iter()
        .map(|f| std::fs::read(dir.path().join(&f.file)).expect("fixture"))
        .collect();
    let options = ReadOptions {
        pages: Pages::All,
        limits: ReadLimits {
            max_pixels: 1 << 20,
            ..ReadLimits::default()
        },
    };
    let mut state = 0x853c_49e6_748f_ea9bu64;
    let mut next = |n: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % n as u64) as usize
    };
    let mut refused = 0;
    for i in 0..1000 {
        let mut bytes = originals[i % originals.len()].clone();
        if i % 2 == 0 {
            let keep = next(bytes.len());
            bytes.truncate(keep);
        } else {
            for _ in 0..1 + next(8) {
                let at = next(bytes.len());
                bytes[at] ^= 1 << next(8);
            }
        }
        match decode_image(&bytes, &options) {
            Err(ImageErrorKind::DecoderPanic(m)) => {
                panic!("variant {i}: the decoder panicked: {m}")
            }
            Err(_) => refused += 1,
            Ok(planes) => assert!(
                planes
                    .iter()
                    .all(|p| p.pixels.len() == (p.width * p.height) as usize)
            ),
        }
    }
    assert!(
        refused >= 500,
        "truncated files must be refused; only {refused} of 1000 variants were"
    );
}
