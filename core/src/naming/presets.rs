//! The instruments' naming rules, and how custom patterns are checked.
//!
//! Every rule is one regex over the file name using the same group names
//! (`plate`, `well` or `row`+`col`, `site`, `channel`, `t`, `z`, and
//! `thumb` for files that are not acquired images), so one extraction path
//! in [`super::NamingScheme::parse`] serves all of them.

use std::path::Path;

use regex::Regex;

use super::{NamingSpecError, Preset};

/// Where the plate name comes from when `plate_from_dir` is not set.
#[derive(Clone, Copy, Debug)]
pub(super) enum PlateRule {
    /// The `plate` group of the file name.
    FromName,
    /// The parent folder, skipping folders with these names (any case).
    ParentSkipping(&'static [&'static str]),
    /// `<experiment>/Plate<p>/` folders, joined as `<experiment>_Plate<p>`.
    ExperimentPlate,
}

/// A compiled naming rule.
#[derive(Clone, Debug)]
pub(super) struct Rule {
    pub preset: Preset,
    pub regex: Regex,
    /// What names look like, for error messages.
    pub expected: String,
    /// Written before the channel number; empty keeps a custom capture as is.
    pub channel_prefix: &'static str,
    pub plate: PlateRule,
    /// Read `TimePoint_<t>` and `ZStep_<z>` folders (MetaXpress).
    pub dir_tokens: bool,
}

const GUID: &str = r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}";
const TIFF_EXT: &str = r"\.(?i:tiff?)$";

/// Group names a custom pattern may use.
const KNOWN_GROUPS: [&str; 8] = ["plate", "well", "row", "col", "site", "channel", "t", "z"];

impl Rule {
    pub fn preset(preset: Preset) -> Rule {
        let (pattern, expected, plate, dir_tokens) = match preset {
            Preset::Imagexpress => (
                // The plate part is greedy so the well is the last `_<well>`
                // token; the GUID is glued to the wave number. Wells are
                // upper case, which keeps `_s2`/`_w2` from reading as wells.
                format!(
                    r"^(?P<plate>.+)_(?P<well>[A-Z]{{1,2}}\d{{1,3}})(?:_s(?P<site>\d+))?(?:_w(?P<channel>\d+))?(?P<thumb>_thumb)?(?:{GUID})?{TIFF_EXT}"
                ),
                "<plate>_<well>[_s<site>][_w<wave>][<GUID>].tif, e.g. IXMtest_A03_s2_w2<GUID>.tif",
                PlateRule::FromName,
                true,
            ),
            Preset::Opera => (
                format!(
                    r"^r(?P<row>\d{{2}})c(?P<col>\d{{2}})f(?P<site>\d{{2,3}})p(?P<z>\d{{2,3}})-ch(?P<channel>\d{{1,2}})(?:sk(?P<t>\d+)fk\d+fl\d+|t(?P<t2>\d+))?{TIFF_EXT}"
                ),
                "r<row>c<col>f<field>p<plane>-ch<channel>sk<t>fk1fl1.tiff inside a plate folder",
                PlateRule::ParentSkipping(&["images"]),
                false,
            ),
            Preset::Yokogawa => (
                format!(
                    r"^(?P<plate>.+)_(?P<well>[A-Z]{{1,2}}\d{{2}})_T(?P<t>\d{{4}})F(?P<site>\d{{3}})L\d{{2}}A\d{{2}}Z(?P<z>\d{{2}})C(?P<channel>\d{{2}}){TIFF_EXT}"
                ),
                "<plate>_<well>_T0001F001L01A01Z01C01.tif",
                PlateRule::FromName,
                false,
            ),
            Preset::Cellomics => (
                format!(
                    r"^(?P<plate>.+)_(?P<well>[A-Z]{{1,2}}\d{{2}})f(?P<site>\d{{2,3}})d(?P<channel>\d)(?:{GUID})?{TIFF_EXT}"
                ),
                "<plate>_<well>f<field, 2 digits>d<channel digit>.tif, e.g. AS_09047_050428030001_O24f02d2.TIF",
                PlateRule::FromName,
                false,
            ),
            Preset::Rxrx => (
                r"^(?P<well>[A-Z]{1,2}\d{2})_s(?P<site>\d+)_w(?P<channel>\d+)\.(?i:png|tiff?)$"
                    .to_owned(),
                "<experiment>/Plate<p>/<well>_s<site>_w<channel>.png",
                PlateRule::ExperimentPlate,
                false,
            ),
            // NamingScheme::new sends `custom` to Rule::custom before this match.
            Preset::Custom => unreachable!("custom rules are built by Rule::custom"),
        };
        Rule {
            preset,
            channel_prefix: preset.channel_prefix(),
            // The preset patterns are constants of this file; the tests compile each.
            regex: Regex::new(&pattern).expect("preset patterns are valid regexes"),
            expected: expected.to_owned(),
            plate,
            dir_tokens,
        }
    }

