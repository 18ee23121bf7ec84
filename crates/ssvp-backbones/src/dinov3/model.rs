//! The DINOv3 ViT forward pass (Hugging Face `DINOv3ViTModel` semantics, Meta weights welcome).
//!
//! `x = [CLS, registers, patches]`; each block `x += ls1 ⊙ attn(norm1 x); x += ls2 ⊙ ffn(norm2 x)`
//! with RoPE on the patch rows of q and k; one final `norm`. No position embedding is added, so
//! any input whose sides are multiples of the patch size runs as is.

use candle_core::{bail, DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::{Activation, Dinov3Config};
use super::rope::{apply_rope, Rope, RopeTables};
use crate::nn::vit;
pub use crate::nn::vit::HiddenStates;
use crate::nn::{attention, merge_heads, split_heads, Grad, LayerNorm, Linear};

/// Patch projection (a stride-P conv with bias) plus the CLS and register tokens.
#[derive(Debug, Clone)]
struct Embeddings {
    /// The conv kernel flattened to `[D, C·P·P]`: with stride = kernel the conv is one matmul.
    patch_weight: Tensor,
    patch_bias: Tensor,
    cls_token: Tensor,
    register_tokens: Option<Tensor>,
    patch_size: usize,
    channels: usize,
}

impl Embeddings {
    fn new(cfg: &Dinov3Config, vb: VarBuilder) -> Result<Self> {
        let (d, c, p) = (cfg.hidden_size, cfg.num_channels, cfg.patch_size);
        let pvb = vb.pp("patch_embeddings");
        let patch_weight = pvb.get((d, c, p, p), "weight")?.reshape((d, c * p * p))?;
        let patch_bias = pvb.get(d, "bias")?;
        let cls_token = vb.get((1, 1, d), "cls_token")?;
        let register_tokens = if cfg.num_register_tokens > 0 {
            Some(vb.get((1, cfg.num_register_tokens, d), "register_tokens")?)
        } else {
            None
        };
        Ok(Self {
            patch_weight,
            patch_bias,
            cls_token,
            register_tokens,
            patch_size: p,
            channels: c,
        })
    }

    /// `[B, C, H, W]` -> `[B, prefix + Hp·Wp, D]`, patches row-major.
    fn forward(&self, pixels: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = pixels.dims4()?;
        let p = self.patch_size;
        let (hp, wp) = (h / p, w / p);
        let patches = pixels
            .reshape(vec![b, c, hp, p, wp, p])?
            .permute(vec![0, 2, 4, 1, 3, 5])?
            .contiguous()?
            .reshape((b * hp * wp, self.channels * p * p))?;
        let d = self.patch_weight.dim(0)?;
        let patches = patches
            .matmul(&self.patch_weight.t()?)?
            .broadcast_add(&self.patch_bias)?
            .reshape((b, hp * wp, d))?;
        let mut parts = vec![self.cls_token.expand((b, 1, d))?];
        if let Some(reg) = &self.register_tokens {
            parts.push(reg.expand((b, reg.dim(1)?, d))?);
        }
        parts.push(patches);
        Tensor::cat(&parts, 1)
    }
}

#[derive(Debug, Clone)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    heads: usize,
}

impl Attention {
    fn new(cfg: &Dinov3Config, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Self {
            q_proj: Linear::load(vb.pp("q_proj"), d, d, cfg.query_bias)?,
            k_proj: Linear::load(vb.pp("k_proj"), d, d, cfg.key_bias)?,
            v_proj: Linear::load(vb.pp("v_proj"), d, d, cfg.value_bias)?,
            o_proj: Linear::load(vb.pp("o_proj"), d, d, cfg.proj_bias)?,
            heads: cfg.num_attention_heads,
        })
    }

    fn forward(&self, x: &Tensor, rope: &RopeTables) -> Result<Tensor> {
        let q = apply_rope(&split_heads(&self.q_proj.forward(x)?, self.heads)?, rope)?;
        let k = apply_rope(&split_heads(&self.k_proj.forward(x)?, self.heads)?, rope)?;
        let v = split_heads(&self.v_proj.forward(x)?, self.heads)?;
        let out = attention(&q, &k, &v, None, Grad::Frozen)?;
        self.o_proj.forward(&merge_heads(&out)?)
    }
}

