//! Every hyper-parameter of the SSVP head, its loss and its optimiser, with the paper's values as
//! defaults. Values the paper does not state are taken from Bayes-PFL (SSVP's baseline) or chosen
//! here; docs/method.md gives the source and the alternative of each.
//!
//! The config is read from TOML; unknown keys are rejected so a typo never silently falls back to
//! a default.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
pub use ssvp_features::config::{BackbonesConfig, DinoLayerSet, PosInterp, TapLayers, TINY};
use ssvp_features::BackboneIdentity;

/// How the local image score is read from the fused map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum LocalScore {
    /// `max_{h,w} P_map` (paper Eq. 18).
    #[default]
    Max,
    /// Mean of the `k` largest cells of `P_map` (one reading of Alg. 1's "Mean(SpatialMaxPool)").
    TopKMean {
        /// How many of the largest cells are averaged.
        k: usize,
    },
}

/// How the image-level classification loss treats the fused score `S_final ∈ [0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ClassLoss {
    /// Binary cross-entropy directly on `S_final` (already a probability), clamped to
    /// `[1e-6, 1 - 1e-6]`.
    #[default]
    BceOnScore,
    /// The paper's literal `BCE(σ(S_final), y)`; σ squashes [0, 1] into [0.5, 0.73].
    BceOnSigmoid,
}

/// The trainable head's architecture.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// 1-based CLIP block outputs, one per scale.
    pub clip_layers: Vec<usize>,
    /// The DINOv3 blocks tapped, one per scale (named quarter points or explicit blocks).
    pub dino_layers: DinoLayerSet,
    /// Joint CLIP image-text space `D_c` (CLIP patch features arrive after ln_post -> proj).
    pub clip_dim: usize,
    /// A trainable `Linear(D_c -> D_c)` per scale on the CLIP patch features before HSVS
    /// (`hsvs.clip_adapters.{l}`), starting at the identity so that the untrained head is
    /// unchanged; the "optional trainable linear" of docs/method.md #2.
    pub clip_adapter: bool,
    /// DINOv3 token width.
    pub dino_dim: usize,
    /// ATF cross-attention heads.
    pub atf_heads: usize,
    /// ATF attention width `d` (all heads together).
    pub atf_width: usize,
    /// Hidden width of the ATF fusion MLP (`2d -> hidden -> D_c`).
    pub atf_mlp_hidden: usize,
    /// Prompts per state (3 normal + 3 abnormal).
    pub prompts_per_state: usize,
    /// Learnable background (context) tokens per prompt index, `[V]_bg`.
    pub context_len: usize,
    /// Learnable state tokens per prompt, `[V]_state`.
    pub state_len: usize,
    /// Width of the CLIP text token embeddings the prompt tokens are spliced into.
    pub text_width: usize,
    /// Hidden width of the VAE's Softplus MLP blocks.
    pub vae_hidden: usize,
    /// VAE latent size `d_z`.
    pub vae_latent: usize,
    /// The latent is read as `latent_tokens` tokens of `vae_latent / latent_tokens` each, so the
    /// text-latent cross-attention has several keys (one key would make the softmax trivially 1).
    pub latent_tokens: usize,
    /// Query/key width of the text-latent cross-attention.
    pub inject_key_dim: usize,
    /// Initial temperature `τ` of the cosine logits.
    pub tau_init: f64,
    /// Whether `τ` is trained (stored as `ln(1/τ)`).
    pub tau_learnable: bool,
    /// Hidden width of the global scale-gate MLP.
    pub scale_gate_hidden: usize,
    /// Initial bias of the local spatial gates (sigmoid(2) ≈ 0.88, so gates start open).
    pub local_gate_bias_init: f64,
    /// Weight of the local score in `S = (1-γ) S_global + γ S_local`.
    pub gamma: f64,
    /// How the local score is read from the fused map (`S_local`).
    pub local_score: LocalScore,
    /// LayerNorm epsilon used throughout the head.
    pub ln_eps: f64,
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            clip_layers: TapLayers::paper().clip,
            dino_layers: TapLayers::paper().dino,
            clip_dim: 768,
            clip_adapter: false,
            dino_dim: 1024,
            atf_heads: 8,
            atf_width: 768,
            atf_mlp_hidden: 768,
            prompts_per_state: 3,
            context_len: 5,
            state_len: 5,
            text_width: 768,
            vae_hidden: 512,
            vae_latent: 768,
            latent_tokens: 8,
            inject_key_dim: 128,
            tau_init: 0.07,
            tau_learnable: true,
            scale_gate_hidden: 384,
            local_gate_bias_init: 2.0,
            gamma: 0.5,
            local_score: LocalScore::Max,
            ln_eps: 1e-5,
        }
    }
}

