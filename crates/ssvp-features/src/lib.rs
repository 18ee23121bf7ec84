//! Backbone features of images, between the frozen towers (`ssvp-backbones`) and everything that
//! scores: the SSVP head, the reference banks and mutual scoring.
//!
//! The crate reads down the data path:
//! - [`config`]: which weights at which sizes ([`BackbonesConfig`]) and which blocks are tapped
//!   ([`TapLayers`]);
//! - [`backbones`]: [`Backbones`], CLIP and DINOv3 aligned on one patch grid, preprocessing into
//!   tower inputs, and the early stop ([`TowerSet`]: a tower runs only up to its deepest tap
//!   when no global feature is read, and not at all when nothing reads it);
//! - [`features`]: [`ImageFeatures`] of one image and [`FeatureSource`], anything that yields
//!   them;
//! - [`taps`]: which tower's tokens at which tapped block a reader takes ([`Tap`],
//!   [`TapSelection`]);
//! - [`identity`]: [`BackboneIdentity`], what made a set of features, by content;
//! - [`cache`]: [`FeatureCache`], features on disk keyed by image content and identity;
//! - [`tiny`]: the seeded `tiny` towers that run the whole pipeline with no weights files.
//!
//! It never depends on the head: the training-free path builds without it.
//!
//! ```no_run
//! # fn main() -> Result<(), ssvp_features::Error> {
//! use candle_core::Device;
//! use ssvp_features::{Backbones, BackbonesConfig, DinoLayerSet, FeatureSource, TapLayers};
//! let taps = TapLayers { clip: vec![1, 2, 3, 4], dino: DinoLayerSet::QuarterPoints };
//! let backbones = Backbones::load(&BackbonesConfig::tiny(), &taps, &Device::Cpu)?;
//! let features = backbones.features(std::path::Path::new("image.png"))?;
//! # let _ = features; Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod backbones;
pub mod cache;
pub mod config;
pub mod dino;
pub mod embed;
pub mod error;
pub mod features;
pub mod identity;
pub mod presets;
pub mod taps;
pub mod tiny;

pub use backbones::{Backbones, TowerSet, TowerTimes};
pub use cache::{CacheStats, CacheStorage, FeatureCache};
pub use config::{
    BackbonesConfig, BackbonesRecord, DinoArch, DinoLayerSet, PosInterp, TapLayers, NO_TOWER, TINY,
};
pub use dino::DinoTower;
pub use error::{Error, ErrorKind, Result};
pub use features::{FeatureSource, ImageFeatures};
pub use identity::{sha256_hex, BackboneIdentity, FEATURE_FORMAT};
pub use presets::{BackboneChoice, Preset};
pub use taps::{tapped, towers_of, Layers, Tap, TapSelection, Tower, Towers};
pub use tiny::{tiny_clip_config, tiny_dino_config};
