//! Stage 2, ready files: a file is used once its size and mtime have been
//! stable for the settle interval and it decodes fully. Decoding failures
//! are retried with backoff until the read deadline, then the file is
//! quarantined (recorded, or moved with a note; never deleted). Files of
//! sites already in the store are skipped without decoding.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bfx_config::daemon::{QuarantineConfig, QuarantineMode};
use bfx_core::image::{Pages, Plane, ReadOptions, read_image};
use bfx_core::naming::{NamingError, NamingScheme};
use tokio::sync::mpsc;

use super::{FileEvent, ReadyFile};
use crate::journal::{Event, Journal};
use crate::telemetry;

/// What the stage needs to know.
pub struct ReadyConfig {
    /// Stable this long before a file is read.
    pub settle: Duration,
    /// Unreadable files are retried this long after their last change.
    pub read_deadline: Duration,
    /// File names.
    pub naming: NamingScheme,
    /// The bundle's channels.
    pub channels: Vec<String>,
    /// How files are read.
    pub read: ReadOptions,
    /// What happens to unusable files.
    pub quarantine: QuarantineConfig,
    /// Glob of the plate completion marker, if any.
    pub marker: Option<regex::Regex>,
    /// Site keys already in the store.
    pub committed: HashSet<String>,
    /// Open plates of the store started with another bundle, with that
    /// bundle's sha256: a plate keeps the model it started with.
    pub pinned_elsewhere: HashMap<String, String>,
}

struct Candidate {
    len: u64,
    modified: SystemTime,
    stable_since: Instant,
    first_seen: Instant,
    attempts: u32,
    next_try: Instant,
}

fn skipped(reason: &'static str) {
    metrics::counter!(telemetry::FILES_SKIPPED, "reason" => reason).increment(1);
}

fn rejected(reason: &'static str) {
    metrics::counter!(telemetry::FILES_REJECTED, "reason" => reason).increment(1);
}

/// A glob (`*`, `?`) as an anchored regex over a file name.
pub fn glob(pattern: &str) -> Result<regex::Regex, regex::Error> {
    let mut re = String::from("^");
    for c in pattern.chars() {
        match c {
            '*' => re.push_str(".*"),
            '?' => re.push('.'),
            c => re.push_str(&regex::escape(&c.to_string())),
        }
    }
    re.push('$');
    regex::Regex::new(&re)
}

/// Quarantine `path`: record it, and move it with a note if so configured.
pub fn quarantine(config: &QuarantineConfig, journal: &Journal, path: &Path, reason: &str) {
    let mut subject = path.display().to_string();
    if let (QuarantineMode::Move, Some(dir)) = (config.mode, &config.dir) {
        let name = path
            .file_name()
            .map(|n| n.to_os_string())
            .unwrap_or_default();
        let dest = dir.join(&name);
        let moved = std::fs::create_dir_all(dir)
            .and_then(|_| std::fs::rename(path, &dest))
            .and_then(|_| {
                let mut note = dest.as_os_str().to_owned();
                note.push(".reason.txt");
                std::fs::write(
                    PathBuf::from(note),
                    format!("{}\n{reason}\n", path.display()),
                )
            });
        match moved {
            Ok(()) => subject = format!("{} -> {}", path.display(), dest.display()),
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot move the file to quarantine; recorded only")
            }
        }
    }
    journal.record(Event::Quarantined, &subject, reason);
}

/// Run until `rx` closes.
pub async fn run(
    mut config: ReadyConfig,
    journal: Arc<Journal>,
    mut rx: mpsc::Receiver<PathBuf>,
    tx: mpsc::Sender<FileEvent>,
) {
    let mut candidates: HashMap<PathBuf, Candidate> = HashMap::new();
    let mut done: HashSet<PathBuf> = HashSet::new();
    let tick = (config.settle / 4).clamp(Duration::from_millis(20), Duration::from_secs(1));
    let mut interval = tokio::time::interval(tick);
    loop {
        tokio::select! {
            path = rx.recv() => match path {
                Some(path) => {
                    if !done.contains(&path) && !candidates.contains_key(&path) {
                        let now = Instant::now();
                        candidates.insert(path, Candidate {
                            len: u64::MAX, modified: SystemTime::UNIX_EPOCH,
                            stable_since: now, first_seen: now, attempts: 0, next_try: now,
                        });
                    }
                }
                // Shutdown: files not yet ready are found again after a restart.
                None => return,
            },
            _ = interval.tick() => {
                // Oldest first, so "the first file of a channel" means the first to arrive.
                let mut due: Vec<(Instant, PathBuf)> = candidates.iter().map(|(p, c)| (c.first_seen, p.clone())).collect();
                due.sort();
                let due = due.into_iter().map(|(_, p)| p);
                for path in due {
                    if let Some(event) = check(&mut config, &journal, &mut candidates, &mut done, path).await
                        && tx.send(event).await.is_err()
                    {
                        return;
                    }
                }
            }
        }
    }
}

