//! Helpers of the daemon's integration tests: a bundle from seeded
//! weights (bfx-export, no trainer), an ImageXpress-named acquisition of
//! 16-bit TIFFs, the test venv's Python and the daemon binary.

#![allow(dead_code)]

pub mod corpus;

use std::io::{Cursor, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Plates of the acquisition.
pub const PLATES: [&str; 2] = ["KP1", "KP2"];
/// Sites per plate.
pub const SITES: u32 = 60;
/// Channels of every site.
pub const CHANNELS: [&str; 2] = ["w1", "w2"];

pub fn python() -> PathBuf {
    let path = std::env::var_os("BFX_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python"));
    assert!(
        path.exists(),
        "the test Python {} is missing: run scripts/setup-venv.sh (scripts/test.sh runs it)",
        path.display()
    );
    path
}

/// Run `script` with the test Python and `args`; its standard output as JSON.
pub fn python_json<I, S>(script: &str, args: I) -> serde_json::Value
where
    I: IntoIterator<Item = S>,
    S: AsRef<std::ffi::OsStr>,
{
    let out = Command::new(python())
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// The records of the event journal `journal` (none while it is missing).
pub fn events(journal: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(journal)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// splitmix64 in [0, 1).
pub fn noise(seed: u64) -> impl FnMut() -> f32 {
    bfx_export::seeded::uniform(seed)
}

/// The test bundle in `dir/bundle`.
pub fn bundle(dir: &Path) -> PathBuf {
    bundle_named(dir, "bundle", 1)
}

/// A bundle in `dir/name` with weights from `seed`.
pub fn bundle_named(dir: &Path, name: &str, seed: u64) -> PathBuf {
    let (spec, preprocess) = bfx_export::seeded::resnet18_shape(&CHANNELS, 4, 32, 8, 3);
    let out = dir.join(name);
    bfx_export::seeded::write_seeded_bundle(spec, preprocess, seed, &out)
        .unwrap_or_else(|e| panic!("{e}"));
    out
}

/// ImageXpress-named 16-bit TIFFs: every site of every plate, each channel.
pub fn acquisition(dir: &Path) -> PathBuf {
    acquisition_of(dir, &PLATES, SITES)
}

/// ImageXpress name of site `s` (0-based) of `plate`: wells of a 96-well
/// plate in order, then the next site of every well.
pub fn site_file(plate: &str, s: u32, channel: &str) -> String {
    let well = s % 96;
    format!(
        "{plate}_{}{:02}_s{}_{channel}.tif",
        (b'A' + (well / 12) as u8) as char,
        well % 12 + 1,
        s / 96 + 1
    )
}

/// `sites` sites of each of `plates`, 40x40 noise per channel, in
/// `dir/acquisition/<plate>/`.
pub fn acquisition_of(dir: &Path, plates: &[&str], sites: u32) -> PathBuf {
    let root = dir.join("acquisition");
    for (p, plate) in plates.iter().enumerate() {
        for s in 0..sites {
            for (c, channel) in CHANNELS.iter().enumerate() {
                write_tiff(
                    &root.join(plate).join(site_file(plate, s, channel)),
                    40,
                    40,
                    ((p as u64 * 100_000 + u64::from(s)) << 2) + c as u64,
                );
            }
        }
    }
    root
}

pub fn start(config: &Path) -> Daemon {
    spawn(Command::new(env!("CARGO_BIN_EXE_bfx-daemon")), config)
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // /proc/self belongs to the process's effective user.
    std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").expect("/proc/self")) == 0
}

/// A temporary folder the daemon, run by [`start_unprivileged`] as
/// `nobody` under root, may write its store in.
pub fn shared_tempdir() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().expect("temp dir");
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .expect("chmod");
    tmp
}

/// Start the daemon as user and group `nobody` (65534) when the tests run
/// as root (CI does), as the systemd unit runs it as `bfx`: root would
/// read files without read permission. Everything it writes must be in a
/// folder `nobody` may write.
pub fn start_unprivileged(config: &Path) -> Daemon {
    if !is_root() {
        return start(config);
    }
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(env!("CARGO_BIN_EXE_bfx-daemon"));
    spawn(cmd, config)
}

fn spawn(mut cmd: Command, config: &Path) -> Daemon {
    let child = cmd
        .args(["run", "--config"])
        .arg(config)
        .stdout(Stdio::null())
        // BFX_TEST_DAEMON_LOG=1 shows the daemon's log when a test fails.
        .stderr(if std::env::var_os("BFX_TEST_DAEMON_LOG").is_some() {
            Stdio::inherit()
        } else {
            Stdio::null()
        })
        .spawn()
        .expect("bfx-daemon starts (setpriv, from util-linux, when run as root)");
    Daemon { child }
}

/// A running `bfx-daemon`, killed when dropped so a failing test leaves
/// no daemon behind.
pub struct Daemon {
    child: Child,
}

impl Daemon {
    /// SIGKILL and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Send `signal` (`HUP`, `TERM`, ...).
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status();
        assert!(sent.is_ok_and(|s| s.success()), "kill -{signal} failed");
    }

    /// SIGTERM, then wait (at most `within`) for the exit status.
    pub fn terminate(&mut self, within: std::time::Duration) -> Option<std::process::ExitStatus> {
        self.signal("TERM");
        let deadline = std::time::Instant::now() + within;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        None
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A 16-bit TIFF of `w` x `h` noise.
pub fn write_tiff(path: &Path, w: u32, h: u32, seed: u64) {
    let mut next = noise(seed);
    let pixels: Vec<u16> = (0..w * h).map(|_| (next() * 4000.0) as u16 + 100).collect();
    let mut bytes = Cursor::new(Vec::new());
    tiff::encoder::TiffEncoder::new(&mut bytes)
        .and_then(|mut e| e.write_image::<tiff::encoder::colortype::Gray16>(w, h, &pixels))
        .expect("tiff");
    std::fs::create_dir_all(path.parent().expect("parent")).expect("dir");
    std::fs::write(path, bytes.into_inner()).expect("write");
}

/// Rows of `plate` committed in `store`, per the group's consolidated metadata (0 if none).
pub fn committed_rows(store: &Path, plate: &str) -> u64 {
    std::fs::read(store.join(plate).join("zarr.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["consolidated_metadata"]["metadata"]["X"]["shape"][0].as_u64())
        .unwrap_or(0)
}

/// `(status code, body)` of GET `path`, or None while nothing listens.
pub fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Some((code, body))
}

/// A TCP port nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Sum of every sample of metric `name` whose labels contain `filter`
/// (e.g. `reason="unreadable"`; empty for all).
pub fn sum(metrics: &str, name: &str, filter: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name) && l.contains(filter))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
