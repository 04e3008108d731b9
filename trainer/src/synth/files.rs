//! Where a microscope of each naming preset puts a site's channel files,
//! and writing them as 16-bit TIFFs.

use std::io::Cursor;
use std::path::{Path, PathBuf};

use bfx_core::naming::Preset;
use tiff::encoder::{TiffEncoder, colortype::Gray16};

use super::SynthError;

/// Plate name as the naming preset will read it back from the path.
pub fn plate_name(naming: Preset, series: &str, number: usize) -> String {
    match naming {
        Preset::Rxrx => format!("{series}_Plate{number}"),
        _ => format!("{series}P{number}"),
    }
}

/// Channel identifier the preset writes for channel index `c` (from 0).
pub fn channel_id(naming: Preset, c: usize) -> String {
    // Cellomics counts channels (and fields) from 0, the others from 1.
    let first = usize::from(naming != Preset::Cellomics);
    format!("{}{}", naming.channel_prefix(), c + first)
}

/// Site number the preset writes for the `index`-th field of a well (from 0).
pub fn site_number(naming: Preset, index: usize) -> u32 {
    match naming {
        Preset::Cellomics => index as u32,
        _ => index as u32 + 1,
    }
}

/// Path of one channel file, relative to the acquisition root.
pub fn image_path(
    naming: Preset,
    series: &str,
    plate_number: usize,
    well: &str,
    site: u32,
    c: usize,
) -> Result<PathBuf, SynthError> {
    let plate = plate_name(naming, series, plate_number);
    let (row, col) = well.split_at(1);
    let row_number = row.as_bytes()[0] - b'A' + 1;
    let col: u32 = col
        .parse()
        .map_err(|_| SynthError::Design(format!("well {well} has no column number")))?;
    let name = match naming {
        Preset::Imagexpress => format!("{plate}/{plate}_{well}_s{site}_w{}.tif", c + 1),
        Preset::Opera => format!(
            "{plate}/Images/r{row_number:02}c{col:02}f{site:02}p01-ch{}sk1fk1fl1.tiff",
            c + 1
        ),
        Preset::Yokogawa => format!(
            "{plate}/{plate}_{well}_T0001F{site:03}L01A01Z01C{:02}.tif",
            c + 1
        ),
        Preset::Cellomics => format!("{plate}/{plate}_{well}f{site:02}d{c}.tif"),
        Preset::Rxrx => format!("{series}/Plate{plate_number}/{well}_s{site}_w{}.tif", c + 1),
        Preset::Custom => {
            return Err(SynthError::Design(
                "synthetic screens are written with an instrument preset, not `custom`".into(),
            ));
        }
    };
    Ok(PathBuf::from(name))
}

/// Write one uncompressed 16-bit grayscale TIFF (what most screening
/// instruments write), creating its folder.
pub fn write_tiff(path: &Path, side: u32, pixels: &[u16]) -> Result<(), SynthError> {
    let io = |e: std::io::Error| SynthError::Io(path.to_owned(), e);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    // Encode in memory so a failed write surfaces here instead of in a
    // BufWriter's silent flush on drop.
    let mut bytes = Cursor::new(Vec::new());
    TiffEncoder::new(&mut bytes)
        .and_then(|mut e| e.write_image::<Gray16>(side, side, pixels))
        .map_err(|e| SynthError::Tiff(path.to_owned(), e.to_string()))?;
    std::fs::write(path, bytes.into_inner()).map_err(io)
}
