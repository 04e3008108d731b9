//! bfx-trainer: fits batch-effect-robust models on microscopy screens with
//! Candle and exports them as bundles for bfx-daemon.

pub mod bench;
pub mod calibrate;
pub mod dataset;
pub mod eval;
pub mod export;
pub mod fit;
pub mod ist;
pub mod linear;
pub mod methods;
pub mod model;
pub mod nn;
pub mod optim;
pub mod random;
pub mod runtime;
pub mod sheet;
pub mod swap;
pub mod synth;
