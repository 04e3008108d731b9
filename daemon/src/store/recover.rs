//! Bringing a store back after a crash: temporary files removed, each
//! plate group read back at a consistent row count.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde_json::Value;
use zarrs::array::Array;

use super::layout::{self, ColumnKind};
use super::{PlateTable, RowStatus, Storage, StoreError, StoredRow, UNS_KEYS, files, io};

/// Remove every `*.tmp` file below `root`: writes a kill interrupted.
/// zarrs' atomic writer refuses to write where one is left.
pub fn remove_temporary_files(root: &Path) -> Result<(), StoreError> {
    for entry in std::fs::read_dir(root).map_err(io(root))? {
        let path = entry.map_err(io(root))?.path();
        if path.is_dir() {
            remove_temporary_files(&path)?;
        } else if path.extension().is_some_and(|e| e == "tmp") {
            std::fs::remove_file(&path).map_err(io(&path))?;
        }
    }
    Ok(())
}

fn read_json(path: &Path) -> Result<Option<Value>, StoreError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StoreError::Incompatible {
                    path: path.to_owned(),
                    problem: format!("not valid JSON: {e}"),
                })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::Io {
            path: path.to_owned(),
            source: e,
        }),
    }
}

fn rows_of(meta: &Value) -> Option<u64> {
    meta["shape"].get(0).and_then(Value::as_u64)
}

/// Every committed plate group under `root`.
pub fn load_plates(
    root: &Path,
    storage: &Arc<Storage>,
    dim: usize,
) -> Result<Vec<PlateTable>, StoreError> {
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(root)
        .map_err(io(root))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    entries.sort();
    for dir in entries {
        let Some(group) = read_json(&dir.join("zarr.json"))? else {
            // A plate killed before its first commit: nothing was visible.
            continue;
        };
        let Some(consolidated) = group["consolidated_metadata"]["metadata"].as_object() else {
            continue;
        };
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| StoreError::Incompatible {
                path: dir.clone(),
                problem: "group name is not UTF-8".into(),
            })?
            .to_string();
        let x = &consolidated["X"];
        let stored_dim = x["shape"].get(1).and_then(Value::as_u64);
        if stored_dim != Some(dim as u64) {
            return Err(StoreError::Incompatible {
                path: dir.clone(),
                problem: format!(
                    "holds embeddings of {stored_dim:?} values, the bundle makes {dim}; use another store"
                ),
            });
        }
        let chunk_rows = x["chunk_grid"]["configuration"]["chunk_shape"]
            .get(0)
            .and_then(Value::as_u64)
            .filter(|&r| r > 0)
            .ok_or_else(|| StoreError::Incompatible {
                path: dir.join("zarr.json"),
                problem: "X has no regular chunk shape".into(),
            })?;
        let committed = rows_of(x).unwrap_or(0);
        let rows = roll(&dir, committed);
        // Every file agrees with the recovered row count again (an array's
        // metadata may also be torn: it is not synced, the commit point is).
        files::write_plate_metadata(&dir, rows, dim as u64, chunk_rows, true)?;
        out.push(read_plate(storage, &name, rows, dim, chunk_rows)?);
    }
    Ok(out)
}

/// The row count to recover to: forward to what every array's own
/// metadata says when they all agree (their data was written and synced
/// before any of them), else back to the last commit. Unreadable
/// metadata disagrees.
fn roll(dir: &Path, committed: u64) -> u64 {
    let mut arrays = vec![dir.join("X")];
    arrays.extend(layout::obs_arrays().map(|(c, _)| dir.join("obs").join(c)));
    let seen: Vec<Option<u64>> = arrays
        .iter()
        .map(|a| {
            read_json(&a.join("zarr.json"))
                .ok()
                .flatten()
                .as_ref()
                .and_then(rows_of)
        })
        .collect();
    match seen.first() {
        Some(Some(n)) if *n > committed && seen.iter().all(|s| *s == Some(*n)) => *n,
        _ => committed,
    }
}

/// Elements `subset` of the array at `path`.
fn read<T: zarrs::array::ElementOwned>(
    storage: &Arc<Storage>,
    path: &str,
    subset: &[std::ops::Range<u64>],
) -> Result<Vec<T>, StoreError> {
    Array::open(storage.clone(), path)
        .map_err(|e| StoreError::Zarr {
            path: path.to_string(),
            message: e.to_string(),
        })?
        .retrieve_array_subset(&subset)
        .map_err(super::zarr(path))
}

