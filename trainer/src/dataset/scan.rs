//! Building a manifest the way screens are usually annotated: scan the
//! acquisition folder with a naming preset and label wells from a plate map.
//!
//! Plate map CSV columns: `well`, `label` (required); `plate` (optional:
//! rows without a plate apply to every plate, a plate's own row wins);
//! `series`, `section` (optional OE levels).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use bfx_core::naming::{NamingError, NamingScheme, PlateFormat, SiteKey, Well};

use super::DatasetError;
use super::manifest::{Manifest, SiteRow, problem_list};

/// Well annotations.
#[derive(Clone, Debug, Default)]
pub struct PlateMap {
    /// `(plate or "" for every plate, well)` -> annotation.
    entries: HashMap<(String, String), Annotation>,
    has_series: bool,
    has_section: bool,
}

#[derive(Clone, Debug)]
struct Annotation {
    label: String,
    series: Option<String>,
    section: Option<String>,
}

impl PlateMap {
    /// Read a plate map CSV.
    pub fn read(path: &Path) -> Result<PlateMap, DatasetError> {
        let err = |m: String| DatasetError::Scan(path.to_owned(), m);
        let mut reader = csv::ReaderBuilder::new()
            .trim(csv::Trim::All)
            .from_path(path)
            .map_err(|e| err(e.to_string()))?;
        let header = reader.headers().map_err(|e| err(e.to_string()))?.clone();
        let col = |name: &str| header.iter().position(|h| h == name);
        if let Some(unknown) = header
            .iter()
            .find(|h| !["plate", "well", "label", "series", "section"].contains(h))
        {
            return Err(err(format!(
                "unknown column `{unknown}`; a plate map has well, label and optionally plate, series, section"
            )));
        }
        let (Some(well_col), Some(label_col)) = (col("well"), col("label")) else {
            return Err(err("a plate map needs `well` and `label` columns".into()));
        };
        let (plate_col, series_col, section_col) = (col("plate"), col("series"), col("section"));
        let mut map = PlateMap {
            has_series: series_col.is_some(),
            has_section: section_col.is_some(),
            ..PlateMap::default()
        };
        let mut problems = Vec::new();
        for (i, record) in reader.records().enumerate() {
            let line = i + 2;
            let record = record.map_err(|e| err(e.to_string()))?;
            let get = |c: Option<usize>| c.and_then(|c| record.get(c)).unwrap_or("").to_owned();
            let optional = |c: Option<usize>| Some(get(c)).filter(|s| !s.is_empty());
            let well = match Well::parse(&get(Some(well_col)), PlateFormat::default()) {
                Ok(w) => w.to_string(),
                Err(e) => {
                    problems.push(format!("line {line}: well {:?}: {e}", get(Some(well_col))));
                    continue;
                }
            };
            let label = get(Some(label_col));
            if label.is_empty() {
                problems.push(format!("line {line}: label is empty"));
                continue;
            }
            let key = (get(plate_col), well);
            let annotation = Annotation {
                label,
                series: optional(series_col),
                section: optional(section_col),
            };
            if map.entries.insert(key.clone(), annotation).is_some() {
                problems.push(format!(
                    "line {line}: plate {:?} well {} is listed twice",
                    key.0, key.1
                ));
            }
        }
        if !problems.is_empty() {
            return Err(err(format!(
                "{} problem(s):{}",
                problems.len(),
                problem_list(&problems)
            )));
        }
        Ok(map)
    }

    fn get(&self, plate: &str, well: &str) -> Option<&Annotation> {
        self.entries
            .get(&(plate.to_owned(), well.to_owned()))
            .or_else(|| self.entries.get(&(String::new(), well.to_owned())))
    }
}

/// What a scan found besides the manifest.
#[derive(Clone, Debug, Default)]
pub struct ScanReport {
    /// Files whose names do not fit the naming scheme (first few, and the count).
    pub unnamed: Vec<String>,
    /// How many such files.
    pub unnamed_count: usize,
    /// Sites in wells the plate map does not annotate (left out).
    pub unannotated_sites: usize,
}

