//! [`Backbones`]: the frozen CLIP and DINO towers, loaded from weights or built as the seeded
//! `tiny` preset, aligned on one patch grid, and run on image files. CLIP is optional: the
//! DINO-only presets (`anomalydino`, ...) and scorers that read DINO alone never load it.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use ssvp_backbones::clip::{self, ClipConfig, ClipModel, ConfigChoice, LoadOptions, VisionOptions};
use ssvp_backbones::dinov2::{Dinov2Config, Dinov2Model};
use ssvp_backbones::dinov3::{Dinov3Config, Dinov3Model};
use ssvp_backbones::weights::{seeded_var_builder, ModelSource, WantedFiles};
use ssvp_image::{Preprocess, RgbImage8};

use crate::config::{BackbonesConfig, BackbonesRecord, PosInterp, TapLayers, NO_TOWER, TINY};
use crate::dino::DinoTower;
use crate::error::{ensure_fits, Error, Result};
use crate::features::{FeatureSource, ImageFeatures};
use crate::identity::{weights_fingerprint, BackboneIdentity, FEATURE_FORMAT};
use crate::tiny::{tiny_clip_config, tiny_seeds};

fn parse_dtype(name: &str) -> Result<DType> {
    Ok(match name {
        "f32" => DType::F32,
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        other => {
            return Err(Error::Config(format!(
                "backbones.dtype `{other}` is not one of f32, f16, bf16"
            )))
        }
    })
}

/// Which towers a pass runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TowerSet {
    /// CLIP's vision tower.
    pub clip: bool,
    /// The DINO tower.
    pub dino: bool,
    /// Whether the global features (CLIP's image embedding, DINOv3's final CLS) are read. Both
    /// come out of the last block, so without them each tower stops after its deepest
    /// requested block.
    pub globals: bool,
}

impl TowerSet {
    /// Both towers, whole (what the head needs).
    pub const BOTH: Self = Self {
        clip: true,
        dino: true,
        globals: true,
    };
}

/// The frozen CLIP (optional) and DINO towers, aligned on one patch grid.
pub struct Backbones {
    clip: Option<ClipModel>,
    dino: DinoTower,
    tokenizer: clip::tokenizer::ClipTokenizer,
    identity: BackboneIdentity,
    record: BackbonesRecord,
    clip_pre: Preprocess,
    dino_pre: Preprocess,
    vision_opts: VisionOptions,
    dino_blocks: Vec<usize>,
    device: Device,
}

impl Backbones {
    /// Loads (or, for `tiny`, builds) the towers of `cfg` (CLIP unless it is `"none"`), tapped
    /// at `taps`: the grids must match and the tapped blocks exist.
    pub fn load(cfg: &BackbonesConfig, taps: &TapLayers, device: &Device) -> Result<Self> {
        cfg.validate()?;
        let dtype = parse_dtype(&cfg.dtype)?;
        let (clip_seed, dino_seed) = tiny_seeds(cfg.seed);
        let (clip, clip_weights) = if !cfg.has_clip() {
            (None, String::new())
        } else if cfg.clip == TINY {
            let vb = seeded_var_builder(clip_seed, dtype, device);
            let model = ClipModel::new(&tiny_clip_config(), vb, "tiny")
                .map_err(|e| Error::backbone("building the tiny CLIP", e))?;
            (Some(model), format!("seeded:{clip_seed}"))
        } else {
            let loading = |e| {
                Error::loading(
                    "CLIP",
                    &cfg.clip,
                    "--clip-weights",
                    cfg.preset.as_deref(),
                    e,
                )
            };
            let files = ModelSource::parse(&cfg.clip)
                .and_then(|source| {
                    source.resolve(WantedFiles {
                        weights: clip::WEIGHTS_FILES,
                        config: Some("config.json"),
                    })
                })
                .map_err(loading)?;
            let opts = LoadOptions {
                config: ConfigChoice::Auto,
                activation: None,
                dtype,
                device: device.clone(),
            };
            let model = ClipModel::load_files(&files, &opts).map_err(loading)?;
            (Some(model), weights_fingerprint(&files.weights)?)
        };
        let (dino, dino_weights) = DinoTower::load(cfg, dino_seed, dtype, device)?;
        Self::from_models(clip, dino, cfg, taps, clip_weights, dino_weights, device)
    }

