//! The `[daemon]` table: what `bfx-daemon` watches, how it batches and
//! corrects, and where it writes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bfx_core::bundle::CorrectionMode;
use bfx_core::image::ReadLimits;
use bfx_core::naming::{NamingScheme, NamingSpec, NamingSpecError};
use serde::Deserialize;

use crate::{Invalid, at_least, resolve};

/// `[daemon]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DaemonConfig {
    /// Model bundle directory (required).
    pub bundle: PathBuf,
    /// Output Zarr store directory (required).
    pub store: PathBuf,
    /// Expected channel order; when set, a bundle with other channels is refused.
    #[serde(default)]
    pub channels: Option<Vec<String>>,
    /// Longest time a shutdown may take to drain and commit (default 30s).
    #[serde(default = "defaults::shutdown_timeout", with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// `[daemon.naming]`: how file names are read (required).
    pub naming: NamingSpec,
    /// `[daemon.watch]`: acquisition folders (required).
    pub watch: WatchConfig,
    /// `[daemon.image]`: limits against oversized and malicious files.
    #[serde(default)]
    pub image: ReadLimits,
    /// `[daemon.assemble]`: grouping files into sites.
    #[serde(default)]
    pub assemble: AssembleConfig,
    /// `[daemon.quarantine]`: what happens to files that cannot be used.
    #[serde(default)]
    pub quarantine: QuarantineConfig,
    /// `[daemon.batch]`: plate-consistent batching.
    #[serde(default)]
    pub batch: BatchConfig,
    /// `[daemon.inference]`: ONNX Runtime.
    #[serde(default)]
    pub inference: InferenceConfig,
    /// `[daemon.correction]`: batch-effect correction mode.
    #[serde(default)]
    pub correction: CorrectionConfig,
    /// `[daemon.plate]`: when a plate is complete.
    #[serde(default)]
    pub plate: PlateConfig,
    /// `[daemon.commit]`: how rows are committed to the store.
    #[serde(default)]
    pub commit: CommitConfig,
    /// `[daemon.http]`: metrics and health endpoints.
    #[serde(default)]
    pub http: HttpConfig,
}

mod defaults {
    use std::time::Duration;

    pub fn shutdown_timeout() -> Duration {
        Duration::from_secs(30)
    }
}

/// How file changes are noticed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WatchMode {
    /// inotify-style events only.
    Events,
    /// Periodic rescans only (network shares where events do not arrive).
    Poll,
    /// Both (default): events for speed, rescans so nothing is missed.
    #[default]
    Both,
}

/// `[daemon.watch]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchConfig {
    /// Acquisition root folders, watched recursively (required, at least one).
    pub roots: Vec<PathBuf>,
    /// `events`, `poll` or `both` (default `both`).
    #[serde(default)]
    pub mode: WatchMode,
    /// Time between rescans (default 10s).
    #[serde(
        default = "WatchConfig::default_poll_interval",
        with = "humantime_serde"
    )]
    pub poll_interval: Duration,
    /// A file is ready when its size and mtime have not changed for this long (default 2s).
    #[serde(default = "WatchConfig::default_settle", with = "humantime_serde")]
    pub settle: Duration,
    /// How long an unreadable file is retried after its last change before it is quarantined (default 10m).
    #[serde(
        default = "WatchConfig::default_read_deadline",
        with = "humantime_serde"
    )]
    pub read_deadline: Duration,
}

impl WatchConfig {
    fn default_poll_interval() -> Duration {
        Duration::from_secs(10)
    }
    fn default_settle() -> Duration {
        Duration::from_secs(2)
    }
    fn default_read_deadline() -> Duration {
        Duration::from_secs(600)
    }
}

/// How a site's channels are stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SiteLayout {
    /// One file per channel (default).
    #[default]
    FilePerChannel,
    /// One multi-page file per site, pages in the bundle's channel order.
    MultiPage,
}

/// `[daemon.assemble]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AssembleConfig {
    /// `file-per-channel` (default) or `multi-page`.
    pub layout: SiteLayout,
    /// A site still missing channels after this long is recorded as incomplete (default 10m).
    #[serde(with = "humantime_serde")]
    pub site_timeout: Duration,
    /// `[height, width]` in pixels of the fields the model was trained on:
    /// sites of another size (another camera binning or objective) are
    /// rejected instead of being resized to the model's input. Unset
    /// (default): any size is taken and resized or tiled.
    pub field_size: Option<[u32; 2]>,
}

