//! Bundles from seeded random weights, for tests and benchmarks that need
//! a real bundle but no trained model (and so no trainer, no Candle).

use std::collections::HashMap;
use std::path::Path;

use bfx_core::arch::{EmbedHead, ModelSpec, ResNetSpec};
use bfx_core::bundle::Provenance;
use bfx_core::preprocess::{Geometry, Normalization, PreprocessSpec};

use crate::weights::Weights;
use crate::write::{ClassifierExport, write_classifier_bundle};
use crate::{Bundle, ExportError};

/// splitmix64 in [0, 1): the same stream on every platform.
pub fn uniform(seed: u64) -> impl FnMut() -> f32 {
    let mut state = seed;
    move || {
        state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// The shape of the seeded bundles the daemon's tests and benchmarks use:
/// a ResNet18 of `width` with a linear head of `embedding_dim` and
/// `classes`, over `channels` each standardized by itself and resized to
/// `size` x `size`.
pub fn resnet18_shape(
    channels: &[&str],
    width: usize,
    size: u32,
    embedding_dim: usize,
    classes: usize,
) -> (ModelSpec, PreprocessSpec) {
    let spec = ModelSpec {
        arch: "resnet18".into(),
        encoder: ResNetSpec::resnet18(channels.len(), width, false),
        head: EmbedHead::Linear,
        embedding_dim,
        classes,
    };
    let preprocess = PreprocessSpec {
        channels: channels.iter().map(|c| c.to_string()).collect(),
        normalization: Normalization::SelfStandardize { eps: 1e-6 },
        geometry: Geometry::Resize {
            height: size,
            width: size,
        },
    };
    (spec, preprocess)
}

/// Write an `erm` bundle of `spec` with weights drawn from `seed` to
/// `out`: Kaiming-uniform convolutions and linear layers (activations
/// stay near unit scale through the network), norm layers near identity.
pub fn write_seeded_bundle(
    spec: ModelSpec,
    preprocess: PreprocessSpec,
    seed: u64,
    out: &Path,
) -> Result<Bundle, ExportError> {
    let mut next = uniform(seed);
    let tensors: HashMap<String, (Vec<usize>, Vec<f32>)> = spec
        .tensors()
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let fan_in: usize = shape.iter().skip(1).product::<usize>().max(1);
            let bound = (6.0 / fan_in as f32).sqrt();
            let values = (0..n)
                .map(|_| {
                    let u = next();
                    if name.ends_with("running_var")
                        || (shape.len() == 1 && name.ends_with(".weight"))
                    {
                        0.75 + 0.5 * u
                    } else if shape.len() == 1 {
                        0.2 * (u - 0.5)
                    } else {
                        bound * (2.0 * u - 1.0)
                    }
                })
                .collect();
            (name, (shape, values))
        })
        .collect();
    let class_names = (0..spec.classes).map(|i| format!("class{i}")).collect();
    write_classifier_bundle(
        &ClassifierExport {
            method: "erm".into(),
            spec,
            weights: Weights::from_tensors(Path::new("seeded"), tensors),
            preprocess,
            class_names,
            provenance: Provenance::default(),
            metrics: Default::default(),
            ist: None,
        },
        out,
        false,
    )
}
