//! Memory that follows the open plates: once a plate is settled (stored
//! complete) the daemon forgets its files and sites, yet a rescan that
//! lists them again, a late site, a copy of stored sites and a restart
//! each still store every site exactly once.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod common;
use common::{
    CHANNELS, SITES, acquisition_of, bundle, committed_rows, events, free_port, get, site_file,
    start, sum, write_tiff,
};

/// The test bundle and plate KP1's files in a temporary folder, and the
/// plate's empty watched folder.
fn plate_and_bundle() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let tmp = tempfile::tempdir().expect("temp dir");
    bundle(tmp.path());
    let source = acquisition_of(tmp.path(), &["KP1"], SITES);
    let plate_dir = tmp.path().join("incoming/KP1");
    std::fs::create_dir_all(&plate_dir).expect("watch root");
    (tmp, source, plate_dir)
}

/// The daemon's configuration in `dir`, ending with `extra`.
fn config(dir: &Path, port: u16, extra: &str) -> PathBuf {
    let config = dir.join("daemon.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nbundle = \"bundle\"\nstore = \"out.zarr\"\n[daemon.naming]\npreset = \"imagexpress\"\n\
             [daemon.watch]\nroots = [\"incoming\"]\npoll_interval = \"200ms\"\nsettle = \"100ms\"\n\
             [daemon.plate]\nexpected_sites = {SITES}\n[daemon.assemble]\nsite_timeout = \"1s\"\n\
             [daemon.batch]\nmax_size = 8\nmax_delay = \"200ms\"\n[daemon.commit]\nmax_rows = 8\nmax_interval = \"300ms\"\n\
             [daemon.http]\nlisten = \"127.0.0.1:{port}\"\n{extra}"
        ),
    )
    .expect("config");
    config
}

/// Metrics once `done` holds for them (within 60 s).
fn metrics_once(port: u16, what: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((200, m)) = get(port, "/metrics")
            && done(&m)
        {
            return m;
        }
        assert!(Instant::now() < deadline, "never {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn remembered(m: &str, stage: &str) -> f64 {
    sum(m, "bfx_remembered_entries", &format!("stage=\"{stage}\""))
}

/// Copy every file under `from` into `to` (same relative paths).
fn copy_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("read dir") {
        let path = entry.expect("entry").path();
        let dest = to.join(path.file_name().expect("name"));
        if path.is_dir() {
            std::fs::create_dir_all(&dest).expect("dir");
            copy_tree(&path, &dest);
        } else {
            std::fs::copy(&path, &dest).expect("copy");
        }
    }
}

