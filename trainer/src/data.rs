//! Training data as Candle tensors, through bfx-core's one preprocessing
//! implementation (the daemon uses the same function for inference).

use bfx_core::image::ReadOptions;
use bfx_core::preprocess::{ModelInput, PreprocessError, PreprocessSpec, SiteFiles};
use candle_core::{Device, Tensor};
use thiserror::Error;

/// Why a site could not become a tensor.
#[derive(Debug, Error)]
pub enum DataError {
    /// Reading or preprocessing failed.
    #[error(transparent)]
    Preprocess(#[from] PreprocessError),
    /// Candle could not hold the data.
    #[error("cannot build a tensor: {0}")]
    Tensor(#[from] candle_core::Error),
}

/// One site's model input as an `[n, c, h, w]` f32 tensor on `device`.
pub fn site_tensor(
    spec: &PreprocessSpec,
    files: &SiteFiles,
    read: &ReadOptions,
    device: &Device,
) -> Result<Tensor, DataError> {
    to_tensor(spec.load_site(files, read)?, device)
}

/// Move preprocessed data into a tensor of its shape.
pub fn to_tensor(input: ModelInput, device: &Device) -> Result<Tensor, DataError> {
    Ok(Tensor::from_vec(input.data, input.shape.to_vec(), device)?)
}
