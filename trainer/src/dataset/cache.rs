//! Decode once: every site of a manifest preprocessed into one f32 array,
//! cached as safetensors keyed by the manifest rows, the files' sizes and
//! modification times, and the preprocessing spec. Epochs read the array,
//! never the TIFFs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bfx_core::image::ReadOptions;
use bfx_core::preprocess::{PreprocessSpec, SiteFiles};
use indicatif::ProgressBar;
use rayon::prelude::*;
use safetensors::tensor::{Dtype, TensorView};
use sha2::{Digest, Sha256};

use super::DatasetError;
use super::manifest::Manifest;

/// Bumped whenever the cache layout or preprocessing semantics change.
const CACHE_VERSION: &str = "bfx-image-cache-1";

/// Preprocessed images of a manifest: one or more per site (tiles).
#[derive(Clone, Debug, PartialEq)]
pub struct Images {
    /// `[c, h, w]` of every image.
    pub shape: [usize; 3],
    /// Images back to back, row-major.
    pub data: Vec<f32>,
    /// Manifest row of each image.
    pub site_of: Vec<usize>,
}

impl Images {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.site_of.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.site_of.is_empty()
    }

    /// Samples of image `i`.
    pub fn image(&self, i: usize) -> &[f32] {
        let n = self.shape.iter().product::<usize>();
        &self.data[i * n..(i + 1) * n]
    }

    /// Images `indices` stacked, `[len, c, h, w]` row-major.
    pub fn gather(&self, indices: &[usize]) -> Vec<f32> {
        let mut out = Vec::with_capacity(indices.len() * self.shape.iter().product::<usize>());
        for &i in indices {
            out.extend_from_slice(self.image(i));
        }
        out
    }
}

/// The cache key: what the decoded array depends on.
fn cache_key(
    manifest: &Manifest,
    root: &Path,
    spec: &PreprocessSpec,
    read: &ReadOptions,
) -> String {
    let mut h = Sha256::new();
    h.update(CACHE_VERSION);
    h.update(serde_json::to_string(spec).unwrap_or_default());
    h.update(format!("{:?}", read.limits));
    h.update(root.to_string_lossy().as_bytes());
    for row in &manifest.rows {
        for path in &row.paths {
            h.update(path.to_string_lossy().as_bytes());
            // Size and mtime, as make does: a rewritten file invalidates the cache.
            if let Ok(meta) = std::fs::metadata(root.join(path)) {
                h.update(meta.len().to_le_bytes());
                if let Ok(t) = meta.modified().and_then(|t| {
                    t.duration_since(std::time::UNIX_EPOCH)
                        .map_err(std::io::Error::other)
                }) {
                    h.update(t.as_nanos().to_le_bytes());
                }
            }
        }
        h.update([0]);
    }
    let digest = h.finalize();
    digest.iter().take(12).map(|b| format!("{b:02x}")).collect()
}

/// Preprocess every site of `manifest` (files under `root`), reading the
/// cache in `cache_dir` when it holds this exact input and writing it otherwise.
pub fn load_images(
    manifest: &Manifest,
    root: &Path,
    spec: &PreprocessSpec,
    read: &ReadOptions,
    cache_dir: Option<&Path>,
    progress: &ProgressBar,
) -> Result<Images, DatasetError> {
    let cache = cache_dir.map(|d| cache_path(manifest, root, spec, read, d));
    if let Some(path) = &cache
        && path.is_file()
    {
        return read_cache(path);
    }
    let images = decode_all(manifest, root, spec, read, progress)?;
    if let Some(path) = &cache {
        write_cache(path, &images)?;
    }
    Ok(images)
}

