//! DINOv2 ViT hyper-parameters: named presets, Hugging Face `config.json` (`Dinov2Config` and
//! `Dinov2WithRegistersConfig`), or inferred from the tensor shapes of a checkpoint (Meta `.pth`
//! files come without a config).

use serde::Deserialize;

pub use crate::nn::Activation;
use crate::weights::Checkpoint;
use crate::{Error, Result};

/// Hyper-parameters of a DINOv2 ViT, with the Hugging Face field names where one exists.
#[derive(Debug, Clone, PartialEq)]
pub struct Dinov2Config {
    /// Residual width.
    pub hidden_size: usize,
    /// Number of blocks.
    pub num_hidden_layers: usize,
    /// Attention heads per block.
    pub num_attention_heads: usize,
    /// Hidden width of the feed-forward block: `int(hidden_size * mlp_ratio)` for the GELU MLP,
    /// and for SwiGLU the width of each of its two input halves, two thirds of that rounded up
    /// to a multiple of 8 (4096 for ViT-g). Hugging Face's config stores `mlp_ratio` instead;
    /// [`Dinov2Config::from_hf_json`] applies transformers' rounding.
    pub intermediate_size: usize,
    /// Side of a square patch in pixels (14).
    pub patch_size: usize,
    /// Side of the square image the position table was trained for (518: a 37x37 grid).
    pub image_size: usize,
    /// Input channels (3).
    pub num_channels: usize,
    /// Register tokens between CLS and the patches (0, or 4 for the `_reg` models).
    pub num_register_tokens: usize,
    /// Epsilon of every LayerNorm (1e-6).
    pub layer_norm_eps: f64,
    /// LayerScale's initial value (1.0 in the Hugging Face configs). Training-only: inference
    /// reads the trained `lambda1` vectors from the checkpoint, so this value changes nothing.
    pub layerscale_value: f64,
    /// SwiGLU feed-forward `weights_out(silu(x1) * x2)` with `[x1, x2] = weights_in(x)` instead of
    /// `fc2(act(fc1 x))` (ViT-g).
    pub use_swiglu_ffn: bool,
    /// Activation of the GELU MLP; SwiGLU always gates with SiLU, as transformers does.
    pub hidden_act: Activation,
    /// Whether the query, key and value projections have biases.
    pub qkv_bias: bool,
    /// Whether the position table is resampled with torch's antialiased bicubic filter
    /// (`Dinov2WithRegistersModel`, Meta's `_reg` models) rather than plain bicubic
    /// (`Dinov2Model`). The two differ for any grid other than the trained one.
    pub interpolate_antialias: bool,
}

/// Names accepted by [`Dinov2Config::preset`], in Meta's `torch.hub` spelling.
pub const PRESETS: [&str; 8] = [
    "dinov2_vits14",
    "dinov2_vitb14",
    "dinov2_vitl14",
    "dinov2_vitg14",
    "dinov2_vits14_reg",
    "dinov2_vitb14_reg",
    "dinov2_vitl14_reg",
    "dinov2_vitg14_reg",
];

impl Dinov2Config {
    /// The fields every released DINOv2 ViT shares; width, depth, heads and FFN vary.
    fn released(width: usize, layers: usize, heads: usize, ffn: usize, swiglu: bool) -> Self {
        Self {
            hidden_size: width,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            intermediate_size: ffn,
            patch_size: 14,
            image_size: 518,
            num_channels: 3,
            num_register_tokens: 0,
            layer_norm_eps: 1e-6,
            layerscale_value: 1.0,
            use_swiglu_ffn: swiglu,
            hidden_act: Activation::Gelu,
            qkv_bias: true,
            interpolate_antialias: false,
        }
    }

    /// The register variant of a model: 4 registers, antialiased position resampling.
    fn with_registers(mut self) -> Self {
        self.num_register_tokens = 4;
        self.interpolate_antialias = true;
        self
    }

    /// ViT-S/14 (21M parameters).
    pub fn vits14() -> Self {
        Self::released(384, 12, 6, 1536, false)
    }

    /// ViT-B/14 (86M).
    pub fn vitb14() -> Self {
        Self::released(768, 12, 12, 3072, false)
    }

