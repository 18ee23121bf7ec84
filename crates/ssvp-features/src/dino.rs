//! [`DinoTower`]: the self-supervised tower of a set of backbones, DINOv3 (the paper's) or
//! DINOv2 (AnomalyDINO's and MuSc's, ungated), behind one interface: the blocks it taps, where
//! it stops, its width, patch and prefix tokens, and the preprocessing its weights expect.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use ssvp_backbones::dinov2::{self, Dinov2Model};
use ssvp_backbones::dinov3::{self, Dinov3Model};
use ssvp_backbones::weights::{resolve_hf_or_meta, seeded_var_builder, ResolvedFiles};
use ssvp_image::Preprocess;

use crate::config::{BackbonesConfig, DinoArch, TINY};
use crate::error::{Error, Result};
use crate::identity::weights_fingerprint;
use crate::tiny::tiny_dino_config;

/// A loaded DINO tower.
#[derive(Debug)]
pub enum DinoTower {
    /// DINOv3: 2D RoPE, registers, patch 16.
    V3(Dinov3Model),
    /// DINOv2: interpolated learned position embeddings, optional registers, patch 14.
    V2(Dinov2Model),
}

/// Hidden states of the requested blocks, final-normed, with the last block's normed CLS when
/// the whole tower ran.
pub struct DinoPass {
    /// `(block, [B, tokens, D])` in request order.
    pub hidden: Vec<(usize, Tensor)>,
    /// `[B, D]`, or `None` when the tower stopped early.
    pub cls: Option<Tensor>,
    /// The patch grid `(h, w)`.
    pub grid: (usize, usize),
}

impl From<Dinov3Model> for DinoTower {
    fn from(model: Dinov3Model) -> Self {
        Self::V3(model)
    }
}

impl From<Dinov2Model> for DinoTower {
    fn from(model: Dinov2Model) -> Self {
        Self::V2(model)
    }
}