/// Whole rows `range` of plate group `group`, read from the store.
pub fn read_rows(
    storage: &Arc<Storage>,
    group: &str,
    range: std::ops::Range<u64>,
    dim: usize,
) -> Result<Vec<StoredRow>, StoreError> {
    let mut rows: Vec<StoredRow> = range.clone().map(|_| StoredRow::blank(dim)).collect();
    if range.is_empty() {
        return Ok(rows);
    }
    let x: Vec<f32> = read(
        storage,
        &format!("/{group}/X"),
        &[range.clone(), 0..dim as u64],
    )?;
    for (row, values) in rows.iter_mut().zip(x.chunks_exact(dim.max(1))) {
        row.embedding.copy_from_slice(values);
    }
    for (name, kind) in layout::obs_arrays() {
        let path = format!("/{group}/obs/{name}");
        let subset = [range.clone()];
        match kind {
            ColumnKind::Text => {
                for (row, value) in rows
                    .iter_mut()
                    .zip(read::<String>(storage, &path, &subset)?)
                {
                    row.set_text(name, value);
                }
            }
            ColumnKind::Int => {
                for (row, value) in rows.iter_mut().zip(read::<i32>(storage, &path, &subset)?) {
                    row.set_int(name, value);
                }
            }
        }
    }
    Ok(rows)
}

/// The stored `uns[key]` of plate group `group`.
pub fn read_uns(storage: &Arc<Storage>, group: &str, key: &str) -> Result<String, StoreError> {
    let v: Vec<String> = read(storage, &format!("/{group}/uns/{key}"), &[])?;
    Ok(v.into_iter().next().unwrap_or_default())
}

/// The commit point of plate group `group` under `root`: the rows its
/// group metadata makes visible (0 for a plate never committed).
pub fn commit_point(root: &Path, group: &str) -> Result<u64, StoreError> {
    let meta = read_json(&root.join(group).join("zarr.json"))?;
    Ok(meta
        .as_ref()
        .and_then(|m| rows_of(&m["consolidated_metadata"]["metadata"]["X"]))
        .unwrap_or(0))
}

/// [`crate::digest::of_site_text`] of the `_index` of each of the first
/// `n` rows of `group`, in row order.
pub fn read_site_ids(storage: &Arc<Storage>, group: &str, n: u64) -> Result<Vec<u128>, StoreError> {
    Ok(column(storage, group, "_index", n)?
        .iter()
        .map(|text| crate::digest::of_site_text(text))
        .collect())
}

/// Row position of each of the first `n` rows of `group`, by
/// [`crate::digest::of_site_text`] of its `_index`.
pub fn read_index(
    storage: &Arc<Storage>,
    group: &str,
    n: u64,
) -> Result<HashMap<u128, usize>, StoreError> {
    Ok(read_site_ids(storage, group, n)?
        .into_iter()
        .enumerate()
        .map(|(i, id)| (id, i))
        .collect())
}

/// The first `n` values of text column `name` of `group`.
fn column(
    storage: &Arc<Storage>,
    group: &str,
    name: &str,
    n: u64,
) -> Result<Vec<String>, StoreError> {
    if n == 0 {
        return Ok(Vec::new());
    }
    read(
        storage,
        &format!("/{group}/obs/{name}"),
        std::slice::from_ref(&(0..n)),
    )
}

/// The table of a stored plate of `n` committed rows.
fn read_plate(
    storage: &Arc<Storage>,
    group: &str,
    n: u64,
    dim: usize,
    chunk_rows: u64,
) -> Result<PlateTable, StoreError> {
    // Rows are read whole only from the first one not final (they may
    // still change: AdaBN provisional rows); final rows before it stay on
    // disk.
    let status = column(storage, group, "status", n)?;
    let open_from = status
        .iter()
        .position(|s| s != RowStatus::Final.as_str())
        .unwrap_or(status.len()) as u64;
    let rows = read_rows(storage, group, open_from..n, dim)?;
    let mut uns = HashMap::new();
    for key in UNS_KEYS {
        uns.insert(key.to_string(), read_uns(storage, group, key)?);
    }
    let mut table = PlateTable::new(group.to_string(), uns, chunk_rows);
    table.committed = n as usize;
    table.released = open_from as usize;
    table.rows = rows;
    table.meta_dirty = false;
    // A settled plate's index stays on disk (read back if a row comes
    // late); the others need theirs to refuse a site twice.
    table.index = if table.settled() {
        None
    } else {
        Some(read_index(storage, group, n)?)
    };
    Ok(table)
}
