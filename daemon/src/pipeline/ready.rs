//! Stage 2, ready files: a file is used once its size and mtime have been
//! stable for the settle interval and it decodes fully. Decoding failures
//! are retried with backoff until the read deadline, then the file is
//! quarantined (recorded, or moved with a note; never deleted). Files of
//! sites already in the store are skipped without decoding. What the
//! stage remembers of handled files is in [`super::handled`]; the sink
//! tells it when a plate is settled, and it passes that on down the
//! pipeline, so every stage forgets the plate.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bfx_config::daemon::{QuarantineConfig, QuarantineMode};
use bfx_core::image::{Pages, ReadOptions, read_image};
use bfx_core::naming::{ImageKey, NamingError, NamingScheme};
use tokio::sync::mpsc;

use super::handled::{Handled, Outcome};
use super::waiting::Waiting;
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
    /// Handled files and stored sites (from the store at start-up).
    pub handled: Handled,
    /// Open plates of the store started with another bundle, with that
    /// bundle's sha256: a plate keeps the model it started with.
    pub pinned_elsewhere: HashMap<String, String>,
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

/// Files decoded per trip to the blocking pool: enough to make the trip
/// cheap next to the decoding, few enough to hold little memory.
const DECODE_FILES: usize = 32;
/// Bytes of files decoded per trip (large images go a few at a time).
const DECODE_BYTES: u64 = 64 << 20;

/// What looking at a due candidate found.
enum Look {
    /// Not ready yet: look again then.
    Later(Instant),
    /// Finished without an event (skipped or refused).
    Done(Outcome),
    /// Gone, or not a file: forgotten (seen again if it comes back).
    Forget,
    /// A plate completion marker.
    Marker,
    /// Stable and wanted: decode it.
    Decode(Stable),
}

/// A stable file to decode.
struct Stable {
    path: PathBuf,
    key: ImageKey,
    modified: SystemTime,
    len: u64,
}

/// Run until `rx` closes. `settled` names each plate the sink has
/// stored complete.
pub async fn run(
    mut config: ReadyConfig,
    journal: Arc<Journal>,
    mut rx: mpsc::Receiver<PathBuf>,
    mut settled: mpsc::UnboundedReceiver<String>,
    tx: mpsc::Sender<FileEvent>,
) {
    let mut waiting = Waiting::default();
    loop {
        let next = waiting.due.peek().map(|Reverse((at, _))| *at);
        tokio::select! {
            path = rx.recv() => match path {
                Some(path) => waiting.add(&mut config, path),
                // Shutdown: files not yet ready are found again after a restart.
                None => return,
            },
            Some(plate) = settled.recv() => {
                config.handled.settle(plate.clone());
                remembered(&config);
                if tx.send(FileEvent::Settled(plate)).await.is_err() {
                    return;
                }
            }
            _ = tokio::time::sleep_until(next.unwrap_or_else(Instant::now).into()), if next.is_some() => {
                let now = Instant::now();
                let mut decode: Vec<Stable> = Vec::new();
                for path in waiting.take_due(now) {
                    match look(&mut config, &journal, &mut waiting, &path, now) {
                        Look::Later(at) => waiting.schedule(&path, at),
                        Look::Done(outcome) => waiting.finish(&mut config, &path, outcome),
                        Look::Forget => {
                            waiting.candidates.remove(&path);
                        }
                        Look::Marker => {
                            // A marker closes its plate: the files ready before it go first.
                            if !send_decoded(&mut config, &journal, &mut waiting, std::mem::take(&mut decode), &tx).await {
                                return;
                            }
                            waiting.finish(&mut config, &path, Outcome::Kept);
                            if tx.send(FileEvent::Marker(path)).await.is_err() {
                                return;
                            }
                        }
                        Look::Decode(file) => decode.push(file),
                    }
                }
                if !send_decoded(&mut config, &journal, &mut waiting, decode, &tx).await {
                    return;
                }
                remembered(&config);
            }
        }
    }
}

fn remembered(config: &ReadyConfig) {
    metrics::gauge!(telemetry::REMEMBERED, "stage" => "ready")
        .set(config.handled.remembered() as f64);
}

