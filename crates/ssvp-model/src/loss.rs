//! The SSVP objective (paper Eqs. 20-22):
//! `L_total = L_seg + L_class + λ1·(L_recon + β·L_KL) + λ2·L_margin`.
//!
//! Maps live on the token grid (`h x w`); masks may come at any resolution. When they differ, the
//! maps are bilinearly upsampled to the mask with two small interpolation matrices
//! (`U_h · map · U_wᵀ`), which is exact bilinear interpolation and keeps the autograd graph.

use candle_core::{DType, Device, Tensor};
use ssvp_backbones::nn::{cpu_f32, with_cpu_f32};

use crate::config::{ClassLoss, LossConfig};
use crate::error::{Error, Result};

/// Probabilities are clamped into `[EPS, 1 - EPS]` before logs.
pub const PROB_EPS: f64 = 1e-6;

/// Every term of the objective, each a scalar tensor (still attached to the graph).
#[derive(Debug, Clone)]
pub struct LossTerms {
    /// Focal loss summed over the per-scale maps (0 when disabled).
    pub focal_scales: Tensor,
    /// Dice loss summed over the per-scale maps (0 when disabled).
    pub dice_scales: Tensor,
    /// Focal loss on the fused map `P_map` (0 when disabled).
    pub focal_fused: Tensor,
    /// Dice loss on the fused map (0 when disabled).
    pub dice_fused: Tensor,
    /// `focal_scales + dice_scales + focal_fused + dice_fused`.
    pub seg: Tensor,
    /// Binary cross-entropy on the image score.
    pub class: Tensor,
    /// Mean squared reconstruction error of the fused global feature.
    pub vae_recon: Tensor,
    /// KL(q(z|V) || N(0, I)), averaged over images and latent dimensions.
    pub vae_kl: Tensor,
    /// `vae_recon + β·vae_kl`.
    pub vae: Tensor,
    /// The margin loss between the normal and abnormal prompt embeddings (weighted by
    /// `loss.margin_weight` in the total).
    pub margin: Tensor,
    /// `L_total`, the objective that is back-propagated.
    pub total: Tensor,
}

impl LossTerms {
    /// `(name, value)` of every term, for logging.
    pub fn named(&self) -> Vec<(&'static str, &Tensor)> {
        vec![
            ("focal_scales", &self.focal_scales),
            ("dice_scales", &self.dice_scales),
            ("focal_fused", &self.focal_fused),
            ("dice_fused", &self.dice_fused),
            ("seg", &self.seg),
            ("class", &self.class),
            ("vae_recon", &self.vae_recon),
            ("vae_kl", &self.vae_kl),
            ("vae", &self.vae),
            ("margin", &self.margin),
            ("total", &self.total),
        ]
    }
}

/// Ground truth for one batch.
#[derive(Debug, Clone)]
pub struct Targets {
    /// `[B, H, W]` in [0, 1] (1 = defect).
    pub masks: Tensor,
    /// `[B]`, 1 for anomalous images.
    pub labels: Tensor,
}

/// Bilinear interpolation matrix `[out, in]` (PyTorch `F.interpolate` conventions).
pub fn bilinear_matrix(
    out_len: usize,
    in_len: usize,
    align_corners: bool,
    device: &Device,
) -> Result<Tensor> {
    let mut m = vec![0f32; out_len * in_len];
    for i in 0..out_len {
        let src = if align_corners {
            if out_len > 1 {
                i as f64 * (in_len as f64 - 1.0) / (out_len as f64 - 1.0)
            } else {
                0.0
            }
        } else {
            ((i as f64 + 0.5) * in_len as f64 / out_len as f64 - 0.5).max(0.0)
        };
        let i0 = (src.floor() as usize).min(in_len - 1);
        let i1 = (i0 + 1).min(in_len - 1);
        let frac = (src - i0 as f64) as f32;
        m[i * in_len + i0] += 1.0 - frac;
        m[i * in_len + i1] += frac;
    }
    Ok(Tensor::from_vec(m, (out_len, in_len), device)?)
}

