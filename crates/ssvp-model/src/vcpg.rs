//! VCPG, Vision-Conditioned Prompt Generator (paper Eqs. 6-12).
//!
//! - [`PromptBank`]: the learnable prompt tokens (Eq. 6). Prompt index `i` has a background
//!   context `[V]_bg,i` shared by normal prompt `i` and abnormal prompt `i`, and its own state
//!   tokens. A [`PromptTextEncoder`] turns them into `T_init` (one row per prompt).
//! - [`Vae`]: encodes the fused global feature into `μ, log σ²`, samples `z`, reconstructs
//!   (Eqs. 7-9).
//! - [`LatentInjection`]: `T_init` attends to `z` read as `m` latent tokens (Eq. 10), gated by a
//!   scalar `α` (starting at 0) and LayerNorm-ed into `T_final` (Eq. 11).
//! - [`margin_loss`]: keeps `T_final` within a cosine margin of the static prompts (Eq. 12).

use candle_core::{Module, Tensor, D};
use ssvp_backbones::nn::{attention, Grad, LayerNorm, Linear};

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::params::{Init, ParamBuilder};

/// Turns the learnable prompt tokens of one class into text embeddings `T_init`.
///
/// `prompt_tokens` is `[2P, L_bg + L_state, text_width]` (rows `0..P` normal, `P..2P` abnormal,
/// as [`PromptBank::tokens`] lays them out); the result is `[2P, D_c]` and must keep the autograd
/// graph to `prompt_tokens`. The real encoder splices the tokens into the frozen CLIP text tower
/// in place of placeholder words before `<class name>`.
pub trait PromptTextEncoder {
    /// The text embeddings `[2P, D_c]` of `prompt_tokens` for `class_name`.
    fn encode(&self, class_name: &str, prompt_tokens: &Tensor) -> Result<Tensor>;
}

/// The 3 + 3 learnable prompts.
#[derive(Debug, Clone)]
pub struct PromptBank {
    /// `[P, L_bg, W]`, init N(0, 0.02).
    context: Tensor,
    /// `[P, L_state, W]`, init N(+0.5, 0.02).
    normal_state: Tensor,
    /// `[P, L_state, W]`, init N(-0.5, 0.02).
    abnormal_state: Tensor,
}

impl PromptBank {
    /// The prompts with their initial values (context N(0, 0.02), states N(±0.5, 0.02)).
    pub fn new(pb: &ParamBuilder, cfg: &ModelConfig) -> Result<Self> {
        let (p, w) = (cfg.prompts_per_state, cfg.text_width);
        let normal = |mean| Init::Normal { mean, std: 0.02 };
        Ok(Self {
            context: pb.get(&[p, cfg.context_len, w], "context", normal(0.0))?,
            normal_state: pb.get(&[p, cfg.state_len, w], "normal_state", normal(0.5))?,
            abnormal_state: pb.get(&[p, cfg.state_len, w], "abnormal_state", normal(-0.5))?,
        })
    }

    /// `[2P, L_bg + L_state, W]`: normal prompts `[ctx_i, normal_i]` then abnormal prompts
    /// `[ctx_i, abnormal_i]`.
    pub fn tokens(&self) -> Result<Tensor> {
        let normal = Tensor::cat(&[&self.context, &self.normal_state], 1)?;
        let abnormal = Tensor::cat(&[&self.context, &self.abnormal_state], 1)?;
        Ok(Tensor::cat(&[normal, abnormal], 0)?)
    }

    /// `T_init` for one class through `encoder`.
    pub fn encode(&self, encoder: &dyn PromptTextEncoder, class_name: &str) -> Result<Tensor> {
        encoder.encode(class_name, &self.tokens()?)
    }
}

/// `x -> Linear -> Softplus -> Linear -> Softplus -> Linear` (Bayes-PFL's VAE block).
#[derive(Debug, Clone)]
pub struct SoftplusMlp {
    fc1: Linear,
    fc2: Linear,
    fc3: Linear,
}

impl SoftplusMlp {
    /// Three linear layers `in_dim -> hidden -> hidden -> out_dim` with softplus between.
    pub fn new(pb: &ParamBuilder, in_dim: usize, hidden: usize, out_dim: usize) -> Result<Self> {
        Ok(Self {
            fc1: pb.linear("fc1", in_dim, hidden)?,
            fc2: pb.linear("fc2", hidden, hidden)?,
            fc3: pb.linear("fc3", hidden, out_dim)?,
        })
    }

    /// `fc3(softplus(fc2(softplus(fc1(x)))))`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = softplus(&self.fc1.forward(x)?)?;
        let x = softplus(&self.fc2.forward(&x)?)?;
        Ok(self.fc3.forward(&x)?)
    }
}

/// `log(1 + e^x)` written as `max(x, 0) + log(1 + e^{-|x|})`: no overflow, and only ops with a
/// backward.
pub fn softplus(x: &Tensor) -> Result<Tensor> {
    Ok((x.relu()? + (x.abs()?.neg()?.exp()? + 1.0)?.log()?)?)
}

/// What the VAE produced for one batch.
#[derive(Debug, Clone)]
pub struct VaeOutput {
    /// The latent mean `μ`, `[B, d_z]`.
    pub mu: Tensor,
    /// The latent log-variance `log σ²`, `[B, d_z]`.
    pub logvar: Tensor,
    /// The latent actually used: `μ + ε·exp(log σ² / 2)` in training, `μ` in evaluation.
    pub z: Tensor,
    /// `D_θ(z)`, the reconstruction of the fused global feature.
    pub reconstruction: Tensor,
}

