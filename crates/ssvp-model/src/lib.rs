//! The trainable SSVP head (arXiv 2601.09147): HSVS fuses CLIP and DINOv3 features, VCPG turns
//! learnable prompts into image-conditioned text embeddings, VTAM maps both into anomaly maps and
//! image scores. The frozen backbones live in `ssvp-backbones`; this crate starts from their
//! features and from `T_init`, the text embeddings of the prompt bank.
//!
//! Everything on the trainable path uses autograd-capable ops only (`Grad::Tracked`): candle's
//! fused LayerNorm and softmax kernels have no backward.

pub mod augment;
pub mod config;
pub mod error;
pub mod features;
pub mod head;
pub mod hsvs;
pub mod loss;
pub mod optim;
pub mod params;
mod rng;
pub mod run_dir;
pub mod train;
pub mod vcpg;
pub mod vtam;

pub use config::{
    AugmentConfig, BackbonesConfig, ClassLoss, DinoLayerSet, LocalScore, LossConfig, ModelConfig,
    MosaicWhen, OptimConfig, PostprocessConfig, SsvpConfig,
};
pub use error::{Error, Result};
pub use features::{
    stack_features, BackboneIdentity, Backbones, CacheStorage, ClipPromptEncoder, FeatureCache,
    FeatureSource, ImageFeatures,
};
pub use head::{HeadFeatures, HeadOutput, Mode, ParamGroup, SsvpHead};
pub use loss::{LossTerms, Targets};
pub use optim::{CosineSchedule, SsvpOptimizer};
pub use vcpg::PromptTextEncoder;
