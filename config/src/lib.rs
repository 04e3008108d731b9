//! bfx-config: TOML configuration of `bfx-daemon` and `bfx-trainer`.
//!
//! A configuration file holds a `[daemon]` table, a `[trainer]` table, or
//! both (one file per screen is common). Unknown keys are refused, every
//! key has a documented default unless it is required, and validation
//! errors name the full key: `daemon.batch.max_size must be >= 1, got 0`.
//! Relative paths are resolved against the configuration file's folder.

pub mod daemon;
pub mod trainer;

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{DeserializeOwned, IgnoredAny};
use thiserror::Error;

pub use daemon::DaemonConfig;
pub use trainer::TrainerConfig;

/// Why a configuration cannot be used.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read the configuration: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Not valid TOML, an unknown key, or a value of the wrong type.
    #[error("{path}: {message}")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line, column and key.
        message: String,
    },
    /// The table this program needs is absent.
    #[error(
        "{path}: no [{section}] table; see config/examples/{section}.toml for a complete example"
    )]
    MissingSection {
        /// The file.
        path: PathBuf,
        /// `daemon` or `trainer`.
        section: &'static str,
    },
    /// A value is out of range or contradicts another.
    #[error("{path}: {key} {problem}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Full dotted key.
        key: String,
        /// What is wrong, e.g. "must be >= 1, got 0".
        problem: String,
    },
}

/// A validation failure before the file's path is attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    /// Full dotted key.
    pub key: String,
    /// What is wrong.
    pub problem: String,
}

impl Invalid {
    /// A problem with `key`.
    pub fn new(key: impl Into<String>, problem: impl Into<String>) -> Invalid {
        Invalid {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

/// Fail with "`key` must be >= `min`, got `value`".
pub(crate) fn at_least<T: PartialOrd + std::fmt::Display>(
    key: &str,
    value: T,
    min: T,
) -> Result<(), Invalid> {
    if value < min {
        return Err(Invalid::new(key, format!("must be >= {min}, got {value}")));
    }
    Ok(())
}

/// The top level of a configuration file as `bfx-daemon` reads it: its own
/// table, and a `[trainer]` table that is allowed but not its business.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DaemonFile {
    daemon: Option<DaemonConfig>,
    #[serde(rename = "trainer")]
    _trainer: Option<IgnoredAny>,
}

/// The top level as `bfx-trainer` reads it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrainerFile {
    trainer: Option<TrainerConfig>,
    #[serde(rename = "daemon")]
    _daemon: Option<IgnoredAny>,
}

fn parse<T: DeserializeOwned>(text: &str, path: &Path) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| ConfigError::Syntax {
        path: path.to_owned(),
        message: format!("{e}").trim_end().to_owned(),
    })
}

fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_owned(),
        source,
    })
}

fn invalid(path: &Path) -> impl FnOnce(Invalid) -> ConfigError + '_ {
    move |i| ConfigError::Invalid {
        path: path.to_owned(),
        key: i.key,
        problem: i.problem,
    }
}

/// The folder relative paths in `path` are resolved against.
fn base_dir(path: &Path) -> PathBuf {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_owned()
}

/// Resolve `p` against `base` unless it is absolute.
pub(crate) fn resolve(base: &Path, p: &mut PathBuf) {
    if p.is_relative() {
        *p = base.join(&*p);
    }
}

/// Parse and validate the `[daemon]` table of `text`, as if read from `path`.
pub fn parse_daemon(text: &str, path: &Path) -> Result<DaemonConfig, ConfigError> {
    let mut config =
        parse::<DaemonFile>(text, path)?
            .daemon
            .ok_or(ConfigError::MissingSection {
                path: path.to_owned(),
                section: "daemon",
            })?;
    config.validate().map_err(invalid(path))?;
    config.resolve_paths(&base_dir(path));
    Ok(config)
}

/// Read, parse and validate the `[daemon]` table of a file.
pub fn load_daemon(path: &Path) -> Result<DaemonConfig, ConfigError> {
    parse_daemon(&read(path)?, path)
}

/// Parse and validate the `[trainer]` table of `text`, as if read from `path`.
pub fn parse_trainer(text: &str, path: &Path) -> Result<TrainerConfig, ConfigError> {
    let mut config =
        parse::<TrainerFile>(text, path)?
            .trainer
            .ok_or(ConfigError::MissingSection {
                path: path.to_owned(),
                section: "trainer",
            })?;
    config.validate().map_err(invalid(path))?;
    config.resolve_paths(&base_dir(path));
    Ok(config)
}

/// Read, parse and validate the `[trainer]` table of a file.
pub fn load_trainer(path: &Path) -> Result<TrainerConfig, ConfigError> {
    parse_trainer(&read(path)?, path)
}

#[cfg(test)]
mod tests;
