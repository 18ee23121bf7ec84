//! VTAM, Visual-Text Anomaly Mapper (AnomalyMoE, paper Eqs. 13-19).
//!
//! Per scale: cosine between every fused patch feature and every final prompt, divided by `τ`,
//! softmax over each {normal i, abnormal i} pair, abnormal probability averaged over the pairs.
//! A global gate (softmax over scales, from the fused global feature) and per-scale local gates
//! (sigmoid of a 1x1 projection of the patch features) mix the scale maps into `P_map`.

use candle_core::{Module, Tensor, D};
use ssvp_backbones::nn::{softmax_last_dim, Grad, Linear};

use crate::config::{LocalScore, ModelConfig};
use crate::error::{Error, Result};
use crate::params::{Init, ParamBuilder};

/// L2-normalises along the last dimension.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    Ok(x.broadcast_div(&x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?)?)
}

/// Abnormal probability averaged over the prompt pairs.
///
/// `features: [B, N, D]`, `text: [B, 2P, D]` (normal rows first), `logit_scale = 1/τ` as a
/// scalar tensor -> `[B, N]`.
pub fn pairwise_anomaly_prob(
    features: &Tensor,
    text: &Tensor,
    logit_scale: &Tensor,
) -> Result<Tensor> {
    let (b, n, _) = features.dims3()?;
    let p2 = text.dim(1)?;
    let p = p2 / 2;
    let cos =
        l2_normalize(features)?.matmul(&l2_normalize(text)?.transpose(1, 2)?.contiguous()?)?;
    let logits = cos.broadcast_mul(logit_scale)?;
    // [B, N, 2, P] -> [B, N, P, 2]: one two-way softmax per pair.
    let pairs = logits
        .reshape((b, n, 2, p))?
        .transpose(2, 3)?
        .contiguous()?;
    let probs = softmax_last_dim(&pairs, Grad::Tracked)?;
    Ok(probs.narrow(3, 1, 1)?.squeeze(3)?.mean(2)?)
}

/// VTAM's parameters: temperature, global scale gate, local spatial gates.
#[derive(Debug, Clone)]
pub struct Vtam {
    /// `ln(1/τ)`; a `Var` when `τ` is learnable, a constant otherwise.
    log_logit_scale: Tensor,
    gate_fc1: Linear,
    gate_fc2: Linear,
    local_gates: Vec<Linear>,
    gamma: f64,
    local_score: LocalScore,
}

/// The maps and scores VTAM produces.
#[derive(Debug, Clone)]
pub struct VtamOutput {
    /// `P_anom^(l)`, each `[B, N]`.
    pub scale_maps: Vec<Tensor>,
    /// `M_spatial^(l)`, each `[B, N]`.
    pub local_gates: Vec<Tensor>,
    /// `w_scale`, `[B, L]`.
    pub scale_weights: Tensor,
    /// `P_map`, `[B, N]`.
    pub fused_map: Tensor,
    /// `S_global`, `[B]`.
    pub score_global: Tensor,
    /// `S_local`, `[B]`: read from `P_map` by `model.local_score`.
    pub score_local: Tensor,
    /// `S = (1-γ) S_global + γ S_local`, `[B]`.
    pub score: Tensor,
}

impl Vtam {
    /// The mapper with its temperature and gates, initialised from `pb`.
    pub fn new(pb: &ParamBuilder, cfg: &ModelConfig) -> Result<Self> {
        let init_scale = (1.0 / cfg.tau_init).ln();
        let log_logit_scale = if cfg.tau_learnable {
            pb.get(&[1], "log_logit_scale", Init::Const(init_scale))?
        } else {
            Tensor::new(&[init_scale as f32], pb.device())?
        };
        let gate = pb.pp("scale_gate");
        let local_gates = (0..cfg.num_scales())
            .map(|l| {
                let vb = pb.pp("local_gates").pp(l);
                let bound = 1.0 / (cfg.clip_dim as f64).sqrt();
                let weight = vb.get(
                    &[1, cfg.clip_dim],
                    "weight",
                    Init::Uniform {
                        lo: -bound,
                        hi: bound,
                    },
                )?;
                let bias = vb.get(&[1], "bias", Init::Const(cfg.local_gate_bias_init))?;
                Ok(Linear::new(weight, Some(bias)))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            log_logit_scale,
            gate_fc1: gate.linear("fc1", cfg.clip_dim, cfg.scale_gate_hidden)?,
            gate_fc2: gate.linear("fc2", cfg.scale_gate_hidden, cfg.num_scales())?,
            local_gates,
            gamma: cfg.gamma,
            local_score: cfg.local_score,
        })
    }

    /// `1/τ`.
    pub fn logit_scale(&self) -> Result<Tensor> {
        Ok(self.log_logit_scale.exp()?)
    }

    /// `local: L x [B, N, D_c]`, `global: [B, D_c]`, `text: [B, 2P, D_c]`.
    pub fn forward(&self, local: &[Tensor], global: &Tensor, text: &Tensor) -> Result<VtamOutput> {
        if local.len() != self.local_gates.len() {
            return Err(Error::Shape(format!(
                "VTAM has {} scales but got {} feature maps",
                self.local_gates.len(),
                local.len()
            )));
        }
        let scale = self.logit_scale()?;
        let scale_maps = local
            .iter()
            .map(|f| pairwise_anomaly_prob(f, text, &scale))
            .collect::<Result<Vec<_>>>()?;
        let local_gates = local
            .iter()
            .zip(&self.local_gates)
            .map(|(f, gate)| Ok(candle_nn::ops::sigmoid(&gate.forward(f)?.squeeze(2)?)?))
            .collect::<Result<Vec<_>>>()?;
        let gate_logits = self
            .gate_fc2
            .forward(&self.gate_fc1.forward(global)?.gelu_erf()?)?;
        let scale_weights = softmax_last_dim(&gate_logits, Grad::Tracked)?;
        let mut fused_map: Option<Tensor> = None;
        for (l, (map, gate)) in scale_maps.iter().zip(&local_gates).enumerate() {
            let w = scale_weights.narrow(1, l, 1)?;
            let term = (map * gate)?.broadcast_mul(&w)?;
            fused_map = Some(match fused_map {
                Some(acc) => (acc + term)?,
                None => term,
            });
        }
        let fused_map = fused_map.expect("at least one scale (validated)");
        let score_global =
            pairwise_anomaly_prob(&global.unsqueeze(1)?, text, &scale)?.squeeze(1)?;
        let score_local = match self.local_score {
            LocalScore::Max => fused_map.max(1)?,
            LocalScore::TopKMean { k } => top_k_mean(&fused_map, k)?,
        };
        let score = ((&score_global * (1.0 - self.gamma))? + (&score_local * self.gamma)?)?;
        Ok(VtamOutput {
            scale_maps,
            local_gates,
            scale_weights,
            fused_map,
            score_global,
            score_local,
            score,
        })
    }
}

/// Mean of the `k` largest entries of each row of `[B, N]` (all of them when `k >= N`).
pub fn top_k_mean(x: &Tensor, k: usize) -> Result<Tensor> {
    let n = x.dim(1)?;
    let k = k.min(n);
    let order = x.arg_sort_last_dim(false)?.narrow(1, 0, k)?.contiguous()?;
    Ok(x.contiguous()?.gather(&order, 1)?.mean(1)?)
}
