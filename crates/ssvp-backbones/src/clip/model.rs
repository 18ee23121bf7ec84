//! A whole CLIP model: source resolution, checkpoint reading, renaming and config in one call.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::config::{Activation, ClipConfig};
use super::names::ClipNames;
use super::text::ClipTextTransformer;
use super::vision::ClipVisionTransformer;
use crate::weights::{Checkpoint, ModelSource, NameScheme, Renames, ResolvedFiles, WantedFiles};
use crate::{Error, Result};

/// Weights files tried in a directory or hub repo, most preferred first: HF safetensors, the
/// open_clip files of timm/OpenAI hub repos, then PyTorch pickles.
pub const WEIGHTS_FILES: &[&str] = &[
    "model.safetensors",
    "open_clip_model.safetensors",
    "model.safetensors.index.json",
    "open_clip_pytorch_model.bin",
    "pytorch_model.bin",
    "model.pth",
    "model.pt",
];

/// Where the architecture comes from.
#[derive(Debug, Clone, Default)]
pub enum ConfigChoice {
    /// `config.json` next to the weights if there is one, else inferred from the tensor shapes.
    #[default]
    Auto,
    /// A named preset (`ViT-L-14-336`, …), checked against the tensors when loading.
    Preset(String),
    /// This config, as given.
    Explicit(ClipConfig),
}

/// How [`ClipModel::load`] builds the model from the files it finds.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Where the architecture comes from.
    pub config: ConfigChoice,
    /// Overrides the activation of both towers (e.g. GELU for open_clip non-quickgelu models).
    pub activation: Option<Activation>,
    /// f32 by default; f16/bf16 run too (slower on CPUs without native half support).
    pub dtype: DType,
    /// Where the weights live and the towers run.
    pub device: Device,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            config: ConfigChoice::Auto,
            activation: None,
            dtype: DType::F32,
            device: Device::Cpu,
        }
    }
}

/// A CLIP model: either tower or both, as the checkpoint holds them, with the config they were
/// built from.
pub struct ClipModel {
    vision: Option<ClipVisionTransformer>,
    text: Option<ClipTextTransformer>,
    /// Log of the logit multiplier, when the checkpoint has it.
    logit_scale: Option<f32>,
    config: ClipConfig,
    scheme: NameScheme,
    origin: String,
}

impl ClipModel {
    /// Loads from what `--weights` names: a file, a directory or a hub id.
    pub fn load(spec: &str, opts: &LoadOptions) -> Result<Self> {
        let files = ModelSource::parse(spec)?.resolve(WantedFiles {
            weights: WEIGHTS_FILES,
            config: Some("config.json"),
        })?;
        Self::load_files(&files, opts)
    }

    /// Loads from files already resolved: reads the checkpoint, and the `config.json` next to it
    /// when `opts.config` is `Auto`.
    pub fn load_files(files: &ResolvedFiles, opts: &LoadOptions) -> Result<Self> {
        let ckpt = Checkpoint::load(&files.weights, &opts.device)?;
        let config_json = match (&opts.config, &files.config) {
            (ConfigChoice::Auto, Some(path)) => Some(ClipConfig::from_hf_file(path)?),
            _ => None,
        };
        Self::from_checkpoint(ckpt, config_json, opts)
    }

