//! Stage 1, watch: file paths under the acquisition roots, from
//! filesystem events and from periodic rescans (network shares often
//! deliver no events). The first scan runs at start-up. Paths are sent as
//! seen; the ready stage decides what they are. A full channel slows the
//! scan down instead of growing memory.

use std::path::{Path, PathBuf};

use bfx_config::daemon::{WatchConfig, WatchMode};
use notify::{RecursiveMode, Watcher};
use tokio::sync::{mpsc, watch};

/// Every file and symbolic link below `root` (hidden files and folders skipped), sorted.
pub fn scan(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            tracing::warn!(dir = %dir.display(), "cannot list folder");
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            match entry.file_type() {
                Ok(t) if t.is_dir() => dirs.push(path),
                // Links are not followed into folders (no cycles); the
                // ready stage decides what a link to a file, or a broken
                // or looping link, is.
                Ok(t) if t.is_file() || t.is_symlink() => out.push(path),
                _ => {}
            }
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
    // Kept alive for the stage's lifetime: dropping it stops the events.
    let _watcher = if config.mode != WatchMode::Poll {
        let events = tx.clone();
        let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            if let Ok(event) = res
                && (event.kind.is_create() || event.kind.is_modify())
            {
                for path in event.paths {
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
                for root in &config.roots {
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
    loop {
        if first || config.mode != WatchMode::Events {
            let roots = config.roots.clone();
            let found = tokio::task::spawn_blocking(move || {
                roots.iter().flat_map(|r| scan(r)).collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
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
