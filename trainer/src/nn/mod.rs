//! Network building blocks shared by every method: normalization with
//! explicit statistics, pooling with correct gradients, the ResNet encoder.
//! Every layer written here is checked against finite differences in
//! `gradcheck`.

#[cfg(test)]
pub mod gradcheck;
pub mod ist;
pub mod norm;
pub mod ops;
pub mod pool;
pub mod resnet;

pub use norm::{BatchNorm, BnMode, LayerStats, Norm, NormPass};
pub use resnet::{EncoderMaps, ResNet, ResNetSpec};
