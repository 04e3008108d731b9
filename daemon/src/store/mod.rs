//! The output store: one Zarr v3 store with one AnnData group per plate
//! (layout in [`layout`]), committed so a reader always sees a consistent
//! snapshot and a killed daemon loses nothing it committed.
//!
//! A commit writes, in order: the changed chunks of every array (X first,
//! `obs.status` last, each chunk written to `<key>.tmp`, synced and
//! renamed), then syncs the folders they went into, writes each array's
//! own `zarr.json`, and last the plate group's `zarr.json` with the
//! consolidated metadata of everything below it, synced (`files.rs`). That
//! file is the commit point: readers (anndata, zarr-python) take shapes
//! from it, and rows past it are invisible. On open the store is
//! recovered: leftover `*.tmp` files go, and a plate whose arrays all got
//! their new metadata before the kill is rolled forward to it, otherwise
//! back to its last commit.

mod files;
mod index;
pub mod layout;
mod plate;
mod recover;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bfx_core::bundle::CorrectionMode;
use bfx_core::naming::SiteKey;
use serde_json::{Map, Value};
use thiserror::Error;
use zarrs::array::ArrayBuilder;
use zarrs::filesystem::FilesystemStore;
use zarrs::storage::storage_adapter::atomic_write::AtomicWriteStorageAdapter;

pub use self::index::Reader;
use self::layout::ColumnKind;
pub use self::plate::{PlateTable, Row, RowStatus, StoredRow, UNS_KEYS, correction_name};
use crate::digest;

type Storage = AtomicWriteStorageAdapter<FilesystemStore>;

/// Why the store cannot be used.
#[derive(Debug, Error)]
pub enum StoreError {
    /// A file of the store could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// zarrs failed to encode, decode, read or write.
    #[error("{path}: {message}")]
    Zarr {
        /// The array.
        path: String,
        /// What failed.
        message: String,
    },
    /// The layout could not be described (a bug).
    #[error("store layout: {0}")]
    Layout(String),
    /// The store holds something this daemon cannot continue.
    #[error("{path}: {problem}")]
    Incompatible {
        /// The group or file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A site was staged twice.
    #[error("site {0} is already in the store")]
    Duplicate(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

fn zarr(path: &str) -> impl FnOnce(zarrs::array::ArrayError) -> StoreError + '_ {
    move |e| StoreError::Zarr {
        path: path.to_string(),
        message: e.to_string(),
    }
}

/// What every plate of this daemon records in `uns`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlateInfo {
    /// sha256 of the bundle's manifest.
    pub bundle_sha256: String,
    /// Training method.
    pub method: String,
    /// Correction mode.
    pub correction: CorrectionMode,
}

/// The store.
pub struct Store {
    root: PathBuf,
    storage: Arc<Storage>,
    dim: usize,
    chunk_rows: u64,
    plates: BTreeMap<String, PlateTable>,
}

/// The zarrs storage of the store at `root`: files written through a
/// temporary name and a rename.
fn storage(root: &Path) -> Result<Arc<Storage>, StoreError> {
    let fs = FilesystemStore::new(root).map_err(|e| StoreError::Incompatible {
        path: root.to_owned(),
        problem: e.to_string(),
    })?;
    Ok(Arc::new(AtomicWriteStorageAdapter::new(Arc::new(fs))))
}

/// A file name for a plate group: the plate name where it is safe as
/// one, else its safe characters plus a digest of the original (no
/// separators, no `..`, no hidden names, no collisions).
pub fn group_name(plate: &str) -> String {
    let safe: String = plate
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if safe == plate && !safe.is_empty() && !safe.starts_with('.') {
        return safe;
    }
    let digest = bfx_core::bundle::hex_sha256(plate.as_bytes());
    format!("plate_{}-{}", safe.trim_start_matches('.'), &digest[..8])
}

impl Store {
    /// Open (creating or recovering) the store at `root` for embeddings of
    /// `dim` values; new plates are chunked by `chunk_rows` rows, stored
    /// ones keep their own chunking.
    pub fn open(root: &Path, dim: usize, chunk_rows: usize) -> Result<Store, StoreError> {
        std::fs::create_dir_all(root).map_err(io(root))?;
        recover::remove_temporary_files(root)?;
        let root_meta = root.join("zarr.json");
        if !root_meta.exists() {
            let mut attrs = Map::new();
            attrs.insert("bfx_store_version".into(), Value::from(1));
            files::write_json(&root_meta, &layout::group_metadata(attrs, None), true)?;
        }
        let mut store = Store {
            root: root.to_owned(),
            storage: storage(root)?,
            dim,
            chunk_rows: chunk_rows.max(1) as u64,
            plates: BTreeMap::new(),
        };
        for table in recover::load_plates(root, &store.storage, dim)? {
            store.plates.insert(table.group.clone(), table);
        }
        Ok(store)
    }