/// Decode `files` on the blocking pool, a few at a time, and send each
/// that decodes; the others are retried or quarantined. False once the
/// next stage is gone.
async fn send_decoded(
    config: &mut ReadyConfig,
    journal: &Journal,
    waiting: &mut Waiting,
    files: Vec<Stable>,
    tx: &mpsc::Sender<FileEvent>,
) -> bool {
    let mut files = files.into_iter().peekable();
    while files.peek().is_some() {
        let mut chunk = Vec::new();
        let mut bytes = 0;
        while let Some(f) = files.next_if(|f| {
            chunk.is_empty() || (chunk.len() < DECODE_FILES && bytes + f.len <= DECODE_BYTES)
        }) {
            bytes += f.len;
            chunk.push(f);
        }
        let read = config.read;
        let paths: Vec<PathBuf> = chunk.iter().map(|f| f.path.clone()).collect();
        let decoded = tokio::task::spawn_blocking(move || {
            paths
                .iter()
                .map(|p| read_image(p, &read).map_err(|e| e.to_string()))
                .collect::<Vec<_>>()
        })
        .await
        .unwrap_or_else(|e| vec![Err(format!("decoder crashed: {e}")); chunk.len()]);
        for (
            Stable {
                path,
                key,
                modified,
                ..
            },
            planes,
        ) in chunk.into_iter().zip(decoded)
        {
            match planes {
                Ok(planes) => {
                    waiting.finish(config, &path, Outcome::Used(key.site.clone()));
                    let event = FileEvent::Image(ReadyFile {
                        path,
                        key,
                        planes,
                        modified,
                    });
                    if tx.send(event).await.is_err() {
                        return false;
                    }
                }
                Err(reason) => unreadable(config, journal, waiting, &path, reason),
            }
        }
    }
    true
}

/// A stable file that did not decode: retried with backoff, quarantined
/// once the read deadline has passed since its last change.
fn unreadable(
    config: &mut ReadyConfig,
    journal: &Journal,
    waiting: &mut Waiting,
    path: &Path,
    reason: String,
) {
    let now = Instant::now();
    let Some(c) = waiting.candidates.get_mut(path) else {
        return;
    };
    // From the last change, not the first sight: a slow writer that
    // pauses longer than the settle interval is not done.
    if now.duration_since(c.stable_since) >= config.read_deadline {
        rejected("unreadable");
        quarantine(&config.quarantine, journal, path, &reason);
        waiting.finish(config, path, Outcome::Kept);
    } else {
        c.attempts += 1;
        let backoff =
            config.settle.max(Duration::from_millis(100)) * 2u32.saturating_pow(c.attempts.min(8));
        let at = now + backoff.min(Duration::from_secs(60));
        tracing::debug!(path = %path.display(), %reason, attempts = c.attempts, "not readable yet; will retry");
        waiting.schedule(path, at);
    }
}

/// Look at one due candidate.
fn look(
    config: &mut ReadyConfig,
    journal: &Journal,
    waiting: &mut Waiting,
    path: &Path,
    now: Instant,
) -> Look {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Vanished (renamed by the instrument, or deleted): nothing to use.
            tracing::debug!(path = %path.display(), error = %e, "file gone before it was read");
            skipped("vanished");
            return Look::Forget;
        }
        Err(e) => {
            // There but not statable (a symlink loop, a folder without
            // search permission): waiting does not change that.
            if waiting
                .candidates
                .get(path)
                .is_some_and(|c| c.len == u64::MAX)
            {
                metrics::counter!(telemetry::FILES_SEEN).increment(1);
            }
            rejected("unreadable");
            quarantine(
                &config.quarantine,
                journal,
                path,
                &format!("cannot look at the file: {e}"),
            );
            return Look::Done(Outcome::Kept);
        }
    };
    if !meta.is_file() {
        // Folders (and anything else) come through events too; only files are images.
        return Look::Forget;
    }
    let Some(c) = waiting.candidates.get_mut(path) else {
        return Look::Forget;
    };
    if c.len == u64::MAX {
        metrics::counter!(telemetry::FILES_SEEN).increment(1);
    }
    let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    if meta.len() != c.len || modified != c.modified {
        c.len = meta.len();
        c.modified = modified;
        c.stable_since = now;
        return Look::Later(now + config.settle);
    }
    if now.duration_since(c.stable_since) < config.settle {
        return Look::Later(c.stable_since + config.settle);
    }
    if config
        .quarantine
        .dir
        .as_ref()
        .is_some_and(|d| path.starts_with(d))
    {
        // The quarantine folder may sit under a watched root.
        skipped("quarantine_folder");
        return Look::Done(Outcome::Skipped);
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if config.marker.as_ref().is_some_and(|m| m.is_match(&name)) {
        skipped("completion_marker");
        return Look::Marker;
    }
    let key = match config.naming.parse(path) {
        Ok(key) => key,
        Err(NamingError::NotAcquired { .. }) => {
            skipped("not_acquired");
            return Look::Done(Outcome::Skipped);
        }
        Err(e) => {
            rejected("naming");
            quarantine(&config.quarantine, journal, path, &e.to_string());
            return Look::Done(Outcome::Kept);
        }
    };
    if config.handled.stored(&key.site) {
        skipped("already_stored");
        return Look::Done(Outcome::Stored(key.site));
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
        return Look::Done(Outcome::Kept);
    }
    let multi_page = config.read.pages == Pages::All;
    if !multi_page && !config.channels.contains(&key.channel) {
        let reason = format!(
            "channel {:?} is not one of the bundle's channels {:?}",
            key.channel, config.channels
        );
        rejected("channel");
        quarantine(&config.quarantine, journal, path, &reason);
        return Look::Done(Outcome::Kept);
    }
    Look::Decode(Stable {
        path: path.to_owned(),
        key,
        modified,
        len: meta.len(),
    })
}
