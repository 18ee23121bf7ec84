//! The feed-forward activation of every tower here, one enum for CLIP and DINOv3.

use candle_core::{Result, Tensor};

use crate::Error;

/// A transformer MLP's activation. OpenAI's CLIP weights were trained with QuickGELU; open_clip's
/// plain (non `-quickgelu`) configs and DINOv3's MLP models use exact GELU; DINOv3's SwiGLU
/// models gate with SiLU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// `x · sigmoid(1.702 x)` (HF `quick_gelu`).
    QuickGelu,
    /// Exact GELU with erf, `0.5 x (1 + erf(x / √2))` (HF `gelu`, torch `nn.GELU()`).
    Gelu,
    /// Tanh-approximated GELU (HF `gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    /// `x · sigmoid(x)` (HF `silu`, `swish`), the gate of SwiGLU.
    Silu,
}

impl Activation {
    /// The name DINOv3 code used for [`Activation::Gelu`]; kept so that code written against the
    /// former per-tower enum compiles unchanged.
    #[allow(non_upper_case_globals)]
    pub const GeluErf: Self = Self::Gelu;

    /// Reads a transformers `hidden_act` name exactly as `config.json` spells it: `gelu`,
    /// `gelu_new`, `gelu_pytorch_tanh`, `quick_gelu`, `silu` or `swish`.
    pub fn from_hf_name(name: &str) -> Option<Self> {
        match name {
            "gelu" => Some(Self::Gelu),
            "gelu_pytorch_tanh" | "gelu_new" => Some(Self::GeluTanh),
            "quick_gelu" => Some(Self::QuickGelu),
            "silu" | "swish" => Some(Self::Silu),
            _ => None,
        }
    }

    /// Parses a CLIP tower's activation from an HF `hidden_act` string or a CLI spelling (case,
    /// `-` for `_` and a few aliases such as `quickgelu` and `gelu_erf` accepted). Only the
    /// three CLIP activations are accepted.
    pub fn parse(name: &str) -> crate::Result<Self> {
        match name.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "quick_gelu" | "quickgelu" => Ok(Self::QuickGelu),
            "gelu" | "gelu_erf" => Ok(Self::Gelu),
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_tanh" | "gelu_fast" => Ok(Self::GeluTanh),
            other => Err(Error::config(format!(
                "unsupported CLIP activation `{other}` (expected quick_gelu, gelu or gelu_new)"
            ))),
        }
    }

    /// Applies the activation element-wise.
    pub fn apply(self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::QuickGelu => super::quick_gelu(x),
            Self::Gelu => x.gelu_erf(),
            Self::GeluTanh => x.gelu(),
            Self::Silu => x.silu(),
        }
    }
}
