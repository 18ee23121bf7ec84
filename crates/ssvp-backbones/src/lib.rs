//! Frozen backbones of SSVP: OpenAI CLIP (vision and text towers, BPE tokenizer) and DINOv3 ViTs.
//!
//! Each model follows the candle-transformers pattern: a config struct with named presets, small
//! modules with one `forward`, and weights read through a `VarBuilder` whose paths mirror the
//! Hugging Face checkpoint. Foreign checkpoint spellings (OpenAI/open_clip, timm, Meta `.pth`) are
//! renamed onto those paths in one place per model (`*/names.rs`, each a
//! [`weights::Renames`] telling a [`weights::NameScheme`]) before loading.
//!
//! Every fallible loading step returns [`Result`] with the crate's [`Error`], whose
//! [`Error::kind`] classifies it; tensor operations return candle's own `Result`.

#![warn(missing_docs)]

pub mod clip;
pub mod dinov2;
pub mod dinov3;
mod error;
pub mod nn;
pub mod runtime;
pub mod weights;

pub use error::{BoxError, Error, ErrorKind, Result};
pub use nn::Grad;
pub use weights::{Checkpoint, ModelSource};