#[test]
fn a_settled_plate_is_forgotten_and_every_site_still_stored_once() {
    let (tmp, source, plate_dir) = plate_and_bundle();
    let port = free_port();
    let config = config(tmp.path(), port, "");
    let store = tmp.path().join("out.zarr");
    let journal = tmp.path().join("out.zarr.events.jsonl");
    let mut daemon = start(&config);

    // A refusal (unknown channel), a thumbnail and a site that never gets
    // its second channel beside the images.
    write_tiff(&plate_dir.join("KP1_A01_s1_w7.tif"), 40, 40, 9);
    write_tiff(&plate_dir.join("KP1_A01_s1_w1_thumb.tif"), 10, 10, 9);
    let incomplete = site_file("KP1", SITES + 1, "w1");
    write_tiff(&plate_dir.join(&incomplete), 40, 40, 9);
    copy_tree(&source.join("KP1"), &plate_dir);
    let files = f64::from(SITES) * CHANNELS.len() as f64 + 3.0;
    // Remembered: the refusal, and the file of the site the store lacks.
    let settled = metrics_once(port, "settled", |m| {
        sum(m, "bfx_sites_embedded_total", "") == f64::from(SITES)
            && sum(m, "bfx_sites_incomplete_total", "") == 1.0
            && remembered(m, "ready") == 2.0
            && remembered(m, "assemble") == 0.0
            && remembered(m, "store") == 0.0
    });
    assert_eq!(sum(&settled, "bfx_files_seen_total", ""), files);
    assert_eq!(sum(&settled, "bfx_open_plates", ""), 0.0);
    let recorded = events(&journal).len();

    // A change to the folder makes the next rescan list all its files
    // again: none is looked at, counted or recorded again.
    let listed = sum(&settled, "bfx_rescan_folders_total", "outcome=\"listed\"");
    std::fs::write(plate_dir.join("transfer.lock"), b"").expect("write");
    std::fs::remove_file(plate_dir.join("transfer.lock")).expect("remove");
    let relisted = metrics_once(port, "relisted", |m| {
        sum(m, "bfx_rescan_folders_total", "outcome=\"listed\"") > listed
    });
    std::thread::sleep(Duration::from_millis(500));
    let after = metrics_once(port, "scraped", |_| true);
    assert_eq!(sum(&after, "bfx_files_seen_total", ""), files, "{relisted}");
    assert_eq!(remembered(&after, "ready"), 2.0);
    assert_eq!(events(&journal).len(), recorded);

    // A copy of stored sites in another folder is not embedded again; a
    // late site is, and the plate settles again.
    std::fs::create_dir_all(plate_dir.join("again")).expect("dir");
    copy_tree(&source.join("KP1"), &plate_dir.join("again"));
    for channel in CHANNELS {
        write_tiff(&plate_dir.join(site_file("KP1", SITES, channel)), 40, 40, 7);
    }
    metrics_once(port, "the late site stored", |m| {
        sum(m, "bfx_sites_embedded_total", "") == f64::from(SITES + 1)
            && remembered(m, "ready") == 2.0
            && remembered(m, "store") == 0.0
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(committed_rows(&store, "KP1"), u64::from(SITES) + 1);
    let new_events: Vec<_> = events(&journal).split_off(recorded);
    assert!(new_events.is_empty(), "{new_events:?}");

    // After a restart the settled plate's files are recognised from the
    // store by their names, the refused one too (its site is stored); the
    // incomplete site is looked at again (and recorded again).
    daemon.kill();
    let recorded = events(&journal).len();
    let mut daemon = start(&config);
    metrics_once(port, "restarted", |m| {
        sum(m, "bfx_rescan_folders_total", "outcome=\"listed\"") >= 1.0
    });
    std::thread::sleep(Duration::from_secs(1));
    let m = metrics_once(port, "scraped", |_| true);
    let thumbnails = sum(&m, "bfx_files_skipped_total", "reason=\"not_acquired\"");
    assert!(thumbnails <= 1.0, "{m}");
    assert_eq!(sum(&m, "bfx_files_seen_total", ""), thumbnails + 1.0, "{m}");
    assert_eq!(sum(&m, "bfx_sites_embedded_total", ""), 0.0);
    assert_eq!(remembered(&m, "store"), 0.0);
    assert_eq!(remembered(&m, "ready"), 1.0, "{m}");
    daemon.kill();
    let again: Vec<_> = events(&journal).split_off(recorded);
    assert!(
        again.iter().all(|e| e["event"] == "incomplete"),
        "{again:?}"
    );
    assert_eq!(committed_rows(&store, "KP1"), u64::from(SITES) + 1);
}

fn read_rows(store: &Path) -> Vec<bfx_daemon::store::StoredRow> {
    // The test bundle's embedding has 8 values.
    bfx_daemon::store::Store::open(store, 8, 1024)
        .and_then(|s| s.stored_rows("KP1"))
        .expect("store")
}

fn close(a: &[f32], b: &[f32]) -> bool {
    a.iter()
        .zip(b)
        .all(|(x, y)| (x - y).abs() <= 1e-4 * (1.0 + y.abs()))
}

/// An AdaBN plate's statistics leave memory once it is settled; a late
/// site, in the same run or after a restart, is embedded with them read
/// back from the store: a copy of a stored site gets that site's final
/// embedding.
#[test]
fn a_late_site_of_a_settled_adabn_plate_gets_the_plates_statistics() {
    let (tmp, source, plate_dir) = plate_and_bundle();
    let port = free_port();
    let adabn =
        "[daemon.correction]\nmode = \"adabn\"\nadabn_min_sites = 10\nadabn_sample_sites = 16\n";
    let config = config(tmp.path(), port, adabn);
    let store = tmp.path().join("out.zarr");
    let late = |s: u32| {
        for channel in CHANNELS {
            std::fs::copy(
                source.join("KP1").join(site_file("KP1", 0, channel)),
                plate_dir.join(site_file("KP1", s, channel)),
            )
            .expect("copy");
        }
    };

    let mut daemon = start(&config);
    copy_tree(&source.join("KP1"), &plate_dir);
    metrics_once(port, "settled", |m| {
        sum(m, "bfx_rows", "status=\"final\"") == f64::from(SITES)
            && remembered(m, "store") == 0.0
            && remembered(m, "ready") == 0.0
    });
    late(SITES);
    metrics_once(port, "the late site stored", |m| {
        sum(m, "bfx_rows", "status=\"final\"") == f64::from(SITES + 1)
            && remembered(m, "store") == 0.0
    });
    daemon.kill();
    let mut daemon = start(&config);
    metrics_once(port, "restarted", |m| {
        sum(m, "bfx_rescan_folders_total", "outcome=\"listed\"") >= 1.0
    });
    late(SITES + 1);
    metrics_once(port, "the late site stored after a restart", |m| {
        sum(m, "bfx_sites_embedded_total", "status=\"final\"") == 1.0
    });
    daemon.kill();

    let rows = read_rows(&store);
    assert_eq!(rows.len(), SITES as usize + 2);
    let key = |s: u32| {
        let name = site_file("KP1", s, "w1");
        let well = &name["KP1_".len().."KP1_".len() + 3];
        format!("KP1/{well}/{}", s / 96 + 1)
    };
    let row = |s: u32| {
        rows.iter()
            .find(|r| r.index == key(s))
            .unwrap_or_else(|| panic!("{} not stored", key(s)))
    };
    let first = row(0);
    assert_eq!(first.status.as_str(), "final");
    for s in [SITES, SITES + 1] {
        let r = row(s);
        assert_eq!(
            (r.status.as_str(), r.correction.as_str()),
            ("final", "adabn")
        );
        assert!(
            close(&r.embedding, &first.embedding),
            "{}: {:?} vs {:?}",
            r.index,
            r.embedding,
            first.embedding
        );
    }
}