    /// The paper's towers, CLIP ViT-L/14@336 and DINOv3 ViT-L/16, with seeded random weights
    /// (seeds 1 and 2) at the sizes of `cfg`: what the benchmarks time at the real sizes when no
    /// checkpoint is at hand. The features carry no meaning.
    pub fn seeded_vitl(cfg: &BackbonesConfig, taps: &TapLayers, device: &Device) -> Result<Self> {
        let cfg = BackbonesConfig {
            clip: "openai/clip-vit-large-patch14-336".into(),
            dino: "facebook/dinov3-vitl16-pretrain-lvd1689m".into(),
            dino_arch: crate::DinoArch::Dinov3,
            ..cfg.clone()
        };
        Self::seeded(&cfg, taps, device)
    }

    /// The architectures `cfg` names (hub ids of known models, e.g. a preset's) with seeded
    /// random weights (CLIP seed 1, DINO seed 2) at its sizes: a benchmark of a preset's real
    /// work without its weights. The features carry no meaning.
    pub fn seeded(cfg: &BackbonesConfig, taps: &TapLayers, device: &Device) -> Result<Self> {
        let unknown = |tower: &str, name: &str| {
            Error::Config(format!(
                "no known {tower} architecture is named `{name}` (seeded towers are built for \
                 the presets' hub ids)"
            ))
        };
        let clip = if cfg.has_clip() {
            let building = "building the seeded CLIP";
            let arch = if cfg.clip.contains("clip-vit-large-patch14-336") {
                "ViT-L-14-336"
            } else {
                return Err(unknown("CLIP", &cfg.clip));
            };
            Some(
                ClipModel::new(
                    &ClipConfig::preset(arch).map_err(|e| Error::backbone(building, e))?,
                    seeded_var_builder(1, DType::F32, device),
                    &format!("seeded {arch}"),
                )
                .map_err(|e| Error::backbone(building, e))?,
            )
        } else {
            None
        };
        let vb = seeded_var_builder(2, DType::F32, device);
        let dino: DinoTower = match cfg.dino_arch_by_name() {
            crate::DinoArch::Dinov2 => {
                let config =
                    Dinov2Config::preset(&cfg.dino).ok_or_else(|| unknown("DINOv2", &cfg.dino))?;
                Dinov2Model::new(&config, vb)
                    .map_err(|e| Error::backbone("building the seeded DINOv2", e))?
                    .into()
            }
            _ => {
                let config =
                    Dinov3Config::preset(&cfg.dino).ok_or_else(|| unknown("DINOv3", &cfg.dino))?;
                Dinov3Model::new(&config, vb)
                    .map_err(|e| Error::backbone("building the seeded DINOv3", e))?
                    .into()
            }
        };
        let clip_weights = if clip.is_some() { "seeded:1" } else { "" };
        Self::from_models(
            clip,
            dino,
            cfg,
            taps,
            clip_weights.into(),
            "seeded:2".into(),
            device,
        )
    }

