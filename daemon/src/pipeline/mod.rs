//! `bfx-daemon run`: the pipeline, one tokio task per stage joined by
//! bounded channels, data flowing one way:
//!
//! watch -> ready -> assemble -> batch -> prepare -> embed -> sink
//!
//! Shutdown stops the watch stage; each stage then drains what it holds
//! into the next and ends when its input closes, so the sink commits
//! every embedded site before `run` returns. Files not yet ready and
//! sites not yet complete are simply found again after a restart, and
//! sites already in the store are skipped, so every site is stored once.

mod assemble;
mod batch;
mod embed;
mod handled;
pub mod layout;
mod prepare;
mod ready;
mod reload;
mod rescan;
mod service;
mod sink;
mod waiting;
mod watch;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use bfx_config::DaemonConfig;
use bfx_config::daemon::SiteLayout;
use bfx_core::bundle::{Bundle, BundleError, CorrectionMode};
use bfx_core::image::{Pages, Plane, ReadOptions};
use bfx_core::naming::{ImageKey, NamingScheme, SiteKey};
use thiserror::Error;
use tokio::sync::{mpsc, watch as signal};

pub use self::embed::stored_site_input;
pub use self::ready::glob;
pub use self::rescan::Rescanner;
pub use self::watch::scan;
use crate::engine::{Engine, EngineError, PlateStats};
use crate::journal::Journal;
use crate::runtime::{self, RuntimeError};
use crate::store::{PlateInfo, Reader, Row, Store, StoreError};
use crate::telemetry::{self, Health};

/// A file that is ready: decoded planes and what its name says.
pub struct ReadyFile {
    /// The file.
    pub path: PathBuf,
    /// Plate, well, site, channel.
    pub key: ImageKey,
    /// Its planes (one per channel for multi-page files).
    pub planes: Vec<Plane>,
    /// Its mtime.
    pub modified: SystemTime,
}

/// Ready stage output.
pub enum FileEvent {
    /// An image file.
    Image(ReadyFile),
    /// A plate completion marker.
    Marker(PathBuf),
    /// A plate is settled: stored complete, every row final.
    Settled(String),
}

/// A site with every channel.
pub struct CompleteSite {
    /// The site.
    pub key: SiteKey,
    /// When its last file was written.
    pub acquired: SystemTime,
    /// `(path, planes)` in the bundle's channel order.
    pub files: Vec<(PathBuf, Vec<Plane>)>,
    /// When its last file was ready (end-to-end latency starts here).
    pub ready_at: std::time::Instant,
}

/// Assemble stage output.
pub enum SiteMsg {
    /// A complete site.
    Site(CompleteSite),
    /// A plate closed.
    Close(String),
    /// A plate is settled (after the ready stage's [`FileEvent::Settled`]).
    Settled(String),
}

/// Batch stage output.
pub enum BatchMsg {
    /// Sites of one plate.
    Batch(String, Vec<CompleteSite>),
    /// A plate closed (after its last batch).
    Close(String),
    /// A plate is settled.
    Settled(String),
}

/// Embed stage output.
pub enum SinkMsg {
    /// New rows, each with the moment its site was complete, and the
    /// bundle that embedded them.
    Rows(Vec<(Row, std::time::Instant)>, PlateInfo),
    /// Final embeddings of rows stored as provisional.
    Update(Vec<(SiteKey, Vec<f32>)>),
    /// A plate's final AdaBN statistics (layer means and variances, flattened).
    Stats(String, Vec<f32>),
    /// A plate closed.
    Close(String),
}

