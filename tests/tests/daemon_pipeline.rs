//! The daemon end to end: a tiny screen, a tiny trained and exported
//! model, the daemon started on an empty folder, two plates replayed into
//! it while it runs; then Python's anndata reads every plate and each
//! complete site must be there exactly once with the embedding the bundle
//! gives that site offline (1e-4), in correction modes `none` and `adabn`,
//! with an SCBD bundle (its batch-invariant z_c, mode `none`), and with an
//! IST bundle in mode `ist` (each site restyled with 3 bank styles).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bfx_config::daemon::InferenceConfig;
use bfx_core::bundle::Bundle;
use bfx_core::image::ReadOptions;
use bfx_daemon::engine::{Engine, PlateStats};
use bfx_daemon::model_input::SiteBatch;
use bfx_tests::run_python;

const PLATES: [&str; 2] = ["S2P1", "S2P2"];
const SITES_PER_PLATE: usize = 24;
const IST_STYLES: usize = 3;

/// A tiny screen and a bundle of `method` trained on it for a few steps.
fn screen_and_bundle(dir: &Path, method: &str) -> (PathBuf, PathBuf) {
    let params = if method == "ist" {
        "{ encoder_steps = 4, generator_steps = 4 }"
    } else {
        "{}"
    };
    let config = bfx_tests::tiny_run_with(dir, method, params, 10);
    let bundle = dir.join("bundle");
    bfx_trainer::export::export(&config.out, &bundle, false).unwrap_or_else(|e| panic!("{e}"));
    (dir.join("screen"), bundle)
}

fn daemon_config(dir: &Path, bundle: &Path, mode: &str) -> bfx_config::DaemonConfig {
    let text = format!(
        r#"[daemon]
bundle = "{}"
store = "out.zarr"
shutdown_timeout = "30s"
[daemon.naming]
preset = "imagexpress"
[daemon.watch]
roots = ["incoming"]
poll_interval = "300ms"
settle = "150ms"
[daemon.batch]
max_size = 8
max_delay = "300ms"
[daemon.correction]
mode = "{mode}"
adabn_min_sites = 10
adabn_sample_sites = 16
ist_styles = {IST_STYLES}
[daemon.plate]
expected_sites = {SITES_PER_PLATE}
[daemon.commit]
max_rows = 16
max_interval = "500ms"
"#,
        bundle.display()
    );
    std::fs::create_dir_all(dir.join("incoming")).expect("watch root");
    bfx_config::parse_daemon(&text, &dir.join("daemon.toml")).expect("valid daemon config")
}

