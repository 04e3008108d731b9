//! Per-thread scratch memory for the convolution kernels' temporaries
//! (patch matrices and transposed output gradients). Every step needs
//! the same few megabytes again; keeping them per thread spares the
//! zeroing of a fresh allocation each call (a serial `memset` on the
//! calling thread, ~7% of a training step's CPU time before).
//!
//! A buffer handed out may hold anything from an earlier call: its
//! users write every element before they read it (im2col fills padding
//! with zeros; the GEMMs write their destination without reading it).

use std::cell::RefCell;

use candle_core::WithDType;

/// An element type with a per-thread scratch buffer.
pub trait Scratch: WithDType {
    /// Run `f` on `len` elements of this thread's scratch buffer
    /// (contents unspecified), grown as needed and kept for the next call.
    fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [Self]) -> R) -> R;
}

macro_rules! scratch {
    ($t:ty, $buffer:ident) => {
        thread_local! {
            static $buffer: RefCell<Vec<$t>> = const { RefCell::new(Vec::new()) };
        }

        impl Scratch for $t {
            fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [$t]) -> R) -> R {
                $buffer.with(|cell| match cell.try_borrow_mut() {
                    Ok(mut buffer) => {
                        if buffer.len() < len {
                            buffer.resize(len, 0.0);
                        }
                        f(&mut buffer[..len])
                    }
                    // Re-entered on this thread (a rayon worker that picked up
                    // another convolution while waiting inside one): a buffer
                    // of its own.
                    Err(_) => f(&mut vec![0.0; len]),
                })
            }
        }
    };
}

scratch!(f32, SCRATCH_F32);
scratch!(f64, SCRATCH_F64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_kept_per_thread_and_nested_calls_get_their_own() {
        let first = f32::with_scratch(8, |b| {
            b.fill(3.0);
            b.as_ptr() as usize
        });
        // The same memory comes back, with what the last user left in it.
        let (again, kept) = f32::with_scratch(4, |b| (b.as_ptr() as usize, b.to_vec()));
        assert_eq!((first, kept), (again, vec![3.0; 4]));
        f64::with_scratch(5, |outer| {
            outer.fill(1.0);
            f64::with_scratch(5, |inner| {
                assert_ne!(inner.as_ptr(), outer.as_ptr());
                inner.fill(2.0);
            });
            assert_eq!(outer, &[1.0; 5]);
        });
    }
}
