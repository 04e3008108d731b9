//! Stage 1, watch: file paths under the acquisition roots, from
//! filesystem events and from periodic rescans (network shares often
//! deliver no events; rescans list only the folders that changed, see
//! [`super::rescan`]). The first scan runs at start-up. Paths are sent as
//! seen; the ready stage decides what they are. A full channel slows the
//! scan down instead of growing memory. Both sources name a file by the
//! same bytes (absolute roots, hidden names skipped), since the ready stage
//! knows a file by its path.

use std::path::{Path, PathBuf};

use bfx_config::daemon::{WatchConfig, WatchMode};
use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};

use super::rescan::{FULL_INTERVAL, Rescanner, list};

/// The roots as absolute paths. notify reports a relative root's events
/// under `current_dir().join(root)`; a scan of the relative root would list
/// the same files under other names, and each would be read twice.
fn absolute(roots: &[PathBuf]) -> Vec<PathBuf> {
    roots
        .iter()
        .map(|r| std::path::absolute(r).unwrap_or_else(|_| r.clone()))
        .collect()
}

/// Whether `path` is, or lies in, a hidden file or folder below its root
/// (scans skip those; events must too).
fn hidden(path: &Path, roots: &[PathBuf]) -> bool {
    roots
        .iter()
        .find_map(|r| path.strip_prefix(r).ok())
        .is_some_and(|rel| {
            rel.components()
                .any(|c| c.as_os_str().to_string_lossy().starts_with('.'))
        })
}

/// Every file and symbolic link below `root` (hidden files and folders skipped), sorted.
pub fn scan(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        if let Some((files, folders)) = list(&dir) {
            out.extend(files);
            dirs.extend(folders);
        }
    }
    out.sort();
    out
}

/// Run until `shutdown` turns true; dropping `tx` then tells the next stage.
pub async fn run(
    config: WatchConfig,
    tx: mpsc::Sender<PathBuf>,
    mut shutdown: watch::Receiver<bool>,
) {
    let roots = absolute(&config.roots);
    // Kept alive for the stage's lifetime: dropping it stops the events.
    let _watcher = if config.mode != WatchMode::Poll {
        let events = tx.clone();
        let event_roots = roots.clone();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(event) = res
                && (event.kind.is_create() || event.kind.is_modify())
            {
                for path in event.paths {
                    if hidden(&path, &event_roots) {
                        continue;
                    }
                    // A folder moved in whole (instruments often write a
                    // plate elsewhere, then move it) brings files that
                    // raise no events of their own.
                    let found = if path.is_dir() {
                        scan(&path)
                    } else {
                        vec![path]
                    };
                    for path in found {
                        // notify calls back on its own thread, outside the runtime.
                        if events.blocking_send(path).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        match watcher {
            Ok(mut w) => {
                for root in &roots {
                    if let Err(e) = w.watch(root, RecursiveMode::Recursive) {
                        tracing::warn!(root = %root.display(), error = %e, "no filesystem events for this root; relying on rescans");
                    }
                }
                Some(w)
            }
            Err(e) => {
                tracing::warn!(error = %e, "no filesystem events; relying on rescans");
                None
            }
        }
    } else {
        None
    };
    let mut first = true;
    let mut rescanner = Some(Rescanner::new(roots.clone(), FULL_INTERVAL));
    loop {
        if first || config.mode != WatchMode::Events {
            let mut r = rescanner
                .take()
                .unwrap_or_else(|| Rescanner::new(roots.clone(), FULL_INTERVAL));
            // A rescanner lost to a crashed scan is made again (its next rescan lists everything).
            let found = match tokio::task::spawn_blocking(move || (r.rescan().files, r)).await {
                Ok((found, r)) => {
                    rescanner = Some(r);
                    found
                }
                Err(e) => {
                    tracing::error!(error = %e, "the rescan crashed");
                    Vec::new()
                }
            };
            for path in found {
                tokio::select! {
                    sent = tx.send(path) => if sent.is_err() { return },
                    _ = shutdown.changed() => return,
                }
            }
            first = false;
        }
        tokio::select! {
            _ = tokio::time::sleep(config.poll_interval) => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use super::*;

    /// A relative root (as a relative configuration path gives) whose files
    /// arrive through events and rescans: each file is one path, absolute,
    /// and hidden files come from neither source.
    #[tokio::test]
    async fn events_and_rescans_name_a_file_alike() {
        // Relative to the working directory, which is where tests run.
        let dir = tempfile::Builder::new()
            .prefix("watch-test-")
            .tempdir_in(".")
            .expect("temp dir");
        let root = PathBuf::from(dir.path().file_name().expect("named"));
        let config = WatchConfig {
            roots: vec![root.clone()],
            mode: WatchMode::Both,
            poll_interval: Duration::from_millis(100),
            settle: Duration::from_millis(100),
            read_deadline: Duration::from_secs(1),
        };
        let (tx, mut rx) = mpsc::channel(64);
        let (stop, shutdown) = watch::channel(false);
        let stage = tokio::spawn(run(config, tx, shutdown));
        // Let the watcher start and watch the new folders, so the files
        // below raise events of their own.
        tokio::time::sleep(Duration::from_millis(300)).await;
        std::fs::create_dir_all(root.join("P1/.partial")).expect("folders");
        tokio::time::sleep(Duration::from_millis(300)).await;
        for name in ["P1/a.tif", "P1/.b.tif", "P1/.partial/c.tif"] {
            std::fs::write(root.join(name), b"x").expect("write");
        }
        let mut seen = BTreeSet::new();
        let deadline = tokio::time::Instant::now() + Duration::from_millis(800);
        while let Ok(Some(path)) = tokio::time::timeout_at(deadline, rx.recv()).await {
            seen.insert(path);
        }
        stop.send(true).expect("stage running");
        stage.await.expect("stage ends");
        let expected = std::path::absolute(root.join("P1/a.tif")).expect("absolute");
        // Folders come through events too; the ready stage drops them.
        let files: Vec<&PathBuf> = seen.iter().filter(|p| !p.is_dir()).collect();
        assert_eq!(files, vec![&expected], "every path sent: {seen:?}");
    }
}
