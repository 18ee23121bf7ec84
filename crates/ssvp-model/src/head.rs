//! [`SsvpHead`]: HSVS -> VCPG -> VTAM, from frozen backbone features and `T_init` to anomaly maps,
//! image scores and (given targets) every loss term.
//!
//! Tensor names (the checkpoint layout, shared with reference/gen_ssvp_head.py):
//! `hsvs.clip_adapters.{l}` (with `model.clip_adapter`), `hsvs.scales.{l}.*`, `hsvs.global.*` (ATF: `{clip,dino}_{q,k,v}`, `norm_c2d`, `norm_d2c`,
//! `mlp.fc1`, `mlp.fc2`); `vcpg.prompts.{context,normal_state,abnormal_state}`;
//! `vcpg.vae.{mu,logvar,decoder}.fc{1,2,3}`, `vcpg.vae.decoder_out`;
//! `vcpg.inject.{q,k,v,alpha,norm}`; `vtam.log_logit_scale`, `vtam.scale_gate.fc{1,2}`,
//! `vtam.local_gates.{l}`.

use std::collections::BTreeSet;
use std::path::Path;

use candle_core::{Device, Tensor, Var};
use candle_nn::VarMap;

use ssvp_features::ImageFeatures;

use crate::config::{ModelConfig, SsvpConfig};
use crate::error::{Error, Result};
use crate::hsvs::Hsvs;
use crate::loss::{ssvp_loss, LossInputs, LossTerms, Targets};
use crate::params::ParamBuilder;
use crate::vcpg::{margin_loss, PromptTextEncoder, VaeOutput, Vcpg};
use crate::vtam::Vtam;

/// Frozen backbone features of one batch, already in the layout the head expects.
#[derive(Debug, Clone)]
pub struct HeadFeatures {
    /// One `[B, N, D_c]` per scale: CLIP patch tokens after ln_post -> proj.
    pub clip_local: Vec<Tensor>,
    /// One `[B, N, D_d]` per scale: DINO patch tokens (CLS and registers dropped).
    pub dino_local: Vec<Tensor>,
    /// `[B, D_c]`: CLIP image embedding (CLS -> ln_post -> proj).
    pub clip_global: Tensor,
    /// `[B, D_d]`: DINO CLS token.
    pub dino_global: Tensor,
    /// Token grid `(h, w)` with `h * w = N`.
    pub grid: (usize, usize),
}

/// Stacks per-image features into the head's batch layout (`[B, N, D]` per scale, `[B, D]`).
/// All items must share the grid, the scale counts and the widths.
pub fn stack_features(items: &[ImageFeatures]) -> candle_core::Result<HeadFeatures> {
    let Some(first) = items.first() else {
        candle_core::bail!("stack_features needs at least one image");
    };
    for (i, it) in items.iter().enumerate() {
        if it.grid != first.grid
            || it.clip_local.len() != first.clip_local.len()
            || it.dino_local.len() != first.dino_local.len()
        {
            candle_core::bail!(
                "image {i} has a {:?} grid with {}+{} scales, image 0 a {:?} grid with {}+{}",
                it.grid,
                it.clip_local.len(),
                it.dino_local.len(),
                first.grid,
                first.clip_local.len(),
                first.dino_local.len()
            );
        }
    }
    let stack_scale = |pick: &dyn Fn(&ImageFeatures) -> &Tensor| {
        let ts: Vec<&Tensor> = items.iter().map(pick).collect();
        Tensor::stack(&ts, 0)
    };
    let clip_local = (0..first.clip_local.len())
        .map(|l| stack_scale(&|it| &it.clip_local[l]))
        .collect::<candle_core::Result<Vec<_>>>()?;
    let dino_local = (0..first.dino_local.len())
        .map(|l| stack_scale(&|it| &it.dino_local[l]))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Ok(HeadFeatures {
        clip_local,
        dino_local,
        clip_global: stack_scale(&|it| &it.clip_global)?,
        dino_global: stack_scale(&|it| &it.dino_global)?,
        grid: first.grid,
    })
}

/// Training draws the VAE latent with the given standard-normal noise `[B, d_z]`; evaluation
/// uses the latent mean.
#[derive(Debug, Clone)]
pub enum Mode {
    /// Training: the latent is `mu + exp(logvar / 2) * noise`.
    Train {
        /// Standard-normal noise `[B, d_z]`.
        noise: Tensor,
    },
    /// Evaluation: the latent is its mean.
    Eval,
}