impl Default for AssembleConfig {
    fn default() -> Self {
        AssembleConfig {
            layout: SiteLayout::default(),
            site_timeout: Duration::from_secs(600),
            field_size: None,
        }
    }
}

/// What to do with a file that cannot be used. Files are never deleted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QuarantineMode {
    /// Leave the file in place and record it with the reason (default).
    #[default]
    Record,
    /// Move the file into `dir`, beside a note with the reason.
    Move,
}

/// `[daemon.quarantine]`.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuarantineConfig {
    /// `record` (default) or `move`.
    pub mode: QuarantineMode,
    /// Destination folder for `move` (required then).
    pub dir: Option<PathBuf>,
}

/// `[daemon.batch]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Sites per inference batch (default 32).
    pub max_size: usize,
    /// A partial batch is flushed after waiting this long (default 2s).
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// Capacity of each bounded queue between stages, in items (default
    /// 64); the queue of model inputs holds two batches whatever this says.
    pub queue_capacity: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_size: 32,
            max_delay: Duration::from_secs(2),
            queue_capacity: 64,
        }
    }
}

/// ONNX Runtime execution provider.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExecutionProvider {
    /// CPU (default).
    #[default]
    Cpu,
    /// CUDA, falling back to CPU (loudly) when it cannot be registered.
    Cuda,
}

/// `[daemon.inference]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InferenceConfig {
    /// `cpu` (default) or `cuda`.
    pub execution_provider: ExecutionProvider,
    /// Threads ONNX Runtime uses inside one operator (default 1).
    pub intra_op_threads: usize,
    /// Let idle ONNX Runtime threads spin (default false: a service beside an instrument should idle quietly).
    pub spinning: bool,
    /// Inference first (default true): the daemon's threads other than
    /// inference run 10 nice levels lower; false runs all at one priority.
    pub first: bool,
    /// Path of `libonnxruntime.so`; searched for when unset (see README).
    pub onnxruntime_library: Option<PathBuf>,
}

impl Default for InferenceConfig {
    fn default() -> Self {
        InferenceConfig {
            execution_provider: ExecutionProvider::default(),
            intra_op_threads: 1,
            spinning: false,
            first: true,
            onnxruntime_library: None,
        }
    }
}

/// `[daemon.correction]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorrectionConfig {
    /// `none` (default), `adabn` or `ist`; the bundle must support it.
    pub mode: CorrectionMode,
    /// AdaBN: sites a plate needs before its statistics are computed (default 64).
    pub adabn_min_sites: usize,
    /// AdaBN: most sites sampled to compute a plate's statistics (default 256).
    pub adabn_sample_sites: usize,
    /// IST: reference styles per image, embeddings averaged (default 1).
    pub ist_styles: usize,
}

impl Default for CorrectionConfig {
    fn default() -> Self {
        CorrectionConfig {
            mode: CorrectionMode::None,
            adabn_min_sites: 64,
            adabn_sample_sites: 256,
            ist_styles: 1,
        }
    }
}

/// `[daemon.plate]`: a plate closes on whichever comes first.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlateConfig {
    /// File name or glob whose appearance in a plate's folder closes it.
    pub completion_marker: Option<String>,
    /// Sites per plate; the plate closes when all are embedded.
    pub expected_sites: Option<u64>,
    /// CSV listing imaged wells: column `well`, optional `plate` (rows
    /// without one apply to every plate) and `sites` (sites per well,
    /// default 1); a plate closes when all its sites are embedded.
    pub layout_csv: Option<PathBuf>,
    /// A plate with no new file for this long closes (default 30m).
    #[serde(with = "humantime_serde")]
    pub quiet_period: Duration,
}

impl Default for PlateConfig {
    fn default() -> Self {
        PlateConfig {
            completion_marker: None,
            expected_sites: None,
            layout_csv: None,
            quiet_period: Duration::from_secs(1800),
        }
    }
}

/// `[daemon.commit]`: rows are buffered and committed in groups.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CommitConfig {
    /// Commit when this many rows are buffered for a plate (default 1024).
    pub max_rows: usize,
    /// Commit buffered rows at least this often (default 5s).
    #[serde(with = "humantime_serde")]
    pub max_interval: Duration,
}

impl Default for CommitConfig {
    fn default() -> Self {
        CommitConfig {
            max_rows: 1024,
            max_interval: Duration::from_secs(5),
        }
    }
}

