//! Frozen backbones of SSVP: OpenAI CLIP (vision and text towers, BPE tokenizer) and DINOv3 ViTs.
//!
//! Each model follows the candle-transformers pattern: a config struct with named presets, small
//! modules with one `forward`, and weights read through a `VarBuilder` whose paths mirror the
//! Hugging Face checkpoint. Foreign checkpoint spellings (OpenAI/open_clip, timm, Meta `.pth`) are
//! renamed onto those paths in one place per model (`*/names.rs`) before loading.

pub mod clip;
pub mod dinov3;
pub mod nn;
pub mod runtime;
pub mod weights;

pub use nn::Grad;
pub use weights::{Checkpoint, ModelSource};
