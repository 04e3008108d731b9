//! Process-wide settings the trainer's binaries apply first thing in
//! `main`.
#![allow(unsafe_code)]

/// `BFX_KERNELS=candle` runs Candle's own ops everywhere instead of
/// bfx's kernels (a fallback, and the "before" of benchmarks).
pub fn kernels_from_env() {
    if std::env::var("BFX_KERNELS").is_ok_and(|v| v == "candle") {
        crate::nn::ops::use_candle_ops(true);
    }
}

/// Candle runs its own elementwise ops on a thread pool of its own beside
/// rayon's, which bfx's kernels and the GEMMs use; on a small machine the
/// two pools' spinning threads take turns on the same cores (measured:
/// docs/performance.md). The heavy ops run in bfx's kernels, and what is
/// left to Candle is memory-bound, so Candle's pool gets one thread (the
/// caller's) unless `CANDLE_NUM_THREADS` is set.
///
/// # Safety
/// Call before any other thread exists (first thing in `main`): it
/// writes the environment, which other threads might read concurrently.
pub unsafe fn configure_threads() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: the caller guarantees no other thread is running.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
}
