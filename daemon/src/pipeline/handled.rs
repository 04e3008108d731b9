//! What the ready stage remembers of the files it handled, so that a file
//! every rescan lists again is not used twice, and how it forgets. Once a
//! plate is settled (stored complete, every row final: the sink says so)
//! the stage drops what it holds of each folder whose plates are all
//! settled, but for files of sites the store lacks (incomplete or rejected
//! sites: seen again, they would be recorded again); a file of such a
//! folder seen again is then recognised by its name and the store's index
//! on disk. So memory follows the open plates, not every file a daemon
//! running for weeks has read, and forgetting changes no outcome.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};

use bfx_core::naming::{NamingError, NamingScheme, SiteKey};

use crate::digest;
use crate::store::Reader;

/// How a file was handled.
pub enum Outcome {
    /// Decoded and sent on, as an image of this site.
    Used(SiteKey),
    /// Skipped: this site, its own, is in the store.
    Stored(SiteKey),
    /// Skipped for what it is (a thumbnail, a file in the quarantine folder).
    Skipped,
    /// Refused, or a completion marker: remembered for good, so a folder
    /// that is forgotten does not refuse (and record) it again.
    Kept,
}

/// What is remembered of one folder.
#[derive(Default)]
struct Folder {
    /// Files used or skipped, by [`digest::of_path`], each with its
    /// site's [`digest::of_site`] ([`NO_SITE`] for other files); dropped
    /// when the folder is forgotten, but for sites the store lacks.
    done: HashMap<u128, u128>,
    /// Files refused and completion markers, by [`digest::of_path`].
    kept: HashSet<u128>,
    /// The plates of the images in it.
    plates: HashSet<String>,
    /// How many of them are not settled.
    open: usize,
    /// Plates with files in `done` recorded since the folder was last
    /// forgotten: only their sites can have been stored since.
    recent: HashSet<String>,
}

impl Folder {
    fn add_plate(&mut self, plate: &str, settled: &HashSet<String>) {
        if !self.plates.contains(plate) {
            self.plates.insert(plate.to_owned());
            if !settled.contains(plate) {
                self.open += 1;
            }
        }
    }

    /// Whether every plate of the folder is settled: then its images of
    /// stored sites and its thumbnails are recognised by name, not held.
    fn forgotten(&self) -> bool {
        !self.plates.is_empty() && self.open == 0
    }
}

/// The site digest of a file that is not an image (odds of a site's
/// digest being 0 are 2^-128).
const NO_SITE: u128 = 0;

/// Plates whose stored sites are held after a read, at most: a rescan
/// sends a folder's files together, so a few cover it.
const CACHED_PLATES: usize = 4;

/// The stage's memory of handled files and stored sites.
pub struct Handled {
    folders: HashMap<PathBuf, Folder>,
    /// Sites stored before start-up, by plate, of plates not settled then.
    committed: HashMap<String, HashSet<u128>>,
    /// Plates settled, at start-up or since.
    settled: HashSet<String>,
    /// The store, for the sites of settled plates.
    reader: Reader,
    /// Stored sites of recently checked settled plates, newest last.
    cache: VecDeque<(String, HashSet<u128>)>,
}

impl Handled {
    /// Nothing handled yet; `committed` and `settled` from the store.
    pub fn new(
        committed: HashMap<String, HashSet<u128>>,
        settled: HashSet<String>,
        reader: Reader,
    ) -> Handled {
        Handled {
            folders: HashMap::new(),
            committed,
            settled,
            reader,
            cache: VecDeque::new(),
        }
    }

    /// Whether `path` was handled before and needs no look: remembered,
    /// an image of a settled plate's stored site, or a thumbnail in a
    /// forgotten folder.
    pub fn handled(&mut self, path: &Path, naming: &NamingScheme) -> bool {
        if let Some(folder) = self.folders.get(parent(path)) {
            let id = digest::of_path(path);
            if folder.done.contains_key(&id) || folder.kept.contains(&id) {
                return true;
            }
        }
        match naming.parse(path) {
            Ok(key) if self.settled.contains(&key.site.plate) && self.stored(&key.site) => {
                let folder = self.folders.entry(parent(path).to_owned()).or_default();
                folder.add_plate(&key.site.plate, &self.settled);
                true
            }
            Err(NamingError::NotAcquired { .. }) => self
                .folders
                .get(parent(path))
                .is_some_and(Folder::forgotten),
            _ => false,
        }
    }

