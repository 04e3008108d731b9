//! The plate layout CSV (`daemon.plate.layout_csv`): which wells a plate
//! images, and so how many sites complete it. Columns: `well`, and
//! optionally `plate` (rows without it apply to every plate) and `sites`
//! (sites imaged in the well, default 1).

use std::collections::HashMap;
use std::path::Path;

/// Expected site counts from a layout.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    /// Sites of plates listed by name.
    pub per_plate: HashMap<String, u64>,
    /// Sites of every other plate (rows without a plate), if any.
    pub every_plate: Option<u64>,
}

impl Layout {
    /// Read `path`; errors name the file and line.
    pub fn read(path: &Path) -> Result<Layout, String> {
        let mut reader =
            csv::Reader::from_path(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let headers = reader
            .headers()
            .map_err(|e| format!("{}: {e}", path.display()))?
            .clone();
        let column = |name: &str| headers.iter().position(|h| h.trim() == name);
        let well = column("well").ok_or_else(|| {
            format!(
                "{}: no `well` column (columns: {headers:?})",
                path.display()
            )
        })?;
        let (plate, sites) = (column("plate"), column("sites"));
        let mut layout = Layout::default();
        for (i, record) in reader.records().enumerate() {
            let line = i + 2;
            let record = record.map_err(|e| format!("{}: line {line}: {e}", path.display()))?;
            let field = |c: Option<usize>| {
                c.and_then(|c| record.get(c))
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
            };
            bfx_core::naming::Well::parse(field(Some(well)).unwrap_or(""), Default::default())
                .map_err(|e| format!("{}: line {line}: well: {e}", path.display()))?;
            let n: u64 = match field(sites) {
                None => 1,
                Some(s) => s.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                    format!(
                        "{}: line {line}: sites {s:?} is not a positive number",
                        path.display()
                    )
                })?,
            };
            match field(plate) {
                Some(p) => *layout.per_plate.entry(p.to_string()).or_default() += n,
                None => *layout.every_plate.get_or_insert(0) += n,
            }
        }
        Ok(layout)
    }

    /// Sites that complete `plate`, if the layout says.
    pub fn expected(&self, plate: &str) -> Option<u64> {
        self.per_plate.get(plate).copied().or(self.every_plate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_count_sites_per_plate_or_for_every_plate() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let path = tmp.path().join("layout.csv");
        std::fs::write(
            &path,
            "plate,well,sites\nP1,A01,4\nP1,B02,\n,A01,2\n,A02,2\n",
        )
        .expect("write");
        let layout = Layout::read(&path).expect("valid");
        assert_eq!(layout.expected("P1"), Some(5));
        assert_eq!(layout.expected("P2"), Some(4));
        std::fs::write(&path, "well\nA01\nA02\nA03\n").expect("write");
        assert_eq!(Layout::read(&path).expect("valid").expected("any"), Some(3));
        std::fs::write(&path, "plate,well\nP1,A01\nP1,Q99x\n").expect("write");
        let err = Layout::read(&path).expect_err("bad well");
        assert!(err.contains("layout.csv: line 3: well:"), "{err}");
        std::fs::write(&path, "plate,site\nP1,1\n").expect("write");
        assert!(
            Layout::read(&path)
                .expect_err("no well")
                .contains("no `well` column")
        );
    }
}
