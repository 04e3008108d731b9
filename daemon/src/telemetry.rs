//! Prometheus metrics, health state and the HTTP endpoints `/metrics`,
//! `/healthz` and `/readyz`.
//!
//! Metric names follow Prometheus conventions (`bfx_` prefix, `_total`
//! counters, `_seconds` histograms); labels are low-cardinality (no
//! paths, no wells). Every metric is listed in the README.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Files the watch stage reported, once per path.
pub const FILES_SEEN: &str = "bfx_files_seen_total";
/// Files refused, by `reason` (naming, channel, unreadable, duplicate, pinned_bundle, incomplete_site, bad_site, field_size).
pub const FILES_REJECTED: &str = "bfx_files_rejected_total";
/// Files not used on purpose, by `reason` (already_stored, not_acquired, vanished).
pub const FILES_SKIPPED: &str = "bfx_files_skipped_total";
/// Folders the watch stage's rescans looked at, by `outcome` (listed, unchanged).
pub const RESCAN_FOLDERS: &str = "bfx_rescan_folders_total";
/// Sites with every channel.
pub const SITES_ASSEMBLED: &str = "bfx_sites_assembled_total";
/// Sites given up for missing channels.
pub const SITES_INCOMPLETE: &str = "bfx_sites_incomplete_total";
/// Sites whose files could not become model input.
pub const SITES_REJECTED: &str = "bfx_sites_rejected_total";
/// Sites committed to the store, by `status`.
pub const SITES_EMBEDDED: &str = "bfx_sites_embedded_total";
/// Inference batches.
pub const BATCHES: &str = "bfx_batches_total";
/// Sites per inference batch.
pub const BATCH_SIZE: &str = "bfx_batch_size_sites";
/// Time of one inference batch (preprocessing included).
pub const INFERENCE_SECONDS: &str = "bfx_inference_seconds";
/// From a site's last file being ready to its row being committed.
pub const SITE_LATENCY_SECONDS: &str = "bfx_site_latency_seconds";
/// Time of one store commit.
pub const COMMIT_SECONDS: &str = "bfx_commit_seconds";
/// Store commits that failed (and are retried).
pub const COMMIT_FAILURES: &str = "bfx_commit_failures_total";
/// Items waiting in each stage's input queue, by `stage`.
pub const QUEUE_DEPTH: &str = "bfx_queue_depth";
/// Capacity of each queue, by `stage`.
pub const QUEUE_CAPACITY: &str = "bfx_queue_capacity";
/// Plates open (not complete) in the store.
pub const OPEN_PLATES: &str = "bfx_open_plates";
/// Per-file and per-site entries a stage remembers to recognise what it
/// has handled, by `stage` (ready: files; assemble, store: sites). A
/// plate's are dropped once it is settled, so this follows the open plates.
pub const REMEMBERED: &str = "bfx_remembered_entries";
/// Rows in the store, by `status` (provisional, final).
pub const ROWS: &str = "bfx_rows";
/// The model in use: `method`, `sha256` (bundle manifest), `mode`.
pub const MODEL_INFO: &str = "bfx_model_info";
/// The execution provider in use (`provider`).
pub const PROVIDER_INFO: &str = "bfx_execution_provider_info";
/// Build: `version`.
pub const BUILD_INFO: &str = "bfx_build_info";
/// Process start, Unix seconds.
pub const START_TIME: &str = "bfx_start_time_seconds";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Install the Prometheus recorder (once per process) and record the
/// build and start time.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            // Fine enough for p50/p99 of site latency by interpolation.
            let seconds = [
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5,
                2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 30.0, 60.0, 300.0,
            ];
            let sizes = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(BATCH_SIZE.into()), &sizes));
            let handle = match builder.and_then(|b| b.install_recorder()) {
                Ok(h) => h,
                // Another recorder is installed (a host process); keep a
                // private one so /metrics still answers.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            };
            metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            metrics::gauge!(START_TIME).set(now.as_secs_f64());
            handle
        })
        .clone()
}

/// What `/healthz` and `/readyz` report.
#[derive(Debug, Default)]
pub struct Health {
    /// Bundle loaded, ONNX Runtime loaded and the store recovered.
    pub started: AtomicBool,
    /// The last commit succeeded (or none failed yet).
    pub store_writable: AtomicBool,
    /// Unix milliseconds of the health loop's last tick.
    pub last_tick: AtomicU64,
    /// Sites committed since start (for the systemd STATUS line).
    pub embedded: AtomicU64,
}

