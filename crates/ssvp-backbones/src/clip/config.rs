//! CLIP hyper-parameters: named presets, Hugging Face `config.json`, and inference from the tensor
//! shapes of a checkpoint that comes without a config (OpenAI, open_clip, timm files), the way
//! OpenAI's `build_model` reads them off the state dict.

use std::path::Path;

use serde_json::Value;

pub use crate::nn::Activation;
use crate::weights::Checkpoint;
use crate::{Error, Result};

/// Hyper-parameters of the vision tower, with HF `CLIPVisionConfig` field names.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipVisionConfig {
    /// Residual width.
    pub hidden_size: usize,
    /// MLP hidden width.
    pub intermediate_size: usize,
    /// Number of blocks.
    pub num_hidden_layers: usize,
    /// Attention heads per block.
    pub num_attention_heads: usize,
    /// Input channels (3).
    pub num_channels: usize,
    /// The training resolution; the positional table holds `(image_size / patch_size)² + 1` rows.
    pub image_size: usize,
    /// Side of a square patch in pixels.
    pub patch_size: usize,
    /// MLP activation.
    pub hidden_act: Activation,
    /// Epsilon of every LayerNorm.
    pub layer_norm_eps: f64,
}

impl ClipVisionConfig {
    /// Side of the square patch grid the positional embedding was trained for.
    pub fn grid_size(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Rows of the positional table: the grid's patches plus CLS.
    pub fn num_positions(&self) -> usize {
        self.grid_size() * self.grid_size() + 1
    }

    fn hf_default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
        }
    }
}

/// Hyper-parameters of the text tower, with HF `CLIPTextConfig` field names.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipTextConfig {
    /// Token vocabulary size (49408).
    pub vocab_size: usize,
    /// Residual width.
    pub hidden_size: usize,
    /// MLP hidden width.
    pub intermediate_size: usize,
    /// Number of blocks.
    pub num_hidden_layers: usize,
    /// Attention heads per block.
    pub num_attention_heads: usize,
    /// Context length (77).
    pub max_position_embeddings: usize,
    /// MLP activation.
    pub hidden_act: Activation,
    /// Epsilon of every LayerNorm.
    pub layer_norm_eps: f64,
    /// Start-of-text id as the config states it.
    pub bos_token_id: u32,
    /// End-of-text id as the config states it.
    pub eos_token_id: u32,
    /// Padding id as the config states it.
    pub pad_token_id: u32,
}

impl ClipTextConfig {
    fn hf_default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
            bos_token_id: 49406,
            eos_token_id: 49407,
            pad_token_id: 1,
        }
    }
}

/// A whole CLIP model. Either tower may be absent: vision-only checkpoints (timm,
/// `CLIPVisionModel*`) have no text tower, `CLIPTextModel*` files no vision tower.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipConfig {
    /// The vision tower, if the model has one.
    pub vision: Option<ClipVisionConfig>,
    /// The text tower, if the model has one.
    pub text: Option<ClipTextConfig>,
    /// Joint embedding width. For a vision-only checkpoint without a projection it equals the
    /// vision width (the projection is then the identity).
    pub projection_dim: usize,
}

impl ClipConfig {
    /// A named OpenAI architecture (QuickGELU, as the OpenAI weights need). Accepted spellings
    /// include `ViT-L/14@336px`, `ViT-L-14-336`, `vit_l_14_336`, `ViT-L-14-336-quickgelu` and the
    /// HF repo names (`openai/clip-vit-large-patch14-336`).
    pub fn preset(name: &str) -> Result<Self> {
        let key = normalise_preset_name(name);
        let (vision_width, vision_layers, patch, image, text_width, embed) = match key.as_str() {
            "vit-b-32" => (768, 12, 32, 224, 512, 512),
            "vit-b-16" => (768, 12, 16, 224, 512, 512),
            "vit-l-14" => (1024, 24, 14, 224, 768, 768),
            "vit-l-14-336" => (1024, 24, 14, 336, 768, 768),
            _ => {
                return Err(Error::config(format!(
                "unknown CLIP preset `{name}`; known: ViT-B/32, ViT-B/16, ViT-L/14, ViT-L/14-336"
            )))
            }
        };
        Ok(Self {
            vision: Some(ClipVisionConfig {
                hidden_size: vision_width,
                intermediate_size: 4 * vision_width,
                num_hidden_layers: vision_layers,
                num_attention_heads: vision_width / 64,
                num_channels: 3,
                image_size: image,
                patch_size: patch,
                hidden_act: Activation::QuickGelu,
                layer_norm_eps: 1e-5,
            }),
            text: Some(ClipTextConfig {
                hidden_size: text_width,
                intermediate_size: 4 * text_width,
                num_attention_heads: text_width / 64,
                ..ClipTextConfig::hf_default()
            }),
            projection_dim: embed,
        })
    }

