//! Stage 3, assemble sites, and the plate lifecycle: a site is complete
//! when every channel of the bundle has a file (the first file of a
//! channel is kept, later ones recorded as duplicates); a site missing
//! channels after the site timeout is recorded as incomplete. A plate
//! opens with its first file and closes on a completion marker in its
//! folder, on reaching the expected site count, or after a quiet period.
//! Once it is settled in the store its sites are forgotten: the ready
//! stage then recognises files of its stored sites by the store's index.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bfx_core::naming::SiteKey;
use tokio::sync::mpsc;

use super::{CompleteSite, FileEvent, ReadyFile, SiteMsg};
use crate::digest;
use crate::journal::{Event, Journal};
use crate::telemetry;

/// What the stage needs to know.
pub struct AssembleConfig {
    /// The bundle's channels, in model order.
    pub channels: Vec<String>,
    /// One multi-page file per site instead of one file per channel.
    pub multi_page: bool,
    /// Incomplete sites are given up after this long.
    pub site_timeout: Duration,
    /// Sites per plate from the configuration, when known.
    pub expected_sites: Option<u64>,
    /// Sites per plate from the layout CSV (takes precedence).
    pub layout: Option<super::layout::Layout>,
    /// A plate with no new file this long closes.
    pub quiet_period: Duration,
    /// Sites of each plate already in the store (they count toward `expected_sites`).
    pub committed: HashMap<String, u64>,
    /// `[height, width]` every site's fields must have, when set.
    pub field_size: Option<[u32; 2]>,
}

struct Partial {
    files: BTreeMap<String, ReadyFile>,
    first: Instant,
}

struct Plate {
    dirs: HashSet<PathBuf>,
    sites: u64,
    last_file: Instant,
    closed: bool,
    /// Sites sent on, by digest, until the plate is settled: a later
    /// file for one is a duplicate, not a new site.
    assembled: HashSet<u128>,
}

/// Run until `rx` closes.
pub async fn run(
    config: AssembleConfig,
    journal: Arc<Journal>,
    mut rx: mpsc::Receiver<FileEvent>,
    tx: mpsc::Sender<SiteMsg>,
) {
    let mut partial: HashMap<SiteKey, Partial> = HashMap::new();
    let mut plates: HashMap<String, Plate> = HashMap::new();
    let tick = (config.site_timeout.min(config.quiet_period) / 4)
        .clamp(Duration::from_millis(50), Duration::from_secs(5));
    let mut interval = tokio::time::interval(tick);
    loop {
        let mut out: Vec<SiteMsg> = Vec::new();
        tokio::select! {
            event = rx.recv() => match event {
                Some(FileEvent::Image(file)) => {
                    let site = digest::of_site(&file.key.site);
                    if plates.get(&file.key.site.plate).is_some_and(|p| p.assembled.contains(&site)) {
                        metrics::counter!(telemetry::FILES_REJECTED, "reason" => "duplicate").increment(1);
                        journal.record(
                            Event::Duplicate,
                            &file.path.display().to_string(),
                            &format!("site {} is already assembled; this file is not used", file.key.site),
                        );
                    } else {
                        accept(&config, &journal, &mut partial, &mut plates, file, &mut out);
                    }
                    for msg in &out {
                        if let SiteMsg::Site(site) = msg
                            && let Some(plate) = plates.get_mut(&site.key.plate)
                        {
                            plate.assembled.insert(digest::of_site(&site.key));
                        }
                    }
                }
                Some(FileEvent::Settled(name)) => {
                    // Sites still in flight to the store when it settled are
                    // forgotten too: a file of one listed again in that
                    // moment is assembled again, and the store refuses it.
                    if let Some(plate) = plates.get_mut(&name) {
                        plate.assembled = HashSet::new();
                    }
                    remembered(&plates);
                    out.push(SiteMsg::Settled(name));
                }
                Some(FileEvent::Marker(path)) => {
                    let dir = path.parent().map(PathBuf::from).unwrap_or_default();
                    for (name, plate) in plates.iter_mut() {
                        if !plate.closed && plate.dirs.iter().any(|d| d.starts_with(&dir)) {
                            plate.closed = true;
                            journal.record(Event::PlateClosed, name, &format!("completion marker {}", path.display()));
                            out.push(SiteMsg::Close(name.clone()));
                        }
                    }
                }
                // Shutdown: sites still missing channels are assembled again after a restart.
                None => return,
            },
            _ = interval.tick() => {
                remembered(&plates);
                let now = Instant::now();
                let expired: Vec<SiteKey> = partial.iter()
                    .filter(|(_, p)| now.duration_since(p.first) >= config.site_timeout)
                    .map(|(k, _)| k.clone())
                    .collect();
                for key in expired {
                    if let Some(p) = partial.remove(&key) {
                        metrics::counter!(telemetry::SITES_INCOMPLETE).increment(1);
                        metrics::counter!(telemetry::FILES_REJECTED, "reason" => "incomplete_site").increment(p.files.len() as u64);
                        let missing: Vec<&String> = config.channels.iter().filter(|c| !p.files.contains_key(*c)).collect();
                        journal.record(Event::Incomplete, &key.to_string(), &format!("missing channels {missing:?} after {:?}", config.site_timeout));
                    }
                }
                for (name, plate) in plates.iter_mut() {
                    if !plate.closed && now.duration_since(plate.last_file) >= config.quiet_period {
                        plate.closed = true;
                        journal.record(Event::PlateClosed, name, &format!("no new file for {:?}", config.quiet_period));
                        out.push(SiteMsg::Close(name.clone()));
                    }
                }
            }
        }
        for msg in out {
            if tx.send(msg).await.is_err() {
                return;
            }
        }
    }
}

