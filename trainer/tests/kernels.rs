//! bfx's kernels against Candle's own ops on a whole training run: the
//! same tiny fit (same seed, same batches) learns as well with either.
//! Its own test binary, because the switch is process-wide.

use std::sync::atomic::AtomicBool;

use bfx_trainer::fit;
use bfx_trainer::nn::ops;
use candle_core::Device;
use indicatif::ProgressBar;

mod common;

#[test]
fn tiny_training_is_unchanged_by_the_kernels() {
    let tmp = tempfile::tempdir().unwrap();
    let path = common::setup(tmp.path(), "");
    let base = bfx_config::load_trainer(&path).expect("the test config is valid");
    let mut outcome = Vec::new();
    for candle_ops in [true, false] {
        ops::use_candle_ops(candle_ops);
        let mut config = base.clone();
        config.out = tmp.path().join(if candle_ops { "candle" } else { "bfx" });
        let report = fit::fit(
            &config,
            &Device::Cpu,
            false,
            &AtomicBool::new(false),
            &ProgressBar::hidden(),
        )
        .expect("fit runs");
        outcome.push((candle_ops, report.history));
    }
    // The tiny split validates on 8 images (accuracy moves in steps of
    // 1/8), so the mean training loss of each interval is the measure.
    let (candle, bfx) = (&outcome[0].1, &outcome[1].1);
    let loss = |h: &[fit::checkpoint::HistoryPoint], i: usize| f64::from(h[i].train_loss);
    let n = candle.len();
    assert_eq!(n, bfx.len());
    // The runs differ only by float rounding (and max-pool ties), so they
    // start out together ...
    let first = (loss(candle, 0) - loss(bfx, 0)).abs() / loss(candle, 0);
    assert!(first < 0.02, "first interval: {candle:?} vs {bfx:?}");
    // ... both learn (the last three intervals; a single interval's mean
    // moves with the few batches in it) ...
    let end = |h| (n - 3..n).map(|i| loss(h, i)).sum::<f64>() / 3.0;
    for h in [candle, bfx] {
        assert!(end(h) < 0.7 * loss(h, 0), "{h:?}");
    }
    // ... and end at the same loss within noise.
    let last = (end(candle) - end(bfx)).abs() / end(candle);
    assert!(last < 0.1, "last intervals: {candle:?} vs {bfx:?}");
}
