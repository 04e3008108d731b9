//! The manifest: one CSV row per site with its files, environments and label.
//!
//! Columns (header names, any order):
//! - `plate`, `well`, `site` (required): the site; wells like `B03` or `B3`.
//! - `label` (required for training): the biological class y.
//! - `series`, `section` (optional): the observational-environment levels
//!   above and below the plate; leave-series-out and leave-section-out
//!   splits need them.
//! - `path_<channel>` (one per channel): the image file, relative to the
//!   acquisition root or absolute. `<channel>` is the identifier the
//!   preprocessing spec lists (`w1`, `ch2`, `DAPI`, ...).
//! - `meta_<anything>` (optional): annotations bfx carries but ignores.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use bfx_core::naming::{PlateFormat, Well};
use serde::Serialize;
use thiserror::Error;

/// One site of the manifest.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SiteRow {
    /// Plate name.
    pub plate: String,
    /// Well, normalized (`B03`).
    pub well: String,
    /// Site number.
    pub site: u32,
    /// Series, when the manifest has the column.
    pub series: Option<String>,
    /// Plate section, when the manifest has the column.
    pub section: Option<String>,
    /// Biological label; `None` when the cell is empty.
    pub label: Option<String>,
    /// One file per channel, in the manifest's channel order.
    pub paths: Vec<PathBuf>,
    /// CSV line (header is line 1), for error messages.
    pub line: usize,
}

/// Observational-environment levels, outermost first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EnvLevel {
    /// Full replicate.
    Series,
    /// Plate.
    Plate,
    /// Plate section.
    Section,
    /// Well.
    Well,
}

impl EnvLevel {
    /// Column name / level name.
    pub fn name(self) -> &'static str {
        match self {
            EnvLevel::Series => "series",
            EnvLevel::Plate => "plate",
            EnvLevel::Section => "section",
            EnvLevel::Well => "well",
        }
    }
}

impl SiteRow {
    /// The environment this site belongs to at `level`, as a unique name
    /// (`S1`, `S1P1`, `S1P1/Q2`, `S1P1/B03`); `None` when the manifest lacks the level.
    pub fn env(&self, level: EnvLevel) -> Option<String> {
        match level {
            EnvLevel::Series => self.series.clone(),
            EnvLevel::Plate => Some(self.plate.clone()),
            EnvLevel::Section => self.section.as_ref().map(|s| format!("{}/{s}", self.plate)),
            EnvLevel::Well => Some(format!("{}/{}", self.plate, self.well)),
        }
    }
}

/// A parsed manifest.
#[derive(Clone, Debug, PartialEq)]
pub struct Manifest {
    /// The CSV file (for messages).
    pub source: PathBuf,
    /// Channel identifiers, in column order.
    pub channels: Vec<String>,
    /// Whether the `series` / `section` columns exist.
    pub has_series: bool,
    /// See `has_series`.
    pub has_section: bool,
    /// Sites in file order.
    pub rows: Vec<SiteRow>,
}

/// Why a manifest cannot be used.
#[derive(Debug, Error)]
pub enum ManifestError {
    /// The file cannot be read or written.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// Not CSV, or the header is wrong.
    #[error("{0}: {1}")]
    Format(PathBuf, String),
    /// Rows with problems; every offending row is listed.
    #[error("{path}: {} problem(s):{}", problems.len(), problem_list(problems))]
    Invalid {
        /// The manifest.
        path: PathBuf,
        /// One line per problem, starting with the CSV line.
        problems: Vec<String>,
    },
}

/// At most this many problems are spelled out; the count is always exact.
const SHOWN_PROBLEMS: usize = 20;

/// Problems one per line, the first few spelled out and the rest counted.
pub(crate) fn problem_list(problems: &[String]) -> String {
    let mut s = String::new();
    for p in problems.iter().take(SHOWN_PROBLEMS) {
        let _ = write!(s, "\n  {p}");
    }
    if problems.len() > SHOWN_PROBLEMS {
        let _ = write!(s, "\n  ... and {} more", problems.len() - SHOWN_PROBLEMS);
    }
    s
}

