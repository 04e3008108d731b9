//! Benchmarks of `bfx-daemon`, run by `bench/daemon.sh`; each prints one
//! JSON line.
//!
//! ```text
//! daemon-bench bundle OUT
//!     a bundle of seeded weights in the demo's shape: ResNet18 width 16,
//!     channels w1-w4, 64x64, embedding 64
//! daemon-bench source SCREEN OUT SITES [PLATE_SITES]
//!     OUT/<plate>/...: SITES sites as hard links to the screen's files, in
//!     plates P<k> of PLATE_SITES sites (wells of nine sites), or with
//!     PLATE_SITES 0 (the default) as copies of the screen's own plates
//!     renamed R<k><plate>; OUT.sites lists each site's files (w1;w2;w3;w4)
//! daemon-bench raw BUNDLE SITES_LIST BATCH THREADS ROUNDS
//!     ONNX Runtime's session.run alone over the preprocessed sites, in
//!     batches of BATCH with THREADS intra-op threads: sites/s (median of ROUNDS)
//! daemon-bench rescan DIR ROUNDS
//!     the watch stage's rescan of DIR: listing every folder, and only
//!     looking at each folder's mtime when none changed (ms, median of ROUNDS)
//! daemon-bench daemon DAEMON_BIN BUNDLE SOURCE WORK BATCH THREADS ARRIVAL [PRIORITY]
//!     the daemon on an empty folder; ARRIVAL `burst` renames SOURCE's plates
//!     into it at once, a number replays them at that many sites/s. Reports
//!     throughput (sites/s between 10% and 90% committed), the latency
//!     quantiles of bfx_site_latency_seconds, and resident memory. PRIORITY
//!     `first` (the default) or `equal`: `daemon.inference.first`
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bfx_core::bundle::Bundle;
use bfx_core::image::ReadOptions;
use ndarray::{Array4, Axis, concatenate};

const CHANNELS: [&str; 4] = ["w1", "w2", "w3", "w4"];
/// The completion marker a replay writes after each plate.
const MARKER: &str = "plate.done";

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let a = |i: usize| -> anyhow::Result<&str> {
        args.get(i)
            .map(String::as_str)
            .with_context(|| format!("argument {i} is missing (see the usage in the source)"))
    };
    let n = |i: usize| -> anyhow::Result<usize> {
        let v = a(i)?;
        v.parse().with_context(|| format!("{v:?} is not a number"))
    };
    match a(0)? {
        "bundle" => bundle(Path::new(a(1)?)),
        "source" => source(
            Path::new(a(1)?),
            Path::new(a(2)?),
            n(3)?,
            a(4).map_or(Ok(0), |_| n(4))?,
        ),
        "raw" => raw(Path::new(a(1)?), Path::new(a(2)?), n(3)?, n(4)?, n(5)?),
        "rescan" => rescan(Path::new(a(1)?), n(2)?),
        "daemon" => daemon(
            Path::new(a(1)?),
            Path::new(a(2)?),
            Path::new(a(3)?),
            Path::new(a(4)?),
            n(5)?,
            n(6)?,
            a(7)?,
            match a(8).unwrap_or("first") {
                "first" => true,
                "equal" => false,
                other => bail!("priority {other:?}: first or equal"),
            },
        ),
        other => bail!("unknown benchmark {other:?} (bundle, source, raw, rescan, daemon)"),
    }
}

fn bundle(out: &Path) -> anyhow::Result<()> {
    let (spec, preprocess) = bfx_export::seeded::resnet18_shape(&CHANNELS, 16, 64, 64, 8);
    if out.exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("{}", out.display()))?;
    }
    bfx_export::seeded::write_seeded_bundle(spec, preprocess, 7, out)?;
    Ok(())
}

/// Every `*_w1.tif` under `dir`, sorted.
fn first_channel_files(dir: &Path) -> Vec<PathBuf> {
    bfx_daemon::pipeline::scan(dir)
        .into_iter()
        .filter(|p| p.to_string_lossy().ends_with("_w1.tif"))
        .collect()
}

