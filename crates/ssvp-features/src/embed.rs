//! The features of one tower on one image, every requested block's raw tokens and (CLIP) their
//! projections, as `ssvp embed` writes them: what a user compares against a reference
//! implementation, tower by tower, without the detector.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use ssvp_backbones::clip::tokenizer::ClipTokenizer;
use ssvp_backbones::clip::{
    Activation, ClipModel, ConfigChoice, LoadOptions, PosInterp, VisionOptions,
};
use ssvp_backbones::weights::resolve_hf_or_meta;
use ssvp_image::Preprocess;

use crate::config::DinoArch;
use crate::dino::DinoTower;
use crate::error::{Error, Result};

/// Which tower.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EmbedTower {
    /// CLIP (vision, and text for prompts).
    Clip,
    /// DINOv3.
    Dinov3,
    /// DINOv2 (with or without registers).
    Dinov2,
}

impl EmbedTower {
    /// `clip`, `dinov3` or `dinov2` (any case).
    pub fn parse(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "clip" => Ok(Self::Clip),
            "dinov3" => Ok(Self::Dinov3),
            "dinov2" => Ok(Self::Dinov2),
            other => Err(Error::Config(format!(
                "unknown backbone `{other}` (expected clip, dinov3 or dinov2)"
            ))),
        }
    }

    /// The name `--backbone` takes and the metadata records.
    pub fn name(self) -> &'static str {
        match self {
            Self::Clip => "clip",
            Self::Dinov3 => "dinov3",
            Self::Dinov2 => "dinov2",
        }
    }
}

/// How the input is resized.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resize {
    /// Straight to the input size, Pillow bicubic (the anomaly-detection convention).
    Squash,
    /// Shortest side to the size, then a centre crop (CLIP's original recipe; square only).
    Crop,
}

/// One image through one tower.
#[derive(Clone, Debug)]
pub struct EmbedRequest {
    /// The tower.
    pub tower: EmbedTower,
    /// Weights: a file, a directory or a hub id.
    pub weights: String,
    /// The image file.
    pub image: PathBuf,
    /// Input `(height, width)`; `None`: the tower's default square (CLIP 518, DINOv3 592,
    /// DINOv2 448).
    pub size: Option<(usize, usize)>,
    /// 1-based blocks; empty: the quarter points of the depth.
    pub layers: Vec<usize>,
    /// How the input is resized.
    pub resize: Resize,
    /// First block running AnomalyCLIP's V-V attention (CLIP only).
    pub dpam_from: Option<usize>,
    /// CLIP's positional-grid resampling.
    pub pos_interp: PosInterp,
    /// The final LayerNorm on the written block states.
    pub norm_layers: bool,
    /// DINOv3 with the SAT-493M normalisation (DINOv3 only).
    pub sat: bool,
    /// Prompts for the text tower (CLIP only).
    pub text: Vec<String>,
    /// An architecture preset for checkpoints without config.json.
    pub preset: Option<String>,
    /// An MLP activation override (CLIP only): `quick_gelu` or `gelu`.
    pub activation: Option<String>,
    /// Compute dtype: `f32`, `f16` or `bf16`.
    pub dtype: String,
    /// Where the tensors run.
    pub device: Device,
}

/// The written tensors and what made them.
pub struct Embedding {
    /// Named tensors (f32, and the i64 token ids), one image, batch dimension dropped.
    pub tensors: Vec<(String, Tensor)>,
    /// The file's metadata: tower, weights, input size, grid, options.
    pub metadata: HashMap<String, String>,
    /// The blocks written.
    pub blocks: Vec<usize>,
    /// The patch grid.
    pub grid: (usize, usize),
}

fn parse_dtype(s: &str) -> Result<DType> {
    match s.to_ascii_lowercase().as_str() {
        "f32" | "float32" => Ok(DType::F32),
        "f16" | "float16" | "half" => Ok(DType::F16),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        other => Err(Error::Config(format!(
            "unknown dtype `{other}` (expected f32, f16 or bf16)"
        ))),
    }
}

/// The quarter points of a depth (6, 12, 18, 24 for 24 blocks).
fn quarter_points(depth: usize) -> Vec<usize> {
    let mut q: Vec<usize> = (1..=4).map(|i| (depth * i / 4).max(1)).collect();
    q.dedup();
    q
}

impl EmbedRequest {
    /// Runs the request.
    pub fn run(&self) -> Result<Embedding> {
        match self.tower {
            EmbedTower::Clip => self.clip(),
            EmbedTower::Dinov3 => self.dino(DinoArch::Dinov3),
            EmbedTower::Dinov2 => self.dino(DinoArch::Dinov2),
        }
    }