const PATH_PREFIX: &str = "path_";

impl Manifest {
    /// Read and parse a manifest; rows with unreadable fields are reported together.
    pub fn read(path: &Path) -> Result<Manifest, ManifestError> {
        let format = |m: String| ManifestError::Format(path.to_owned(), m);
        let mut reader = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .from_path(path)
            .map_err(|e| match e.into_kind() {
                csv::ErrorKind::Io(io) => ManifestError::Io(path.to_owned(), io),
                other => format(format!("{other:?}")),
            })?;
        let header = reader
            .headers()
            .map_err(|e| format(format!("cannot read the header: {e}")))?
            .clone();
        let columns = Columns::from_header(&header).map_err(format)?;
        let mut rows = Vec::new();
        let mut problems = Vec::new();
        for (i, record) in reader.records().enumerate() {
            let line = i + 2;
            match record {
                Err(e) => problems.push(format!("line {line}: {e}")),
                Ok(r) => match columns.row(&r, line) {
                    Ok(row) => rows.push(row),
                    Err(p) => problems.push(format!("line {line}: {p}")),
                },
            }
        }
        if !problems.is_empty() {
            return Err(ManifestError::Invalid {
                path: path.to_owned(),
                problems,
            });
        }
        if rows.is_empty() {
            return Err(format(
                "no sites (the file has a header but no rows)".into(),
            ));
        }
        Ok(Manifest {
            source: path.to_owned(),
            channels: columns.channels.iter().map(|(c, _)| c.clone()).collect(),
            has_series: columns.series.is_some(),
            has_section: columns.section.is_some(),
            rows,
        })
    }

