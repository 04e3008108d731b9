//! Pooling with correct gradients: a 2x2 max pool (Candle's `max_pool2d`
//! backward scales the gradient by 1/k^2; bfx's op in `ops` is checked
//! against finite differences) and global average pooling as a mean.

pub use super::ops::max_pool_2x2;

use candle_core::{Result, Tensor};

/// Mean over the spatial axes: `[n, c, h, w]` -> `[n, c]`.
pub fn global_avg_pool(x: &Tensor) -> Result<Tensor> {
    x.mean(3)?.mean(2)
}
