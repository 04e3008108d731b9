//! What the benchmark binaries share: their arguments and medians.

use anyhow::Context;

/// Positional argument `i` as a number.
pub fn arg(i: usize) -> anyhow::Result<usize> {
    let a = std::env::args()
        .nth(i)
        .with_context(|| format!("argument {i} is missing (see the usage in the source)"))?;
    a.parse()
        .with_context(|| format!("argument {i} ({a:?}) is not a number"))
}

/// Median of a sample (of the timed steps; at least one).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}