/// Everything one forward pass produces.
#[derive(Debug, Clone)]
pub struct HeadOutput {
    /// `V_syn^{local,l}`, each `[B, N, D_c]`.
    pub local_features: Vec<Tensor>,
    /// `V_syn^global`, `[B, D_c]`.
    pub global_feature: Tensor,
    /// The fused global feature's VAE: latent, reconstruction and the latent's statistics.
    pub vae: VaeOutput,
    /// `T_final`, `[B, 2P, D_c]`.
    pub t_final: Tensor,
    /// `P_anom^(l)`, each `[B, h, w]`.
    pub scale_maps: Vec<Tensor>,
    /// `M_spatial^(l)`, each `[B, h, w]`.
    pub local_gates: Vec<Tensor>,
    /// `w_scale`, `[B, L]`.
    pub scale_weights: Tensor,
    /// `P_map`, `[B, h, w]`.
    pub fused_map: Tensor,
    /// `S_global`, `[B]`: the image score from the global feature.
    pub score_global: Tensor,
    /// `S_local`, `[B]`: the image score read from the fused map.
    pub score_local: Tensor,
    /// `S_final`, `[B]`.
    pub score: Tensor,
    /// The margin regulariser (always computed; it needs no targets).
    pub margin: Tensor,
    /// Every loss term, when targets were given.
    pub loss: Option<LossTerms>,
}

/// The two learning-rate groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ParamGroup {
    /// Prompt embeddings and the injection gate `α` (lr 5e-4 in the paper's setting).
    Prompts,
    /// HSVS, VAE, injection attention, VTAM (lr 1e-4).
    Rest,
}

impl ParamGroup {
    /// The group a tensor name belongs to.
    pub fn of(name: &str) -> Self {
        if name.starts_with("vcpg.prompts.") || name == "vcpg.inject.alpha" {
            Self::Prompts
        } else {
            Self::Rest
        }
    }
}

/// The trainable SSVP head.
pub struct SsvpHead {
    cfg: SsvpConfig,
    varmap: VarMap,
    hsvs: Hsvs,
    vcpg: Vcpg,
    vtam: Vtam,
}

impl SsvpHead {
    /// Builds the head with freshly initialised parameters (seeded by `cfg.optim.seed`).
    pub fn new(cfg: &SsvpConfig, device: &Device) -> Result<Self> {
        cfg.model.validate()?;
        let varmap = VarMap::new();
        let pb = ParamBuilder::new(varmap.clone(), cfg.optim.seed, device);
        let hsvs = Hsvs::new(&pb.pp("hsvs"), &cfg.model)?;
        let vcpg = Vcpg::new(&pb.pp("vcpg"), &cfg.model)?;
        let vtam = Vtam::new(&pb.pp("vtam"), &cfg.model)?;
        Ok(Self {
            cfg: cfg.clone(),
            varmap,
            hsvs,
            vcpg,
            vtam,
        })
    }

    /// The config the head was built with.
    pub fn config(&self) -> &SsvpConfig {
        &self.cfg
    }

    /// The head's part of the config (`[model]`).
    pub fn model_config(&self) -> &ModelConfig {
        &self.cfg.model
    }

    /// The trainable tensors by name (what checkpoints hold).
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// The prompt generator (VCPG).
    pub fn vcpg(&self) -> &Vcpg {
        &self.vcpg
    }

    /// The learnable prompt tokens `[2P, L_bg + L_state, text_width]` for a text encoder.
    pub fn prompt_tokens(&self) -> Result<Tensor> {
        self.vcpg.prompts.tokens()
    }

    /// `T_init [2P, D_c]` of one class.
    pub fn encode_prompts(
        &self,
        encoder: &dyn PromptTextEncoder,
        class_name: &str,
    ) -> Result<Tensor> {
        self.vcpg.prompts.encode(encoder, class_name)
    }

