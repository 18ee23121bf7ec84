//! The backbones' settings: which weights, at which input sizes and precision
//! ([`BackbonesConfig`], the `[backbones]` section of an SSVP config), and which blocks are
//! tapped ([`TapLayers`]).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Which DINOv3 blocks feed the four HSVS scales.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DinoLayerSet {
    /// The paper's "3, 6, 9, 11" read as 0-based block indices: 1-based blocks 4, 7, 10, 12.
    #[default]
    PaperLiteral,
    /// Quarter points of a 24-block ViT-L (AD-DINOv3's choice): 1-based blocks 6, 12, 18, 24.
    QuarterPoints,
}

impl DinoLayerSet {
    /// 1-based block outputs, in scale order, for the paper's 24-block ViT-L.
    pub fn one_based(&self) -> [usize; 4] {
        match self {
            Self::PaperLiteral => [4, 7, 10, 12],
            Self::QuarterPoints => [6, 12, 18, 24],
        }
    }

    /// The blocks for a model of `depth` blocks: the literal indices stay as they are (they name
    /// blocks, not fractions of the depth); quarter points are those of `depth` (a 4-block model
    /// gives 1, 2, 3, 4). A block past the depth is an error.
    pub fn resolve(&self, depth: usize) -> Result<Vec<usize>> {
        let blocks: Vec<usize> = match self {
            Self::PaperLiteral => self.one_based().to_vec(),
            Self::QuarterPoints => {
                if depth == 0 {
                    return Err(Error::Config("the DINO model has no blocks".into()));
                }
                // A model of fewer than 4 blocks taps some twice (2 blocks: 1, 1, 2, 2).
                (1..=4).map(|q| (q * depth).div_ceil(4)).collect()
            }
        };
        check_blocks(
            "dino",
            &blocks,
            depth,
            "set model.dino_layers = \"quarter_points\"",
        )?;
        Ok(blocks)
    }
}

/// Every block lies in `1..=depth`.
pub fn check_blocks(tower: &str, blocks: &[usize], depth: usize, hint: &str) -> Result<()> {
    if let Some(&bad) = blocks.iter().find(|&&b| b == 0 || b > depth) {
        return Err(Error::Config(format!(
            "{tower} layer {bad} (of {blocks:?}) is outside the {tower} backbone's blocks 1..={depth}; {hint}"
        )));
    }
    Ok(())
}

/// The 1-based blocks of each tower whose tokens are read, one per scale.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TapLayers {
    /// CLIP blocks, as written (`model.clip_layers`).
    pub clip: Vec<usize>,
    /// The DINOv3 block set, resolved against the tower's depth.
    pub dino: DinoLayerSet,
}

impl TapLayers {
    /// The paper's taps: CLIP blocks 6, 12, 18, 24 and DINOv3's literal 4, 7, 10, 12.
    pub fn paper() -> Self {
        Self {
            clip: vec![6, 12, 18, 24],
            dino: DinoLayerSet::PaperLiteral,
        }
    }

    /// The taps of the `tiny` towers (4 blocks each): every CLIP block, DINOv3's quarter points.
    pub fn tiny() -> Self {
        Self {
            clip: vec![1, 2, 3, 4],
            dino: DinoLayerSet::QuarterPoints,
        }
    }

    /// The 1-based CLIP and DINO blocks for towers of the given depths: the CLIP blocks as
    /// written, the DINO set resolved against the DINO depth (see [`DinoLayerSet::resolve`]).
    pub fn resolve(
        &self,
        clip_depth: usize,
        dino_depth: usize,
    ) -> Result<(Vec<usize>, Vec<usize>)> {
        let quarters: Vec<usize> = (1..=4).map(|q| (q * clip_depth).div_ceil(4)).collect();
        check_blocks(
            "clip",
            &self.clip,
            clip_depth,
            &format!("set model.clip_layers, e.g. to the quarter points {quarters:?}"),
        )?;
        Ok((self.clip.clone(), self.dino.resolve(dino_depth)?))
    }
}

