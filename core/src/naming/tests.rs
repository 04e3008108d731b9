use std::path::Path;

use super::*;

/// Expected key: plate, well, site, channel, timepoint, z.
type Want<'a> = (&'a str, &'a str, u32, &'a str, Option<u32>, Option<u32>);

fn check_parses(preset: Preset, cases: &[(&str, Want<'_>)]) {
    assert!(cases.len() >= 5, "at least 5 realistic names per preset");
    let scheme = NamingScheme::preset(preset).unwrap();
    for (path, (plate, well, site, channel, t, z)) in cases {
        let key = scheme
            .parse(Path::new(path))
            .unwrap_or_else(|e| panic!("{preset}: {path} should parse: {e}"));
        let got = (
            key.site.plate.as_str(),
            key.site.well.to_string(),
            key.site.site,
            key.channel.as_str(),
            key.site.timepoint,
            key.site.z,
        );
        assert_eq!(
            got,
            (*plate, well.to_string(), *site, *channel, *t, *z),
            "{preset}: {path}"
        );
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    NoMatch,
    BadWell,
    BadNumber,
    NoPlate,
    NotAcquired,
}

fn check_rejects(preset: Preset, cases: &[(&str, Kind)]) {
    assert!(cases.len() >= 10, "at least 10 malformed names per preset");
    let scheme = NamingScheme::preset(preset).unwrap();
    for (path, want) in cases {
        let err = match scheme.parse(Path::new(path)) {
            Ok(key) => panic!("{preset}: {path:?} should be rejected, got {key:?}"),
            Err(e) => e,
        };
        let kind = match err {
            NamingError::NoMatch { .. } => Kind::NoMatch,
            NamingError::BadWell { .. } => Kind::BadWell,
            NamingError::BadNumber { .. } => Kind::BadNumber,
            NamingError::NoPlate { .. } => Kind::NoPlate,
            NamingError::NotAcquired { .. } => Kind::NotAcquired,
        };
        assert_eq!(kind, *want, "{preset}: {path:?}: {err}");
        // Every message names the file so a log line alone is actionable.
        assert!(err.to_string().starts_with(path), "{err}");
    }
}

const GUID: &str = "64FBEEF7-F77C-4892-86F5-72D0160D4FB2";

#[test]
fn imagexpress_names() {
    let guid_name = format!("IXMtest_A03_s2_w2{GUID}.tif");
    let glued = format!("Exp_C05_w1{GUID}.TIF");
    check_parses(
        Preset::Imagexpress,
        &[
            (&guid_name, ("IXMtest", "A03", 2, "w2", None, None)),
            (
                "2023-05-12_Plate01_B12_s1_w1.TIF",
                ("2023-05-12_Plate01", "B12", 1, "w1", None, None),
            ),
            (
                "Screen/TimePoint_3/ScreenA_P24_s9_w3.tif",
                ("ScreenA", "P24", 9, "w3", Some(3), None),
            ),
            (
                "MyScreen/2024-01-01/1234/TimePoint_1/ZStep_2/Exp1_AF48_s1_w1.tif",
                ("Exp1", "AF48", 1, "w1", Some(1), Some(2)),
            ),
            ("Exp_C05.tif", ("Exp", "C05", 1, "w1", None, None)),
            // The GUID's first hex digits must not be read as wave number.
            (&glued, ("Exp", "C05", 1, "w1", None, None)),
            ("AB_C1_B02_s4_w5.tif", ("AB_C1", "B02", 4, "w5", None, None)),
        ],
    );
}

#[test]
fn imagexpress_rejects() {
    let thumb = format!("IXMtest_A03_s2_w2_thumb{GUID}.tif");
    check_rejects(
        Preset::Imagexpress,
        &[
            ("IXMtest_A03_s2_w2.png", Kind::NoMatch),
            ("IXMtest_A03_s2_w2.tif.part", Kind::NoMatch),
            ("IXMtest_A03_sX_w2.tif", Kind::NoMatch),
            ("A03_s1_w1.tif", Kind::NoMatch),
            ("_A03_s1_w1.tif", Kind::NoMatch),
            ("IXMtest.tif", Kind::NoMatch),
            ("IXMtest_A03_s2_w2", Kind::NoMatch),
            ("IXMtest_A03_s2_w2GUIDTOOSHORT-1234.tif", Kind::NoMatch),
            ("IXMtest_A00_s1_w1.tif", Kind::BadWell),
            ("IXMtest_AZ03_s1_w1.tif", Kind::BadWell),
            ("IXMtest_A49_s1_w1.tif", Kind::BadWell),
            ("IXMtest_A03_s99999999999_w1.tif", Kind::BadNumber),
            (&thumb, Kind::NotAcquired),
        ],
    );
}

#[test]
fn opera_names() {
    check_parses(
        Preset::Opera,
        &[
            (
                "Plate1/Images/r01c01f01p01-ch1sk1fk1fl1.tiff",
                ("Plate1", "A01", 1, "ch1", Some(1), Some(1)),
            ),
            (
                "AssayPlate__2023-01-01T10_00_00-Measurement 1/Images/r16c24f09p03-ch4sk12fk1fl1.tiff",
                (
                    "AssayPlate__2023-01-01T10_00_00-Measurement 1",
                    "P24",
                    9,
                    "ch4",
                    Some(12),
                    Some(3),
                ),
            ),
            (
                "P2/r03c05f12p01-ch01t01.tiff",
                ("P2", "C05", 12, "ch1", Some(1), Some(1)),
            ),
            (
                "ScreenX/Images/r32c48f01p01-ch2sk1fk1fl1.TIFF",
                ("ScreenX", "AF48", 1, "ch2", Some(1), Some(1)),
            ),
            (
                "/data/opera/PlateB/Images/r02c11f100p02-ch3sk2fk1fl1.tiff",
                ("PlateB", "B11", 100, "ch3", Some(2), Some(2)),
            ),
            (
                "PlateC/r08c12f01p01-ch2.tiff",
                ("PlateC", "H12", 1, "ch2", None, Some(1)),
            ),
        ],
    );
}

#[test]
fn opera_rejects() {
    check_rejects(
        Preset::Opera,
        &[
            ("r01c01f01p01-ch1sk1fk1fl1.tiff", Kind::NoPlate),
            ("Images/r01c01f01p01-ch1sk1fk1fl1.tiff", Kind::NoPlate),
            ("P/r00c01f01p01-ch1sk1fk1fl1.tiff", Kind::BadWell),
            ("P/r01c00f01p01-ch1sk1fk1fl1.tiff", Kind::BadWell),
            ("P/r33c01f01p01-ch1sk1fk1fl1.tiff", Kind::BadWell),
            ("P/r01c49f01p01-ch1sk1fk1fl1.tiff", Kind::BadWell),
            ("P/r1c1f1p1-ch1.tiff", Kind::NoMatch),
            ("P/r01c01f01p01-ch1sk1fk1fl1.png", Kind::NoMatch),
            ("P/r01c01f01p01.tiff", Kind::NoMatch),
            ("P/r01c01f01p01-chAsk1fk1fl1.tiff", Kind::NoMatch),
            ("P/Index.idx.xml", Kind::NoMatch),
        ],
    );
}

#[test]
fn yokogawa_names() {
    check_parses(
        Preset::Yokogawa,
        &[
            (
                "AssayPlate_Greiner_#781091_B03_T0001F001L01A01Z01C01.tif",
                (
                    "AssayPlate_Greiner_#781091",
                    "B03",
                    1,
                    "c1",
                    Some(1),
                    Some(1),
                ),
            ),
            (
                "W1_P24_T0012F009L01A01Z03C04.tif",
                ("W1", "P24", 9, "c4", Some(12), Some(3)),
            ),
            (
                "Screen-2024_AF48_T0001F001L01A01Z01C02.TIF",
                ("Screen-2024", "AF48", 1, "c2", Some(1), Some(1)),
            ),
            (
                "Plate7_A01_T0001F016L01A02Z01C01.tif",
                ("Plate7", "A01", 16, "c1", Some(1), Some(1)),
            ),
            (
                "/mnt/cv8000/20240101/Exp_C10_T0100F001L01A01Z10C03.tif",
                ("Exp", "C10", 1, "c3", Some(100), Some(10)),
            ),
        ],
    );
}

#[test]
fn yokogawa_rejects() {
    check_rejects(
        Preset::Yokogawa,
        &[
            ("Plate_B03_T001F001L01A01Z01C01.tif", Kind::NoMatch),
            ("Plate_B03_T0001F001L01A01Z01C01.png", Kind::NoMatch),
            ("B03_T0001F001L01A01Z01C01.tif", Kind::NoMatch),
            ("Plate_B3_T0001F001L01A01Z01C01.tif", Kind::NoMatch),
            ("Plate_B03_T0001F001L01A01Z01.tif", Kind::NoMatch),
            ("Plate_B03_T0001F001L01A01Z01C01_thumb.tif", Kind::NoMatch),
            ("Plate_b03_T0001F001L01A01Z01C01.tif", Kind::NoMatch),
            ("MeasurementData.mlf", Kind::NoMatch),
            ("Plate_B00_T0001F001L01A01Z01C01.tif", Kind::BadWell),
            ("Plate_AZ03_T0001F001L01A01Z01C01.tif", Kind::BadWell),
        ],
    );
}

#[test]
fn cellomics_names() {
    check_parses(
        Preset::Cellomics,
        &[
            (
                "AS_09047_050428030001_O24f02d2.TIF",
                ("AS_09047_050428030001", "O24", 2, "d2", None, None),
            ),
            (
                "MFGTMP_140206180002_A01f00d0.TIF",
                ("MFGTMP_140206180002", "A01", 0, "d0", None, None),
            ),
            (
                "AS_09125_050116030001_D03f00d0.tif",
                ("AS_09125_050116030001", "D03", 0, "d0", None, None),
            ),
            (
                "Plate1_P24f15d4.tif",
                ("Plate1", "P24", 15, "d4", None, None),
            ),
            (
                "scans/20585_AF48f11d1.TIF",
                ("20585", "AF48", 11, "d1", None, None),
            ),
        ],
    );
}

#[test]
fn cellomics_rejects() {
    check_rejects(
        Preset::Cellomics,
        &[
            ("AS_09047_O24f2d2.TIF", Kind::NoMatch),
            ("AS_09047_O24f02d.TIF", Kind::NoMatch),
            ("AS_09047_O24f02d12.TIF", Kind::NoMatch),
            ("O24f02d2.TIF", Kind::NoMatch),
            ("AS_09047_O24f02d2.C01", Kind::NoMatch),
            ("AS_09047_O24d2f02.TIF", Kind::NoMatch),
            ("AS_09047_O24f02d2.tif.tmp", Kind::NoMatch),
            ("AS_09047_O24_f02d2.TIF", Kind::NoMatch),
            ("AS_09047_O00f02d2.TIF", Kind::BadWell),
            ("AS_09047_AZ01f02d2.TIF", Kind::BadWell),
        ],
    );
}

#[test]
fn rxrx_names() {
    check_parses(
        Preset::Rxrx,
        &[
            (
                "HEPG2-01/Plate1/B02_s1_w1.png",
                ("HEPG2-01_Plate1", "B02", 1, "w1", None, None),
            ),
            (
                "RPE-05/Plate3/O23_s2_w6.png",
                ("RPE-05_Plate3", "O23", 2, "w6", None, None),
            ),
            (
                "/data/rxrx1/images/U2OS-02/Plate4/C13_s1_w3.png",
                ("U2OS-02_Plate4", "C13", 1, "w3", None, None),
            ),
            (
                "cpg0016/Plate12/P24_s9_w5.tif",
                ("cpg0016_Plate12", "P24", 9, "w5", None, None),
            ),
            (
                "HUVEC-18/plate2/AF48_s1_w2.TIFF",
                ("HUVEC-18_Plate2", "AF48", 1, "w2", None, None),
            ),
        ],
    );
}

#[test]
fn rxrx_rejects() {
    check_rejects(
        Preset::Rxrx,
        &[
            ("B02_s1_w1.png", Kind::NoPlate),
            ("HEPG2-01/B02_s1_w1.png", Kind::NoPlate),
            ("HEPG2-01/PlateX/B02_s1_w1.png", Kind::NoPlate),
            ("Plate1/B02_s1_w1.png", Kind::NoPlate),
            ("HEPG2-01/Plate1/B02_s1.png", Kind::NoMatch),
            ("HEPG2-01/Plate1/B02_w1.png", Kind::NoMatch),
            ("HEPG2-01/Plate1/B02_s1_w1.jpg", Kind::NoMatch),
            ("HEPG2-01/Plate1/B2_s1_w1.png", Kind::NoMatch),
            ("HEPG2-01/Plate1/B02_s1_w1_mask.png", Kind::NoMatch),
            ("HEPG2-01/Plate1/B00_s1_w1.png", Kind::BadWell),
            ("HEPG2-01/Plate1/AZ02_s1_w1.png", Kind::BadWell),
        ],
    );
}

fn custom(pattern: &str, plate_from_dir: Option<usize>) -> Result<NamingScheme, NamingSpecError> {
    NamingScheme::new(&NamingSpec {
        preset: Preset::Custom,
        pattern: Some(pattern.to_owned()),
        plate_from_dir,
        plate_format: PlateFormat::with_wells(384).expect("standard"),
    })
}

#[test]
fn custom_pattern_with_well_and_plate_from_a_folder() {
    let scheme = custom(
        r"(?P<well>[A-P]\d{2})-(?P<site>\d+)-(?P<channel>DAPI|GFP|Cy5)\.tif",
        Some(2),
    )
    .unwrap();
    let key = scheme
        .parse(Path::new("screens/PlateA/run1/C07-3-GFP.tif"))
        .unwrap();
    assert_eq!(key.site.plate, "PlateA");
    assert_eq!(key.site.to_string(), "PlateA/C07/3");
    assert_eq!(key.channel, "GFP");
    // Anchored: a longer name does not match by its middle.
    assert!(matches!(
        scheme.parse(Path::new("screens/PlateA/run1/xC07-3-GFP.tif.bak")),
        Err(NamingError::NoMatch { .. })
    ));
    // The configured 384-well format rejects row Q.
    assert!(matches!(
        scheme.parse(Path::new("s/PlateA/run1/Q07-3-GFP.tif")),
        Err(NamingError::NoMatch { .. })
    ));
    let err = scheme.parse(Path::new("C07-3-GFP.tif")).unwrap_err();
    assert!(matches!(err, NamingError::NoPlate { .. }), "{err}");
}

#[test]
fn custom_pattern_with_numeric_or_letter_rows() {
    let scheme = custom(r"(?P<plate>[^_]+)_R(?P<row>\d+)C(?P<col>\d+)_t(?P<t>\d+)_z(?P<z>\d+)_(?P<channel>\w+)\.tif", None).unwrap();
    let key = scheme.parse(Path::new("P9_R16C24_t2_z5_mito.tif")).unwrap();
    assert_eq!(key.site.to_string(), "P9/P24/1/t2/z5");
    assert_eq!(key.channel, "mito");
    let err = scheme
        .parse(Path::new("P9_R17C24_t2_z5_mito.tif"))
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "P9_R17C24_t2_z5_mito.tif: impossible well \"r17c24\": row Q is outside a 384-well plate (rows A..P)"
    );
    let letters = custom(
        r"(?P<plate>\w+)-(?P<row>[A-Z]+)(?P<col>\d+)-(?P<channel>\d)\.tif",
        None,
    )
    .unwrap();
    assert_eq!(
        letters
            .parse(Path::new("p1-D11-2.tif"))
            .unwrap()
            .site
            .well
            .to_string(),
        "D11"
    );
}

#[test]
fn custom_pattern_errors_name_the_problem() {
    let cases = [
        (
            r"(?P<plate>\w+)_(?P<well>\w+)\.tif",
            "`pattern` needs a `channel` group",
        ),
        (
            r"(?P<plate>\w+)_(?P<channel>\d)\.tif",
            "`pattern` needs a `well` group, or `row` and `col` groups",
        ),
        (
            r"(?P<well>\w+)_(?P<channel>\d)\.tif",
            "`pattern` needs a `plate` group, or set `plate_from_dir`",
        ),
        (
            r"(?P<plate>\w+)_(?P<wel>\w+)_(?P<channel>\d)",
            "`pattern` has an unknown group `wel`; known groups: plate, well, row, col, site, channel, t, z",
        ),
    ];
    for (pattern, message) in cases {
        assert_eq!(custom(pattern, None).unwrap_err().to_string(), message);
    }
    assert!(matches!(
        custom("(unclosed", None),
        Err(NamingSpecError::BadRegex(_))
    ));
    let mut spec = NamingSpec::preset(Preset::Custom);
    assert_eq!(
        NamingScheme::new(&spec).unwrap_err(),
        NamingSpecError::MissingPattern
    );
    spec.preset = Preset::Opera;
    spec.pattern = Some("x".into());
    assert_eq!(
        NamingScheme::new(&spec).unwrap_err(),
        NamingSpecError::UnexpectedPattern(Preset::Opera)
    );
    let mut spec = NamingSpec::preset(Preset::Rxrx);
    spec.plate_from_dir = Some(0);
    assert_eq!(
        NamingScheme::new(&spec).unwrap_err(),
        NamingSpecError::ZeroDirLevel
    );
}

#[test]
fn plate_from_dir_overrides_a_preset() {
    let mut spec = NamingSpec::preset(Preset::Imagexpress);
    spec.plate_from_dir = Some(2);
    let scheme = NamingScheme::new(&spec).unwrap();
    let key = scheme
        .parse(Path::new("Barcode123/TimePoint_1/desc_B02_s1_w1.tif"))
        .unwrap();
    assert_eq!(key.site.to_string(), "Barcode123/B02/1/t1");
}

#[test]
fn arbitrary_bytes_never_panic() {
    // Names built from the tokens the patterns look for, shuffled, must give
    // an answer (Ok or Err) from every scheme.
    let tokens = [
        "_",
        "A",
        "AF",
        "0",
        "1",
        "99999999999",
        "s",
        "w",
        "f",
        "d",
        "r",
        "c",
        "p",
        "-ch",
        "T",
        ".tif",
        ".png",
        "/",
        "Plate",
        "é",
        " ",
    ];
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let schemes: Vec<_> = Preset::INSTRUMENTS
        .iter()
        .map(|&p| NamingScheme::preset(p).unwrap())
        .collect();
    for _ in 0..5000 {
        let mut name = String::new();
        for _ in 0..(state % 12) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            name.push_str(tokens[(state % tokens.len() as u64) as usize]);
        }
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        for scheme in &schemes {
            if let Ok(key) = scheme.parse(Path::new(&name)) {
                let well = key.site.well;
                assert!(
                    (1..=32).contains(&well.row()) && (1..=48).contains(&well.column()),
                    "{name}"
                );
                assert!(
                    !key.site.plate.trim().is_empty() && !key.channel.is_empty(),
                    "{name}"
                );
            }
        }
    }
}