    /// The store's folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Every plate group, by group name.
    pub fn plates(&self) -> &BTreeMap<String, PlateTable> {
        &self.plates
    }

    /// The table of `plate`, if the store has it.
    pub fn plate(&self, plate: &str) -> Option<&PlateTable> {
        self.plates.get(&group_name(plate))
    }

    /// Every committed row of `plate`, read back from the store (memory
    /// holds only the rows that may still change).
    pub fn stored_rows(&self, plate: &str) -> Result<Vec<StoredRow>, StoreError> {
        let group = group_name(plate);
        let n = self.plates.get(&group).map_or(0, |t| t.committed);
        recover::read_rows(&self.storage, &group, 0..n as u64, self.dim)
    }

    /// Rows staged but not yet committed, over all plates.
    pub fn pending(&self) -> usize {
        self.plates
            .values()
            .map(|t| t.len() - t.committed.min(t.len()))
            .sum()
    }

    /// Stage a new row; refused if its site is already in the store.
    pub fn stage(&mut self, row: &Row, info: &PlateInfo) -> Result<usize, StoreError> {
        if row.embedding.len() != self.dim {
            return Err(StoreError::Layout(format!(
                "{}: embedding of {} values, the store holds {}",
                row.key,
                row.embedding.len(),
                self.dim
            )));
        }
        let plate = row.key.plate.clone();
        let g = group_name(&plate);
        let table = self.plates.entry(g.clone()).or_insert_with(|| {
            let uns = HashMap::from([
                ("adabn_stats".to_string(), String::new()),
                (
                    "bfx_version".to_string(),
                    env!("CARGO_PKG_VERSION").to_string(),
                ),
                ("bundle_sha256".to_string(), info.bundle_sha256.clone()),
                (
                    "correction_mode".to_string(),
                    correction_name(info.correction).to_string(),
                ),
                ("method".to_string(), info.method.clone()),
                ("plate".to_string(), plate.clone()),
                ("plate_status".to_string(), "open".to_string()),
            ]);
            PlateTable::new(g.clone(), uns, self.chunk_rows)
        });
        let i = table.len();
        let stored = StoredRow::new(row);
        let id = digest::of_site_text(&stored.index);
        let index = self.index(&g)?;
        if index.contains_key(&id) {
            return Err(StoreError::Duplicate(stored.index));
        }
        index.insert(id, i);
        // The group was entered above.
        let table = self.plates.get_mut(&g).expect("plate group present");
        table.rows.push(stored);
        table.touch(i);
        Ok(i)
    }

    /// Replace the embedding and status of a staged or committed row.
    pub fn update(
        &mut self,
        key: &SiteKey,
        embedding: &[f32],
        status: RowStatus,
    ) -> Result<(), StoreError> {
        let text = key.to_string();
        let g = group_name(&key.plate);
        if !self.plates.contains_key(&g) {
            return Err(StoreError::Layout(format!(
                "{text}: no such plate in the store"
            )));
        }
        let i = *self
            .index(&g)?
            .get(&digest::of_site_text(&text))
            .ok_or_else(|| StoreError::Layout(format!("{text}: no such site in the store")))?;
        // Checked above.
        let table = self.plates.get_mut(&g).expect("plate group present");
        let row = table.row_mut(i).ok_or_else(|| {
            StoreError::Layout(format!(
                "{text}: final and committed; it is not changed again"
            ))
        })?;
        row.embedding.clear();
        row.embedding.extend_from_slice(embedding);
        row.status = status;
        table.touch(i);
        Ok(())
    }

    /// Mark `plate` complete (written with the next commit).
    pub fn set_complete(&mut self, plate: &str) {
        if let Some(t) = self.plates.get_mut(&group_name(plate)) {
            t.uns.insert("plate_status".into(), "complete".into());
            t.meta_dirty = true;
        }
    }

    /// Set `uns[key]` of `plate` (written with the next commit).
    pub fn set_uns(&mut self, plate: &str, key: &str, value: &str) {
        if let Some(t) = self.plates.get_mut(&group_name(plate)) {
            t.uns.insert(key.to_string(), value.to_string());
            t.meta_dirty = true;
        }
    }

    /// Remove temporary files a failed commit left, so the next can write.
    pub fn clean_temporary(&self) -> Result<(), StoreError> {
        recover::remove_temporary_files(&self.root)
    }

    /// Commit every changed plate; returns the rows written.
    pub fn commit(&mut self) -> Result<usize, StoreError> {
        let groups: Vec<String> = self
            .plates
            .iter()
            .filter(|(_, t)| t.dirty_from.is_some() || t.meta_dirty)
            .map(|(g, _)| g.clone())
            .collect();
        let mut written = 0;
        for g in groups {
            written += self.commit_plate(&g)?;
        }
        Ok(written)
    }