/// `[B, h, w]` -> `[B, H, W]` by bilinear interpolation (identity when the sizes agree).
pub fn upsample_bilinear(
    map: &Tensor,
    out_h: usize,
    out_w: usize,
    align_corners: bool,
) -> Result<Tensor> {
    let (b, h, w) = map.dims3()?;
    if (h, w) == (out_h, out_w) {
        return Ok(map.clone());
    }
    let uh = bilinear_matrix(out_h, h, align_corners, map.device())?;
    let uw_t = bilinear_matrix(out_w, w, align_corners, map.device())?
        .t()?
        .contiguous()?;
    let rows = uh.broadcast_left(b)?.matmul(map)?;
    Ok(rows.matmul(&uw_t.broadcast_left(b)?)?)
}

/// Binary focal loss with soft targets, mean over all pixels:
/// `-[y (1-p)^γ log p + (1-y) p^γ log(1-p)]`, `p` clamped into `[EPS, 1 - EPS]` (no gradient
/// where the clamp bites).
///
/// f32 CPU tensors go through [`FocalLoss`], one op that keeps only its inputs: composed from
/// candle ops the loss kept about a dozen `[B, 518, 518]` intermediates per map (five maps per
/// step) alive for the backward pass, about 0.25 GB per image.
pub fn focal_loss(prob: &Tensor, target: &Tensor, gamma: f64) -> Result<Tensor> {
    if prob.dtype() == DType::F32 && target.dtype() == DType::F32 && prob.device().is_cpu() {
        if prob.shape() != target.shape() {
            return Err(Error::Shape(format!(
                "focal loss: maps {:?} but targets {:?}",
                prob.dims(),
                target.dims()
            )));
        }
        return Ok(prob
            .contiguous()?
            .apply_op2(&target.contiguous()?, FocalLoss { gamma })?);
    }
    focal_loss_composed(prob, target, gamma)
}

/// [`focal_loss`] from candle ops (any dtype and device; the reference for [`FocalLoss`]).
pub fn focal_loss_composed(prob: &Tensor, target: &Tensor, gamma: f64) -> Result<Tensor> {
    let p = prob.clamp(PROB_EPS, 1.0 - PROB_EPS)?;
    let q = (p.neg()? + 1.0)?;
    let pos = ((&q.powf(gamma)? * p.log()?)? * target)?;
    let neg = ((&p.powf(gamma)? * q.log()?)? * (target.neg()? + 1.0)?)?;
    Ok((pos + neg)?.neg()?.mean_all()?)
}

/// The mean focal loss of f32 CPU maps as one op, with its analytic gradient with respect to
/// the probabilities: for `q = 1 − p`,
/// `∂/∂p = −[y (q^γ / p − γ q^(γ−1) log p) + (1 − y)(γ p^(γ−1) log q − p^γ / q)] / n`.
#[derive(Debug, Clone, Copy)]
pub struct FocalLoss {
    /// The focusing parameter `γ`.
    pub gamma: f64,
}

impl FocalLoss {
    /// The clamped probability, and whether the clamp left it alone (compared in f32, as
    /// candle's `clamp` does, so both paths clamp the same elements).
    fn clamp(p: f32) -> (f64, bool) {
        let (lo, hi) = (PROB_EPS as f32, (1.0 - PROB_EPS) as f32);
        if p < lo {
            (lo as f64, false)
        } else if p > hi {
            (hi as f64, false)
        } else {
            (p as f64, true)
        }
    }
}

impl candle_core::CustomOp2 for FocalLoss {
    fn name(&self) -> &'static str {
        "focal-loss-mean"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let (p, y) = (
            cpu_f32(s1, l1, "focal loss")?,
            cpu_f32(s2, l2, "focal loss")?,
        );
        let g = self.gamma;
        // Summed in f64: a mean over millions of pixels.
        let sum: f64 = p
            .iter()
            .zip(y)
            .map(|(&p, &y)| {
                let (p, _) = Self::clamp(p);
                let (q, y) = (1.0 - p, y as f64);
                -(y * q.powf(g) * p.ln() + (1.0 - y) * p.powf(g) * q.ln())
            })
            .sum();
        let mean = (sum / p.len().max(1) as f64) as f32;
        Ok((candle_core::CpuStorage::F32(vec![mean]), ().into()))
    }

    fn bwd(
        &self,
        prob: &Tensor,
        target: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let upstream = grad_res.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        let grad = with_cpu_f32(&[prob, target], "focal loss backward", |v| {
            let (p, y) = (v[0], v[1]);
            let g = self.gamma;
            let scale = upstream / p.len().max(1) as f64;
            let grad: Vec<f32> = p
                .iter()
                .zip(y)
                .map(|(&p, &y)| {
                    let (p, inside) = Self::clamp(p);
                    if !inside {
                        return 0.0;
                    }
                    let (q, y) = (1.0 - p, y as f64);
                    let d_pos = q.powf(g) / p - g * q.powf(g - 1.0) * p.ln();
                    let d_neg = g * p.powf(g - 1.0) * q.ln() - p.powf(g) / q;
                    (-(y * d_pos + (1.0 - y) * d_neg) * scale) as f32
                })
                .collect();
            Ok(grad)
        })?;
        Ok((
            Some(Tensor::from_vec(grad, prob.shape(), prob.device())?),
            None,
        ))
    }
}

