//! The pre-LN residual block shared by both CLIP towers (HF `CLIPEncoderLayer`), plus the
//! AnomalyCLIP dual-path (V-V) variant of its attention.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::{Activation, ClipTextConfig, ClipVisionConfig};
use crate::nn::{multi_head_attention, Grad, LayerNorm, Linear};

/// The sizes one block needs, the same for either tower: what `Dinov3Config` is to a DINOv3
/// block, so that every block here is built as `new(cfg, vb)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ClipLayerConfig {
    /// Residual width.
    pub hidden_size: usize,
    /// MLP hidden width.
    pub intermediate_size: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// MLP activation.
    pub hidden_act: Activation,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f64,
}

impl From<&ClipVisionConfig> for ClipLayerConfig {
    fn from(c: &ClipVisionConfig) -> Self {
        Self {
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_attention_heads: c.num_attention_heads,
            hidden_act: c.hidden_act,
            layer_norm_eps: c.layer_norm_eps,
        }
    }
}

impl From<&ClipTextConfig> for ClipLayerConfig {
    fn from(c: &ClipTextConfig) -> Self {
        Self {
            hidden_size: c.hidden_size,
            intermediate_size: c.intermediate_size,
            num_attention_heads: c.num_attention_heads,
            hidden_act: c.hidden_act,
            layer_norm_eps: c.layer_norm_eps,
        }
    }
}

/// Multi-head self-attention with separate q/k/v/out projections (HF `CLIPAttention`).
#[derive(Debug, Clone)]
pub struct ClipAttention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    heads: usize,
}

impl ClipAttention {
    /// Reads `q_proj`, `k_proj`, `v_proj` and `out_proj` under `vb`.
    pub fn new(cfg: &ClipLayerConfig, vb: VarBuilder) -> Result<Self> {
        let (width, heads) = (cfg.hidden_size, cfg.num_attention_heads);
        Ok(Self {
            q_proj: Linear::load(vb.pp("q_proj"), width, width, true)?,
            k_proj: Linear::load(vb.pp("k_proj"), width, width, true)?,
            v_proj: Linear::load(vb.pp("v_proj"), width, width, true)?,
            out_proj: Linear::load(vb.pp("out_proj"), width, width, true)?,
            heads,
        })
    }

    /// `x`: `[batch, tokens, width]`; `mask` is added to the logits (causal text attention).
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>, grad: Grad) -> Result<Tensor> {
        let q = self.q_proj.forward(x)?;
        let k = self.k_proj.forward(x)?;
        let v = self.v_proj.forward(x)?;
        let out = multi_head_attention(&q, &k, &v, self.heads, mask, grad)?;
        self.out_proj.forward(&out)
    }

    /// AnomalyCLIP's dual-path attention on the same input: returns `(vv, ori)` where `ori` is
    /// ordinary attention and `vv` = out_proj(softmax(v vᵀ / √d) v), with the same scale and the
    /// same output projection (bias included). Inference only.
    pub fn forward_dual(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let q = self.q_proj.forward(x)?;
        let k = self.k_proj.forward(x)?;
        let v = self.v_proj.forward(x)?;
        let ori = multi_head_attention(&q, &k, &v, self.heads, None, Grad::Frozen)?;
        let vv = multi_head_attention(&v, &v, &v, self.heads, None, Grad::Frozen)?;
        Ok((self.out_proj.forward(&vv)?, self.out_proj.forward(&ori)?))
    }
}

/// `fc2(act(fc1 x))`.
#[derive(Debug, Clone)]
pub struct ClipMlp {
    fc1: Linear,
    fc2: Linear,
    act: Activation,
}

impl ClipMlp {
    /// Reads `fc1` and `fc2` under `vb`.
    pub fn new(cfg: &ClipLayerConfig, vb: VarBuilder) -> Result<Self> {
        let (width, hidden) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            fc1: Linear::load(vb.pp("fc1"), width, hidden, true)?,
            fc2: Linear::load(vb.pp("fc2"), hidden, width, true)?,
            act: cfg.hidden_act,
        })
    }
}

impl Module for ClipMlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.fc2.forward(&self.act.apply(&self.fc1.forward(x)?)?)
    }
}

/// `x += attn(ln_1(x)); x += mlp(ln_2(x))`.
#[derive(Debug, Clone)]
pub struct ClipEncoderLayer {
    self_attn: ClipAttention,
    layer_norm1: LayerNorm,
    mlp: ClipMlp,
    layer_norm2: LayerNorm,
}

impl ClipEncoderLayer {
    /// Reads one block under `vb` (`…encoder.layers.N`); the same shape of constructor as a
    /// DINOv3 block's.
    pub fn new(cfg: &ClipLayerConfig, vb: VarBuilder) -> Result<Self> {
        let (width, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        Ok(Self {
            self_attn: ClipAttention::new(cfg, vb.pp("self_attn"))?,
            layer_norm1: LayerNorm::load(vb.pp("layer_norm1"), width, eps)?,
            mlp: ClipMlp::new(cfg, vb.pp("mlp"))?,
            layer_norm2: LayerNorm::load(vb.pp("layer_norm2"), width, eps)?,
        })
    }

    /// One block; `mask` is added to the attention logits (causal text attention).
    pub fn forward(&self, x: &Tensor, mask: Option<&Tensor>, grad: Grad) -> Result<Tensor> {
        let h = self.layer_norm1.forward_with(x, grad)?;
        let x = (x + self.self_attn.forward(&h, mask, grad)?)?;
        let h = self.layer_norm2.forward_with(&x, grad)?;
        &x + self.mlp.forward(&h)?
    }

    /// One dual-path block (docs/formats.md §3): the attention input is ln_1 of the *original*
    /// path; the original path continues as usual, the V-V path only accumulates attention (no
    /// MLP). Returns `(x_vv', x_ori')`.
    pub fn forward_dual(&self, x_vv: &Tensor, x_ori: &Tensor) -> Result<(Tensor, Tensor)> {
        let h = self.layer_norm1.forward_with(x_ori, Grad::Frozen)?;
        let (a_vv, a_ori) = self.self_attn.forward_dual(&h)?;
        let x_ori = (x_ori + a_ori)?;
        let h = self.layer_norm2.forward_with(&x_ori, Grad::Frozen)?;
        let x_ori = (&x_ori + self.mlp.forward(&h)?)?;
        Ok(((x_vv + a_vv)?, x_ori))
    }
}
