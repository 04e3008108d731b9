use std::path::PathBuf;

use tiff::encoder::{Compression, TiffEncoder, colortype};

use super::*;
use crate::image::{Pixels, Plane};

fn plane_u16(w: u32, h: u32, f: impl Fn(u32, u32) -> u16) -> Plane {
    let pixels = (0..h)
        .flat_map(|y| (0..w).map(move |x| (x, y)))
        .map(|(x, y)| f(x, y))
        .collect();
    Plane {
        width: w,
        height: h,
        pixels: Pixels::U16(pixels),
    }
}

fn spec(channels: &[&str], normalization: Normalization, geometry: Geometry) -> PreprocessSpec {
    PreprocessSpec {
        channels: channels.iter().map(|c| c.to_string()).collect(),
        normalization,
        geometry,
    }
}

fn named(planes: Vec<Plane>) -> Vec<(PathBuf, Plane)> {
    planes
        .into_iter()
        .enumerate()
        .map(|(i, p)| (PathBuf::from(format!("c{i}.tif")), p))
        .collect()
}

const STD: Normalization = Normalization::SelfStandardize { eps: 1e-6 };

#[test]
fn area_resize_by_integer_factor_is_the_block_mean() {
    let plane: Vec<f32> = (0..24).map(|i| i as f32).collect(); // 4 x 6
    let out = resize_area(&plane, 4, 6, 2, 3);
    let block = |y: usize, x: usize| {
        (plane[y * 6 + x]
            + plane[y * 6 + x + 1]
            + plane[(y + 1) * 6 + x]
            + plane[(y + 1) * 6 + x + 1])
            / 4.0
    };
    assert_eq!(
        out,
        vec![
            block(0, 0),
            block(0, 2),
            block(0, 4),
            block(2, 0),
            block(2, 2),
            block(2, 4)
        ]
    );
    assert_eq!(resize_area(&plane, 4, 6, 4, 6), plane);
}

#[test]
fn area_resize_by_fractional_factor_weights_partial_pixels() {
    // 3 -> 2 along x: output 0 covers pixel 0 and half of pixel 1.
    let out = resize_area(&[3.0, 6.0, 9.0], 1, 3, 1, 2);
    assert!((out[0] - (3.0 + 0.5 * 6.0) / 1.5).abs() < 1e-6, "{out:?}");
    assert!((out[1] - (0.5 * 6.0 + 9.0) / 1.5).abs() < 1e-6, "{out:?}");
    // The mean survives any shrink.
    let plane: Vec<f32> = (0..463 * 461).map(|i| ((i * 7919) % 4096) as f32).collect();
    let out = resize_area(&plane, 461, 463, 64, 64);
    let mean = |v: &[f32]| v.iter().map(|&x| f64::from(x)).sum::<f64>() / v.len() as f64;
    assert!(
        (mean(&plane) - mean(&out)).abs() < 1e-3,
        "{} vs {}",
        mean(&plane),
        mean(&out)
    );
}

#[test]
fn tiles_cover_the_field_with_the_last_aligned_to_the_edge() {
    assert_eq!(tile_origins(10, 4, 4), Some(vec![0, 4, 6]));
    assert_eq!(tile_origins(8, 4, 4), Some(vec![0, 4]));
    assert_eq!(tile_origins(8, 4, 2), Some(vec![0, 2, 4]));
    assert_eq!(tile_origins(4, 4, 4), Some(vec![0]));
    assert_eq!(tile_origins(3, 4, 4), None);
}

#[test]
fn self_standardization_gives_zero_mean_unit_std_per_channel() {
    let s = spec(
        &["w1", "w2"],
        STD,
        Geometry::Resize {
            height: 5,
            width: 7,
        },
    );
    let planes = named(vec![
        plane_u16(7, 5, |x, y| (x * 100 + y * 3) as u16),
        plane_u16(7, 5, |x, _| 60000 - x as u16),
    ]);
    let input = s.preprocess(&planes).unwrap();
    assert_eq!(input.shape, [1, 2, 5, 7]);
    for channel in input.data.chunks(35) {
        let mean = channel.iter().map(|&x| f64::from(x)).sum::<f64>() / 35.0;
        let var = channel
            .iter()
            .map(|&x| (f64::from(x) - mean).powi(2))
            .sum::<f64>()
            / 35.0;
        assert!(
            mean.abs() < 1e-6 && (var.sqrt() - 1.0).abs() < 1e-5,
            "mean {mean} var {var}"
        );
    }
    // Gain and offset of an image do not change its standardized form.
    let brighter = named(vec![
        plane_u16(7, 5, |x, y| 2 * (x * 100 + y * 3) as u16 + 500),
        plane_u16(7, 5, |x, _| 60000 - x as u16),
    ]);
    let b = s.preprocess(&brighter).unwrap();
    assert!(
        input
            .data
            .iter()
            .zip(&b.data)
            .all(|(a, b)| (a - b).abs() < 1e-5)
    );
}