    /// Whether `site` is in the store: stored before start-up, or of a
    /// settled plate and in its index on disk.
    pub fn stored(&mut self, site: &SiteKey) -> bool {
        let id = digest::of_site(site);
        if let Some(sites) = self.committed.get(&site.plate) {
            return sites.contains(&id);
        }
        if !self.settled.contains(&site.plate) {
            return false;
        }
        if let Some(at) = self.cache.iter().position(|(p, _)| *p == site.plate) {
            // Just found.
            let entry = self.cache.remove(at).expect("cached plate");
            self.cache.push_back(entry);
        } else {
            let sites = match self.reader.sites(&site.plate) {
                Ok(sites) => sites,
                Err(e) => {
                    // Looked at and used: the store refuses a site twice.
                    tracing::warn!(plate = %site.plate, error = %e, "cannot read the settled plate's sites from the store");
                    return false;
                }
            };
            if self.cache.len() == CACHED_PLATES {
                self.cache.pop_front();
            }
            self.cache.push_back((site.plate.clone(), sites));
        }
        self.cache.back().is_some_and(|(_, s)| s.contains(&id))
    }

    /// Remember how `path` was handled.
    pub fn finish(&mut self, path: &Path, outcome: Outcome) {
        let folder = self.folders.entry(parent(path).to_owned()).or_default();
        let id = digest::of_path(path);
        if let Outcome::Used(site) | Outcome::Stored(site) = &outcome {
            folder.add_plate(&site.plate, &self.settled);
        }
        match outcome {
            Outcome::Kept => {
                folder.kept.insert(id);
            }
            // Recognised by name and the store when seen again.
            Outcome::Stored(_) | Outcome::Skipped if folder.forgotten() => {}
            Outcome::Used(site) | Outcome::Stored(site) => {
                folder.done.insert(id, digest::of_site(&site));
                if !folder.recent.contains(&site.plate) {
                    folder.recent.insert(site.plate);
                }
            }
            Outcome::Skipped => {
                folder.done.insert(id, NO_SITE);
            }
        }
    }

    /// `plate` is settled: forget the folders whose plates all are, but
    /// for the files of sites the store lacks.
    pub fn settle(&mut self, plate: String) {
        self.committed.remove(&plate);
        self.cache.retain(|(p, _)| *p != plate);
        let newly = self.settled.insert(plate.clone());
        // Each plate's stored sites, read once for all its folders.
        let mut stored: HashMap<String, HashSet<u128>> = HashMap::new();
        'folders: for folder in self.folders.values_mut() {
            if !folder.plates.contains(&plate) {
                continue;
            }
            if newly {
                folder.open -= 1;
            }
            if !folder.forgotten() {
                continue;
            }
            for p in &folder.recent {
                if !stored.contains_key(p) {
                    match self.reader.sites(p) {
                        Ok(sites) => {
                            stored.insert(p.clone(), sites);
                        }
                        Err(e) => {
                            // Kept as it is: remembering more is safe.
                            tracing::warn!(plate = %p, error = %e, "cannot read the settled plate's sites from the store; its files stay remembered");
                            continue 'folders;
                        }
                    }
                }
            }
            // A site's digest covers its plate: one set holding it is its
            // own. Files left from before (sites the store lacked) are of
            // plates not stored since, or they would be recent.
            let recent = std::mem::take(&mut folder.recent);
            folder.done.retain(|_, site| {
                *site != NO_SITE && !recent.iter().any(|p| stored[p].contains(site))
            });
            folder.done.shrink_to_fit();
        }
    }

    /// Files and sites remembered (what grows while plates are open).
    pub fn remembered(&self) -> usize {
        let files: usize = self
            .folders
            .values()
            .map(|f| f.done.len() + f.kept.len())
            .sum();
        files + self.committed.values().map(HashSet::len).sum::<usize>()
    }
}

