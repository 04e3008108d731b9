//! Acquisition naming: from a file path to the image it holds.
//!
//! Every instrument names its files its own way. A [`NamingScheme`] built
//! from a [`NamingSpec`] (a preset, or a custom regex) turns a path into an
//! [`ImageKey`]: plate, well, site, channel, optional timepoint and z.
//! A path that does not fit is an error value that says why.

mod presets;
mod well;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use well::{PlateFormat, Well, WellError};

use presets::{PlateRule, Rule};

/// The naming presets of instruments bfx knows, plus `custom`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Preset {
    /// ImageXpress / MetaXpress: `<plate>_<well>[_s<site>][_w<wave>][<GUID>].tif`,
    /// optional `TimePoint_<t>/` and `ZStep_<z>/` folders.
    Imagexpress,
    /// Opera / Operetta (Harmony): `r01c01f01p01-ch1sk1fk1fl1.tiff`; plate from
    /// the parent folder (an `Images` folder is skipped).
    Opera,
    /// Yokogawa CellVoyager: `<plate>_<well>_T0001F001L01A01Z01C01.tif`.
    Yokogawa,
    /// Cellomics: `<plate>_<well>f<field>d<channel>.tif`.
    Cellomics,
    /// RxRx1 / Cell Painting style: `<experiment>/Plate<p>/<well>_s<site>_w<ch>.png|tif`.
    Rxrx,
    /// A regex with named groups, given as `pattern`.
    Custom,
}

impl Preset {
    /// Every preset but `custom`.
    pub const INSTRUMENTS: [Preset; 5] = [
        Preset::Imagexpress,
        Preset::Opera,
        Preset::Yokogawa,
        Preset::Cellomics,
        Preset::Rxrx,
    ];

    /// The name used in configuration files.
    pub fn name(self) -> &'static str {
        match self {
            Preset::Imagexpress => "imagexpress",
            Preset::Opera => "opera",
            Preset::Yokogawa => "yokogawa",
            Preset::Cellomics => "cellomics",
            Preset::Rxrx => "rxrx",
            Preset::Custom => "custom",
        }
    }

    /// What the preset writes before a channel number (`w2`, `ch1`, `c1`,
    /// `d0`); empty for `custom`, whose `channel` group is taken as captured.
    pub fn channel_prefix(self) -> &'static str {
        match self {
            Preset::Imagexpress | Preset::Rxrx => "w",
            Preset::Opera => "ch",
            Preset::Yokogawa => "c",
            Preset::Cellomics => "d",
            Preset::Custom => "",
        }
    }

    /// The instrument preset named `name` (`custom` is not an instrument).
    pub fn instrument(name: &str) -> Option<Preset> {
        Preset::INSTRUMENTS.into_iter().find(|p| p.name() == name)
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How file names are read: the `[naming]` table of a configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamingSpec {
    /// Which instrument's naming scheme.
    pub preset: Preset,
    /// For `custom`: a regex matched against the whole file name, with named
    /// groups `plate`, `well` (or `row` and `col`), `site`, `channel`, `t`, `z`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<String>,
    /// Take the plate name from a folder instead: 1 is the file's parent
    /// folder, 2 its parent, and so on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plate_from_dir: Option<usize>,
    /// Plate format in wells (default 1536, which admits every standard plate).
    #[serde(default)]
    pub plate_format: PlateFormat,
}

impl NamingSpec {
    /// The spec of a preset with its defaults.
    pub fn preset(preset: Preset) -> NamingSpec {
        NamingSpec {
            preset,
            pattern: None,
            plate_from_dir: None,
            plate_format: PlateFormat::default(),
        }
    }
}

/// Why a [`NamingSpec`] cannot be used.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum NamingSpecError {
    /// `custom` without a pattern.
    #[error("preset \"custom\" needs a `pattern`")]
    MissingPattern,
    /// A pattern given for a built-in preset.
    #[error("`pattern` is only used with preset \"custom\", not \"{0}\"")]
    UnexpectedPattern(Preset),
    /// The regex does not compile.
    #[error("`pattern` is not a valid regex: {0}")]
    BadRegex(String),
    /// The regex lacks or misnames groups.
    #[error("`pattern` {0}")]
    BadGroups(String),
    /// `plate_from_dir = 0`.
    #[error("`plate_from_dir` counts folders upwards from the file and starts at 1, got 0")]
    ZeroDirLevel,
}

