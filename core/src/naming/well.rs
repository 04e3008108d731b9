//! Wells and plate formats.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// The dimensions of a microplate. Wells outside them are impossible.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PlateFormat {
    rows: u16,
    columns: u16,
}

impl PlateFormat {
    /// The standard layouts, by well count: (wells, rows, columns).
    const STANDARD: [(u32, u16, u16); 7] = [
        (6, 2, 3),
        (12, 3, 4),
        (24, 4, 6),
        (48, 6, 8),
        (96, 8, 12),
        (384, 16, 24),
        (1536, 32, 48),
    ];

    /// The standard plate with `wells` wells (6, 12, 24, 48, 96, 384 or 1536).
    pub fn with_wells(wells: u32) -> Option<PlateFormat> {
        Self::STANDARD
            .iter()
            .find(|(n, _, _)| *n == wells)
            .map(|&(_, rows, columns)| PlateFormat { rows, columns })
    }

    /// Number of rows (A = 1).
    pub fn rows(&self) -> u16 {
        self.rows
    }

    /// Number of columns (1-based).
    pub fn columns(&self) -> u16 {
        self.columns
    }

    /// Number of wells.
    pub fn wells(&self) -> u32 {
        u32::from(self.rows) * u32::from(self.columns)
    }
}

impl Default for PlateFormat {
    /// 1536 wells (rows A..AF, columns 1..48): every well of every standard
    /// plate is valid in it, so it is the permissive default. Configure the
    /// real format to reject wells that cannot exist on the plate in use.
    fn default() -> Self {
        PlateFormat {
            rows: 32,
            columns: 48,
        }
    }
}

impl Serialize for PlateFormat {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.wells())
    }
}

impl<'de> Deserialize<'de> for PlateFormat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let wells = u32::deserialize(d)?;
        PlateFormat::with_wells(wells).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{wells} is not a standard plate format; expected one of 6, 12, 24, 48, 96, 384, 1536"
            ))
        })
    }
}

/// Why a well name or position is impossible.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum WellError {
    /// The text is not letters followed by digits.
    #[error(
        "{0:?} is not a well name (expected row letters and a column number, e.g. B03 or AF48)"
    )]
    Syntax(String),
    /// The row is beyond the plate.
    #[error("row {row} is outside a {wells}-well plate (rows A..{last})")]
    Row {
        /// The row as written.
        row: String,
        /// Wells of the plate format.
        wells: u32,
        /// The last valid row.
        last: String,
    },
    /// The column is 0 or beyond the plate.
    #[error("column {column} is outside a {wells}-well plate (columns 1..{last})")]
    Column {
        /// The column number.
        column: u32,
        /// Wells of the plate format.
        wells: u32,
        /// The last valid column.
        last: u16,
    },
}

/// A well of a microplate: row 1 is `A`, row 27 is `AA`; columns start at 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Well {
    row: u16,
    column: u16,
}

impl Well {
    /// The well at 1-based `row` and `column`, checked against `format`.
    pub fn new(row: u32, column: u32, format: PlateFormat) -> Result<Well, WellError> {
        if row == 0 || row > u32::from(format.rows) {
            return Err(WellError::Row {
                row: if row == 0 {
                    "0".to_owned()
                } else {
                    row_letters(row)
                },
                wells: format.wells(),
                last: row_letters(u32::from(format.rows)),
            });
        }
        if column == 0 || column > u32::from(format.columns) {
            return Err(WellError::Column {
                column,
                wells: format.wells(),
                last: format.columns,
            });
        }
        // Both fit in u16: checked against the format's u16 bounds above.
        Ok(Well {
            row: row as u16,
            column: column as u16,
        })
    }

    /// Parse a well name such as `B03`, `b3` or `AF48`.
    pub fn parse(name: &str, format: PlateFormat) -> Result<Well, WellError> {
        let split = name
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(name.len());
        let (letters, digits) = name.split_at(split);
        let syntax = || WellError::Syntax(name.to_owned());
        if letters.is_empty()
            || letters.len() > 2
            || digits.is_empty()
            || digits.len() > 3
            || !digits.bytes().all(|b| b.is_ascii_digit())
        {
            return Err(syntax());
        }
        let row = letters.bytes().fold(0u32, |acc, b| {
            acc * 26 + u32::from(b.to_ascii_uppercase() - b'A' + 1)
        });
        let column: u32 = digits.parse().map_err(|_| syntax())?;
        Well::new(row, column, format)
    }

    /// 1-based row (A = 1).
    pub fn row(&self) -> u16 {
        self.row
    }

    /// 1-based column.
    pub fn column(&self) -> u16 {
        self.column
    }

    /// The row as letters: `A`..`Z`, then `AA`, `AB`, ...
    pub fn row_name(&self) -> String {
        row_letters(u32::from(self.row))
    }
}

/// Spreadsheet-style row letters for a 1-based row.
fn row_letters(mut row: u32) -> String {
    let mut out = Vec::new();
    while row > 0 {
        row -= 1;
        // row % 26 < 26, so the byte is an ASCII capital.
        out.push(b'A' + (row % 26) as u8);
        row /= 26;
    }
    out.reverse();
    String::from_utf8(out).expect("ASCII capitals are UTF-8")
}

impl fmt::Display for Well {
    /// Row letters and a two-digit column, as plate readers write them: `B03`, `AF48`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{:02}", self.row_name(), self.column)
    }
}

impl FromStr for Well {
    type Err = WellError;

    /// Parse against the permissive default format (1536 wells).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Well::parse(s, PlateFormat::default())
    }
}

impl Serialize for Well {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Well {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_standard_wells() {
        let w1536 = PlateFormat::default();
        for (name, row, col, shown) in [
            ("A01", 1, 1, "A01"),
            ("b3", 2, 3, "B03"),
            ("H12", 8, 12, "H12"),
            ("P24", 16, 24, "P24"),
            ("Z9", 26, 9, "Z09"),
            ("AA01", 27, 1, "AA01"),
            ("AF48", 32, 48, "AF48"),
        ] {
            let w = Well::parse(name, w1536).unwrap();
            assert_eq!((w.row(), w.column()), (row, col), "{name}");
            assert_eq!(w.to_string(), shown);
        }
    }

    #[test]
    fn rejects_wells_outside_the_plate() {
        let w384 = PlateFormat::with_wells(384).unwrap();
        let w96 = PlateFormat::with_wells(96).unwrap();
        let err = Well::parse("Z9", w384).unwrap_err();
        assert_eq!(
            err.to_string(),
            "row Z is outside a 384-well plate (rows A..P)"
        );
        let err = Well::parse("A00", PlateFormat::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "column 0 is outside a 1536-well plate (columns 1..48)"
        );
        assert!(matches!(
            Well::parse("H13", w96),
            Err(WellError::Column { column: 13, .. })
        ));
        assert!(matches!(
            Well::parse("AG01", PlateFormat::default()),
            Err(WellError::Row { .. })
        ));
        for bad in ["", "12", "B", "ABC1", "B1234", "B-3", "B3x"] {
            assert!(
                matches!(Well::parse(bad, w96), Err(WellError::Syntax(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn plate_formats_round_trip_through_their_well_count() {
        for n in [6, 12, 24, 48, 96, 384, 1536] {
            assert_eq!(PlateFormat::with_wells(n).unwrap().wells(), n);
        }
        assert!(PlateFormat::with_wells(100).is_none());
    }
}
