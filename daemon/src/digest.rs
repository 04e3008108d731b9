//! 128-bit identities for the daemon's per-site and per-file sets (sites
//! stored, sites assembled, files used). They hold an entry per site and
//! per file of each open plate (a settled plate's are dropped): 16 bytes
//! of a sha256 take a fraction of a key's or a path's memory, and two
//! share one with odds of about entries² / 2^129.

use std::path::Path;

use bfx_core::naming::SiteKey;
use sha2::{Digest, Sha256};

/// The first 128 bits of the sha256 of `bytes`.
fn of_bytes(bytes: &[u8]) -> u128 {
    let digest = Sha256::digest(bytes);
    let mut first = [0u8; 16];
    first.copy_from_slice(&digest[..16]);
    u128::from_le_bytes(first)
}

/// A site's identity, from its key's text (`plate/well/site[/t<t>][/z<z>]`,
/// the store's `obs` index).
pub fn of_site_text(text: &str) -> u128 {
    of_bytes(text.as_bytes())
}

/// A site's identity: [`of_site_text`] of its key.
pub fn of_site(key: &SiteKey) -> u128 {
    of_site_text(&key.to_string())
}

/// A file's identity, from its path's bytes.
pub fn of_path(path: &Path) -> u128 {
    of_bytes(path.as_os_str().as_encoded_bytes())
}