/// Dice loss on the abnormal channel, per image then averaged:
/// `1 - (2 Σ p·y + 1) / (Σ p + Σ y + 1)`.
pub fn dice_loss(prob: &Tensor, target: &Tensor) -> Result<Tensor> {
    let b = prob.dim(0)?;
    let p = prob.reshape((b, ()))?;
    let y = target.reshape((b, ()))?;
    let inter = (&p * &y)?.sum(1)?;
    let dice = ((inter * 2.0)? + 1.0)?.div(&((p.sum(1)? + y.sum(1)?)? + 1.0)?)?;
    Ok((dice.neg()? + 1.0)?.mean_all()?)
}

/// Binary cross-entropy between the image score and the label.
pub fn class_loss(score: &Tensor, labels: &Tensor, kind: ClassLoss) -> Result<Tensor> {
    let labels = labels.to_dtype(score.dtype())?;
    let loss = match kind {
        ClassLoss::BceOnScore => {
            let s = score.clamp(PROB_EPS, 1.0 - PROB_EPS)?;
            let pos = (&labels * s.log()?)?;
            let neg = ((labels.neg()? + 1.0)? * (s.neg()? + 1.0)?.log()?)?;
            (pos + neg)?.neg()?
        }
        // BCE(σ(s), y) = softplus(s) - y·s.
        ClassLoss::BceOnSigmoid => (crate::vcpg::softplus(score)? - (&labels * score)?)?,
    };
    Ok(loss.mean_all()?)
}

/// Mean squared error and KL of the VAE (both averaged per element).
pub fn vae_losses(
    input: &Tensor,
    reconstruction: &Tensor,
    mu: &Tensor,
    logvar: &Tensor,
) -> Result<(Tensor, Tensor)> {
    let recon = (input - reconstruction)?.sqr()?.mean_all()?;
    // KL = -1/2 (1 + log σ² - μ² - σ²)
    let kl = ((logvar + 1.0)? - mu.sqr()? - logvar.exp()?)?;
    let kl = (kl.mean_all()? * -0.5)?;
    Ok((recon, kl))
}

/// Everything the objective needs from one forward pass.
pub struct LossInputs<'a> {
    /// `L x [B, h, w]`.
    pub scale_maps: &'a [Tensor],
    /// `P_map`, `[B, h, w]`.
    pub fused_map: &'a Tensor,
    /// `S_final`, `[B]`.
    pub score: &'a Tensor,
    /// The fused global feature the VAE encodes.
    pub vae_input: &'a Tensor,
    /// The VAE's reconstruction of it.
    pub vae_reconstruction: &'a Tensor,
    /// The latent mean.
    pub mu: &'a Tensor,
    /// The latent log-variance.
    pub logvar: &'a Tensor,
    /// The margin term of the forward pass.
    pub margin: &'a Tensor,
}

