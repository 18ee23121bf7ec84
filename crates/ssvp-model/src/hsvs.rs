//! HSVS, Hierarchical Semantic-Visual Synergy (paper Eqs. 1-5): one Adaptive Token Fusion (ATF)
//! block per scale and one for the global (CLS) pair, each with its own weights.
//!
//! ATF: CLIP queries DINO and DINO queries CLIP (multi-head cross-attention, Q/K/V projected from
//! each side into width `d`), each result LayerNorm-ed, concatenated, mapped back to `D_c` by a
//! two-layer GELU MLP, and added to the CLIP features. The MLP's last layer starts at zero so the
//! untrained head passes the CLIP features through unchanged.

use candle_core::{Module, Tensor};
use ssvp_backbones::nn::{multi_head_attention, Grad, LayerNorm, Linear};

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::params::ParamBuilder;

/// Query and key projections of one side of an ATF block.
#[derive(Debug, Clone)]
struct QueryKey {
    q: Linear,
    k: Linear,
}

/// One ATF block.
#[derive(Debug, Clone)]
pub struct AtfBlock {
    /// `None` in the global block: with a single token per side the attention weight is
    /// identically 1, so queries and keys could never influence (or be trained by) anything, and
    /// `A_{c->d} = V_d(F_d)`, `A_{d->c} = V_c(F_c)` exactly.
    clip_qk: Option<QueryKey>,
    dino_qk: Option<QueryKey>,
    clip_v: Linear,
    dino_v: Linear,
    /// Normalises the CLIP-queries-DINO result `A_{c->d}`.
    norm_c2d: LayerNorm,
    /// Normalises the DINO-queries-CLIP result `A_{d->c}`.
    norm_d2c: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    heads: usize,
}

impl AtfBlock {
    /// A block over token grids (`single_token = false`) or over the one-token global pair.
    pub fn new(pb: &ParamBuilder, cfg: &ModelConfig, single_token: bool) -> Result<Self> {
        let (dc, dd, d) = (cfg.clip_dim, cfg.dino_dim, cfg.atf_width);
        let qk = |side: &str, dim: usize| -> Result<Option<QueryKey>> {
            if single_token {
                return Ok(None);
            }
            Ok(Some(QueryKey {
                q: pb.linear(&format!("{side}_q"), dim, d)?,
                // No key bias: it shifts all logits of a query equally and the softmax cancels it.
                k: pb.linear_no_bias(&format!("{side}_k"), dim, d)?,
            }))
        };
        Ok(Self {
            clip_qk: qk("clip", dc)?,
            clip_v: pb.linear("clip_v", dc, d)?,
            dino_qk: qk("dino", dd)?,
            dino_v: pb.linear("dino_v", dd, d)?,
            norm_c2d: pb.layer_norm("norm_c2d", d, cfg.ln_eps)?,
            norm_d2c: pb.layer_norm("norm_d2c", d, cfg.ln_eps)?,
            fc1: pb.pp("mlp").linear("fc1", 2 * d, cfg.atf_mlp_hidden)?,
            fc2: pb.pp("mlp").linear_zeros("fc2", cfg.atf_mlp_hidden, dc)?,
            heads: cfg.atf_heads,
        })
    }

    /// Multi-head cross-attention of `queries` (projected by `from`) over `keys` (projected by
    /// `to` and `to_v`), heads merged back: `[B, N, d]`.
    fn cross(
        &self,
        from: &QueryKey,
        queries: &Tensor,
        to: &QueryKey,
        to_v: &Linear,
        keys: &Tensor,
    ) -> Result<Tensor> {
        let q = from.q.forward(queries)?;
        let k = to.k.forward(keys)?;
        let v = to_v.forward(keys)?;
        Ok(multi_head_attention(
            &q,
            &k,
            &v,
            self.heads,
            None,
            Grad::Tracked,
        )?)
    }

