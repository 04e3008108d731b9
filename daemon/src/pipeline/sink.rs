//! Stage 7, the Zarr sink: rows are staged and committed when
//! `max_rows` wait or `max_interval` has passed, a closing plate is
//! marked complete, and the end of the input commits everything. A
//! commit that fails (disk full, store unwritable) leaves the rows staged
//! and is tried again at every commit interval; the daemon does not stop.
//! Meanwhile the stage takes new rows only up to `max_rows` staged: past
//! that the pipeline behind it fills and waits, so the sites wait as files
//! on disk rather than as rows in memory (until shutdown, when it drains).
//! After each commit the plates that settled (complete, every row final)
//! are named to the ready stage, so the stages before forget them.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use bfx_config::daemon::CommitConfig;
use tokio::sync::{mpsc, watch};

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
    /// Turns true at shutdown (the stage then takes everything, to drain).
    pub shutdown: watch::Receiver<bool>,
    /// Plates settled by a commit, to the ready stage. Unbounded, so the
    /// sink never waits on a stage that may be waiting on it; one message
    /// per plate.
    pub settled: mpsc::UnboundedSender<String>,
}

impl Sink {
    /// Run until `rx` closes and everything is committed (or the last
    /// commit failed: staged rows are then embedded again after a restart).
    pub async fn run(mut self, mut rx: mpsc::Receiver<SinkMsg>) -> Store {
        let mut interval = tokio::time::interval(self.commit.max_interval);
        let mut failing = false;
        loop {
            let taking =
                !failing || self.store.pending() < self.commit.max_rows || *self.shutdown.borrow();
            tokio::select! {
                msg = rx.recv(), if taking => match msg {
                    Some(msg) => {
                        let close = self.apply(msg);
                        // A failing store is retried on the interval, not per message.
                        if !failing && (close || self.store.pending() >= self.commit.max_rows) {
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
        metrics::gauge!(telemetry::REMEMBERED, "stage" => "store")
            .set(self.store.remembered() as f64);
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
                let settled = self.store.settle();
                if !settled.is_empty() {
                    trim_heap();
                }
                for plate in settled {
                    tracing::debug!(plate, "settled; the stages before forget its sites");
                    // At shutdown the ready stage may be gone: nothing to forget then.
                    let _ = self.settled.send(plate);
                }
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
                false
            }
        }
    }
}

/// Hand the heap's free pages back to the kernel. glibc keeps what a
/// thread frees in that thread's arena, and the arenas of the runtime's
/// threads grew with every plate although the heap in use stayed flat.
/// Once per settled plate (the store's part of the plate is free by then,
/// what the other stages drop a moment later goes with the next plate);
/// the stream benchmark shows no cost in throughput.
#[allow(unsafe_code)]
fn trim_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointer; it walks glibc's own arenas
    // under their locks.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::atomic::Ordering;
    use std::time::{Duration, SystemTime};

    use bfx_config::daemon::CommitConfig;
    use bfx_core::bundle::CorrectionMode;
    use bfx_core::naming::{PlateFormat, SiteKey, Well};

    use super::*;
    use crate::store::{PlateInfo, Row};

    fn rows(i: u32) -> SinkMsg {
        let row = Row {
            key: SiteKey {
                plate: "P1".into(),
                well: Well::new(1, 1 + i, PlateFormat::default()).expect("valid well"),
                site: 1,
                timepoint: None,
                z: None,
            },
            paths: vec![PathBuf::from(format!("/in/P1/{i}.tif"))],
            acquired: SystemTime::UNIX_EPOCH,
            correction: CorrectionMode::None,
            status: RowStatus::Final,
            embedding: vec![i as f32; 3],
        };
        let info = PlateInfo {
            bundle_sha256: "ab".repeat(32),
            method: "erm".into(),
            correction: CorrectionMode::None,
        };
        SinkMsg::Rows(vec![(row, Instant::now())], info)
    }

    /// While commits fail the stage stops taking rows past `max_rows`
    /// (they wait upstream), retries on its interval, and stores every
    /// row once the store takes commits again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_store_holds_back_the_pipeline_then_catches_up() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let store = Store::open(tmp.path(), 3, 4).expect("store");
        // A file where the plate's group folder goes: every commit of it
        // fails, whatever the user's permissions.
        let blocker = tmp.path().join("P1");
        std::fs::write(&blocker, b"in the way").expect("write");
        let (_stop, shutdown) = watch::channel(false);
        let health = Health::new();
        let sink = Sink {
            store,
            commit: CommitConfig {
                max_rows: 4,
                max_interval: Duration::from_millis(100),
            },
            health: health.clone(),
            staged: Vec::new(),
            shutdown,
            settled: mpsc::unbounded_channel().0,
        };
        let (tx, rx) = mpsc::channel(1);
        let stage = tokio::spawn(sink.run(rx));
        let mut taken = 0;
        while tokio::time::timeout(Duration::from_millis(500), tx.send(rows(taken)))
            .await
            .is_ok()
        {
            taken += 1;
            assert!(
                taken <= 6,
                "the stage kept taking rows from a failing store"
            );
        }
        // Four staged, one in the channel (and none lost: the timed-out send is sent again below).
        assert_eq!(taken, 5);
        assert!(!health.store_writable.load(Ordering::Relaxed));
        std::fs::remove_file(&blocker).expect("remove");
        for i in taken..12 {
            tokio::time::timeout(Duration::from_secs(5), tx.send(rows(i)))
                .await
                .expect("the stage takes rows again")
                .expect("stage running");
        }
        drop(tx);
        let store = stage.await.expect("stage ends");
        assert!(health.store_writable.load(Ordering::Relaxed));
        assert_eq!(store.plate("P1").expect("plate stored").len(), 12);
        assert_eq!(store.pending(), 0);
    }
}