    /// Sets the activation of both towers (e.g. GELU for open_clip's non-quickgelu models).
    pub fn with_activation(mut self, act: Activation) -> Self {
        if let Some(v) = self.vision.as_mut() {
            v.hidden_act = act;
        }
        if let Some(t) = self.text.as_mut() {
            t.hidden_act = act;
        }
        self
    }

    /// Reads an HF `config.json`: a `CLIPModel` config (`vision_config` / `text_config`), or a
    /// tower config (`model_type` `clip_vision_model` / `clip_text_model`). Missing fields take
    /// transformers' class defaults.
    pub fn from_hf_json(json: &str) -> Result<Self> {
        let root: Value = serde_json::from_str(json).map_err(|e| Error::Config {
            message: "CLIP config.json is not valid JSON".into(),
            source: Some(Box::new(e)),
        })?;
        let root = root
            .as_object()
            .ok_or_else(|| Error::config("CLIP config.json is not a JSON object"))?;
        let model_type = root.get("model_type").and_then(Value::as_str).unwrap_or("");
        let top_projection = root.get("projection_dim").and_then(Value::as_u64);
        let (vision, text) = match model_type {
            "clip_vision_model" => (Some(&Value::Object(root.clone())), None),
            "clip_text_model" => (None, Some(&Value::Object(root.clone()))),
            _ => {
                if !root.contains_key("vision_config") && !root.contains_key("text_config") {
                    return Err(Error::config(format!(
                        "config.json (model_type `{model_type}`) is not a CLIP config: it has \
                         neither vision_config nor text_config"
                    )));
                }
                (root.get("vision_config"), root.get("text_config"))
            }
        };
        // Owned copies so the tower configs outlive the borrowed root.
        let vision = vision.cloned();
        let text = text.cloned();
        let vision = vision.as_ref().map(parse_vision).transpose()?;
        let text = text.as_ref().map(parse_text).transpose()?;
        let projection_dim = top_projection.map(|p| p as usize).unwrap_or(512);
        Ok(Self {
            vision,
            text,
            projection_dim,
        })
    }

    /// Reads an HF `config.json` file (see [`Self::from_hf_json`]); errors name the file.
    pub fn from_hf_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(format!("cannot read {}", path.display()), path, e))?;
        Self::from_hf_json(&text).map_err(|e| e.context(path.display().to_string()))
    }

    /// Infers the architecture from the shapes of a checkpoint already renamed to HF names
    /// (see `names.rs`), as OpenAI's `build_model` does: widths from the embeddings, depths by
    /// counting blocks, head count = width / 64, patch size from the conv kernel, training
    /// resolution from the positional table. The activation defaults to QuickGELU (OpenAI).
    pub fn infer_from_checkpoint(ckpt: &Checkpoint) -> Result<Self> {
        Self::infer_from_checkpoint_with_heads(ckpt, None, None)
    }

    /// As [`Self::infer_from_checkpoint`], with head counts given for towers whose heads are not
    /// 64 wide (the head count is the one thing tensor shapes do not reveal).
    pub fn infer_from_checkpoint_with_heads(
        ckpt: &Checkpoint,
        vision_heads: Option<usize>,
        text_heads: Option<usize>,
    ) -> Result<Self> {
        let dims = |name: &str| -> Result<Vec<usize>> {
            ckpt.get(name).map(|t| t.dims().to_vec()).ok_or_else(|| {
                Error::format(format!(
                    "checkpoint {} has no tensor `{name}`",
                    ckpt.origin()
                ))
            })
        };
        let count_layers = |prefix: &str| -> usize {
            let mut n = 0;
            while ckpt.contains(&format!("{prefix}.{n}.self_attn.q_proj.weight")) {
                n += 1;
            }
            n
        };
        let vision = if ckpt.contains("vision_model.embeddings.patch_embedding.weight") {
            let conv = dims("vision_model.embeddings.patch_embedding.weight")?;
            let positions = dims("vision_model.embeddings.position_embedding.weight")?;
            let [width, channels, patch, _] = conv[..] else {
                return Err(Error::format(format!(
                    "patch embedding has shape {conv:?}, expected [width, 3, p, p]"
                )));
            };
            let grid = ((positions[0].saturating_sub(1)) as f64).sqrt().round() as usize;
            if grid * grid + 1 != positions[0] {
                return Err(Error::format(format!(
                    "vision positional embedding has {} rows, not a square grid plus CLS",
                    positions[0]
                )));
            }
            let layers = count_layers("vision_model.encoder.layers");
            let mlp = dims("vision_model.encoder.layers.0.mlp.fc1.weight")?[0];
            Some(ClipVisionConfig {
                hidden_size: width,
                intermediate_size: mlp,
                num_hidden_layers: layers,
                num_attention_heads: heads_for(width, vision_heads)?,
                num_channels: channels,
                image_size: grid * patch,
                patch_size: patch,
                hidden_act: Activation::QuickGelu,
                layer_norm_eps: 1e-5,
            })
        } else {
            None
        };
        let text = if ckpt.contains("text_model.embeddings.token_embedding.weight") {
            let tokens = dims("text_model.embeddings.token_embedding.weight")?;
            let positions = dims("text_model.embeddings.position_embedding.weight")?;
            let mlp = dims("text_model.encoder.layers.0.mlp.fc1.weight")?[0];
            Some(ClipTextConfig {
                vocab_size: tokens[0],
                hidden_size: tokens[1],
                intermediate_size: mlp,
                num_hidden_layers: count_layers("text_model.encoder.layers"),
                num_attention_heads: heads_for(tokens[1], text_heads)?,
                max_position_embeddings: positions[0],
                ..ClipTextConfig::hf_default()
            })
        } else {
            None
        };
        let projection_dim = if let Some(p) = ckpt.get("visual_projection.weight") {
            p.dim(0)?
        } else if let Some(p) = ckpt.get("text_projection.weight") {
            p.dim(0)?
        } else if let Some(v) = &vision {
            v.hidden_size
        } else {
            return Err(Error::format(format!(
                "checkpoint {} holds no CLIP tower",
                ckpt.origin()
            )));
        };
        if vision.is_none() && text.is_none() {
            return Err(Error::format(format!(
                "checkpoint {} holds no CLIP tower",
                ckpt.origin()
            )));
        }
        Ok(Self {
            vision,
            text,
            projection_dim,
        })
    }
}

