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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_input_keeps_its_shape_and_values() {
        let input = ModelInput {
            shape: [2, 3, 1, 2],
            data: (0..12).map(|x| x as f32).collect(),
            origins: vec![(0, 0), (0, 2)],
        };
        let t = to_tensor(input, &Device::Cpu).unwrap();
        assert_eq!(t.dims(), [2, 3, 1, 2]);
        // Tile 1, channel 2, column 1 is the last sample.
        assert_eq!(
            t.get(1)
                .and_then(|t| t.get(2))
                .and_then(|t| t.flatten_all())
                .and_then(|t| t.to_vec1::<f32>())
                .unwrap(),
            vec![10.0, 11.0]
        );
    }
}
