//! DINOv3 ViT hyper-parameters: named presets, Hugging Face `config.json`, or inferred from the
//! tensor shapes of a checkpoint (Meta `.pth` files come without a config).

use serde::Deserialize;

pub use crate::nn::Activation;
use crate::weights::Checkpoint;
use crate::{Error, Result};

/// Hyper-parameters of a DINOv3 ViT, with the Hugging Face `DINOv3ViTConfig` field names.
#[derive(Debug, Clone, PartialEq)]
pub struct Dinov3Config {
    /// Residual width.
    pub hidden_size: usize,
    /// Number of blocks.
    pub num_hidden_layers: usize,
    /// Attention heads per block.
    pub num_attention_heads: usize,
    /// Hidden width of the feed-forward block (of each of the gate/up projections for SwiGLU).
    pub intermediate_size: usize,
    /// Side of a square patch in pixels.
    pub patch_size: usize,
    /// Input channels (3).
    pub num_channels: usize,
    /// Register ("storage") tokens after CLS.
    pub num_register_tokens: usize,
    /// Epsilon of every LayerNorm.
    pub layer_norm_eps: f64,
    /// Base of the RoPE periods (100).
    pub rope_theta: f64,
    /// SwiGLU feed-forward `down(act(gate(x)) * up(x))` instead of `down(act(up(x)))`.
    pub use_gated_mlp: bool,
    /// Feed-forward activation (the gate's, for SwiGLU).
    pub hidden_act: Activation,
    /// Whether the query projection has a bias.
    pub query_bias: bool,
    /// Whether the key projection has a bias (released models: no, Meta masks it to zero).
    pub key_bias: bool,
    /// Whether the value projection has a bias.
    pub value_bias: bool,
    /// Whether the attention output projection has a bias.
    pub proj_bias: bool,
    /// Whether the feed-forward projections have biases.
    pub mlp_bias: bool,
}

/// Names accepted by [`Dinov3Config::preset`], with their Meta hub spelling.
pub const PRESETS: [&str; 5] = [
    "dinov3_vits16",
    "dinov3_vits16plus",
    "dinov3_vitb16",
    "dinov3_vitl16",
    "dinov3_vith16plus",
];

impl Dinov3Config {
    /// The fields every released DINOv3 ViT shares; `width`, depth, heads and FFN vary.
    fn released(width: usize, layers: usize, heads: usize, ffn: usize, gated: bool) -> Self {
        Self {
            hidden_size: width,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            intermediate_size: ffn,
            patch_size: 16,
            num_channels: 3,
            num_register_tokens: 4,
            layer_norm_eps: 1e-5,
            rope_theta: 100.0,
            use_gated_mlp: gated,
            hidden_act: if gated {
                Activation::Silu
            } else {
                Activation::Gelu
            },
            query_bias: true,
            // Meta's qkv bias has its K third masked to zero (`mask_k_bias`), so there is none.
            key_bias: false,
            value_bias: true,
            proj_bias: true,
            mlp_bias: true,
        }
    }

    /// ViT-S/16 (21M parameters).
    pub fn vits16() -> Self {
        Self::released(384, 12, 6, 1536, false)
    }

    /// ViT-S+/16 with SwiGLU (29M).
    pub fn vits16plus() -> Self {
        Self::released(384, 12, 6, 1536, true)
    }

    /// ViT-B/16 (86M).
    pub fn vitb16() -> Self {
        Self::released(768, 12, 12, 3072, false)
    }

    /// ViT-L/16 (300M).
    pub fn vitl16() -> Self {
        Self::released(1024, 24, 16, 4096, false)
    }

    /// ViT-H+/16 with SwiGLU (840M).
    pub fn vith16plus() -> Self {
        Self::released(1280, 32, 20, 5120, true)
    }

