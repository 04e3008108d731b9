//! bfx-core: the vocabulary the bfx trainer and daemon share.
//!
//! - [`naming`]: acquisition file names to plate, well, site and channel.
//! - [`image`]: TIFF and PNG planes, with limits against decompression bombs.
//! - [`preprocess`]: one implementation from files to model input.
//! - [`arch`]: network architectures as data, shared by the trainer and the exporter.
//! - [`bundle`]: the model bundle manifest, the trainer/daemon contract.
//! - [`ist`], [`style_bank`]: IST's style-transfer network as data, and the bundle's style codes.

pub mod arch;
pub mod bundle;
pub mod image;
pub mod ist;
pub mod naming;
pub mod preprocess;
pub mod style_bank;
