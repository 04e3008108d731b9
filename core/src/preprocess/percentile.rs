//! Fitting the stored percentiles of [`super::Normalization::Percentile`].

/// Per-channel percentile values over a sample of fields, for
/// [`super::Normalization::Percentile`]. `fields` are `[c, h, w]` stacks of raw
/// intensities; `low` and `high` are percentages (e.g. 1 and 99).
pub fn fit_percentiles(
    fields: &[&[f32]],
    channels: usize,
    low: f64,
    high: f64,
) -> (Vec<f32>, Vec<f32>) {
    let mut lows = Vec::with_capacity(channels);
    let mut highs = Vec::with_capacity(channels);
    for c in 0..channels {
        let mut values: Vec<f32> = fields
            .iter()
            .flat_map(|f| {
                let n = f.len() / channels;
                f[c * n..(c + 1) * n].iter().copied()
            })
            .filter(|x| x.is_finite())
            .collect();
        lows.push(percentile(&mut values, low));
        highs.push(percentile(&mut values, high));
    }
    (lows, highs)
}

/// The `q`-th percentile (nearest rank) of `values`; NaN when empty.
fn percentile(values: &mut [f32], q: f64) -> f32 {
    if values.is_empty() {
        return f32::NAN;
    }
    let rank = ((q / 100.0) * (values.len() - 1) as f64).round() as usize;
    let rank = rank.min(values.len() - 1);
    *values.select_nth_unstable_by(rank, f32::total_cmp).1
}