    /// A preset by its Meta hub name (`dinov3_vitl16`), its Hugging Face repo name
    /// (`facebook/dinov3-vitl16-pretrain-lvd1689m`, optionally `@revision`), or a Meta checkpoint
    /// file name (`dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth`).
    pub fn preset(name: &str) -> Option<Self> {
        let base = name.split('@').next().unwrap_or(name);
        let base = base.rsplit(['/', '\\']).next().unwrap_or(base);
        let base = base.to_ascii_lowercase().replace('-', "_");
        let rest = base.strip_prefix("dinov3_")?;
        // The longest match first: `vits16plus` before `vits16`.
        let arch = ["vits16plus", "vith16plus", "vits16", "vitb16", "vitl16"]
            .into_iter()
            .find(|arch| {
                rest.strip_prefix(arch)
                    .is_some_and(|tail| tail.is_empty() || tail.starts_with(['_', '.']))
            })?;
        Some(match arch {
            "vits16" => Self::vits16(),
            "vits16plus" => Self::vits16plus(),
            "vitb16" => Self::vitb16(),
            "vitl16" => Self::vitl16(),
            "vith16plus" => Self::vith16plus(),
            _ => unreachable!("every listed arch has a preset"),
        })
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Tokens before the patches: CLS and the registers.
    pub fn num_prefix_tokens(&self) -> usize {
        1 + self.num_register_tokens
    }

    /// Parses a Hugging Face `config.json` (`model_type` `dinov3_vit`). Missing fields take the
    /// `DINOv3ViTConfig` class defaults, as transformers does.
    pub fn from_hf_json(text: &str) -> Result<Self> {
        let raw: HfConfig = serde_json::from_str(text).map_err(|e| Error::Config {
            message: "invalid DINOv3 config.json".into(),
            source: Some(Box::new(e)),
        })?;
        if let Some(model_type) = &raw.model_type {
            if model_type != "dinov3_vit" {
                return Err(Error::config(format!(
                    "config.json has model_type `{model_type}`, expected `dinov3_vit` \
                     (DINOv3 ConvNeXt models are not supported)"
                )));
            }
        }
        let patch_size = raw.patch_size.square("patch_size")?;
        let hidden_act = Activation::from_hf_name(&raw.hidden_act).ok_or_else(|| {
            Error::config(format!(
                "config.json: unsupported hidden_act `{}`",
                raw.hidden_act
            ))
        })?;
        let config = Self {
            hidden_size: raw.hidden_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            intermediate_size: raw.intermediate_size,
            patch_size,
            num_channels: raw.num_channels,
            num_register_tokens: raw.num_register_tokens,
            layer_norm_eps: raw.layer_norm_eps,
            rope_theta: raw.rope_theta,
            use_gated_mlp: raw.use_gated_mlp,
            hidden_act,
            query_bias: raw.query_bias,
            key_bias: raw.key_bias,
            value_bias: raw.value_bias,
            proj_bias: raw.proj_bias,
            mlp_bias: raw.mlp_bias,
        };
        config.validate()?;
        Ok(config)
    }

    /// Infers the config from a checkpoint already renamed to the canonical (Hugging Face) names.
    ///
    /// Shapes give everything except the number of heads: that uses `preset_hint` when it names a
    /// preset of the same width, else head dim 64, which every released DINOv3 ViT up to H+ has.
    pub fn infer(checkpoint: &Checkpoint, preset_hint: Option<&str>) -> Result<Self> {
        let dims = |name: &str| -> Result<Vec<usize>> {
            checkpoint
                .get(name)
                .map(|t| t.dims().to_vec())
                .ok_or_else(|| {
                    Error::format(format!(
                        "checkpoint {} has no tensor `{name}`: cannot infer the DINOv3 config",
                        checkpoint.origin()
                    ))
                })
        };
        let patch = dims("embeddings.patch_embeddings.weight")?;
        let [width, channels, patch_h, patch_w] = patch[..] else {
            return Err(Error::format(format!(
                "`embeddings.patch_embeddings.weight` has shape {patch:?}, expected 4 dims"
            )));
        };
        if patch_h != patch_w {
            return Err(Error::format(format!(
                "non-square patches {patch_h}x{patch_w} are not supported"
            )));
        }
        let registers = dims("embeddings.register_tokens")
            .map(|d| if d.len() == 3 { d[1] } else { 0 })
            .unwrap_or(0);
        let layers = (0..)
            .take_while(|i| checkpoint.contains(&format!("layer.{i}.norm1.weight")))
            .count();
        if layers == 0 {
            return Err(Error::format(format!(
                "checkpoint {} has no transformer blocks",
                checkpoint.origin()
            )));
        }
        let gated = checkpoint.contains("layer.0.mlp.gate_proj.weight");
        let up = dims("layer.0.mlp.up_proj.weight")?;
        let hint = preset_hint.and_then(Self::preset);
        let heads = match &hint {
            Some(p) if p.hidden_size == width => p.num_attention_heads,
            _ => width / 64,
        };
        let mut config = Self::released(width, layers, heads.max(1), up[0], gated);
        config.num_channels = channels;
        config.patch_size = patch_h;
        config.num_register_tokens = registers;
        config.query_bias = checkpoint.contains("layer.0.attention.q_proj.bias");
        config.key_bias = checkpoint.contains("layer.0.attention.k_proj.bias");
        config.value_bias = checkpoint.contains("layer.0.attention.v_proj.bias");
        config.proj_bias = checkpoint.contains("layer.0.attention.o_proj.bias");
        config.mlp_bias = checkpoint.contains("layer.0.mlp.up_proj.bias");
        config.validate()?;
        Ok(config)
    }

    /// Checks that the sizes can make a model: heads divide the width, the head dim suits 2D
    /// RoPE, and there are patches and blocks.
    pub fn validate(&self) -> Result<()> {
        let heads = self.num_attention_heads;
        if heads == 0 || !self.hidden_size.is_multiple_of(heads) {
            return Err(Error::config(format!(
                "hidden_size {} is not divisible by num_attention_heads {heads}",
                self.hidden_size
            )));
        }
        if !self.head_dim().is_multiple_of(4) {
            return Err(Error::config(format!(
                "head dim {} must be a multiple of 4 for 2D RoPE",
                self.head_dim()
            )));
        }
        if self.patch_size == 0 || self.num_hidden_layers == 0 {
            return Err(Error::config(
                "patch_size and num_hidden_layers must be positive",
            ));
        }
        Ok(())
    }
}

/// `patch_size` may be an int or a `[h, w]` pair in `config.json`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum IntOrPair {
    Int(usize),
    Pair(Vec<usize>),
}