fn heads_for(width: usize, given: Option<usize>) -> Result<usize> {
    if let Some(heads) = given {
        if heads == 0 || !width.is_multiple_of(heads) {
            return Err(Error::config(format!(
                "a width-{width} tower cannot have {heads} attention heads"
            )));
        }
        return Ok(heads);
    }
    if !width.is_multiple_of(64) {
        return Err(Error::config(format!(
            "cannot infer the head count of a width-{width} tower (CLIP uses 64-wide heads); \
             provide a config.json or a preset"
        )));
    }
    Ok(width / 64)
}

fn normalise_preset_name(name: &str) -> String {
    let mut key = name.trim().to_ascii_lowercase();
    for prefix in ["openai/", "timm/", "laion/"] {
        if let Some(rest) = key.strip_prefix(prefix) {
            key = rest.to_string();
        }
    }
    key = key.replace(['/', '@', '_', ' '], "-");
    for suffix in ["-quickgelu", ".openai", "-openai"] {
        if let Some(rest) = key.strip_suffix(suffix) {
            key = rest.to_string();
        }
    }
    key = key.trim_end_matches("px").to_string();
    let key = key.strip_prefix("clip-").unwrap_or(&key).to_string();
    // HF repo spellings: vit-base-patch32, vit-large-patch14-336.
    key.replace("vit-base-patch", "vit-b-")
        .replace("vit-large-patch", "vit-l-")
}

fn field_usize(obj: &Value, key: &str, default: usize) -> Result<usize> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v.as_u64().map(|v| v as usize).ok_or_else(|| {
            Error::config(format!(
                "config field `{key}` is not a non-negative integer: {v}"
            ))
        }),
    }
}

fn field_f64(obj: &Value, key: &str, default: f64) -> Result<f64> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(default),
        Some(v) => v
            .as_f64()
            .ok_or_else(|| Error::config(format!("config field `{key}` is not a number: {v}"))),
    }
}

fn field_act(obj: &Value, default: Activation) -> Result<Activation> {
    match obj.get("hidden_act").and_then(Value::as_str) {
        Some(name) => Activation::parse(name),
        None => Ok(default),
    }
}

fn parse_vision(obj: &Value) -> Result<ClipVisionConfig> {
    let d = ClipVisionConfig::hf_default();
    let cfg = ClipVisionConfig {
        hidden_size: field_usize(obj, "hidden_size", d.hidden_size)?,
        intermediate_size: field_usize(obj, "intermediate_size", d.intermediate_size)?,
        num_hidden_layers: field_usize(obj, "num_hidden_layers", d.num_hidden_layers)?,
        num_attention_heads: field_usize(obj, "num_attention_heads", d.num_attention_heads)?,
        num_channels: field_usize(obj, "num_channels", d.num_channels)?,
        image_size: field_usize(obj, "image_size", d.image_size)?,
        patch_size: field_usize(obj, "patch_size", d.patch_size)?,
        hidden_act: field_act(obj, d.hidden_act)?,
        layer_norm_eps: field_f64(obj, "layer_norm_eps", d.layer_norm_eps)?,
    };
    if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads) {
        return Err(Error::config(format!(
            "vision hidden_size {} is not divisible by num_attention_heads {}",
            cfg.hidden_size, cfg.num_attention_heads
        )));
    }
    if cfg.patch_size == 0 || !cfg.image_size.is_multiple_of(cfg.patch_size) {
        return Err(Error::config(format!(
            "vision image_size {} is not a multiple of patch_size {}",
            cfg.image_size, cfg.patch_size
        )));
    }
    Ok(cfg)
}

