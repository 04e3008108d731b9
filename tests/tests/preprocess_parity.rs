//! The trainer (Candle tensor) and the daemon (ndarray for ONNX Runtime)
//! turn the same acquisition files into bit-identical model input.

use std::collections::BTreeMap;
use std::path::Path;

use bfx_core::image::ReadOptions;
use bfx_core::naming::{NamingScheme, Preset, SiteKey};
use bfx_core::preprocess::{Geometry, Normalization, PreprocessSpec, SiteFiles};
use bfx_tests::run_python;
use candle_core::Device;

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

fn assert_bit_identical(spec: &PreprocessSpec, files: &SiteFiles) -> Vec<f32> {
    let read = ReadOptions::default();
    let tensor =
        bfx_trainer::data::site_tensor(spec, files, &read, &Device::Cpu).expect("trainer path");
    let array = bfx_daemon::model_input::site_array(spec, files, &read).expect("daemon path");
    assert_eq!(tensor.dims(), array.shape(), "{files:?}");
    let trainer: Vec<f32> = tensor
        .flatten_all()
        .and_then(|t| t.to_vec1())
        .expect("tensor data");
    let daemon = array.as_slice().expect("standard layout");
    let differing = trainer
        .iter()
        .zip(daemon)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    assert_eq!(
        differing,
        0,
        "{differing} of {} values differ for {files:?}",
        trainer.len()
    );
    trainer
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
        for (key, files) in &sites {
            assert_eq!(files.len(), 5, "{key}");
            outputs.push(assert_bit_identical(
                &spec,
                &SiteFiles::PerChannel(files.clone()),
            ));
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
            let multi = assert_bit_identical(
                &spec,
                &SiteFiles::MultiPage(dir.path().join("multipage_site.tif")),
            );
            assert_eq!(multi, outputs[1]);
        }
    }
}
