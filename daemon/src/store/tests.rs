//! Commits, reopening, and recovery from every state a kill can leave.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bfx_core::bundle::CorrectionMode;
use bfx_core::naming::{PlateFormat, SiteKey, Well};

use super::*;

const DIM: usize = 3;

fn info() -> PlateInfo {
    PlateInfo {
        bundle_sha256: "ab".repeat(32),
        method: "erm".into(),
        correction: CorrectionMode::Adabn,
    }
}

fn row(plate: &str, i: u32) -> Row {
    Row {
        key: SiteKey {
            plate: plate.into(),
            well: Well::new(1 + i / 24, 1 + i % 24, PlateFormat::default()).expect("valid well"),
            site: 1 + i % 3,
            timepoint: i.is_multiple_of(2).then_some(i),
            z: None,
        },
        paths: vec![
            PathBuf::from(format!("/in/{plate}/{i}_w1.tif")),
            PathBuf::from(format!("/in/{plate}/{i}_w2.tif")),
        ],
        acquired: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + u64::from(i)),
        correction: CorrectionMode::Adabn,
        status: RowStatus::Provisional,
        embedding: vec![i as f32, -(i as f32), 0.5],
    }
}

fn stage(store: &mut Store, plate: &str, range: std::ops::Range<u32>) {
    for i in range {
        store.stage(&row(plate, i), &info()).expect("new site");
    }
}

/// The committed rows of `plate`, as the store holds them on disk.
fn rows(store: &Store, plate: &str) -> Vec<StoredRow> {
    store.stored_rows(plate).expect("rows read back")
}

#[test]
fn committed_rows_come_back_after_reopening() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = Store::open(tmp.path(), DIM, 4).unwrap();
    stage(&mut store, "P1", 0..6);
    stage(&mut store, "P 2/x", 0..2);
    assert_eq!(store.pending(), 8);
    assert_eq!(store.commit().unwrap(), 8);
    stage(&mut store, "P1", 6..9);
    let k = row("P1", 1).key;
    store
        .update(&k, &[9.0, 9.0, 9.0], RowStatus::Final)
        .unwrap();
    // Rewrites from the chunk holding row 1 (rows 0..4) to the end.
    assert_eq!(store.commit().unwrap(), 9);
    store.set_complete("P1");
    store.commit().unwrap();
    let before = rows(&store, "P1");
    drop(store);

    let mut store = Store::open(tmp.path(), DIM, 4).unwrap();
    assert_eq!(rows(&store, "P1"), before);
    assert_eq!(before.len(), 9);
    assert_eq!(before[1].embedding, vec![9.0, 9.0, 9.0]);
    assert_eq!(before[1].status, RowStatus::Final);
    assert_eq!(before[0].index, "P1/A01/1/t0");
    assert_eq!(before[0].acquired, "2027-01-15T08:00:00.000Z");
    assert!(store.plate("P1").unwrap().complete());
    assert!(!store.plate("P 2/x").unwrap().complete());
    assert!(store.contains(&row("P 2/x", 1).key).expect("index"));
    assert!(!store.contains(&row("P 2/x", 2).key).expect("index"));
    let groups: Vec<&String> = store.plates().keys().collect();
    assert_eq!(groups[0], "P1");
    assert!(groups[1].starts_with("plate_P_2_x-"), "{}", groups[1]);
}

#[test]
fn a_site_is_stored_once() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = Store::open(tmp.path(), DIM, 4).unwrap();
    stage(&mut store, "P1", 0..2);
    store.commit().unwrap();
    let err = store.stage(&row("P1", 1), &info()).unwrap_err();
    assert_eq!(err.to_string(), "site P1/A02/2 is already in the store");
    let mut wrong = row("P1", 5);
    wrong.embedding.push(1.0);
    assert!(store.stage(&wrong, &info()).is_err());
}

