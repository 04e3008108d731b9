//! The daemon's Zarr store as Python's `anndata` and `zarr` read it: every
//! column and value after commits, updates and reopening, and a reader
//! calling `anndata.read_zarr` in a loop while rows are committed that
//! never fails and never sees an inconsistent snapshot.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime};

use bfx_core::bundle::CorrectionMode;
use bfx_core::naming::{PlateFormat, SiteKey, Well};
use bfx_daemon::store::{PlateInfo, Row, RowStatus, Store};
use bfx_tests::{python, run_python};

const DIM: usize = 4;

fn info() -> PlateInfo {
    PlateInfo {
        bundle_sha256: "cd".repeat(32),
        method: "abra".into(),
        correction: CorrectionMode::Adabn,
    }
}

/// Site `i` of `plate`; its embedding encodes `i` so readers can check rows.
fn row(plate: &str, i: u32) -> Row {
    Row {
        key: SiteKey {
            plate: plate.into(),
            well: Well::new(1 + i / 48, 1 + i % 48, PlateFormat::default()).expect("valid well"),
            site: 1,
            timepoint: None,
            z: i.is_multiple_of(5).then_some(2),
        },
        paths: vec![PathBuf::from(format!("/acq/{plate}/{i}_w1.tif"))],
        acquired: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        correction: CorrectionMode::Adabn,
        status: RowStatus::Provisional,
        embedding: vec![i as f32, 1.0, 2.0, 3.0],
    }
}

const CHECK: &str = r#"
import sys, json, anndata, numpy as np
a = anndata.read_zarr(sys.argv[1])
print(json.dumps({
    "shape": list(a.shape),
    "dtype": str(a.X.dtype),
    "index": list(a.obs_names[:3]),
    "columns": list(a.obs.columns),
    "column_dtypes": [str(a.obs[c].dtype) for c in ["column", "site", "z"]],
    "z": [int(v) for v in a.obs["z"][:2]],
    "status": sorted(set(a.obs["status"])),
    "x0": [float(v) for v in a.X[:, 0]],
    "x_row1": [float(v) for v in a.X[1]],
    "var": list(a.var_names),
    "uns": {k: str(v) for k, v in a.uns.items()},
}))
"#;

#[test]
fn anndata_reads_every_column_of_a_plate() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut store = Store::open(tmp.path(), DIM, 8).expect("store");
    for i in 0..20 {
        store.stage(&row("Plate 1", i), &info()).expect("staged");
    }
    store.commit().expect("commit");
    store
        .update(
            &row("Plate 1", 1).key,
            &[100.0, 0.0, 0.0, 0.0],
            RowStatus::Final,
        )
        .expect("update");
    store.set_complete("Plate 1");
    store.commit().expect("commit");
    let group = tmp
        .path()
        .join(store.plates().keys().next().expect("one plate"));
    drop(store);
    // Reopening rewrites metadata; readers must still load it.
    drop(Store::open(tmp.path(), DIM, 8).expect("reopened"));

    let out = run_python(CHECK, &[group.as_os_str()]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).expect("JSON from the checker");
    assert_eq!(v["shape"], serde_json::json!([20, DIM]));
    assert_eq!(v["dtype"], "float32");
    assert_eq!(
        v["index"],
        serde_json::json!(["Plate 1/A01/1/z2", "Plate 1/A02/1", "Plate 1/A03/1"])
    );
    assert_eq!(
        v["columns"],
        serde_json::json!([
            "well",
            "row",
            "column",
            "site",
            "timepoint",
            "z",
            "paths",
            "acquired",
            "correction",
            "status"
        ])
    );
    assert_eq!(
        v["column_dtypes"],
        serde_json::json!(["int32", "int32", "int32"])
    );
    assert_eq!(v["z"], serde_json::json!([2, -1]));
    assert_eq!(v["status"], serde_json::json!(["final", "provisional"]));
    let x0: Vec<f64> = (0..20)
        .map(|i| if i == 1 { 100.0 } else { f64::from(i) })
        .collect();
    assert_eq!(v["x0"], serde_json::json!(x0));
    assert_eq!(v["x_row1"], serde_json::json!([100.0, 0.0, 0.0, 0.0]));
    assert_eq!(
        v["var"],
        serde_json::json!(["emb_0", "emb_1", "emb_2", "emb_3"])
    );
    assert_eq!(v["uns"]["plate"], "Plate 1");
    assert_eq!(v["uns"]["plate_status"], "complete");
    assert_eq!(v["uns"]["method"], "abra");
    assert_eq!(v["uns"]["correction_mode"], "adabn");
}

/// Reads the plate in a loop until `stop` appears; every snapshot must have
/// as many obs rows as X rows, and row i's first value must be i.
const READER: &str = r#"
import sys, os, json, anndata, numpy as np
group, stop = sys.argv[1], sys.argv[2]
reads = failures = inconsistent = 0
sizes = set()
errors = []
while True:
    done = os.path.exists(stop)
    try:
        a = anndata.read_zarr(group)
        reads += 1
        sizes.add(a.n_obs)
        want = np.arange(a.n_obs, dtype=np.float32)
        if a.X.shape[0] != len(a.obs) or not np.array_equal(a.X[:, 0], want):
            inconsistent += 1
    except Exception as e:
        if os.path.exists(os.path.join(group, "zarr.json")):
            failures += 1
            errors.append(repr(e)[:200])
    if done:
        break
print(json.dumps({"reads": reads, "failures": failures, "inconsistent": inconsistent,
                  "sizes": len(sizes), "max": max(sizes) if sizes else 0, "errors": errors[:3]}))
"#;

#[test]
fn a_reader_never_fails_while_rows_are_committed() {
    let tmp = tempfile::tempdir().expect("temp dir");
    let mut store = Store::open(tmp.path(), DIM, 16).expect("store");
    store.stage(&row("P1", 0), &info()).expect("staged");
    store.commit().expect("commit");
    let group = tmp.path().join("P1");
    let stop = tmp.path().join("stop");
    let reader = Command::new(python())
        .arg("-c")
        .arg(READER)
        .arg(&group)
        .arg(&stop)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("reader starts");
    // Let the reader start before the writes begin.
    std::thread::sleep(Duration::from_secs(3));
    let mut next = 1;
    for commit in 0..150 {
        for _ in 0..3 {
            store.stage(&row("P1", next), &info()).expect("staged");
            next += 1;
        }
        // Rewrite an early row in place now and then, as AdaBN finalization does.
        if commit % 10 == 0 {
            store
                .update(&row("P1", 2).key, &[2.0, 9.0, 9.0, 9.0], RowStatus::Final)
                .expect("update");
        }
        store.commit().expect("commit");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::write(&stop, b"").expect("stop file");
    let out = reader.wait_with_output().expect("reader ends");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON from the reader");
    assert_eq!(v["failures"], 0, "{v}");
    assert_eq!(v["inconsistent"], 0, "{v}");
    assert!(v["reads"].as_u64().expect("count") >= 10, "{v}");
    assert!(
        v["sizes"].as_u64().expect("count") >= 3,
        "the reader saw the plate grow: {v}"
    );
    assert_eq!(v["max"], next, "{v}");
}
