//! The record of everything the daemon refused or could not finish: one
//! JSON line per event in `<store>.events.jsonl` beside the store (inside
//! it would not be a Zarr node), and the same line in the log.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use serde_json::json;

/// What kind of event a record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A file that will not be used (unreadable, misnamed, unknown channel, ...).
    Quarantined,
    /// A site that never got all its channels.
    Incomplete,
    /// A second file for a channel a site already has.
    Duplicate,
    /// A site whose files decoded but could not become model input.
    Rejected,
    /// A plate closed.
    PlateClosed,
}

impl Event {
    fn name(self) -> &'static str {
        match self {
            Event::Quarantined => "quarantined",
            Event::Incomplete => "incomplete",
            Event::Duplicate => "duplicate",
            Event::Rejected => "rejected",
            Event::PlateClosed => "plate-closed",
        }
    }
}

/// An append-only event record.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: Mutex<Option<File>>,
}

impl Journal {
    /// The journal of the store at `store`.
    pub fn beside(store: &Path) -> Journal {
        let mut name = store.as_os_str().to_owned();
        name.push(".events.jsonl");
        let path = PathBuf::from(name);
        let file = OpenOptions::new().create(true).append(true).open(&path);
        if let Err(e) = &file {
            tracing::error!(path = %path.display(), error = %e, "cannot open the event journal; events go to the log only");
        }
        Journal {
            path,
            file: Mutex::new(file.ok()),
        }
    }

    /// Where the journal is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Record `event` about `subject` (a path or a site) with `reason`.
    pub fn record(&self, event: Event, subject: &str, reason: &str) {
        tracing::warn!(event = event.name(), subject, reason, "recorded");
        let line = json!({
            "time": humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            "event": event.name(),
            "subject": subject,
            "reason": reason,
        });
        // A poisoned lock means another thread panicked mid-write; the
        // journal is best effort, the log line above is already out.
        if let Ok(mut guard) = self.file.lock()
            && let Some(file) = guard.as_mut()
            && let Err(e) = writeln!(file, "{line}")
        {
            tracing::error!(path = %self.path.display(), error = %e, "cannot append to the event journal");
        }
    }
}
