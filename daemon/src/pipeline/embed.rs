//! Stage 6, inference: embed batches of model inputs in the configured
//! correction mode.
//!
//! AdaBN: until a plate has `min_sites` sites its rows are provisional,
//! embedded with the statistics of what has arrived. Then the plate's
//! statistics are computed once from a sample of up to `sample_sites`
//! sites (the ones with the smallest key digests, so the sample does not
//! depend on arrival order), every earlier site is embedded again with
//! them, and from then on every site of the plate is final at once. A
//! plate that closes first is finalized with what it has. Once a plate is
//! settled its statistics leave memory; a late site reads them back from
//! the store.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::Instant;

use bfx_core::bundle::CorrectionMode;
use bfx_core::image::ReadOptions;
use bfx_core::naming::SiteKey;
use bfx_core::preprocess::{PreprocessSpec, SiteFiles};
use ndarray::{Array2, Array4};
use tokio::sync::mpsc;

use super::SinkMsg;
use super::prepare::{InputMsg, SiteInfo};
use crate::engine::{Engine, EngineError, PlateStats};
use crate::model_input::{SiteBatch, to_array};
use crate::store::{PlateInfo, Reader, Row, RowStatus};
use crate::telemetry;

/// What the stage needs to know.
pub struct EmbedConfig {
    /// Correction mode.
    pub mode: CorrectionMode,
    /// AdaBN: sites before a plate's statistics are final.
    pub min_sites: usize,
    /// AdaBN: most sites in the statistics sample.
    pub sample_sites: usize,
    /// IST: styles per image.
    pub ist_styles: usize,
}

/// A site embedded before its plate's statistics were final.
pub struct Early {
    /// The site.
    pub key: SiteKey,
    /// Its model input.
    pub input: Array4<f32>,
}

/// AdaBN state of one plate.
#[derive(Default)]
pub struct AdabnPlate {
    /// Final statistics, once computed.
    pub stats: Option<PlateStats>,
    /// Sites seen before that.
    pub early: Vec<Early>,
}

/// A stored site's model input again, from its files (restart of a provisional plate).
pub fn stored_site_input(
    spec: &PreprocessSpec,
    read: &ReadOptions,
    paths: &str,
) -> Result<Array4<f32>, String> {
    let paths: Vec<PathBuf> = paths.split(';').map(PathBuf::from).collect();
    let files = if paths.len() == 1 && spec.channels.len() > 1 {
        SiteFiles::MultiPage(paths[0].clone())
    } else {
        SiteFiles::PerChannel(spec.channels.iter().cloned().zip(paths).collect())
    };
    spec.load_site(&files, read)
        .map(to_array)
        .map_err(|e| e.to_string())
}

/// Early sites' inputs as one batch.
fn stack<'a>(early: impl Iterator<Item = &'a Early>) -> Result<SiteBatch, EngineError> {
    let views: Vec<_> = early.map(|e| e.input.view()).collect();
    SiteBatch::stack(&views).map_err(|e| EngineError::Run(e.to_string()))
}

fn digest(key: &SiteKey) -> String {
    bfx_core::bundle::hex_sha256(key.to_string().as_bytes())
}

/// The stage.
pub struct EmbedStage {
    /// Settings.
    pub config: EmbedConfig,
    /// The sessions of the bundle the plate being processed uses.
    pub engine: Engine,
    /// Bundles loaded by reloads (and the start-up one while another is
    /// swapped in): a plate keeps the bundle it started with.
    pub others: Vec<Engine>,
    /// The bundle (manifest sha256) each plate started with.
    pub plate_bundle: HashMap<String, String>,
    /// The bundle new plates start with.
    pub current: String,
    /// AdaBN plates (restored from the store at start-up).
    pub plates: HashMap<String, AdabnPlate>,
    /// AdaBN plates settled, whose statistics are in the store only.
    pub settled: HashSet<String>,
    /// The store, for those statistics.
    pub store: Reader,
}

