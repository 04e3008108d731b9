//! The bad-input corpus: every kind of bad input an acquisition folder
//! has shown us (or could), written next to good sites, each with the
//! outcome the daemon must give it. `write` lays out the files that exist
//! before the daemon starts; `grow` and `appear_then_vanish` are the two
//! kinds that need a running daemon to mean anything.
//!
//! All files are ImageXpress-named 2-channel sites (`w1`, `w2`) of 40x40
//! 16-bit TIFFs in plate `CP1`, unless the kind is about something else.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::write_tiff;

/// The plate of the corpus.
pub const PLATE: &str = "CP1";
/// A plate name that would climb out of the store if used as a path:
/// dots, a backslash and U+2215 (a slash look-alike).
pub const ODD_PLATE: &str = "Q..\\\u{2215}..\\etc";
/// Field size of every good site (height, width).
pub const FIELD: u32 = 40;
/// Good sites written around the bad ones.
pub const GOOD_WELLS: [&str; 12] = [
    "D01", "D02", "D03", "D04", "D05", "D06", "D07", "D08", "D09", "D10", "D11", "D12",
];

/// What the daemon must do with one kind of bad input.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// One journal record with this `event`, a subject containing the
    /// case's `subject` and a reason containing `reason`; the files are
    /// counted in `bfx_files_rejected_total{reason=metric}`.
    Recorded {
        /// `quarantined`, `rejected`, `duplicate` or `incomplete`.
        event: &'static str,
        /// A fragment of the reason.
        reason: &'static str,
        /// The `reason` label of the rejection counter.
        metric: &'static str,
        /// Files it counts there.
        files: u64,
    },
    /// Embedded once, in the group `group` of the store, with nothing in
    /// the journal about it.
    Embedded {
        /// The store's group of the site's plate.
        group: String,
    },
    /// Not used and not recorded; counted in
    /// `bfx_files_skipped_total{reason=metric}`.
    Skipped {
        /// The `reason` label of the skip counter.
        metric: &'static str,
    },
}

/// One kind of bad input.
#[derive(Clone, Debug)]
pub struct Case {
    /// What it is.
    pub kind: &'static str,
    /// A fragment of the journal subject (a file name or a site key).
    pub subject: String,
    /// What must happen.
    pub outcome: Outcome,
}

fn name(plate: &str, well: &str, channel: &str) -> String {
    format!("{plate}_{well}_s1_{channel}.tif")
}

fn tiff_bytes(w: u32, h: u32, seed: u64) -> Vec<u8> {
    let tmp = tempfile::NamedTempFile::new().expect("temp file");
    write_tiff(tmp.path(), w, h, seed);
    std::fs::read(tmp.path()).expect("tiff")
}

/// Offset of the value of tag `tag` in the first IFD of a little-endian
/// TIFF (the tiff crate writes "II").
fn tag_value_offset(bytes: &[u8], tag: u16) -> usize {
    let u16_at = |i: usize| u16::from_le_bytes([bytes[i], bytes[i + 1]]);
    let ifd = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]) as usize;
    (0..usize::from(u16_at(ifd)))
        .map(|e| ifd + 2 + 12 * e)
        .find(|&entry| u16_at(entry) == tag)
        .map(|entry| entry + 8)
        .unwrap_or_else(|| panic!("no tag {tag} in the first IFD"))
}

/// A TIFF that declares `width` x `height` 16-bit pixels and holds 8 bytes.
fn bomb(width: u32, height: u32) -> Vec<u8> {
    let entries: [(u16, u16, u32); 9] = [
        (256, 4, width),                                          // ImageWidth, LONG
        (257, 4, height),                                         // ImageLength
        (258, 3, 16),                                             // BitsPerSample, SHORT
        (259, 3, 1),                                              // Compression: none
        (262, 3, 1),                                              // Photometric: black is zero
        (273, 4, 8 + 2 + 9 * 12 + 4),                             // StripOffsets: after the IFD
        (277, 3, 1),                                              // SamplesPerPixel
        (278, 4, height),                                         // RowsPerStrip
        (279, 4, width.saturating_mul(height).saturating_mul(2)), // StripByteCounts (saturated)
    ];
    let mut b = b"II*\0".to_vec();
    b.extend(8u32.to_le_bytes());
    b.extend((entries.len() as u16).to_le_bytes());
    for (tag, kind, value) in entries {
        b.extend(tag.to_le_bytes());
        b.extend(kind.to_le_bytes());
        b.extend(1u32.to_le_bytes());
        b.extend(value.to_le_bytes());
    }
    b.extend(0u32.to_le_bytes());
    b.extend([0u8; 8]);
    b
}