/// `[daemon.http]`.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of `/metrics`, `/healthz` and `/readyz` (default 127.0.0.1:9464).
    pub listen: SocketAddr,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
        }
    }
}

fn positive(key: &str, d: Duration) -> Result<(), Invalid> {
    if d.is_zero() {
        return Err(Invalid::new(key, "must be longer than 0s"));
    }
    Ok(())
}

impl DaemonConfig {
    /// Check ranges and cross-key rules.
    pub fn validate(&self) -> Result<(), Invalid> {
        if self.watch.roots.is_empty() {
            return Err(Invalid::new(
                "daemon.watch.roots",
                "must list at least one acquisition folder",
            ));
        }
        NamingScheme::new(&self.naming).map_err(|e| {
            let key = match e {
                NamingSpecError::MissingPattern | NamingSpecError::UnexpectedPattern(_) => {
                    "daemon.naming.preset"
                }
                NamingSpecError::ZeroDirLevel => "daemon.naming.plate_from_dir",
                NamingSpecError::BadRegex(_) | NamingSpecError::BadGroups(_) => {
                    "daemon.naming.pattern"
                }
            };
            Invalid::new(key, format!("is invalid: {e}"))
        })?;
        if self.channels.as_ref().is_some_and(Vec::is_empty) {
            return Err(Invalid::new(
                "daemon.channels",
                "must list at least one channel when set",
            ));
        }
        positive("daemon.shutdown_timeout", self.shutdown_timeout)?;
        positive("daemon.watch.poll_interval", self.watch.poll_interval)?;
        positive("daemon.watch.read_deadline", self.watch.read_deadline)?;
        at_least("daemon.image.max_pixels", self.image.max_pixels, 1)?;
        at_least("daemon.image.max_pages", self.image.max_pages, 1)?;
        positive("daemon.assemble.site_timeout", self.assemble.site_timeout)?;
        if let Some([h, w]) = self.assemble.field_size
            && (h == 0 || w == 0)
        {
            return Err(Invalid::new(
                "daemon.assemble.field_size",
                format!("is {h}x{w}: height and width must be at least 1 pixel"),
            ));
        }
        if self.quarantine.mode == QuarantineMode::Move && self.quarantine.dir.is_none() {
            return Err(Invalid::new(
                "daemon.quarantine.dir",
                "is required when daemon.quarantine.mode = \"move\"",
            ));
        }
        at_least("daemon.batch.max_size", self.batch.max_size, 1)?;
        positive("daemon.batch.max_delay", self.batch.max_delay)?;
        at_least("daemon.batch.queue_capacity", self.batch.queue_capacity, 1)?;
        at_least(
            "daemon.inference.intra_op_threads",
            self.inference.intra_op_threads,
            1,
        )?;
        at_least(
            "daemon.correction.adabn_min_sites",
            self.correction.adabn_min_sites,
            1,
        )?;
        at_least(
            "daemon.correction.adabn_sample_sites",
            self.correction.adabn_sample_sites,
            self.correction.adabn_min_sites,
        )
        .map_err(|i| {
            Invalid::new(
                i.key,
                format!("{} (daemon.correction.adabn_min_sites)", i.problem),
            )
        })?;
        at_least(
            "daemon.correction.ist_styles",
            self.correction.ist_styles,
            1,
        )?;
        if let Some(n) = self.plate.expected_sites {
            at_least("daemon.plate.expected_sites", n, 1)?;
        }
        positive("daemon.plate.quiet_period", self.plate.quiet_period)?;
        at_least("daemon.commit.max_rows", self.commit.max_rows, 1)?;
        positive("daemon.commit.max_interval", self.commit.max_interval)?;
        if self.shutdown_timeout < self.commit.max_interval {
            return Err(Invalid::new(
                "daemon.shutdown_timeout",
                format!(
                    "({:?}) must be at least daemon.commit.max_interval ({:?}) so a shutdown can commit",
                    self.shutdown_timeout, self.commit.max_interval
                ),
            ));
        }
        Ok(())
    }

    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        resolve(base, &mut self.bundle);
        resolve(base, &mut self.store);
        self.watch.roots.iter_mut().for_each(|r| resolve(base, r));
        for p in [
            &mut self.quarantine.dir,
            &mut self.inference.onnxruntime_library,
            &mut self.plate.layout_csv,
        ]
        .into_iter()
        .flatten()
        {
            resolve(base, p);
        }
    }
}