/// `sites` sites from the screen's, as hard links under OUT: with
/// `plate_sites` 0 as copies of the screen's own plates (renamed
/// R<k><plate>), else as plates P<k> of `plate_sites` sites each, in wells
/// A01, A02, ... of nine sites, like a 384-well plate imaged at 3x3 fields.
fn source(screen: &Path, out: &Path, sites: usize, plate_sites: usize) -> anyhow::Result<()> {
    if out.exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("{}", out.display()))?;
    }
    let mut plates: Vec<PathBuf> = std::fs::read_dir(screen)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    plates.sort();
    anyhow::ensure!(!plates.is_empty(), "{}: no plate folders", screen.display());
    // (plate folder name, the w1 file of each of its sites)
    let screen_sites: Vec<(String, Vec<PathBuf>)> = plates
        .iter()
        .map(|p| {
            let name = p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            (name, first_channel_files(p))
        })
        .collect();
    let mut list = String::new();
    let mut count = 0;
    let mut link = |w1: &Path, dir: &Path, name: &dyn Fn(&str) -> String| -> anyhow::Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut paths = Vec::new();
        for c in CHANNELS {
            let file = w1
                .to_string_lossy()
                .replace("_w1.tif", &format!("_{c}.tif"));
            let target = dir.join(name(c));
            std::fs::hard_link(&file, &target)
                .with_context(|| format!("link {file} -> {}", target.display()))?;
            paths.push(target.display().to_string());
        }
        list.push_str(&paths.join(";"));
        list.push('\n');
        Ok(())
    };
    'copies: for copy in 0.. {
        for (name, w1s) in &screen_sites {
            for w1 in w1s {
                if count == sites {
                    break 'copies;
                }
                if let Some(plate) = count.checked_div(plate_sites) {
                    let plate = format!("P{plate:02}");
                    let i = count % plate_sites;
                    let (well, site) = (i / 9, i % 9 + 1);
                    let row = (b'A' + (well / 24 % 16) as u8) as char;
                    let column = well % 24 + 1;
                    link(w1, &out.join(&plate), &|c| {
                        format!("{plate}_{row}{column:02}_s{site}_{c}.tif")
                    })?;
                } else {
                    let new = format!("R{copy}{name}");
                    let file = w1.file_name().context("file")?.to_string_lossy();
                    link(w1, &out.join(&new), &|c| {
                        file.replacen(name.as_str(), &new, 1)
                            .replace("_w1.tif", &format!("_{c}.tif"))
                    })?;
                }
                count += 1;
            }
        }
    }
    std::fs::write(out.with_extension("sites"), list)?;
    Ok(())
}

fn raw(
    bundle: &Path,
    list: &Path,
    batch: usize,
    threads: usize,
    rounds: usize,
) -> anyhow::Result<()> {
    let bundle = Bundle::open(bundle)?;
    let spec = &bundle.manifest.preprocess;
    let text = std::fs::read_to_string(list).with_context(|| format!("{}", list.display()))?;
    let sites: Vec<Array4<f32>> = text
        .lines()
        .map(|l| bfx_daemon::pipeline::stored_site_input(spec, &ReadOptions::default(), l))
        .collect::<Result<_, _>>()
        .map_err(anyhow::Error::msg)?;
    let batches: Vec<Array4<f32>> = sites
        .chunks(batch)
        .map(|c| concatenate(Axis(0), &c.iter().map(|s| s.view()).collect::<Vec<_>>()))
        .collect::<Result<_, _>>()?;
    let rt = bfx_daemon::runtime::init(None, Default::default())?;
    let mut session = rt.session(
        &bundle.dir.join(&bundle.manifest.graphs.predictor),
        threads,
        false,
    )?;
    let mut rates = Vec::new();
    for _ in 0..rounds {
        let mut busy = Duration::ZERO;
        for b in &batches {
            // The tensor is made outside the timed span: only session.run counts.
            let input = ort::value::Tensor::from_array(b.clone())?.into_dyn();
            let t = Instant::now();
            let out = session.run(vec![("image".to_string(), input)])?;
            busy += t.elapsed();
            drop(out);
        }
        rates.push(sites.len() as f64 / busy.as_secs_f64());
    }
    println!(
        "{}",
        serde_json::json!({"bench": "raw", "sites": sites.len(), "batch": batch, "threads": threads,
                           "sites_per_s": bfx_bench::median(rates)})
    );
    Ok(())
}