impl ModelConfig {
    /// Scales `L` of the head (one per tapped CLIP block).
    pub fn num_scales(&self) -> usize {
        self.clip_layers.len()
    }

    /// Prompts `2P`: `P` normal and `P` abnormal.
    pub fn num_prompts(&self) -> usize {
        2 * self.prompts_per_state
    }

    /// The blocks the backbones tap for this head: `clip_layers` and the DINO layer set.
    pub fn taps(&self) -> TapLayers {
        TapLayers {
            clip: self.clip_layers.clone(),
            dino: self.dino_layers,
        }
    }

    /// The 1-based CLIP and DINO blocks for backbones of the given depths (see
    /// [`TapLayers::resolve`]). A block past a depth is an error that says what to set instead.
    pub fn backbone_layers(
        &self,
        clip_depth: usize,
        dino_depth: usize,
    ) -> Result<(Vec<usize>, Vec<usize>)> {
        Ok(self.taps().resolve(clip_depth, dino_depth)?)
    }

    /// Checks that these backbones feed this head: `clip_dim`, `dino_dim` and `text_width`
    /// must equal the towers' widths (a vision-only CLIP has no text width to check).
    pub fn check_backbones(&self, identity: &BackboneIdentity) -> Result<()> {
        let mismatch = |name: &str, head: usize, tower: usize, what: &str| {
            Error::Config(format!(
                "model.{name} = {head} but the {what} is {tower} wide; set model.{name} = {tower}"
            ))
        };
        if self.clip_dim != identity.clip_dim {
            return Err(mismatch(
                "clip_dim",
                self.clip_dim,
                identity.clip_dim,
                "CLIP joint space",
            ));
        }
        if self.dino_dim != identity.dino_dim {
            return Err(mismatch(
                "dino_dim",
                self.dino_dim,
                identity.dino_dim,
                "DINOv3 token",
            ));
        }
        if identity.text_width != 0 && self.text_width != identity.text_width {
            return Err(mismatch(
                "text_width",
                self.text_width,
                identity.text_width,
                "CLIP text token embedding",
            ));
        }
        Ok(())
    }

    /// Width of one latent token.
    pub fn latent_token_dim(&self) -> usize {
        self.vae_latent / self.latent_tokens
    }

    /// Checks the divisibility and non-emptiness constraints the modules rely on.
    pub fn validate(&self) -> Result<()> {
        let bad = |msg: String| Err(Error::Config(msg));
        if self.clip_layers.is_empty() {
            return bad("clip_layers must name at least one layer".into());
        }
        if self.clip_layers.len() != self.dino_layers.one_based().len() {
            return bad(format!(
                "clip_layers has {} entries but the DINO layer set has {}",
                self.clip_layers.len(),
                self.dino_layers.one_based().len()
            ));
        }
        if self.atf_heads == 0 || self.atf_width % self.atf_heads != 0 {
            return bad(format!(
                "atf_width {} must be a positive multiple of atf_heads {}",
                self.atf_width, self.atf_heads
            ));
        }
        if self.latent_tokens == 0 || self.vae_latent % self.latent_tokens != 0 {
            return bad(format!(
                "vae_latent {} must be a positive multiple of latent_tokens {}",
                self.vae_latent, self.latent_tokens
            ));
        }
        if self.prompts_per_state == 0 {
            return bad("prompts_per_state must be positive".into());
        }
        if self.tau_init.is_nan() || self.tau_init <= 0.0 {
            return bad(format!("tau_init must be positive, got {}", self.tau_init));
        }
        if !(0.0..=1.0).contains(&self.gamma) {
            return bad(format!("gamma must lie in [0, 1], got {}", self.gamma));
        }
        if let LocalScore::TopKMean { k: 0 } = self.local_score {
            return bad("local_score top_k_mean needs k >= 1".into());
        }
        for (name, v) in [
            ("clip_dim", self.clip_dim),
            ("dino_dim", self.dino_dim),
            ("atf_mlp_hidden", self.atf_mlp_hidden),
            ("context_len", self.context_len),
            ("state_len", self.state_len),
            ("text_width", self.text_width),
            ("vae_hidden", self.vae_hidden),
            ("inject_key_dim", self.inject_key_dim),
            ("scale_gate_hidden", self.scale_gate_hidden),
        ] {
            if v == 0 {
                return bad(format!("{name} must be positive"));
            }
        }
        Ok(())
    }
}

