//! DINOv2 vision transformers (ViT-S/14, B/14, L/14, g/14, each with or without 4 registers)
//! with a learned position table resampled to any patch grid, loaded from Hugging Face
//! safetensors or Meta `.pth` checkpoints.
//!
//! The API mirrors [`crate::dinov3`] so that a caller can swap one family for the other:
//! [`Dinov2Model::forward`] returns the same fields as `Dinov3Model::forward`, with the same
//! block numbering and `norm_hidden` meaning, and [`Dinov2Model::forward_blocks`] stops after the
//! deepest requested block. The parity target is transformers 5.23 (`Dinov2Model`,
//! `Dinov2WithRegistersModel`), including how the position table is interpolated
//! (docs/formats.md §6).
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use candle_core::{DType, Device, Tensor};
//! use ssvp_backbones::dinov2::Dinov2Model;
//! let model = Dinov2Model::load("facebook/dinov2-large", None, DType::F32, &Device::Cpu)?;
//! let pixels = Tensor::zeros((1, 3, 448, 448), DType::F32, &Device::Cpu)?; // ImageNet-normalised
//! let out = model.forward(&pixels, &[6, 12, 18, 24], true)?;
//! let map = ssvp_backbones::dinov2::patches_to_map(&out.patch, out.grid.0, out.grid.1)?;
//! # Ok(()) }
//! ```

mod config;
mod interpolate;
mod model;
pub mod names;

use candle_core::{DType, Device};

pub use config::{Activation, Dinov2Config, PRESETS};
pub use model::{Dinov2Model, Dinov2Output};
pub use names::{Dinov2Names, NameScheme};
// The token helpers are family-independent: DINOv2 lays its tokens out as DINOv3 does.
pub use crate::dinov3::{patches_to_map, split_tokens, HiddenStates, Tokens};

use crate::weights::{Checkpoint, Renames, ResolvedFiles};
use crate::{Error, Result};

/// Turns `--weights` (a file, a directory, or a hub id) into files on disk: a Hugging Face
/// directory or hub repo (`model.safetensors` and `config.json`), a weights file, or a local
/// directory holding exactly one Meta `.pth`.
pub fn resolve(spec: &str) -> Result<ResolvedFiles> {
    crate::weights::resolve_hf_or_meta(spec, "DINOv2")
}

impl Dinov2Model {
    /// Loads a model from `--weights` (file, directory or hub id).
    ///
    /// The config is, in order: `config` if given (e.g. a preset), the `config.json` next to
    /// the weights, else inferred from the tensor shapes (heads from a preset named in `spec`, or
    /// head dim 64).
    pub fn load(
        spec: &str,
        config: Option<Dinov2Config>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let files = resolve(spec)?;
        Self::load_files(&files, config, dtype, device)
    }

    /// Loads from files already resolved (see [`resolve`]).
    pub fn load_files(
        files: &ResolvedFiles,
        config: Option<Dinov2Config>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let config = files.config_or(config, Dinov2Config::from_hf_json)?;
        let checkpoint = Checkpoint::load(&files.weights, device)?;
        let preset_hint = files.preset_hint(|s| Dinov2Config::preset(s).is_some());
        Self::from_checkpoint(checkpoint, config, preset_hint.as_deref(), dtype, device)
    }

    /// Builds a model from a checkpoint in any supported spelling. `preset_hint` (a name such as
    /// `dinov2_vitl14`) only helps infer the head count when `config` is `None`.
    pub fn from_checkpoint(
        checkpoint: Checkpoint,
        config: Option<Dinov2Config>,
        preset_hint: Option<&str>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let origin = checkpoint.origin().to_string();
        let (checkpoint, _scheme) = Dinov2Names::to_canonical(checkpoint)?;
        let config = match config {
            Some(c) => c,
            None => Dinov2Config::infer(&checkpoint, preset_hint)?,
        };
        config.validate()?;
        let vb = checkpoint.into_var_builder(dtype, device);
        Dinov2Model::new(&config, vb)
            .map_err(|e| Error::checkpoint(format!("cannot build DINOv2 from {origin}"), e))
    }
}
