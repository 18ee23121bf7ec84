//! From image files to [`HeadFeatures`]: the frozen backbones ([`Backbones`]), the real prompt
//! text encoder ([`ClipPromptEncoder`]) and an on-disk feature cache ([`FeatureCache`]).
//!
//! One image gives one [`ImageFeatures`] (no batch dimension); [`stack_features`] stacks several
//! into the batch the head takes. Anything that yields features implements [`FeatureSource`], so
//! training and evaluation run the same on live backbones, on a cache, or on a test double.
//!
//! ```no_run
//! # fn main() -> anyhow::Result<()> {
//! use candle_core::Device;
//! use ssvp_model::features::{stack_features, Backbones, CacheStorage, FeatureCache, FeatureSource};
//! use ssvp_model::SsvpConfig;
//! let cfg = SsvpConfig::tiny(); // seeded backbones, no weights files
//! let backbones = Backbones::load(&cfg.backbones, &cfg.model, &Device::Cpu)?;
//! let cached = FeatureCache::new(backbones, "features-cache".into(), CacheStorage::F32)?;
//! // A PromptTextEncoder for SsvpHead::encode_prompts, borrowing the text tower.
//! let encoder = cached.inner().prompt_encoder()?;
//! let one = cached.features(std::path::Path::new("image.png"))?;
//! let batch = stack_features(&[one])?;
//! # let _ = (encoder, batch); Ok(()) }
//! ```
//!
//! The `tiny` preset (`backbones.clip = backbones.dino = "tiny"`, see [`SsvpConfig::tiny`]) builds
//! the real CLIP and DINOv3 architectures at width 64 and 4 blocks with seeded random weights; its
//! head must be sized to match (`SsvpConfig::tiny()` does that).
//!
//! [`SsvpConfig::tiny`]: crate::SsvpConfig::tiny

mod backbones;
mod cache;
mod prompt;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{Device, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use ssvp_image::RgbImage8;

use crate::head::HeadFeatures;

pub use backbones::{tiny_clip_config, tiny_dino_config, Backbones, TowerSet, TowerTimes};
pub use cache::{CacheStats, CacheStorage, FeatureCache};
pub use prompt::{ClipPromptEncoder, PromptCache, PromptIds, PLACEHOLDER};

/// Version of the feature layout; bumped whenever extraction changes what a cached file means.
pub const FEATURE_FORMAT: u32 = 1;

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
    pub fn check(&self, identity: &BackboneIdentity) -> anyhow::Result<()> {
        let n = self.grid.0 * self.grid.1;
        anyhow::ensure!(
            self.grid == identity.grid,
            "features have a {:?} grid, the backbones make {:?}",
            self.grid,
            identity.grid
        );
        anyhow::ensure!(
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
                anyhow::ensure!(
                    t.dims() == [n, d],
                    "a {what} scale is {:?}, expected [{n}, {d}]",
                    t.dims()
                );
            }
        }
        anyhow::ensure!(
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

/// Stacks per-image features into the head's batch layout (`[B, N, D]` per scale, `[B, D]`).
/// All items must share the grid, the scale counts and the widths.
pub fn stack_features(items: &[ImageFeatures]) -> candle_core::Result<HeadFeatures> {
    let Some(first) = items.first() else {
        candle_core::bail!("stack_features needs at least one image");
    };
    for (i, it) in items.iter().enumerate() {
        if it.grid != first.grid
            || it.clip_local.len() != first.clip_local.len()
            || it.dino_local.len() != first.dino_local.len()
        {
            candle_core::bail!(
                "image {i} has a {:?} grid with {}+{} scales, image 0 a {:?} grid with {}+{}",
                it.grid,
                it.clip_local.len(),
                it.dino_local.len(),
                first.grid,
                first.clip_local.len(),
                first.dino_local.len()
            );
        }
    }
    let stack_scale = |pick: &dyn Fn(&ImageFeatures) -> &Tensor| {
        let ts: Vec<&Tensor> = items.iter().map(pick).collect();
        Tensor::stack(&ts, 0)
    };
    let clip_local = (0..first.clip_local.len())
        .map(|l| stack_scale(&|it| &it.clip_local[l]))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let dino_local = (0..first.dino_local.len())
        .map(|l| stack_scale(&|it| &it.dino_local[l]))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(HeadFeatures {
        clip_local,
        dino_local,
        clip_global: stack_scale(&|it| &it.clip_global)?,
        dino_global: stack_scale(&|it| &it.dino_global)?,
        grid: first.grid,
    })
}

/// What produced the features: enough to refuse a checkpoint or cache made with other backbones.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackboneIdentity {
    /// The CLIP weights as named in the config (a path, a hub id or `tiny`).
    pub clip: String,
    /// The DINOv3 weights as named in the config.
    pub dino: String,
    /// CLIP input `(height, width)` in pixels.
    pub clip_size: (usize, usize),
    /// DINOv3 input `(height, width)` in pixels.
    pub dino_size: (usize, usize),
    /// 1-based CLIP blocks, one per scale.
    pub clip_layers: Vec<usize>,
    /// 1-based DINOv3 blocks, one per scale.
    pub dino_layers: Vec<usize>,
    /// Compute dtype of the backbones (`f32`, `f16`, `bf16`).
    pub dtype: String,
    /// CLIP positional-grid resampling (`bicubic` / `bilinear`).
    pub pos_interp: String,
    /// First CLIP block with V-V attention, if any.
    pub dpam_from: Option<usize>,
    /// Joint CLIP space width `D_c`.
    pub clip_dim: usize,
    /// DINOv3 token width `D_d`.
    pub dino_dim: usize,
    /// CLIP text token width (0 for a vision-only CLIP).
    pub text_width: usize,
    /// Patch grid `(h, w)` both towers run at.
    pub grid: (usize, usize),
    /// Content fingerprint of the CLIP weights (`seeded:<seed>` for `tiny`).
    pub clip_weights: String,
    /// Content fingerprint of the DINOv3 weights.
    pub dino_weights: String,
    /// The preprocessing recipes, spelled out.
    pub preprocess: String,
    /// [`FEATURE_FORMAT`] at extraction time.
    pub format: u32,
}

impl BackboneIdentity {
    /// Everything that changes feature values, without the weights' spellings (the same weights
    /// named by another path or hub id give the same features).
    fn content(&self) -> Self {
        Self {
            clip: String::new(),
            dino: String::new(),
            ..self.clone()
        }
    }

