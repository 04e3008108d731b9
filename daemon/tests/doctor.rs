//! `bfx-daemon doctor` reports every check with a fix for each failure.

use std::process::Command;

mod common;
use common::bundle;

fn doctor(config: &std::path::Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_bfx-daemon"))
        .args(["doctor", "--config"])
        .arg(config)
        .output()
        .expect("bfx-daemon runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn doctor_checks_providers_store_disk_and_inotify() {
    let tmp = tempfile::tempdir().expect("temp dir");
    bundle(tmp.path());
    std::fs::create_dir_all(tmp.path().join("incoming/P1/sub")).expect("roots");
    let config = tmp.path().join("daemon.toml");
    let write = |store: &str| {
        std::fs::write(
            &config,
            format!("[daemon]\nbundle = \"bundle\"\nstore = \"{store}\"\n[daemon.naming]\npreset = \"imagexpress\"\n[daemon.watch]\nroots = [\"incoming\"]\n"),
        )
        .expect("config");
    };
    write("out.zarr");
    let (ok, text) = doctor(&config);
    assert!(ok, "{text}");
    for name in [
        "onnxruntime",
        "watch root",
        "bundle",
        "providers",
        "store",
        "disk",
        "inotify",
    ] {
        assert!(
            text.lines()
                .any(|l| l.starts_with("ok") && l.contains(name)),
            "{name} missing:\n{text}"
        );
    }
    assert!(text.contains("available: cpu"), "{text}");
    assert!(
        text.contains("3 folder(s) to watch") || text.contains("no inotify limit"),
        "{text}"
    );

    // A store under a regular file cannot be created.
    std::fs::write(tmp.path().join("blocker"), b"a file").expect("file");
    write("blocker/out.zarr");
    let (ok, text) = doctor(&config);
    assert!(!ok, "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("FAIL") && l.contains("store"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.contains("ReadWritePaths=") && line.contains("blocker"),
        "{line}"
    );
}
