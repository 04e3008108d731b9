//! Model input for ONNX Runtime: the daemon's side of bfx-core's one
//! preprocessing implementation, as ndarray batches.

use bfx_core::image::ReadOptions;
use bfx_core::preprocess::{ModelInput, PreprocessError, PreprocessSpec, SiteFiles};
use ndarray::Array4;

/// One site's model input as an `[n, c, h, w]` array (n = 1, or the tile count).
pub fn site_array(
    spec: &PreprocessSpec,
    files: &SiteFiles,
    read: &ReadOptions,
) -> Result<Array4<f32>, PreprocessError> {
    Ok(to_array(spec.load_site(files, read)?))
}

/// Reshape preprocessed data into its array.
pub fn to_array(input: ModelInput) -> Array4<f32> {
    let [n, c, h, w] = input.shape;
    // `preprocess` fills exactly n * c * h * w samples for the shape it reports.
    Array4::from_shape_vec((n, c, h, w), input.data).expect("ModelInput data matches its shape")
}