    /// ViT-L/14 (300M).
    pub fn vitl14() -> Self {
        Self::released(1024, 24, 16, 4096, false)
    }

    /// ViT-g/14 with SwiGLU (1.1B): `mlp_ratio` 4 gives 6144, two thirds of it 4096.
    pub fn vitg14() -> Self {
        Self::released(1536, 40, 24, 4096, true)
    }

    /// ViT-S/14 with 4 registers.
    pub fn vits14_reg() -> Self {
        Self::vits14().with_registers()
    }

    /// ViT-B/14 with 4 registers.
    pub fn vitb14_reg() -> Self {
        Self::vitb14().with_registers()
    }

    /// ViT-L/14 with 4 registers.
    pub fn vitl14_reg() -> Self {
        Self::vitl14().with_registers()
    }

    /// ViT-g/14 with 4 registers.
    pub fn vitg14_reg() -> Self {
        Self::vitg14().with_registers()
    }

    /// A preset by its Meta hub name (`dinov2_vitl14`, `dinov2_vitl14_reg`), a Meta checkpoint
    /// file name (`dinov2_vitl14_pretrain.pth`, `dinov2_vitl14_reg4_pretrain.pth`) or a Hugging
    /// Face repo name (`facebook/dinov2-large`, `facebook/dinov2-with-registers-large`,
    /// optionally `@revision`).
    pub fn preset(name: &str) -> Option<Self> {
        let base = name.split('@').next().unwrap_or(name);
        let base = base.rsplit(['/', '\\']).next().unwrap_or(base);
        let base = base.to_ascii_lowercase().replace('-', "_");
        let (arch, registers) = if let Some(rest) = base.strip_prefix("dinov2_with_registers_") {
            (hf_size(rest)?, true)
        } else {
            let rest = base.strip_prefix("dinov2_")?;
            if let Some(arch) = hf_size(rest) {
                (arch, false)
            } else {
                let arch = ["vits14", "vitb14", "vitl14", "vitg14"]
                    .into_iter()
                    .find(|a| rest.starts_with(a))?;
                let tail = &rest[arch.len()..];
                let registers = tail.starts_with("_reg");
                let tail = tail.trim_start_matches("_reg4").trim_start_matches("_reg");
                if !(tail.is_empty() || tail.starts_with(['_', '.'])) {
                    return None;
                }
                (arch, registers)
            }
        };
        let config = match arch {
            "vits14" => Self::vits14(),
            "vitb14" => Self::vitb14(),
            "vitl14" => Self::vitl14(),
            "vitg14" => Self::vitg14(),
            _ => unreachable!("every listed arch has a preset"),
        };
        Some(if registers {
            config.with_registers()
        } else {
            config
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

    /// Side of the trained position grid in patches (37 for 518 px at patch 14).
    pub fn position_grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Parses a Hugging Face `config.json` of `model_type` `dinov2` or `dinov2_with_registers`.
    /// Missing fields take that class's defaults, as transformers does (they differ: the
    /// registers class defaults to patch 16 and 4 registers; released configs spell both out).
    pub fn from_hf_json(text: &str) -> Result<Self> {
        let raw: HfConfig = serde_json::from_str(text).map_err(|e| Error::Config {
            message: "invalid DINOv2 config.json".into(),
            source: Some(Box::new(e)),
        })?;
        let registers_class = match raw.model_type.as_deref() {
            None | Some("dinov2") => false,
            Some("dinov2_with_registers") => true,
            Some(other) => {
                let hint = if other.starts_with("dinov3") {
                    " (a DINOv3 model: load it with the dinov3 module)"
                } else {
                    ""
                };
                return Err(Error::config(format!(
                    "config.json has model_type `{other}`, expected `dinov2` or \
                     `dinov2_with_registers`{hint}"
                )));
            }
        };
        let patch_size = match &raw.patch_size {
            Some(p) => p.square("patch_size")?,
            None if registers_class => 16,
            None => 14,
        };
        let image_size = match &raw.image_size {
            Some(s) => s.square("image_size")?,
            None => 224,
        };
        let hidden_act = Activation::from_hf_name(&raw.hidden_act).ok_or_else(|| {
            Error::config(format!(
                "config.json: unsupported hidden_act `{}`",
                raw.hidden_act
            ))
        })?;
        if !(raw.mlp_ratio.is_finite() && raw.mlp_ratio > 0.0) {
            return Err(Error::config(format!(
                "config.json: mlp_ratio {} must be positive",
                raw.mlp_ratio
            )));
        }
        let num_register_tokens = match raw.num_register_tokens {
            Some(r) if registers_class => r,
            None if registers_class => 4,
            // transformers' `Dinov2Model` has no registers whatever the file says.
            _ => 0,
        };
        let config = Self {
            hidden_size: raw.hidden_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            intermediate_size: ffn_width(raw.hidden_size, raw.mlp_ratio, raw.use_swiglu_ffn),
            patch_size,
            image_size,
            num_channels: raw.num_channels,
            num_register_tokens,
            layer_norm_eps: raw.layer_norm_eps,
            layerscale_value: raw.layerscale_value,
            use_swiglu_ffn: raw.use_swiglu_ffn,
            hidden_act,
            qkv_bias: raw.qkv_bias,
            interpolate_antialias: registers_class,
        };
        config.validate()?;
        Ok(config)
    }

    /// Infers the config from a checkpoint already renamed to the canonical (Hugging Face) names.
    ///
    /// Shapes give everything except the number of heads: that uses `preset_hint` when it names a
    /// preset of the same width, else head dim 64, which every released DINOv2 ViT has. A model
    /// with registers is taken to resample its position table with antialiasing, as both
    /// `Dinov2WithRegistersModel` and Meta's `_reg` models do.
    pub fn infer(checkpoint: &Checkpoint, preset_hint: Option<&str>) -> Result<Self> {
        let dims = |name: &str| -> Result<Vec<usize>> {
            checkpoint
                .get(name)
                .map(|t| t.dims().to_vec())
                .ok_or_else(|| {
                    Error::format(format!(
                        "checkpoint {} has no tensor `{name}`: cannot infer the DINOv2 config",
                        checkpoint.origin()
                    ))
                })
        };
        let patch = dims("embeddings.patch_embeddings.projection.weight")?;
        let [width, channels, patch_h, patch_w] = patch[..] else {
            return Err(Error::format(format!(
                "`embeddings.patch_embeddings.projection.weight` has shape {patch:?}, expected 4 \
                 dims"
            )));
        };
        if patch_h != patch_w || patch_h == 0 {
            return Err(Error::format(format!(
                "non-square patches {patch_h}x{patch_w} are not supported"
            )));
        }
        let positions = dims("embeddings.position_embeddings")?;
        let grid = match positions[..] {
            [1, n, d] if d == width => square_grid(n - 1),
            _ => None,
        }
        .ok_or_else(|| {
            Error::format(format!(
                "`embeddings.position_embeddings` has shape {positions:?}; expected [1, 1 + G*G, \
                 {width}] for a square G x G grid"
            ))
        })?;
        let registers = dims("embeddings.register_tokens")
            .map(|d| if d.len() == 3 { d[1] } else { 0 })
            .unwrap_or(0);
        let layers = (0..)
            .take_while(|i| checkpoint.contains(&format!("encoder.layer.{i}.norm1.weight")))
            .count();
        if layers == 0 {
            return Err(Error::format(format!(
                "checkpoint {} has no transformer blocks",
                checkpoint.origin()
            )));
        }
        let swiglu = checkpoint.contains("encoder.layer.0.mlp.weights_in.weight");
        let ffn = if swiglu {
            dims("encoder.layer.0.mlp.weights_in.weight")?[0] / 2
        } else {
            dims("encoder.layer.0.mlp.fc1.weight")?[0]
        };
        let hint = preset_hint.and_then(Self::preset);
        let heads = match &hint {
            Some(p) if p.hidden_size == width => p.num_attention_heads,
            _ => width / 64,
        };
        let mut config = Self::released(width, layers, heads.max(1), ffn, swiglu);
        config.num_channels = channels;
        config.patch_size = patch_h;
        config.image_size = grid * patch_h;
        config.num_register_tokens = registers;
        config.interpolate_antialias = registers > 0;
        config.qkv_bias = checkpoint.contains("encoder.layer.0.attention.attention.query.bias");
        config.validate()?;
        Ok(config)
    }

    /// Checks that the sizes can make a model: heads divide the width, and there are patches,
    /// a position grid and blocks.
    pub fn validate(&self) -> Result<()> {
        let heads = self.num_attention_heads;
        if heads == 0 || !self.hidden_size.is_multiple_of(heads) {
            return Err(Error::config(format!(
                "hidden_size {} is not divisible by num_attention_heads {heads}",
                self.hidden_size
            )));
        }
        if self.patch_size == 0 || self.num_hidden_layers == 0 || self.intermediate_size == 0 {
            return Err(Error::config(
                "patch_size, num_hidden_layers and the MLP width must be positive",
            ));
        }
        if self.image_size < self.patch_size {
            return Err(Error::config(format!(
                "image_size {} is smaller than patch_size {}: the position table would be empty",
                self.image_size, self.patch_size
            )));
        }
        Ok(())
    }
}

/// The feed-forward width transformers builds from `mlp_ratio` (Python `int()` truncates).
fn ffn_width(hidden: usize, mlp_ratio: f64, swiglu: bool) -> usize {
    let mlp = (hidden as f64 * mlp_ratio) as usize;
    if swiglu {
        // `(int(hidden_features * 2 / 3) + 7) // 8 * 8`, as in Dinov2SwiGLUFFN and Meta's
        // SwiGLUFFNFused.
        (mlp * 2 / 3).div_ceil(8) * 8
    } else {
        mlp
    }
}

/// `Some(g)` when `n = g * g` with `g > 0`.
fn square_grid(n: usize) -> Option<usize> {
    let g = (n as f64).sqrt().round() as usize;
    (g > 0 && g * g == n).then_some(g)
}

/// `hf` repo suffixes (`small`, `base`, `large`, `giant`) to the Meta arch name.
fn hf_size(rest: &str) -> Option<&'static str> {
    let size = rest.split(['_', '.']).next().unwrap_or(rest);
    match size {
        "small" => Some("vits14"),
        "base" => Some("vitb14"),
        "large" => Some("vitl14"),
        "giant" => Some("vitg14"),
        _ => None,
    }
}

/// `patch_size` and `image_size` may be an int or a `[h, w]` pair in `config.json`.
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

/// The subset of `Dinov2Config` / `Dinov2WithRegistersConfig` that inference reads, with the
/// class defaults where both classes agree (the others are resolved per class above).
#[derive(Debug, Deserialize)]
struct HfConfig {
    model_type: Option<String>,
    patch_size: Option<IntOrPair>,
    image_size: Option<IntOrPair>,
    #[serde(default = "d_hidden")]
    hidden_size: usize,
    #[serde(default = "d_layers")]
    num_hidden_layers: usize,
    #[serde(default = "d_heads")]
    num_attention_heads: usize,
    // An int in transformers 5, a float in older files.
    #[serde(default = "d_mlp_ratio")]
    mlp_ratio: f64,
    #[serde(default = "d_act")]
    hidden_act: String,
    #[serde(default = "d_eps")]
    layer_norm_eps: f64,
    #[serde(default = "d_layerscale")]
    layerscale_value: f64,
    #[serde(default = "d_channels")]
    num_channels: usize,
    #[serde(default = "yes")]
    qkv_bias: bool,
    #[serde(default)]
    use_swiglu_ffn: bool,
    num_register_tokens: Option<usize>,
}

fn d_hidden() -> usize {
    768
}
fn d_layers() -> usize {
    12
}
fn d_heads() -> usize {
    12
}
fn d_mlp_ratio() -> f64 {
    4.0
}
fn d_act() -> String {
    "gelu".into()
}
fn d_eps() -> f64 {
    1e-6
}
fn d_layerscale() -> f64 {
    1.0
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
        let l = Dinov2Config::vitl14();
        assert_eq!(Dinov2Config::preset("dinov2_vitl14"), Some(l.clone()));
        assert_eq!(
            Dinov2Config::preset("facebook/dinov2-large"),
            Some(l.clone())
        );
        assert_eq!(
            Dinov2Config::preset("/ckpt/dinov2_vitl14_pretrain.pth"),
            Some(l.clone())
        );
        let l_reg = Dinov2Config::vitl14_reg();
        assert_eq!(
            Dinov2Config::preset("dinov2_vitl14_reg"),
            Some(l_reg.clone())
        );
        assert_eq!(
            Dinov2Config::preset("dinov2_vitl14_reg4_pretrain.pth"),
            Some(l_reg.clone())
        );
        assert_eq!(
            Dinov2Config::preset("facebook/dinov2-with-registers-large@main"),
            Some(l_reg)
        );
        assert_eq!(
            Dinov2Config::preset("facebook/dinov2-giant"),
            Some(Dinov2Config::vitg14())
        );
        assert_eq!(Dinov2Config::preset("dinov2_vitl16"), None);
        assert_eq!(Dinov2Config::preset("dinov2_vitl14x"), None);
        assert_eq!(Dinov2Config::preset("dinov3_vitl16"), None);
        for name in PRESETS {
            let c = Dinov2Config::preset(name).unwrap_or_else(|| panic!("{name}"));
            assert_eq!(c.head_dim(), 64, "{name}");
            assert_eq!(c.position_grid(), 37, "{name}");
            assert_eq!(c.num_register_tokens > 0, name.ends_with("_reg"), "{name}");
            assert_eq!(c.interpolate_antialias, name.ends_with("_reg"), "{name}");
            assert_eq!(c.num_prefix_tokens(), 1 + c.num_register_tokens, "{name}");
        }
    }

    #[test]
    fn hf_mlp_ratio_gives_transformers_widths() {
        assert_eq!(ffn_width(384, 4.0, false), 1536);
        assert_eq!(ffn_width(1536, 4.0, true), 4096);
        // (int(128 * 2 / 3) + 7) // 8 * 8 = (85 + 7) // 8 * 8 = 88
        assert_eq!(ffn_width(32, 4.0, true), 88);
        assert_eq!(ffn_width(24, 4.0, true), 64);
    }

    #[test]
    fn hf_json_takes_class_defaults_and_rejects_other_models() {
        let g = Dinov2Config::from_hf_json(
            r#"{"model_type":"dinov2","hidden_size":1536,"num_hidden_layers":40,
                "num_attention_heads":24,"mlp_ratio":4,"use_swiglu_ffn":true,"image_size":518,
                "patch_size":14,"layerscale_value":1.0,"out_indices":[40]}"#,
        )
        .unwrap();
        assert_eq!(g, Dinov2Config::vitg14());
        let s_reg = Dinov2Config::from_hf_json(
            r#"{"model_type":"dinov2_with_registers","hidden_size":384,"num_attention_heads":6,
                "mlp_ratio":4.0,"image_size":[518,518],"patch_size":14}"#,
        )
        .unwrap();
        assert_eq!(s_reg, Dinov2Config::vits14_reg());
        // The registers class defaults to patch 16 and 4 registers, the plain one to 14 and none.
        let bare = Dinov2Config::from_hf_json(r#"{"model_type":"dinov2_with_registers"}"#).unwrap();
        assert_eq!((bare.patch_size, bare.num_register_tokens), (16, 4));
        let bare = Dinov2Config::from_hf_json(r#"{"num_register_tokens":4}"#).unwrap();
        assert_eq!((bare.patch_size, bare.num_register_tokens), (14, 0));
        assert_eq!(bare.image_size, 224);
        let err = Dinov2Config::from_hf_json(r#"{"model_type":"dinov3_vit"}"#).unwrap_err();
        assert!(err.to_string().contains("dinov3 module"), "{err}");
        let err = Dinov2Config::from_hf_json(r#"{"hidden_act":"relu6"}"#).unwrap_err();
        assert!(err.to_string().contains("relu6"), "{err}");
        let err = Dinov2Config::from_hf_json(r#"{"patch_size":[14,16]}"#).unwrap_err();
        assert!(err.to_string().contains("non-square"), "{err}");
        let err = Dinov2Config::from_hf_json(r#"{"num_attention_heads":7}"#).unwrap_err();
        assert!(err.to_string().contains("divisible"), "{err}");
    }
}
