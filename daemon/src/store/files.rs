//! How a commit reaches the disk so that a power cut, not only a killed
//! process, keeps every row it made visible.
//!
//! zarrs syncs each chunk file before renaming it into place; the folders
//! the chunks were renamed into are synced next, then every array's
//! `zarr.json` is written (not synced: recovery rewrites them from the
//! commit point), and last the plate group's `zarr.json` through a synced
//! temporary file, a rename and a synced folder. So the commit point is
//! never torn and never names rows whose chunks could be lost.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::layout;
use super::{StoreError, UNS_KEYS, io};

/// Write `bytes` to `path` through a temporary file and a rename;
/// `durable`: the file is synced before the rename, its folder after.
pub fn write_atomic(path: &Path, bytes: &[u8], durable: bool) -> Result<(), StoreError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
    file.write_all(bytes).map_err(io(&tmp))?;
    if durable {
        file.sync_all().map_err(io(&tmp))?;
    }
    drop(file);
    std::fs::rename(&tmp, path).map_err(io(path))?;
    match path.parent() {
        Some(dir) if durable => sync_dir(dir),
        _ => Ok(()),
    }
}

/// Write `value` as `path` (creating its folder), as [`write_atomic`].
pub fn write_json(path: &Path, value: &Value, durable: bool) -> Result<(), StoreError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    // Serializing a JSON value cannot fail.
    let bytes = serde_json::to_vec_pretty(value).expect("JSON value serializes");
    write_atomic(path, &bytes, durable)
}

/// Make the entries of `dir` (files created or renamed into it) durable.
/// A folder that does not exist holds nothing to sync (zarrs writes no
/// chunk that is all fill value).
pub fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    match std::fs::File::open(dir) {
        Ok(f) => f.sync_all().map_err(io(dir)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(dir)(e)),
    }
}

/// The folders of plate group `group` that a commit of rows `start..n`
/// (and, with `uns`, of the `uns` values) renamed chunk files into, by
/// the layout's chunk keys: `X/c/<row chunk>/0`, `obs/<column>/c/<row
/// chunk>`, `uns/<key>/c`.
pub fn chunk_dirs(group: &Path, start: u64, n: u64, chunk_rows: u64, uns: bool) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if start < n {
        let x = group.join("X/c");
        dirs.extend((start / chunk_rows..n.div_ceil(chunk_rows)).map(|i| x.join(i.to_string())));
        dirs.push(x);
        dirs.extend(layout::obs_arrays().map(|(c, _)| group.join("obs").join(c).join("c")));
    }
    if uns {
        dirs.extend(UNS_KEYS.iter().map(|k| group.join("uns").join(k)));
    }
    dirs
}

/// `dir` and every folder below it (a plate's first commit creates them all).
pub fn all_dirs(dir: &Path) -> Result<Vec<PathBuf>, StoreError> {
    let mut out = vec![dir.to_owned()];
    let mut i = 0;
    while i < out.len() {
        let entries = std::fs::read_dir(&out[i]).map_err(io(&out[i]))?;
        for entry in entries {
            let path = entry.map_err(io(dir))?.path();
            if path.is_dir() {
                out.push(path);
            }
        }
        i += 1;
    }
    Ok(out)
}

/// The `zarr.json` of every array of the plate group in `dir` whose shape
/// follows the rows (`all`: of every array and subgroup) for `n` rows,
/// then the group's own with the consolidated metadata: the commit point.
/// The others never change once written, and every file written is a new
/// inode (write, then rename), which is most of a commit's cost.
pub fn write_plate_metadata(
    dir: &Path,
    n: u64,
    dim: u64,
    chunk_rows: u64,
    all: bool,
) -> Result<(), StoreError> {
    let consolidated = layout::consolidated(n, dim, chunk_rows, &UNS_KEYS)?;
    for (path, meta) in &consolidated {
        if !all && path != "X" && !path.starts_with("obs/") {
            continue;
        }
        let file = dir.join(path).join("zarr.json");
        if meta["node_type"] == "group" {
            let mut own = meta.clone();
            if let Some(o) = own.as_object_mut() {
                o.remove("consolidated_metadata");
            }
            write_json(&file, &own, false)?;
        } else {
            write_json(&file, meta, false)?;
        }
    }
    let group = layout::group_metadata(layout::anndata_attrs(), Some(consolidated));
    write_json(&dir.join("zarr.json"), &group, true)
}
