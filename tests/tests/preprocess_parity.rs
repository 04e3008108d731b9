//! The trainer (manifest, decoded-image cache, Candle batch tensor: the
//! path `fit` takes) and the daemon (ndarray for ONNX Runtime) turn the
//! same acquisition files into bit-identical model input.

use std::collections::BTreeMap;
use std::path::Path;

use bfx_core::image::ReadOptions;
use bfx_core::naming::{NamingScheme, Preset, SiteKey};
use bfx_core::preprocess::{Geometry, Normalization, PreprocessSpec, SiteFiles};
use bfx_tests::run_python;
use bfx_trainer::dataset::{self, Manifest, SiteRow};
use bfx_trainer::fit::batches::{Part, batch};
use candle_core::Device;
use indicatif::ProgressBar;

/// Two ImageXpress sites of 5 uint16 channels (463 x 461, as real cameras
/// crop), each channel with another compression, plus one multi-page site.
const WRITE_SITES: &str = r#"
import os, sys, numpy as np, tifffile
out = sys.argv[1]
rng = np.random.default_rng(3)
codecs = [None, "lzw", "adobe_deflate", "packbits", "deflate"]
yy, xx = np.mgrid[0:461, 0:463]
for site in (1, 2):
    planes = []
    for w, codec in enumerate(codecs, start=1):
        cells = 800 * np.exp(-((yy - 100 * w) ** 2 + (xx - 60 * site * w) ** 2) / 3000.0)
        img = (200 + 50 * w + cells + rng.normal(0, 30, size=yy.shape)).clip(0, 65535).astype(np.uint16)
        planes.append(img)
        tifffile.imwrite(os.path.join(out, f"Screen1_B03_s{site}_w{w}ABCDEF01-2345-6789-ABCD-EF0123456789.tif"), img, compression=codec, photometric="minisblack")
    if site == 2:
        tifffile.imwrite(os.path.join(out, "multipage_site.tif"), np.stack(planes), compression="lzw", photometric="minisblack", metadata=None)
"#;

fn sites(dir: &Path) -> BTreeMap<SiteKey, Vec<(String, std::path::PathBuf)>> {
    let scheme = NamingScheme::preset(Preset::Imagexpress).expect("a built-in preset");
    let mut sites: BTreeMap<SiteKey, Vec<_>> = BTreeMap::new();
    for entry in std::fs::read_dir(dir).expect("fixture dir") {
        let path = entry.expect("entry").path();
        if let Ok(key) = scheme.parse(&path) {
            sites.entry(key.site).or_default().push((key.channel, path));
        }
    }
    sites
}

fn specs() -> Vec<PreprocessSpec> {
    let channels: Vec<String> = ["w1", "w2", "w3", "w4", "w5"]
        .iter()
        .map(|c| c.to_string())
        .collect();
    vec![
        PreprocessSpec {
            channels: channels.clone(),
            normalization: Normalization::SelfStandardize { eps: 1e-6 },
            geometry: Geometry::Resize {
                height: 64,
                width: 64,
            },
        },
        PreprocessSpec {
            // A shuffled channel order must be honoured by both paths.
            channels: ["w3", "w1", "w5", "w2", "w4"]
                .iter()
                .map(|c| c.to_string())
                .collect(),
            normalization: Normalization::Percentile {
                low: vec![150.0; 5],
                high: vec![900.0, 950.0, 1000.0, 1050.0, 1100.0],
                clip: true,
            },
            geometry: Geometry::Tile {
                size: 128,
                stride: 100,
            },
        },
        PreprocessSpec {
            channels,
            normalization: Normalization::SelfStandardize { eps: 1e-6 },
            geometry: Geometry::Resize {
                height: 100,
                width: 77,
            },
        },
    ]
}

/// What the daemon feeds ONNX Runtime for a site, as flat samples and shape.
fn daemon_input(spec: &PreprocessSpec, files: &SiteFiles) -> (Vec<usize>, Vec<f32>) {
    let array = bfx_daemon::model_input::site_array(spec, files, &ReadOptions::default())
        .expect("daemon path");
    let shape = array.shape().to_vec();
    (shape, array.as_slice().expect("standard layout").to_vec())
}