    /// Assembles already-built towers (weights from anywhere, e.g. a seeded `VarBuilder` for a
    /// benchmark) with the same checks as [`Backbones::load`]. `clip_weights` / `dino_weights`
    /// are the content fingerprints recorded in the identity.
    pub fn from_models(
        clip: Option<ClipModel>,
        dino: DinoTower,
        cfg: &BackbonesConfig,
        taps: &TapLayers,
        clip_weights: String,
        dino_weights: String,
        device: &Device,
    ) -> Result<Self> {
        cfg.validate()?;
        if clip.is_some() != cfg.has_clip() {
            return Err(Error::Config(format!(
                "backbones.clip = `{}` but a CLIP model was {}given",
                cfg.clip,
                if clip.is_some() { "" } else { "not " }
            )));
        }
        let vcfg = match &clip {
            Some(model) => Some(
                model
                    .vision()
                    .map_err(|e| Error::backbone("the CLIP model", e))?
                    .config()
                    .clone(),
            ),
            None => None,
        };
        let clip_patch = vcfg.as_ref().map_or(dino.patch_size(), |v| v.patch_size);
        let g = cfg.grid(clip_patch, dino.patch_size())?;
        let clip_depth = vcfg.as_ref().map_or(0, |v| v.num_hidden_layers);
        if vcfg.is_none() && !taps.clip.is_empty() {
            return Err(Error::Config(format!(
                "CLIP blocks {:?} are tapped but the backbones have no CLIP tower (clip = \"{NO_TOWER}\")",
                taps.clip
            )));
        }
        let (clip_layers, dino_layers) = taps.resolve(clip_depth, dino.depth())?;
        if let Some(from) = cfg.dpam_from {
            if from > clip_depth {
                return Err(Error::Config(format!(
                    "backbones.dpam_from = {from}, but the CLIP vision tower has blocks 1..={clip_depth}"
                )));
            }
        }
        let clip_dim = match &clip {
            Some(model) => model
                .vision()
                .map_err(|e| Error::backbone("the CLIP model", e))?
                .embed_dim(),
            None => 0,
        };
        let dino_dim = dino.width();
        let text_width = clip
            .as_ref()
            .and_then(|c| c.text().ok())
            .map_or(0, |t| t.config().hidden_size);
        let clip_pre = Preprocess::clip(cfg.clip_size);
        let dino_pre = dino.preprocess(cfg);
        let pos_interp = match cfg.pos_interp {
            PosInterp::Bicubic => clip::PosInterp::Bicubic,
            PosInterp::Bilinear => clip::PosInterp::Bilinear,
        };
        let (clip_name, clip_size) = if clip.is_some() {
            (cfg.clip.clone(), (cfg.clip_size, cfg.clip_size))
        } else {
            (NO_TOWER.to_string(), (0, 0))
        };
        let preprocess = if clip.is_some() {
            format!("clip: {clip_pre:?}; dino: {dino_pre:?}")
        } else {
            format!("dino: {dino_pre:?}")
        };
        let identity = BackboneIdentity {
            clip: clip_name,
            dino: cfg.dino.clone(),
            clip_size,
            dino_size: (cfg.dino_size, cfg.dino_size),
            clip_layers: clip_layers.clone(),
            dino_layers: dino_layers.clone(),
            dtype: cfg.dtype.clone(),
            pos_interp: cfg.pos_interp.as_str().to_string(),
            dpam_from: cfg.dpam_from,
            clip_dim,
            dino_dim,
            text_width,
            grid: (g, g),
            clip_weights,
            dino_weights,
            preprocess,
            format: FEATURE_FORMAT,
        };
        let record = BackbonesRecord {
            backbones: BackbonesConfig {
                clip: if clip.is_some() {
                    cfg.clip.clone()
                } else {
                    NO_TOWER.into()
                },
                ..cfg.clone()
            },
            taps: TapLayers {
                clip: if clip.is_some() {
                    taps.clip.clone()
                } else {
                    Vec::new()
                },
                dino: taps.dino,
            },
        };
        Ok(Self {
            record,
            clip,
            dino,
            tokenizer: clip::tokenizer::ClipTokenizer::openai()
                .map_err(|e| Error::backbone(format!("loading the CLIP tokenizer: {e}"), e))?,
            identity,
            clip_pre,
            dino_pre,
            vision_opts: VisionOptions {
                layers: clip_layers,
                dpam_from: cfg.dpam_from,
                pos_interp,
            },
            dino_blocks: dino_layers,
            device: device.clone(),
        })
    }

    /// CLIP's vision tower (a text-only CLIP cannot make features).
    fn vision(&self) -> Result<&clip::ClipVisionTransformer> {
        self.clip()?
            .vision()
            .map_err(|e| Error::backbone("the CLIP model", e))
    }