impl EmbedStage {
    /// Run until `rx` closes, on the calling thread. Inference blocks, so
    /// the stage has an OS thread of its own ([`EmbedStage::spawn`]):
    /// it never waits behind the runtime's tasks, and they never wait
    /// behind a batch.
    pub fn run(
        mut self,
        mut rx: mpsc::Receiver<InputMsg>,
        mut reloads: mpsc::Receiver<Engine>,
        tx: mpsc::Sender<SinkMsg>,
    ) {
        while let Some(msg) = rx.blocking_recv() {
            // A reload applies to plates that start after it; checking
            // before each message is soon enough.
            while let Ok(engine) = reloads.try_recv() {
                self.current = engine.bundle().sha256.clone();
                tracing::info!(bundle = %self.current, "new plates use the reloaded bundle; open plates keep theirs");
                self.others.push(engine);
            }
            let out = match msg {
                InputMsg::Batch(plate, sites, inputs) => {
                    self.with_plate_engine(&plate, |s| s.batch(&plate, sites, inputs))
                }
                InputMsg::Close(plate) => {
                    let mut out = self.with_plate_engine(&plate, |s| s.finalize(&plate));
                    out.push(SinkMsg::Close(plate));
                    out
                }
                InputMsg::Settled(plate) => {
                    self.forget(plate);
                    Vec::new()
                }
            };
            for m in out {
                if tx.blocking_send(m).is_err() {
                    return;
                }
            }
        }
    }

    /// [`EmbedStage::run`] on a thread of its own, named `bfx-inference`.
    pub fn spawn(
        self,
        rx: mpsc::Receiver<InputMsg>,
        reloads: mpsc::Receiver<Engine>,
        tx: mpsc::Sender<SinkMsg>,
    ) -> std::io::Result<std::thread::JoinHandle<()>> {
        crate::priority::spawn_unlowered("bfx-inference", move || self.run(rx, reloads, tx))
    }

    /// Run `f` with `self.engine` being the bundle `plate` started with
    /// (new plates start with the current one).
    fn with_plate_engine<R>(&mut self, plate: &str, f: impl FnOnce(&mut Self) -> R) -> R {
        let sha = self
            .plate_bundle
            .entry(plate.to_string())
            .or_insert_with(|| self.current.clone())
            .clone();
        if self.engine.bundle().sha256 != sha
            && let Some(i) = self.others.iter().position(|e| e.bundle().sha256 == sha)
        {
            std::mem::swap(&mut self.engine, &mut self.others[i]);
        }
        f(self)
    }

    /// Who embedded a plate's rows.
    fn info(&self) -> PlateInfo {
        PlateInfo {
            bundle_sha256: self.engine.bundle().sha256.clone(),
            method: self.engine.bundle().manifest.method.clone(),
            correction: self.config.mode,
        }
    }

    fn fail(&self, plate: &str, e: EngineError) -> Vec<SinkMsg> {
        // The sites stay out of the store and are tried again after a restart.
        tracing::error!(plate, error = %e, "inference failed; the batch is not stored");
        Vec::new()
    }

    fn batch(&mut self, plate: &str, sites: Vec<SiteInfo>, inputs: SiteBatch) -> Vec<SinkMsg> {
        let started = Instant::now();
        let mode = self.config.mode;
        let result = match mode {
            CorrectionMode::Adabn => self.adabn(plate, &sites, inputs),
            CorrectionMode::Ist => {
                let keys: Vec<String> = sites.iter().map(|i| i.key.to_string()).collect();
                self.engine
                    .embed_ist(&inputs, &keys, self.config.ist_styles)
                    .map(|e| (e, RowStatus::Final, Vec::new()))
            }
            CorrectionMode::None => self
                .engine
                .embed(inputs)
                .map(|e| (e, RowStatus::Final, Vec::new())),
        };
        let (embeddings, status, mut before) = match result {
            Ok(r) => r,
            Err(e) => return self.fail(plate, e),
        };
        metrics::counter!(telemetry::BATCHES).increment(1);
        metrics::histogram!(telemetry::BATCH_SIZE).record(sites.len() as f64);
        metrics::histogram!(telemetry::INFERENCE_SECONDS).record(started.elapsed().as_secs_f64());
        let rows = sites
            .into_iter()
            .zip(embeddings.rows())
            .map(|(i, e)| {
                let row = Row {
                    key: i.key,
                    paths: i.paths,
                    acquired: i.acquired,
                    correction: mode,
                    status,
                    embedding: e.to_vec(),
                };
                (row, i.ready_at)
            })
            .collect();
        before.push(SinkMsg::Rows(rows, self.info()));
        // Updates of earlier rows follow the new rows (they may be in the same commit).
        before.rotate_right(1);
        before
    }