/// Loss weights and switches (paper Eqs. 20-22).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LossConfig {
    /// `β` on the KL term inside `L_VAE`.
    pub kl_beta: f64,
    /// `λ1` on `L_VAE`.
    pub vae_weight: f64,
    /// `λ2` on the margin regulariser.
    pub margin_weight: f64,
    /// Cosine floor `ξ` of the margin regulariser.
    pub margin_floor: f64,
    /// Focal focusing parameter.
    pub focal_gamma: f64,
    /// Segmentation losses on every per-scale map `P_anom^(l)` (paper Eq. 20 text).
    pub seg_on_scales: bool,
    /// Segmentation losses on the fused map `P_map` (paper Alg. 3).
    pub seg_on_fused: bool,
    /// Dice loss on the abnormal channel next to the focal loss (Bayes-PFL / AnomalyCLIP).
    pub dice: bool,
    /// Loss of the image score.
    pub class_loss: ClassLoss,
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            kl_beta: 0.1,
            vae_weight: 1.0,
            margin_weight: 0.5,
            margin_floor: 0.85,
            focal_gamma: 2.0,
            seg_on_scales: true,
            seg_on_fused: true,
            dice: true,
            class_loss: ClassLoss::BceOnScore,
        }
    }
}

/// Optimiser and schedule (paper §4.2; betas and warm-up from Bayes-PFL).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimConfig {
    /// Learning rate of the prompt embeddings and the injection gate `α`.
    pub lr_prompts: f64,
    /// Learning rate of everything else (HSVS, VAE, injection attention, VTAM, `τ`).
    pub lr_rest: f64,
    /// Adam's first-moment decay.
    pub beta1: f64,
    /// Adam's second-moment decay.
    pub beta2: f64,
    /// Adam's denominator epsilon.
    pub eps: f64,
    /// Decoupled (AdamW) weight decay; 0 gives plain Adam.
    pub weight_decay: f64,
    /// Fraction of all steps spent in linear warm-up before the cosine decay.
    pub warmup_fraction: f64,
    /// Decay the learning rate along a cosine after the warm-up (else keep it constant).
    pub cosine_decay: bool,
    /// Passes over the training data.
    pub epochs: usize,
    /// Images per optimiser step.
    pub batch_size: usize,
    /// Seed of the shuffling, the VAE noise and the augmentation plans.
    pub seed: u64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        Self {
            lr_prompts: 5e-4,
            lr_rest: 1e-4,
            beta1: 0.5,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            warmup_fraction: 0.1,
            cosine_decay: true,
            epochs: 15,
            batch_size: 8,
            seed: 111,
        }
    }
}

impl OptimConfig {
    /// Refuses a schedule that cannot run: no epochs, or empty batches.
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 || self.batch_size == 0 {
            return Err(Error::Config(format!(
                "optim.epochs and optim.batch_size must be positive (got {} and {})",
                self.epochs, self.batch_size
            )));
        }
        Ok(())
    }
}

/// When the 2 x 2 mosaic of [`AugmentConfig`] may replace a training image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MosaicWhen {
    /// Only when training on the MVTec-AD layout (the baseline's rule).
    MvtecOnly,
    /// On any data.
    Always,
    /// Never.
    Never,
}

