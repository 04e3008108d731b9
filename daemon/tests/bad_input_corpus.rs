//! The bad-input corpus (`common/corpus.rs`, 17 kinds) dropped into a
//! watched folder beside good sites: the daemon stays up, gives every
//! kind exactly the outcome the corpus names (one journal record with the
//! reason, an embedded row, or a counted skip), counts each in
//! `/metrics`, and embeds every good site.

use std::collections::HashMap;
use std::time::{Duration, Instant};

mod common;
use common::corpus::{self, GOOD_WELLS, Outcome, PLATE};
use common::{
    bundle, committed_rows, events, free_port, get, python_json, shared_tempdir,
    start_unprivileged, sum,
};

fn about<'a>(events: &'a [serde_json::Value], subject: &str) -> Vec<&'a serde_json::Value> {
    events
        .iter()
        .filter(|e| e["subject"].as_str().is_some_and(|s| s.contains(subject)))
        .collect()
}

const READ: &str = r#"
import sys, json, anndata
out = {}
for g in sys.argv[1:]:
    a = anndata.read_zarr(g)
    out[g] = {"index": list(a.obs_names), "plate": str(a.uns["plate"])}
print(json.dumps(out))
"#;

#[test]
fn every_kind_of_bad_input_gets_its_outcome_and_good_sites_are_embedded() {
    // The daemon runs as `nobody` under root: it writes its store here.
    let tmp = shared_tempdir();
    bundle(tmp.path());
    let plate_dir = tmp.path().join("incoming").join(PLATE);
    let cases = corpus::write(&plate_dir);
    assert!(cases.len() >= 15, "{} kinds", cases.len());
    let port = free_port();
    let config = tmp.path().join("daemon.toml");
    std::fs::write(
        &config,
        format!(
            "[daemon]\nbundle = \"bundle\"\nstore = \"out.zarr\"\n[daemon.naming]\npreset = \"imagexpress\"\n\
             [daemon.watch]\nroots = [\"incoming\"]\npoll_interval = \"300ms\"\nsettle = \"500ms\"\nread_deadline = \"1s\"\n\
             [daemon.assemble]\nsite_timeout = \"8s\"\nfield_size = [{f}, {f}]\n\
             [daemon.batch]\nmax_size = 4\nmax_delay = \"200ms\"\n[daemon.commit]\nmax_rows = 4\nmax_interval = \"300ms\"\n\
             [daemon.http]\nlisten = \"127.0.0.1:{port}\"\n",
            f = corpus::FIELD
        ),
    )
    .expect("config");
    let mut daemon = start_unprivileged(&config);
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(port, "/readyz").map(|r| r.0) != Some(200) {
        assert!(daemon.running(), "the daemon exited while starting");
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The two kinds that need a running daemon: a slow writer that pauses
    // longer than the settle interval (its read deadline of 1 s passes
    // while it is still being written), and a file gone before it settles.
    let grower = corpus::grow(
        &plate_dir,
        Duration::from_secs(3),
        Duration::from_millis(1200),
    );
    corpus::appear_then_vanish(&plate_dir, Duration::from_millis(150));
    grower.join().expect("grow");

    let store = tmp.path().join("out.zarr");
    let journal = tmp.path().join("out.zarr.events.jsonl");
    let odd_group = bfx_daemon::store::group_name(corpus::ODD_PLATE);
    let good_rows = GOOD_WELLS.len() as u64 + 2; // B11 (its first w1) and C03 (grown)
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let ev = events(&journal);
        let recorded = cases.iter().all(|c| {
            !matches!(c.outcome, Outcome::Recorded { .. }) || !about(&ev, &c.subject).is_empty()
        });
        if recorded
            && committed_rows(&store, PLATE) >= good_rows
            && committed_rows(&store, &odd_group) >= 1
        {
            break;
        }
        assert!(daemon.running(), "the daemon exited on bad input");
        assert!(
            Instant::now() < deadline,
            "not every outcome came: rows {} and {}, journal {ev:#?}",
            committed_rows(&store, PLATE),
            committed_rows(&store, &odd_group)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(1));
    assert!(daemon.running(), "the daemon exited on bad input");
    let (_, metrics) = get(port, "/metrics").expect("metrics");
    daemon.kill();

    let ev = events(&journal);
    let mut rejected: HashMap<&str, u64> = HashMap::new();
    for case in &cases {
        let records = about(&ev, &case.subject);
        match &case.outcome {
            Outcome::Recorded {
                event,
                reason,
                metric,
                files,
            } => {
                assert_eq!(records.len(), 1, "{}: {records:#?}", case.kind);
                let r = records[0];
                assert_eq!(r["event"], *event, "{}: {r}", case.kind);
                assert!(
                    r["reason"].as_str().is_some_and(|s| s.contains(reason)),
                    "{}: reason {:?} lacks {reason:?}",
                    case.kind,
                    r["reason"]
                );
                *rejected.entry(metric).or_default() += files;
            }
            Outcome::Embedded { .. } | Outcome::Skipped { .. } => {
                assert!(records.is_empty(), "{}: {records:#?}", case.kind)
            }
        }
    }
    // Nothing else refused: every record is one of the corpus's.
    let refusals = ev.iter().filter(|e| e["event"] != "plate-closed").count();
    let expected = cases
        .iter()
        .filter(|c| matches!(c.outcome, Outcome::Recorded { .. }))
        .count();
    assert_eq!(refusals, expected, "{ev:#?}");
    for (reason, files) in &rejected {
        let counted = sum(
            &metrics,
            "bfx_files_rejected_total",
            &format!("reason=\"{reason}\""),
        );
        assert_eq!(
            counted, *files as f64,
            "bfx_files_rejected_total{{reason={reason}}}"
        );
    }
    assert_eq!(
        sum(&metrics, "bfx_files_rejected_total", ""),
        rejected.values().sum::<u64>() as f64,
        "{metrics}"
    );
    assert_eq!(
        sum(&metrics, "bfx_files_skipped_total", "reason=\"vanished\""),
        1.0
    );
    let embedded = sum(&metrics, "bfx_sites_embedded_total", "");
    assert_eq!(embedded, (good_rows + 1) as f64);
    assert_eq!(sum(&metrics, "bfx_sites_rejected_total", ""), 2.0);
    assert_eq!(sum(&metrics, "bfx_sites_incomplete_total", ""), 1.0);
    assert_eq!(
        sum(&metrics, "bfx_files_seen_total", ""),
        embedded * 2.0
            + sum(&metrics, "bfx_files_rejected_total", "")
            + sum(&metrics, "bfx_files_skipped_total", ""),
        "every file seen is accounted for: {metrics}"
    );

    // The embedded kinds, read back with anndata: the grown file's site in
    // its plate, the odd plate in a group of its own inside the store.
    assert!(
        odd_group
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c))
            && !odd_group.starts_with('.'),
        "{odd_group}"
    );
    let groups = [store.join(PLATE), store.join(&odd_group)];
    let read = python_json(READ, &groups);
    let plate = &read[groups[0].to_str().expect("UTF-8")];
    let index: Vec<&str> = plate["index"]
        .as_array()
        .expect("index")
        .iter()
        .filter_map(|v| v.as_str())
        .collect();
    let mut want: Vec<String> = GOOD_WELLS
        .iter()
        .map(|w| format!("{PLATE}/{w}/1"))
        .collect();
    want.extend([format!("{PLATE}/B11/1"), format!("{PLATE}/C03/1")]);
    let mut got: Vec<String> = index.iter().map(|s| s.to_string()).collect();
    want.sort();
    got.sort();
    assert_eq!(got, want);
    let odd = &read[groups[1].to_str().expect("UTF-8")];
    assert_eq!(odd["plate"], corpus::ODD_PLATE);
    assert_eq!(odd["index"].as_array().map(Vec::len), Some(1));
}