/// What `fit` feeds the model for the site `files` (per channel, absolute
/// paths): a one-row manifest, the image cache (written, then read back),
/// and the batch tensor of the site's images.
fn trainer_input(
    spec: &PreprocessSpec,
    files: &[(String, std::path::PathBuf)],
    cache: &Path,
) -> (Vec<usize>, Vec<f32>) {
    let row = SiteRow {
        plate: "P".into(),
        well: "B03".into(),
        site: 1,
        series: None,
        section: None,
        label: Some("x".into()),
        paths: spec
            .channels
            .iter()
            .map(|c| {
                files
                    .iter()
                    .find(|(k, _)| k == c)
                    .expect("every channel")
                    .1
                    .clone()
            })
            .collect(),
        line: 2,
    };
    let manifest = Manifest {
        source: "parity.csv".into(),
        channels: spec.channels.clone(),
        has_series: false,
        has_section: false,
        rows: vec![row],
    };
    let load = || {
        dataset::load_images(
            &manifest,
            Path::new("/"),
            spec,
            &ReadOptions::default(),
            Some(cache),
            &ProgressBar::hidden(),
        )
        .expect("trainer path")
    };
    let fresh = load();
    let cached = load();
    assert!(fresh == cached, "the cache returns what was decoded");
    let n = cached.len();
    let part = Part {
        images: (0..n).collect(),
        classes: vec![0; n],
        plates: vec![0; n],
    };
    let all: Vec<usize> = (0..n).collect();
    let tensor = batch(&cached, &part, &all, None, &Device::Cpu)
        .expect("batch tensor")
        .x;
    let data = tensor
        .flatten_all()
        .and_then(|t| t.to_vec1())
        .expect("tensor data");
    (tensor.dims().to_vec(), data)
}

fn assert_bit_identical(a: &(Vec<usize>, Vec<f32>), b: &(Vec<usize>, Vec<f32>), what: &str) {
    assert_eq!(a.0, b.0, "{what}: shapes");
    let differing =
        a.1.iter()
            .zip(&b.1)
            .filter(|(x, y)| x.to_bits() != y.to_bits())
            .count();
    assert_eq!(
        differing,
        0,
        "{differing} of {} values differ for {what}",
        a.1.len()
    );
}

#[test]
fn trainer_and_daemon_inputs_are_bit_identical() {
    let dir = tempfile::tempdir().expect("temp dir");
    run_python(WRITE_SITES, &[dir.path().as_os_str()]);
    let sites = sites(dir.path());
    assert_eq!(
        sites.len(),
        2,
        "two complete sites parsed from the fixture names"
    );
    for spec in specs() {
        let mut outputs = Vec::new();
        for (i, (key, files)) in sites.iter().enumerate() {
            assert_eq!(files.len(), 5, "{key}");
            let trainer = trainer_input(&spec, files, &dir.path().join(format!("cache{i}")));
            let daemon = daemon_input(&spec, &SiteFiles::PerChannel(files.clone()));
            assert_bit_identical(&trainer, &daemon, &key.to_string());
            outputs.push(trainer.1);
        }
        // Not a degenerate comparison: the input varies and differs by site.
        let values = &outputs[0];
        let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / values.len() as f64;
        let var = values
            .iter()
            .map(|&v| (f64::from(v) - mean).powi(2))
            .sum::<f64>()
            / values.len() as f64;
        assert!(var > 1e-3, "input has variance {var}");
        assert_ne!(outputs[0], outputs[1]);
        // The multi-page copy of site 2 is the same input as its per-channel files
        // (it holds the channels in w1..w5 order, so only for specs in that order).
        if spec.channels.first().map(String::as_str) == Some("w1") {
            let multi = daemon_input(
                &spec,
                &SiteFiles::MultiPage(dir.path().join("multipage_site.tif")),
            );
            assert_eq!(multi.1, outputs[1]);
        }
    }
}