impl DinoTower {
    /// Loads the `dino` weights of `cfg` (or builds the seeded tiny DINOv3 for `tiny`), with the
    /// content fingerprint recorded in the identity.
    pub fn load(
        cfg: &BackbonesConfig,
        tiny_seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<(Self, String)> {
        if cfg.dino == TINY {
            let vb = seeded_var_builder(tiny_seed, dtype, device);
            let model = Dinov3Model::new(&tiny_dino_config(), vb)
                .map_err(|e| Error::backbone("building the tiny DINOv3", e))?;
            return Ok((Self::V3(model), format!("seeded:{tiny_seed}")));
        }
        let arch = cfg.dino_arch_by_name();
        let name = match arch {
            DinoArch::Dinov2 => "DINOv2",
            DinoArch::Dinov3 => "DINOv3",
            DinoArch::Auto => "DINO",
        };
        // DINOv2 and DINOv3 ship alike (model.safetensors + config.json, or a Meta .pth): an
        // undecided name is settled by the config's `model_type`.
        let files = resolve_hf_or_meta(&cfg.dino, name).map_err(|e| {
            Error::loading(name, &cfg.dino, "--dino-weights", cfg.preset.as_deref(), e)
        })?;
        let arch = match arch {
            DinoArch::Auto if config_says_dinov2(files.config.as_deref()) => DinoArch::Dinov2,
            DinoArch::Auto => DinoArch::Dinov3,
            fixed => fixed,
        };
        let tower = Self::from_files(arch, &files, None, dtype, device)?;
        Ok((tower, weights_fingerprint(&files.weights)?))
    }

    /// Loads weights already resolved as `arch` (DINOv3 or DINOv2; `Auto` reads DINOv3), with
    /// the config of a named architecture preset (`dinov2_vits14`, `dinov3_vitl16`, ...) when
    /// given, else the weights' `config.json` or their shapes.
    pub fn from_files(
        arch: DinoArch,
        files: &ResolvedFiles,
        preset: Option<&str>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let unknown = |name: &str, known: &[&str]| {
            Error::Config(format!(
                "unknown {name} preset `{}`; known: {known:?}",
                preset.unwrap_or("")
            ))
        };
        let loading = |name: &str| format!("loading {name} weights `{}`", files.origin);
        Ok(match arch {
            DinoArch::Dinov2 => {
                let config = preset
                    .map(|p| {
                        dinov2::Dinov2Config::preset(p)
                            .ok_or_else(|| unknown("DINOv2", &dinov2::PRESETS))
                    })
                    .transpose()?;
                Self::V2(
                    Dinov2Model::load_files(files, config, dtype, device)
                        .map_err(|e| Error::backbone(loading("DINOv2"), e))?,
                )
            }
            _ => {
                let config = preset
                    .map(|p| {
                        dinov3::Dinov3Config::preset(p)
                            .ok_or_else(|| unknown("DINOv3", &dinov3::PRESETS))
                    })
                    .transpose()?;
                Self::V3(
                    Dinov3Model::load_files(files, config, dtype, device)
                        .map_err(|e| Error::backbone(loading("DINOv3"), e))?,
                )
            }
        })
    }

    /// The patch grid of an input of `height` x `width` pixels, or why it does not work.
    pub fn grid_for(&self, height: usize, width: usize) -> Result<(usize, usize)> {
        let input = |e| Error::backbone(format!("the {} input size", self.name()), e);
        match self {
            Self::V3(m) => m.grid_for(height, width).map_err(input),
            Self::V2(m) => m.grid_for(height, width).map_err(input),
        }
    }

    /// Register tokens after the CLS.
    pub fn num_registers(&self) -> usize {
        self.num_prefix_tokens() - 1
    }

    /// The tensors `ssvp embed` writes (`hidden.<block>`, `cls`, `patch`) of the first image of
    /// `pixels`, every block run, the requested states final-normed when `norm_hidden`.
    pub fn embed_tensors(
        &self,
        pixels: &Tensor,
        blocks: &[usize],
        norm_hidden: bool,
    ) -> Result<Vec<(String, Tensor)>> {
        let running = |e| Error::backbone(format!("running {}", self.name()), e);
        let outputs = |e| Error::backbone(format!("the {} outputs", self.name()), e);
        match self {
            Self::V3(m) => m
                .forward(pixels, blocks, norm_hidden)
                .map_err(running)?
                .embed_tensors(0)
                .map_err(outputs),
            Self::V2(m) => m
                .forward(pixels, blocks, norm_hidden)
                .map_err(running)?
                .embed_tensors(0)
                .map_err(outputs),
        }
    }

    /// `DINOv3` or `DINOv2`, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Self::V3(_) => "DINOv3",
            Self::V2(_) => "DINOv2",
        }
    }

    /// The DINOv3 model, if this is one.
    pub fn dinov3(&self) -> Option<&Dinov3Model> {
        match self {
            Self::V3(m) => Some(m),
            Self::V2(_) => None,
        }
    }

    /// The DINOv2 model, if this is one.
    pub fn dinov2(&self) -> Option<&Dinov2Model> {
        match self {
            Self::V2(m) => Some(m),
            Self::V3(_) => None,
        }
    }

    /// Number of blocks.
    pub fn depth(&self) -> usize {
        match self {
            Self::V3(m) => m.config().num_hidden_layers,
            Self::V2(m) => m.config().num_hidden_layers,
        }
    }

    /// Token width.
    pub fn width(&self) -> usize {
        match self {
            Self::V3(m) => m.config().hidden_size,
            Self::V2(m) => m.config().hidden_size,
        }
    }

    /// Patch side in pixels.
    pub fn patch_size(&self) -> usize {
        match self {
            Self::V3(m) => m.config().patch_size,
            Self::V2(m) => m.config().patch_size,
        }
    }

    /// CLS plus register tokens ahead of the patches.
    pub fn num_prefix_tokens(&self) -> usize {
        match self {
            Self::V3(m) => m.config().num_prefix_tokens(),
            Self::V2(m) => m.config().num_prefix_tokens(),
        }
    }

    /// The input recipe of these weights at `size` x `size`: DINOv3's float bilinear
    /// antialiased resize (SAT-493M weights with their own constants), DINOv2's as AnomalyDINO
    /// runs it (Pillow bicubic, ImageNet mean/std).
    pub fn preprocess(&self, cfg: &BackbonesConfig) -> Preprocess {
        match self {
            Self::V3(_) if cfg.dino.to_ascii_lowercase().contains("sat493m") => {
                Preprocess::dinov3_sat(cfg.dino_size)
            }
            Self::V3(_) => Preprocess::dinov3(cfg.dino_size),
            Self::V2(_) => Preprocess::dinov2(cfg.dino_size),
        }
    }

    /// Runs the tower on normalised pixels. With `whole`, every block runs and the final CLS
    /// is returned; otherwise the tower stops after the deepest of `blocks`. The states are
    /// final-normed, as AnomalyDINO and MuSc read them.
    pub fn run(&self, pixels: &Tensor, blocks: &[usize], whole: bool) -> Result<DinoPass> {
        Ok(match (self, whole) {
            (Self::V3(m), true) => {
                let out = m.forward(pixels, blocks, true)?;
                DinoPass {
                    hidden: out.hidden,
                    cls: Some(out.cls),
                    grid: out.grid,
                }
            }
            (Self::V3(m), false) => {
                let (hidden, grid) = m.forward_blocks(pixels, blocks, true)?;
                DinoPass {
                    hidden,
                    cls: None,
                    grid,
                }
            }
            (Self::V2(m), true) => {
                let out = m.forward(pixels, blocks, true)?;
                DinoPass {
                    hidden: out.hidden,
                    cls: Some(out.cls),
                    grid: out.grid,
                }
            }
            (Self::V2(m), false) => {
                let (hidden, grid) = m.forward_blocks(pixels, blocks, true)?;
                DinoPass {
                    hidden,
                    cls: None,
                    grid,
                }
            }
        })
    }

    /// Multiply-add work of one image at `grid` through `through` blocks, in FLOPs.
    pub fn flops(&self, grid: (usize, usize), through: usize) -> f64 {
        match self {
            Self::V3(m) => m.flops(grid, through),
            Self::V2(m) => m.flops(grid, through),
        }
    }
}

/// Whether a `config.json` names a DINOv2 (`model_type` `dinov2` or `dinov2_with_registers`).
fn config_says_dinov2(config: Option<&Path>) -> bool {
    let Some(path) = config else { return false };
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v.get("model_type")?.as_str().map(str::to_owned))
        .is_some_and(|t| t.starts_with("dinov2"))
}