/// What a file is an image of: one channel of one site.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ImageKey {
    /// The site the image belongs to.
    pub site: SiteKey,
    /// Channel identifier: a preset writes its channel letter(s) and the
    /// number without leading zeros (`w2`, `ch1`, `c1`, `d0`); a custom
    /// pattern gives the text its `channel` group captured.
    pub channel: String,
}

/// One imaged position: all channels of it together form a model input.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SiteKey {
    /// Plate name as the instrument wrote it (not yet safe as a path).
    pub plate: String,
    /// Well.
    pub well: Well,
    /// Site (field) number as the instrument wrote it.
    pub site: u32,
    /// Timepoint, for time-lapse acquisitions.
    pub timepoint: Option<u32>,
    /// Z plane, for stacks.
    pub z: Option<u32>,
}

impl fmt::Display for SiteKey {
    /// `plate/well/site[/t<t>][/z<z>]`, e.g. `P1/B03/2/t1`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}/{}", self.plate, self.well, self.site)?;
        if let Some(t) = self.timepoint {
            write!(f, "/t{t}")?;
        }
        if let Some(z) = self.z {
            write!(f, "/z{z}")?;
        }
        Ok(())
    }
}

/// Why a path is not an image of the acquisition.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum NamingError {
    /// The file name does not fit the scheme.
    #[error("{path}: name does not match the {scheme} naming scheme (expected {expected})")]
    NoMatch {
        /// The path.
        path: PathBuf,
        /// Scheme name.
        scheme: Preset,
        /// What names of the scheme look like.
        expected: String,
    },
    /// The name fits but names a well that cannot exist.
    #[error("{path}: impossible well {well:?}: {reason}")]
    BadWell {
        /// The path.
        path: PathBuf,
        /// The well as written.
        well: String,
        /// Why it is impossible.
        reason: WellError,
    },
    /// A number field does not fit in 32 bits.
    #[error("{path}: {field} {value:?} is out of range")]
    BadNumber {
        /// The path.
        path: PathBuf,
        /// Which field.
        field: &'static str,
        /// The text.
        value: String,
    },
    /// No plate name could be found.
    #[error("{path}: no plate name: {reason}")]
    NoPlate {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The instrument writes this file but it is not an acquired image (e.g. a thumbnail).
    #[error("{path}: {reason}")]
    NotAcquired {
        /// The path.
        path: PathBuf,
        /// What the file is.
        reason: &'static str,
    },
}

/// A compiled naming scheme.
#[derive(Clone, Debug)]
pub struct NamingScheme {
    rule: Rule,
    plate_from_dir: Option<usize>,
    format: PlateFormat,
}

impl NamingScheme {
    /// Compile a spec, checking a custom pattern's groups.
    pub fn new(spec: &NamingSpec) -> Result<NamingScheme, NamingSpecError> {
        if spec.plate_from_dir == Some(0) {
            return Err(NamingSpecError::ZeroDirLevel);
        }
        let rule = match (spec.preset, &spec.pattern) {
            (Preset::Custom, None) => return Err(NamingSpecError::MissingPattern),
            (Preset::Custom, Some(p)) => Rule::custom(p, spec.plate_from_dir.is_some())?,
            (preset, None) => Rule::preset(preset),
            (preset, Some(_)) => return Err(NamingSpecError::UnexpectedPattern(preset)),
        };
        Ok(NamingScheme {
            rule,
            plate_from_dir: spec.plate_from_dir,
            format: spec.plate_format,
        })
    }

    /// The scheme of a preset with default options (`custom` needs a
    /// pattern, so it gives [`NamingSpecError::MissingPattern`]).
    pub fn preset(preset: Preset) -> Result<NamingScheme, NamingSpecError> {
        NamingScheme::new(&NamingSpec::preset(preset))
    }