#[test]
fn percentile_scaling_uses_stored_values_and_clips() {
    let norm = Normalization::Percentile {
        low: vec![100.0],
        high: vec![300.0],
        clip: true,
    };
    let s = spec(
        &["w1"],
        norm,
        Geometry::Resize {
            height: 1,
            width: 4,
        },
    );
    let planes = named(vec![Plane {
        width: 4,
        height: 1,
        pixels: Pixels::U16(vec![0, 100, 200, 1000]),
    }]);
    assert_eq!(
        s.preprocess(&planes).unwrap().data,
        vec![0.0, 0.0, 0.5, 1.0]
    );
    let field: Vec<f32> = (0..=100)
        .map(|x| x as f32)
        .chain((0..=100).map(|x| 1000.0 + x as f32))
        .collect();
    assert_eq!(
        fit_percentiles(&[&field], 2, 1.0, 99.0),
        (vec![1.0, 1001.0], vec![99.0, 1099.0])
    );
}

#[test]
fn tiling_cuts_every_channel_at_the_same_origins() {
    let s = spec(
        &["a", "b"],
        Normalization::Percentile {
            low: vec![0.0, 0.0],
            high: vec![1.0, 1.0],
            clip: false,
        },
        Geometry::Tile { size: 4, stride: 4 },
    );
    let planes = named(vec![
        plane_u16(10, 6, |x, y| (y * 10 + x) as u16),
        plane_u16(10, 6, |x, y| 1000 + (y * 10 + x) as u16),
    ]);
    let input = s.preprocess(&planes).unwrap();
    assert_eq!(input.shape, [6, 2, 4, 4]);
    assert_eq!(
        input.origins,
        vec![(0, 0), (0, 4), (0, 6), (2, 0), (2, 4), (2, 6)]
    );
    // Tile 4 starts at (2, 4): its channel b, row 1, column 2 is pixel (3, 6).
    let [_, c, h, w] = input.shape;
    assert_eq!(input.data[4 * c * h * w + h * w + w + 2], 1000.0 + 36.0);
    let small = named(vec![plane_u16(3, 3, |_, _| 0), plane_u16(3, 3, |_, _| 0)]);
    assert_eq!(
        s.preprocess(&small).unwrap_err().to_string(),
        "the field is 3x3, smaller than the 4x4 tile"
    );
}

#[test]
fn bad_sites_and_specs_are_explained() {
    let s = spec(
        &["w1", "w2"],
        STD,
        Geometry::Resize {
            height: 2,
            width: 2,
        },
    );
    let err = s
        .preprocess(&named(vec![
            plane_u16(4, 4, |_, _| 1),
            plane_u16(5, 4, |_, _| 1),
        ]))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "c1.tif: 5x4 pixels, but channel \"w1\" is 4x4"
    );
    let nan = Plane {
        width: 2,
        height: 1,
        pixels: Pixels::F32(vec![f32::NAN, f32::INFINITY]),
    };
    let err = s
        .preprocess(&named(vec![plane_u16(2, 1, |_, _| 1), nan]))
        .unwrap_err();
    assert_eq!(err.to_string(), "c1.tif: 2 NaN or infinite pixel(s)");
    let files = SiteFiles::PerChannel(vec![
        ("w1".into(), "a.tif".into()),
        ("w9".into(), "b.tif".into()),
    ]);
    let err = s.load_site(&files, &ReadOptions::default()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "b.tif: channel \"w9\" is not one of the model's channels [\"w1\", \"w2\"]"
    );
    let files = SiteFiles::PerChannel(vec![("w1".into(), "a.tif".into())]);
    let err = s.read_planes(&files, &ReadOptions::default()).unwrap_err();
    assert!(matches!(
        err,
        PreprocessError::Image(_) | PreprocessError::MissingChannel(_)
    ));

    for (bad, message) in [
        (
            spec(
                &[],
                STD,
                Geometry::Resize {
                    height: 1,
                    width: 1,
                },
            ),
            "no channels",
        ),
        (
            spec(
                &["a", "a"],
                STD,
                Geometry::Resize {
                    height: 1,
                    width: 1,
                },
            ),
            "channel \"a\" is listed twice",
        ),
        (
            spec(
                &["a"],
                Normalization::SelfStandardize { eps: 0.0 },
                Geometry::Resize {
                    height: 1,
                    width: 1,
                },
            ),
            "eps must be > 0, got 0",
        ),
        (
            spec(&["a"], STD, Geometry::Tile { size: 0, stride: 1 }),
            "tile size 0 and stride 1 must be >= 1",
        ),
        (
            spec(
                &["a"],
                Normalization::Percentile {
                    low: vec![5.0],
                    high: vec![5.0],
                    clip: true,
                },
                Geometry::Resize {
                    height: 1,
                    width: 1,
                },
            ),
            "channel \"a\": high percentile 5 must be above low 5",
        ),
        (
            spec(
                &["a", "b"],
                Normalization::Percentile {
                    low: vec![0.0],
                    high: vec![1.0],
                    clip: true,
                },
                Geometry::Resize {
                    height: 1,
                    width: 1,
                },
            ),
            "2 channels but 1 low and 1 high percentile values",
        ),
    ] {
        assert_eq!(
            bad.validate().unwrap_err().to_string(),
            format!("invalid preprocessing spec: {message}")
        );
    }
}