/// Training-time augmentation (Bayes-PFL's albumentations pipeline, docs/method.md #11).
///
/// Off by default: augmented pixels need fresh backbone passes every epoch, so they bypass the
/// feature cache and multiply the cost of training by the number of epochs. The probabilities
/// and ranges are the baseline's; each transform is drawn independently per image, in the
/// baseline's order (mosaic, rotation, quarter turns, brightness/contrast, noise, one of
/// blur / colour jitter / Gaussian blur).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AugmentConfig {
    /// Augment training images at all (`--augment`).
    pub enabled: bool,
    /// Probability and range (± degrees) of a free rotation with mirrored borders.
    pub rotate_p: f64,
    /// Largest free rotation, in degrees either way.
    pub rotate_limit: f64,
    /// Probability of `k` quarter turns, `k` uniform in 0..4.
    pub rot90_p: f64,
    /// Probability and ranges of `v * (1 + c) + b * 255`, `c` and `b` uniform in ± the limits.
    pub brightness_contrast_p: f64,
    /// Largest brightness shift `b`.
    pub brightness_limit: f64,
    /// Largest contrast change `c`.
    pub contrast_limit: f64,
    /// Probability of additive Gaussian noise, its variance uniform in `noise_var`.
    pub noise_p: f64,
    /// `[min, max]` of the noise variance (in 0..255 pixel units squared).
    pub noise_var: [f64; 2],
    /// Probability of one of 3 x 3 box blur, colour jitter (±0.2 brightness, contrast, saturation
    /// and hue) or Gaussian blur (kernel 3, 5 or 7), chosen uniformly.
    pub blur_p: f64,
    /// Probability that an image is replaced by a 2 x 2 mosaic of four anomalous images of its
    /// category, and on which data.
    pub mosaic_p: f64,
    /// On which data the mosaic may apply.
    pub mosaic: MosaicWhen,
}

impl Default for AugmentConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            rotate_p: 0.5,
            rotate_limit: 30.0,
            rot90_p: 0.5,
            brightness_contrast_p: 0.5,
            brightness_limit: 0.2,
            contrast_limit: 0.2,
            noise_p: 0.5,
            noise_var: [10.0, 50.0],
            blur_p: 0.5,
            mosaic_p: 0.4,
            mosaic: MosaicWhen::MvtecOnly,
        }
    }
}

impl AugmentConfig {
    /// Refuses probabilities outside [0, 1], negative limits and an empty noise range.
    pub fn validate(&self) -> Result<()> {
        let probabilities = [
            ("rotate_p", self.rotate_p),
            ("rot90_p", self.rot90_p),
            ("brightness_contrast_p", self.brightness_contrast_p),
            ("noise_p", self.noise_p),
            ("blur_p", self.blur_p),
            ("mosaic_p", self.mosaic_p),
        ];
        for (name, p) in probabilities {
            if !(0.0..=1.0).contains(&p) {
                return Err(Error::Config(format!(
                    "augment.{name} must be a probability in [0, 1], got {p}"
                )));
            }
        }
        let limits = [
            ("rotate_limit", self.rotate_limit),
            ("brightness_limit", self.brightness_limit),
            ("contrast_limit", self.contrast_limit),
        ];
        for (name, v) in limits {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::Config(format!(
                    "augment.{name} must be finite and non-negative, got {v}"
                )));
            }
        }
        let [lo, hi] = self.noise_var;
        if !(lo.is_finite() && hi.is_finite() && 0.0 <= lo && lo <= hi) {
            return Err(Error::Config(format!(
                "augment.noise_var must be [min, max] with 0 <= min <= max, got [{lo}, {hi}]"
            )));
        }
        Ok(())
    }
}

/// Test-time post-processing (`[postprocess]`), shared with every consumer of maps.
pub use ssvp_eval::postprocess::PostprocessConfig;

/// The whole SSVP configuration; `Default` is the paper's setting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct SsvpConfig {
    /// The frozen towers: weights, input sizes, dtype.
    pub backbones: BackbonesConfig,
    /// The head's widths, taps and gates.
    pub model: ModelConfig,
    /// The training losses and their weights.
    pub loss: LossConfig,
    /// Optimiser, schedule, epochs and batch size.
    pub optim: OptimConfig,
    /// Training-time augmentation (off by default).
    pub augment: AugmentConfig,
    /// Post-processing of the anomaly maps at test time.
    pub postprocess: PostprocessConfig,
}