fn parse_text(obj: &Value) -> Result<ClipTextConfig> {
    let d = ClipTextConfig::hf_default();
    let id = |key: &str, default: u32| -> Result<u32> {
        Ok(field_usize(obj, key, default as usize)? as u32)
    };
    let cfg = ClipTextConfig {
        vocab_size: field_usize(obj, "vocab_size", d.vocab_size)?,
        hidden_size: field_usize(obj, "hidden_size", d.hidden_size)?,
        intermediate_size: field_usize(obj, "intermediate_size", d.intermediate_size)?,
        num_hidden_layers: field_usize(obj, "num_hidden_layers", d.num_hidden_layers)?,
        num_attention_heads: field_usize(obj, "num_attention_heads", d.num_attention_heads)?,
        max_position_embeddings: field_usize(
            obj,
            "max_position_embeddings",
            d.max_position_embeddings,
        )?,
        hidden_act: field_act(obj, d.hidden_act)?,
        layer_norm_eps: field_f64(obj, "layer_norm_eps", d.layer_norm_eps)?,
        // Configs dumped before transformers PR #24773 carry bos 0 / eos 2 / pad 1; they are
        // kept as read (pooling here always takes the first maximal id, as OpenAI does).
        bos_token_id: id("bos_token_id", d.bos_token_id)?,
        eos_token_id: id("eos_token_id", d.eos_token_id)?,
        pad_token_id: id("pad_token_id", d.pad_token_id)?,
    };
    if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads) {
        return Err(Error::config(format!(
            "text hidden_size {} is not divisible by num_attention_heads {}",
            cfg.hidden_size, cfg.num_attention_heads
        )));
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_accept_common_spellings() {
        let reference = ClipConfig::preset("ViT-L/14@336px").unwrap();
        for name in [
            "ViT-L-14-336",
            "vit_l_14_336",
            "ViT-L/14-336",
            "ViT-L-14-336-quickgelu",
            "openai/clip-vit-large-patch14-336",
        ] {
            assert_eq!(ClipConfig::preset(name).unwrap(), reference, "{name}");
        }
        let v = reference.vision.as_ref().unwrap();
        assert_eq!(
            (v.hidden_size, v.num_hidden_layers, v.num_attention_heads),
            (1024, 24, 16)
        );
        assert_eq!(
            (v.image_size, v.patch_size, v.num_positions()),
            (336, 14, 577)
        );
        let t = reference.text.as_ref().unwrap();
        assert_eq!(
            (t.hidden_size, t.num_hidden_layers, t.num_attention_heads),
            (768, 12, 12)
        );
        assert_eq!(reference.projection_dim, 768);
        let b32 = ClipConfig::preset("openai/clip-vit-base-patch32").unwrap();
        assert_eq!(b32.vision.unwrap().patch_size, 32);
        assert!(ClipConfig::preset("ViT-H-14").is_err());
    }

    #[test]
    fn hf_json_uses_class_defaults_and_legacy_ids() {
        // The shape of openai/clip-vit-large-patch14-336's config.json (docs/formats.md §1.1).
        let json = r#"{
            "model_type": "clip", "projection_dim": 768, "logit_scale_init_value": 2.6592,
            "vision_config": {"hidden_size": 1024, "intermediate_size": 4096,
                "num_attention_heads": 16, "num_hidden_layers": 24, "image_size": 336,
                "patch_size": 14, "projection_dim": 768},
            "text_config": {"hidden_size": 768, "intermediate_size": 3072,
                "num_attention_heads": 12, "projection_dim": 768,
                "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1}
        }"#;
        let cfg = ClipConfig::from_hf_json(json).unwrap();
        assert_eq!(cfg, {
            let mut p = ClipConfig::preset("ViT-L-14-336").unwrap();
            let t = p.text.as_mut().unwrap();
            t.bos_token_id = 0;
            t.eos_token_id = 2;
            p
        });
        let gelu = ClipConfig::from_hf_json(
            r#"{"model_type": "clip_vision_model", "hidden_act": "gelu", "patch_size": 16}"#,
        )
        .unwrap();
        assert!(gelu.text.is_none());
        assert_eq!(gelu.vision.unwrap().hidden_act, Activation::Gelu);
        assert!(ClipConfig::from_hf_json(r#"{"model_type": "bert"}"#).is_err());
        assert!(ClipConfig::from_hf_json(r#"{"vision_config": {"hidden_act": "relu"}}"#).is_err());
    }
}
