//! Faults of the machine rather than of the input: the store becomes
//! unwritable in the middle of a run (the daemon keeps the sites pending,
//! says so on `/readyz` and in `/metrics`, stays up, and stores every site
//! once when it can write again), and 20,000 files appear at once (memory
//! stays bounded, every site is stored once).

use std::path::Path;
use std::time::{Duration, Instant};

mod common;
use common::{
    CHANNELS, Daemon, PLATES, SITES, acquisition, bundle, committed_rows, free_port, get,
    python_json, shared_tempdir, start_unprivileged, sum, write_tiff,
};

/// `chmod` every folder and file under `path` (and itself) to `dir_mode` / `file_mode`.
fn chmod_tree(path: &Path, dir_mode: u32, file_mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::symlink_metadata(path).expect("stat");
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).expect("list") {
            chmod_tree(&entry.expect("entry").path(), dir_mode, file_mode);
        }
        std::fs::set_permissions(path, PermissionsExt::from_mode(dir_mode)).expect("chmod");
    } else if meta.is_file() {
        std::fs::set_permissions(path, PermissionsExt::from_mode(file_mode)).expect("chmod");
    }
}

fn config(dir: &Path, port: u16, max_rows: usize, poll: &str) -> std::path::PathBuf {
    let path = dir.join("daemon.toml");
    std::fs::write(
        &path,
        format!(
            "[daemon]\nbundle = \"bundle\"\nstore = \"out.zarr\"\n[daemon.naming]\npreset = \"imagexpress\"\n\
             [daemon.watch]\nroots = [\"incoming\"]\npoll_interval = \"{poll}\"\nsettle = \"200ms\"\n\
             [daemon.batch]\nmax_size = 16\nmax_delay = \"200ms\"\n\
             [daemon.commit]\nmax_rows = {max_rows}\nmax_interval = \"300ms\"\n\
             [daemon.http]\nlisten = \"127.0.0.1:{port}\"\n"
        ),
    )
    .expect("config");
    std::fs::create_dir_all(dir.join("incoming")).expect("watch root");
    path
}

fn wait_until(daemon: &mut Daemon, what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(
            daemon.running(),
            "the daemon exited while waiting for {what}"
        );
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The metrics once `bfx_sites_embedded_total` has reached `expected`:
/// the counter moves when a commit returns, a moment after its rows are
/// visible in the store (the commit syncs the plate's folder after the
/// rename that makes them visible).
fn metrics_once_counted(daemon: &mut Daemon, port: u16, expected: f64) -> String {
    let metrics = || get(port, "/metrics").expect("metrics").1;
    wait_until(
        daemon,
        "the embedded-sites counter",
        Duration::from_secs(10),
        || sum(&metrics(), "bfx_sites_embedded_total", "") >= expected,
    );
    metrics()
}

/// Every plate's obs index, read by anndata.
fn indexes(groups: &[std::path::PathBuf]) -> serde_json::Value {
    python_json(
        "import sys, json, anndata\n\
         print(json.dumps({g: list(anndata.read_zarr(g).obs_names) for g in sys.argv[1:]}))",
        groups,
    )
}

fn assert_each_site_once(index: &serde_json::Value, sites: usize) {
    let mut keys: Vec<&str> = index
        .as_array()
        .expect("index")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    assert_eq!(keys.len(), sites);
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), sites, "a site stored twice");
}