fn remembered(plates: &HashMap<String, Plate>) {
    let sites: usize = plates.values().map(|p| p.assembled.len()).sum();
    metrics::gauge!(telemetry::REMEMBERED, "stage" => "assemble").set(sites as f64);
}

fn accept(
    config: &AssembleConfig,
    journal: &Journal,
    partial: &mut HashMap<SiteKey, Partial>,
    plates: &mut HashMap<String, Plate>,
    file: ReadyFile,
    out: &mut Vec<SiteMsg>,
) {
    let key = file.key.site.clone();
    let plate = plates.entry(key.plate.clone()).or_insert_with(|| Plate {
        dirs: HashSet::new(),
        sites: config.committed.get(&key.plate).copied().unwrap_or(0),
        last_file: Instant::now(),
        closed: false,
        assembled: HashSet::new(),
    });
    plate.last_file = Instant::now();
    if let Some(dir) = file.path.parent() {
        plate.dirs.insert(dir.to_owned());
    }
    let complete = if config.multi_page {
        Some(CompleteSite {
            key: key.clone(),
            acquired: file.modified,
            files: vec![(file.path.clone(), file.planes)],
            ready_at: Instant::now(),
        })
    } else {
        let entry = partial.entry(key.clone()).or_insert_with(|| Partial {
            files: BTreeMap::new(),
            first: Instant::now(),
        });
        if let Some(first) = entry.files.get(&file.key.channel) {
            metrics::counter!(telemetry::FILES_REJECTED, "reason" => "duplicate").increment(1);
            journal.record(
                Event::Duplicate,
                &file.path.display().to_string(),
                &format!(
                    "site {key} already has channel {} from {}; the first is kept",
                    file.key.channel,
                    first.path.display()
                ),
            );
            return;
        }
        entry.files.insert(file.key.channel.clone(), file);
        if config.channels.iter().all(|c| entry.files.contains_key(c)) {
            partial.remove(&key).map(|mut p| {
                let acquired = p
                    .files
                    .values()
                    .map(|f| f.modified)
                    .max()
                    .unwrap_or(std::time::SystemTime::UNIX_EPOCH);
                let files = config
                    .channels
                    .iter()
                    .filter_map(|c| p.files.remove(c))
                    .map(|f| (f.path, f.planes))
                    .collect();
                CompleteSite {
                    key: key.clone(),
                    acquired,
                    files,
                    ready_at: Instant::now(),
                }
            })
        } else {
            None
        }
    };
    if let Some(site) = complete {
        metrics::counter!(telemetry::SITES_ASSEMBLED).increment(1);
        plate.sites += 1;
        match wrong_field_size(config.field_size, &site) {
            // Counted toward the plate's expected sites all the same: it was acquired.
            Some(reason) => {
                metrics::counter!(telemetry::SITES_REJECTED).increment(1);
                metrics::counter!(telemetry::FILES_REJECTED, "reason" => "field_size")
                    .increment(site.files.len() as u64);
                journal.record(Event::Rejected, &key.to_string(), &reason);
            }
            None => out.push(SiteMsg::Site(site)),
        }
        let expected = config
            .layout
            .as_ref()
            .and_then(|l| l.expected(&key.plate))
            .or(config.expected_sites);
        if !plate.closed && expected.is_some_and(|n| plate.sites >= n) {
            plate.closed = true;
            journal.record(
                Event::PlateClosed,
                &key.plate,
                &format!("all {} expected sites", plate.sites),
            );
            out.push(SiteMsg::Close(key.plate.clone()));
        }
    }
}

/// Why `site` does not have the configured field size, if it does not.
fn wrong_field_size(expected: Option<[u32; 2]>, site: &CompleteSite) -> Option<String> {
    let [height, width] = expected?;
    site.files.iter().find_map(|(path, planes)| {
        let plane = planes.iter().find(|p| (p.height, p.width) != (height, width))?;
        Some(format!(
            "{}: the field is {}x{} pixels (height x width), but daemon.assemble.field_size is [{height}, {width}]: \
             the model was trained on fields of that size (another camera binning or objective?)",
            path.display(),
            plane.height,
            plane.width
        ))
    })
}
