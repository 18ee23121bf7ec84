//! The DINOv2 ViT forward pass (Hugging Face `Dinov2Model` / `Dinov2WithRegistersModel`
//! semantics, Meta weights welcome).
//!
//! `x = [CLS, patches] + pos` with the learned position table resampled to the input's patch
//! grid, then the registers inserted after CLS (they get no position); each block
//! `x += ls1 ⊙ attn(norm1 x); x += ls2 ⊙ ffn(norm2 x)`; one final `layernorm`.

use std::collections::HashMap;
use std::sync::Mutex;

use candle_core::{bail, DType, Device, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::{Activation, Dinov2Config};
use super::interpolate::resample_positions;
use crate::dinov3::{split_tokens, Tokens};
use crate::nn::vit::{self, HiddenStates};
use crate::nn::{multi_head_attention, Grad, LayerNorm, Linear};

/// Patch projection (a stride-P conv with bias), CLS, the position table and the registers.
#[derive(Debug)]
struct Embeddings {
    /// The conv kernel flattened to `[D, C·P·P]`: with stride = kernel the conv is one matmul.
    patch_weight: Tensor,
    patch_bias: Tensor,
    cls_token: Tensor,
    /// `[1 + G·G, D]`, CLS row first.
    position_embeddings: Tensor,
    register_tokens: Option<Tensor>,
    patch_size: usize,
    channels: usize,
    grid: usize,
    antialias: bool,
    /// Resampled tables by `(rows, cols)`: a tower runs the same few input sizes over and over.
    cache: Mutex<HashMap<(usize, usize), Tensor>>,
}

impl Embeddings {
    fn new(cfg: &Dinov2Config, vb: VarBuilder) -> Result<Self> {
        let (d, c, p) = (cfg.hidden_size, cfg.num_channels, cfg.patch_size);
        let grid = cfg.position_grid();
        let pvb = vb.pp("patch_embeddings").pp("projection");
        let patch_weight = pvb.get((d, c, p, p), "weight")?.reshape((d, c * p * p))?;
        let patch_bias = pvb.get(d, "bias")?;
        let cls_token = vb.get((1, 1, d), "cls_token")?;
        let position_embeddings = vb
            .get((1, 1 + grid * grid, d), "position_embeddings")?
            .squeeze(0)?;
        let register_tokens = if cfg.num_register_tokens > 0 {
            Some(vb.get((1, cfg.num_register_tokens, d), "register_tokens")?)
        } else {
            None
        };
        Ok(Self {
            patch_weight,
            patch_bias,
            cls_token,
            position_embeddings,
            register_tokens,
            patch_size: p,
            channels: c,
            grid,
            antialias: cfg.interpolate_antialias,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// The position table for a `rows x cols` patch grid, `[1 + rows·cols, D]`.
    fn positions(&self, rows: usize, cols: usize) -> Result<Tensor> {
        // transformers skips the resampling at the trained grid; resampling there would be the
        // identity for either kernel anyway.
        if rows == self.grid && cols == self.grid {
            return Ok(self.position_embeddings.clone());
        }
        let key = (rows, cols);
        if let Some(t) = self.cache.lock().expect("cache lock").get(&key) {
            return Ok(t.clone());
        }
        let table = resample_positions(
            &self.position_embeddings,
            self.grid,
            rows,
            cols,
            self.antialias,
        )?;
        self.cache
            .lock()
            .expect("cache lock")
            .insert(key, table.clone());
        Ok(table)
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
        let tokens = Tensor::cat(&[&self.cls_token.expand((b, 1, d))?, &patches], 1)?
            .broadcast_add(&self.positions(hp, wp)?)?;
        match &self.register_tokens {
            // Registers go in after the positions are added: they have none.
            Some(reg) => Tensor::cat(
                &[
                    &tokens.narrow(1, 0, 1)?,
                    &reg.expand((b, reg.dim(1)?, d))?,
                    &tokens.narrow(1, 1, hp * wp)?,
                ],
                1,
            ),
            None => Ok(tokens),
        }
    }
}

#[derive(Debug, Clone)]
struct Attention {
    query: Linear,
    key: Linear,
    value: Linear,
    output: Linear,
    heads: usize,
}

impl Attention {
    /// Reads `attention.{query,key,value}` and `output.dense` under `vb` (`layer.N.attention`).
    fn new(cfg: &Dinov2Config, vb: VarBuilder) -> Result<Self> {
        let d = cfg.hidden_size;
        let avb = vb.pp("attention");
        Ok(Self {
            query: Linear::load(avb.pp("query"), d, d, cfg.qkv_bias)?,
            key: Linear::load(avb.pp("key"), d, d, cfg.qkv_bias)?,
            value: Linear::load(avb.pp("value"), d, d, cfg.qkv_bias)?,
            output: Linear::load(vb.pp("output").pp("dense"), d, d, true)?,
            heads: cfg.num_attention_heads,
        })
    }
}

impl Module for Attention {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let q = self.query.forward(x)?;
        let k = self.key.forward(x)?;
        let v = self.value.forward(x)?;
        let out = multi_head_attention(&q, &k, &v, self.heads, None, Grad::Frozen)?;
        self.output.forward(&out)
    }
}

#[derive(Debug, Clone)]
enum FeedForward {
    /// `fc2(act(fc1 x))`.
    Mlp {
        fc1: Linear,
        fc2: Linear,
        act: Activation,
    },
    /// `weights_out(silu(x1) ⊙ x2)` with `[x1, x2] = weights_in(x)`; the two halves of
    /// `weights_in` are kept as two layers (transformers 5's `gate_proj` and `up_proj`).
    SwiGlu {
        gate: Linear,
        up: Linear,
        down: Linear,
    },
}

impl FeedForward {
    fn new(cfg: &Dinov2Config, vb: VarBuilder) -> Result<Self> {
        let (d, h) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(if cfg.use_swiglu_ffn {
            let fused = Linear::load(vb.pp("weights_in"), d, 2 * h, true)?;
            let half = |i: usize| -> Result<Linear> {
                let w = fused.weight().narrow(0, i * h, h)?.contiguous()?;
                let b = match fused.bias() {
                    Some(b) => Some(b.narrow(0, i * h, h)?.contiguous()?),
                    None => None,
                };
                Ok(Linear::new(w, b))
            };
            Self::SwiGlu {
                gate: half(0)?,
                up: half(1)?,
                down: Linear::load(vb.pp("weights_out"), h, d, true)?,
            }
        } else {
            Self::Mlp {
                fc1: Linear::load(vb.pp("fc1"), d, h, true)?,
                fc2: Linear::load(vb.pp("fc2"), h, d, true)?,
                act: cfg.hidden_act,
            }
        })
    }
}

impl Module for FeedForward {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Mlp { fc1, fc2, act } => fc2.forward(&act.apply(&fc1.forward(x)?)?),
            Self::SwiGlu { gate, up, down } => {
                down.forward(&(gate.forward(x)?.silu()? * up.forward(x)?)?)
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
    /// Reads one block under `vb` (`encoder.layer.N`).
    fn new(cfg: &Dinov2Config, vb: VarBuilder) -> Result<Self> {
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
}

impl Module for Block {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let attn = self
            .attention
            .forward(&self.norm1.forward_with(x, Grad::Frozen)?)?;
        let x = (x + attn.broadcast_mul(&self.layer_scale1)?)?;
        let ffn = self
            .mlp
            .forward(&self.norm2.forward_with(&x, Grad::Frozen)?)?;
        x + ffn.broadcast_mul(&self.layer_scale2)?
    }
}

/// What one forward pass returns; the same fields and meaning as `dinov3::Dinov3Output`.
#[derive(Debug, Clone)]
pub struct Dinov2Output {
    /// `(block, [B, tokens, D])` for each requested block, in request order. Block numbers are
    /// 1-based like Hugging Face `hidden_states[i]` (0 = the embeddings); raw block outputs, or
    /// with the final norm applied when asked (Meta's `get_intermediate_layers(norm=True)`).
    pub hidden: Vec<(usize, Tensor)>,
    /// Final-normed CLS of the last block, `[B, D]` (`pooler_output`).
    pub cls: Tensor,
    /// Final-normed registers of the last block, `[B, R, D]` (empty for R = 0).
    pub registers: Tensor,
    /// Final-normed patch tokens of the last block, `[B, Hp·Wp, D]`.
    pub patch: Tensor,
    /// The patch grid `(Hp, Wp)`.
    pub grid: (usize, usize),
}

/// A DINOv2 vision transformer.
#[derive(Debug)]
pub struct Dinov2Model {
    config: Dinov2Config,
    embeddings: Embeddings,
    layers: Vec<Block>,
    layernorm: LayerNorm,
    dtype: DType,
    device: Device,
}

impl Dinov2Model {
    /// Builds the model from canonical (Hugging Face hub) paths: `embeddings.*`,
    /// `encoder.layer.N.*`, `layernorm.*`.
    pub fn new(config: &Dinov2Config, vb: VarBuilder) -> Result<Self> {
        config
            .validate()
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let embeddings = Embeddings::new(config, vb.pp("embeddings"))?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| Block::new(config, vb.pp(format!("encoder.layer.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        let layernorm = LayerNorm::load(
            vb.pp("layernorm"),
            config.hidden_size,
            config.layer_norm_eps,
        )?;
        Ok(Self {
            config: config.clone(),
            embeddings,
            layers,
            layernorm,
            dtype: vb.dtype(),
            device: vb.device().clone(),
        })
    }

    /// The model's hyper-parameters.
    pub fn config(&self) -> &Dinov2Config {
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
    /// does not work and which size would.
    pub fn grid_for(&self, height: usize, width: usize) -> Result<(usize, usize)> {
        let p = self.config.patch_size;
        if height == 0 || width == 0 || !height.is_multiple_of(p) || !width.is_multiple_of(p) {
            bail!(
                "DINOv2 input is {height}x{width} px: height and width must be positive multiples \
                 of the patch size {p} (the position table is resampled to any grid, but a \
                 partial patch cannot be embedded); resize to e.g. {}x{}",
                (height.max(1)).div_ceil(p) * p,
                (width.max(1)).div_ceil(p) * p
            );
        }
        Ok((height / p, width / p))
    }

    /// Applies the shared final LayerNorm (for `hidden` states taken raw).
    pub fn final_norm(&self, hidden: &Tensor) -> Result<Tensor> {
        self.layernorm
            .forward_with(&hidden.contiguous()?, Grad::Frozen)
    }

    /// Splits a hidden state of this model into CLS, registers and patches.
    pub fn split_tokens(&self, hidden: &Tensor) -> Result<Tokens> {
        split_tokens(hidden, self.config.num_register_tokens)
    }

    /// Runs the model on normalised pixels `[B, C, H, W]` (H and W multiples of the patch size;
    /// the position table is resampled to the grid).
    ///
    /// `blocks` lists the hidden states to return (1-based block numbers, 0 = embeddings);
    /// `norm_hidden` applies the final norm to them. Every block runs: the CLS, registers and
    /// patches returned are the last block's.
    pub fn forward(
        &self,
        pixels: &Tensor,
        blocks: &[usize],
        norm_hidden: bool,
    ) -> Result<Dinov2Output> {
        let (hidden, x, grid) = self.run_blocks(pixels, blocks, norm_hidden, self.layers.len())?;
        let last = self.final_norm(&x)?;
        let tokens = self.split_tokens(&last)?;
        Ok(Dinov2Output {
            hidden,
            cls: tokens.cls,
            registers: tokens.registers,
            patch: tokens.patches,
            grid,
        })
    }

    /// The requested hidden states alone, the model stopped after the deepest of them: the
    /// blocks past it never run. The states are those of [`Self::forward`], bit for bit: both
    /// run the same blocks in the same order. Returns them in request order with the patch grid.
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
    /// and attention's two products over CLS, registers and patches. Norms, the position
    /// resampling, softmax and activations are left out, as FLOP counters leave them out.
    /// [`Self::forward`] runs every block, [`Self::forward_blocks`] up to the deepest requested
    /// one.
    pub fn flops(&self, grid: (usize, usize), through: usize) -> f64 {
        let cfg = &self.config;
        vit::VitShape {
            width: cfg.hidden_size,
            mlp: cfg.intermediate_size,
            gated: cfg.use_swiglu_ffn,
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
        let (h, w) = vit::check_input("DINOv2", pixels, c, layers, blocks)?;
        let grid = self.grid_for(h, w)?;
        let pixels = pixels.to_dtype(self.dtype)?.to_device(&self.device)?;
        let x = self.embeddings.forward(&pixels)?;
        let (hidden, x) = vit::run_tapped(
            x,
            blocks,
            through,
            |i, x| self.layers[i].forward(x),
            |x| {
                if norm_hidden {
                    self.final_norm(x)
                } else {
                    Ok(x.clone())
                }
            },
        )?;
        Ok((hidden, x, grid))
    }
}

impl Dinov2Output {
    /// The tensors `ssvp embed` writes for image `item` of the batch, as f32, in the layout of
    /// `Dinov3Output::embed_tensors`: `hidden.<block>` `[tokens, width]` (CLS, registers,
    /// patches), `cls` `[width]` and `patch` `[patches, width]`.
    pub fn embed_tensors(&self, item: usize) -> Result<Vec<(String, Tensor)>> {
        vit::embed_tensors(&self.hidden, &self.cls, &self.patch, item)
    }
}