#[test]
fn an_unwritable_store_keeps_sites_pending_until_it_is_writable_again() {
    let tmp = shared_tempdir();
    bundle(tmp.path());
    let source = acquisition(tmp.path());
    let port = free_port();
    let config = config(tmp.path(), port, 16, "300ms");
    let store = tmp.path().join("out.zarr");
    let mut daemon = start_unprivileged(&config);
    let incoming = tmp.path().join("incoming");
    let copy_plate = |plate: &str| {
        bfx_daemon::replay::replay(&source.join(plate), &incoming.join(plate), 0.0, |_, _| {})
            .expect("replay")
    };
    copy_plate(PLATES[0]);
    wait_until(
        &mut daemon,
        "the first plate",
        Duration::from_secs(60),
        || committed_rows(&store, PLATES[0]) == u64::from(SITES),
    );
    assert_eq!(get(port, "/readyz").map(|r| r.0), Some(200));

    // The store turns read-only (a remount, a full disk): nothing can be
    // created or replaced in it.
    chmod_tree(&store, 0o555, 0o444);
    copy_plate(PLATES[1]);
    wait_until(
        &mut daemon,
        "/readyz to report the store",
        Duration::from_secs(60),
        || {
            get(port, "/readyz")
                .is_some_and(|(code, body)| code == 503 && body.contains("does not take commits"))
        },
    );
    let metrics = get(port, "/metrics").expect("metrics").1;
    assert!(
        sum(&metrics, "bfx_commit_failures_total", "") >= 1.0,
        "{metrics}"
    );
    // Failed commits are retried; the daemon keeps running meanwhile.
    std::thread::sleep(Duration::from_secs(2));
    assert!(daemon.running(), "the daemon exited on an unwritable store");
    assert_eq!(committed_rows(&store, PLATES[1]), 0);
    let failures = sum(
        &get(port, "/metrics").expect("metrics").1,
        "bfx_commit_failures_total",
        "",
    );
    assert!(failures >= 2.0, "commits are retried: {failures}");

    chmod_tree(&store, 0o755, 0o644);
    wait_until(
        &mut daemon,
        "the second plate",
        Duration::from_secs(60),
        || committed_rows(&store, PLATES[1]) == u64::from(SITES),
    );
    wait_until(
        &mut daemon,
        "/readyz to recover",
        Duration::from_secs(30),
        || get(port, "/readyz").map(|r| r.0) == Some(200),
    );
    let metrics = metrics_once_counted(&mut daemon, port, f64::from(SITES) * 2.0);
    assert_eq!(
        sum(&metrics, "bfx_sites_embedded_total", ""),
        f64::from(SITES) * 2.0,
        "{metrics}"
    );
    daemon.kill();
    let groups: Vec<_> = PLATES.iter().map(|p| store.join(p)).collect();
    let read = indexes(&groups);
    for g in &groups {
        assert_each_site_once(&read[g.to_str().expect("UTF-8")], SITES as usize);
    }
}

/// Peak resident memory of process `pid` in MiB (`VmHWM`).
fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .expect("VmHWM")
        / 1024.0
}

/// 20,000 files of 128x128 (32 KiB each, 640 MiB decoded) appearing at once.
const BURST_SITES: u32 = 10_000;
/// Peak RSS the daemon must stay under through the burst (161 MiB measured;
/// holding every decoded file would take more than 640 MiB).
const BURST_RSS_LIMIT_MIB: f64 = 320.0;

#[test]
fn a_burst_of_20000_files_is_embedded_once_in_bounded_memory() {
    let tmp = shared_tempdir();
    bundle(tmp.path());
    // Files are written beside the watched root, then the plate's folder is
    // renamed into it: all 20,000 appear at the same instant. Eight
    // distinct images, copied (their content does not matter here).
    let staging = tmp.path().join("staging/BURST");
    std::fs::create_dir_all(&staging).expect("staging");
    let images: Vec<Vec<u8>> = (0..8)
        .map(|seed| {
            let path = tmp.path().join(format!("image{seed}.tif"));
            write_tiff(&path, 128, 128, seed);
            std::fs::read(&path).expect("tiff")
        })
        .collect();
    for s in 0..BURST_SITES {
        for (c, channel) in CHANNELS.iter().enumerate() {
            let name = common::site_file("BURST", s, channel);
            std::fs::write(
                staging.join(name),
                &images[(s as usize * 2 + c) % images.len()],
            )
            .expect("write");
        }
    }
    let port = free_port();
    // No rescans: the folder's move is an event, and its files must be
    // found from it.
    let config = config(tmp.path(), port, 256, "1h");
    let mut daemon = start_unprivileged(&config);
    wait_until(&mut daemon, "ready", Duration::from_secs(60), || {
        get(port, "/readyz").map(|r| r.0) == Some(200)
    });
    let started = Instant::now();
    std::fs::rename(&staging, tmp.path().join("incoming/BURST")).expect("rename into the root");
    let store = tmp.path().join("out.zarr");
    wait_until(
        &mut daemon,
        "every site of the burst",
        Duration::from_secs(900),
        || committed_rows(&store, "BURST") >= u64::from(BURST_SITES),
    );
    let took = started.elapsed();
    let peak = peak_rss_mib(daemon.pid());
    let metrics = metrics_once_counted(&mut daemon, port, f64::from(BURST_SITES));
    daemon.kill();
    eprintln!(
        "burst: {BURST_SITES} sites ({} files) in {:.1} s, peak RSS {peak:.0} MiB",
        BURST_SITES * 2,
        took.as_secs_f64()
    );
    assert!(
        peak < BURST_RSS_LIMIT_MIB,
        "peak RSS {peak:.0} MiB through the burst (limit {BURST_RSS_LIMIT_MIB} MiB)"
    );
    assert_eq!(
        sum(&metrics, "bfx_sites_embedded_total", ""),
        f64::from(BURST_SITES)
    );
    assert_eq!(
        sum(&metrics, "bfx_files_seen_total", ""),
        f64::from(BURST_SITES * 2)
    );
    let read = indexes(&[store.join("BURST")]);
    assert_each_site_once(
        &read[store.join("BURST").to_str().expect("UTF-8")],
        BURST_SITES as usize,
    );
}
