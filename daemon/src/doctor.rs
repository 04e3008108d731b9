//! `bfx-daemon doctor`: everything `check-config` checks, plus what goes
//! wrong on a real machine after weeks: which execution providers work,
//! whether the store can be written, free disk space, and whether the
//! inotify watch limit covers the acquisition folders.

use std::path::Path;

use bfx_config::DaemonConfig;
use bfx_config::daemon::ExecutionProvider;

use crate::check::{Check, check_config};
use crate::runtime;

/// Below this much free space the store check fails (1 GiB).
pub const MIN_FREE_BYTES: u64 = 1 << 30;

/// Every check, in order.
pub fn doctor(config: &DaemonConfig) -> Vec<Check> {
    let mut checks = check_config(config, false);
    checks.push(providers(config));
    checks.push(store_writable(&config.store));
    checks.push(disk_space(&config.store));
    checks.push(inotify(&config.watch.roots));
    checks
}

fn check(name: &'static str, ok: bool, detail: String) -> Check {
    Check { name, ok, detail }
}

fn providers(config: &DaemonConfig) -> Check {
    let provider = config.inference.execution_provider;
    match runtime::init(config.inference.onnxruntime_library.as_deref(), provider) {
        Err(e) => check("providers", false, e.to_string()),
        Ok(rt) => {
            let cuda = rt.cuda_available();
            let list = if cuda { "cpu, cuda" } else { "cpu" };
            if provider == ExecutionProvider::Cuda && !cuda {
                check(
                    "providers",
                    false,
                    format!(
                        "available: {list}; cuda is configured but this ONNX Runtime has no CUDA provider: fetch the GPU build (scripts/fetch-onnxruntime.sh --gpu) or set daemon.inference.execution_provider = \"cpu\""
                    ),
                )
            } else {
                check("providers", true, format!("available: {list}"))
            }
        }
    }
}

/// The store folder (or the folder it will be created in) takes a file.
fn store_writable(store: &Path) -> Check {
    let dir = if store.exists() {
        store.to_owned()
    } else {
        store.parent().map(Path::to_owned).unwrap_or_default()
    };
    let probe = dir.join(format!(".bfx-doctor-{}", std::process::id()));
    match std::fs::write(&probe, b"probe").and_then(|_| std::fs::remove_file(&probe)) {
        Ok(()) => check("store", true, format!("{} is writable", dir.display())),
        Err(e) => check(
            "store",
            false,
            format!(
                "{}: {e}; give the service user write access (systemd: ReadWritePaths=) or change daemon.store",
                dir.display()
            ),
        ),
    }
}

fn disk_space(store: &Path) -> Check {
    let dir = store
        .ancestors()
        .find(|p| p.exists())
        .unwrap_or(Path::new("/"));
    match fs4::available_space(dir) {
        Ok(free) if free >= MIN_FREE_BYTES => check(
            "disk",
            true,
            format!(
                "{:.1} GiB free at {}",
                free as f64 / f64::from(1 << 30),
                dir.display()
            ),
        ),
        Ok(free) => check(
            "disk",
            false,
            format!(
                "only {:.2} GiB free at {}; the store stops committing when the disk is full (sites stay pending): free space or move daemon.store",
                free as f64 / f64::from(1 << 30),
                dir.display()
            ),
        ),
        Err(e) => check(
            "disk",
            false,
            format!("{}: cannot read free space: {e}", dir.display()),
        ),
    }
}

/// Folders under the roots against the inotify watch limit (one watch per folder).
fn inotify(roots: &[std::path::PathBuf]) -> Check {
    let limit_file = Path::new("/proc/sys/fs/inotify/max_user_watches");
    let Some(limit) = std::fs::read_to_string(limit_file)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
    else {
        return check(
            "inotify",
            true,
            "no inotify limit to read here; the daemon relies on rescans".into(),
        );
    };
    let mut dirs = 0u64;
    let mut stack: Vec<std::path::PathBuf> = roots.to_vec();
    while let Some(d) = stack.pop() {
        dirs += 1;
        if let Ok(entries) = std::fs::read_dir(&d) {
            stack.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    if dirs * 2 <= limit {
        check(
            "inotify",
            true,
            format!("{dirs} folder(s) to watch, limit {limit}"),
        )
    } else {
        check(
            "inotify",
            false,
            format!(
                "{dirs} folder(s) to watch but fs.inotify.max_user_watches is {limit}: raise it (sysctl -w fs.inotify.max_user_watches={}) or set daemon.watch.mode = \"poll\"",
                dirs * 4
            ),
        )
    }
}
