//! The trainable SSVP head (arXiv 2601.09147): HSVS fuses CLIP and DINOv3 features, VCPG turns
//! learnable prompts into image-conditioned text embeddings, VTAM maps both into anomaly maps and
//! image scores. The frozen backbones live in `ssvp-backbones`; this crate starts from their
//! features and from `T_init`, the text embeddings of the prompt bank.
//!
//! Everything on the trainable path uses autograd-capable ops only (`Grad::Tracked`): candle's
//! fused LayerNorm and softmax kernels have no backward.
//!
//! Errors are this crate's typed [`Error`] (its [`Error::kind`] says whose fault); the
//! training of a whole run, as `ssvp train` asks for it, is [`train::run_job`].

#![warn(missing_docs)]

pub mod augment;
pub mod config;
pub mod error;
pub mod features;
pub mod head;
pub mod hsvs;
pub mod loss;
pub mod optim;
pub mod params;
pub mod prompt;
mod rng;
pub mod run_dir;
pub mod samples;
pub mod train;
pub mod vcpg;
pub mod vtam;

pub use config::{
    AugmentConfig, BackbonesConfig, ClassLoss, DinoLayerSet, LocalScore, LossConfig, ModelConfig,
    MosaicWhen, OptimConfig, PostprocessConfig, SsvpConfig,
};
pub use error::{Error, ErrorKind, IoError, Result};
pub use features::{load_backbones, seeded_vitl_backbones, PromptEncoding};
pub use head::{stack_features, HeadFeatures, HeadOutput, Mode, ParamGroup, SsvpHead};
pub use loss::{LossTerms, Targets};
pub use optim::{CosineSchedule, SsvpOptimizer};
pub use prompt::{ClipPromptEncoder, PromptCache};
pub use vcpg::PromptTextEncoder;