    /// The CLIP model (vision and, when loaded, text tower).
    /// An error for backbones without a CLIP tower (the DINO-only presets).
    pub fn clip(&self) -> Result<&ClipModel> {
        self.clip.as_ref().ok_or_else(|| {
            Error::Unsupported(format!(
                "these backbones have no CLIP tower (clip = \"{NO_TOWER}\", DINO {} only); \
                 the SSVP head and CLIP taps need one: use --backbones paper or tiny",
                self.dino.name()
            ))
        })
    }

    /// Whether a CLIP tower is loaded.
    pub fn has_clip(&self) -> bool {
        self.clip.is_some()
    }

    /// The DINOv3 model.
    pub fn dino(&self) -> &DinoTower {
        &self.dino
    }

    /// CLIP's BPE tokenizer, for the text tower's prompts.
    pub fn tokenizer(&self) -> &clip::tokenizer::ClipTokenizer {
        &self.tokenizer
    }

    /// The settings these backbones were loaded with (CLIP `"none"` when it was left out), as
    /// an artifact records them.
    pub fn record(&self) -> &BackbonesRecord {
        &self.record
    }

    /// What these backbones are, by content (also [`FeatureSource::identity`]).
    pub fn identity(&self) -> &BackboneIdentity {
        &self.identity
    }

    /// Every loaded tower, whole.
    pub fn all_towers(&self) -> TowerSet {
        TowerSet {
            clip: self.has_clip(),
            ..TowerSet::BOTH
        }
    }

    /// Where the towers' tensors live.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Width of the CLIP text token embeddings (0 for a vision-only CLIP).
    pub fn text_width(&self) -> usize {
        self.identity.text_width
    }

    /// Joint CLIP space width `D_c`.
    pub fn clip_dim(&self) -> usize {
        self.identity.clip_dim
    }

    /// DINOv3 token width `D_d`.
    pub fn dino_dim(&self) -> usize {
        self.identity.dino_dim
    }

    /// The CLIP and DINO input recipes.
    pub fn preprocessors(&self) -> (&Preprocess, &Preprocess) {
        (&self.clip_pre, &self.dino_pre)
    }

    /// Preprocesses a batch of decoded images (each with a name for error messages) for the
    /// towers of `towers`: `([B, 3, Hc, Wc], [B, 3, Hd, Wd])` on the backbones' device, `None`
    /// for a tower left out.
    fn pixels_of_named_towers(
        &self,
        images: &[(&RgbImage8, String)],
        towers: TowerSet,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let b = images.len();
        if b == 0 {
            return Err(Error::Config("no images to preprocess".into()));
        }
        let batch = |pre: &Preprocess, tower: &str| -> Result<Tensor> {
            let mut data = Vec::with_capacity(b * 3 * pre.width * pre.height);
            for (img, name) in images {
                let px = pre.apply(img).map_err(|source| Error::Image {
                    context: format!("preprocessing {name} for {tower}"),
                    source,
                })?;
                data.extend(px.data);
            }
            Ok(Tensor::from_vec(
                data,
                (b, 3, pre.height, pre.width),
                &self.device,
            )?)
        };
        let clip = towers
            .clip
            .then(|| batch(&self.clip_pre, "CLIP"))
            .transpose()?;
        let dino = towers
            .dino
            .then(|| batch(&self.dino_pre, self.dino.name()))
            .transpose()?;
        Ok((clip, dino))
    }

    /// Both towers' inputs of a batch of named images.
    fn pixels_of_named(&self, images: &[(&RgbImage8, String)]) -> Result<(Tensor, Tensor)> {
        match self.pixels_of_named_towers(images, TowerSet::BOTH)? {
            (Some(clip), Some(dino)) => Ok((clip, dino)),
            _ => unreachable!("both towers were asked for"),
        }
    }

    /// Preprocesses decoded images for both towers (resize, normalise), giving the inputs of
    /// [`Backbones::features_from_pixels`]: `([B, 3, Hc, Wc], [B, 3, Hd, Wd])`. Split from the
    /// forward pass so that callers can time (or overlap) the two stages.
    pub fn preprocess_batch(&self, images: &[&RgbImage8]) -> Result<(Tensor, Tensor)> {
        let named: Vec<(&RgbImage8, String)> = images
            .iter()
            .enumerate()
            .map(|(i, img)| (*img, format!("image {i} of the batch")))
            .collect();
        self.pixels_of_named(&named)
    }