    /// Check the manifest against the files under `root` and the model's
    /// channels: missing files, channels the model lacks or the manifest
    /// lacks, missing labels (when `labels` is set), duplicate sites, and
    /// plates with a single image (no plate statistics possible).
    pub fn validate(
        &self,
        root: &Path,
        channels: &[String],
        labels: bool,
    ) -> Result<(), ManifestError> {
        let mut problems = Vec::new();
        for c in channels.iter().filter(|c| !self.channels.contains(c)) {
            problems.push(format!(
                "channel {c:?} of the preprocessing spec has no `{PATH_PREFIX}{c}` column"
            ));
        }
        for c in self.channels.iter().filter(|c| !channels.contains(c)) {
            problems.push(format!(
                "column `{PATH_PREFIX}{c}` is an unknown channel: the preprocessing spec has {channels:?}"
            ));
        }
        let mut seen: HashMap<(&str, &str, u32), usize> = HashMap::new();
        let mut per_plate: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for row in &self.rows {
            per_plate.entry(&row.plate).or_default().push(row.line);
            if let Some(first) = seen.insert((&row.plate, &row.well, row.site), row.line) {
                problems.push(format!(
                    "line {}: site {}/{}/{} is already on line {first}",
                    row.line, row.plate, row.well, row.site
                ));
            }
            if labels && row.label.is_none() {
                problems.push(format!("line {}: label is empty", row.line));
            }
            for (c, p) in self.channels.iter().zip(&row.paths) {
                let full = root.join(p);
                if !full.is_file() {
                    problems.push(format!(
                        "line {}: {PATH_PREFIX}{c}: {} does not exist",
                        row.line,
                        full.display()
                    ));
                }
            }
        }
        for (plate, lines) in per_plate {
            if lines.len() == 1 {
                problems.push(format!(
                    "line {}: plate {plate:?} has a single site; plate-level statistics and splits need at least two",
                    lines[0]
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ManifestError::Invalid {
                path: self.source.clone(),
                problems,
            })
        }
    }

    /// Write the manifest as CSV (the format [`Manifest::read`] reads).
    pub fn write(&self, path: &Path) -> Result<(), ManifestError> {
        let io = |e: csv::Error| ManifestError::Format(path.to_owned(), e.to_string());
        let mut w = csv::Writer::from_path(path).map_err(io)?;
        let mut header = vec!["plate".to_owned(), "well".into(), "site".into()];
        if self.has_series {
            header.push("series".into());
        }
        if self.has_section {
            header.push("section".into());
        }
        header.push("label".into());
        header.extend(self.channels.iter().map(|c| format!("{PATH_PREFIX}{c}")));
        w.write_record(&header).map_err(io)?;
        for row in &self.rows {
            let mut record = vec![row.plate.clone(), row.well.clone(), row.site.to_string()];
            if self.has_series {
                record.push(row.series.clone().unwrap_or_default());
            }
            if self.has_section {
                record.push(row.section.clone().unwrap_or_default());
            }
            record.push(row.label.clone().unwrap_or_default());
            record.extend(row.paths.iter().map(|p| p.display().to_string()));
            w.write_record(&record).map_err(io)?;
        }
        w.flush().map_err(|e| ManifestError::Io(path.to_owned(), e))
    }

    /// Distinct labels, sorted (the class order of a model trained on this manifest).
    pub fn labels(&self) -> Vec<String> {
        let mut labels: Vec<String> = self.rows.iter().filter_map(|r| r.label.clone()).collect();
        labels.sort();
        labels.dedup();
        labels
    }
}

/// Column positions of a manifest header.
struct Columns {
    plate: usize,
    well: usize,
    site: usize,
    label: Option<usize>,
    series: Option<usize>,
    section: Option<usize>,
    channels: Vec<(String, usize)>,
}

impl Columns {
    fn from_header(header: &csv::StringRecord) -> Result<Columns, String> {
        let mut named: HashMap<&str, usize> = HashMap::new();
        let mut channels = Vec::new();
        for (i, name) in header.iter().enumerate() {
            if let Some(channel) = name.strip_prefix(PATH_PREFIX) {
                if channel.is_empty() {
                    return Err(format!(
                        "column {} is `{PATH_PREFIX}` without a channel",
                        i + 1
                    ));
                }
                channels.push((channel.to_owned(), i));
            } else if ["plate", "well", "site", "label", "series", "section"].contains(&name) {
                if named.insert(name, i).is_some() {
                    return Err(format!("column `{name}` appears twice"));
                }
            } else if !name.starts_with("meta_") {
                return Err(format!(
                    "unknown column `{name}`: known columns are plate, well, site, label, series, section, path_<channel>; put other annotations in columns starting with `meta_`"
                ));
            }
        }
        let need = |name: &str| {
            named
                .get(name)
                .copied()
                .ok_or_else(|| format!("the header has no `{name}` column"))
        };
        if channels.is_empty() {
            return Err("the header has no `path_<channel>` column".into());
        }
        Ok(Columns {
            plate: need("plate")?,
            well: need("well")?,
            site: need("site")?,
            label: named.get("label").copied(),
            series: named.get("series").copied(),
            section: named.get("section").copied(),
            channels,
        })
    }

    fn row(&self, r: &csv::StringRecord, line: usize) -> Result<SiteRow, String> {
        let get = |i: usize| r.get(i).unwrap_or("");
        let optional = |i: Option<usize>| i.map(get).filter(|s| !s.is_empty()).map(str::to_owned);
        let plate = get(self.plate);
        if plate.is_empty() {
            return Err("plate is empty".into());
        }
        // Any plate format: the manifest does not say which, and the
        // largest accepts every well a smaller one has.
        let well = Well::parse(get(self.well), PlateFormat::default())
            .map_err(|e| format!("well {:?}: {e}", get(self.well)))?;
        let site = get(self.site)
            .parse::<u32>()
            .map_err(|_| format!("site {:?} is not a number", get(self.site)))?;
        let mut paths = Vec::with_capacity(self.channels.len());
        for (c, i) in &self.channels {
            let p = get(*i);
            if p.is_empty() {
                return Err(format!("{PATH_PREFIX}{c} is empty"));
            }
            paths.push(PathBuf::from(p));
        }
        Ok(SiteRow {
            plate: plate.to_owned(),
            well: well.to_string(),
            site,
            series: optional(self.series),
            section: optional(self.section),
            label: optional(self.label),
            paths,
            line,
        })
    }
}
