//! Which sites the store holds: each plate's index in memory while the
//! plate may change, only on disk once it is settled (read back if a row
//! comes late), and a reader for the stages before the sink.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{Storage, Store, StoreError, group_name, recover, storage};
use crate::digest;
use bfx_core::naming::SiteKey;

/// Read access to the committed sites of a store another stage writes:
/// readers see each plate as of its last commit. Clones share the storage.
#[derive(Clone)]
pub struct Reader {
    root: PathBuf,
    storage: Arc<Storage>,
}

impl Reader {
    /// A reader of the store at `root`.
    pub fn new(root: &Path) -> Result<Reader, StoreError> {
        Ok(Reader {
            root: root.to_owned(),
            storage: storage(root)?,
        })
    }

    /// `uns[key]` of `plate` as last committed.
    pub fn uns(&self, plate: &str, key: &str) -> Result<String, StoreError> {
        recover::read_uns(&self.storage, &group_name(plate), key)
    }

    /// The committed sites of `plate`, by [`digest::of_site_text`] (none
    /// for a plate not in the store).
    pub fn sites(&self, plate: &str) -> Result<HashSet<u128>, StoreError> {
        let g = group_name(plate);
        let n = recover::commit_point(&self.root, &g)?;
        Ok(recover::read_site_ids(&self.storage, &g, n)?
            .into_iter()
            .collect())
    }
}

impl Store {
    /// Whether `key` is staged or committed.
    pub fn contains(&mut self, key: &SiteKey) -> Result<bool, StoreError> {
        let g = group_name(&key.plate);
        if !self.plates.contains_key(&g) {
            return Ok(false);
        }
        Ok(self.index(&g)?.contains_key(&digest::of_site(key)))
    }

    /// The row index of group `g` (which exists), read back from the store
    /// if the plate was settled.
    pub(super) fn index(&mut self, g: &str) -> Result<&mut HashMap<u128, usize>, StoreError> {
        let table = self
            .plates
            .get_mut(g)
            .ok_or_else(|| StoreError::Layout(format!("{g}: no such plate group in the store")))?;
        if table.index.is_none() {
            let index = recover::read_index(&self.storage, g, table.committed as u64)?;
            tracing::debug!(
                group = g,
                rows = index.len(),
                "read a settled plate's index back"
            );
            table.index = Some(index);
        }
        // Filled just above if it was not.
        Ok(table.index.as_mut().expect("index present"))
    }

    /// Drop the index of every plate that just settled (complete, and
    /// every row committed and final) and return those plates' names: the
    /// stages before the sink may forget what they hold of them, and so
    /// memory does not grow with every site a long-running daemon stores.
    /// The plate's row buffer and AdaBN statistics go too
    /// ([`PlateTable::forget`](super::PlateTable::forget)).
    pub fn settle(&mut self) -> Vec<String> {
        let mut settled = Vec::new();
        for table in self.plates.values_mut() {
            if table.index.is_some() && table.settled() {
                table.index = None;
                table.forget();
                settled.push(table.uns.get("plate").cloned().unwrap_or_default());
            }
        }
        settled
    }

    /// Sites held in memory to refuse a site twice, over all plates.
    pub fn remembered(&self) -> usize {
        self.plates
            .values()
            .map(|t| t.index.as_ref().map_or(0, HashMap::len))
            .sum()
    }
}
