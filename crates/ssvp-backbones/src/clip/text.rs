//! CLIP text tower (HF `CLIPTextTransformer` + `text_projection`).
//!
//! Besides token ids it accepts token *embeddings* (so learnable prompt vectors can stand in for
//! placeholder tokens) and AnomalyCLIP-style deep prompts. Those paths must carry gradients to
//! the inserted vectors through the frozen weights, so they run with [`Grad::Tracked`].

use candle_core::{bail, DType, Device, IndexOp, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::ClipTextConfig;
use super::encoder::{ClipEncoderLayer, ClipLayerConfig};
use crate::nn::{Grad, LayerNorm, Linear};

/// What a text forward returns.
#[derive(Debug, Clone)]
pub struct TextOutput {
    /// `ln_final` output of every position: `[batch, context, width]`.
    pub last_hidden: Tensor,
    /// The EOT position's state, projected into the joint space: `[batch, embed]`.
    pub text_embed: Tensor,
}

/// The CLIP text tower: token and position embeddings, causal blocks, final LayerNorm and the
/// projection into the joint space.
#[derive(Debug)]
pub struct ClipTextTransformer {
    token_embedding: Tensor,
    position_embedding: Tensor,
    layers: Vec<ClipEncoderLayer>,
    final_layer_norm: LayerNorm,
    text_projection: Linear,
    config: ClipTextConfig,
}

impl ClipTextTransformer {
    /// `vb` at the checkpoint root (HF names: `text_model.…`, `text_projection.weight`).
    pub fn load(vb: VarBuilder, cfg: &ClipTextConfig, projection_dim: usize) -> Result<Self> {
        let tm = vb.pp("text_model");
        let w = cfg.hidden_size;
        let layer_cfg = ClipLayerConfig::from(cfg);
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| ClipEncoderLayer::new(&layer_cfg, tm.pp(format!("encoder.layers.{i}"))))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            token_embedding: tm.get((cfg.vocab_size, w), "embeddings.token_embedding.weight")?,
            position_embedding: tm.get(
                (cfg.max_position_embeddings, w),
                "embeddings.position_embedding.weight",
            )?,
            layers,
            final_layer_norm: LayerNorm::load(tm.pp("final_layer_norm"), w, cfg.layer_norm_eps)?,
            text_projection: Linear::load(vb.pp("text_projection"), w, projection_dim, false)?,
            config: cfg.clone(),
        })
    }

    /// The tower's hyper-parameters.
    pub fn config(&self) -> &ClipTextConfig {
        &self.config
    }

    /// Width of the joint embedding space (the projection's output).
    pub fn embed_dim(&self) -> usize {
        self.text_projection.weight().dims()[0]
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.token_embedding.device()
    }

    /// The dtype of the weights.
    pub fn dtype(&self) -> DType {
        self.token_embedding.dtype()
    }

    /// Token embeddings of `ids` (`[batch, context]`, u32), `[batch, context, width]`, to splice
    /// learnable vectors into before [`Self::forward_embeds`].
    pub fn token_embedding(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, n) = ids.dims2()?;
        let vocab = self.config.vocab_size as u32;
        let ids = ids.to_dtype(DType::U32)?;
        let max = ids.flatten_all()?.max(0)?.to_scalar::<u32>()?;
        if max >= vocab {
            bail!("token id {max} is outside the vocabulary of {vocab} tokens");
        }
        self.token_embedding
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, n, self.config.hidden_size))
    }

    /// The full forward from token ids (`[batch, context]`); pooled at the first maximal id of
    /// each row, which is the EOT token for CLIP's tokenizer (OpenAI's `argmax`).
    pub fn forward(&self, ids: &Tensor) -> Result<TextOutput> {
        let eot = eot_positions(ids)?;
        let embeds = self.token_embedding(ids)?;
        self.forward_embeds(&embeds, &eot, &[], Grad::Frozen)
    }

    /// Projected text embeddings `[batch, embed]` from token ids.
    pub fn text_embeds(&self, ids: &Tensor) -> Result<Tensor> {
        Ok(self.forward(ids)?.text_embed)
    }

    /// The forward from token embeddings `[batch, context, width]` (position embeddings are
    /// added here) with the EOT position of each row.
    ///
    /// `deep_prompts[j]` (`[n, width]`, or `[batch, n, width]`) replaces positions `1..=n` (right
    /// after SOS) at the input of text layer `j + 2` (1-based), as AnomalyCLIP's deep text
    /// prompts do; so at most `depth − 1` of them. Use [`Grad::Tracked`] whenever gradients must
    /// reach the embeddings or prompts.
    pub fn forward_embeds(
        &self,
        embeds: &Tensor,
        eot: &[usize],
        deep_prompts: &[Tensor],
        grad: Grad,
    ) -> Result<TextOutput> {
        let (b, n, w) = embeds.dims3()?;
        let ctx = self.config.max_position_embeddings;
        if w != self.config.hidden_size {
            bail!(
                "text embeddings are {w} wide, the model is {} wide",
                self.config.hidden_size
            );
        }
        if n > ctx {
            bail!("text sequence of {n} tokens exceeds the context length {ctx}");
        }
        if eot.len() != b {
            bail!("{} EOT positions given for a batch of {b}", eot.len());
        }
        if let Some(&bad) = eot.iter().find(|&&p| p >= n) {
            bail!("EOT position {bad} is outside the sequence of {n} tokens");
        }
        if deep_prompts.len() >= self.layers.len().max(1) {
            bail!(
                "{} deep prompts given; a {}-layer text tower takes at most {} (layers 2..={})",
                deep_prompts.len(),
                self.layers.len(),
                self.layers.len().saturating_sub(1),
                self.layers.len()
            );
        }
        let pos = self.position_embedding.narrow(0, 0, n)?;
        let mut x = embeds.to_dtype(self.dtype())?.broadcast_add(&pos)?;
        let mask = causal_mask(n, self.dtype(), self.device())?;
        for (i, layer) in self.layers.iter().enumerate() {
            if i >= 1 {
                if let Some(prompt) = deep_prompts.get(i - 1) {
                    x = splice_after_sos(&x, prompt)?;
                }
            }
            x = layer.forward(&x, Some(&mask), grad)?;
        }
        let last_hidden = self.final_layer_norm.forward_with(&x, grad)?;
        // Gather the EOT rows; index_select keeps the graph for backward.
        let rows = eot
            .iter()
            .enumerate()
            .map(|(bi, &p)| (bi * n + p) as u32)
            .collect::<Vec<_>>();
        let rows = Tensor::from_vec(rows, b, self.device())?;
        let pooled = last_hidden.reshape((b * n, w))?.index_select(&rows, 0)?;
        let text_embed = self.text_projection.forward(&pooled)?;
        Ok(TextOutput {
            last_hidden,
            text_embed,
        })
    }
}