#[derive(Debug, Clone)]
enum FeedForward {
    /// `down(act(up x))`; Meta calls up/down `fc1`/`fc2`.
    Mlp {
        up: Linear,
        down: Linear,
        act: Activation,
    },
    /// SwiGLU `down(act(gate x) ⊙ up x)`; Meta calls gate/up/down `w1`/`w2`/`w3`.
    Gated {
        gate: Linear,
        up: Linear,
        down: Linear,
        act: Activation,
    },
}

impl FeedForward {
    fn new(cfg: &Dinov3Config, vb: VarBuilder) -> Result<Self> {
        let (d, h, bias) = (cfg.hidden_size, cfg.intermediate_size, cfg.mlp_bias);
        let up = Linear::load(vb.pp("up_proj"), d, h, bias)?;
        let down = Linear::load(vb.pp("down_proj"), h, d, bias)?;
        let act = cfg.hidden_act;
        Ok(if cfg.use_gated_mlp {
            let gate = Linear::load(vb.pp("gate_proj"), d, h, bias)?;
            Self::Gated {
                gate,
                up,
                down,
                act,
            }
        } else {
            Self::Mlp { up, down, act }
        })
    }
}

impl Module for FeedForward {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Mlp { up, down, act } => down.forward(&act.apply(&up.forward(x)?)?),
            Self::Gated {
                gate,
                up,
                down,
                act,
            } => {
                let gated = (act.apply(&gate.forward(x)?)? * up.forward(x)?)?;
                down.forward(&gated)
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Block {
    norm1: LayerNorm,
    attention: Attention,
    layer_scale1: Tensor,
    norm2: LayerNorm,
    mlp: FeedForward,
    layer_scale2: Tensor,
}

impl Block {
    /// Reads one block under `vb` (`layer.N`); the same shape of constructor as a CLIP block's.
    fn new(cfg: &Dinov3Config, vb: VarBuilder) -> Result<Self> {
        let (d, eps) = (cfg.hidden_size, cfg.layer_norm_eps);
        Ok(Self {
            norm1: LayerNorm::load(vb.pp("norm1"), d, eps)?,
            attention: Attention::new(cfg, vb.pp("attention"))?,
            layer_scale1: vb.pp("layer_scale1").get(d, "lambda1")?,
            norm2: LayerNorm::load(vb.pp("norm2"), d, eps)?,
            mlp: FeedForward::new(cfg, vb.pp("mlp"))?,
            layer_scale2: vb.pp("layer_scale2").get(d, "lambda1")?,
        })
    }

    fn forward(&self, x: &Tensor, rope: &RopeTables) -> Result<Tensor> {
        let attn = self
            .attention
            .forward(&self.norm1.forward_with(x, Grad::Frozen)?, rope)?;
        let x = (x + attn.broadcast_mul(&self.layer_scale1)?)?;
        let ffn = self
            .mlp
            .forward(&self.norm2.forward_with(&x, Grad::Frozen)?)?;
        x + ffn.broadcast_mul(&self.layer_scale2)?
    }
}

/// A hidden state split into its token groups.
#[derive(Debug, Clone)]
pub struct Tokens {
    /// `[B, D]`
    pub cls: Tensor,
    /// `[B, R, D]` (R = 0 gives an empty tensor)
    pub registers: Tensor,
    /// `[B, Hp·Wp, D]`, row-major over the patch grid
    pub patches: Tensor,
}

/// Splits `[B, 1 + R + Hp·Wp, D]` into CLS, registers and patches.
pub fn split_tokens(hidden: &Tensor, num_registers: usize) -> Result<Tokens> {
    let (_, n, _) = hidden.dims3()?;
    let prefix = 1 + num_registers;
    if n < prefix {
        bail!("hidden state has {n} tokens, fewer than CLS + {num_registers} registers");
    }
    Ok(Tokens {
        cls: hidden.narrow(1, 0, 1)?.squeeze(1)?,
        registers: hidden.narrow(1, 1, num_registers)?,
        patches: hidden.narrow(1, prefix, n - prefix)?,
    })
}

/// `[B, Hp·Wp, D]` patch tokens -> `[B, D, Hp, Wp]` feature map (Meta's `reshape=True`).
pub fn patches_to_map(patches: &Tensor, grid_h: usize, grid_w: usize) -> Result<Tensor> {
    let (b, n, d) = patches.dims3()?;
    if n != grid_h * grid_w {
        bail!("{n} patch tokens do not form a {grid_h}x{grid_w} grid");
    }
    patches
        .reshape((b, grid_h, grid_w, d))?
        .permute((0, 3, 1, 2))?
        .contiguous()
}

/// What one forward pass returns.
#[derive(Debug, Clone)]
pub struct Dinov3Output {
    /// `(block, [B, tokens, D])` for each requested block, in request order. Block numbers are
    /// 1-based like Hugging Face `hidden_states[i]` (0 = the embeddings); raw block outputs, or
    /// with the final norm applied when asked (Meta's `get_intermediate_layers(norm=True)`).
    pub hidden: Vec<(usize, Tensor)>,
    /// Final-normed CLS of the last block, `[B, D]` (`pooler_output`).
    pub cls: Tensor,
    /// Final-normed registers of the last block, `[B, R, D]`.
    pub registers: Tensor,
    /// Final-normed patch tokens of the last block, `[B, Hp·Wp, D]`.
    pub patch: Tensor,
    /// The patch grid `(Hp, Wp)`.
    pub grid: (usize, usize),
}

/// A DINOv3 vision transformer.
#[derive(Debug)]
pub struct Dinov3Model {
    config: Dinov3Config,
    embeddings: Embeddings,
    layers: Vec<Block>,
    norm: LayerNorm,
    rope: Rope,
    dtype: DType,
    device: Device,
}

impl Dinov3Model {
    /// Builds the model from canonical (Hugging Face) paths: `embeddings.*`, `layer.N.*`, `norm.*`.
    pub fn new(config: &Dinov3Config, vb: VarBuilder) -> Result<Self> {
        config
            .validate()
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let embeddings = Embeddings::new(config, vb.pp("embeddings"))?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| Block::new(config, vb.pp(format!("layer.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let norm = LayerNorm::load(vb.pp("norm"), config.hidden_size, config.layer_norm_eps)?;
        Ok(Self {
            config: config.clone(),
            embeddings,
            layers,
            norm,
            rope: Rope::new(config.head_dim(), config.rope_theta),
            dtype: vb.dtype(),
            device: vb.device().clone(),
        })
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &Dinov3Config {
        &self.config
    }

    /// The dtype the model computes in.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The patch grid for an input of `height` x `width` pixels, or an error saying why the size
    /// does not work.
    pub fn grid_for(&self, height: usize, width: usize) -> Result<(usize, usize)> {
        let p = self.config.patch_size;
        if height == 0 || width == 0 || !height.is_multiple_of(p) || !width.is_multiple_of(p) {
            bail!(
                "DINOv3 input is {height}x{width} px: height and width must be positive multiples \
                 of the patch size {p} (RoPE needs no interpolation, but a partial patch cannot be \
                 embedded); resize to e.g. {}x{}",
                (height.max(1)).div_ceil(p) * p,
                (width.max(1)).div_ceil(p) * p
            );
        }
        Ok((height / p, width / p))
    }

    /// Applies the shared final LayerNorm (for `hidden` states taken raw).
    pub fn final_norm(&self, hidden: &Tensor) -> Result<Tensor> {
        self.norm.forward_with(&hidden.contiguous()?, Grad::Frozen)
    }

    /// Splits a hidden state of this model into CLS, registers and patches.
    pub fn split_tokens(&self, hidden: &Tensor) -> Result<Tokens> {
        split_tokens(hidden, self.config.num_register_tokens)
    }

    /// Runs the model on normalised pixels `[B, C, H, W]` (H and W multiples of the patch size).
    ///
    /// `blocks` lists the hidden states to return (1-based block numbers, 0 = embeddings);
    /// `norm_hidden` applies the final norm to them. Every block runs: the CLS, registers and
    /// patches returned are the last block's.
    pub fn forward(
        &self,
        pixels: &Tensor,
        blocks: &[usize],
        norm_hidden: bool,
    ) -> Result<Dinov3Output> {
        let (hidden, x, grid) = self.run_blocks(pixels, blocks, norm_hidden, self.layers.len())?;
        let last = self.final_norm(&x)?;
        let tokens = self.split_tokens(&last)?;
        Ok(Dinov3Output {
            hidden,
            cls: tokens.cls,
            registers: tokens.registers,
            patch: tokens.patches,
            grid,
        })
    }

    /// The requested hidden states alone, the model stopped after the deepest of them: the
    /// blocks past it never run (with the paper's DINOv3 taps, blocks 4/7/10/12, half the
    /// tower). The states are those of [`Self::forward`], bit for bit: both run the same blocks
    /// in the same order. Returns them in request order with the patch grid.
    pub fn forward_blocks(
        &self,
        pixels: &Tensor,
        blocks: &[usize],
        norm_hidden: bool,
    ) -> Result<(HiddenStates, (usize, usize))> {
        let through = blocks.iter().copied().max().unwrap_or(0);
        let (hidden, _, grid) = self.run_blocks(pixels, blocks, norm_hidden, through)?;
        Ok((hidden, grid))
    }

    /// Multiply-add work of one image at a `grid` of patches through `through` blocks, in
    /// FLOPs (two per multiply-add): the patch embedding, the projections and MLP of each block
    /// and attention's two products over CLS, registers and patches. Norms, RoPE, softmax and
    /// activations are left out, as FLOP counters leave them out. [`Self::forward`] runs every
    /// block, [`Self::forward_blocks`] up to the deepest requested one.
    pub fn flops(&self, grid: (usize, usize), through: usize) -> f64 {
        let cfg = &self.config;
        vit::VitShape {
            width: cfg.hidden_size,
            mlp: cfg.intermediate_size,
            gated: cfg.use_gated_mlp,
            prefix: cfg.num_prefix_tokens(),
            channels: cfg.num_channels,
            patch: cfg.patch_size,
            depth: self.layers.len(),
        }
        .flops(grid, through)
    }

    /// Embeds `pixels` and runs blocks `1..=through`; returns the requested states (request
    /// order), the state after block `through` and the grid.
    fn run_blocks(
        &self,
        pixels: &Tensor,
        blocks: &[usize],
        norm_hidden: bool,
        through: usize,
    ) -> Result<(HiddenStates, Tensor, (usize, usize))> {
        let (c, layers) = (self.config.num_channels, self.layers.len());
        let (h, w) = vit::check_input("DINOv3", pixels, c, layers, blocks)?;
        let (hp, wp) = self.grid_for(h, w)?;
        let pixels = pixels.to_dtype(self.dtype)?.to_device(&self.device)?;
        let rope = self.rope.tables(
            hp,
            wp,
            self.config.num_prefix_tokens(),
            self.dtype,
            &self.device,
        )?;
        let x = self.embeddings.forward(&pixels)?;
        let (hidden, x) = vit::run_tapped(
            x,
            blocks,
            through,
            |i, x| self.layers[i].forward(x, &rope),
            |x| {
                if norm_hidden {
                    self.final_norm(x)
                } else {
                    Ok(x.clone())
                }
            },
        )?;
        Ok((hidden, x, (hp, wp)))
    }
}

impl Dinov3Output {
    /// The tensors `ssvp embed --backbone dinov3` writes for image `item` of the batch, as f32:
    /// `hidden.<block>` `[tokens, width]` (CLS, registers, patches), `cls` `[width]` and `patch`
    /// `[patches, width]`.
    pub fn embed_tensors(&self, item: usize) -> Result<Vec<(String, Tensor)>> {
        vit::embed_tensors(&self.hidden, &self.cls, &self.patch, item)
    }
}
