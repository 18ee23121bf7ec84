//! OpenAI CLIP: vision tower (with optional AnomalyCLIP V-V attention), text tower, tokenizer.
//!
//! Weights are read through HF `CLIPModel` paths; `names.rs` maps OpenAI/open_clip and timm
//! spellings onto them. `ClipModel::load` ties source resolution, reading, renaming and config
//! together.

pub mod config;
mod encoder;
pub mod model;
pub mod names;
pub mod text;
pub mod tokenizer;
pub mod vision;

pub use crate::weights::NameScheme;
pub use config::{Activation, ClipConfig, ClipTextConfig, ClipVisionConfig};
pub use model::{ClipModel, ConfigChoice, LoadOptions, WEIGHTS_FILES};
pub use names::{to_hf_names, ClipNames, Scheme};
pub use text::{eot_positions, ClipTextTransformer, TextOutput};
pub use vision::{
    l2_normalize, ClipVisionTransformer, PosInterp, VisionLayers, VisionOptions, VisionOutput,
};
