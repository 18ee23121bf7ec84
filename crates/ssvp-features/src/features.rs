//! [`ImageFeatures`], the backbone features of one image, and [`FeatureSource`], anything that
//! yields them: live backbones, the on-disk cache, or a test double. Training, evaluation and
//! the training-free scorers run the same on each.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{Device, Tensor};
use ssvp_image::RgbImage8;

use crate::error::{ensure_fits, Error, Result};
use crate::identity::BackboneIdentity;

/// Backbone features of ONE image (no batch dim), ready to stack into [`HeadFeatures`].
#[derive(Debug, Clone)]
pub struct ImageFeatures {
    /// Per scale `[N, D_c]`: CLIP patch tokens after ln_post -> proj (CLS dropped).
    pub clip_local: Vec<Tensor>,
    /// Per scale `[N, D_d]`: final-normed DINO patch tokens (CLS and registers dropped).
    pub dino_local: Vec<Tensor>,
    /// `[D_c]`: CLIP image embedding (CLS -> ln_post -> proj).
    pub clip_global: Tensor,
    /// `[D_d]`: final-normed DINO CLS of the last block.
    pub dino_global: Tensor,
    /// Patch grid `(h, w)`, `h * w = N`.
    pub grid: (usize, usize),
}

impl ImageFeatures {
    /// Checks the shapes agree with each other and with `identity` (scale counts, widths, grid).
    pub fn check(&self, identity: &BackboneIdentity) -> Result<()> {
        let n = self.grid.0 * self.grid.1;
        ensure_fits!(
            self.grid == identity.grid,
            "features have a {:?} grid, the backbones make {:?}",
            self.grid,
            identity.grid
        );
        ensure_fits!(
            self.clip_local.len() == identity.clip_layers.len()
                && self.dino_local.len() == identity.dino_layers.len(),
            "features have {} CLIP and {} DINO scales, the backbones make {} and {}",
            self.clip_local.len(),
            self.dino_local.len(),
            identity.clip_layers.len(),
            identity.dino_layers.len()
        );
        for (what, ts, d) in [
            ("CLIP", &self.clip_local, identity.clip_dim),
            ("DINO", &self.dino_local, identity.dino_dim),
        ] {
            for t in ts {
                ensure_fits!(
                    t.dims() == [n, d],
                    "a {what} scale is {:?}, expected [{n}, {d}]",
                    t.dims()
                );
            }
        }
        ensure_fits!(
            self.clip_global.dims() == [identity.clip_dim]
                && self.dino_global.dims() == [identity.dino_dim],
            "global features are {:?} and {:?}, expected [{}] and [{}]",
            self.clip_global.dims(),
            self.dino_global.dims(),
            identity.clip_dim,
            identity.dino_dim
        );
        Ok(())
    }

    /// The same features on another device.
    pub fn to_device(&self, device: &Device) -> candle_core::Result<Self> {
        let move_all = |ts: &[Tensor]| -> candle_core::Result<Vec<Tensor>> {
            ts.iter().map(|t| t.to_device(device)).collect()
        };
        Ok(Self {
            clip_local: move_all(&self.clip_local)?,
            dino_local: move_all(&self.dino_local)?,
            clip_global: self.clip_global.to_device(device)?,
            dino_global: self.dino_global.to_device(device)?,
            grid: self.grid,
        })
    }
}

/// Anything that turns an image file into backbone features.
pub trait FeatureSource: Send + Sync {
    /// What produces the features (the backbones, by content).
    fn identity(&self) -> &BackboneIdentity;
    /// Where the returned tensors live.
    fn device(&self) -> &Device;
    /// Features of one image file.
    fn features(&self, image_path: &Path) -> Result<ImageFeatures>;
    /// Several images at once (one backbone pass for the batch where the source can).
    fn features_batch(&self, image_paths: &[PathBuf]) -> Result<Vec<ImageFeatures>> {
        image_paths.iter().map(|p| self.features(p)).collect()
    }
    /// Features of decoded images (augmented training images, uploads): never cached, since
    /// there is no file whose content keys them.
    fn features_of_images(&self, images: &[RgbImage8]) -> Result<Vec<ImageFeatures>> {
        let _ = images;
        Err(Error::Unsupported(
            "this feature source only reads image files".into(),
        ))
    }
}

/// A shared or boxed source is the source itself.
macro_rules! forward_feature_source {
    ($($pointer:ident),*) => {$(
        impl<S: FeatureSource + ?Sized> FeatureSource for $pointer<S> {
            fn identity(&self) -> &BackboneIdentity {
                (**self).identity()
            }
            fn device(&self) -> &Device {
                (**self).device()
            }
            fn features(&self, image_path: &Path) -> Result<ImageFeatures> {
                (**self).features(image_path)
            }
            fn features_batch(&self, image_paths: &[PathBuf]) -> Result<Vec<ImageFeatures>> {
                (**self).features_batch(image_paths)
            }
            fn features_of_images(&self, images: &[RgbImage8]) -> Result<Vec<ImageFeatures>> {
                (**self).features_of_images(images)
            }
        }
    )*};
}

forward_feature_source!(Arc, Box);
