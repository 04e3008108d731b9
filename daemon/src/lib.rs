//! bfx-daemon: turns a screening microscope's images into batch-corrected
//! embeddings while the plate is being imaged.
//!
//! This crate holds the service's building blocks; the binary `bfx-daemon`
//! wires them together.

pub mod check;
pub mod digest;
pub mod doctor;
pub mod engine;
pub mod journal;
pub mod model_input;
pub mod pipeline;
pub mod priority;
pub mod replay;
pub mod runtime;
pub mod store;
pub mod telemetry;