#[test]
fn committed_final_rows_leave_memory_but_not_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = Store::open(tmp.path(), DIM, 4).unwrap();
    let final_row = |i| Row {
        status: RowStatus::Final,
        ..row("P1", i)
    };
    for i in 0..6 {
        store.stage(&final_row(i), &info()).unwrap();
    }
    store.stage(&row("P1", 6), &info()).unwrap();
    store.commit().unwrap();
    // Rows 0..6 are final: they leave memory, those of the partial chunk
    // (4 and 5) too; the provisional row 6 stays.
    let table = store.plate("P1").unwrap();
    assert_eq!((table.released, table.rows.len(), table.len()), (6, 1, 7));
    let err = store.stage(&final_row(2), &info()).unwrap_err();
    assert!(matches!(err, StoreError::Duplicate(_)), "{err}");
    assert!(
        store
            .update(&row("P1", 1).key, &[0.0; 3], RowStatus::Final)
            .is_err()
    );
    store
        .update(&row("P1", 6).key, &[6.5; 3], RowStatus::Final)
        .unwrap();
    for i in 7..9 {
        store.stage(&final_row(i), &info()).unwrap();
    }
    // Written from the first row in memory: zarrs merges rows 6 and 7
    // into the stored chunk of rows 4..8.
    assert_eq!(store.commit().unwrap(), 3);
    let table = store.plate("P1").unwrap();
    assert_eq!((table.released, table.rows.len()), (9, 0));
    drop(store);

    let store = Store::open(tmp.path(), DIM, 4).unwrap();
    // Reopened, a plate of final rows holds none in memory.
    assert!(store.plate("P1").unwrap().rows.is_empty());
    let back = rows(&store, "P1");
    assert_eq!(back.len(), 9);
    for i in [0, 2, 4, 5, 7, 8] {
        assert_eq!(back[i], StoredRow::new(&final_row(i as u32)), "row {i}");
    }
    assert_eq!(back[6].embedding, vec![6.5; 3]);
}

#[test]
fn a_reopened_plate_holds_its_rows_from_the_first_provisional_one() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = Store::open(tmp.path(), DIM, 4).unwrap();
    for i in 0..5 {
        let status = if i < 3 {
            RowStatus::Final
        } else {
            RowStatus::Provisional
        };
        store
            .stage(
                &Row {
                    status,
                    ..row("P1", i)
                },
                &info(),
            )
            .unwrap();
    }
    store.commit().unwrap();
    drop(store);

    let mut store = Store::open(tmp.path(), DIM, 4).unwrap();
    let table = store.plate("P1").unwrap();
    assert_eq!((table.released, table.rows.len(), table.len()), (3, 2, 5));
    assert_eq!(table.rows[0], StoredRow::new(&row("P1", 3)));
    assert!(
        store.contains(&row("P1", 0).key).expect("index"),
        "released rows stay in the index"
    );
    store
        .update(&row("P1", 4).key, &[4.5; 3], RowStatus::Final)
        .unwrap();
    store.commit().unwrap();
    drop(store);

    let store = Store::open(tmp.path(), DIM, 4).unwrap();
    let back = rows(&store, "P1");
    assert_eq!(
        back[..4],
        [0, 1, 2, 3].map(|i| StoredRow::new(&Row {
            status: if i < 3 {
                RowStatus::Final
            } else {
                RowStatus::Provisional
            },
            ..row("P1", i)
        }))
    );
    assert_eq!(
        (back[4].embedding.clone(), back[4].status),
        (vec![4.5; 3], RowStatus::Final)
    );
}

/// A metadata file of the store.
fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap();
}

/// Commit 5 rows, then 4 more, keeping the first commit's metadata files.
fn two_commits(dir: &Path, saved: &Path) {
    let mut store = Store::open(dir, DIM, 4).unwrap();
    stage(&mut store, "P1", 0..5);
    store.commit().unwrap();
    copy(&dir.join("P1/zarr.json"), &saved.join("group.json"));
    copy(&dir.join("P1/X/zarr.json"), &saved.join("x.json"));
    stage(&mut store, "P1", 5..9);
    store.commit().unwrap();
}

#[test]
fn a_kill_before_the_commit_point_rolls_forward_when_every_array_was_written() {
    let (tmp, saved) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    two_commits(tmp.path(), saved.path());
    // Killed after all arrays' metadata, before the group's: roll forward.
    copy(
        &saved.path().join("group.json"),
        &tmp.path().join("P1/zarr.json"),
    );
    // ... with an interrupted atomic write left behind.
    std::fs::write(tmp.path().join("P1/X/c/1/0.tmp"), b"partial").unwrap();
    let mut store = Store::open(tmp.path(), DIM, 4).unwrap();
    assert_eq!(rows(&store, "P1").len(), 9);
    assert!(!tmp.path().join("P1/X/c/1/0.tmp").exists());
    let group = json(&tmp.path().join("P1/zarr.json"));
    assert_eq!(
        group["consolidated_metadata"]["metadata"]["X"]["shape"][0],
        9
    );
    // Writing goes on where it stopped.
    stage(&mut store, "P1", 9..10);
    store.commit().unwrap();
}