fn write_typed<C>(path: &Path, w: u32, h: u32, data: &[C::Inner])
where
    C: tiff::encoder::colortype::ColorType,
    [C::Inner]: tiff::encoder::TiffValue,
{
    let mut bytes = std::io::Cursor::new(Vec::new());
    tiff::encoder::TiffEncoder::new(&mut bytes)
        .and_then(|mut e| e.write_image::<C>(w, h, data))
        .expect("tiff");
    std::fs::write(path, bytes.into_inner()).expect("write");
}

fn quarantined(
    kind: &'static str,
    subject: String,
    reason: &'static str,
    metric: &'static str,
) -> Case {
    Case {
        kind,
        subject,
        outcome: Outcome::Recorded {
            event: "quarantined",
            reason,
            metric,
            files: 1,
        },
    }
}

/// Write the corpus's files into `dir` (the folder of plate [`PLATE`],
/// under a watched root) and return every case with its outcome,
/// including the two that [`grow`] and [`appear_then_vanish`] act out.
/// The daemon must run without root (root reads a file without read
/// permission anyway).
pub fn write(dir: &Path) -> Vec<Case> {
    let group_of = bfx_daemon::store::group_name;
    std::fs::create_dir_all(dir).expect("plate folder");
    let at = |well: &str, channel: &str| dir.join(name(PLATE, well, channel));
    let good = |well: &str, seed: u64| {
        write_tiff(&at(well, "w1"), FIELD, FIELD, seed);
        write_tiff(&at(well, "w2"), FIELD, FIELD, seed + 1);
    };
    for (i, well) in GOOD_WELLS.iter().enumerate() {
        good(well, 1000 + 2 * i as u64);
    }
    let file = |well: &str| name(PLATE, well, "w1");
    let mut cases = Vec::new();

    std::fs::write(at("B01", "w1"), b"").expect("write");
    cases.push(quarantined(
        "zero-byte file",
        file("B01"),
        "the file is empty",
        "unreadable",
    ));

    let bytes = tiff_bytes(FIELD, FIELD, 2);
    std::fs::write(at("B02", "w1"), &bytes[..bytes.len() / 3]).expect("write");
    cases.push(quarantined("truncated TIFF", file("B02"), "", "unreadable"));

    // One flipped bit in the strip offset sends the reader past the end.
    // (A flip inside uncompressed pixels cannot be told from the image:
    // TIFF has no checksum.)
    let mut flipped = tiff_bytes(FIELD, FIELD, 3);
    let at_offset = tag_value_offset(&flipped, 273);
    flipped[at_offset + 2] ^= 0x40;
    std::fs::write(at("B03", "w1"), &flipped).expect("write");
    cases.push(quarantined(
        "bit-flipped TIFF",
        file("B03"),
        "",
        "unreadable",
    ));

    std::fs::write(at("B04", "w1"), b"PK\x03\x04 a zip archive, not an image").expect("write");
    cases.push(quarantined(
        "not a TIFF, with a .tif name",
        file("B04"),
        "",
        "unreadable",
    ));

    std::fs::write(at("B05", "w1"), bomb(200_000, 200_000)).expect("write");
    cases.push(quarantined(
        "TIFF bomb (200000x200000 declared)",
        file("B05"),
        "exceed the limit",
        "unreadable",
    ));

    let wide: Vec<u32> = (0..FIELD * FIELD).collect();
    write_typed::<tiff::encoder::colortype::Gray32>(&at("B06", "w1"), FIELD, FIELD, &wide);
    cases.push(quarantined(
        "wrong bit depth (32-bit integers)",
        file("B06"),
        "uint32",
        "unreadable",
    ));

    write_tiff(&at("B07", "w1"), FIELD + 8, FIELD, 7);
    write_tiff(&at("B07", "w2"), FIELD + 8, FIELD, 8);
    cases.push(Case {
        kind: "wrong image size for the model",
        subject: format!("{PLATE}/B07/1"),
        outcome: Outcome::Recorded {
            event: "rejected",
            reason: "daemon.assemble.field_size",
            metric: "field_size",
            files: 2,
        },
    });

    let mut nan: Vec<f32> = (0..FIELD * FIELD).map(|i| i as f32).collect();
    nan[5] = f32::NAN;
    nan[6] = f32::INFINITY;
    write_typed::<tiff::encoder::colortype::Gray32Float>(&at("B08", "w1"), FIELD, FIELD, &nan);
    write_tiff(&at("B08", "w2"), FIELD, FIELD, 9);
    cases.push(Case {
        kind: "NaN and Inf in a float TIFF",
        subject: format!("{PLATE}/B08/1"),
        outcome: Outcome::Recorded {
            event: "rejected",
            reason: "2 NaN or infinite pixel(s)",
            metric: "bad_site",
            files: 2,
        },
    });

    write_tiff(&dir.join("overview scan.tif"), FIELD, FIELD, 10);
    cases.push(quarantined(
        "unparseable name",
        "overview scan.tif".into(),
        "does not match the imagexpress naming scheme",
        "naming",
    ));

    write_tiff(&at("B10", "w7"), FIELD, FIELD, 11);
    cases.push(quarantined(
        "unknown channel",
        name(PLATE, "B10", "w7"),
        "is not one of the bundle's channels",
        "channel",
    ));

    // A GUID-suffixed second w1, as MetaXpress writes when a site is re-imaged.
    good("B11", 12);
    write_tiff(
        &dir.join(format!(
            "{PLATE}_B11_s1_w1ABCDEF01-2345-6789-ABCD-EF0123456789.tif"
        )),
        FIELD,
        FIELD,
        14,
    );
    cases.push(Case {
        kind: "duplicate channel file",
        subject: format!("{PLATE}_B11_s1_w1"),
        outcome: Outcome::Recorded {
            event: "duplicate",
            reason: "the first is kept",
            metric: "duplicate",
            files: 1,
        },
    });

    write_tiff(&at("B12", "w1"), FIELD, FIELD, 15);
    cases.push(Case {
        kind: "missing channel (the site never completes)",
        subject: format!("{PLATE}/B12/1"),
        outcome: Outcome::Recorded {
            event: "incomplete",
            reason: "missing channels [\"w2\"]",
            metric: "incomplete_site",
            files: 1,
        },
    });

    for (c, seed) in [("w1", 16), ("w2", 17)] {
        write_tiff(&dir.join(name(ODD_PLATE, "A01", c)), FIELD, FIELD, seed);
    }
    cases.push(Case {
        kind: "plate name with .. and slash-like characters",
        subject: ODD_PLATE.into(),
        outcome: Outcome::Embedded {
            group: group_of(ODD_PLATE),
        },
    });

    // A link to itself.
    std::os::unix::fs::symlink(name(PLATE, "C01", "w1"), at("C01", "w1")).expect("symlink");
    cases.push(quarantined(
        "symbolic link loop",
        file("C01"),
        "symbolic links",
        "unreadable",
    ));

    write_tiff(&at("C02", "w1"), FIELD, FIELD, 18);
    std::fs::set_permissions(
        at("C02", "w1"),
        std::os::unix::fs::PermissionsExt::from_mode(0o000),
    )
    .expect("chmod");
    cases.push(quarantined(
        "file without read permission",
        file("C02"),
        "ermission denied",
        "unreadable",
    ));

    write_tiff(&at("C03", "w2"), FIELD, FIELD, 19);
    cases.push(Case {
        kind: "a file that grows for a long time",
        subject: format!("{PLATE}_C03_s1_w1"),
        outcome: Outcome::Embedded {
            group: group_of(PLATE),
        },
    });
    cases.push(Case {
        kind: "a file deleted between detection and read",
        subject: format!("{PLATE}_C04_s1_w1"),
        outcome: Outcome::Skipped { metric: "vanished" },
    });
    cases
}