    /// `clip: [B, N, D_c]`, `dino: [B, N, D_d]` -> fused `[B, N, D_c]`.
    pub fn forward(&self, clip: &Tensor, dino: &Tensor) -> Result<Tensor> {
        let (b, n, _) = clip.dims3()?;
        let (bd, nd, _) = dino.dims3()?;
        if (b, n) != (bd, nd) {
            return Err(Error::Shape(format!(
                "ATF needs matching CLIP and DINO token grids, got CLIP {:?} and DINO {:?}",
                clip.dims(),
                dino.dims()
            )));
        }
        let (c2d, d2c) = match (&self.clip_qk, &self.dino_qk) {
            (Some(cqk), Some(dqk)) => (
                self.cross(cqk, clip, dqk, &self.dino_v, dino)?,
                self.cross(dqk, dino, cqk, &self.clip_v, clip)?,
            ),
            _ if n == 1 => (self.dino_v.forward(dino)?, self.clip_v.forward(clip)?),
            _ => {
                return Err(Error::Shape(format!(
                    "the global ATF block fuses one token per side, got {n}"
                )))
            }
        };
        let joint = Tensor::cat(
            &[
                self.norm_c2d.forward_with(&c2d, Grad::Tracked)?,
                self.norm_d2c.forward_with(&d2c, Grad::Tracked)?,
            ],
            2,
        )?;
        let delta = self.fc2.forward(&self.fc1.forward(&joint)?.gelu_erf()?)?;
        Ok((clip + delta)?)
    }
}

/// The four per-scale ATF blocks and the global one, and the optional per-scale trainable
/// linear on the CLIP patch features (`model.clip_adapter`).
#[derive(Debug, Clone)]
pub struct Hsvs {
    clip_adapters: Vec<Linear>,
    scales: Vec<AtfBlock>,
    global: AtfBlock,
}

impl Hsvs {
    /// The adapters and ATF blocks of every scale and of the global feature, initialised from
    /// `pb`.
    pub fn new(pb: &ParamBuilder, cfg: &ModelConfig) -> Result<Self> {
        let clip_adapters = if cfg.clip_adapter {
            (0..cfg.num_scales())
                .map(|l| {
                    pb.pp("clip_adapters")
                        .linear_identity(&l.to_string(), cfg.clip_dim)
                })
                .collect::<Result<Vec<_>>>()?
        } else {
            Vec::new()
        };
        let scales = (0..cfg.num_scales())
            .map(|l| AtfBlock::new(&pb.pp("scales").pp(l), cfg, false))
            .collect::<Result<Vec<_>>>()?;
        let global = AtfBlock::new(&pb.pp("global"), cfg, true)?;
        Ok(Self {
            clip_adapters,
            scales,
            global,
        })
    }

    /// Per-scale `V_syn^{local,l}` from per-scale CLIP/DINO patch features.
    pub fn forward_local(&self, clip: &[Tensor], dino: &[Tensor]) -> Result<Vec<Tensor>> {
        if clip.len() != self.scales.len() || dino.len() != self.scales.len() {
            return Err(Error::Shape(format!(
                "HSVS has {} scales but got {} CLIP and {} DINO feature maps",
                self.scales.len(),
                clip.len(),
                dino.len()
            )));
        }
        self.scales
            .iter()
            .enumerate()
            .zip(clip.iter().zip(dino))
            .map(|((l, block), (c, d))| match self.clip_adapters.get(l) {
                Some(adapter) => block.forward(&adapter.forward(c)?, d),
                None => block.forward(c, d),
            })
            .collect()
    }

    /// `V_syn^global [B, D_c]` from the CLIP image embedding and the DINO CLS token (one token per
    /// side, so the cross-attention reduces to the value projections).
    pub fn forward_global(&self, clip: &Tensor, dino: &Tensor) -> Result<Tensor> {
        let fused = self
            .global
            .forward(&clip.unsqueeze(1)?, &dino.unsqueeze(1)?)?;
        Ok(fused.squeeze(1)?)
    }
}
