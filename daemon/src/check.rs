//! `bfx-daemon check-config`: every check an operator needs before starting
//! the service, each reported with what to do about a failure.

use std::fmt;
use std::path::Path;

use bfx_config::DaemonConfig;
use bfx_core::bundle::Bundle;

use crate::runtime;

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What was checked.
    pub name: &'static str,
    /// Passed?
    pub ok: bool,
    /// What was found, or what is wrong and how to fix it.
    pub detail: String,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mark = if self.ok { "ok  " } else { "FAIL" };
        write!(
            f,
            "{mark} {:<13} {}",
            self.name,
            self.detail.replace('\n', "\n                   ")
        )
    }
}

/// Check a loaded configuration: ONNX Runtime, acquisition roots and,
/// unless `skip_bundle`, the bundle and its fit to the configuration.
pub fn check_config(config: &DaemonConfig, skip_bundle: bool) -> Vec<Check> {
    let mut checks = Vec::new();
    let provider = config.inference.execution_provider;
    checks.push(match runtime::init(config.inference.onnxruntime_library.as_deref(), provider) {
        Ok(rt) => {
            let cuda = match (provider, rt.cuda_available()) {
                (bfx_config::daemon::ExecutionProvider::Cuda, false) => {
                    "; CUDA was configured but this library has no CUDA provider: inference would fall back to CPU (fetch the GPU build with scripts/fetch-onnxruntime.sh --gpu)"
                }
                (_, true) => "; CUDA provider available",
                (_, false) => "",
            };
            Check { name: "onnxruntime", ok: true, detail: format!("{} ({}){cuda}", rt.library.display(), rt.source) }
        }
        Err(e) => Check { name: "onnxruntime", ok: false, detail: e.to_string() },
    });
    for root in &config.watch.roots {
        checks.push(readable_dir("watch root", root));
    }
    if let Some(path) = &config.plate.layout_csv {
        checks.push(match crate::pipeline::layout::Layout::read(path) {
            Ok(layout) => Check {
                name: "plate layout",
                ok: true,
                detail: format!(
                    "{}: {} plate(s) listed{}",
                    path.display(),
                    layout.per_plate.len(),
                    layout.every_plate.map_or(String::new(), |n| format!(
                        ", {n} sites for every other plate"
                    ))
                ),
            },
            Err(e) => Check {
                name: "plate layout",
                ok: false,
                detail: e,
            },
        });
    }
    if !skip_bundle {
        checks.push(bundle_check(config));
    }
    checks
}

fn readable_dir(name: &'static str, path: &Path) -> Check {
    match std::fs::read_dir(path) {
        Ok(_) => Check {
            name,
            ok: true,
            detail: format!("{} is readable", path.display()),
        },
        Err(e) => Check {
            name,
            ok: false,
            detail: format!(
                "{}: {e}; create it or fix daemon.watch.roots",
                path.display()
            ),
        },
    }
}

fn bundle_check(config: &DaemonConfig) -> Check {
    let name = "bundle";
    let fail = |detail: String| Check {
        name,
        ok: false,
        detail,
    };
    let bundle = match Bundle::open(&config.bundle) {
        Ok(b) => b,
        Err(e) => {
            return fail(format!(
                "{e}\nexport one with `bfx-trainer export CHECKPOINT --out DIR` and set daemon.bundle"
            ));
        }
    };
    if let Some(channels) = &config.channels
        && let Err(e) = bundle.check_channels(channels)
    {
        return fail(e.to_string());
    }
    let mode = config.correction.mode;
    if !bundle.manifest.correction_modes.contains(&mode) {
        return fail(format!(
            "daemon.correction.mode = {mode:?} but the bundle supports {:?}",
            bundle.manifest.correction_modes
        ));
    }
    let m = &bundle.manifest;
    Check {
        name,
        ok: true,
        detail: format!(
            "{} method {}, channels {:?}, embedding {}",
            config.bundle.display(),
            m.method,
            m.preprocess.channels,
            m.embedding_dim
        ),
    }
}