fn decode_all(
    manifest: &Manifest,
    root: &Path,
    spec: &PreprocessSpec,
    read: &ReadOptions,
    progress: &ProgressBar,
) -> Result<Images, DatasetError> {
    progress.set_length(manifest.rows.len() as u64);
    let decoded: Vec<Result<_, String>> = manifest
        .rows
        .par_iter()
        .map(|row| {
            let files = SiteFiles::PerChannel(
                manifest
                    .channels
                    .iter()
                    .cloned()
                    .zip(row.paths.iter().map(|p| root.join(p)))
                    .collect(),
            );
            let input = spec
                .load_site(&files, read)
                .map_err(|e| format!("line {}: {e}", row.line));
            progress.inc(1);
            input
        })
        .collect();
    progress.finish_and_clear();
    let mut problems = Vec::new();
    let mut images = Images {
        shape: [0; 3],
        data: Vec::new(),
        site_of: Vec::new(),
    };
    for (row, result) in decoded.into_iter().enumerate() {
        match result {
            Err(p) => problems.push(p),
            Ok(input) => {
                let [n, c, h, w] = input.shape;
                if images.site_of.is_empty() {
                    images.shape = [c, h, w];
                } else if images.shape != [c, h, w] {
                    problems.push(format!(
                        "line {}: preprocessed to {c}x{h}x{w}, other sites to {:?}",
                        manifest.rows[row].line, images.shape
                    ));
                    continue;
                }
                images.data.extend(input.data);
                images.site_of.extend(std::iter::repeat_n(row, n));
            }
        }
    }
    if !problems.is_empty() {
        return Err(DatasetError::Manifest(super::ManifestError::Invalid {
            path: manifest.source.clone(),
            problems,
        }));
    }
    Ok(images)
}

fn cache_error(path: &Path, problem: impl ToString) -> DatasetError {
    DatasetError::Cache(path.to_owned(), problem.to_string())
}

fn write_cache(path: &Path, images: &Images) -> Result<(), DatasetError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| cache_error(dir, e))?;
    }
    let bytes: Vec<u8> = images.data.iter().flat_map(|x| x.to_le_bytes()).collect();
    let sites: Vec<u8> = images
        .site_of
        .iter()
        .flat_map(|&s| (s as u64).to_le_bytes())
        .collect();
    let [c, h, w] = images.shape;
    let data = TensorView::new(Dtype::F32, vec![images.len(), c, h, w], &bytes)
        .map_err(|e| cache_error(path, e))?;
    let site_of = TensorView::new(Dtype::U64, vec![images.len()], &sites)
        .map_err(|e| cache_error(path, e))?;
    let tmp = path.with_extension("tmp");
    let metadata: HashMap<String, String> =
        [("format".to_owned(), CACHE_VERSION.to_owned())].into();
    safetensors::serialize_to_file(
        [("images", data), ("site_of", site_of)],
        Some(metadata),
        &tmp,
    )
    .map_err(|e| cache_error(&tmp, e))?;
    // Rename last: a crash leaves a .tmp, never a half-written cache.
    std::fs::rename(&tmp, path).map_err(|e| cache_error(path, e))
}

fn read_cache(path: &Path) -> Result<Images, DatasetError> {
    let bytes = std::fs::read(path).map_err(|e| cache_error(path, e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| cache_error(path, e))?;
    let data = st.tensor("images").map_err(|e| cache_error(path, e))?;
    let sites = st.tensor("site_of").map_err(|e| cache_error(path, e))?;
    let &[n, c, h, w] = data.shape() else {
        return Err(cache_error(path, "`images` is not 4-D"));
    };
    if data.dtype() != Dtype::F32 || sites.dtype() != Dtype::U64 || sites.shape() != [n] {
        return Err(cache_error(
            path,
            "unexpected tensor types; delete the file",
        ));
    }
    Ok(Images {
        shape: [c, h, w],
        data: data
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        site_of: sites
            .data()
            .chunks_exact(8)
            .map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as usize)
            .collect(),
    })
}

/// The cache file a manifest would use (for messages and tests).
pub fn cache_path(
    manifest: &Manifest,
    root: &Path,
    spec: &PreprocessSpec,
    read: &ReadOptions,
    cache_dir: &Path,
) -> PathBuf {
    cache_dir.join(format!(
        "images-{}.safetensors",
        cache_key(manifest, root, spec, read)
    ))
}
