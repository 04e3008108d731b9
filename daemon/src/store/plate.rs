//! One plate's rows in memory: what is committed, what is staged, and how
//! rows become the group's column arrays.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::SystemTime;

use bfx_core::bundle::CorrectionMode;
use bfx_core::naming::SiteKey;

/// Whether a row's embedding is final.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowStatus {
    /// Embedded with statistics of part of the plate (AdaBN, early in a plate).
    Provisional,
    /// Embedded as it will stay.
    Final,
}

impl RowStatus {
    /// The `obs.status` text.
    pub fn as_str(self) -> &'static str {
        match self {
            RowStatus::Provisional => "provisional",
            RowStatus::Final => "final",
        }
    }

    fn parse(s: &str) -> RowStatus {
        if s == "final" {
            RowStatus::Final
        } else {
            RowStatus::Provisional
        }
    }
}

/// The `obs.correction` text of a mode.
pub fn correction_name(mode: CorrectionMode) -> &'static str {
    match mode {
        CorrectionMode::None => "none",
        CorrectionMode::Adabn => "adabn",
        CorrectionMode::Ist => "ist",
    }
}

/// One embedded site, as the pipeline hands it to the store.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    /// The site.
    pub key: SiteKey,
    /// Its source files, in the bundle's channel order.
    pub paths: Vec<PathBuf>,
    /// When its last file was written.
    pub acquired: SystemTime,
    /// How it was corrected.
    pub correction: CorrectionMode,
    /// Provisional or final.
    pub status: RowStatus,
    /// The embedding.
    pub embedding: Vec<f32>,
}

/// A row as stored: every column's value.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredRow {
    /// Site key text (`obs` index).
    pub index: String,
    /// Well name (`B03`).
    pub well: String,
    /// Row letter(s).
    pub row: String,
    /// Column number.
    pub column: i32,
    /// Site number.
    pub site: i32,
    /// Timepoint or -1.
    pub timepoint: i32,
    /// Z plane or -1.
    pub z: i32,
    /// Source paths joined by `;`.
    pub paths: String,
    /// RFC 3339 time of the last file.
    pub acquired: String,
    /// Correction mode text.
    pub correction: String,
    /// `provisional` or `final`.
    pub status: RowStatus,
    /// The embedding.
    pub embedding: Vec<f32>,
}

impl StoredRow {
    /// The stored form of `row`.
    pub fn new(row: &Row) -> StoredRow {
        let k = &row.key;
        let opt = |v: Option<u32>| v.map_or(-1, |v| v as i32);
        StoredRow {
            index: k.to_string(),
            well: k.well.to_string(),
            row: k.well.row_name(),
            column: i32::from(k.well.column()),
            site: k.site as i32,
            timepoint: opt(k.timepoint),
            z: opt(k.z),
            paths: row
                .paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(";"),
            acquired: humantime::format_rfc3339_millis(row.acquired).to_string(),
            correction: correction_name(row.correction).to_string(),
            status: row.status,
            embedding: row.embedding.clone(),
        }
    }

    /// The text of column `name` (text columns only).
    pub fn text(&self, name: &str) -> &str {
        match name {
            "_index" => &self.index,
            "well" => &self.well,
            "row" => &self.row,
            "paths" => &self.paths,
            "acquired" => &self.acquired,
            "correction" => &self.correction,
            "status" => self.status.as_str(),
            _ => "",
        }
    }

    /// The value of integer column `name`.
    pub fn int(&self, name: &str) -> i32 {
        match name {
            "column" => self.column,
            "site" => self.site,
            "timepoint" => self.timepoint,
            "z" => self.z,
            _ => -1,
        }
    }

    /// Set a column from its stored text (recovery).
    pub fn set_text(&mut self, name: &str, value: String) {
        match name {
            "_index" => self.index = value,
            "well" => self.well = value,
            "row" => self.row = value,
            "paths" => self.paths = value,
            "acquired" => self.acquired = value,
            "correction" => self.correction = value,
            "status" => self.status = RowStatus::parse(&value),
            _ => {}
        }
    }

    /// Set an integer column (recovery).
    pub fn set_int(&mut self, name: &str, value: i32) {
        match name {
            "column" => self.column = value,
            "site" => self.site = value,
            "timepoint" => self.timepoint = value,
            "z" => self.z = value,
            _ => {}
        }
    }