/// Assembles every term and the total.
pub fn ssvp_loss(
    inputs: &LossInputs,
    targets: &Targets,
    cfg: &LossConfig,
    align_corners: bool,
) -> Result<LossTerms> {
    let (b, h_out, w_out) = targets.masks.dims3().map_err(|_| {
        Error::Shape(format!(
            "masks must be [B, H, W], got {:?}",
            targets.masks.dims()
        ))
    })?;
    if inputs.fused_map.dim(0)? != b || targets.labels.dims() != [b] {
        return Err(Error::Shape(format!(
            "batch of {} maps but masks {:?} and labels {:?}",
            inputs.fused_map.dim(0)?,
            targets.masks.dims(),
            targets.labels.dims()
        )));
    }
    let masks = targets.masks.to_dtype(inputs.fused_map.dtype())?;
    let zero = Tensor::zeros((), inputs.fused_map.dtype(), inputs.fused_map.device())?;
    let seg_terms = |map: &Tensor| -> Result<(Tensor, Tensor)> {
        let up = upsample_bilinear(map, h_out, w_out, align_corners)?;
        let focal = focal_loss(&up, &masks, cfg.focal_gamma)?;
        let dice = if cfg.dice {
            dice_loss(&up, &masks)?
        } else {
            zero.clone()
        };
        Ok((focal, dice))
    };
    let (mut focal_scales, mut dice_scales) = (zero.clone(), zero.clone());
    if cfg.seg_on_scales {
        for map in inputs.scale_maps {
            let (f, d) = seg_terms(map)?;
            focal_scales = (focal_scales + f)?;
            dice_scales = (dice_scales + d)?;
        }
    }
    let (focal_fused, dice_fused) = if cfg.seg_on_fused {
        seg_terms(inputs.fused_map)?
    } else {
        (zero.clone(), zero.clone())
    };
    let seg = (((&focal_scales + &dice_scales)? + &focal_fused)? + &dice_fused)?;
    let class = class_loss(inputs.score, &targets.labels, cfg.class_loss)?;
    let (vae_recon, vae_kl) = vae_losses(
        inputs.vae_input,
        inputs.vae_reconstruction,
        inputs.mu,
        inputs.logvar,
    )?;
    let vae = (&vae_recon + (&vae_kl * cfg.kl_beta)?)?;
    let margin = inputs.margin.clone();
    let total = (((&seg + &class)? + (&vae * cfg.vae_weight)?)? + (&margin * cfg.margin_weight)?)?;
    Ok(LossTerms {
        focal_scales,
        dice_scales,
        focal_fused,
        dice_fused,
        seg,
        class,
        vae_recon,
        vae_kl,
        vae,
        margin,
        total,
    })
}

#[cfg(test)]
mod focal_tests {
    use super::*;
    use candle_core::Var;

    /// The fused focal loss equals the composed one in value and gradient, including clamped
    /// probabilities (exact 0 and 1) and soft targets.
    #[test]
    fn fused_focal_loss_matches_the_composed_one() {
        let dev = Device::Cpu;
        let mut probs: Vec<f32> = (0..2 * 5 * 7)
            .map(|i| ((i as f32 * 0.37).sin() * 0.5 + 0.5).clamp(0.0, 1.0))
            .collect();
        probs[3] = 0.0;
        probs[11] = 1.0;
        let targets: Vec<f32> = (0..70)
            .map(|i| {
                if i % 3 == 0 {
                    1.0
                } else if i % 7 == 0 {
                    0.5
                } else {
                    0.0
                }
            })
            .collect();
        let p = Var::from_vec(probs, (2, 5, 7), &dev).unwrap();
        let y = Tensor::from_vec(targets, (2, 5, 7), &dev).unwrap();
        for gamma in [2.0, 0.0, 1.5] {
            let fused = focal_loss(p.as_tensor(), &y, gamma).unwrap();
            let composed = focal_loss_composed(p.as_tensor(), &y, gamma).unwrap();
            let (a, b) = (
                fused.to_scalar::<f32>().unwrap(),
                composed.to_scalar::<f32>().unwrap(),
            );
            assert!(
                (a - b).abs() < 1e-5 * b.abs().max(1.0),
                "{gamma}: {a} vs {b}"
            );
            let g1 = (fused * 3.0).unwrap().backward().unwrap();
            let g2 = (composed * 3.0).unwrap().backward().unwrap();
            let (d1, d2) = (
                g1.get(&p)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
                g2.get(&p)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap(),
            );
            let scale = d2.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(scale > 0.0);
            for (i, (u, v)) in d1.iter().zip(&d2).enumerate() {
                assert!((u - v).abs() < 1e-4 * scale, "{gamma} [{i}]: {u} vs {v}");
            }
        }
        let bad = Tensor::zeros((2, 5, 6), DType::F32, &dev).unwrap();
        assert!(focal_loss(p.as_tensor(), &bad, 2.0).is_err());
    }
}
