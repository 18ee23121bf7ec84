//! DINOv3 vision transformers (ViT-S/16, S+/16, B/16, L/16, H+/16) with 2D RoPE, register tokens
//! and LayerScale, loaded from Hugging Face safetensors or Meta `.pth` checkpoints.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use candle_core::{DType, Device, Tensor};
//! use ssvp_backbones::dinov3::Dinov3Model;
//! let model = Dinov3Model::load("facebook/dinov3-vitl16-pretrain-lvd1689m", None, DType::F32, &Device::Cpu)?;
//! let pixels = Tensor::zeros((1, 3, 448, 448), DType::F32, &Device::Cpu)?; // ImageNet-normalised
//! let out = model.forward(&pixels, &[6, 12, 18, 24], true)?;
//! let map = ssvp_backbones::dinov3::patches_to_map(&out.patch, out.grid.0, out.grid.1)?;
//! # Ok(()) }
//! ```

mod config;
mod model;
pub mod names;
mod rope;

use candle_core::{DType, Device};

pub use config::{Activation, Dinov3Config, PRESETS};
pub use model::{patches_to_map, split_tokens, Dinov3Model, Dinov3Output, HiddenStates, Tokens};
pub use names::{Dinov3Names, NameScheme};
pub use rope::{apply_rope, Rope, RopeTables};

use crate::weights::{Checkpoint, Renames, ResolvedFiles};
use crate::{Error, Result};

/// Per-channel mean of the LVD-1689M (web image) weights' normalisation: ImageNet's.
pub const LVD1689M_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// Per-channel standard deviation of the LVD-1689M weights' normalisation: ImageNet's.
pub const LVD1689M_STD: [f32; 3] = [0.229, 0.224, 0.225];
/// Per-channel mean of the SAT-493M (satellite) weights' normalisation.
pub const SAT493M_MEAN: [f32; 3] = [0.430, 0.411, 0.296];
/// Per-channel standard deviation of the SAT-493M weights' normalisation.
pub const SAT493M_STD: [f32; 3] = [0.213, 0.156, 0.143];

/// Turns `--weights` (a file, a directory, or a hub id) into files on disk.
pub fn resolve(spec: &str) -> Result<ResolvedFiles> {
    crate::weights::resolve_hf_or_meta(spec, "DINOv3")
}

impl Dinov3Model {
    /// Loads a model from `--weights` (file, directory or hub id).
    ///
    /// The config is, in order: `config` if given (e.g. a preset), the `config.json` next to
    /// the weights, else inferred from the tensor shapes (heads from a preset named in `spec`, or
    /// head dim 64).
    pub fn load(
        spec: &str,
        config: Option<Dinov3Config>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let files = resolve(spec)?;
        Self::load_files(&files, config, dtype, device)
    }

    /// Loads from files already resolved (see [`resolve`]).
    pub fn load_files(
        files: &ResolvedFiles,
        config: Option<Dinov3Config>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let config = files.config_or(config, Dinov3Config::from_hf_json)?;
        let checkpoint = Checkpoint::load(&files.weights, device)?;
        let preset_hint = files.preset_hint(|s| Dinov3Config::preset(s).is_some());
        Self::from_checkpoint(checkpoint, config, preset_hint.as_deref(), dtype, device)
    }

    /// Builds a model from a checkpoint in any supported spelling. `preset_hint` (a name such as
    /// `dinov3_vitl16`) only helps infer the head count when `config` is `None`.
    pub fn from_checkpoint(
        checkpoint: Checkpoint,
        config: Option<Dinov3Config>,
        preset_hint: Option<&str>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let origin = checkpoint.origin().to_string();
        let (checkpoint, _scheme) = Dinov3Names::to_canonical(checkpoint)?;
        let config = match config {
            Some(c) => c,
            None => Dinov3Config::infer(&checkpoint, preset_hint)?,
        };
        config.validate()?;
        let vb = checkpoint.into_var_builder(dtype, device);
        Dinov3Model::new(&config, vb)
            .map_err(|e| Error::checkpoint(format!("cannot build DINOv3 from {origin}"), e))
    }
}
