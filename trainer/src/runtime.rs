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
/// It also keeps the memory mimalloc frees (`keep_freed_memory`).
///
/// # Safety
/// Call before any other thread exists (first thing in `main`): it
/// writes the environment, which other threads might read concurrently.
pub unsafe fn configure_threads() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        // SAFETY: the caller guarantees no other thread is running.
        unsafe { std::env::set_var("CANDLE_NUM_THREADS", "1") };
    }
    keep_freed_memory();
}

/// mimalloc's `mi_option_purge_delay` (its position in mimalloc 3's
/// `mi_option_e`; `libmimalloc-sys` names no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// mimalloc returns freed memory to the kernel after a delay; a training
/// step frees and allocates the same tensors (megabytes each) every few
/// milliseconds, and each time the kernel faults the pages in and zeroes
/// them again, which took 15-20% of a step (perf: `clear_page_erms`).
/// Never purging keeps the process at its peak size, which a training
/// run reaches in its first step anyway. Without effect when mimalloc is
/// not the global allocator.
fn keep_freed_memory() {
    // SAFETY: mi_option_set only stores an integer in mimalloc's option
    // table; any option number and value are accepted.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
}

#[cfg(test)]
mod tests {
    /// The option number is the purge delay: mimalloc 3 sets it to 1000
    /// (ms), which no neighbouring option has.
    #[test]
    fn option_15_is_the_purge_delay() {
        // SAFETY: mi_option_get reads mimalloc's option table.
        let default = unsafe { libmimalloc_sys::mi_option_get(super::MI_OPTION_PURGE_DELAY) };
        assert_eq!(default, 1000);
    }
}
