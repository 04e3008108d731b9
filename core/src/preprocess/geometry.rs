//! Output geometry: area-averaging resize and tile placement.

/// For each output index along one axis: the first input index and the
/// weights of the input pixels its footprint overlaps (summing to 1).
fn area_weights(input: usize, output: usize) -> Vec<(usize, Vec<f64>)> {
    let scale = input as f64 / output as f64;
    (0..output)
        .map(|o| {
            let (start, end) = (o as f64 * scale, (o + 1) as f64 * scale);
            let first = start.floor() as usize;
            let last = (end.ceil() as usize).min(input);
            let weights = (first..last)
                .map(|i| {
                    let overlap = end.min((i + 1) as f64) - start.max(i as f64);
                    overlap.max(0.0) / scale
                })
                .collect();
            (first, weights)
        })
        .collect()
}

/// Resize one `h x w` plane to `oh x ow`: each output pixel is the mean of
/// the input area it covers, partial pixels weighted by overlap (OpenCV's
/// INTER_AREA when shrinking). Shrinking by an integer factor is a plain
/// block mean; the image mean is preserved exactly up to rounding.
///
/// # Panics
/// If `plane` does not hold `h * w` samples (a caller's bug, not bad input).
pub fn resize_area(plane: &[f32], h: usize, w: usize, oh: usize, ow: usize) -> Vec<f32> {
    assert_eq!(
        plane.len(),
        h * w,
        "plane of {h}x{w} has {} samples",
        plane.len()
    );
    if (h, w) == (oh, ow) {
        return plane.to_vec();
    }
    let (rows, cols) = (area_weights(h, oh), area_weights(w, ow));
    // Horizontal pass into f64, then vertical pass.
    let mut horizontal = vec![0f64; h * ow];
    for y in 0..h {
        let src = &plane[y * w..(y + 1) * w];
        for (ox, (first, weights)) in cols.iter().enumerate() {
            horizontal[y * ow + ox] = weights
                .iter()
                .zip(&src[*first..])
                .map(|(k, &x)| k * f64::from(x))
                .sum();
        }
    }
    let mut out = Vec::with_capacity(oh * ow);
    for (first, weights) in &rows {
        for ox in 0..ow {
            let v: f64 = weights
                .iter()
                .enumerate()
                .map(|(i, k)| k * horizontal[(first + i) * ow + ox])
                .sum();
            out.push(v as f32);
        }
    }
    out
}

/// Tile start positions along an axis of length `len`: every `stride`,
/// plus one aligned to the end if the grid leaves pixels uncovered. `None`
/// when the axis is shorter than a tile.
pub fn tile_origins(len: usize, size: usize, stride: usize) -> Option<Vec<usize>> {
    if len < size || size == 0 || stride == 0 {
        return None;
    }
    let mut origins: Vec<usize> = (0..=len - size).step_by(stride).collect();
    // The range starts at 0 and len >= size, so it is never empty.
    let last = *origins.last().expect("at least origin 0");
    if last + size < len {
        origins.push(len - size);
    }
    Some(origins)
}
