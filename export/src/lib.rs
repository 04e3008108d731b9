//! bfx-export: turns trained checkpoints into ONNX model bundles for
//! bfx-daemon, without depending on Candle.
//!
//! The bundle format itself ([`bfx_core::bundle`]) is shared with the daemon;
//! graph emission arrives with the export work.

pub use bfx_core::bundle::{BUNDLE_FORMAT_VERSION, Bundle, BundleManifest};
