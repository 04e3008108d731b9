//! The one call into a GEMM kernel (the `gemm` crate Candle itself uses),
//! behind a safe signature: every matrix is a slice plus row and column
//! strides, and the span each one covers is checked against its slice
//! before the kernel runs.
#![allow(unsafe_code)]

use candle_core::WithDType;
use rayon::prelude::*;

/// A strided view of a matrix in a slice: element `(r, c)` is
/// `data[r * rs + c * cs]`.
#[derive(Clone, Copy)]
pub struct Strides {
    /// Row stride.
    pub rs: usize,
    /// Column stride.
    pub cs: usize,
}

impl Strides {
    /// A row-major matrix with `cols` columns.
    pub fn row_major(cols: usize) -> Strides {
        Strides { rs: cols, cs: 1 }
    }

    /// The transpose of a row-major matrix with `cols` columns.
    pub fn transposed(cols: usize) -> Strides {
        Strides { rs: 1, cs: cols }
    }

    /// Elements a `rows x cols` matrix spans.
    fn span(self, rows: usize, cols: usize) -> usize {
        if rows == 0 || cols == 0 {
            0
        } else {
            (rows - 1) * self.rs + (cols - 1) * self.cs + 1
        }
    }
}

/// `dst (m x n) = lhs (m x k) * rhs (k x n)`, or `+=` when `accumulate`,
/// on up to `threads` threads.
///
/// Panics if a matrix does not fit in its slice or `T` is not f32/f64
/// (callers check the dtype first); both are programming errors.
#[allow(clippy::too_many_arguments)]
pub fn gemm<T: WithDType>(
    (m, n, k): (usize, usize, usize),
    dst: &mut [T],
    dst_s: Strides,
    accumulate: bool,
    lhs: &[T],
    lhs_s: Strides,
    rhs: &[T],
    rhs_s: Strides,
    threads: usize,
) {
    assert!(
        matches!(T::DTYPE, candle_core::DType::F32 | candle_core::DType::F64),
        "gemm on {:?}",
        T::DTYPE
    );
    assert!(dst_s.span(m, n) <= dst.len(), "gemm: dst out of bounds");
    assert!(lhs_s.span(m, k) <= lhs.len(), "gemm: lhs out of bounds");
    assert!(rhs_s.span(k, n) <= rhs.len(), "gemm: rhs out of bounds");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for r in 0..m {
                for c in 0..n {
                    dst[r * dst_s.rs + c * dst_s.cs] = T::from_f64(0.0);
                }
            }
        }
        return;
    }
    let parts = column_parts(m, n, threads);
    if parts > 1 {
        // Disjoint column ranges of `dst` are disjoint elements only if no
        // two (row, column) pairs share an address.
        assert!(
            dst_s.rs >= n * dst_s.cs || dst_s.cs >= m * dst_s.rs,
            "gemm: dst rows and columns overlap"
        );
        let (dst, lhs, rhs) = (
            Shared(dst.as_mut_ptr()),
            Shared(lhs.as_ptr().cast_mut()),
            Shared(rhs.as_ptr().cast_mut()),
        );
        (0..parts).into_par_iter().for_each(|part| {
            let cols = n * part / parts..n * (part + 1) / parts;
            // SAFETY: as for the whole product below; each part writes
            // only the columns `cols` of `dst`, which no other part
            // writes (asserted above), and reads `lhs` and `rhs`, which
            // nothing writes.
            unsafe {
                kernel(
                    (m, cols.len(), k),
                    dst.get().add(cols.start * dst_s.cs),
                    dst_s,
                    accumulate,
                    lhs.get(),
                    lhs_s,
                    rhs.get().add(cols.start * rhs_s.cs),
                    rhs_s,
                    gemm::Parallelism::None,
                )
            }
        });
        return;
    }
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above bound every element the kernel reads or
    // writes ((m-1)*rs + (n-1)*cs for each matrix) inside its slice; `dst`
    // is borrowed mutably, so it aliases neither input; T is f32 or f64,
    // which the kernel implements.
    unsafe {
        kernel(
            (m, n, k),
            dst.as_mut_ptr(),
            dst_s,
            accumulate,
            lhs.as_ptr(),
            lhs_s,
            rhs.as_ptr(),
            rhs_s,
            parallelism,
        )
    }
}

/// Rows of `dst` the `gemm` crate gives one thread at least: it splits
/// a product between threads by blocks of rows, so a product of fewer
/// rows ran on one thread however many it was given (64 output channels
/// at 16x16 planes: 4.9 ms on one thread, 4.6 on two).
const ROW_BLOCK: usize = 64;

/// Columns a thread's part of a product has at least, so that its
/// kernel calls are not all overhead.
const MIN_PART_COLUMNS: usize = 256;

