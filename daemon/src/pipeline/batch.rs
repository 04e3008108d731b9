//! Stage 4, plate-consistent batching: complete sites wait per plate until
//! `max_size` of them are there or the oldest has waited `max_delay`. A
//! batch never mixes plates; a closing plate's sites are flushed before
//! its close goes on.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{BatchMsg, CompleteSite, SiteMsg};

/// Run until `rx` closes, then flush everything.
pub async fn run(
    max_size: usize,
    max_delay: Duration,
    mut rx: mpsc::Receiver<SiteMsg>,
    tx: mpsc::Sender<BatchMsg>,
) {
    let mut waiting: HashMap<String, (Instant, Vec<CompleteSite>)> = HashMap::new();
    let tick = (max_delay / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let mut interval = tokio::time::interval(tick);
    loop {
        let mut out = Vec::new();
        tokio::select! {
            msg = rx.recv() => match msg {
                Some(SiteMsg::Site(site)) => {
                    let plate = site.key.plate.clone();
                    let entry = waiting.entry(plate.clone()).or_insert_with(|| (Instant::now(), Vec::new()));
                    entry.1.push(site);
                    if entry.1.len() >= max_size
                        && let Some((_, sites)) = waiting.remove(&plate)
                    {
                        out.push(BatchMsg::Batch(plate, sites));
                    }
                }
                Some(SiteMsg::Close(plate)) => {
                    if let Some((_, sites)) = waiting.remove(&plate) {
                        out.push(BatchMsg::Batch(plate.clone(), sites));
                    }
                    out.push(BatchMsg::Close(plate));
                }
                // Late sites of the plate still waiting go on as they are.
                Some(SiteMsg::Settled(plate)) => out.push(BatchMsg::Settled(plate)),
                None => {
                    // Shutdown drains: every waiting site is embedded and committed.
                    for (plate, (_, sites)) in waiting.drain() {
                        if tx.send(BatchMsg::Batch(plate, sites)).await.is_err() {
                            return;
                        }
                    }
                    return;
                }
            },
            _ = interval.tick() => {
                let now = Instant::now();
                let due: Vec<String> = waiting.iter()
                    .filter(|(_, (since, _))| now.duration_since(*since) >= max_delay)
                    .map(|(p, _)| p.clone())
                    .collect();
                for plate in due {
                    if let Some((_, sites)) = waiting.remove(&plate) {
                        out.push(BatchMsg::Batch(plate, sites));
                    }
                }
            }
        }
        for msg in out {
            if tx.send(msg).await.is_err() {
                return;
            }
        }
    }
}