/// Write site C03's `w1` (of [`write`]) over `over`, a chunk at a time,
/// pausing once for `pause` (longer than the settle interval) halfway,
/// as a slow network copy does.
pub fn grow(dir: &Path, over: Duration, pause: Duration) -> std::thread::JoinHandle<()> {
    let path = dir.join(name(PLATE, "C03", "w1"));
    let bytes = tiff_bytes(FIELD, FIELD, 20);
    std::thread::spawn(move || {
        let mut f = std::fs::File::create(&path).expect("create");
        let chunks = 20;
        let step = bytes.len().div_ceil(chunks);
        for (i, chunk) in bytes.chunks(step).enumerate() {
            f.write_all(chunk).expect("append");
            f.flush().expect("flush");
            std::thread::sleep(over / chunks as u32);
            if i == chunks / 2 {
                std::thread::sleep(pause);
            }
        }
    })
}

/// Create site C04's `w1` (of [`write`]), and delete it `after` later
/// (shorter than the settle interval, so it is never read).
pub fn appear_then_vanish(dir: &Path, after: Duration) -> PathBuf {
    let path = dir.join(name(PLATE, "C04", "w1"));
    write_tiff(&path, FIELD, FIELD, 21);
    std::thread::sleep(after);
    std::fs::remove_file(&path).expect("remove");
    path
}
