//! The daemon as a service: the HTTP endpoints, and the health loop that
//! samples queue depths, ticks `/healthz`, pings the systemd watchdog and
//! keeps a one-line STATUS for `systemctl status`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::sync::watch;

use crate::telemetry::{self, Health};

/// How full one stage's input queue is: `(stage, depth, capacity)`, or
/// `None` once the queue is closed.
pub type QueueProbe = Box<dyn Fn() -> Option<(usize, usize)> + Send + Sync>;

/// A probe of a bounded channel that does not keep it open.
pub fn probe<T: Send + 'static>(tx: &tokio::sync::mpsc::Sender<T>) -> QueueProbe {
    let weak = tx.downgrade();
    Box::new(move || {
        weak.upgrade()
            .map(|tx| (tx.max_capacity() - tx.capacity(), tx.max_capacity()))
    })
}

/// Tell systemd something; a no-op outside systemd.
pub fn notify(state: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// Run the health loop until `shutdown`.
pub async fn health_loop(
    health: Arc<Health>,
    queues: Vec<(&'static str, QueueProbe)>,
    mut shutdown: watch::Receiver<bool>,
) {
    let watchdog = sd_notify::watchdog_enabled();
    let period = watchdog
        .map(|w| w / 2)
        .unwrap_or(Duration::from_secs(1))
        .min(Duration::from_secs(1));
    loop {
        health.tick();
        let mut parts = Vec::new();
        for (stage, probe) in &queues {
            if let Some((depth, capacity)) = probe() {
                metrics::gauge!(telemetry::QUEUE_DEPTH, "stage" => *stage).set(depth as f64);
                metrics::gauge!(telemetry::QUEUE_CAPACITY, "stage" => *stage).set(capacity as f64);
                parts.push(format!("{stage} {depth}/{capacity}"));
            }
        }
        let status = format!(
            "{} sites embedded; queues: {}",
            health.embedded.load(Ordering::Relaxed),
            parts.join(", ")
        );
        let mut states = vec![NotifyState::Status(&status)];
        if watchdog.is_some() {
            states.push(NotifyState::Watchdog);
        }
        notify(&states);
        tokio::select! {
            _ = tokio::time::sleep(period) => {}
            _ = shutdown.changed() => return,
        }
    }
}
