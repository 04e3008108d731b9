//! Stage 5, model inputs: each batch's sites preprocessed with bfx-core
//! (the function the trainer used) on the blocking pool, so the inference
//! thread runs nothing but the model (the batch arrives stacked, as the
//! graphs take it). A site that cannot be preprocessed is refused here
//! with its reason.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bfx_core::naming::SiteKey;
use bfx_core::preprocess::PreprocessSpec;
use tokio::sync::mpsc;

use super::{BatchMsg, CompleteSite};
use crate::journal::{Event, Journal};
use crate::model_input::{SiteBatch, to_array};
use crate::telemetry;

/// A site of a batch, without its pixels.
pub struct SiteInfo {
    /// The site.
    pub key: SiteKey,
    /// Its files, in the bundle's channel order.
    pub paths: Vec<PathBuf>,
    /// When its last file was written.
    pub acquired: SystemTime,
    /// When its last file was ready.
    pub ready_at: Instant,
}

/// Stage output.
pub enum InputMsg {
    /// Sites of one plate and their model inputs, in the same order.
    Batch(String, Vec<SiteInfo>, SiteBatch),
    /// A plate closed (after its last batch).
    Close(String),
    /// A plate is settled: the embed stage drops its AdaBN statistics.
    Settled(String),
}

/// The model inputs of `sites`; a site that fails is recorded and left out.
pub fn prepare(
    spec: &PreprocessSpec,
    journal: &Journal,
    sites: Vec<CompleteSite>,
) -> (Vec<SiteInfo>, SiteBatch) {
    let mut infos = Vec::with_capacity(sites.len());
    let mut inputs = Vec::with_capacity(sites.len());
    for site in sites {
        let planes: Vec<_> = site
            .files
            .iter()
            .flat_map(|(p, planes)| planes.iter().map(move |pl| (p.clone(), pl.clone())))
            .collect();
        match spec.preprocess(&planes) {
            Ok(input) => {
                inputs.push(to_array(input));
                infos.push(SiteInfo {
                    paths: site.files.into_iter().map(|(p, _)| p).collect(),
                    key: site.key,
                    acquired: site.acquired,
                    ready_at: site.ready_at,
                });
            }
            Err(e) => {
                metrics::counter!(telemetry::SITES_REJECTED).increment(1);
                metrics::counter!(telemetry::FILES_REJECTED, "reason" => "bad_site")
                    .increment(site.files.len() as u64);
                journal.record(Event::Rejected, &site.key.to_string(), &e.to_string());
            }
        }
    }
    let views: Vec<_> = inputs.iter().map(|a| a.view()).collect();
    // One spec made every input: all have its channel count and
    // geometry, so only the tile counts (the stacked axis) can differ.
    let batch = SiteBatch::stack(&views).expect("inputs of one preprocessing spec stack");
    (infos, batch)
}

/// Run until `rx` closes.
pub async fn run(
    spec: Arc<PreprocessSpec>,
    journal: Arc<Journal>,
    mut rx: mpsc::Receiver<BatchMsg>,
    tx: mpsc::Sender<InputMsg>,
) {
    while let Some(msg) = rx.recv().await {
        let out = match msg {
            BatchMsg::Batch(plate, sites) => {
                let (spec, journal) = (spec.clone(), journal.clone());
                match tokio::task::spawn_blocking(move || prepare(&spec, &journal, sites)).await {
                    Ok((infos, _)) if infos.is_empty() => continue,
                    Ok((infos, inputs)) => InputMsg::Batch(plate, infos, inputs),
                    Err(e) => {
                        // The sites stay out of the store and are tried again after a restart.
                        tracing::error!(plate, error = %e, "preprocessing crashed; the batch is not stored");
                        continue;
                    }
                }
            }
            BatchMsg::Close(plate) => InputMsg::Close(plate),
            BatchMsg::Settled(plate) => InputMsg::Settled(plate),
        };
        if tx.send(out).await.is_err() {
            return;
        }
    }
}
