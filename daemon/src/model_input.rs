//! Model input for ONNX Runtime: the daemon's side of bfx-core's one
//! preprocessing implementation, as ndarray batches.

use bfx_core::image::ReadOptions;
use bfx_core::preprocess::{ModelInput, PreprocessError, PreprocessSpec, SiteFiles};
use ndarray::{Array4, ArrayView4, ErrorKind, ShapeError, s};

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

/// The model inputs of a batch of sites, stacked along the first axis as
/// the graphs take them, and how many images (tiles) each site has.
/// Stacked where the sites are preprocessed, so the inference thread
/// hands ONNX Runtime the buffer as it is.
#[derive(Clone, Debug)]
pub struct SiteBatch {
    images: Array4<f32>,
    tiles: Vec<usize>,
}

impl SiteBatch {
    /// One site's input as a batch of its own (no copy).
    pub fn single(site: Array4<f32>) -> SiteBatch {
        SiteBatch {
            tiles: vec![site.dim().0],
            images: site,
        }
    }

    /// Sites (each `[tiles, c, h, w]`, the same `c, h, w`) stacked; an
    /// error if their `c, h, w` differ.
    pub fn stack(sites: &[ArrayView4<'_, f32>]) -> Result<SiteBatch, ShapeError> {
        if sites.is_empty() {
            return Ok(SiteBatch {
                images: Array4::zeros((0, 0, 0, 0)),
                tiles: Vec::new(),
            });
        }
        let (_, c, h, w) = sites[0].dim();
        if sites.iter().any(|s| {
            let (_, sc, sh, sw) = s.dim();
            (sc, sh, sw) != (c, h, w)
        }) {
            return Err(ShapeError::from_kind(ErrorKind::IncompatibleShape));
        }
        let tiles: Vec<usize> = sites.iter().map(|s| s.dim().0).collect();
        let n = tiles.iter().sum();
        // Row-major inputs (what preprocessing makes) are copied whole:
        // ndarray's `concatenate` copies element by element, about as long
        // as preprocessing the sites.
        let mut data = Vec::with_capacity(n * c * h * w);
        for site in sites {
            match site.as_slice() {
                Some(samples) => data.extend_from_slice(samples),
                None => data.extend(site.iter().copied()),
            }
        }
        Ok(SiteBatch {
            images: Array4::from_shape_vec((n, c, h, w), data)?,
            tiles,
        })
    }

    /// Sites in the batch.
    pub fn len(&self) -> usize {
        self.tiles.len()
    }

    /// Whether the batch has no site.
    pub fn is_empty(&self) -> bool {
        self.tiles.is_empty()
    }

    /// Images of each site, in order.
    pub fn tiles(&self) -> &[usize] {
        &self.tiles
    }

    /// Every site's images, in order.
    pub fn sites(&self) -> impl Iterator<Item = ArrayView4<'_, f32>> {
        let mut at = 0;
        self.tiles.iter().map(move |&t| {
            at += t;
            self.images.slice(s![at - t..at, .., .., ..])
        })
    }

    /// The stacked images, `[images, c, h, w]`.
    pub fn images(&self) -> &Array4<f32> {
        &self.images
    }

    /// The stacked images, for ONNX Runtime to take as they are.
    pub fn into_images(self) -> Array4<f32> {
        self.images
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stacked_batch_gives_back_each_site() {
        let site = |tiles: usize, base: f32| {
            Array4::from_shape_fn((tiles, 2, 3, 3), |(t, c, y, x)| {
                base + (t * 18 + c * 9 + y * 3 + x) as f32
            })
        };
        let sites = [site(1, 0.0), site(3, 100.0), site(2, 200.0)];
        let views: Vec<_> = sites.iter().map(|s| s.view()).collect();
        let batch = SiteBatch::stack(&views).expect("same channels and size");
        assert_eq!(batch.len(), 3);
        assert_eq!(batch.tiles(), &[1, 3, 2]);
        assert_eq!(batch.images().dim(), (6, 2, 3, 3));
        let back: Vec<Array4<f32>> = batch.sites().map(|s| s.to_owned()).collect();
        assert_eq!(back, sites);

        // A view that is not row-major (rows reversed) stacks as its values.
        let flipped = sites[1].slice(s![.., .., ..;-1, ..]);
        let batch = SiteBatch::stack(&[sites[0].view(), flipped]).expect("same size");
        let back: Vec<Array4<f32>> = batch.sites().map(|s| s.to_owned()).collect();
        assert_eq!(back, [sites[0].clone(), flipped.to_owned()]);

        let other = Array4::zeros((1, 2, 4, 4));
        assert!(SiteBatch::stack(&[sites[0].view(), other.view()]).is_err());
        let empty = SiteBatch::stack(&[]).expect("no sites");
        assert!(empty.is_empty() && empty.sites().next().is_none());
    }
}