/// The VAE on `V_syn^global`.
#[derive(Debug, Clone)]
pub struct Vae {
    mu: SoftplusMlp,
    logvar: SoftplusMlp,
    decoder: SoftplusMlp,
    decoder_out: Linear,
}

impl Vae {
    /// The encoder (mean and log-variance MLPs) and the decoder, initialised from `pb`.
    pub fn new(pb: &ParamBuilder, cfg: &ModelConfig) -> Result<Self> {
        let (dc, h, dz) = (cfg.clip_dim, cfg.vae_hidden, cfg.vae_latent);
        Ok(Self {
            mu: SoftplusMlp::new(&pb.pp("mu"), dc, h, dz)?,
            logvar: SoftplusMlp::new(&pb.pp("logvar"), dc, h, dz)?,
            decoder: SoftplusMlp::new(&pb.pp("decoder"), dz, h, dc)?,
            decoder_out: pb.linear("decoder_out", dc, dc)?,
        })
    }

    /// `global: [B, D_c]`; `noise: Some([B, d_z])` draws the reparameterised sample, `None` uses
    /// the mean.
    pub fn forward(&self, global: &Tensor, noise: Option<&Tensor>) -> Result<VaeOutput> {
        let mu = self.mu.forward(global)?;
        let logvar = self.logvar.forward(global)?;
        let z = match noise {
            Some(eps) => {
                if eps.dims() != mu.dims() {
                    return Err(Error::Shape(format!(
                        "VAE noise must be {:?} like the latent mean, got {:?}",
                        mu.dims(),
                        eps.dims()
                    )));
                }
                (&mu + (eps * (&logvar * 0.5)?.exp()?)?)?
            }
            None => mu.clone(),
        };
        let reconstruction = self.decoder_out.forward(&self.decoder.forward(&z)?)?;
        Ok(VaeOutput {
            mu,
            logvar,
            z,
            reconstruction,
        })
    }
}

/// Text-latent cross-attention and gated injection: `T_final = LN(T_init + α·δ_inj)`.
#[derive(Debug, Clone)]
pub struct LatentInjection {
    q: Linear,
    k: Linear,
    v: Linear,
    alpha: Tensor,
    norm: LayerNorm,
    latent_tokens: usize,
}

impl LatentInjection {
    /// The injection's attention and gate, initialised from `pb`.
    pub fn new(pb: &ParamBuilder, cfg: &ModelConfig) -> Result<Self> {
        let tok = cfg.latent_token_dim();
        Ok(Self {
            q: pb.linear("q", cfg.clip_dim, cfg.inject_key_dim)?,
            // No key bias (the softmax over latent tokens would cancel it).
            k: pb.linear_no_bias("k", tok, cfg.inject_key_dim)?,
            v: pb.linear("v", tok, cfg.clip_dim)?,
            alpha: pb.get(&[1], "alpha", Init::Const(0.0))?,
            norm: pb.layer_norm("norm", cfg.clip_dim, cfg.ln_eps)?,
            latent_tokens: cfg.latent_tokens,
        })
    }

    /// `t_init: [B, 2P, D_c]`, `z: [B, d_z]` -> `T_final [B, 2P, D_c]`.
    pub fn forward(&self, t_init: &Tensor, z: &Tensor) -> Result<Tensor> {
        let (b, dz) = z.dims2()?;
        let tokens = z.reshape((b, self.latent_tokens, dz / self.latent_tokens))?;
        let q = self.q.forward(t_init)?;
        let k = self.k.forward(&tokens)?;
        let v = self.v.forward(&tokens)?;
        let delta = attention(&q, &k, &v, None, Grad::Tracked)?;
        let injected = t_init.broadcast_add(&delta.broadcast_mul(&self.alpha)?)?;
        Ok(self.norm.forward_with(&injected, Grad::Tracked)?)
    }
}

/// Cosine similarity along the last dimension.
pub fn cosine_last_dim(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let dot = (a * b)?.sum(D::Minus1)?;
    let na = a.sqr()?.sum(D::Minus1)?.sqrt()?;
    let nb = b.sqr()?.sum(D::Minus1)?.sqrt()?;
    Ok((dot / (na * nb)?)?)
}

/// `mean over images and prompts of max(0, ξ - cos(T_final, stopgrad(T_init)))`.
pub fn margin_loss(t_final: &Tensor, t_init: &Tensor, floor: f64) -> Result<Tensor> {
    let cos = cosine_last_dim(t_final, &t_init.detach())?;
    Ok((cos.neg()? + floor)?.relu()?.mean_all()?)
}

/// The trainable parts of VCPG downstream of the text encoder, plus the prompt bank.
#[derive(Debug, Clone)]
pub struct Vcpg {
    /// The learnable prompts.
    pub prompts: PromptBank,
    /// The VAE on the fused global feature.
    pub vae: Vae,
    /// The latent injection into the text embeddings.
    pub inject: LatentInjection,
}

impl Vcpg {
    /// Every part, initialised from `pb`.
    pub fn new(pb: &ParamBuilder, cfg: &ModelConfig) -> Result<Self> {
        Ok(Self {
            prompts: PromptBank::new(&pb.pp("prompts"), cfg)?,
            vae: Vae::new(&pb.pp("vae"), cfg)?,
            inject: LatentInjection::new(&pb.pp("inject"), cfg)?,
        })
    }
}