impl SsvpConfig {
    /// Parses TOML; missing keys take their defaults, unknown keys are an error.
    pub fn from_toml_str(text: &str) -> Result<Self> {
        let cfg: Self =
            toml::from_str(text).map_err(|e| Error::Config(format!("invalid SSVP config: {e}")))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the head and the backbone settings.
    pub fn validate(&self) -> Result<()> {
        self.backbones.validate()?;
        self.augment.validate()?;
        self.optim.validate()?;
        self.model.validate()
    }

    /// The `tiny` setting: seeded backbones of a few hundred thousand parameters (CLIP and
    /// DINOv3 width 64, 4 blocks, an 8 x 8 patch grid) and a head sized to them, so the whole
    /// pipeline (train, eval, detect) runs in seconds with no weights files.
    pub fn tiny() -> Self {
        let mut cfg = Self {
            backbones: BackbonesConfig::tiny(),
            ..Self::default()
        };
        let m = &mut cfg.model;
        let taps = TapLayers::tiny();
        m.clip_layers = taps.clip;
        m.dino_layers = taps.dino;
        m.clip_dim = 64;
        m.dino_dim = 64;
        m.text_width = 64;
        m.atf_heads = 4;
        m.atf_width = 64;
        m.atf_mlp_hidden = 64;
        m.vae_hidden = 64;
        m.vae_latent = 64;
        m.latent_tokens = 8;
        m.inject_key_dim = 32;
        m.scale_gate_hidden = 32;
        cfg
    }

    /// The config as pretty TOML (what a run directory's `config.toml` holds).
    pub fn to_toml_string(&self) -> Result<String> {
        toml::to_string_pretty(self)
            .map_err(|e| Error::Serialize(format!("cannot write SSVP config: {e}")))
    }

    /// The config a command runs with: the file at `path` (missing keys: the paper's values) or
    /// the default, with a backbones preset (`ssvp_features::presets`) applied. `Some("tiny")`
    /// alone gives [`SsvpConfig::tiny`] (a head sized for the tiny towers). With a file a preset
    /// replaces only the `[backbones]` section; without one it also sets the taps. The head
    /// fits only presets with CLIP and DINOv3 of its widths (`paper`, `tiny`): loading the
    /// towers checks that.
    pub fn load(path: Option<&std::path::Path>, preset: Option<&str>) -> Result<Self> {
        let chosen = preset
            .map(ssvp_features::presets::preset)
            .transpose()
            .map_err(|e| Error::Config(e.to_string()))?;
        let cfg = match (path, chosen) {
            (Some(p), chosen) => {
                let mut cfg = Self::from_toml_file(p)?;
                if let Some(chosen) = chosen {
                    cfg.backbones = chosen.config;
                }
                cfg
            }
            (None, Some(chosen)) if chosen.name == TINY => Self::tiny(),
            (None, Some(chosen)) if !chosen.has_clip() => {
                return Err(Error::Config(format!(
                    "the SSVP head reads CLIP and DINOv3; the `{}` backbones have no CLIP tower \
                     (they serve --normal, --bank and --mutual): use --backbones paper or tiny",
                    chosen.name
                )))
            }
            (None, Some(chosen)) => {
                let mut cfg = Self {
                    backbones: chosen.config,
                    ..Self::default()
                };
                cfg.model.clip_layers = chosen.taps.clip;
                cfg.model.dino_layers = chosen.taps.dino;
                cfg
            }
            (None, None) => Self::default(),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads and validates a TOML file; a file that cannot be read is [`Error::NotFound`] or
    /// [`Error::Io`], one that does not parse [`Error::Config`].
    pub fn from_toml_file(path: impl AsRef<std::path::Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_toml_str(&text).map_err(|e| match e {
            Error::Config(m) => Error::Config(format!("{}: {m}", path.display())),
            other => other,
        })
    }
}