/// Rows of `plate` committed, per the group's consolidated metadata.
fn committed_rows(store: &Path, plate: &str) -> u64 {
    std::fs::read(store.join(plate).join("zarr.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["consolidated_metadata"]["metadata"]["X"]["shape"][0].as_u64())
        .unwrap_or(0)
}

const READ: &str = r#"
import sys, json, anndata
a = anndata.read_zarr(sys.argv[1])
print(json.dumps({"index": list(a.obs_names), "status": list(a.obs["status"]),
                  "paths": list(a.obs["paths"]), "X": a.X.tolist(),
                  "stats": str(a.uns["adabn_stats"]), "plate_status": str(a.uns["plate_status"])}))
"#;

fn run_mode(screen: &Path, bundle_dir: &Path, mode: &str) {
    let tmp = tempfile::tempdir().expect("temp dir");
    let config = daemon_config(tmp.path(), bundle_dir, mode);
    let store = config.store.clone();
    let incoming = config.watch.roots[0].clone();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let daemon = runtime.spawn(bfx_daemon::pipeline::run(config, shutdown));
    for plate in PLATES {
        bfx_daemon::replay::replay(&screen.join(plate), &incoming.join(plate), 400.0, |_, _| {})
            .expect("replay");
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while PLATES
        .iter()
        .any(|p| committed_rows(&store, p) < SITES_PER_PLATE as u64)
    {
        assert!(
            Instant::now() < deadline,
            "the daemon did not store every site in time"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Give a plate close (expected count reached) time to commit, then stop.
    std::thread::sleep(Duration::from_secs(1));
    stop.send(true).expect("daemon listening");
    let summary = runtime
        .block_on(daemon)
        .expect("daemon task")
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        summary.rows.values().sum::<usize>(),
        PLATES.len() * SITES_PER_PLATE
    );

    let bundle = Bundle::open(bundle_dir).expect("bundle");
    let rt = bfx_daemon::runtime::init(None, Default::default()).expect("ONNX Runtime");
    let mut engine = Engine::load(rt, bundle.clone(), &InferenceConfig::default()).expect("engine");
    let spec = &bundle.manifest.preprocess;
    for plate in PLATES {
        let out = run_python(READ, &[store.join(plate).as_os_str()]);
        let v: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON");
        let index: Vec<&str> = v["index"]
            .as_array()
            .expect("index")
            .iter()
            .filter_map(|s| s.as_str())
            .collect();
        let mut unique = index.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(
            unique.len(),
            SITES_PER_PLATE,
            "{plate}: every site exactly once"
        );
        assert_eq!(index.len(), SITES_PER_PLATE);
        assert_eq!(v["plate_status"], "complete", "{plate}");
        assert!(
            v["status"]
                .as_array()
                .expect("status")
                .iter()
                .all(|s| s == "final"),
            "{plate}: {}",
            v["status"]
        );
        let stats = (mode == "adabn").then(|| {
            PlateStats::from_uns(
                v["stats"].as_str().expect("stats"),
                &bundle.manifest.adabn_layers,
            )
            .expect("stats of every layer")
        });
        for (i, paths) in v["paths"].as_array().expect("paths").iter().enumerate() {
            let input: ndarray::Array4<f32> = bfx_daemon::pipeline::stored_site_input(
                spec,
                &ReadOptions::default(),
                paths.as_str().expect("text"),
            )
            .expect("site reads");
            let site = SiteBatch::single(input);
            let want = match (&stats, mode) {
                (Some(s), _) => engine.embed_with(site.clone(), s),
                (None, "ist") => engine.embed_ist(&site, &[index[i].to_string()], IST_STYLES),
                (None, _) => engine.embed(site.clone()),
            }
            .expect("offline embedding");
            if mode == "ist" {
                // The restyled site is not embedded as the plain one.
                let plain = engine.embed(site).expect("plain embedding");
                let moved = plain
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f32, f32::max);
                assert!(moved > 1e-4, "{plate} row {i}: IST changed nothing");
            }
            let got: Vec<f32> = v["X"][i]
                .as_array()
                .expect("row")
                .iter()
                .map(|x| x.as_f64().expect("number") as f32)
                .collect();
            let diff = want
                .iter()
                .zip(&got)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                diff <= 1e-4,
                "{plate} row {i} ({}): differs from the offline embedding by {diff}",
                index[i]
            );
        }
    }
}

#[test]
fn replayed_plates_are_embedded_once_as_the_bundle_embeds_them_offline() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (screen, bundle) = screen_and_bundle(tmp.path(), "erm");
    run_mode(&screen, &bundle, "none");
    run_mode(&screen, &bundle, "adabn");
}

#[test]
fn an_scbd_bundle_embeds_replayed_plates_as_offline() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (screen, bundle) = screen_and_bundle(tmp.path(), "scbd");
    assert_eq!(
        Bundle::open(&bundle).expect("bundle").manifest.method,
        "scbd"
    );
    run_mode(&screen, &bundle, "none");
}

#[test]
fn an_ist_bundle_restyles_replayed_plates_as_offline() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let (screen, bundle) = screen_and_bundle(tmp.path(), "ist");
    let manifest = Bundle::open(&bundle).expect("bundle").manifest;
    assert_eq!(manifest.method, "ist");
    run_mode(&screen, &bundle, "ist");
}