#[test]
fn a_kill_between_array_metadata_rolls_back_to_the_last_commit() {
    let (tmp, saved) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    two_commits(tmp.path(), saved.path());
    copy(
        &saved.path().join("group.json"),
        &tmp.path().join("P1/zarr.json"),
    );
    copy(
        &saved.path().join("x.json"),
        &tmp.path().join("P1/X/zarr.json"),
    );
    let mut store = Store::open(tmp.path(), DIM, 4).unwrap();
    let back = rows(&store, "P1");
    assert_eq!(back.len(), 5);
    assert_eq!(back[4].embedding, vec![4.0, -4.0, 0.5]);
    // The rolled-back sites are new again and get stored once.
    assert!(!store.contains(&row("P1", 5).key).expect("index"));
    stage(&mut store, "P1", 5..9);
    store.commit().unwrap();
    drop(store);
    assert_eq!(
        rows(&Store::open(tmp.path(), DIM, 4).unwrap(), "P1").len(),
        9
    );
}

#[test]
fn a_plate_killed_before_its_first_commit_is_absent() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("P9/X")).unwrap();
    let store = Store::open(tmp.path(), DIM, 4).unwrap();
    assert!(store.plates().is_empty());
}

#[test]
fn another_embedding_size_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = Store::open(tmp.path(), DIM, 4).unwrap();
    stage(&mut store, "P1", 0..1);
    store.commit().unwrap();
    drop(store);
    let err = Store::open(tmp.path(), DIM + 1, 4).err().expect("refused");
    assert!(
        err.to_string()
            .contains("holds embeddings of Some(3) values, the bundle makes 4"),
        "{err}"
    );
}

#[test]
fn plate_names_become_safe_unique_group_names() {
    assert_eq!(group_name("Plate_01-a.b"), "Plate_01-a.b");
    for bad in ["..", "a/b", "a\\b", ".hidden", "", "Ü"] {
        let g = group_name(bad);
        assert!(
            g.starts_with("plate_") && !g.contains('/') && !g.contains(".."),
            "{bad}: {g}"
        );
    }
    assert_ne!(group_name("a/b"), group_name("a_b"));
    assert_ne!(group_name("a/b"), group_name("a\\b"));
}

#[test]
fn a_plate_keeps_its_chunking_when_the_configured_chunk_size_changes() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = Store::open(tmp.path(), DIM, 4).unwrap();
    stage(&mut store, "P1", 0..9);
    store.commit().unwrap();
    drop(store);
    // `commit.max_rows` (the chunk size of new plates) changed between runs.
    let mut store = Store::open(tmp.path(), DIM, 8).unwrap();
    stage(&mut store, "P1", 9..11);
    stage(&mut store, "P2", 0..3);
    store.commit().unwrap();
    drop(store);
    let store = Store::open(tmp.path(), DIM, 8).unwrap();
    let back = rows(&store, "P1");
    assert_eq!(back.len(), 11);
    for (i, r) in back.iter().enumerate() {
        assert_eq!(r.embedding, row("P1", i as u32).embedding, "row {i}");
        assert_eq!(r.index, row("P1", i as u32).key.to_string(), "row {i}");
    }
    let chunk = |plate: &str| -> serde_json::Value {
        let meta = json(&tmp.path().join(plate).join("X/zarr.json"));
        meta["chunk_grid"]["configuration"]["chunk_shape"][0].clone()
    };
    assert_eq!(chunk("P1"), 4);
    assert_eq!(chunk("P2"), 8);
    assert_eq!(rows(&store, "P2").len(), 3);
}

#[test]
fn torn_array_metadata_is_rebuilt_from_the_commit_point() {
    let (tmp, saved) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    two_commits(tmp.path(), saved.path());
    // A power cut can leave array metadata torn (it is not synced; the
    // commit point is): the commit point stands.
    std::fs::write(tmp.path().join("P1/X/zarr.json"), b"{\"shape\": [").unwrap();
    std::fs::write(tmp.path().join("P1/obs/well/zarr.json"), b"").unwrap();
    let store = Store::open(tmp.path(), DIM, 4).unwrap();
    let back = rows(&store, "P1");
    assert_eq!(back.len(), 9);
    assert_eq!(back[8], StoredRow::new(&row("P1", 8)));
    let x = json(&tmp.path().join("P1/X/zarr.json"));
    assert_eq!(x["shape"][0], 9);
    drop(store);
    // Torn array metadata beside an older commit point: back to that commit.
    copy(
        &saved.path().join("group.json"),
        &tmp.path().join("P1/zarr.json"),
    );
    std::fs::write(tmp.path().join("P1/obs/well/zarr.json"), b"{").unwrap();
    let store = Store::open(tmp.path(), DIM, 4).unwrap();
    assert_eq!(rows(&store, "P1").len(), 5);
}

