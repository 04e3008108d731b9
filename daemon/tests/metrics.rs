//! `/metrics`, `/healthz` and `/readyz` of a running daemon: scraped
//! during a replay, the file counters add up (every file seen is embedded
//! as part of a site, refused, skipped, or still pending), and the info
//! gauges name the model in use. The daemon's threads other than
//! inference run at a lower priority.

use std::time::{Duration, Instant};

mod common;
use common::{PLATES, SITES, acquisition, bundle, free_port, get, start, sum, write_tiff};

#[test]
fn counters_add_up_during_a_replay() {
    let tmp = tempfile::tempdir().expect("temp dir");
    bundle(tmp.path());
    let source = acquisition(tmp.path());
    // Two refused files and a thumbnail (skipped) among the images.
    std::fs::write(source.join("KP1/notes.txt"), b"not an image").expect("write");
    write_tiff(&source.join("KP2/KP2_A01_s1_w7.tif"), 40, 40, 9);
    write_tiff(&source.join("KP2/KP2_A01_s1_w1_thumb.tif"), 10, 10, 9);
    let port = free_port();
    let config = tmp.path().join("daemon.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nbundle = \"bundle\"\nstore = \"out.zarr\"\n[daemon.naming]\npreset = \"imagexpress\"\n\
             [daemon.watch]\nroots = [\"incoming\"]\npoll_interval = \"200ms\"\nsettle = \"100ms\"\n\
             [daemon.batch]\nmax_size = 8\nmax_delay = \"200ms\"\n[daemon.commit]\nmax_rows = 8\nmax_interval = \"300ms\"\n\
             [daemon.http]\nlisten = \"127.0.0.1:{port}\"\n"
        ),
    )
    .expect("config");
    std::fs::create_dir_all(tmp.path().join("incoming")).expect("watch root");
    let mut daemon = start(&config);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match get(port, "/readyz") {
            Some((200, body)) => {
                assert_eq!(body, "ready\n");
                break;
            }
            Some((503, body)) => assert!(body.starts_with("starting"), "{body}"),
            Some(other) => panic!("/readyz: {other:?}"),
            None => {}
        }
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(get(port, "/healthz").map(|r| r.0), Some(200));
    assert_eq!(get(port, "/nothing").map(|r| r.0), Some(404));

    let replay = {
        let (source, incoming) = (source.clone(), tmp.path().join("incoming"));
        std::thread::spawn(move || {
            bfx_daemon::replay::replay(&source, &incoming, 150.0, |_, _| {}).expect("replay")
        })
    };
    let channels = 2.0;
    let total_sites = f64::from(SITES) * PLATES.len() as f64;
    let mut scrapes = 0;
    let last = loop {
        let (code, m) = get(port, "/metrics").expect("metrics");
        assert_eq!(code, 200);
        scrapes += 1;
        let seen = sum(&m, "bfx_files_seen_total", "");
        let embedded = sum(&m, "bfx_sites_embedded_total", "");
        let accounted = embedded * channels
            + sum(&m, "bfx_files_rejected_total", "")
            + sum(&m, "bfx_files_skipped_total", "");
        // Files still pending in the pipeline make up the rest.
        assert!(
            accounted <= seen,
            "more files accounted ({accounted}) than seen ({seen})"
        );
        if embedded >= total_sites && accounted == seen {
            break m;
        }
        assert!(
            Instant::now() < deadline + Duration::from_secs(60),
            "counters never settled: {m}"
        );
        std::thread::sleep(Duration::from_millis(150));
    };
    replay.join().expect("replay");
    inference_runs_first(daemon.pid());
    daemon.kill();
    assert!(scrapes > 1, "scraped during the replay");
    assert_eq!(
        sum(&last, "bfx_files_seen_total", ""),
        total_sites * channels + 3.0
    );
    assert_eq!(
        sum(&last, "bfx_files_rejected_total", "reason=\"naming\""),
        1.0
    );
    assert_eq!(
        sum(&last, "bfx_files_rejected_total", "reason=\"channel\""),
        1.0
    );
    assert_eq!(
        sum(&last, "bfx_files_skipped_total", "reason=\"not_acquired\""),
        1.0
    );
    assert_eq!(sum(&last, "bfx_sites_assembled_total", ""), total_sites);
    assert_eq!(
        sum(&last, "bfx_sites_embedded_total", "status=\"final\""),
        total_sites
    );
    assert_eq!(sum(&last, "bfx_rows", "status=\"final\""), total_sites);
    assert_eq!(sum(&last, "bfx_open_plates", ""), 2.0);
    assert!(sum(&last, "bfx_batches_total", "") >= total_sites / 8.0);
    assert_eq!(
        sum(&last, "bfx_site_latency_seconds_count", ""),
        total_sites
    );
    assert!(sum(&last, "bfx_commit_seconds_count", "") >= 1.0);
    assert_eq!(sum(&last, "bfx_queue_capacity", "stage=\"prepare\""), 64.0);
    // Model inputs queue two batches, whatever the configured capacity.
    assert_eq!(sum(&last, "bfx_queue_capacity", "stage=\"embed\""), 2.0);
    let bundle_sha = bfx_core::bundle::Bundle::open(&tmp.path().join("bundle"))
        .expect("bundle")
        .sha256;
    assert_eq!(
        sum(&last, "bfx_model_info", &format!("sha256=\"{bundle_sha}\"")),
        1.0,
        "{last}"
    );
    assert_eq!(
        sum(&last, "bfx_execution_provider_info", "provider=\"cpu\""),
        1.0
    );
    assert_eq!(sum(&last, "bfx_build_info", "version="), 1.0);
    assert!(sum(&last, "bfx_start_time_seconds", "") > 1.7e9);
    // No paths or wells in labels.
    assert!(!last.contains("KP1/"), "{last}");
}

/// Name and nice value of each thread of process `pid`.
fn thread_nices(pid: u32) -> Vec<(String, i32)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("the daemon's threads");
    tasks
        .filter_map(|t| {
            let dir = t.ok()?.path();
            let name = std::fs::read_to_string(dir.join("comm")).ok()?;
            let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
            // The fields after the name, which ends with the last ')':
            // state is field 3, nice field 19.
            let nice = stat.rsplit_once(')')?.1.split_whitespace().nth(16)?;
            Some((name.trim().to_string(), nice.parse().ok()?))
        })
        .collect()
}

/// bfx_daemon::priority, as `bfx-daemon run` sets it up by default: the
/// inference thread keeps the daemon's priority (the main thread's,
/// inherited from this test), every runtime thread is 10 nice levels lower.
fn inference_runs_first(pid: u32) {
    let threads = thread_nices(pid);
    let nice_of = |name: &str| {
        threads
            .iter()
            .find(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no thread {name} in {threads:?}"))
            .1
    };
    let own = nice_of("bfx-daemon");
    assert_eq!(nice_of("bfx-inference"), own, "{threads:?}");
    let lowered: Vec<_> = threads
        .iter()
        .filter(|(n, _)| n.starts_with("tokio"))
        .collect();
    assert!(!lowered.is_empty(), "no runtime threads in {threads:?}");
    for (name, nice) in lowered {
        assert_eq!(*nice, (own + 10).min(19), "{name} in {threads:?}");
    }
}
