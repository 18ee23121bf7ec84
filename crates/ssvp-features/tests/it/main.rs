//! Integration tests of ssvp-features, in one binary.

mod cache;
mod dino_towers;

use ssvp_features::{DinoLayerSet, TapLayers};

/// The taps of the `tiny` head: every CLIP block, DINOv3's quarter points.
pub fn tiny_taps() -> TapLayers {
    TapLayers {
        clip: vec![1, 2, 3, 4],
        dino: DinoLayerSet::QuarterPoints,
    }
}
