//! SIGHUP: read the configuration again and switch new plates to its
//! bundle. The new bundle must verify and fit what is running (same
//! channels, preprocessing and embedding size; the configured correction
//! mode supported), else it is refused with a log line and the running
//! bundle stays. Open plates keep the bundle they started with. Other
//! configuration keys take effect at the next start.

use std::path::{Path, PathBuf};

use bfx_config::DaemonConfig;
use bfx_core::bundle::Bundle;
use tokio::sync::mpsc;

use crate::engine::Engine;
use crate::runtime;
use crate::telemetry;

/// Handle reload requests until `hup` closes.
pub async fn run(
    path: PathBuf,
    config: DaemonConfig,
    mut running: Bundle,
    mut hup: mpsc::Receiver<()>,
    tx: mpsc::Sender<Engine>,
) {
    while hup.recv().await.is_some() {
        let result = tokio::task::block_in_place(|| load(&path, &config, &running));
        match result {
            Ok(None) => tracing::info!(config = %path.display(), "reload: the bundle is unchanged"),
            Ok(Some(engine)) => {
                let mode = crate::store::correction_name(config.correction.mode);
                let old = &running.manifest;
                metrics::gauge!(telemetry::MODEL_INFO, "method" => old.method.clone(), "sha256" => running.sha256.clone(), "mode" => mode).set(0.0);
                running = engine.bundle().clone();
                metrics::gauge!(telemetry::MODEL_INFO, "method" => running.manifest.method.clone(), "sha256" => running.sha256.clone(), "mode" => mode).set(1.0);
                tracing::info!(bundle = %running.sha256, "reload: new plates use the new bundle");
                if tx.send(engine).await.is_err() {
                    return;
                }
            }
            Err(why) => {
                tracing::error!(config = %path.display(), %why, "reload refused; the running bundle stays")
            }
        }
    }
}

/// The new bundle's engine, `None` if the bundle did not change.
fn load(
    path: &Path,
    running_config: &DaemonConfig,
    running: &Bundle,
) -> Result<Option<Engine>, String> {
    let config = bfx_config::load_daemon(path).map_err(|e| e.to_string())?;
    let mut same = config.clone();
    same.bundle = running_config.bundle.clone();
    if same != *running_config {
        tracing::warn!(
            "reload: only daemon.bundle is applied now; other changed keys take effect after a restart"
        );
    }
    let bundle = Bundle::open(&config.bundle).map_err(|e| e.to_string())?;
    if bundle.sha256 == running.sha256 {
        return Ok(None);
    }
    if let Some(channels) = &running_config.channels {
        bundle.check_channels(channels).map_err(|e| e.to_string())?;
    }
    let (new, old) = (&bundle.manifest, &running.manifest);
    if new.preprocess != old.preprocess || new.embedding_dim != old.embedding_dim {
        return Err(format!(
            "{} changes the channels, preprocessing or embedding size of the running bundle; restart the daemon to switch to it",
            config.bundle.display()
        ));
    }
    if !new
        .correction_modes
        .contains(&running_config.correction.mode)
    {
        return Err(format!(
            "{} does not support the configured correction mode",
            config.bundle.display()
        ));
    }
    let rt = runtime::init(
        running_config.inference.onnxruntime_library.as_deref(),
        running_config.inference.execution_provider,
    )
    .map_err(|e| e.to_string())?;
    let inference = running_config.inference.clone();
    // ONNX Runtime's session threads start at their creator's priority.
    crate::priority::run_unlowered(move || Engine::load(rt, bundle, &inference))
        .map_err(|e| e.to_string())?
        .map(Some)
        .map_err(|e| e.to_string())
}