fn rescan(dir: &Path, rounds: usize) -> anyhow::Result<()> {
    use bfx_daemon::pipeline::Rescanner;
    let dir = std::path::absolute(dir)?;
    // Folders written in the last seconds are listed by every rescan
    // until their mtimes are old enough to trust.
    std::thread::sleep(Duration::from_secs(4));
    let time = |r: &mut Rescanner| {
        let t = Instant::now();
        let found = r.rescan();
        (t.elapsed().as_secs_f64() * 1e3, found)
    };
    let (mut full, mut unchanged) = (Vec::new(), Vec::new());
    let (mut files, mut folders) = (0, 0);
    for _ in 0..rounds {
        let (ms, found) = time(&mut Rescanner::new(vec![dir.clone()], Duration::ZERO));
        (files, folders) = (found.files.len(), found.listed);
        full.push(ms);
        let mut r = Rescanner::new(vec![dir.clone()], Duration::from_secs(3600));
        r.rescan();
        let (ms, found) = time(&mut r);
        anyhow::ensure!(
            found.listed == 0,
            "{} folders changed while the rescans were timed",
            found.listed
        );
        unchanged.push(ms);
    }
    println!(
        "{}",
        serde_json::json!({"bench": "rescan", "files": files, "folders": folders,
                           "full_ms": bfx_bench::median(full), "unchanged_ms": bfx_bench::median(unchanged)})
    );
    Ok(())
}

/// Body of GET `path` on 127.0.0.1:`port`, or None while nothing answers.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((
        code,
        text.split("\r\n\r\n").nth(1).unwrap_or("").to_string(),
    ))
}