    /// Builds the model from an in-memory checkpoint in any supported naming. `config_json` is
    /// used when `opts.config` is `Auto`.
    pub fn from_checkpoint(
        ckpt: Checkpoint,
        config_json: Option<ClipConfig>,
        opts: &LoadOptions,
    ) -> Result<Self> {
        let (ckpt, scheme) = ClipNames::to_canonical(ckpt)?;
        let origin = ckpt.origin().to_string();
        let mut config = match &opts.config {
            ConfigChoice::Explicit(c) => c.clone(),
            ConfigChoice::Preset(name) => ClipConfig::preset(name)?,
            ConfigChoice::Auto => match config_json {
                Some(c) => c,
                None => ClipConfig::infer_from_checkpoint(&ckpt)?,
            },
        };
        if let Some(act) = opts.activation {
            config = config.with_activation(act);
        }
        // A tower the config describes but the file lacks (vision-only checkpoints under a full
        // preset) is dropped; one the file has but the config lacks cannot be built.
        let has_vision = ckpt.contains("vision_model.embeddings.patch_embedding.weight");
        let has_text = ckpt.contains("text_model.embeddings.token_embedding.weight");
        if !has_vision {
            config.vision = None;
        }
        if !has_text {
            config.text = None;
        }
        if config.vision.is_none() && config.text.is_none() {
            return Err(Error::format(format!(
                "checkpoint {origin} holds no CLIP tower the config describes"
            )));
        }
        let has_visual_projection = ckpt.contains("visual_projection.weight");
        let logit_scale = match ckpt.get("logit_scale") {
            Some(t) => Some(t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?[0]),
            None => None,
        };
        let vb = ckpt.into_var_builder(opts.dtype, &opts.device);
        let vision = match &config.vision {
            Some(vc) => {
                let proj = has_visual_projection.then_some(config.projection_dim);
                Some(
                    ClipVisionTransformer::load(vb.clone(), vc, proj)
                        .map_err(|e| Error::checkpoint("loading the CLIP vision tower", e))?,
                )
            }
            None => None,
        };
        let text = match &config.text {
            Some(tc) => Some(
                ClipTextTransformer::load(vb, tc, config.projection_dim)
                    .map_err(|e| Error::checkpoint("loading the CLIP text tower", e))?,
            ),
            None => None,
        };
        Ok(Self {
            vision,
            text,
            logit_scale,
            config,
            scheme,
            origin,
        })
    }

    /// Builds every tower `config` describes from a `VarBuilder` at HF `CLIPModel` paths (e.g.
    /// `weights::seeded_var_builder` for the seeded `tiny` preset or for benchmarks). The vision
    /// tower gets its projection; there is no logit scale. `origin` names the weights in errors.
    pub fn new(config: &ClipConfig, vb: VarBuilder, origin: &str) -> Result<Self> {
        if config.vision.is_none() && config.text.is_none() {
            return Err(Error::config(format!(
                "CLIP config for {origin} describes no tower"
            )));
        }
        let vision = match &config.vision {
            Some(vc) => Some(
                ClipVisionTransformer::load(vb.clone(), vc, Some(config.projection_dim))
                    .map_err(|e| Error::checkpoint("building the CLIP vision tower", e))?,
            ),
            None => None,
        };
        let text = match &config.text {
            Some(tc) => Some(
                ClipTextTransformer::load(vb, tc, config.projection_dim)
                    .map_err(|e| Error::checkpoint("building the CLIP text tower", e))?,
            ),
            None => None,
        };
        Ok(Self {
            vision,
            text,
            logit_scale: None,
            config: config.clone(),
            scheme: NameScheme::HuggingFace,
            origin: origin.to_string(),
        })
    }

    /// The config the towers were built from.
    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    /// The naming scheme the checkpoint was written in.
    pub fn scheme(&self) -> NameScheme {
        self.scheme
    }

    /// Where the weights came from, for messages.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// `ln(multiplier)` as stored (≈ ln 100 for OpenAI weights), if the checkpoint has it.
    pub fn logit_scale(&self) -> Option<f32> {
        self.logit_scale
    }

    /// The vision tower, or a [`Error::Format`] error if the checkpoint has none.
    pub fn vision(&self) -> Result<&ClipVisionTransformer> {
        self.vision.as_ref().ok_or_else(|| {
            Error::format(format!(
                "checkpoint {} has no CLIP vision tower",
                self.origin
            ))
        })
    }

    /// The text tower, or a [`Error::Format`] error if the checkpoint is vision-only.
    pub fn text(&self) -> Result<&ClipTextTransformer> {
        self.text.as_ref().ok_or_else(|| {
            Error::format(format!(
                "checkpoint {} is vision-only: it has no CLIP text tower, so text cannot be \
                 encoded (use a full CLIP checkpoint, e.g. HF CLIPModel or open_clip)",
                self.origin
            ))
        })
    }

    /// `[batch, embed]` image embeddings at the native resolution or any other.
    pub fn image_embeds(&self, pixels: &Tensor) -> Result<Tensor> {
        Ok(self.vision()?.image_embeds(pixels, Default::default())?)
    }

    /// `[batch, embed]` text embeddings from token ids `[batch, context]`.
    pub fn text_embeds(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(self.text()?.text_embeds(ids)?)
    }
}