    /// A hex digest of everything that changes the features: the cache's key prefix.
    pub fn digest(&self) -> String {
        let json = serde_json::to_string(&self.content()).expect("identity serialises");
        hex(&Sha256::digest(json.as_bytes()))
    }

    /// Whether features (or a head trained on them) made with `other` fit these backbones; the
    /// error lists every field that differs.
    pub fn check_matches(&self, other: &Self) -> anyhow::Result<()> {
        let a = serde_json::to_value(self.content())?;
        let b = serde_json::to_value(other.content())?;
        let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
            anyhow::bail!("backbone identities do not serialise to objects");
        };
        let diffs: Vec<String> = a
            .iter()
            .filter(|(k, v)| b.get(*k) != Some(*v))
            .map(|(k, v)| {
                format!(
                    "{k}: {v} here, {} there",
                    b.get(k).cloned().unwrap_or_default()
                )
            })
            .collect();
        if diffs.is_empty() {
            Ok(())
        } else {
            anyhow::bail!(
                "made with other backbones ({} / {} vs {} / {}): {}",
                other.clip,
                other.dino,
                self.clip,
                self.dino,
                diffs.join("; ")
            )
        }
    }
}

/// Anything that turns an image file into backbone features.
pub trait FeatureSource: Send + Sync {
    fn identity(&self) -> &BackboneIdentity;
    /// Where the returned tensors live.
    fn device(&self) -> &Device;
    fn features(&self, image_path: &Path) -> anyhow::Result<ImageFeatures>;
    /// Several images at once (one backbone pass for the batch where the source can).
    fn features_batch(&self, image_paths: &[PathBuf]) -> anyhow::Result<Vec<ImageFeatures>> {
        image_paths.iter().map(|p| self.features(p)).collect()
    }
    /// Features of decoded images (augmented training images, uploads): never cached, since
    /// there is no file whose content keys them.
    fn features_of_images(&self, images: &[RgbImage8]) -> anyhow::Result<Vec<ImageFeatures>> {
        let _ = images;
        anyhow::bail!("this feature source only reads image files")
    }
}

impl<S: FeatureSource + ?Sized> FeatureSource for Arc<S> {
    fn identity(&self) -> &BackboneIdentity {
        (**self).identity()
    }
    fn device(&self) -> &Device {
        (**self).device()
    }
    fn features(&self, image_path: &Path) -> anyhow::Result<ImageFeatures> {
        (**self).features(image_path)
    }
    fn features_batch(&self, image_paths: &[PathBuf]) -> anyhow::Result<Vec<ImageFeatures>> {
        (**self).features_batch(image_paths)
    }
    fn features_of_images(&self, images: &[RgbImage8]) -> anyhow::Result<Vec<ImageFeatures>> {
        (**self).features_of_images(images)
    }
}

impl<S: FeatureSource + ?Sized> FeatureSource for Box<S> {
    fn identity(&self) -> &BackboneIdentity {
        (**self).identity()
    }
    fn device(&self) -> &Device {
        (**self).device()
    }
    fn features(&self, image_path: &Path) -> anyhow::Result<ImageFeatures> {
        (**self).features(image_path)
    }
    fn features_batch(&self, image_paths: &[PathBuf]) -> anyhow::Result<Vec<ImageFeatures>> {
        (**self).features_batch(image_paths)
    }
    fn features_of_images(&self, images: &[RgbImage8]) -> anyhow::Result<Vec<ImageFeatures>> {
        (**self).features_of_images(images)
    }
}

/// SHA-256 of `bytes` as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