/// Into how many column ranges, one single-threaded product each, a
/// product of `m` rows and `n` columns is split; 1 leaves it whole to
/// the `gemm` crate's own threading.
fn column_parts(m: usize, n: usize, threads: usize) -> usize {
    if threads > 1 && m <= ROW_BLOCK {
        threads.min(n / MIN_PART_COLUMNS).max(1)
    } else {
        1
    }
}

/// Whether [`gemm`] runs a product of `m` rows and `n` columns as one
/// single-threaded product per thread, each on its own columns.
pub fn splits_by_columns(m: usize, n: usize, threads: usize) -> bool {
    threads > 1 && column_parts(m, n, threads) == threads
}

/// A pointer handed to the threads of a split product (see [`gemm`]'s
/// safety comments for why sharing it is sound).
#[derive(Clone, Copy)]
struct Shared<T>(*mut T);

impl<T> Shared<T> {
    /// The pointer (a method, so that closures capture the whole
    /// `Shared` rather than its field).
    fn get(self) -> *mut T {
        self.0
    }
}
// SAFETY: the parts of a split product write disjoint elements through
// it and only read through the input pointers.
unsafe impl<T> Send for Shared<T> {}
// SAFETY: as for Send.
unsafe impl<T> Sync for Shared<T> {}

/// The `gemm` crate's kernel on raw pointers with [`Strides`].
///
/// # Safety
/// Every element of the three `m x n`, `m x k` and `k x n` matrices must
/// lie in memory valid for the access (`dst` for writing, nothing else
/// writing it meanwhile), and `T` must be f32 or f64.
#[allow(clippy::too_many_arguments)]
unsafe fn kernel<T: WithDType>(
    (m, n, k): (usize, usize, usize),
    dst: *mut T,
    dst_s: Strides,
    accumulate: bool,
    lhs: *const T,
    lhs_s: Strides,
    rhs: *const T,
    rhs_s: Strides,
    parallelism: gemm::Parallelism,
) {
    // SAFETY: forwarded from this function's contract.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_s.cs as isize,
            dst_s.rs as isize,
            accumulate,
            lhs,
            lhs_s.cs as isize,
            lhs_s.rs as isize,
            rhs,
            rhs_s.cs as isize,
            rhs_s.rs as isize,
            T::from_f64(1.0),
            T::from_f64(1.0),
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `init + a b` for row-major `a` (`m x k`) and `b` (`k x n`), as a
    /// plain loop.
    fn plain(a: &[f64], b: &[f64], (m, n, k): (usize, usize, usize), init: f64) -> Vec<f64> {
        (0..m * n)
            .map(|i| {
                init + (0..k)
                    .map(|j| a[i / n * k + j] * b[j * n + i % n])
                    .sum::<f64>()
            })
            .collect()
    }

    #[test]
    fn strided_products_match_a_plain_loop() {
        let (m, n, k) = (5, 7, 3);
        let a: Vec<f64> = (0..m * k).map(|i| i as f64 * 0.5 - 3.0).collect();
        let b: Vec<f64> = (0..k * n).map(|i| (i as f64).sin()).collect();
        // lhs row-major, rhs stored transposed, accumulate onto ones.
        let bt: Vec<f64> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        let mut c = vec![1.0f64; m * n];
        gemm(
            (m, n, k),
            &mut c,
            Strides::row_major(n),
            true,
            &a,
            Strides::row_major(k),
            &bt,
            Strides::transposed(k),
            2,
        );
        let want = plain(&a, &b, (m, n, k), 1.0);
        assert!(c.iter().zip(&want).all(|(c, w)| (c - w).abs() < 1e-12));
    }

    /// A product of few rows and many columns is split between threads
    /// by columns, and gives what one product gives, into a row-major
    /// and into a transposed `dst`.
    #[test]
    fn a_product_split_by_columns_matches_a_plain_loop() {
        let (m, n, k) = (5, 600, 7);
        assert_eq!(column_parts(m, n, 3), 2, "600 columns make two parts");
        let a: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.3).cos()).collect();
        let b: Vec<f64> = (0..k * n).map(|i| (i as f64 * 0.7).sin()).collect();
        let want = plain(&a, &b, (m, n, k), 2.0);
        let (a_s, b_s) = (Strides::row_major(k), Strides::row_major(n));
        // Added onto 2.0 in place, and written (over NaN) transposed.
        for (dst_s, accumulate) in [
            (Strides::row_major(n), true),
            (Strides::transposed(m), false),
        ] {
            let mut c = vec![if accumulate { 2.0 } else { f64::NAN }; m * n];
            gemm((m, n, k), &mut c, dst_s, accumulate, &a, a_s, &b, b_s, 3);
            for (i, w) in want.iter().enumerate() {
                let got =
                    c[i / n * dst_s.rs + i % n * dst_s.cs] + if accumulate { 0.0 } else { 2.0 };
                assert!(
                    (got - w).abs() < 1e-12,
                    "accumulate {accumulate}, element {i}"
                );
            }
        }
    }
}
