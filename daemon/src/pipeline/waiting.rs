//! The ready stage's schedule: files waiting to be ready, each looked at
//! again when its settle interval or retry backoff ends.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime};

use super::handled::Outcome;
use super::ready::ReadyConfig;

/// A file not ready yet.
pub(super) struct Candidate {
    /// Size at the last look (`u64::MAX` before the first).
    pub(super) len: u64,
    /// mtime at the last look.
    pub(super) modified: SystemTime,
    /// Since when size and mtime have not changed.
    pub(super) stable_since: Instant,
    /// When the stage first heard of it.
    pub(super) first_seen: Instant,
    /// Failed reads so far.
    pub(super) attempts: u32,
    /// When it is next looked at.
    pub(super) due: Instant,
}

/// The stage's state: files waiting to be ready, by the moment each is
/// next looked at, so a file is `stat`ed when its settle interval ends
/// rather than on every tick.
#[derive(Default)]
pub(super) struct Waiting {
    /// Files not ready yet.
    pub(super) candidates: HashMap<PathBuf, Candidate>,
    /// Their next looks, earliest first (entries of rescheduled files go stale).
    pub(super) due: BinaryHeap<Reverse<(Instant, PathBuf)>>,
}

impl Waiting {
    pub(super) fn add(&mut self, config: &mut ReadyConfig, path: PathBuf) {
        if self.candidates.contains_key(&path) || config.handled.handled(&path, &config.naming) {
            return;
        }
        let now = Instant::now();
        self.candidates.insert(
            path.clone(),
            Candidate {
                len: u64::MAX,
                modified: SystemTime::UNIX_EPOCH,
                stable_since: now,
                first_seen: now,
                attempts: 0,
                due: now,
            },
        );
        self.due.push(Reverse((now, path)));
    }

    pub(super) fn schedule(&mut self, path: &Path, at: Instant) {
        if let Some(c) = self.candidates.get_mut(path) {
            c.due = at;
            self.due.push(Reverse((at, path.to_owned())));
        }
    }

    pub(super) fn finish(&mut self, config: &mut ReadyConfig, path: &Path, outcome: Outcome) {
        self.candidates.remove(path);
        config.handled.finish(path, outcome);
    }

    /// Candidates due by `now`, oldest first (so "the first file of a
    /// channel" means the first to arrive).
    pub(super) fn take_due(&mut self, now: Instant) -> Vec<PathBuf> {
        let mut due = Vec::new();
        while let Some(Reverse((at, _))) = self.due.peek()
            && *at <= now
        {
            // Just peeked, so there is an entry to pop.
            let Reverse((at, path)) = self.due.pop().expect("peeked entry");
            // Entries rescheduled since are stale.
            if let Some(c) = self.candidates.get(&path)
                && c.due == at
            {
                due.push((c.first_seen, path));
            }
        }
        due.sort();
        due.dedup();
        due.into_iter().map(|(_, p)| p).collect()
    }
}
