//! Stage 6, the Zarr sink: rows are staged and committed when
//! `max_rows` wait or `max_interval` has passed, a closing plate is
//! marked complete, and the end of the input commits everything. A
//! commit that fails (disk full, store unwritable) leaves the rows staged
//! and is tried again; the daemon does not stop.

use std::time::Duration;

use bfx_config::daemon::CommitConfig;
use tokio::sync::mpsc;

use super::SinkMsg;
use crate::store::{PlateInfo, RowStatus, Store, StoreError};

/// The stage.
pub struct Sink {
    /// The store.
    pub store: Store,
    /// What every plate records.
    pub info: PlateInfo,
    /// Commit policy.
    pub commit: CommitConfig,
}

impl Sink {
    /// Run until `rx` closes and everything is committed (or the last
    /// commit failed: staged rows are then embedded again after a restart).
    pub async fn run(mut self, mut rx: mpsc::Receiver<SinkMsg>) -> Store {
        let mut interval = tokio::time::interval(self.commit.max_interval);
        let mut failing = false;
        loop {
            tokio::select! {
                msg = rx.recv() => match msg {
                    Some(msg) => {
                        let close = self.apply(msg);
                        if close || self.store.pending() >= self.commit.max_rows {
                            failing = !self.try_commit(failing);
                        }
                    }
                    None => {
                        self.try_commit(failing);
                        return self.store;
                    }
                },
                _ = interval.tick() => {
                    failing = !self.try_commit(failing);
                }
            }
        }
    }

    /// Apply a message; true when a plate closed (commit at once).
    fn apply(&mut self, msg: SinkMsg) -> bool {
        match msg {
            SinkMsg::Rows(rows) => {
                for row in rows {
                    match self.store.stage(&row, &self.info) {
                        Ok(_) => {}
                        Err(StoreError::Duplicate(site)) => {
                            tracing::warn!(site, "site already stored; kept the stored row")
                        }
                        Err(e) => {
                            tracing::error!(site = %row.key, error = %e, "cannot stage the row")
                        }
                    }
                }
                false
            }
            SinkMsg::Update(updates) => {
                for (key, embedding) in updates {
                    if let Err(e) = self.store.update(&key, &embedding, RowStatus::Final) {
                        tracing::error!(site = %key, error = %e, "cannot update the row");
                    }
                }
                false
            }
            SinkMsg::Stats(plate, stats) => {
                self.store.set_uns(
                    &plate,
                    "adabn_stats",
                    &serde_json::to_string(&stats).unwrap_or_default(),
                );
                false
            }
            SinkMsg::Close(plate) => {
                self.store.set_complete(&plate);
                true
            }
        }
    }

    /// Commit what is staged; false if it failed.
    fn try_commit(&mut self, was_failing: bool) -> bool {
        let result = tokio::task::block_in_place(|| self.store.commit());
        match result {
            Ok(n) => {
                if was_failing {
                    tracing::warn!("the store is writable again; commits resumed");
                }
                if n > 0 {
                    tracing::debug!(rows = n, "committed");
                }
                true
            }
            Err(e) => {
                tracing::error!(error = %e, pending = self.store.pending(), "commit failed; rows stay staged and are retried");
                if let Err(e) = self.store.clean_temporary() {
                    tracing::error!(error = %e, "cannot clean temporary files of the failed commit");
                }
                std::thread::sleep(Duration::from_millis(100));
                false
            }
        }
    }
}
