//! `bfx-daemon replay`: copy an acquisition into a watched folder file by
//! file at a given rate, each written in two parts with a pause between,
//! as an instrument writes progressively. For tests, demos and benchmarks.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::pipeline::scan;

/// Copy every file under `src` (in name order) to the same place under
/// `dest`, `rate` files per second (0: as fast as possible). Returns the
/// number of files copied.
pub fn replay(
    src: &Path,
    dest: &Path,
    rate: f64,
    mut progress: impl FnMut(usize, usize),
) -> std::io::Result<usize> {
    let files = scan(src);
    let interval = if rate > 0.0 {
        Duration::from_secs_f64(1.0 / rate)
    } else {
        Duration::ZERO
    };
    let start = Instant::now();
    for (i, file) in files.iter().enumerate() {
        let rel = file.strip_prefix(src).map_err(std::io::Error::other)?;
        let target = dest.join(rel);
        if let Some(dir) = target.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let bytes = std::fs::read(file)?;
        let half = bytes.len() / 2;
        let mut out = std::fs::File::create(&target)?;
        out.write_all(&bytes[..half])?;
        out.flush()?;
        std::thread::sleep((interval / 4).min(Duration::from_millis(20)));
        out.write_all(&bytes[half..])?;
        out.sync_data()?;
        progress(i + 1, files.len());
        let due = start + interval * (i as u32 + 1);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    Ok(files.len())
}
