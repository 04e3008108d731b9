//! Finding and loading the ONNX Runtime shared library.
//!
//! bfx links ONNX Runtime at run time (`ort`'s `load-dynamic`): the library
//! comes from PyPI through `scripts/fetch-onnxruntime.sh`, not from ort's
//! download. Candidates, in order: the `daemon.inference.onnxruntime_library`
//! key, `ORT_DYLIB_PATH`, `<exe dir>/../lib/`, and this checkout's `.ort/`
//! folder. If none loads, the error lists each place and why it failed.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bfx_config::daemon::ExecutionProvider;
use ort::ep::ExecutionProvider as _;
use thiserror::Error;

/// File name of the library on Linux.
pub const LIBRARY_NAME: &str = "libonnxruntime.so";

/// Where a candidate library path came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LibrarySource {
    /// The `daemon.inference.onnxruntime_library` key.
    Config,
    /// The `ORT_DYLIB_PATH` environment variable.
    Environment,
    /// `<exe dir>/../lib/`, where an installation puts it.
    Installation,
    /// This checkout's `.ort/cpu` or `.ort/gpu`, filled by `scripts/fetch-onnxruntime.sh`.
    Checkout,
}

impl fmt::Display for LibrarySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LibrarySource::Config => "config key daemon.inference.onnxruntime_library",
            LibrarySource::Environment => "ORT_DYLIB_PATH",
            LibrarySource::Installation => "installation lib folder",
            LibrarySource::Checkout => "checkout .ort folder",
        })
    }
}

/// The candidate paths in search order.
pub fn candidates(
    configured: Option<&Path>,
    provider: ExecutionProvider,
) -> Vec<(LibrarySource, PathBuf)> {
    let mut list = Vec::new();
    if let Some(path) = configured {
        list.push((LibrarySource::Config, path.to_owned()));
    }
    if let Some(path) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        list.push((LibrarySource::Environment, PathBuf::from(path)));
    }
    if let Some(lib) = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("lib")))
    {
        list.push((LibrarySource::Installation, lib.join(LIBRARY_NAME)));
    }
    // The daemon crate sits one folder below the checkout's root.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."));
    let checkout = root.join(".ort");
    let flavours = match provider {
        ExecutionProvider::Cuda => ["gpu", "cpu"],
        ExecutionProvider::Cpu => ["cpu", "gpu"],
    };
    for flavour in flavours {
        list.push((
            LibrarySource::Checkout,
            checkout.join(flavour).join(LIBRARY_NAME),
        ));
    }
    list
}

/// No candidate loaded.
#[derive(Debug, Error)]
pub struct RuntimeError {
    /// Each candidate and why it failed.
    pub tried: Vec<(LibrarySource, PathBuf, String)>,
}

impl fmt::Display for RuntimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "ONNX Runtime could not be loaded. Looked in:")?;
        for (source, path, why) in &self.tried {
            writeln!(f, "  - {} ({source}): {why}", path.display())?;
        }
        write!(
            f,
            "Fix: run scripts/fetch-onnxruntime.sh (CPU) or scripts/fetch-onnxruntime.sh --gpu (CUDA) in the bfx checkout, \
             or point daemon.inference.onnxruntime_library or ORT_DYLIB_PATH at libonnxruntime.so 1.31"
        )
    }
}

/// The loaded runtime: one per process.
pub struct OnnxRuntime {
    /// The process's ONNX Runtime environment.
    pub environment: ort::environment::Environment,
    /// The library file that was loaded.
    pub library: PathBuf,
    /// Where its path came from.
    pub source: LibrarySource,
}

impl fmt::Debug for OnnxRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OnnxRuntime")
            .field("library", &self.library)
            .field("source", &self.source)
            .finish()
    }
}

impl OnnxRuntime {
    /// ONNX Runtime's build description (version, commit).
    pub fn build_info(&self) -> &'static str {
        ort::info()
    }

    /// A CPU session of `model` with `threads` intra-op threads; spinning
    /// idle threads only when asked (a service should idle quietly).
    pub fn session(
        &self,
        model: &Path,
        threads: usize,
        spinning: bool,
    ) -> ort::Result<ort::session::Session> {
        ort::session::Session::builder(&self.environment)?
            .with_intra_threads(threads)?
            .with_intra_op_spinning(spinning)?
            .commit_from_file(model)
    }

    /// Whether the loaded library can run the CUDA execution provider.
    pub fn cuda_available(&self) -> bool {
        ort::ep::CUDA::is_available().unwrap_or(false)
    }
}

static RUNTIME: OnceLock<OnnxRuntime> = OnceLock::new();

/// Load ONNX Runtime from the first candidate that works. The library and
/// its environment are process-wide: later calls return the first runtime
/// whatever they ask for.
pub fn init(
    configured: Option<&Path>,
    provider: ExecutionProvider,
) -> Result<&'static OnnxRuntime, RuntimeError> {
    if let Some(runtime) = RUNTIME.get() {
        return Ok(runtime);
    }
    let mut tried = Vec::new();
    for (source, path) in candidates(configured, provider) {
        if !path.exists() {
            tried.push((source, path, "no such file".to_owned()));
            continue;
        }
        let loaded = ort::init_from(&path)
            .map_err(|e| e.to_string())
            .and_then(|builder| builder.with_name("bfx").build().map_err(|e| e.to_string()));
        match loaded {
            Ok(environment) => {
                tracing::info!(library = %path.display(), %source, "loaded ONNX Runtime");
                let runtime = OnnxRuntime {
                    environment,
                    library: path,
                    source,
                };
                // A racing caller may have won; either way one runtime is kept.
                return Ok(RUNTIME.get_or_init(|| runtime));
            }
            Err(why) => {
                tracing::warn!(library = %path.display(), %source, %why, "cannot load ONNX Runtime");
                tried.push((source, path, why));
            }
        }
    }
    Err(RuntimeError { tried })
}
