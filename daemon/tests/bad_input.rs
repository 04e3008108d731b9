//! Bad input never stops the daemon: truncated and non-TIFF files,
//! unparseable names, unknown channels, channels of different sizes,
//! duplicate channel files, incomplete sites and files that vanish are
//! each recorded once in the event journal with the path and reason,
//! while the good sites around them are embedded.

use std::collections::HashMap;
use std::time::{Duration, Instant};

mod common;
use common::{bundle, events, start, write_tiff};

#[test]
fn bad_files_are_recorded_and_good_sites_still_embedded() {
    let tmp = tempfile::tempdir().expect("temp dir");
    bundle(tmp.path());
    let config = tmp.path().join("daemon.toml");
    std::fs::write(
        &config,
        "[daemon]\nbundle = \"bundle\"\nstore = \"out.zarr\"\n[daemon.naming]\npreset = \"imagexpress\"\n\
         [daemon.watch]\nroots = [\"incoming\"]\npoll_interval = \"200ms\"\nsettle = \"100ms\"\nread_deadline = \"1s\"\n\
         [daemon.assemble]\nsite_timeout = \"3s\"\n\
         [daemon.batch]\nmax_size = 4\nmax_delay = \"200ms\"\n[daemon.commit]\nmax_rows = 4\nmax_interval = \"300ms\"\n",
    )
    .expect("config");
    let dir = tmp.path().join("incoming/BP1");
    std::fs::create_dir_all(&dir).expect("watch root");
    let mut daemon = start(&config);
    let f = |name: &str| dir.join(format!("BP1_{name}.tif"));
    // Good sites.
    for (i, well) in ["A01", "A07", "A08"].iter().enumerate() {
        write_tiff(&f(&format!("{well}_s1_w1")), 40, 40, i as u64);
        write_tiff(&f(&format!("{well}_s1_w2")), 40, 40, 10 + i as u64);
    }
    // Truncated TIFF: never decodes; its site stays incomplete.
    write_tiff(&f("A02_s1_w1"), 40, 40, 20);
    let bytes = std::fs::read(f("A02_s1_w1")).expect("tiff");
    std::fs::write(f("A02_s1_w1"), &bytes[..bytes.len() / 3]).expect("truncate");
    write_tiff(&f("A02_s1_w2"), 40, 40, 21);
    // Not a TIFF at all.
    std::fs::write(f("A03_s1_w1"), b"hello, not an image").expect("write");
    // A name no preset pattern fits.
    std::fs::write(dir.join("notes.txt"), b"operator notes").expect("write");
    // A channel the bundle does not know.
    write_tiff(&f("A04_s1_w3"), 40, 40, 40);
    // Channels of different sizes.
    write_tiff(&f("A05_s1_w1"), 40, 40, 50);
    write_tiff(&f("A05_s1_w2"), 20, 20, 51);
    // A second w1 for site A07 (a GUID-suffixed copy); whichever is
    // ready first is kept, the other recorded as a duplicate.
    write_tiff(
        &dir.join("BP1_A07_s1_w1ABCDEF01-2345-6789-ABCD-EF0123456789.tif"),
        40,
        40,
        70,
    );
    // A file that vanishes before it settles.
    write_tiff(&f("A09_s1_w1"), 40, 40, 90);
    std::fs::remove_file(f("A09_s1_w1")).expect("remove");

    let journal = tmp.path().join("out.zarr.events.jsonl");
    let deadline = Instant::now() + Duration::from_secs(60);
    let wanted = [
        "A02_s1_w1",
        "A03_s1_w1",
        "notes.txt",
        "A04_s1_w3",
        "BP1/A05/1",
        "A07_s1_w1",
        "BP1/A02/1",
    ];
    loop {
        let ev = events(&journal);
        let found = wanted.iter().all(|w| {
            ev.iter()
                .any(|e| e["subject"].as_str().is_some_and(|s| s.contains(w)))
        });
        if found {
            break;
        }
        assert!(daemon.running(), "the daemon exited on bad input");
        assert!(
            Instant::now() < deadline,
            "not every bad file was recorded: {ev:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Let the good sites commit.
    std::thread::sleep(Duration::from_secs(1));
    assert!(daemon.running(), "the daemon exited on bad input");
    daemon.kill();

    let ev = events(&journal);
    let reason = |subject: &str| -> (String, String) {
        let e = ev
            .iter()
            .find(|e| e["subject"].as_str().is_some_and(|s| s.contains(subject)))
            .unwrap_or_else(|| panic!("no record of {subject}"));
        (
            e["event"].as_str().unwrap_or("").to_string(),
            e["reason"].as_str().unwrap_or("").to_string(),
        )
    };
    let kinds: HashMap<&str, (String, String)> = wanted.iter().map(|w| (*w, reason(w))).collect();
    assert_eq!(kinds["A03_s1_w1"].0, "quarantined");
    assert_eq!(kinds["A02_s1_w1"].0, "quarantined");
    assert_eq!(kinds["notes.txt"].0, "quarantined");
    assert!(
        kinds["notes.txt"]
            .1
            .contains("does not match the imagexpress naming scheme"),
        "{:?}",
        kinds["notes.txt"]
    );
    assert!(
        kinds["A04_s1_w3"]
            .1
            .contains("channel \"w3\" is not one of the bundle's channels"),
        "{:?}",
        kinds["A04_s1_w3"]
    );
    assert_eq!(kinds["BP1/A05/1"].0, "rejected");
    assert!(
        kinds["BP1/A05/1"].1.contains("20x20 pixels"),
        "{:?}",
        kinds["BP1/A05/1"]
    );
    assert_eq!(kinds["A07_s1_w1"].0, "duplicate");
    assert_eq!(kinds["BP1/A02/1"].0, "incomplete");
    assert!(
        kinds["BP1/A02/1"].1.contains("missing channels [\"w1\"]"),
        "{:?}",
        kinds["BP1/A02/1"]
    );
    // Each bad file once, the vanished file not at all.
    for w in ["A03_s1_w1", "notes.txt", "A04_s1_w3"] {
        let n = ev
            .iter()
            .filter(|e| e["subject"].as_str().is_some_and(|s| s.contains(w)))
            .count();
        assert_eq!(n, 1, "{w} recorded {n} times");
    }
    assert!(
        !ev.iter()
            .any(|e| e["subject"].as_str().is_some_and(|s| s.contains("A09")))
    );
    // The good sites (A07 with its first w1) are stored.
    let group: serde_json::Value = serde_json::from_slice(
        &std::fs::read(tmp.path().join("out.zarr/BP1/zarr.json")).expect("plate committed"),
    )
    .expect("JSON");
    assert_eq!(
        group["consolidated_metadata"]["metadata"]["X"]["shape"][0],
        3
    );
}

#[test]
fn an_open_plate_keeps_the_bundle_it_started_with() {
    let tmp = tempfile::tempdir().expect("temp dir");
    common::bundle_named(tmp.path(), "bundle", 1);
    let config = tmp.path().join("daemon.toml");
    std::fs::write(
        &config,
        "[daemon]\nbundle = \"bundle\"\nstore = \"out.zarr\"\n[daemon.naming]\npreset = \"imagexpress\"\n\
         [daemon.watch]\nroots = [\"incoming\"]\npoll_interval = \"200ms\"\nsettle = \"100ms\"\n\
         [daemon.batch]\nmax_size = 4\nmax_delay = \"200ms\"\n[daemon.commit]\nmax_rows = 4\nmax_interval = \"300ms\"\n",
    )
    .expect("config");
    let incoming = tmp.path().join("incoming");
    let site = |plate: &str, well: &str, seed: u64| {
        for (c, ch) in ["w1", "w2"].iter().enumerate() {
            write_tiff(
                &incoming
                    .join(plate)
                    .join(format!("{plate}_{well}_s1_{ch}.tif")),
                40,
                40,
                seed * 2 + c as u64,
            );
        }
    };
    let rows = |plate: &str| common::committed_rows(&tmp.path().join("out.zarr"), plate);
    let wait_for = |what: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !what() {
            assert!(Instant::now() < deadline, "timed out");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    site("OP1", "A01", 1);
    let mut daemon = start(&config);
    wait_for(&|| rows("OP1") == 1);
    daemon.kill();

    // Another model is deployed; the open plate OP1 goes on arriving.
    std::fs::remove_dir_all(tmp.path().join("bundle")).expect("old bundle removed");
    common::bundle_named(tmp.path(), "bundle", 2);
    let mut daemon = start(&config);
    site("OP1", "A02", 2);
    site("OP2", "A01", 3);
    let journal = tmp.path().join("out.zarr.events.jsonl");
    wait_for(&|| rows("OP2") == 1 && events(&journal).iter().any(|e| e["subject"] == "OP1"));
    std::thread::sleep(Duration::from_millis(500));
    daemon.kill();
    assert_eq!(rows("OP1"), 1, "no site of OP1 embedded with the new model");
    let ev = events(&journal);
    let e = ev.iter().find(|e| e["subject"] == "OP1").expect("recorded");
    assert_eq!(e["event"], "rejected");
    assert!(
        e["reason"]
            .as_str()
            .is_some_and(|r| r.contains("was started with bundle")),
        "{e}"
    );
}

#[test]
fn quarantine_can_move_files_aside_with_the_reason() {
    let tmp = tempfile::tempdir().expect("temp dir");
    bundle(tmp.path());
    let config = tmp.path().join("daemon.toml");
    std::fs::write(
        &config,
        "[daemon]\nbundle = \"bundle\"\nstore = \"out.zarr\"\n[daemon.naming]\npreset = \"imagexpress\"\n\
         [daemon.watch]\nroots = [\"incoming\"]\npoll_interval = \"200ms\"\nsettle = \"100ms\"\n\
         [daemon.quarantine]\nmode = \"move\"\ndir = \"quarantine\"\n",
    )
    .expect("config");
    let bad = tmp.path().join("incoming/QP1/QP1_A01_s1_w9.tif");
    write_tiff(&bad, 40, 40, 1);
    let mut daemon = start(&config);
    let moved = tmp.path().join("quarantine/QP1_A01_s1_w9.tif");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !moved.exists() {
        assert!(Instant::now() < deadline, "not moved");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(300));
    daemon.kill();
    assert!(!bad.exists());
    let note = std::fs::read_to_string(tmp.path().join("quarantine/QP1_A01_s1_w9.tif.reason.txt"))
        .expect("note");
    assert!(
        note.contains("QP1_A01_s1_w9.tif") && note.contains("channel \"w9\""),
        "{note}"
    );
    let ev = events(&tmp.path().join("out.zarr.events.jsonl"));
    assert!(
        ev[0]["subject"]
            .as_str()
            .is_some_and(|s| s.contains(" -> ")),
        "{ev:?}"
    );
}