    /// Embeddings of `inputs` under AdaBN, their status, and messages the
    /// finalization of the plate produced (statistics, updates).
    fn adabn(
        &mut self,
        plate: &str,
        sites: &[SiteInfo],
        inputs: SiteBatch,
    ) -> Result<(Array2<f32>, RowStatus, Vec<SinkMsg>), EngineError> {
        if self.settled.contains(plate) && !self.plates.contains_key(plate) {
            self.restore(plate)?;
        }
        let state = self.plates.entry(plate.to_string()).or_default();
        if let Some(stats) = &state.stats {
            return Ok((
                self.engine.embed_with(inputs, stats)?,
                RowStatus::Final,
                Vec::new(),
            ));
        }
        let already = state.early.len();
        state
            .early
            .extend(sites.iter().zip(inputs.sites()).map(|(i, input)| Early {
                key: i.key.clone(),
                input: input.to_owned(),
            }));
        if state.early.len() >= self.config.min_sites {
            let stats = self.sample_stats(plate)?;
            let mut msgs = self.update_early(plate, &stats, already)?;
            let embeddings = self.engine.embed_with(inputs, &stats)?;
            msgs.insert(0, SinkMsg::Stats(plate.to_string(), stats.flatten()));
            let state = self.plates.entry(plate.to_string()).or_default();
            state.early.clear();
            state.stats = Some(stats);
            return Ok((embeddings, RowStatus::Final, msgs));
        }
        let early = stack(state.early.iter())?;
        let stats = self.engine.plate_stats(early)?;
        Ok((
            self.engine.embed_with(inputs, &stats)?,
            RowStatus::Provisional,
            Vec::new(),
        ))
    }

    /// A settled plate's statistics leave memory (tens of kilobytes a
    /// plate, for every plate a daemon running for weeks embeds).
    fn forget(&mut self, plate: String) {
        if self.config.mode != CorrectionMode::Adabn {
            return;
        }
        if self
            .plates
            .get(&plate)
            .is_some_and(|s| s.stats.is_some() && s.early.is_empty())
        {
            self.plates.remove(&plate);
        }
        self.settled.insert(plate);
    }

    /// A settled plate's final statistics, read back from the store for a
    /// late site.
    fn restore(&mut self, plate: &str) -> Result<(), EngineError> {
        let layers = &self.engine.bundle().manifest.adabn_layers;
        let stats = self
            .store
            .uns(plate, "adabn_stats")
            .map_err(|e| EngineError::Run(e.to_string()))?;
        let stats = PlateStats::from_uns(&stats, layers).ok_or_else(|| {
            EngineError::Run(format!(
                "plate {plate}: the store's uns.adabn_stats do not fit the bundle's BatchNorm layers"
            ))
        })?;
        self.settled.remove(plate);
        self.plates.insert(
            plate.to_string(),
            AdabnPlate {
                stats: Some(stats),
                early: Vec::new(),
            },
        );
        Ok(())
    }

    /// The plate's statistics from its sample of early sites.
    fn sample_stats(&mut self, plate: &str) -> Result<PlateStats, EngineError> {
        let state = self.plates.entry(plate.to_string()).or_default();
        let mut order: Vec<(String, usize)> = state
            .early
            .iter()
            .enumerate()
            .map(|(i, e)| (digest(&e.key), i))
            .collect();
        order.sort();
        let sample = stack(
            order
                .iter()
                .take(self.config.sample_sites)
                .map(|(_, i)| &state.early[*i]),
        )?;
        self.engine.plate_stats(sample)
    }

    /// Final embeddings of the first `count` early sites (already stored as provisional).
    fn update_early(
        &mut self,
        plate: &str,
        stats: &PlateStats,
        count: usize,
    ) -> Result<Vec<SinkMsg>, EngineError> {
        let state = self.plates.entry(plate.to_string()).or_default();
        if count == 0 {
            return Ok(Vec::new());
        }
        let mut updates = Vec::new();
        for chunk in state.early[..count].chunks(64) {
            let e = self.engine.embed_with(stack(chunk.iter())?, stats)?;
            updates.extend(
                chunk
                    .iter()
                    .map(|early| early.key.clone())
                    .zip(e.rows().into_iter().map(|r| r.to_vec())),
            );
        }
        Ok(vec![SinkMsg::Update(updates)])
    }

    /// A closing plate whose statistics are not final yet gets them from what it has.
    fn finalize(&mut self, plate: &str) -> Vec<SinkMsg> {
        if self.config.mode != CorrectionMode::Adabn {
            return Vec::new();
        }
        let state = self.plates.entry(plate.to_string()).or_default();
        if state.stats.is_some() || state.early.is_empty() {
            return Vec::new();
        }
        let count = state.early.len();
        let result = self.sample_stats(plate).and_then(|stats| {
            let mut msgs = self.update_early(plate, &stats, count)?;
            msgs.insert(0, SinkMsg::Stats(plate.to_string(), stats.flatten()));
            let state = self.plates.entry(plate.to_string()).or_default();
            state.early.clear();
            state.stats = Some(stats);
            Ok(msgs)
        });
        result.unwrap_or_else(|e| self.fail(plate, e))
    }
}