impl Health {
    /// A fresh state: not ready, store presumed writable.
    pub fn new() -> Arc<Health> {
        let h = Health::default();
        h.store_writable.store(true, Ordering::Relaxed);
        Arc::new(h)
    }

    /// Record a tick of the health loop.
    pub fn tick(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        self.last_tick
            .store(now.as_millis() as u64, Ordering::Relaxed);
    }

    /// Alive: the health loop ticked within `within`.
    pub fn alive(&self, within: Duration) -> bool {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let last = self.last_tick.load(Ordering::Relaxed);
        last > 0 && now.saturating_sub(last) <= within.as_millis() as u64
    }

    /// Ready: started, and the store takes commits.
    pub fn ready(&self) -> bool {
        self.started.load(Ordering::Relaxed) && self.store_writable.load(Ordering::Relaxed)
    }
}

/// The response to one request line.
fn respond(
    request: &str,
    handle: &PrometheusHandle,
    health: &Health,
) -> (u16, &'static str, String) {
    let path = request.split_whitespace().nth(1).unwrap_or("/");
    match path {
        "/metrics" => (200, "text/plain; version=0.0.4", handle.render()),
        "/healthz" if health.alive(Duration::from_secs(10)) => (200, "text/plain", "ok\n".into()),
        "/healthz" => (503, "text/plain", "health loop stalled\n".into()),
        "/readyz" if health.ready() => (200, "text/plain", "ready\n".into()),
        "/readyz" if !health.started.load(Ordering::Relaxed) => (
            503,
            "text/plain",
            "starting: bundle, ONNX Runtime or store recovery not done\n".into(),
        ),
        "/readyz" => (
            503,
            "text/plain",
            "the store does not take commits (disk full or not writable); sites are kept pending\n"
                .into(),
        ),
        _ => (
            404,
            "text/plain",
            "not found: try /metrics, /healthz, /readyz\n".into(),
        ),
    }
}

/// Serve the endpoints on `addr` until `shutdown`. A hand-written
/// responder: three fixed GET endpoints do not need an HTTP framework.
pub async fn serve(
    addr: SocketAddr,
    handle: PrometheusHandle,
    health: Arc<Health>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    loop {
        let (mut socket, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => { tracing::warn!(error = %e, "HTTP accept failed"); continue; }
            },
            _ = shutdown.changed() => return Ok(()),
        };
        let (handle, health) = (handle.clone(), health.clone());
        tokio::spawn(async move {
            // Read the whole request head: closing with unread bytes would
            // reset the connection and lose the response.
            let mut buf = Vec::with_capacity(1024);
            let mut chunk = [0u8; 1024];
            let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
                match tokio::time::timeout_at(deadline, socket.read(&mut chunk)).await {
                    Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                    _ => break,
                }
            }
            let request = String::from_utf8_lossy(&buf);
            let line = request.lines().next().unwrap_or("");
            let (code, kind, body) = respond(line, &handle, &health);
            let reason = match code {
                200 => "OK",
                404 => "Not Found",
                _ => "Service Unavailable",
            };
            let head = format!(
                "HTTP/1.1 {code} {reason}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = socket.write_all(head.as_bytes()).await;
            let _ = socket.write_all(body.as_bytes()).await;
            let _ = socket.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_answer_by_state() {
        let handle = install();
        let health = Health::new();
        assert_eq!(respond("GET /readyz HTTP/1.1", &handle, &health).0, 503);
        assert_eq!(respond("GET /healthz HTTP/1.1", &handle, &health).0, 503);
        health.tick();
        health.started.store(true, Ordering::Relaxed);
        assert_eq!(respond("GET /healthz HTTP/1.1", &handle, &health).0, 200);
        assert_eq!(respond("GET /readyz HTTP/1.1", &handle, &health).0, 200);
        health.store_writable.store(false, Ordering::Relaxed);
        let (code, _, body) = respond("GET /readyz HTTP/1.1", &handle, &health);
        assert_eq!(code, 503);
        assert!(body.contains("does not take commits"));
        let (code, _, body) = respond("GET /metrics HTTP/1.1", &handle, &health);
        assert_eq!(code, 200);
        assert!(body.contains("bfx_build_info"), "{body}");
        assert_eq!(respond("GET /nope HTTP/1.1", &handle, &health).0, 404);
    }
}