impl IntOrPair {
    fn square(&self, field: &str) -> Result<usize> {
        match self {
            Self::Int(v) => Ok(*v),
            Self::Pair(v) if v.len() == 2 && v[0] == v[1] => Ok(v[0]),
            Self::Pair(v) => Err(Error::config(format!(
                "config.json: non-square {field} {v:?} is not supported"
            ))),
        }
    }
}

/// The subset of `DINOv3ViTConfig` that inference reads, with the class defaults.
#[derive(Debug, Deserialize)]
struct HfConfig {
    model_type: Option<String>,
    #[serde(default = "d_patch")]
    patch_size: IntOrPair,
    #[serde(default = "d_hidden")]
    hidden_size: usize,
    #[serde(default = "d_intermediate")]
    intermediate_size: usize,
    #[serde(default = "d_layers")]
    num_hidden_layers: usize,
    #[serde(default = "d_heads")]
    num_attention_heads: usize,
    #[serde(default = "d_act")]
    hidden_act: String,
    #[serde(default = "d_eps")]
    layer_norm_eps: f64,
    #[serde(default = "d_theta")]
    rope_theta: f64,
    #[serde(default = "d_channels")]
    num_channels: usize,
    #[serde(default = "yes")]
    query_bias: bool,
    #[serde(default)]
    key_bias: bool,
    #[serde(default = "yes")]
    value_bias: bool,
    #[serde(default = "yes")]
    proj_bias: bool,
    #[serde(default = "yes")]
    mlp_bias: bool,
    #[serde(default)]
    use_gated_mlp: bool,
    // The class default is 0; every released checkpoint's config says 4.
    #[serde(default)]
    num_register_tokens: usize,
}

fn d_patch() -> IntOrPair {
    IntOrPair::Int(16)
}
fn d_hidden() -> usize {
    384
}
fn d_intermediate() -> usize {
    1536
}
fn d_layers() -> usize {
    12
}
fn d_heads() -> usize {
    6
}
fn d_act() -> String {
    "gelu".into()
}
fn d_eps() -> f64 {
    1e-5
}
fn d_theta() -> f64 {
    100.0
}
fn d_channels() -> usize {
    3
}
fn yes() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_resolve_from_every_spelling() {
        let l = Dinov3Config::vitl16();
        assert_eq!(Dinov3Config::preset("dinov3_vitl16"), Some(l.clone()));
        assert_eq!(
            Dinov3Config::preset("facebook/dinov3-vitl16-pretrain-lvd1689m"),
            Some(l.clone())
        );
        assert_eq!(
            Dinov3Config::preset("/ckpt/dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth"),
            Some(l)
        );
        assert_eq!(
            Dinov3Config::preset("facebook/dinov3-vits16plus-pretrain-lvd1689m@main"),
            Some(Dinov3Config::vits16plus())
        );
        assert_eq!(
            Dinov3Config::preset("dinov3_vits16"),
            Some(Dinov3Config::vits16())
        );
        assert_eq!(Dinov3Config::preset("dinov3_vitl16plus"), None);
        assert_eq!(Dinov3Config::preset("dinov2_vitl14"), None);
        for name in PRESETS {
            let c = Dinov3Config::preset(name).unwrap();
            assert_eq!(c.head_dim(), 64, "{name}");
        }
        let hplus = Dinov3Config::vith16plus();
        assert!(hplus.use_gated_mlp && hplus.hidden_act == Activation::Silu);
    }

    #[test]
    fn hf_json_takes_class_defaults_and_rejects_other_models() {
        let c = Dinov3Config::from_hf_json(
            r#"{"model_type":"dinov3_vit","hidden_size":1024,"intermediate_size":4096,
                "num_hidden_layers":24,"num_attention_heads":16,"num_register_tokens":4,
                "pos_embed_rescale":2.0,"image_size":224}"#,
        )
        .unwrap();
        assert_eq!(c, Dinov3Config::vitl16());
        let gated = Dinov3Config::from_hf_json(
            r#"{"model_type":"dinov3_vit","use_gated_mlp":true,"hidden_act":"silu",
                "num_register_tokens":4,"patch_size":[16,16]}"#,
        )
        .unwrap();
        assert_eq!(gated, Dinov3Config::vits16plus());
        let err = Dinov3Config::from_hf_json(r#"{"model_type":"dinov3_convnext"}"#).unwrap_err();
        assert!(err.to_string().contains("dinov3_convnext"), "{err}");
        let err = Dinov3Config::from_hf_json(r#"{"hidden_act":"relu6"}"#).unwrap_err();
        assert!(err.to_string().contains("relu6"), "{err}");
    }
}