/// The folder of `path`.
fn parent(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new(""))
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use bfx_core::bundle::CorrectionMode;
    use bfx_core::naming::{PlateFormat, Preset, Well};

    use super::*;
    use crate::store::{PlateInfo, Row, RowStatus, Store};

    fn site(plate: &str, column: u32) -> SiteKey {
        SiteKey {
            plate: plate.into(),
            well: Well::new(1, column, PlateFormat::default()).expect("valid well"),
            site: 1,
            timepoint: None,
            z: None,
        }
    }

    /// A store where plate P1 (wells A01-A03) is settled and P2 (A01) open.
    fn store(root: &Path) {
        let mut store = Store::open(root, 3, 4).expect("store");
        let info = PlateInfo {
            bundle_sha256: "ab".repeat(32),
            method: "erm".into(),
            correction: CorrectionMode::None,
        };
        for key in [site("P1", 1), site("P1", 2), site("P1", 3), site("P2", 1)] {
            let row = Row {
                key,
                paths: Vec::new(),
                acquired: SystemTime::UNIX_EPOCH,
                correction: CorrectionMode::None,
                status: RowStatus::Final,
                embedding: vec![0.0; 3],
            };
            store.stage(&row, &info).expect("new site");
        }
        store.set_complete("P1");
        store.commit().expect("commit");
        assert_eq!(store.settle(), ["P1"]);
    }

    const THUMB: &str = "P1_A01_s1_w1_thumb64FBEEF7-F77C-4892-86F5-72D0160D4FB2.tif";

    fn image(dir: &Path, plate: &str, column: u32, channel: u32) -> PathBuf {
        dir.join(format!("{plate}_A{column:02}_s1_w{channel}.tif"))
    }

    #[test]
    fn a_settled_plate_is_forgotten_and_its_files_recognised_from_the_store() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let root = tmp.path().join("store.zarr");
        store(&root);
        let naming = NamingScheme::preset(Preset::Imagexpress).expect("preset");
        let reader = Reader::new(&root).expect("reader");
        let mut handled = Handled::new(HashMap::new(), HashSet::new(), reader);
        let (p1, mixed) = (tmp.path().join("P1"), tmp.path().join("mixed"));
        for column in 1..=3 {
            for channel in 1..=2 {
                let path = image(&p1, "P1", column, channel);
                handled.finish(&path, Outcome::Used(site("P1", column)));
            }
        }
        let thumb = p1.join(THUMB);
        handled.finish(&thumb, Outcome::Skipped);
        let refused = p1.join("P1_A00_s1_w1.tif");
        handled.finish(&refused, Outcome::Kept);
        handled.finish(&image(&mixed, "P1", 1, 1), Outcome::Used(site("P1", 1)));
        handled.finish(&image(&mixed, "P2", 1, 1), Outcome::Used(site("P2", 1)));
        assert_eq!(handled.remembered(), 10);
        assert!(!handled.handled(&image(&p1, "P1", 4, 1), &naming));

        handled.settle("P1".into());
        // P1's folder is forgotten but for the refusal; the folder shared
        // with the open plate P2 is not.
        assert_eq!(handled.remembered(), 3);
        for path in [image(&p1, "P1", 2, 2), thumb.clone(), refused.clone()] {
            assert!(handled.handled(&path, &naming), "{}", path.display());
        }
        assert!(handled.handled(&image(&mixed, "P1", 1, 1), &naming));
        // A late site is not in the store: it is looked at, and remembered
        // while the store lacks it (an incomplete site stays so).
        let late = image(&p1, "P1", 4, 1);
        assert!(!handled.handled(&late, &naming));
        assert!(!handled.handled(&p1.join("notes.txt"), &naming));
        handled.finish(&late, Outcome::Used(site("P1", 4)));
        assert!(handled.handled(&late, &naming));
        assert_eq!(handled.remembered(), 4);
        handled.settle("P1".into());
        assert_eq!(handled.remembered(), 4);
        assert!(handled.handled(&late, &naming));

        handled.settle("P2".into());
        assert_eq!(
            handled.remembered(),
            2,
            "the refusal and the site the store lacks"
        );
        assert!(handled.handled(&image(&mixed, "P2", 1, 1), &naming));
    }

    #[test]
    fn sites_stored_before_start_up_are_known_until_their_plate_settles() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let root = tmp.path().join("store.zarr");
        store(&root);
        let committed = HashMap::from([(
            "P2".to_string(),
            HashSet::from([digest::of_site(&site("P2", 1))]),
        )]);
        let reader = Reader::new(&root).expect("reader");
        let mut handled = Handled::new(committed, HashSet::from(["P1".to_string()]), reader);
        assert_eq!(handled.remembered(), 1);
        assert!(handled.stored(&site("P2", 1)));
        assert!(!handled.stored(&site("P2", 2)));
        assert!(handled.stored(&site("P1", 3)), "read from the store");
        assert!(!handled.stored(&site("P1", 4)));
        assert!(!handled.stored(&site("P3", 1)), "a plate the store lacks");
        // A settled plate's files, seen for the first time since start-up,
        // are recognised without being remembered.
        let naming = NamingScheme::preset(Preset::Imagexpress).expect("preset");
        let p1 = tmp.path().join("P1");
        assert!(
            !handled.handled(&p1.join(THUMB), &naming),
            "folder not known yet"
        );
        assert!(handled.handled(&image(&p1, "P1", 1, 2), &naming));
        assert!(handled.handled(&p1.join(THUMB), &naming));
        assert!(!handled.handled(&image(&p1, "P1", 4, 1), &naming));
        assert_eq!(handled.remembered(), 1);
        handled.settle("P2".into());
        assert_eq!(handled.remembered(), 0);
        assert!(handled.stored(&site("P2", 1)), "read from the store");
    }
}