/// Look at one candidate; an event when it is ready.
async fn check(
    config: &mut ReadyConfig,
    journal: &Journal,
    candidates: &mut HashMap<PathBuf, Candidate>,
    done: &mut HashSet<PathBuf>,
    path: PathBuf,
) -> Option<FileEvent> {
    let now = Instant::now();
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Vanished (renamed by the instrument, or deleted): nothing to use.
            tracing::debug!(path = %path.display(), error = %e, "file gone before it was read");
            skipped("vanished");
            candidates.remove(&path);
            return None;
        }
        Err(e) => {
            // There but not statable (a symlink loop, a folder without
            // search permission): waiting does not change that.
            if candidates.get(&path).is_some_and(|c| c.len == u64::MAX) {
                metrics::counter!(telemetry::FILES_SEEN).increment(1);
            }
            rejected("unreadable");
            quarantine(
                &config.quarantine,
                journal,
                &path,
                &format!("cannot look at the file: {e}"),
            );
            candidates.remove(&path);
            done.insert(path);
            return None;
        }
    };
    if !meta.is_file() {
        // Folders (and anything else) come through events too; only files are images.
        candidates.remove(&path);
        return None;
    }
    let c = candidates.get_mut(&path)?;
    if c.len == u64::MAX {
        metrics::counter!(telemetry::FILES_SEEN).increment(1);
    }
    let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    if meta.len() != c.len || modified != c.modified {
        c.len = meta.len();
        c.modified = modified;
        c.stable_since = now;
        return None;
    }
    if now.duration_since(c.stable_since) < config.settle || now < c.next_try {
        return None;
    }
    let finish = |candidates: &mut HashMap<PathBuf, Candidate>, done: &mut HashSet<PathBuf>| {
        candidates.remove(&path);
        done.insert(path.clone());
    };
    if config
        .quarantine
        .dir
        .as_ref()
        .is_some_and(|d| path.starts_with(d))
    {
        // The quarantine folder may sit under a watched root.
        skipped("quarantine_folder");
        finish(candidates, done);
        return None;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if config.marker.as_ref().is_some_and(|m| m.is_match(&name)) {
        skipped("completion_marker");
        finish(candidates, done);
        return Some(FileEvent::Marker(path));
    }
    let key = match config.naming.parse(&path) {
        Ok(key) => key,
        Err(NamingError::NotAcquired { .. }) => {
            skipped("not_acquired");
            finish(candidates, done);
            return None;
        }
        Err(e) => {
            rejected("naming");
            quarantine(&config.quarantine, journal, &path, &e.to_string());
            finish(candidates, done);
            return None;
        }
    };
    if config.committed.contains(&key.site.to_string()) {
        skipped("already_stored");
        finish(candidates, done);
        return None;
    }
    if let Some(sha) = config.pinned_elsewhere.get(&key.site.plate) {
        let reason = format!(
            "plate {} was started with bundle {sha}; its sites are not embedded with another model (run that bundle to finish the plate)",
            key.site.plate
        );
        rejected("pinned_bundle");
        // Recorded once per plate; its other files are skipped quietly.
        if !sha.is_empty() {
            journal.record(Event::Rejected, &key.site.plate, &reason);
            config
                .pinned_elsewhere
                .insert(key.site.plate.clone(), String::new());
        }
        finish(candidates, done);
        return None;
    }
    let multi_page = config.read.pages == Pages::All;
    if !multi_page && !config.channels.contains(&key.channel) {
        let reason = format!(
            "channel {:?} is not one of the bundle's channels {:?}",
            key.channel, config.channels
        );
        rejected("channel");
        quarantine(&config.quarantine, journal, &path, &reason);
        finish(candidates, done);
        return None;
    }
    let read = config.read;
    let file = path.clone();
    let decoded = tokio::task::spawn_blocking(move || read_image(&file, &read)).await;
    let planes: Result<Vec<Plane>, String> = match decoded {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(format!("decoder crashed: {e}")),
    };
    match planes {
        Ok(planes) => {
            finish(candidates, done);
            Some(FileEvent::Image(ReadyFile {
                path: path.clone(),
                key,
                planes,
                modified,
            }))
        }
        Err(reason) => {
            let c = candidates.get_mut(&path)?;
            // From the last change, not the first sight: a slow writer
            // that pauses longer than the settle interval is not done.
            if now.duration_since(c.stable_since) >= config.read_deadline {
                rejected("unreadable");
                quarantine(&config.quarantine, journal, &path, &reason);
                finish(candidates, done);
            } else {
                c.attempts += 1;
                let backoff = config.settle.max(Duration::from_millis(100))
                    * 2u32.saturating_pow(c.attempts.min(8));
                c.next_try = now + backoff.min(Duration::from_secs(60));
                tracing::debug!(path = %path.display(), %reason, attempts = c.attempts, "not readable yet; will retry");
            }
            None
        }
    }
}