/// Replaces positions `1..=n` of `x` (`[batch, ctx, width]`) by `prompt` (`[n, width]` or
/// `[batch, n, width]`).
fn splice_after_sos(x: &Tensor, prompt: &Tensor) -> Result<Tensor> {
    let (b, ctx, w) = x.dims3()?;
    let prompt = match prompt.rank() {
        2 => prompt.unsqueeze(0)?,
        3 => prompt.clone(),
        r => bail!("a deep prompt must be [n, width] or [batch, n, width], got rank {r}"),
    };
    let (pb, n, pw) = prompt.dims3()?;
    if pw != w || (pb != 1 && pb != b) {
        bail!(
            "deep prompt of shape {:?} does not fit text states {:?}",
            prompt.dims(),
            x.dims()
        );
    }
    if 1 + n > ctx {
        bail!("deep prompt of {n} tokens does not fit a context of {ctx}");
    }
    let prompt = prompt.to_dtype(x.dtype())?.broadcast_as((b, n, w))?;
    let sos = x.i((.., 0..1, ..))?;
    let rest = x.i((.., 1 + n.., ..))?;
    Tensor::cat(&[&sos, &prompt, &rest], 1)
}

/// Additive causal mask `[ctx, ctx]`: `-inf` above the diagonal.
fn causal_mask(n: usize, dtype: DType, device: &Device) -> Result<Tensor> {
    let mask: Vec<f32> = (0..n)
        .flat_map(|i| (0..n).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Tensor::from_vec(mask, (n, n), device)?.to_dtype(dtype)
}

/// First position of the maximal id in each row of `[batch, context]` ids (OpenAI's argmax:
/// CLIP's EOT, 49407, is the largest id, so this is the first EOT).
pub fn eot_positions(ids: &Tensor) -> Result<Vec<usize>> {
    let rows = ids.to_dtype(DType::U32)?.to_vec2::<u32>()?;
    Ok(rows
        .iter()
        .map(|row| {
            let max = row.iter().copied().max().unwrap_or(0);
            row.iter().position(|&t| t == max).unwrap_or(0)
        })
        .collect())
}