    /// Read the image key from a path (relative to the acquisition root or absolute).
    pub fn parse(&self, path: &Path) -> Result<ImageKey, NamingError> {
        let rule = &self.rule;
        let no_match = || NamingError::NoMatch {
            path: path.to_owned(),
            scheme: rule.preset,
            expected: rule.expected.clone(),
        };
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(no_match)?;
        let caps = rule.regex.captures(name).ok_or_else(no_match)?;
        if caps.name("thumb").is_some() {
            return Err(NamingError::NotAcquired {
                path: path.to_owned(),
                reason: "a thumbnail the instrument writes beside the image",
            });
        }
        let number = |field: &'static str, group: &str| -> Result<Option<u32>, NamingError> {
            caps.name(group)
                .map(|m| {
                    m.as_str()
                        .parse::<u32>()
                        .map_err(|_| NamingError::BadNumber {
                            path: path.to_owned(),
                            field,
                            value: m.as_str().to_owned(),
                        })
                })
                .transpose()
        };

        let well = self.well(path, &caps)?;
        let site = number("site", "site")?.unwrap_or(1);
        // Harmony writes the timepoint as `sk<t>` or, in newer versions, `t<t>`.
        let mut timepoint = number("timepoint", "t")?.or(number("timepoint", "t2")?);
        let mut z = number("z", "z")?;
        if rule.dir_tokens {
            let (t_dir, z_dir) = presets::imagexpress_dirs(path);
            timepoint = timepoint.or(t_dir);
            z = z.or(z_dir);
        }
        let channel = match caps.name("channel") {
            None => format!("{}1", rule.channel_prefix),
            Some(m) if rule.channel_prefix.is_empty() => m.as_str().to_owned(),
            Some(_) => format!(
                "{}{}",
                rule.channel_prefix,
                number("channel", "channel")?.unwrap_or(1)
            ),
        };
        let plate = self.plate(path, &caps)?;
        Ok(ImageKey {
            site: SiteKey {
                plate,
                well,
                site,
                timepoint,
                z,
            },
            channel,
        })
    }

    fn well(&self, path: &Path, caps: &regex::Captures<'_>) -> Result<Well, NamingError> {
        let bad = |well: String, reason| NamingError::BadWell {
            path: path.to_owned(),
            well,
            reason,
        };
        if let Some(m) = caps.name("well") {
            return Well::parse(m.as_str(), self.format).map_err(|e| bad(m.as_str().to_owned(), e));
        }
        let group = |g| caps.name(g).map_or("", |m| m.as_str());
        let (row, col) = (group("row"), group("col"));
        let written = format!("r{row}c{col}");
        let row_n = match row.parse::<u32>() {
            Ok(n) => Ok(n),
            Err(_) => {
                Well::parse(&format!("{row}1"), PlateFormat::default()).map(|w| u32::from(w.row()))
            }
        }
        .map_err(|e| bad(written.clone(), e))?;
        let col_n = col
            .parse::<u32>()
            .map_err(|_| bad(written.clone(), WellError::Syntax(written.clone())))?;
        Well::new(row_n, col_n, self.format).map_err(|e| bad(written, e))
    }

    fn plate(&self, path: &Path, caps: &regex::Captures<'_>) -> Result<String, NamingError> {
        let no_plate = |reason: String| NamingError::NoPlate {
            path: path.to_owned(),
            reason,
        };
        let plate = if let Some(level) = self.plate_from_dir {
            presets::ancestor(path, level)
                .ok_or_else(|| no_plate(format!("the path has no folder {level} level(s) up")))?
                .to_owned()
        } else {
            match self.rule.plate {
                PlateRule::FromName => caps
                    .name("plate")
                    .ok_or_else(|| no_plate("the pattern has no `plate` group".into()))?
                    .as_str()
                    .to_owned(),
                PlateRule::ParentSkipping(skip) => presets::parent_skipping(path, skip)
                    .ok_or_else(|| no_plate("the file is not inside a plate folder".into()))?
                    .to_owned(),
                PlateRule::ExperimentPlate => presets::experiment_plate(path).ok_or_else(|| {
                    no_plate("expected <experiment>/Plate<p>/ folders above the file".into())
                })?,
            }
        };
        if plate.trim().is_empty() {
            return Err(no_plate("the plate name is empty".into()));
        }
        Ok(plate)
    }
}

#[cfg(test)]
mod tests;
