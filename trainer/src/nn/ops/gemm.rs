//! The one call into a GEMM kernel (the `gemm` crate Candle itself uses),
//! behind a safe signature: every matrix is a slice plus row and column
//! strides, and the span each one covers is checked against its slice
//! before the kernel runs.
#![allow(unsafe_code)]

use candle_core::WithDType;

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
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            dst_s.cs as isize,
            dst_s.rs as isize,
            accumulate,
            lhs.as_ptr(),
            lhs_s.cs as isize,
            lhs_s.rs as isize,
            rhs.as_ptr(),
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
        for r in 0..m {
            for col in 0..n {
                let want: f64 = 1.0 + (0..k).map(|i| a[r * k + i] * b[i * n + col]).sum::<f64>();
                assert!((c[r * n + col] - want).abs() < 1e-12);
            }
        }
    }
}