/// How CLIP's trained positional grid is resampled to the input's patch grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum PosInterp {
    /// torch bicubic (HF `interpolate_pos_encoding`, open_clip, Bayes-PFL).
    #[default]
    Bicubic,
    /// torch bilinear (AnomalyCLIP).
    Bilinear,
}

impl PosInterp {
    /// The name recorded in a [`crate::BackboneIdentity`].
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Bicubic => "bicubic",
            Self::Bilinear => "bilinear",
        }
    }
}

/// The preset name that selects the seeded few-hundred-thousand-parameter backbones.
pub const TINY: &str = "tiny";

/// The weights name of a tower that is not loaded (`clip = "none"`: DINO-only presets).
pub const NO_TOWER: &str = "none";

/// Which DINO architecture the `dino` weights are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DinoArch {
    /// From the weights: DINOv2 when their name or `config.json` says so, else DINOv3.
    #[default]
    Auto,
    /// DINOv3 (RoPE, registers; patch 16).
    Dinov3,
    /// DINOv2 (learned position embeddings, optional registers; patch 14).
    Dinov2,
}

impl DinoArch {
    /// Whether this is the default ([`DinoArch::Auto`]), which a config file need not spell.
    pub fn is_auto(&self) -> bool {
        *self == Self::Auto
    }
}

/// The frozen backbones and their input sizes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackbonesConfig {
    /// The named preset these settings come from (`ssvp_features::presets`), recorded so that
    /// a bank, calibration or run can say which backbones it was made with; `None` for
    /// settings written by hand.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// CLIP weights: a local file or directory, a hub id, `"tiny"` (seeded random weights) or
    /// `"none"` (no CLIP tower: the DINO-only presets).
    pub clip: String,
    /// DINO weights: a local file or directory, a hub id, or `"tiny"`.
    pub dino: String,
    /// Which DINO the `dino` weights are (default: from their name or `config.json`).
    #[serde(skip_serializing_if = "DinoArch::is_auto")]
    pub dino_arch: DinoArch,
    /// CLIP input side in pixels (square); a multiple of CLIP's patch size.
    pub clip_size: usize,
    /// DINOv3 input side in pixels (square); a multiple of DINO's patch size (16).
    pub dino_size: usize,
    /// Compute dtype of both backbones: `f32`, `f16` or `bf16`.
    pub dtype: String,
    /// How CLIP's trained positional grid is resampled to the input's grid.
    pub pos_interp: PosInterp,
    /// First CLIP block (1-based) running AnomalyCLIP's V-V dual-path attention; none = plain
    /// attention, as Bayes-PFL (SSVP's baseline) runs CLIP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dpam_from: Option<usize>,
    /// Seed of the `tiny` backbones' weights (ignored for real weights).
    pub seed: u64,
}

impl Default for BackbonesConfig {
    fn default() -> Self {
        // 518 / 14 = 592 / 16 = 37: both towers see the same 37 x 37 patch grid.
        Self {
            preset: None,
            clip: "openai/clip-vit-large-patch14-336".into(),
            dino: "facebook/dinov3-vitl16-pretrain-lvd1689m".into(),
            dino_arch: DinoArch::Auto,
            clip_size: 518,
            dino_size: 592,
            dtype: "f32".into(),
            pos_interp: PosInterp::Bicubic,
            dpam_from: None,
            seed: 7,
        }
    }
}

impl BackbonesConfig {
    /// Whether a CLIP tower is loaded (`clip` is not `"none"`).
    pub fn has_clip(&self) -> bool {
        self.clip.trim() != NO_TOWER
    }

