//! bfx-trainer: fits batch-effect-robust models on microscopy screens with
//! Candle and exports them as bundles for bfx-daemon.

pub mod calibrate;
pub mod data;
pub mod dataset;
pub mod linear;
pub mod sheet;
pub mod synth;
