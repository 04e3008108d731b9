//! Weight tensors read from a checkpoint's safetensors file, checked
//! against the names and shapes an architecture spec lists.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::{Dtype, SafeTensors};

use crate::ExportError;

/// Float tensors by name, each with its shape.
#[derive(Clone, Debug, Default)]
pub struct Weights {
    source: PathBuf,
    tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
}

impl Weights {
    /// Read every f32 tensor of `path` (other dtypes, such as optimizer
    /// counters, are skipped: no architecture uses them).
    pub fn read(path: &Path) -> Result<Weights, ExportError> {
        let bytes = std::fs::read(path).map_err(|source| ExportError::Io {
            path: path.to_owned(),
            source,
        })?;
        let file = SafeTensors::deserialize(&bytes).map_err(|e| ExportError::Weights {
            path: path.to_owned(),
            problem: format!("not a safetensors file: {e}"),
        })?;
        let mut tensors = HashMap::new();
        for (name, view) in file.tensors() {
            if view.dtype() != Dtype::F32 {
                continue;
            }
            let data = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            tensors.insert(name, (view.shape().to_vec(), data));
        }
        Ok(Weights {
            source: path.to_owned(),
            tensors,
        })
    }

    /// Weights from memory (tests, and callers holding tensors already).
    pub fn from_tensors(
        source: &Path,
        tensors: HashMap<String, (Vec<usize>, Vec<f32>)>,
    ) -> Weights {
        Weights {
            source: source.to_owned(),
            tensors,
        }
    }

    /// Refuse unless every `(name, shape)` is present with that shape;
    /// the error lists every problem.
    pub fn check(&self, wanted: &[(String, Vec<usize>)]) -> Result<(), ExportError> {
        let mut problems: Vec<String> = wanted
            .iter()
            .filter_map(|(name, shape)| match self.tensors.get(name) {
                None => Some(format!("{name} is missing")),
                Some((s, _)) if s != shape => {
                    Some(format!("{name} is {s:?}, the architecture needs {shape:?}"))
                }
                Some(_) => None,
            })
            .collect();
        if problems.is_empty() {
            return Ok(());
        }
        problems.sort();
        Err(ExportError::Weights {
            path: self.source.clone(),
            problem: format!(
                "does not fit the architecture ({} problem(s)): {}",
                problems.len(),
                problems.join("; ")
            ),
        })
    }

    /// Shape and values of `name`.
    pub fn get(&self, name: &str) -> Result<(&[usize], &[f32]), ExportError> {
        self.tensors
            .get(name)
            .map(|(s, d)| (s.as_slice(), d.as_slice()))
            .ok_or_else(|| ExportError::Weights {
                path: self.source.clone(),
                problem: format!("{name} is missing"),
            })
    }
}