    /// The DINO architecture: [`DinoArch::Auto`] decided from the weights' name (`dinov2` or
    /// `dinov3` in it); otherwise a local directory's `config.json` is read by the loader, which
    /// has it at hand.
    pub fn dino_arch_by_name(&self) -> DinoArch {
        let name = self.dino.to_ascii_lowercase();
        match self.dino_arch {
            DinoArch::Auto if name.contains("dinov2") => DinoArch::Dinov2,
            DinoArch::Auto if name.contains("dinov3") => DinoArch::Dinov3,
            other => other,
        }
    }

    /// The `tiny` backbones at an 8 x 8 patch grid (CLIP 8·14 px, DINO 8·16 px).
    pub fn tiny() -> Self {
        Self {
            preset: Some(TINY.into()),
            clip: TINY.into(),
            dino: TINY.into(),
            clip_size: 8 * 14,
            dino_size: 8 * 16,
            ..Self::default()
        }
    }

    /// Checks what can be checked without the weights (the patch sizes come with them).
    pub fn validate(&self) -> Result<()> {
        if self.clip.trim().is_empty() || self.dino.trim().is_empty() {
            return Err(Error::Config(
                "backbones.clip and backbones.dino must name weights (a path, a hub id or \"tiny\")"
                    .into(),
            ));
        }
        if self.clip_size == 0 || self.dino_size == 0 {
            return Err(Error::Config(
                "backbones.clip_size and backbones.dino_size must be positive".into(),
            ));
        }
        if !matches!(self.dtype.as_str(), "f32" | "f16" | "bf16") {
            return Err(Error::Config(format!(
                "backbones.dtype `{}` is not one of f32, f16, bf16",
                self.dtype
            )));
        }
        if self.dpam_from == Some(0) {
            return Err(Error::Config(
                "backbones.dpam_from is a 1-based block number".into(),
            ));
        }
        Ok(())
    }

    /// The patch grid side each tower sees, checked to agree: `(clip_size / clip_patch,
    /// dino_size / dino_patch)` must be equal integers.
    pub fn grid(&self, clip_patch: usize, dino_patch: usize) -> Result<usize> {
        let side = |name: &str, size: usize, patch: usize| {
            if patch == 0 || size % patch != 0 {
                return Err(Error::Config(format!(
                    "backbones.{name}_size {size} is not a multiple of the {name} patch size {patch}"
                )));
            }
            Ok(size / patch)
        };
        let d = side("dino", self.dino_size, dino_patch)?;
        if !self.has_clip() {
            return Ok(d);
        }
        let c = side("clip", self.clip_size, clip_patch)?;
        if c != d {
            return Err(Error::Config(format!(
                "backbones.clip_size {} gives a {c}x{c} CLIP grid but backbones.dino_size {} a \
                 {d}x{d} DINO grid; the token grids must match (e.g. clip_size = {}, dino_size = {})",
                self.clip_size,
                self.dino_size,
                c * clip_patch,
                c * dino_patch
            )));
        }
        Ok(c)
    }

    /// Sizes for one target grid: CLIP `grid · clip_patch`, DINO `grid · dino_patch`.
    pub fn with_grid(mut self, grid: usize, clip_patch: usize, dino_patch: usize) -> Self {
        self.clip_size = grid * clip_patch;
        self.dino_size = grid * dino_patch;
        self
    }
}

/// The backbone settings an artifact (a bank, a calibration, a bundle) was made with, so that
/// it can rebuild the same towers without the flags being repeated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackbonesRecord {
    /// Weights, sizes, preset name.
    pub backbones: BackbonesConfig,
    /// The tapped blocks.
    pub taps: TapLayers,
}

impl BackbonesRecord {
    /// The preset name, or the weights as named, for messages.
    pub fn describe(&self) -> String {
        match &self.backbones.preset {
            Some(p) => format!("preset `{p}`"),
            None if self.backbones.has_clip() => {
                format!("{} / {}", self.backbones.clip, self.backbones.dino)
            }
            None => self.backbones.dino.clone(),
        }
    }
}