#[test]
fn a_commit_syncs_every_folder_it_renamed_chunks_into() {
    use std::collections::HashMap;
    use std::os::unix::fs::MetadataExt;
    // Every file below `dir` by its inode: a rename into place is a new one.
    fn inodes(dir: &Path) -> HashMap<PathBuf, u64> {
        let mut out = HashMap::new();
        for d in files::all_dirs(dir).unwrap() {
            for entry in std::fs::read_dir(&d).unwrap() {
                let path = entry.unwrap().path();
                if path.is_file() {
                    out.insert(path.clone(), std::fs::metadata(&path).unwrap().ino());
                }
            }
        }
        out
    }
    let tmp = tempfile::tempdir().unwrap();
    let mut store = Store::open(tmp.path(), DIM, 4).unwrap();
    stage(&mut store, "P1", 0..5);
    store.commit().unwrap();
    let group = tmp.path().join("P1");
    let before = inodes(&group);
    stage(&mut store, "P1", 5..10);
    store.set_uns("P1", "plate_status", "complete");
    store.commit().unwrap();
    let dirs = files::chunk_dirs(&group, 4, 10, 4, true);
    let mut chunks = 0;
    for (path, inode) in inodes(&group) {
        // Metadata is written after the chunks; only the commit point is synced (by write_atomic).
        if before.get(&path) == Some(&inode) || path.ends_with("zarr.json") {
            continue;
        }
        let dir = path.parent().unwrap().to_owned();
        assert!(
            dirs.contains(&dir),
            "{} was written, {dirs:?} synced",
            path.display()
        );
        chunks += 1;
    }
    // X and most obs columns: row chunks 1 and 2; each uns value.
    assert!(
        chunks > 2 * 10 + UNS_KEYS.len(),
        "{chunks} chunk files written"
    );
}

/// A settled plate's index leaves memory; the store reads it back when a
/// row comes late, so a site is still stored once, and the plate settles
/// again after that row's commit.
#[test]
fn a_settled_plate_forgets_its_index_and_still_refuses_a_site_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let mut store = Store::open(tmp.path(), DIM, 4).unwrap();
    let stage = |store: &mut Store, plate: &str, range: std::ops::Range<u32>| {
        for i in range {
            let row = Row {
                status: RowStatus::Final,
                ..row(plate, i)
            };
            store.stage(&row, &info()).expect("new site");
        }
    };
    stage(&mut store, "P1", 0..6);
    stage(&mut store, "P2", 0..2);
    store.set_uns("P1", "adabn_stats", "[1.5]");
    store.commit().unwrap();
    assert!(store.settle().is_empty(), "open plates are not settled");
    store.set_complete("P1");
    assert!(
        store.settle().is_empty(),
        "a completion not yet committed does not settle"
    );
    store.commit().unwrap();
    assert_eq!(store.settle(), ["P1"]);
    assert!(store.settle().is_empty(), "a plate settles once");
    assert_eq!(store.remembered(), 2, "only the open plate's sites");
    let on_disk = Reader::new(tmp.path()).unwrap().sites("P1").unwrap();
    assert_eq!(on_disk.len(), 6);
    assert!(on_disk.contains(&crate::digest::of_site(&row("P1", 3).key)));

    assert!(matches!(
        store.stage(&row("P1", 3), &info()),
        Err(StoreError::Duplicate(_))
    ));
    assert_eq!(store.plate("P1").unwrap().rows.capacity(), 0);
    assert!(!store.plate("P1").unwrap().uns.contains_key("adabn_stats"));
    stage(&mut store, "P1", 6..7);
    // Rewrites `uns`: the statistics left in the store are kept.
    store.set_complete("P1");
    assert!(store.settle().is_empty(), "a late row is not committed yet");
    store.commit().unwrap();
    assert_eq!(store.settle(), ["P1"]);
    assert_eq!(rows(&store, "P1").len(), 7);
    drop(store);

    let mut store = Store::open(tmp.path(), DIM, 4).unwrap();
    assert_eq!(store.plate("P1").unwrap().uns["adabn_stats"], "[1.5]");
    store.release_committed();
    assert!(!store.plate("P1").unwrap().uns.contains_key("adabn_stats"));
    assert!(
        store.plate("P1").unwrap().index.is_none(),
        "settled on open"
    );
    assert!(store.plate("P2").unwrap().index.is_some());
    assert_eq!(store.remembered(), 2);
    assert!(store.contains(&row("P1", 6).key).unwrap());
    assert!(!store.contains(&row("P1", 7).key).unwrap());
}