    /// A user's pattern: every group must be known, and the groups must
    /// determine a well, a channel and (unless a folder gives it) a plate.
    pub fn custom(pattern: &str, plate_from_dir: bool) -> Result<Rule, NamingSpecError> {
        // Anchor so that the pattern describes the whole file name.
        let anchored = format!("^(?:{pattern})$");
        let regex = Regex::new(&anchored).map_err(|e| NamingSpecError::BadRegex(e.to_string()))?;
        let groups: Vec<&str> = regex.capture_names().flatten().collect();
        if let Some(unknown) = groups.iter().find(|g| !KNOWN_GROUPS.contains(g)) {
            return Err(NamingSpecError::BadGroups(format!(
                "has an unknown group `{unknown}`; known groups: {}",
                KNOWN_GROUPS.join(", ")
            )));
        }
        let has = |g: &str| groups.contains(&g);
        let has_well = has("well") || (has("row") && has("col"));
        if !has_well {
            return Err(NamingSpecError::BadGroups(
                "needs a `well` group, or `row` and `col` groups".into(),
            ));
        }
        if !has("channel") {
            return Err(NamingSpecError::BadGroups("needs a `channel` group".into()));
        }
        if !has("plate") && !plate_from_dir {
            return Err(NamingSpecError::BadGroups(
                "needs a `plate` group, or set `plate_from_dir`".into(),
            ));
        }
        Ok(Rule {
            preset: Preset::Custom,
            regex,
            expected: format!("a name matching {pattern}"),
            channel_prefix: "",
            plate: PlateRule::FromName,
            dir_tokens: false,
        })
    }
}

fn dir_name(path: &Path) -> Option<&str> {
    path.file_name().and_then(|n| n.to_str())
}

/// The name of the folder `level` levels above the file (1 = parent).
pub(super) fn ancestor(path: &Path, level: usize) -> Option<&str> {
    path.ancestors().nth(level).and_then(dir_name)
}

/// The parent folder's name, going further up past folders named in `skip`.
pub(super) fn parent_skipping<'p>(path: &'p Path, skip: &[&str]) -> Option<&'p str> {
    path.ancestors()
        .skip(1)
        .map_while(dir_name)
        .find(|name| !skip.iter().any(|s| s.eq_ignore_ascii_case(name)))
}

/// `<experiment>_Plate<p>` from `<experiment>/Plate<p>/<file>`.
pub(super) fn experiment_plate(path: &Path) -> Option<String> {
    let plate = ancestor(path, 1)?;
    let number = strip_prefix_ignore_case(plate, "plate")?;
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let experiment = ancestor(path, 2)?;
    Some(format!("{experiment}_Plate{number}"))
}

/// Timepoint and z from MetaXpress's `TimePoint_<t>/` and `ZStep_<z>/` folders.
pub(super) fn imagexpress_dirs(path: &Path) -> (Option<u32>, Option<u32>) {
    let mut found = (None, None);
    for name in path.ancestors().skip(1).map_while(dir_name) {
        if let Some(t) = strip_prefix_ignore_case(name, "timepoint_").and_then(|n| n.parse().ok()) {
            found.0 = found.0.or(Some(t));
        }
        if let Some(z) = strip_prefix_ignore_case(name, "zstep_").and_then(|n| n.parse().ok()) {
            found.1 = found.1.or(Some(z));
        }
    }
    found
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}