    /// Every trainable tensor with its name, sorted by name.
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let data = self.varmap.data().lock().expect("VarMap lock poisoned");
        let mut vars: Vec<_> = data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        vars
    }

    /// The trainable tensors of one learning-rate group.
    pub fn group_vars(&self, group: ParamGroup) -> Vec<(String, Var)> {
        self.named_vars()
            .into_iter()
            .filter(|(name, _)| ParamGroup::of(name) == group)
            .collect()
    }

    /// Writes every trainable tensor (and nothing else) as safetensors.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<()> {
        Ok(self.varmap.save(path)?)
    }

    /// Overwrites the trainable tensors from a safetensors file that holds exactly them, with the
    /// same shapes.
    pub fn load(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        let device = self.cfg_device()?;
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, &device)
            .map_err(|e| Error::Checkpoint(format!("{}: {e}", path.display())))?;
        let ours: BTreeSet<String> = self.named_vars().into_iter().map(|(n, _)| n).collect();
        let theirs: BTreeSet<String> = tensors.keys().cloned().collect();
        let missing: Vec<_> = ours.difference(&theirs).collect();
        let extra: Vec<_> = theirs.difference(&ours).collect();
        if !missing.is_empty() || !extra.is_empty() {
            return Err(Error::Checkpoint(format!(
                "{} does not match the head: missing {missing:?}, unexpected {extra:?}",
                path.display()
            )));
        }
        for (name, var) in self.named_vars() {
            let t = &tensors[&name];
            if t.dims() != var.dims() {
                return Err(Error::Checkpoint(format!(
                    "{name}: checkpoint shape {:?}, head shape {:?}",
                    t.dims(),
                    var.dims()
                )));
            }
            var.set(&t.to_dtype(var.dtype())?)?;
        }
        Ok(())
    }

    fn cfg_device(&self) -> Result<Device> {
        let vars = self.varmap.all_vars();
        Ok(vars
            .first()
            .map(|v| v.device().clone())
            .unwrap_or(Device::Cpu))
    }

    fn check_features(&self, f: &HeadFeatures, t_init: &Tensor) -> Result<(usize, Tensor)> {
        let m = &self.cfg.model;
        let (b, dc) = f.clip_global.dims2()?;
        let shape_err = |what: String| Err(Error::Shape(what));
        if dc != m.clip_dim || f.dino_global.dims() != [b, m.dino_dim] {
            return shape_err(format!(
                "global features must be [B, {}] and [B, {}], got {:?} and {:?}",
                m.clip_dim,
                m.dino_dim,
                f.clip_global.dims(),
                f.dino_global.dims()
            ));
        }
        let n = f.grid.0 * f.grid.1;
        for (c, d) in f.clip_local.iter().zip(&f.dino_local) {
            if c.dims() != [b, n, m.clip_dim] || d.dims() != [b, n, m.dino_dim] {
                return shape_err(format!(
                    "local features must be [{b}, {n}, {}] and [{b}, {n}, {}] for grid {:?}, got {:?} and {:?}",
                    m.clip_dim,
                    m.dino_dim,
                    f.grid,
                    c.dims(),
                    d.dims()
                ));
            }
        }
        let p2 = m.num_prompts();
        let t_init = match t_init.rank() {
            2 if t_init.dims() == [p2, m.clip_dim] => {
                t_init.unsqueeze(0)?.broadcast_as((b, p2, m.clip_dim))?
            }
            3 if t_init.dims() == [b, p2, m.clip_dim] => t_init.clone(),
            _ => {
                return shape_err(format!(
                    "T_init must be [{p2}, {dc}] or [{b}, {p2}, {dc}], got {:?}",
                    t_init.dims(),
                    dc = m.clip_dim
                ))
            }
        };
        Ok((b, t_init))
    }

    /// One forward pass. `t_init` is `[2P, D_c]` (one class for the whole batch) or
    /// `[B, 2P, D_c]` (per image); loss terms are computed when `targets` is given.
    pub fn forward(
        &self,
        features: &HeadFeatures,
        t_init: &Tensor,
        mode: &Mode,
        targets: Option<&Targets>,
    ) -> Result<HeadOutput> {
        let (b, t_init) = self.check_features(features, t_init)?;
        let (h, w) = features.grid;
        let local_features = self
            .hsvs
            .forward_local(&features.clip_local, &features.dino_local)?;
        let global_feature = self
            .hsvs
            .forward_global(&features.clip_global, &features.dino_global)?;
        let noise = match mode {
            Mode::Train { noise } => Some(noise),
            Mode::Eval => None,
        };
        let vae = self.vcpg.vae.forward(&global_feature, noise)?;
        let t_final = self.vcpg.inject.forward(&t_init, &vae.z)?;
        let margin = margin_loss(&t_final, &t_init, self.cfg.loss.margin_floor)?;
        let v = self
            .vtam
            .forward(&local_features, &global_feature, &t_final)?;
        let grid = |x: &Tensor| -> Result<Tensor> { Ok(x.reshape((b, h, w))?) };
        let scale_maps = v.scale_maps.iter().map(grid).collect::<Result<Vec<_>>>()?;
        let local_gates = v.local_gates.iter().map(grid).collect::<Result<Vec<_>>>()?;
        let fused_map = grid(&v.fused_map)?;
        let loss = match targets {
            Some(targets) => Some(ssvp_loss(
                &LossInputs {
                    scale_maps: &scale_maps,
                    fused_map: &fused_map,
                    score: &v.score,
                    vae_input: &global_feature,
                    vae_reconstruction: &vae.reconstruction,
                    mu: &vae.mu,
                    logvar: &vae.logvar,
                    margin: &margin,
                },
                targets,
                &self.cfg.loss,
                self.cfg.postprocess.upsample_align_corners,
            )?),
            None => None,
        };
        Ok(HeadOutput {
            local_features,
            global_feature,
            vae,
            t_final,
            scale_maps,
            local_gates,
            scale_weights: v.scale_weights,
            fused_map,
            score_global: v.score_global,
            score_local: v.score_local,
            score: v.score,
            margin,
            loss,
        })
    }
}
