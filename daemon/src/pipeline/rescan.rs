//! The watch stage's rescans, which list only the folders that changed.
//!
//! A rescan exists to find files whose events never came (network shares,
//! an overflowing event queue). Listing every folder each time costs time
//! in proportion to everything ever acquired under the roots: at the end of
//! a screen, millions of files every `watch.poll_interval`. Creating,
//! removing or renaming an entry changes its folder's mtime, so a folder
//! whose mtime is what it was when it was last listed holds no path that
//! listing did not send. Its subfolders are still looked at (their own
//! changes do not show in it).
//!
//! An mtime is trusted only once it was old enough when the folder was
//! listed ([`SETTLED_AFTER`]): a change in the same clock tick as the
//! listing would leave it as it was. And every [`FULL_INTERVAL`] a rescan
//! lists everything, for filesystems whose folder times cannot be trusted
//! (a server clock far behind, a copy that restores a folder's old mtime).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use crate::telemetry;

/// How old a folder's mtime must be, when the folder is listed, before an
/// unchanged mtime lets a rescan skip it (FAT's mtime has 2 s steps).
pub const SETTLED_AFTER: Duration = Duration::from_secs(3);

/// How often a rescan lists every folder all the same.
pub const FULL_INTERVAL: Duration = Duration::from_secs(600);

/// The files and subfolders of `dir`, hidden ones left out; `None` when
/// it cannot be listed.
pub fn list(dir: &Path) -> Option<(Vec<PathBuf>, Vec<PathBuf>)> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot list folder");
            return None;
        }
    };
    let (mut files, mut folders) = (Vec::new(), Vec::new());
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        match entry.file_type() {
            Ok(t) if t.is_dir() => folders.push(entry.path()),
            // Links are not followed into folders (no cycles); the ready
            // stage decides what a link to a file, or a broken or looping
            // link, is.
            Ok(t) if t.is_file() || t.is_symlink() => files.push(entry.path()),
            _ => {}
        }
    }
    Some((files, folders))
}

/// A folder as it was last listed.
struct Listed {
    modified: SystemTime,
    /// Whether `modified` was at least [`SETTLED_AFTER`] old when looked at.
    settled: bool,
    subfolders: Vec<PathBuf>,
}

/// What one rescan found.
#[derive(Debug, Default)]
pub struct Found {
    /// Files of the folders listed, sorted.
    pub files: Vec<PathBuf>,
    /// Folders listed.
    pub listed: usize,
    /// Folders skipped as unchanged.
    pub unchanged: usize,
}

/// Rescans of a set of roots; remembers, per folder, its mtime when last listed.
pub struct Rescanner {
    roots: Vec<PathBuf>,
    folders: HashMap<PathBuf, Listed>,
    full_interval: Duration,
    last_full: Option<Instant>,
}

impl Rescanner {
    /// Rescans of `roots` that list everything every `full_interval`.
    pub fn new(roots: Vec<PathBuf>, full_interval: Duration) -> Rescanner {
        Rescanner {
            roots,
            folders: HashMap::new(),
            full_interval,
            last_full: None,
        }
    }

    /// Files of the folders that changed since they were last listed (of
    /// all folders, the first time and every `full_interval`).
    pub fn rescan(&mut self) -> Found {
        let now = Instant::now();
        let full = self
            .last_full
            .is_none_or(|t| now.duration_since(t) >= self.full_interval);
        if full {
            self.last_full = Some(now);
        }
        let mut found = Found::default();
        // Folders no longer reached are forgotten.
        let mut folders = HashMap::with_capacity(self.folders.len());
        let mut pending = self.roots.clone();
        while let Some(dir) = pending.pop() {
            // Read before the folder's mtime: a change after that shows as a newer mtime.
            let looked_at = SystemTime::now();
            let modified = match std::fs::metadata(&dir).and_then(|m| m.modified()) {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot look at folder");
                    continue;
                }
            };
            if let Some(before) = self.folders.remove(&dir)
                && !full
                && before.settled
                && before.modified == modified
            {
                found.unchanged += 1;
                pending.extend(before.subfolders.iter().cloned());
                folders.insert(dir, before);
                continue;
            }
            let Some((files, subfolders)) = list(&dir) else {
                continue;
            };
            found.listed += 1;
            found.files.extend(files);
            pending.extend(subfolders.iter().cloned());
            let settled = looked_at
                .duration_since(modified)
                .is_ok_and(|age| age >= SETTLED_AFTER);
            folders.insert(
                dir,
                Listed {
                    modified,
                    settled,
                    subfolders,
                },
            );
        }
        self.folders = folders;
        found.files.sort();
        metrics::counter!(telemetry::RESCAN_FOLDERS, "outcome" => "listed")
            .increment(found.listed as u64);
        metrics::counter!(telemetry::RESCAN_FOLDERS, "outcome" => "unchanged")
            .increment(found.unchanged as u64);
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch_folder(dir: &Path, age: Duration) {
        let t = SystemTime::now() - age;
        std::fs::File::open(dir)
            .and_then(|f| f.set_modified(t))
            .expect("set a folder's mtime");
    }