/// Scan `root` with `scheme` and label the sites from `map`. Every site
/// must have exactly one file for each of `channels`; paths in the
/// manifest are relative to `root`.
pub fn scan_acquisition(
    root: &Path,
    scheme: &NamingScheme,
    channels: &[String],
    map: &PlateMap,
) -> Result<(Manifest, ScanReport), DatasetError> {
    let mut files = Vec::new();
    walk(root, root, &mut files)?;
    files.sort();
    let mut report = ScanReport::default();
    let mut sites: BTreeMap<SiteKey, BTreeMap<String, PathBuf>> = BTreeMap::new();
    let mut problems = Vec::new();
    let mut planes: HashMap<SiteKey, (Option<u32>, Option<u32>)> = HashMap::new();
    for rel in files {
        let key = match scheme.parse(&rel) {
            Ok(key) => key,
            Err(NamingError::NotAcquired { .. }) => continue,
            Err(e) => {
                report.unnamed_count += 1;
                if report.unnamed.len() < 5 {
                    report.unnamed.push(e.to_string());
                }
                continue;
            }
        };
        if !channels.contains(&key.channel) {
            continue;
        }
        // Instruments name the single plane and time point of an ordinary
        // acquisition too (Opera `p01`, `sk1`); only several of them per
        // site are refused below.
        let mut site_key = key.site.clone();
        let plane = (site_key.timepoint.take(), site_key.z.take());
        match planes.insert(site_key.clone(), plane) {
            Some(other) if other != plane => {
                problems.push(format!(
                    "{}: site {site_key} has several time points or z planes; training manifests take one image per channel and site",
                    rel.display()
                ));
                continue;
            }
            _ => {}
        }
        let site = sites.entry(site_key).or_default();
        if let Some(first) = site.insert(key.channel.clone(), rel.clone()) {
            problems.push(format!(
                "{}: site {} already has channel {} in {}",
                rel.display(),
                key.site,
                key.channel,
                first.display()
            ));
        }
    }
    let mut rows = Vec::new();
    for (key, by_channel) in sites {
        let Some(annotation) = map.get(&key.plate, &key.well.to_string()) else {
            report.unannotated_sites += 1;
            continue;
        };
        let missing: Vec<&String> = channels
            .iter()
            .filter(|c| !by_channel.contains_key(*c))
            .collect();
        if !missing.is_empty() {
            problems.push(format!("site {key}: no file for channel(s) {missing:?}"));
            continue;
        }
        rows.push(SiteRow {
            plate: key.plate.clone(),
            well: key.well.to_string(),
            site: key.site,
            series: annotation.series.clone(),
            section: annotation.section.clone(),
            label: Some(annotation.label.clone()),
            paths: channels
                .iter()
                .filter_map(|c| by_channel.get(c).cloned())
                .collect(),
            line: rows.len() + 2,
        });
    }
    if !problems.is_empty() {
        return Err(DatasetError::Scan(
            root.to_owned(),
            format!("{} problem(s):{}", problems.len(), problem_list(&problems)),
        ));
    }
    if rows.is_empty() {
        return Err(DatasetError::Scan(
            root.to_owned(),
            format!(
                "no annotated site with all channels {channels:?} ({} file name(s) did not fit the naming scheme, {} site(s) had no plate-map entry)",
                report.unnamed_count, report.unannotated_sites
            ),
        ));
    }
    Ok((
        Manifest {
            source: PathBuf::from("manifest.csv"),
            channels: channels.to_vec(),
            has_series: map.has_series,
            has_section: map.has_section,
            rows,
        },
        report,
    ))
}

/// Regular files under `dir`, relative to `root`.
fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), DatasetError> {
    let err = |e: std::io::Error| DatasetError::Scan(dir.to_owned(), e.to_string());
    for entry in std::fs::read_dir(dir).map_err(err)? {
        let entry = entry.map_err(err)?;
        let kind = entry.file_type().map_err(err)?;
        let path = entry.path();
        if kind.is_dir() {
            walk(root, &path, out)?;
        } else if kind.is_file() {
            // Entries of read_dir(dir) lie under dir, which lies under root.
            out.push(
                path.strip_prefix(root)
                    .map(Path::to_path_buf)
                    .unwrap_or(path),
            );
        }
    }
    Ok(())
}
