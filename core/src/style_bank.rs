//! The style bank of an IST bundle: style codes of class- and
//! environment-balanced training images, each with its environment index.
//! A safetensors file with two tensors, `style` (f32 `[n, dim]`) and
//! `environment` (u32 `[n]`), and the environment names as metadata.

use std::collections::HashMap;
use std::path::Path;

use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};
use thiserror::Error;

/// Style codes with their environments.
#[derive(Clone, Debug, PartialEq)]
pub struct StyleBank {
    /// Length of one code.
    pub dim: usize,
    /// Codes, row after row (`n * dim`).
    pub codes: Vec<f32>,
    /// Environment index of each code.
    pub environments: Vec<u32>,
    /// Environment (plate) names, by index.
    pub environment_names: Vec<String>,
}

/// Why a style bank cannot be read or written.
#[derive(Debug, Error)]
pub enum StyleBankError {
    /// The file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not a style bank.
    #[error("{path}: not a style bank: {problem}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        problem: String,
    },
}

const NAMES_KEY: &str = "environment_names";

impl StyleBank {
    /// Number of codes.
    pub fn len(&self) -> usize {
        self.environments.len()
    }

    /// Whether it holds no code.
    pub fn is_empty(&self) -> bool {
        self.environments.is_empty()
    }

    /// Code `i`.
    pub fn code(&self, i: usize) -> &[f32] {
        &self.codes[i * self.dim..(i + 1) * self.dim]
    }

    /// Write to `path`.
    pub fn write(&self, path: &Path) -> Result<(), StyleBankError> {
        let format = |problem: String| StyleBankError::Format {
            path: path.display().to_string(),
            problem,
        };
        self.check().map_err(format)?;
        let codes: Vec<u8> = self.codes.iter().flat_map(|v| v.to_le_bytes()).collect();
        let envs: Vec<u8> = self
            .environments
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let view = |dtype, shape: Vec<usize>, data| {
            TensorView::new(dtype, shape, data).map_err(|e| format(e.to_string()))
        };
        let tensors = [
            (
                "style",
                view(Dtype::F32, vec![self.len(), self.dim], &codes)?,
            ),
            ("environment", view(Dtype::U32, vec![self.len()], &envs)?),
        ];
        // A list of strings always serializes.
        let names = serde_json::to_string(&self.environment_names).expect("names serialize");
        let metadata = HashMap::from([(NAMES_KEY.to_owned(), names)]);
        let bytes =
            safetensors::serialize(tensors, Some(metadata)).map_err(|e| format(e.to_string()))?;
        std::fs::write(path, bytes).map_err(|source| StyleBankError::Io {
            path: path.display().to_string(),
            source,
        })
    }

    /// Read from `path`.
    pub fn read(path: &Path) -> Result<StyleBank, StyleBankError> {
        let p = path.display().to_string();
        let format = |problem: String| StyleBankError::Format {
            path: p.clone(),
            problem,
        };
        let bytes = std::fs::read(path).map_err(|source| StyleBankError::Io {
            path: p.clone(),
            source,
        })?;
        let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| format(e.to_string()))?;
        let names: Vec<String> = header
            .metadata()
            .as_ref()
            .and_then(|m| m.get(NAMES_KEY))
            .and_then(|s| serde_json::from_str(s).ok())
            .ok_or_else(|| format(format!("no {NAMES_KEY} metadata")))?;
        let file = SafeTensors::deserialize(&bytes).map_err(|e| format(e.to_string()))?;
        let get = |name: &str, dtype: Dtype| {
            let t = file
                .tensor(name)
                .map_err(|_| format(format!("no tensor {name:?}")))?;
            if t.dtype() != dtype {
                return Err(format(format!(
                    "{name:?} is {:?}, not {dtype:?}",
                    t.dtype()
                )));
            }
            Ok((t.shape().to_vec(), t.data().to_vec()))
        };
        let (shape, codes) = get("style", Dtype::F32)?;
        let (_, envs) = get("environment", Dtype::U32)?;
        let bank = StyleBank {
            dim: shape.get(1).copied().unwrap_or(0),
            codes: codes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            environments: envs
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect(),
            environment_names: names,
        };
        bank.check().map_err(format)?;
        Ok(bank)
    }

    fn check(&self) -> Result<(), String> {
        if self.is_empty() || self.dim == 0 {
            return Err("no style codes".into());
        }
        if self.codes.len() != self.len() * self.dim {
            return Err(format!(
                "{} values for {} codes of {}",
                self.codes.len(),
                self.len(),
                self.dim
            ));
        }
        if let Some(e) = self
            .environments
            .iter()
            .find(|&&e| e as usize >= self.environment_names.len())
        {
            return Err(format!(
                "environment {e} but {} environment names",
                self.environment_names.len()
            ));
        }
        if self.codes.iter().any(|v| !v.is_finite()) {
            return Err("a style code is not finite".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bank_survives_a_round_trip_and_bad_ones_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("style_bank.safetensors");
        let bank = StyleBank {
            dim: 3,
            codes: vec![0.5, 1.0, -2.0, 3.0, 0.25, 7.0],
            environments: vec![1, 0],
            environment_names: vec!["P1".into(), "P2".into()],
        };
        bank.write(&path).unwrap();
        let back = StyleBank::read(&path).unwrap();
        assert_eq!(back, bank);
        assert_eq!(back.code(1), &[3.0, 0.25, 7.0]);
        let bad = StyleBank {
            environments: vec![2, 0],
            ..bank.clone()
        };
        let err = bad.write(&path).unwrap_err().to_string();
        assert!(
            err.contains("environment 2 but 2 environment names"),
            "{err}"
        );
        std::fs::write(&path, b"not safetensors").unwrap();
        let err = StyleBank::read(&path).unwrap_err().to_string();
        assert!(
            err.contains("style_bank.safetensors: not a style bank"),
            "{err}"
        );
    }
}
