//! Pooling with correct gradients: a 2x2 max pool as reshape + max (Candle's
//! `max_pool2d` backward scales the gradient by 1/k^2) and global average
//! pooling as a mean.

use candle_core::{Result, Tensor};

/// 2x2 max pool with stride 2 over `[n, c, h, w]`; an odd last row or
/// column is dropped, as PyTorch's `MaxPool2d(2)` does.
pub fn max_pool_2x2(x: &Tensor) -> Result<Tensor> {
    let (n, c, h, w) = x.dims4()?;
    let (h2, w2) = (h / 2, w / 2);
    let x = if h % 2 == 1 || w % 2 == 1 {
        x.narrow(2, 0, h2 * 2)?.narrow(3, 0, w2 * 2)?
    } else {
        x.clone()
    };
    x.reshape((n, c, h2, 2, w2, 2))?.max(5)?.max(3)
}

/// Mean over the spatial axes: `[n, c, h, w]` -> `[n, c]`.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    x.mean(3)?.mean(2)
}