    /// Refuses the CLIP-only options for a DINO tower rather than ignoring them.
    fn refuse_clip_options(&self) -> Result<()> {
        for (set, flag) in [
            (self.dpam_from.is_some(), "--dpam-from"),
            (!self.text.is_empty(), "--text"),
            (self.activation.is_some(), "--activation"),
            (self.resize != Resize::Squash, "--resize crop"),
        ] {
            if set {
                return Err(Error::Config(format!(
                    "{flag} applies to CLIP only, not to --backbone {}",
                    self.tower.name()
                )));
            }
        }
        Ok(())
    }

    fn input_size(&self, default: usize) -> (usize, usize) {
        self.size.unwrap_or((default, default))
    }

    fn load_image(&self) -> Result<ssvp_image::RgbImage8> {
        ssvp_image::load_rgb8(&self.image).map_err(|source| Error::Image {
            context: format!("reading image {}", self.image.display()),
            source,
        })
    }

    fn pixels(&self, recipe: &Preprocess) -> Result<Tensor> {
        let img = self.load_image()?;
        let chw = recipe.apply(&img).map_err(|source| Error::Image {
            context: format!("preprocessing {}", self.image.display()),
            source,
        })?;
        Ok(Tensor::from_vec(
            chw.data,
            (1, chw.channels, chw.height, chw.width),
            &self.device,
        )?)
    }

    fn clip(&self) -> Result<Embedding> {
        let loading = || format!("loading CLIP weights `{}`", self.weights);
        let opts = LoadOptions {
            config: match &self.preset {
                Some(p) => ConfigChoice::Preset(p.clone()),
                None => ConfigChoice::Auto,
            },
            activation: self
                .activation
                .as_deref()
                .map(Activation::parse)
                .transpose()
                .map_err(|e| Error::backbone("the --activation", e))?,
            dtype: parse_dtype(&self.dtype)?,
            device: self.device.clone(),
        };
        let model =
            ClipModel::load(&self.weights, &opts).map_err(|e| Error::backbone(loading(), e))?;
        let vision = model.vision().map_err(|e| Error::backbone(loading(), e))?;
        let layers = if self.layers.is_empty() {
            quarter_points(vision.config().num_hidden_layers)
        } else {
            self.layers.clone()
        };
        let (height, width) = self.input_size(518);
        let patch = vision.config().patch_size;
        if height % patch != 0 || width % patch != 0 {
            return Err(Error::Config(format!(
                "input {height}x{width} is not a multiple of the patch size {patch} (try --size {})",
                (height / patch).max(1) * patch
            )));
        }
        let recipe = match self.resize {
            Resize::Crop if height != width => {
                return Err(Error::Config(
                    "--resize crop needs a square input; use --size, not --height/--width".into(),
                ))
            }
            Resize::Crop => Preprocess::clip_center_crop(height),
            Resize::Squash => Preprocess::clip(width).with_size(width, height),
        };
        let pixels = self.pixels(&recipe)?;
        let out = vision
            .forward(
                &pixels,
                &VisionOptions {
                    layers: layers.clone(),
                    dpam_from: self.dpam_from,
                    pos_interp: self.pos_interp,
                },
            )
            .map_err(|e| Error::backbone("running CLIP", e))?;
        let mut tensors: Vec<(String, Tensor)> = Vec::new();
        for (i, block) in layers.iter().enumerate() {
            let hidden = if self.norm_layers {
                vision.post_layernorm(&out.hidden[i])?
            } else {
                out.hidden[i].clone()
            };
            tensors.push((format!("hidden.{block}"), hidden.squeeze(0)?));
            tensors.push((format!("patch.{block}"), out.patch[i].squeeze(0)?));
        }
        tensors.push(("image_embed".into(), out.image_embed.squeeze(0)?));
        if !self.text.is_empty() {
            let text = model
                .text()
                .map_err(|e| Error::backbone("the CLIP text tower", e))?;
            let context = text.config().max_position_embeddings;
            let tokenizer =
                ClipTokenizer::openai().map_err(|e| Error::backbone("the CLIP tokenizer", e))?;
            let mut rows = Vec::with_capacity(self.text.len() * context);
            for prompt in &self.text {
                rows.extend(
                    tokenizer
                        .tokenize(prompt, context, false)
                        .map_err(|e| Error::backbone(format!("tokenising `{prompt}`"), e))?,
                );
            }
            let ids = Tensor::from_vec(rows, (self.text.len(), context), &self.device)?;
            let embeds = text
                .text_embeds(&ids)
                .map_err(|e| Error::backbone("running the CLIP text tower", e))?;
            tensors.push(("text_embed".into(), embeds));
            tensors.push(("text_ids".into(), ids.to_dtype(DType::I64)?));
        }
        let metadata = HashMap::from([
            ("backbone".to_string(), "clip".to_string()),
            ("weights".to_string(), model.origin().to_string()),
            ("image".to_string(), self.image.display().to_string()),
            ("input_height".to_string(), height.to_string()),
            ("input_width".to_string(), width.to_string()),
            ("grid".to_string(), format!("{}x{}", out.grid.0, out.grid.1)),
            (
                "resize".to_string(),
                match self.resize {
                    Resize::Squash => "squash",
                    Resize::Crop => "crop",
                }
                .to_string(),
            ),
            (
                "pos_interp".to_string(),
                format!("{:?}", self.pos_interp).to_lowercase(),
            ),
            (
                "dpam_from".to_string(),
                self.dpam_from.map_or("none".into(), |d| d.to_string()),
            ),
            ("norm_layers".to_string(), self.norm_layers.to_string()),
            ("dtype".to_string(), self.dtype.to_ascii_lowercase()),
        ]);
        Ok(Embedding {
            tensors,
            metadata,
            blocks: layers,
            grid: out.grid,
        })
    }

