//! A whole bundle on disk: every graph of a method, the manifest with the
//! digest of every file, written to a temporary folder and renamed into
//! place, so a failed export leaves no half-written bundle behind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bfx_core::arch::ModelSpec;
use bfx_core::bundle::{Bundle, BundleManifest, CorrectionMode, Graphs, NormLayer, Provenance};
use bfx_core::preprocess::PreprocessSpec;
use prost::Message;

use crate::ExportError;
use crate::classifier::{self, Variant};
use crate::weights::Weights;

/// File name of the predictor graph.
pub const PREDICTOR: &str = "predictor.onnx";
/// File name of the AdaBN statistics graph.
pub const PREDICTOR_STATS: &str = "predictor_stats.onnx";
/// File name of the AdaBN plate-statistics graph.
pub const PREDICTOR_PLATE: &str = "predictor_plate.onnx";
/// File name of IST's generator graph.
pub const IST_GENERATOR: &str = "ist_generator.onnx";
/// File name of IST's style bank.
pub const STYLE_BANK: &str = "style_bank.safetensors";

/// What an IST bundle adds: the generator (its weights are in the
/// export's weights) and the style bank.
#[derive(Clone, Debug)]
pub struct IstExport {
    /// The encoder and generator layout.
    pub spec: bfx_core::ist::IstSpec,
    /// Style codes of training images.
    pub bank: bfx_core::style_bank::StyleBank,
}

/// Everything a classifier bundle is made of.
#[derive(Clone, Debug)]
pub struct ClassifierExport {
    /// Method that trained it.
    pub method: String,
    /// The architecture.
    pub spec: ModelSpec,
    /// The trained tensors.
    pub weights: Weights,
    /// Preprocessing, channel order included.
    pub preprocess: PreprocessSpec,
    /// Class names in logit order.
    pub class_names: Vec<String>,
    /// Where the model came from.
    pub provenance: Provenance,
    /// Headline evaluation metrics.
    pub metrics: BTreeMap<String, f64>,
    /// IST's generator and style bank (IST runs).
    pub ist: Option<IstExport>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Write the bundle of `export` to `out`: `predictor.onnx`, for
/// BatchNorm models the AdaBN pair, for IST the generator and style bank. An existing `out` is refused unless
/// `replace`. Returns the bundle as the daemon will open it.
pub fn write_classifier_bundle(
    export: &ClassifierExport,
    out: &Path,
    replace: bool,
) -> Result<Bundle, ExportError> {
    let spec = &export.spec;
    let channels = export.preprocess.channels.len();
    if channels != spec.encoder.in_channels {
        return Err(ExportError::Spec(format!(
            "the preprocessing lists {channels} channels, the model takes {}",
            spec.encoder.in_channels
        )));
    }
    if export.class_names.len() != spec.classes {
        return Err(ExportError::Spec(format!(
            "{} class names for a model with {} classes",
            export.class_names.len(),
            spec.classes
        )));
    }
    if out.exists() && !replace {
        return Err(ExportError::Spec(format!(
            "{} exists; choose another output folder or replace it",
            out.display()
        )));
    }
    let (h, w) = export.preprocess.output_size();
    let (h, w) = (h as usize, w as usize);
    let staging = staging_dir(out)?;
    let result = (|| {
        let mut graphs = Graphs {
            predictor: PREDICTOR.into(),
            ..Graphs::default()
        };
        let mut modes = vec![CorrectionMode::None];
        let mut variants = vec![(Variant::Predictor, PREDICTOR)];
        let adabn_layers: Vec<NormLayer> = spec
            .batch_norm_layers()
            .into_iter()
            .map(|(name, channels)| NormLayer { name, channels })
            .collect();
        if !adabn_layers.is_empty() {
            variants.push((Variant::Stats, PREDICTOR_STATS));
            variants.push((Variant::Plate, PREDICTOR_PLATE));
            graphs.predictor_stats = Some(PREDICTOR_STATS.into());
            graphs.predictor_plate = Some(PREDICTOR_PLATE.into());
            modes.push(CorrectionMode::Adabn);
        }
        for (variant, file) in variants {
            let model = classifier::emit(spec, &export.weights, h, w, variant)?;
            let path = staging.join(file);
            std::fs::write(&path, model.encode_to_vec()).map_err(io(&path))?;
        }
        if let Some(ist) = &export.ist {
            if ist.bank.dim != ist.spec.style_dim() {
                return Err(ExportError::Spec(format!(
                    "style codes of {} values for a generator taking {}",
                    ist.bank.dim,
                    ist.spec.style_dim()
                )));
            }
            let model = crate::generator::emit(&ist.spec, &export.weights, h, w)?;
            let path = staging.join(IST_GENERATOR);
            std::fs::write(&path, model.encode_to_vec()).map_err(io(&path))?;
            let bank = staging.join(STYLE_BANK);
            ist.bank
                .write(&bank)
                .map_err(|e| ExportError::Spec(e.to_string()))?;
            graphs.ist_generator = Some(IST_GENERATOR.into());
            graphs.style_bank = Some(STYLE_BANK.into());
            modes.push(CorrectionMode::Ist);
        }
        let mut manifest = BundleManifest {
            format_version: bfx_core::bundle::BUNDLE_FORMAT_VERSION,
            method: export.method.clone(),
            // Serializing a plain struct cannot fail.
            architecture: serde_json::to_value(spec).expect("spec serializes"),
            preprocess: export.preprocess.clone(),
            input_shape: [channels, h, w],
            embedding_dim: spec.embedding_dim,
            class_names: export.class_names.clone(),
            correction_modes: modes,
            graphs,
            adabn_layers,
            files: BTreeMap::new(),
            provenance: export.provenance.clone(),
            metrics: export.metrics.clone(),
        };
        manifest.seal(&staging, &[])?;
        Ok::<(), ExportError>(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(io(out))?;
    }
    std::fs::rename(&staging, out).map_err(io(out))?;
    Ok(Bundle::open(out)?)
}

/// A fresh sibling of `out` to write into.
fn staging_dir(out: &Path) -> Result<PathBuf, ExportError> {
    let name = out
        .file_name()
        .ok_or_else(|| ExportError::Spec(format!("{} is not a folder name", out.display())))?;
    let mut staging_name = name.to_os_string();
    staging_name.push(format!(".partial-{}", std::process::id()));
    let staging = out.with_file_name(staging_name);
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io(&staging))?;
    }
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;
    Ok(staging)
}