    fn names(found: &Found, root: &Path) -> Vec<String> {
        found
            .files
            .iter()
            .map(|p| {
                p.strip_prefix(root)
                    .expect("under root")
                    .display()
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn a_rescan_lists_only_the_folders_that_changed() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().to_path_buf();
        for f in ["P1/a.tif", "P2/b.tif", "P2/W/c.tif", "P2/.hidden.tif"] {
            let path = root.join(f);
            std::fs::create_dir_all(path.parent().expect("parent")).expect("folders");
            std::fs::write(path, b"x").expect("file");
        }
        let hour = Duration::from_secs(3600);
        for d in ["", "P1", "P2", "P2/W"] {
            touch_folder(&root.join(d), hour);
        }
        let mut r = Rescanner::new(vec![root.clone()], hour);

        let first = r.rescan();
        assert_eq!(names(&first, &root), ["P1/a.tif", "P2/W/c.tif", "P2/b.tif"]);
        assert_eq!((first.listed, first.unchanged), (4, 0));

        let again = r.rescan();
        assert!(again.files.is_empty(), "{:?}", again.files);
        assert_eq!((again.listed, again.unchanged), (0, 4));

        // A new file changes its folder only; a file in a subfolder, only the subfolder.
        std::fs::write(root.join("P1/d.tif"), b"x").expect("file");
        std::fs::write(root.join("P2/W/e.tif"), b"x").expect("file");
        let changed = r.rescan();
        assert_eq!(
            names(&changed, &root),
            ["P1/a.tif", "P1/d.tif", "P2/W/c.tif", "P2/W/e.tif"]
        );
        assert_eq!((changed.listed, changed.unchanged), (2, 2));

        // Their mtimes are too recent to trust: listed again until they settle.
        let recent = r.rescan();
        assert_eq!(recent.listed, 2);
        touch_folder(&root.join("P1"), hour);
        touch_folder(&root.join("P2/W"), hour);
        let settled = r.rescan();
        assert_eq!((settled.listed, settled.unchanged), (2, 2));
        assert_eq!(r.rescan().listed, 0);

        // A folder moved in changes the root; the new folder is listed, the old ones not.
        std::fs::create_dir(root.join("P3")).expect("folder");
        std::fs::write(root.join("P3/f.tif"), b"x").expect("file");
        let moved = r.rescan();
        assert_eq!(names(&moved, &root), ["P3/f.tif"]);
        assert_eq!((moved.listed, moved.unchanged), (2, 3));

        // A removed folder is forgotten.
        std::fs::remove_dir_all(root.join("P3")).expect("remove");
        r.rescan();
        assert!(!r.folders.contains_key(&root.join("P3")));
    }

    #[test]
    fn every_full_interval_a_rescan_lists_everything() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().to_path_buf();
        std::fs::create_dir(root.join("P1")).expect("folder");
        std::fs::write(root.join("P1/a.tif"), b"x").expect("file");
        for d in ["", "P1"] {
            touch_folder(&root.join(d), Duration::from_secs(3600));
        }
        let mut r = Rescanner::new(vec![root.clone()], Duration::ZERO);
        for _ in 0..3 {
            let found = r.rescan();
            assert_eq!(
                (found.files.len(), found.listed, found.unchanged),
                (1, 2, 0)
            );
        }
    }
}