    fn array(
        &self,
        builder: &ArrayBuilder,
        path: &str,
    ) -> Result<zarrs::array::Array<Storage>, StoreError> {
        builder
            .build(self.storage.clone(), path)
            .map_err(|e| StoreError::Zarr {
                path: path.to_string(),
                message: e.to_string(),
            })
    }

    fn commit_plate(&mut self, g: &str) -> Result<usize, StoreError> {
        let table = &self.plates[g];
        let n = table.len() as u64;
        let (dim, r) = (self.dim as u64, table.chunk_rows);
        let first_write = table.committed == 0;
        // Changed rows are written from the start of their chunk, or from
        // the first row still in memory: zarrs reads the released rows of
        // that chunk back from the store and writes them with the new ones.
        let start = table
            .dirty_from
            .map_or(n, |d| ((d as u64 / r) * r).max(table.released as u64))
            .min(n);
        let rows = &table.rows[start as usize - table.released..];
        if start < n {
            let x: Vec<f32> = rows
                .iter()
                .flat_map(|row| row.embedding.iter().copied())
                .collect();
            let path = format!("/{g}/X");
            self.array(&layout::x_array(n, dim, r), &path)?
                .store_array_subset(&[start..n, 0..dim], x)
                .map_err(zarr(&path))?;
            for (name, kind) in layout::obs_arrays() {
                let path = format!("/{g}/obs/{name}");
                let array = self.array(&layout::column_array(kind, n, r, "obs"), &path)?;
                let result = match kind {
                    ColumnKind::Text => array.store_array_subset(
                        &layout::rows(start..n),
                        rows.iter().map(|row| row.text(name)).collect::<Vec<&str>>(),
                    ),
                    ColumnKind::Int => array.store_array_subset(
                        &layout::rows(start..n),
                        rows.iter().map(|row| row.int(name)).collect::<Vec<i32>>(),
                    ),
                };
                result.map_err(zarr(&path))?;
            }
        }
        if first_write {
            let path = format!("/{g}/var/_index");
            let names: Vec<String> = (0..dim).map(|i| format!("emb_{i}")).collect();
            self.array(
                &layout::column_array(ColumnKind::Text, dim, dim.max(1), "var"),
                &path,
            )?
            .store_array_subset(&layout::rows(0..dim), names)
            .map_err(zarr(&path))?;
        }
        if table.meta_dirty {
            for key in UNS_KEYS {
                let path = format!("/{g}/uns/{key}");
                // A settled plate's large values stay on disk ([`Store::settle`]).
                let value = match table.uns.get(key) {
                    Some(v) => v.clone(),
                    None => recover::read_uns(&self.storage, g, key)?,
                };
                self.array(&layout::scalar_array(), &path)?
                    .store_array_subset(&Vec::<std::ops::Range<u64>>::new(), vec![value])
                    .map_err(zarr(&path))?;
            }
        }
        // zarrs synced each chunk file before renaming it into place; the
        // renames are durable once their folders are synced.
        let group_dir = self.root.join(g);
        let dirs = if first_write {
            let mut dirs = files::all_dirs(&group_dir)?;
            dirs.push(self.root.clone());
            dirs
        } else {
            files::chunk_dirs(&group_dir, start, n, r, table.meta_dirty)
        };
        for dir in dirs {
            files::sync_dir(&dir)?;
        }
        let written = (n - start) as usize;
        let table = self.plates.get_mut(g).expect("group listed above");
        table.committed = table.len();
        table.dirty_from = None;
        table.meta_dirty = false;
        self.write_metadata(g, first_write)?;
        self.release(g);
        Ok(written)
    }

    /// Release the rows of `g` that no commit writes again.
    fn release(&mut self, g: &str) {
        if let Some(t) = self.plates.get_mut(g) {
            t.release();
        }
    }

    /// Release every plate's rows that no commit writes again, and what
    /// settled plates hold beyond their name (after start-up, once
    /// provisional plates and AdaBN statistics were read back).
    pub fn release_committed(&mut self) {
        let groups: Vec<String> = self.plates.keys().cloned().collect();
        for g in groups {
            self.release(&g);
        }
        for table in self.plates.values_mut() {
            if table.index.is_none() {
                table.forget();
            }
        }
    }

    /// Metadata for the committed rows of `g`, ending with its commit point.
    fn write_metadata(&self, g: &str, all: bool) -> Result<(), StoreError> {
        let table = &self.plates[g];
        files::write_plate_metadata(
            &self.root.join(g),
            table.committed as u64,
            self.dim as u64,
            table.chunk_rows,
            all,
        )
    }
}

#[cfg(test)]
mod tests;
