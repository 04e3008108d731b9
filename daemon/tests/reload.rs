//! SIGHUP reloads the bundle: a corrupt new bundle is refused and the old
//! model keeps running; a good one is used by new plates while open
//! plates keep the bundle they started with.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bfx_core::bundle::Bundle;
use bfx_core::image::ReadOptions;
use bfx_core::preprocess::SiteFiles;
use bfx_daemon::engine::Engine;
use bfx_daemon::model_input::{SiteBatch, site_array};

mod common;
use common::{bundle_named, committed_rows, python_json, start, write_tiff};

/// Write site `well` of `plate`; its files.
fn site(root: &Path, plate: &str, well: &str, seed: u64) -> Vec<PathBuf> {
    ["w1", "w2"]
        .iter()
        .enumerate()
        .map(|(c, ch)| {
            let path = root.join(plate).join(format!("{plate}_{well}_s1_{ch}.tif"));
            write_tiff(&path, 40, 40, seed * 2 + c as u64);
            path
        })
        .collect()
}

fn wait_for(what: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !what() {
        assert!(Instant::now() < deadline, "timed out");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `(bundle sha256 in uns, last row's embedding)` of a plate group.
fn plate(store: &Path, plate: &str) -> (String, Vec<f32>) {
    let read = python_json(
        "import sys, json, anndata\na = anndata.read_zarr(sys.argv[1])\nprint(json.dumps([str(a.uns['bundle_sha256']), a.X[-1].tolist()]))",
        [store.join(plate)],
    );
    serde_json::from_value(read).expect("[sha256, row]")
}

fn offline(bundle: &Path, files: &[PathBuf]) -> Vec<f32> {
    let bundle = Bundle::open(bundle).expect("bundle");
    let rt = bfx_daemon::runtime::init(None, Default::default()).expect("ONNX Runtime");
    let spec = bundle.manifest.preprocess.clone();
    let mut engine = Engine::load(rt, bundle, &Default::default()).expect("engine");
    let files = SiteFiles::PerChannel(
        spec.channels
            .iter()
            .cloned()
            .zip(files.iter().cloned())
            .collect(),
    );
    let input = site_array(&spec, &files, &ReadOptions::default()).expect("site");
    engine
        .embed(SiteBatch::single(input))
        .expect("embedding")
        .row(0)
        .to_vec()
}

fn close(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-4)
}

#[test]
fn sighup_switches_new_plates_to_a_good_bundle_and_refuses_a_bad_one() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (a, b) = (
        bundle_named(tmp.path(), "bundle-a", 1),
        bundle_named(tmp.path(), "bundle-b", 2),
    );
    let live = tmp.path().join("bundle");
    let copy = |from: &Path| {
        let _ = std::fs::remove_dir_all(&live);
        std::fs::create_dir(&live).expect("bundle dir");
        for e in std::fs::read_dir(from).expect("bundle").flatten() {
            std::fs::copy(e.path(), live.join(e.file_name())).expect("copy");
        }
    };
    copy(&a);
    let sha = |dir: &Path| Bundle::open(dir).expect("bundle").sha256;
    let config = tmp.path().join("daemon.toml");
    std::fs::write(
        &config,
        "[daemon]\nbundle = \"bundle\"\nstore = \"out.zarr\"\n[daemon.naming]\npreset = \"imagexpress\"\n\
         [daemon.watch]\nroots = [\"incoming\"]\npoll_interval = \"200ms\"\nsettle = \"100ms\"\n\
         [daemon.batch]\nmax_delay = \"100ms\"\n[daemon.commit]\nmax_interval = \"200ms\"\n",
    )
    .expect("config");
    let (incoming, store) = (tmp.path().join("incoming"), tmp.path().join("out.zarr"));
    std::fs::create_dir_all(&incoming).expect("watch root");
    let daemon = start(&config);
    site(&incoming, "H1", "A01", 1);
    wait_for(|| committed_rows(&store, "H1") == 1);

    // A corrupt bundle: refused, the old model keeps running.
    let bytes = std::fs::read(live.join("predictor.onnx")).expect("graph");
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 1;
    std::fs::write(live.join("predictor.onnx"), flipped).expect("corrupt");
    daemon.signal("HUP");
    std::thread::sleep(Duration::from_millis(500));
    let h2 = site(&incoming, "H2", "A01", 2);
    wait_for(|| committed_rows(&store, "H2") == 1);
    let (used, row) = plate(&store, "H2");
    assert_eq!(used, sha(&a));
    assert!(close(&row, &offline(&a, &h2)));

    // A good new bundle: new plates use it, the open plate H1 keeps A.
    copy(&b);
    daemon.signal("HUP");
    std::thread::sleep(Duration::from_millis(500));
    let h3 = site(&incoming, "H3", "A01", 3);
    let h1 = site(&incoming, "H1", "A02", 4);
    wait_for(|| committed_rows(&store, "H3") == 1 && committed_rows(&store, "H1") == 2);
    let (used, row) = plate(&store, "H3");
    assert_eq!(used, sha(&b));
    assert!(
        close(&row, &offline(&b, &h3)),
        "H3 embedded with the new bundle"
    );
    let (used, row) = plate(&store, "H1");
    assert_eq!(used, sha(&a));
    assert!(
        close(&row, &offline(&a, &h1)),
        "H1 keeps the bundle it started with"
    );
    assert!(
        !close(&offline(&a, &h1), &offline(&b, &h1)),
        "the two bundles differ"
    );
}