#[test]
fn loading_from_files_equals_preprocessing_the_planes() {
    let dir = tempfile::tempdir().unwrap();
    let planes = vec![
        plane_u16(9, 7, |x, y| (x * y) as u16),
        plane_u16(9, 7, |x, y| (x + 40 * y) as u16),
    ];
    let raw = |p: &Plane| match &p.pixels {
        Pixels::U16(v) => v.clone(),
        _ => unreachable!(),
    };
    let mut per_channel = Vec::new();
    for (i, p) in planes.iter().enumerate() {
        let path = dir.path().join(format!("P_A01_s1_w{}.tif", i + 1));
        let mut enc = TiffEncoder::new(std::fs::File::create(&path).unwrap())
            .unwrap()
            .with_compression(Compression::Lzw);
        enc.write_image::<colortype::Gray16>(9, 7, &raw(p)).unwrap();
        // Listed in reverse: the spec's order decides the stacking.
        per_channel.insert(0, (format!("w{}", i + 1), path));
    }
    let multi = dir.path().join("P_A01_s1.tif");
    let mut enc = TiffEncoder::new(std::fs::File::create(&multi).unwrap()).unwrap();
    for p in &planes {
        enc.write_image::<colortype::Gray16>(9, 7, &raw(p)).unwrap();
    }
    drop(enc);

    let s = spec(
        &["w1", "w2"],
        STD,
        Geometry::Resize {
            height: 4,
            width: 4,
        },
    );
    let expected = s.preprocess(&named(planes)).unwrap();
    let read = ReadOptions::default();
    assert_eq!(
        s.load_site(&SiteFiles::PerChannel(per_channel), &read)
            .unwrap(),
        expected
    );
    assert_eq!(
        s.load_site(&SiteFiles::MultiPage(multi.clone()), &read)
            .unwrap(),
        expected
    );
    let three = spec(
        &["w1", "w2", "w3"],
        STD,
        Geometry::Resize {
            height: 4,
            width: 4,
        },
    );
    let err = three
        .load_site(&SiteFiles::MultiPage(multi), &read)
        .unwrap_err();
    assert!(
        err.to_string()
            .ends_with("2 page(s), but the model has 3 channels"),
        "{err}"
    );
}

#[test]
fn lane_sums_equal_a_plain_sum_at_every_length() {
    // Lengths below, at and around the eight lanes, and with a remainder.
    for n in [0, 1, 7, 8, 9, 15, 16, 1001] {
        let values: Vec<f32> = (0..n).map(|i| (i * 37 % 101) as f32 + 0.25).collect();
        let plain: f64 = values.iter().map(|&x| f64::from(x) * 2.0).sum();
        let lanes = sum_f64(&values, |x| x * 2.0);
        assert!(
            (lanes - plain).abs() <= 1e-9 * plain.abs().max(1.0),
            "{n}: {lanes} vs {plain}"
        );
    }
}
