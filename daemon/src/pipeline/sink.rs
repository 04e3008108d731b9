//! Stage 7, the Zarr sink: rows are staged and committed when
//! `max_rows` wait or `max_interval` has passed, a closing plate is
//! marked complete, and the end of the input commits everything. A
//! commit that fails (disk full, store unwritable) leaves the rows staged
//! and is tried again; the daemon does not stop.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bfx_config::daemon::CommitConfig;
use tokio::sync::mpsc;

use super::SinkMsg;
use crate::store::{RowStatus, Store, StoreError};
use crate::telemetry::{self, Health};

/// The stage.
pub struct Sink {
    /// The store.
    pub store: Store,
    /// Commit policy.
    pub commit: CommitConfig,
    /// Health state (`/readyz` reports a store that refuses commits).
    pub health: Arc<Health>,
    /// Staged new rows: when their site was complete, and their status.
    pub staged: Vec<(Instant, RowStatus)>,
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
            SinkMsg::Rows(rows, info) => {
                for (row, ready_at) in rows {
                    match self.store.stage(&row, &info) {
                        Ok(_) => self.staged.push((ready_at, row.status)),
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

    /// Rows by status and open plates, from the store.
    fn gauges(&self) {
        let (mut provisional, mut fin, mut open) = (0u64, 0u64, 0u64);
        for table in self.store.plates().values() {
            if !table.complete() {
                open += 1;
            }
            // Released rows are committed and final.
            fin += table.released as u64;
            for row in &table.rows[..table.committed - table.released] {
                match row.status {
                    RowStatus::Provisional => provisional += 1,
                    RowStatus::Final => fin += 1,
                }
            }
        }
        metrics::gauge!(telemetry::ROWS, "status" => "provisional").set(provisional as f64);
        metrics::gauge!(telemetry::ROWS, "status" => "final").set(fin as f64);
        metrics::gauge!(telemetry::OPEN_PLATES).set(open as f64);
    }

    /// Commit what is staged; false if it failed.
    fn try_commit(&mut self, was_failing: bool) -> bool {
        let started = Instant::now();
        let result = tokio::task::block_in_place(|| self.store.commit());
        match result {
            Ok(n) => {
                metrics::histogram!(telemetry::COMMIT_SECONDS)
                    .record(started.elapsed().as_secs_f64());
                self.health
                    .embedded
                    .fetch_add(self.staged.len() as u64, Ordering::Relaxed);
                for (ready_at, status) in self.staged.drain(..) {
                    metrics::histogram!(telemetry::SITE_LATENCY_SECONDS)
                        .record(ready_at.elapsed().as_secs_f64());
                    metrics::counter!(telemetry::SITES_EMBEDDED, "status" => status.as_str())
                        .increment(1);
                }
                self.health.store_writable.store(true, Ordering::Relaxed);
                self.gauges();
                if was_failing {
                    tracing::warn!("the store is writable again; commits resumed");
                }
                if n > 0 {
                    tracing::debug!(rows = n, "committed");
                }
                true
            }
            Err(e) => {
                metrics::counter!(telemetry::COMMIT_FAILURES).increment(1);
                self.health.store_writable.store(false, Ordering::Relaxed);
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