    /// An empty row to fill column by column (recovery).
    pub fn blank(dim: usize) -> StoredRow {
        StoredRow {
            index: String::new(),
            well: String::new(),
            row: String::new(),
            column: -1,
            site: -1,
            timepoint: -1,
            z: -1,
            paths: String::new(),
            acquired: String::new(),
            correction: String::new(),
            status: RowStatus::Provisional,
            embedding: vec![0.0; dim],
        }
    }
}

/// The `uns` entries of a plate, by key.
pub const UNS_KEYS: [&str; 7] = [
    "adabn_stats",
    "bfx_version",
    "bundle_sha256",
    "correction_mode",
    "method",
    "plate",
    "plate_status",
];

/// One plate group.
#[derive(Clone, Debug)]
pub struct PlateTable {
    /// Group name in the store (sanitized).
    pub group: String,
    /// Rows released from memory: the leading committed final rows. No
    /// commit changes them again; one that appends to their chunk has zarrs
    /// merge the new rows into the stored chunk. Only their index is kept.
    pub released: usize,
    /// The rows from `released` on, committed ones first.
    pub rows: Vec<StoredRow>,
    /// Rows readers can see.
    pub committed: usize,
    /// First row changed since the last commit.
    pub dirty_from: Option<usize>,
    /// `uns` values.
    pub uns: HashMap<String, String>,
    /// Whether `uns` (or the group itself) needs writing.
    pub meta_dirty: bool,
    /// Row position of each site, by [`crate::digest::of_site_text`] of
    /// its key (every row, released ones included); `None` once the plate
    /// is settled ([`PlateTable::settled`]): a daemon running for weeks
    /// would otherwise hold an entry for every site it ever stored. The
    /// store reads it back from the `_index` column if a row comes late.
    pub index: Option<HashMap<u128, usize>>,
    /// Rows per chunk of the plate's arrays: fixed when the plate is
    /// created (a stored plate keeps its own whatever the configuration
    /// says later, or its chunks would be read with the wrong size).
    pub chunk_rows: u64,
}

impl PlateTable {
    /// An empty plate not yet in the store, chunked by `chunk_rows` rows.
    pub fn new(group: String, uns: HashMap<String, String>, chunk_rows: u64) -> PlateTable {
        PlateTable {
            group,
            released: 0,
            rows: Vec::new(),
            committed: 0,
            dirty_from: None,
            uns,
            meta_dirty: true,
            index: Some(HashMap::new()),
            chunk_rows: chunk_rows.max(1),
        }
    }

    /// Rows in the plate, released ones included.
    pub fn len(&self) -> usize {
        self.released + self.rows.len()
    }

    /// Whether the plate has no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Row `i`, unless released.
    pub fn row_mut(&mut self, i: usize) -> Option<&mut StoredRow> {
        i.checked_sub(self.released)
            .and_then(|i| self.rows.get_mut(i))
    }

    /// Release the leading committed final rows: no commit changes them
    /// again (only provisional rows are updated), so holding them would
    /// grow memory with every site, and a complete plate would keep the
    /// rows of its last, partial chunk for good.
    pub fn release(&mut self) {
        let committed = self.committed - self.released;
        let n = self.rows[..committed]
            .iter()
            .take_while(|r| r.status == RowStatus::Final)
            .count();
        self.rows.drain(..n);
        self.released += n;
    }

    /// Mark rows from `i` changed.
    pub fn touch(&mut self, i: usize) {
        self.dirty_from = Some(self.dirty_from.map_or(i, |d| d.min(i)));
    }

    /// Whether the plate was marked complete.
    pub fn complete(&self) -> bool {
        self.uns.get("plate_status").map(String::as_str) == Some("complete")
    }

    /// Drop what a settled plate needs no more: its row buffer (sized for
    /// a commit's rows) and its AdaBN statistics (tens of kilobytes of
    /// JSON), which a commit rewriting its `uns` reads back.
    pub fn forget(&mut self) {
        self.rows = Vec::new();
        self.uns.remove("adabn_stats");
    }

    /// Whether nothing of the plate is left to change: complete, every
    /// row committed, final and released, its metadata written.
    pub fn settled(&self) -> bool {
        self.complete()
            && self.rows.is_empty()
            && self.committed == self.released
            && self.dirty_from.is_none()
            && !self.meta_dirty
    }
}