    /// One DINO tower (DINOv3 or DINOv2) on the image: the same flags and output names for
    /// both; DINOv3 takes `--sat`, DINOv2 records its register count.
    fn dino(&self, arch: DinoArch) -> Result<Embedding> {
        self.refuse_clip_options()?;
        let (key, name, default_size) = match arch {
            DinoArch::Dinov2 => ("dinov2", "DINOv2", 448),
            _ => ("dinov3", "DINOv3", 592),
        };
        if self.sat && arch == DinoArch::Dinov2 {
            return Err(Error::Config(
                "--sat applies to DINOv3 only (DINOv2's weights are normalised with ImageNet's \
                 mean/std), not to --backbone dinov2"
                    .into(),
            ));
        }
        let files = resolve_hf_or_meta(&self.weights, name).map_err(|e| {
            Error::backbone(format!("resolving {name} weights `{}`", self.weights), e)
        })?;
        let tower = DinoTower::from_files(
            arch,
            &files,
            self.preset.as_deref(),
            parse_dtype(&self.dtype)?,
            &self.device,
        )?;
        let (height, width) = self.input_size(default_size);
        let grid = tower.grid_for(height, width)?;
        let blocks = if self.layers.is_empty() {
            quarter_points(tower.depth())
        } else {
            self.layers.clone()
        };
        let recipe = match arch {
            DinoArch::Dinov2 => Preprocess::dinov2(width),
            _ if self.sat => Preprocess::dinov3_sat(width),
            _ => Preprocess::dinov3(width),
        }
        .with_size(width, height);
        let pixels = self.pixels(&recipe)?;
        let tensors = tower.embed_tensors(&pixels, &blocks, self.norm_layers)?;
        let mut metadata = HashMap::from([
            ("backbone".to_string(), key.to_string()),
            ("weights".to_string(), files.origin.clone()),
            ("image".to_string(), self.image.display().to_string()),
            ("input_height".to_string(), height.to_string()),
            ("input_width".to_string(), width.to_string()),
            ("grid".to_string(), format!("{}x{}", grid.0, grid.1)),
            ("norm_layers".to_string(), self.norm_layers.to_string()),
            (
                "normalisation".to_string(),
                if self.sat { "sat493m" } else { "imagenet" }.to_string(),
            ),
            ("dtype".to_string(), self.dtype.to_ascii_lowercase()),
        ]);
        if arch == DinoArch::Dinov2 {
            metadata.insert("registers".into(), tower.num_registers().to_string());
        }
        Ok(Embedding {
            tensors,
            metadata,
            blocks,
            grid,
        })
    }
}

impl Embedding {
    /// Writes the tensors (f32, and i64 token ids) to `path` through a temporary file in the
    /// same directory and a rename, so that a reader never sees a half-written file.
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut views = Vec::with_capacity(self.tensors.len());
        for (name, t) in &self.tensors {
            let t = if t.dtype() == DType::I64 {
                t.clone()
            } else {
                t.to_dtype(DType::F32)?
            };
            let shape = t.dims().to_vec();
            let (dtype, bytes) = match t.dtype() {
                DType::I64 => (
                    safetensors::Dtype::I64,
                    t.flatten_all()?
                        .to_vec1::<i64>()?
                        .iter()
                        .flat_map(|v| v.to_le_bytes())
                        .collect::<Vec<u8>>(),
                ),
                _ => (
                    safetensors::Dtype::F32,
                    t.flatten_all()?
                        .to_vec1::<f32>()?
                        .iter()
                        .flat_map(|v| v.to_le_bytes())
                        .collect::<Vec<u8>>(),
                ),
            };
            views.push((name.clone(), shape, dtype, bytes));
        }
        let bad = |e: safetensors::SafeTensorError| Error::Candle(candle_core::Error::wrap(e));
        let data = views
            .iter()
            .map(|(name, shape, dtype, bytes)| {
                Ok((
                    name.clone(),
                    safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)
                        .map_err(bad)?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let metadata = Some(self.metadata.clone());
        ssvp_util::fs::write_atomic_with(path, |tmp| {
            safetensors::serialize_to_file(data, metadata, tmp).map_err(std::io::Error::other)
        })
        .map_err(|e| Error::io(format!("writing {}", path.display()), path, e))
    }
}