/// Sum of the samples of `name` whose labels contain `filter`.
fn sample(metrics: &str, name: &str, filter: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| {
            !l.starts_with('#') && l.split(['{', ' ']).next() == Some(name) && l.contains(filter)
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Quantile `q` of Prometheus histogram `name`, interpolated within its
/// bucket as PromQL's histogram_quantile does.
fn histogram_quantile(metrics: &str, name: &str, q: f64) -> f64 {
    let bucket = format!("{name}_bucket{{le=\"");
    let mut buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&bucket)?;
            let (le, count) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, count.trim().parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let Some(&(_, total)) = buckets.last() else {
        return f64::NAN;
    };
    let rank = q * total;
    let mut lower = (0.0, 0.0);
    for &(le, count) in &buckets {
        if count >= rank {
            if le.is_infinite() {
                return lower.0;
            }
            let within = (rank - lower.1) / (count - lower.1).max(f64::MIN_POSITIVE);
            return lower.0 + (le - lower.0) * within;
        }
        lower = (le, count);
    }
    f64::NAN
}

fn status_mib(pid: u32, field: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

struct Stop(Child);

impl Drop for Stop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[allow(clippy::too_many_arguments)]
fn daemon(
    bin: &Path,
    bundle: &Path,
    source: &Path,
    work: &Path,
    batch: usize,
    threads: usize,
    arrival: &str,
    first: bool,
) -> anyhow::Result<()> {
    let sites = std::fs::read_to_string(source.with_extension("sites"))?
        .lines()
        .count();
    if work.exists() {
        std::fs::remove_dir_all(work)?;
    }
    let incoming = work.join("incoming");
    std::fs::create_dir_all(&incoming)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config = work.join("daemon.toml");
    // Defaults but for the settle time (the synthetic files are written
    // whole), the batch, threads and priorities under test, and a completion marker
    // (replays write one after each plate, as instruments do). Commits
    // keep their default size: the rate between two polls that each follow
    // a commit counts exactly the rows committed in between, however large
    // commits are.
    std::fs::write(
        &config,
        format!(
            "[daemon]\nbundle = {:?}\nstore = \"out.zarr\"\n[daemon.naming]\npreset = \"imagexpress\"\n\
             [daemon.watch]\nroots = [\"incoming\"]\nsettle = \"200ms\"\n\
             [daemon.plate]\ncompletion_marker = {MARKER:?}\n\
             [daemon.batch]\nmax_size = {batch}\n[daemon.inference]\nintra_op_threads = {threads}\nfirst = {first}\n\
             [daemon.http]\nlisten = \"127.0.0.1:{port}\"\n",
            std::fs::canonicalize(bundle)?
        ),
    )?;
    let log = std::fs::File::create(work.join("daemon.log"))?;
    let child = Command::new(bin)
        .args(["run", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
    let pid = child.id();
    let mut child = Stop(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    while get(port, "/readyz").map(|r| r.0) != Some(200) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the daemon did not get ready; see {}",
            work.join("daemon.log").display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let idle_rss = status_mib(pid, "VmRSS:");
    let mut plates: Vec<PathBuf> = std::fs::read_dir(source)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    plates.sort();
    let plate_count = plates.len();
    let start = Instant::now();
    let feeder = if arrival == "burst" {
        for p in &plates {
            std::fs::rename(p, incoming.join(p.file_name().context("plate")?))?;
        }
        None
    } else {
        let rate: f64 = arrival
            .parse()
            .with_context(|| format!("arrival {arrival:?}: burst or sites/s"))?;
        let incoming = incoming.clone();
        Some(std::thread::spawn(move || -> std::io::Result<()> {
            for p in &plates {
                let name = p.file_name().unwrap_or_default();
                bfx_daemon::replay::replay(
                    p,
                    &incoming.join(name),
                    rate * CHANNELS.len() as f64,
                    |_, _| {},
                )?;
                std::fs::write(incoming.join(name).join(MARKER), b"")?;
            }
            Ok(())
        }))
    };
    // (seconds, sites committed, resident MiB)
    let mut trace: Vec<(f64, f64, f64)> = Vec::new();
    let mut remembered_peak: f64 = 0.0;
    let limit = Instant::now() + Duration::from_secs(3600);
    loop {
        let metrics = get(port, "/metrics").map(|r| r.1).unwrap_or_default();
        let done = sample(&metrics, "bfx_sites_embedded_total", "");
        remembered_peak = remembered_peak.max(sample(&metrics, "bfx_remembered_entries", ""));
        trace.push((
            start.elapsed().as_secs_f64(),
            done,
            status_mib(pid, "VmRSS:"),
        ));
        if done >= sites as f64 {
            break;
        }
        anyhow::ensure!(
            Instant::now() < limit,
            "{done} of {sites} sites after an hour"
        );
        anyhow::ensure!(
            child.0.try_wait()?.is_none(),
            "the daemon exited; see {}",
            work.join("daemon.log").display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let replayed = feeder.is_some();
    if let Some(f) = feeder {
        f.join().map_err(|_| anyhow::anyhow!("replay panicked"))??;
    }
    let mut metrics = get(port, "/metrics").map(|r| r.1).unwrap_or_default();
    // Every replayed plate got its marker: what the stages remember once
    // all are settled (stored complete).
    let settle_by = Instant::now() + Duration::from_secs(60);
    while replayed
        && (sample(&metrics, "bfx_open_plates", "") > 0.0
            || sample(&metrics, "bfx_remembered_entries", "stage=\"store\"") > 0.0)
        && Instant::now() < settle_by
    {
        std::thread::sleep(Duration::from_millis(100));
        metrics = get(port, "/metrics").map(|r| r.1).unwrap_or_default();
    }
    let remembered = |stage: &str| {
        sample(
            &metrics,
            "bfx_remembered_entries",
            &format!("stage=\"{stage}\""),
        )
    };
    let peak = status_mib(pid, "VmHWM:");
    let at = |share: f64| {
        trace
            .iter()
            .find(|t| t.1 >= share * sites as f64)
            .copied()
            .unwrap_or((f64::NAN, 0.0, f64::NAN))
    };
    let (t10, n10, _) = at(0.1);
    let (t90, n90, _) = at(0.9);
    let rss = |share: f64| at(share).2;
    let latency = "bfx_site_latency_seconds";
    println!(
        "{}",
        serde_json::json!({
            "bench": "daemon", "arrival": arrival, "sites": sites, "plates": plate_count,
            "batch": batch, "threads": threads, "first": first,
            "seconds": trace.last().map(|t| t.0),
            "sites_per_s": (n90 - n10) / (t90 - t10),
            "latency_p50_s": histogram_quantile(&metrics, latency, 0.5),
            "latency_p99_s": histogram_quantile(&metrics, latency, 0.99),
            "commit_s": sample(&metrics, "bfx_commit_seconds_sum", ""),
            "commits": sample(&metrics, "bfx_commit_seconds_count", ""),
            "inference_s": sample(&metrics, "bfx_inference_seconds_sum", ""),
            "rss_idle_mib": idle_rss, "rss_quarter_mib": rss(0.25), "rss_half_mib": rss(0.5),
            "rss_three_quarters_mib": rss(0.75), "rss_end_mib": rss(1.0), "peak_rss_mib": peak,
            "remembered_peak": remembered_peak,
            "remembered_settled": {
                "ready": remembered("ready"), "assemble": remembered("assemble"),
                "store": remembered("store"),
            },
        })
    );
    drop(child);
    Ok(())
}