    /// [`Backbones::preprocess_batch`] for the towers of `towers` only (`None` for the others).
    pub fn preprocess_towers(
        &self,
        images: &[&RgbImage8],
        towers: TowerSet,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let named: Vec<(&RgbImage8, String)> = images
            .iter()
            .enumerate()
            .map(|(i, img)| (*img, format!("image {i} of the batch")))
            .collect();
        self.pixels_of_named_towers(&named, towers)
    }

    /// Preprocesses a batch of decoded images (each with a name for error messages) and runs
    /// each tower once on it.
    fn features_of_decoded(&self, images: &[(&RgbImage8, String)]) -> Result<Vec<ImageFeatures>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let (clip, dino) = self.pixels_of_named_towers(images, self.all_towers())?;
        self.features_of_towers(clip.as_ref(), dino.as_ref(), true)
    }

    /// Multiply-add work of one image through each tower of `towers`, in FLOPs: `(clip, dino)`,
    /// 0 for a tower left out (see `ClipVisionTransformer::flops`, `Dinov3Model::flops`).
    pub fn tower_flops(&self, towers: TowerSet) -> Result<(f64, f64)> {
        let grid = self.identity.grid;
        let clip = if towers.clip {
            self.vision()?
                .flops(grid, &self.vision_opts, towers.globals)
        } else {
            0.0
        };
        let dino = if towers.dino {
            let through = if towers.globals {
                self.dino.depth()
            } else {
                self.dino_blocks.iter().copied().max().unwrap_or(0)
            };
            self.dino.flops(grid, through)
        } else {
            0.0
        };
        Ok((clip, dino))
    }

    /// Runs both towers on already preprocessed batches `[B, 3, H, W]` (CLIP and DINO inputs).
    pub fn features_from_pixels(
        &self,
        clip_pixels: &Tensor,
        dino_pixels: &Tensor,
    ) -> Result<Vec<ImageFeatures>> {
        self.features_of_towers(Some(clip_pixels), Some(dino_pixels), true)
    }

    /// Runs the towers whose inputs are given. A tower left out gives no tokens: its
    /// `*_local` are empty and its `*_global` has no elements (a scorer that reads only DINOv3
    /// patches, like the references of `ssvp detect --normal`, skips CLIP's cost this way).
    ///
    /// Without `globals` each tower stops after its deepest requested block and both
    /// `*_global` have no elements; the local features are the same, bit for bit.
    pub fn features_of_towers(
        &self,
        clip_pixels: Option<&Tensor>,
        dino_pixels: Option<&Tensor>,
        globals: bool,
    ) -> Result<Vec<ImageFeatures>> {
        Ok(self
            .features_of_towers_timed(clip_pixels, dino_pixels, globals)?
            .0)
    }

    /// [`Self::features_of_towers`], with the wall-clock time of each tower (the device is
    /// synchronised after each, so that a GPU's queued work is counted where it belongs).
    pub fn features_of_towers_timed(
        &self,
        clip_pixels: Option<&Tensor>,
        dino_pixels: Option<&Tensor>,
        globals: bool,
    ) -> Result<(Vec<ImageFeatures>, TowerTimes)> {
        let mut times = TowerTimes::default();
        let b = match (clip_pixels, dino_pixels) {
            (Some(c), Some(d)) => {
                ensure_fits!(
                    d.dim(0)? == c.dim(0)?,
                    "{} CLIP images but {} DINO images",
                    c.dim(0)?,
                    d.dim(0)?
                );
                c.dim(0)?
            }
            (Some(c), None) => c.dim(0)?,
            (None, Some(d)) => d.dim(0)?,
            (None, None) => return Err(Error::Config("no tower to run".into())),
        };
        let to_f32 = |t: Tensor| t.to_dtype(DType::F32);
        let expected = self.identity.grid;
        let n = expected.0 * expected.1;
        let empty = || Tensor::zeros((b, 0), DType::F32, &self.device);
        let started = Instant::now();
        let (clip_local, clip_global) = match clip_pixels {
            Some(px) => {
                let vision = self.vision()?;
                let (patch, global, grid) = if globals {
                    let vis = vision.forward(px, &self.vision_opts)?;
                    (vis.patch, to_f32(vis.image_embed)?, vis.grid)
                } else {
                    let vis = vision.forward_layers(px, &self.vision_opts)?;
                    (vis.patch, empty()?, vis.grid)
                };
                ensure_fits!(
                    grid == expected,
                    "CLIP ran at a {grid:?} grid; expected {expected:?}"
                );
                // CLS dropped.
                let local: Vec<Tensor> = patch
                    .into_iter()
                    .map(|t| to_f32(t.narrow(1, 1, n)?))
                    .collect::<candle_core::Result<_>>()?;
                (local, global)
            }
            None => (Vec::new(), empty()?),
        };
        self.device.synchronize()?;
        times.clip_ms = started.elapsed().as_secs_f64() * 1e3;
        let started = Instant::now();
        let (dino_local, dino_global) = match dino_pixels {
            Some(px) => {
                let pass = self.dino.run(px, &self.dino_blocks, globals)?;
                let global = match pass.cls {
                    Some(cls) => to_f32(cls)?,
                    None => empty()?,
                };
                let (hidden, grid) = (pass.hidden, pass.grid);
                ensure_fits!(
                    grid == expected,
                    "{} ran at a {grid:?} grid; expected {expected:?}",
                    self.dino.name()
                );
                // CLS and registers dropped (already final-normed).
                let prefix = self.dino.num_prefix_tokens();
                let local: Vec<Tensor> = hidden
                    .into_iter()
                    .map(|(_, t)| to_f32(t.narrow(1, prefix, n)?))
                    .collect::<candle_core::Result<_>>()?;
                (local, global)
            }
            None => (Vec::new(), empty()?),
        };
        self.device.synchronize()?;
        times.dino_ms = started.elapsed().as_secs_f64() * 1e3;
        let features = (0..b)
            .map(|i| {
                let pick = |t: &Tensor| t.get(i)?.contiguous();
                Ok(ImageFeatures {
                    clip_local: clip_local
                        .iter()
                        .map(pick)
                        .collect::<candle_core::Result<_>>()?,
                    dino_local: dino_local
                        .iter()
                        .map(pick)
                        .collect::<candle_core::Result<_>>()?,
                    clip_global: pick(&clip_global)?,
                    dino_global: pick(&dino_global)?,
                    grid: expected,
                })
            })
            .collect::<Result<_>>()?;
        Ok((features, times))
    }
}