/// Why the daemon cannot run.
#[derive(Debug, Error)]
pub enum PipelineError {
    /// ONNX Runtime did not load.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// The bundle is unusable.
    #[error("bundle: {0}")]
    Bundle(#[from] BundleError),
    /// The configuration asks what the bundle cannot do.
    #[error("{0}")]
    Config(String),
    /// The graphs did not load.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The store cannot be opened.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// A thread of the pipeline (named) did not start.
    #[error("cannot start the {0}: {1}")]
    Thread(&'static str, std::io::Error),
}

/// What a run did.
#[derive(Debug)]
pub struct RunSummary {
    /// Rows in the store at the end, per plate group.
    pub rows: HashMap<String, usize>,
    /// Where refusals were recorded.
    pub journal: PathBuf,
}

/// The AdaBN state of every stored plate not settled: final statistics,
/// or the model inputs of its provisional sites read again from their files.
fn restore_adabn(
    store: &Store,
    bundle: &Bundle,
    read: &ReadOptions,
    journal: &Journal,
) -> HashMap<String, embed::AdabnPlate> {
    let mut out = HashMap::new();
    for table in store.plates().values() {
        if table.index.is_none() {
            // Settled: the embed stage reads its statistics back if a late site comes.
            continue;
        }
        let plate = table.uns.get("plate").cloned().unwrap_or_default();
        let mut state = embed::AdabnPlate::default();
        let stats = table.uns.get("adabn_stats");
        if let Some(stats) =
            stats.and_then(|s| PlateStats::from_uns(s, &bundle.manifest.adabn_layers))
        {
            state.stats = Some(stats);
        } else {
            for row in &table.rows {
                match embed::stored_site_input(&bundle.manifest.preprocess, read, &row.paths) {
                    Ok(input) => {
                        if let Ok(key) = site_key(&row.index, &plate) {
                            state.early.push(embed::Early { key, input });
                        }
                    }
                    Err(e) => journal.record(
                        crate::journal::Event::Rejected,
                        &row.index,
                        &format!("cannot re-read a provisional site: {e}"),
                    ),
                }
            }
        }
        out.insert(plate, state);
    }
    out
}

/// The site key of a stored row (its index text), for a plate whose name may contain `/`.
fn site_key(index: &str, plate: &str) -> Result<SiteKey, String> {
    let rest = index
        .strip_prefix(plate)
        .and_then(|r| r.strip_prefix('/'))
        .ok_or("index does not start with the plate")?;
    let mut parts = rest.split('/');
    let well_text = parts.next().ok_or("no well")?;
    let well = bfx_core::naming::Well::parse(well_text, bfx_core::naming::PlateFormat::default())
        .map_err(|e| e.to_string())?;
    let site = parts.next().and_then(|s| s.parse().ok()).ok_or("no site")?;
    let (mut timepoint, mut z) = (None, None);
    for p in parts {
        if let Some(t) = p.strip_prefix('t') {
            timepoint = t.parse().ok();
        } else if let Some(v) = p.strip_prefix('z') {
            z = v.parse().ok();
        }
    }
    Ok(SiteKey {
        plate: plate.to_string(),
        well,
        site,
        timepoint,
        z,
    })
}

/// Run the daemon until `shutdown` turns true, then drain and commit.
pub async fn run(
    config: DaemonConfig,
    shutdown: signal::Receiver<bool>,
) -> Result<RunSummary, PipelineError> {
    let (_, hup) = mpsc::channel(1);
    run_reloading(config, None, shutdown, hup).await
}

/// [`run`], and on each message of `hup` read the configuration file
/// `path` again and switch new plates to its bundle (see [`reload`]).
pub async fn run_reloading(
    config: DaemonConfig,
    path: Option<PathBuf>,
    shutdown: signal::Receiver<bool>,
    hup: mpsc::Receiver<()>,
) -> Result<RunSummary, PipelineError> {
    let handle = telemetry::install();
    let health = Health::new();
    health.tick();
    let http = config.http.listen;
    let server = telemetry::serve(http, handle, health.clone(), shutdown.clone());
    tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(address = %http, error = %e, "cannot serve /metrics, /healthz, /readyz (daemon.http.listen)");
        }
    });
    let rt = runtime::init(
        config.inference.onnxruntime_library.as_deref(),
        config.inference.execution_provider,
    )?;
    let bundle = Bundle::open(&config.bundle)?;
    if let Some(channels) = &config.channels {
        bundle.check_channels(channels)?;
    }
    let mode = config.correction.mode;
    if !bundle.manifest.correction_modes.contains(&mode) {
        return Err(PipelineError::Config(format!(
            "daemon.correction.mode = {mode:?} but the bundle {} supports only {:?}",
            config.bundle.display(),
            bundle.manifest.correction_modes
        )));
    }
    let inference = config.inference.clone();
    let loading = bundle.clone();
    // ONNX Runtime's session threads start at their creator's priority.
    let engine = crate::priority::run_unlowered(move || Engine::load(rt, loading, &inference))
        .map_err(|e| PipelineError::Thread("thread that loads the model", e))??;
    let provider = format!("{:?}", engine.provider).to_lowercase();
    metrics::gauge!(telemetry::PROVIDER_INFO, "provider" => provider).set(1.0);
    let mode_name = crate::store::correction_name(mode);
    metrics::gauge!(telemetry::MODEL_INFO, "method" => bundle.manifest.method.clone(), "sha256" => bundle.sha256.clone(), "mode" => mode_name).set(1.0);
    let mut store = tokio::task::block_in_place(|| {
        Store::open(
            &config.store,
            bundle.manifest.embedding_dim,
            config.commit.max_rows,
        )
    })?;
    let journal = Arc::new(Journal::beside(&config.store));
    let multi_page = config.assemble.layout == SiteLayout::MultiPage;
    let read = ReadOptions {
        limits: config.image,
        pages: if multi_page { Pages::All } else { Pages::First },
    };

    let mut committed = HashMap::new();
    let mut settled = HashSet::new();
    let mut per_plate = HashMap::new();
    let mut pinned_elsewhere = HashMap::new();
    for table in store.plates().values() {
        let plate = table.uns.get("plate").cloned().unwrap_or_default();
        match &table.index {
            Some(index) => {
                committed.insert(plate.clone(), index.keys().copied().collect());
            }
            None => {
                settled.insert(plate.clone());
            }
        }
        per_plate.insert(plate.clone(), table.len() as u64);
        let sha = table.uns.get("bundle_sha256").cloned().unwrap_or_default();
        if !table.complete() && sha != bundle.sha256 {
            tracing::warn!(
                plate,
                bundle = sha,
                "open plate was started with another bundle; its new sites will be refused"
            );
            pinned_elsewhere.insert(plate, sha);
        }
    }
    let adabn = if mode == CorrectionMode::Adabn {
        tokio::task::block_in_place(|| restore_adabn(&store, &bundle, &read, &journal))
    } else {
        HashMap::new()
    };
    store.release_committed();
    let naming = NamingScheme::new(&config.naming)
        .map_err(|e| PipelineError::Config(format!("daemon.naming: {e}")))?;
    let marker = config
        .plate
        .completion_marker
        .as_deref()
        .map(glob)
        .transpose()
        .map_err(|e| PipelineError::Config(format!("daemon.plate.completion_marker: {e}")))?;
    let channels = bundle.manifest.preprocess.channels.clone();
    let cap = config.batch.queue_capacity;
    let (paths_tx, paths_rx) = mpsc::channel(cap);
    let (files_tx, files_rx) = mpsc::channel(cap);
    let (sites_tx, sites_rx) = mpsc::channel(cap);
    let (batches_tx, batches_rx) = mpsc::channel(cap);
    // Model inputs are the largest messages (a batch of float tensors);
    // preparing one batch ahead keeps inference busy.
    let (inputs_tx, inputs_rx) = mpsc::channel(2);
    let (rows_tx, rows_rx) = mpsc::channel(cap);

    let queues: Vec<(&'static str, service::QueueProbe)> = vec![
        ("ready", service::probe(&paths_tx)),
        ("assemble", service::probe(&files_tx)),
        ("batch", service::probe(&sites_tx)),
        ("prepare", service::probe(&batches_tx)),
        ("embed", service::probe(&inputs_tx)),
        ("sink", service::probe(&rows_tx)),
    ];
    tokio::spawn(service::health_loop(
        health.clone(),
        queues,
        shutdown.clone(),
    ));
    let sink_shutdown = shutdown.clone();
    tokio::spawn(watch::run(config.watch.clone(), paths_tx, shutdown));
    // The ready and embed stages read settled plates back from the store.
    let reader = Reader::new(store.root())?;
    let ready = ready::ReadyConfig {
        settle: config.watch.settle,
        read_deadline: config.watch.read_deadline,
        naming,
        channels: channels.clone(),
        read,
        quarantine: config.quarantine.clone(),
        marker,
        handled: handled::Handled::new(committed, settled.clone(), reader.clone()),
        pinned_elsewhere,
    };
    let (settled_tx, settled_rx) = mpsc::unbounded_channel();
    tokio::spawn(ready::run(
        ready,
        journal.clone(),
        paths_rx,
        settled_rx,
        files_tx,
    ));
    let assemble = assemble::AssembleConfig {
        channels,
        multi_page,
        site_timeout: config.assemble.site_timeout,
        field_size: config.assemble.field_size,
        expected_sites: config.plate.expected_sites,
        layout: config
            .plate
            .layout_csv
            .as_deref()
            .map(layout::Layout::read)
            .transpose()
            .map_err(|e| PipelineError::Config(format!("daemon.plate.layout_csv: {e}")))?,
        quiet_period: config.plate.quiet_period,
        committed: per_plate,
    };
    tokio::spawn(assemble::run(assemble, journal.clone(), files_rx, sites_tx));
    tokio::spawn(batch::run(
        config.batch.max_size,
        config.batch.max_delay,
        sites_rx,
        batches_tx,
    ));
    tokio::spawn(prepare::run(
        Arc::new(bundle.manifest.preprocess.clone()),
        journal.clone(),
        batches_rx,
        inputs_tx,
    ));
    let (reload_tx, reload_rx) = mpsc::channel(1);
    if let Some(path) = path {
        tokio::spawn(reload::run(
            path,
            config.clone(),
            bundle.clone(),
            hup,
            reload_tx,
        ));
    }
    let open_plates = store
        .plates()
        .values()
        .filter(|t| !t.complete())
        .filter_map(|t| {
            t.uns
                .get("plate")
                .map(|p| (p.clone(), bundle.sha256.clone()))
        })
        .collect();
    let stage = embed::EmbedStage {
        others: Vec::new(),
        plate_bundle: open_plates,
        current: bundle.sha256.clone(),
        config: embed::EmbedConfig {
            mode,
            min_sites: config.correction.adabn_min_sites,
            sample_sites: config.correction.adabn_sample_sites,
            ist_styles: config.correction.ist_styles,
        },
        engine,
        plates: adabn,
        settled: if mode == CorrectionMode::Adabn {
            settled
        } else {
            HashSet::new()
        },
        store: reader,
    };
    // Not joined: the thread ends when its input closes, before the sink's does.
    stage
        .spawn(inputs_rx, reload_rx, rows_tx)
        .map_err(|e| PipelineError::Thread("inference thread", e))?;
    let sink = sink::Sink {
        store,
        commit: config.commit.clone(),
        health: health.clone(),
        staged: Vec::new(),
        shutdown: sink_shutdown,
        settled: settled_tx,
    };
    health
        .started
        .store(true, std::sync::atomic::Ordering::Relaxed);
    service::notify(&[sd_notify::NotifyState::Ready]);
    tracing::info!(bundle = %config.bundle.display(), store = %config.store.display(), "ready");
    let store = tokio::spawn(sink.run(rows_rx))
        .await
        .map_err(|e| PipelineError::Config(format!("the sink stage failed: {e}")))?;
    Ok(RunSummary {
        rows: store
            .plates()
            .iter()
            .map(|(g, t)| (g.clone(), t.committed))
            .collect(),
        journal: journal.path().to_owned(),
    })
}