/// Wall-clock milliseconds of each tower in one [`Backbones::features_of_towers_timed`] call
/// (0 for a tower that did not run).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct TowerTimes {
    /// CLIP's vision tower.
    pub clip_ms: f64,
    /// DINOv3.
    pub dino_ms: f64,
}

impl FeatureSource for Backbones {
    fn identity(&self) -> &BackboneIdentity {
        &self.identity
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn features(&self, image_path: &Path) -> Result<ImageFeatures> {
        let mut out = self.features_batch(&[image_path.to_path_buf()])?;
        Ok(out.remove(0))
    }

    /// Decodes and preprocesses every image, then runs each tower once on the whole batch.
    fn features_batch(&self, image_paths: &[PathBuf]) -> Result<Vec<ImageFeatures>> {
        let decoded = image_paths
            .iter()
            .map(|path| {
                ssvp_image::load_rgb8(path).map_err(|source| Error::Image {
                    context: format!("cannot read image {}", path.display()),
                    source,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let named: Vec<(&RgbImage8, String)> = decoded
            .iter()
            .zip(image_paths)
            .map(|(img, path)| (img, path.display().to_string()))
            .collect();
        self.features_of_decoded(&named)
    }

    fn features_of_images(&self, images: &[RgbImage8]) -> Result<Vec<ImageFeatures>> {
        let named: Vec<(&RgbImage8, String)> = images
            .iter()
            .enumerate()
            .map(|(i, img)| (img, format!("image {i} of the batch")))
            .collect();
        self.features_of_decoded(&named)
    }
}
