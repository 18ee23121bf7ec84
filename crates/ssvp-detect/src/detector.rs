//! [`Detector`]: the per-image pipeline of ssvp, in one place. `ssvp detect`, `ssvp calibrate`,
//! `ssvp eval` and the server all call it, so a benchmark image gets the same score and map
//! whichever front scored it.
//!
//! ```text
//! decoded image ─(tiles)─► preprocess ─► CLIP + DINOv3 ─► SSVP head (class prompts) and/or
//! references / mutual scoring (crate::memory) ─► token map, score ─► upsample to map_size,
//! Gaussian (= ssvp eval) ─► (fuse) ─► resize to the tile/image ─(stitch)─► map at the image's
//! resolution ─► calibration (score, p-value, decision) ─► regions
//! ```
//!
//! Loaded once, it scores from any number of threads (`&self`): the towers and the head are
//! read-only, and the text features of each class name are computed once and kept.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use ssvp_eval::maps::regions::regions_above;
use ssvp_eval::postprocess::{postprocess_map, resize_map, AnomalyMap, PostprocessConfig};
use ssvp_image::{ColorScale, RgbImage8};
use ssvp_memory::foreground::foreground_mask;
use ssvp_memory::score::top_fraction_mean;
use ssvp_model::features::{stack_features, Backbones, FeatureSource, ImageFeatures, TowerSet};
use ssvp_model::run_dir::TrainedRun;
use ssvp_model::{Mode, SsvpConfig, SsvpHead};

use crate::calibrate::Calibration;
use crate::detection::{Detection, MapStats, Timings};
use crate::error::{Error, ErrorKind, Result};
use crate::input::InputImage;
use crate::memory::{
    normalise_distance, set_scale, tapped, towers_of, Memory, MemorySpec, MutualConfig,
    ReferenceScoring, Tap,
};
use crate::tiling::{crop, layout, Stitcher, Tile, Tiling};

/// The side of the square grid maps are post-processed on before being resized to the image:
/// the field's evaluation grid for 518 px inputs (and `ssvp eval`'s default `--eval-size`).
pub const DEFAULT_MAP_SIZE: usize = 518;
/// The class name of the prompts when none is given.
pub const DEFAULT_CLASS_NAME: &str = "object";
/// Images (or tiles) per backbone pass.
pub const DEFAULT_BATCH_SIZE: usize = 4;

/// How the detector runs and decides.
#[derive(Clone, Debug, PartialEq)]
pub struct DetectorOptions {
    /// The class name in the prompts ("a photo of a damaged {class}"-style; SSVP's prompts are
    /// class-aware).
    pub class_name: String,
    /// Side of the square grid the head's map is upsampled and smoothed on, as in evaluation.
    pub map_size: usize,
    /// Images (or tiles) per backbone pass.
    pub batch_size: usize,
    /// Score large images tile by tile (`None`: every image is resized whole).
    pub tiling: Option<Tiling>,
    /// A raw-score threshold for the decision; overrides the calibration's.
    pub image_threshold: Option<f64>,
    /// A map threshold for regions; overrides the calibration's.
    pub pixel_threshold: Option<f32>,
    /// Regions smaller than this many pixels are dropped (specks).
    pub min_region_area: usize,
    /// The value range of map PNGs and overlay colours; default: the calibration's display
    /// range, else `[0, 1]` (the head's maps are probabilities).
    pub map_scale: Option<ColorScale>,
}

impl Default for DetectorOptions {
    fn default() -> Self {
        Self {
            class_name: DEFAULT_CLASS_NAME.into(),
            map_size: DEFAULT_MAP_SIZE,
            batch_size: DEFAULT_BATCH_SIZE,
            tiling: None,
            image_threshold: None,
            pixel_threshold: None,
            min_region_area: 1,
            map_scale: None,
        }
    }
}

impl DetectorOptions {
    /// Checks every value, naming the one that is wrong.
    pub fn validate(&self) -> Result<()> {
        if self.class_name.trim().is_empty() {
            return Err(Error::invalid("the class name must not be empty"));
        }
        if self.map_size == 0 || self.batch_size == 0 {
            return Err(Error::invalid(
                "the map size and the batch size must be positive",
            ));
        }
        if let Some(t) = &self.tiling {
            t.validate()?;
        }
        if self.image_threshold.is_some_and(|t| !t.is_finite())
            || self.pixel_threshold.is_some_and(|t| !t.is_finite())
        {
            return Err(Error::invalid("thresholds must be finite numbers"));
        }
        if let Some(s) = &self.map_scale {
            if !(s.lo.is_finite() && s.hi.is_finite() && s.hi > s.lo) {
                return Err(Error::invalid(format!(
                    "the map scale [{}, {}] must be finite with lo < hi",
                    s.lo, s.hi
                )));
            }
        }
        Ok(())
    }
}

/// Everything besides the weights that changes a score or a map: a calibration is only valid
/// for the settings it was made with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DetectorSettings {
    /// The class name of the prompts.
    pub class_name: String,
    /// Side of the grid the map is post-processed on.
    pub map_size: usize,
    /// Upsampling and smoothing of the head's map (the run's `[postprocess]`).
    pub postprocess: PostprocessConfig,
    /// Tile size and overlap, if images are tiled.
    pub tiling: Option<Tiling>,
    /// The training-free scorer's settings (`None`: the head alone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemorySettings>,
}

/// What changes the training-free scores besides the bank's contents.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum MemorySettings {
    /// Distances to a bank.
    References {
        /// The bank's taps.
        taps: Vec<String>,
        /// How distances become scores.
        scoring: ReferenceScoring,
    },
    /// Mutual scoring.
    Mutual(MutualConfig),
}

/// What scores: the trained head and the backbones it was trained on, by content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelIdentity {
    /// The run directory the head came from, as named (informative only).
    pub checkpoint: String,
    /// SHA-256 of the head's trainable tensors (by name, f32 little-endian) and its `[model]`
    /// config: a retrained or reconfigured head has another. Empty without a head.
    pub head: String,
    /// SHA-256 of the reference bank (its vectors and metadata); empty without one.
    #[serde(default)]
    pub bank: String,
    /// The backbones' identity digest (`BackboneIdentity::digest`: weights fingerprints, input
    /// sizes, layers, preprocessing).
    pub backbones: String,
    /// The backbones as named, for messages.
    pub backbone_names: String,
}

impl ModelIdentity {
    /// Fails with [`ErrorKind::Mismatch`] when `other` is another head or other backbones.
    pub fn check_matches(&self, other: &ModelIdentity, what: &str) -> Result<()> {
        let mut diffs = Vec::new();
        if self.head != other.head {
            diffs.push(format!(
                "the head differs ({} from {}, this detector's from {})",
                what,
                short_or_none(&other.checkpoint),
                short_or_none(&self.checkpoint)
            ));
        }
        if self.bank != other.bank {
            diffs.push(format!(
                "the reference bank differs ({what} was made with another)"
            ));
        }
        if self.backbones != other.backbones {
            diffs.push(format!(
                "the backbones differ ({} for {what}, {} here)",
                other.backbone_names, self.backbone_names
            ));
        }
        if diffs.is_empty() {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::Mismatch,
                format!("{what} was made for another model: {}", diffs.join("; ")),
            ))
        }
    }
}

fn short_or_none(s: &str) -> &str {
    if s.is_empty() {
        "an unnamed checkpoint"
    } else {
        s
    }
}

/// The head's scores of one image or tile.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HeadParts {
    /// `S_final`.
    pub score: f64,
    /// `S_global`.
    pub global: f64,
    /// `S_local`.
    pub local: f64,
}

/// What the scorers give for one image or tile before it is brought to the image's size.
#[derive(Clone, Debug)]
pub struct UnitScore {
    /// The score of the detector's mode (see [`Detection::score`]).
    pub score: f64,
    /// The head's scores, when there is a head.
    pub head: Option<HeadParts>,
    /// The training-free image score, when there is a bank or mutual scoring.
    pub distance: Option<f64>,
    /// The map upsampled to `map_size x map_size` and smoothed, exactly as evaluated (fused:
    /// the mean of the normalised maps).
    pub map: AnomalyMap,
}

/// Where a model comes from: a run directory of `ssvp train`, optionally with other backbones
/// or post-processing, and a calibration.
#[derive(Clone, Debug)]
pub struct LoadSpec {
    /// Run directory written by `ssvp train` (`None`: no head; then `memory` must be given).
    pub checkpoint: Option<PathBuf>,
    /// Take the `[backbones]` and `[postprocess]` sections from this config instead of the
    /// run's (the head always comes from the run). Without a checkpoint: the backbones and
    /// post-processing (default: the paper's).
    pub config: Option<PathBuf>,
    /// A training-free scorer: a bank, references to build one from, or mutual scoring.
    pub memory: Option<MemorySpec>,
    /// `tiny`: the seeded tiny backbones instead of the run's.
    pub backbones_preset: Option<String>,
    /// A calibration file of `ssvp calibrate`.
    pub calibration: Option<PathBuf>,
    /// How the detector runs and decides.
    pub options: DetectorOptions,
    /// Where the tensors live.
    pub device: Device,
}

/// A trained run with the backbones to run it on.
pub struct LoadedRun {
    /// The head, its config and the identity of its backbones.
    pub run: TrainedRun,
    /// The backbones, shared with whatever else reads features (a cache, an evaluation).
    pub backbones: Arc<Backbones>,
}

/// Opens a run directory and loads the backbones it was trained with (or the ones `config` /
/// `preset` name instead, which must have the same identity). `config` also replaces the
/// run's post-processing.
pub fn load_run(
    checkpoint: &Path,
    config: Option<&Path>,
    preset: Option<&str>,
    device: &Device,
) -> Result<LoadedRun> {
    if !checkpoint.exists() {
        return Err(Error::new(
            ErrorKind::NotFound,
            format!(
                "the checkpoint {} does not exist (give a run directory of `ssvp train`)",
                checkpoint.display()
            ),
        ));
    }
    let mut run = TrainedRun::load(checkpoint, device).map_err(|e| {
        Error::new(
            ErrorKind::InvalidInput,
            format!("loading the checkpoint {}: {e:#}", checkpoint.display()),
        )
    })?;
    let mut cfg = run.config.clone();
    if config.is_some() || preset.is_some() {
        let given = SsvpConfig::load(config, preset)
            .map_err(|e| Error::new(ErrorKind::InvalidInput, e.to_string()))?;
        cfg.backbones = given.backbones;
        if config.is_some() {
            run.set_postprocess(given.postprocess, device)
                .map_err(Error::model)?;
        }
    }
    let backbones = Backbones::load(&cfg.backbones, &cfg.model, device)
        .map_err(|e| Error::model(e.context("loading the backbones")))?;
    run.check_identity(backbones.identity())
        .map_err(|e| Error::new(ErrorKind::Mismatch, format!("{e:#}")))?;
    Ok(LoadedRun {
        run,
        backbones: Arc::new(backbones),
    })
}

/// The backbones (and map post-processing) of a config file or preset, for scoring without a
/// trained head: the paper's CLIP ViT-L/14@336 and DINOv3 ViT-L/16 when neither is given.
pub fn load_backbones(
    config: Option<&Path>,
    preset: Option<&str>,
    device: &Device,
) -> Result<(Arc<Backbones>, PostprocessConfig)> {
    let cfg = SsvpConfig::load(config, preset)
        .map_err(|e| Error::new(ErrorKind::InvalidInput, e.to_string()))?;
    let backbones = Backbones::load(&cfg.backbones, &cfg.model, device)
        .map_err(|e| Error::model(e.context("loading the backbones")))?;
    Ok((Arc::new(backbones), cfg.postprocess))
}

/// Per image its training-free score and patch-score grid, and the normal scale fused scores
/// divide by.
type MemoryOutputs = (Vec<(f64, Vec<f32>)>, Option<f32>);

/// The loaded model and how it decides. See the module docs.
pub struct Detector {
    head: Option<SsvpHead>,
    memory: Option<Memory>,
    /// The towers the scorers read: both with a head, otherwise those of the memory's taps
    /// (references on DINOv3 alone skip CLIP).
    towers: TowerSet,
    /// Upsampling and smoothing of every map (the run's or the config's `[postprocess]`).
    postprocess: PostprocessConfig,
    backbones: Arc<Backbones>,
    identity: ModelIdentity,
    options: DetectorOptions,
    calibration: Option<Calibration>,
    /// `T_init` per class name: the prompt bank through the text tower, once per class.
    text: Mutex<HashMap<String, Tensor>>,
}

/// The bank files of a reference folder that could not be read, as a load reports them.
pub type Skipped = Vec<(PathBuf, Error)>;

impl Detector {
    /// Loads the run, its backbones, the memory and the calibration of `spec`.
    pub fn load(spec: &LoadSpec) -> Result<Self> {
        Ok(Self::load_reporting(spec)?.0)
    }

    /// [`Detector::load`], also returning the reference files that were skipped as unreadable.
    pub fn load_reporting(spec: &LoadSpec) -> Result<(Self, Skipped)> {
        spec.options.validate()?;
        let detector = match &spec.checkpoint {
            Some(checkpoint) => {
                let loaded = load_run(
                    checkpoint,
                    spec.config.as_deref(),
                    spec.backbones_preset.as_deref(),
                    &spec.device,
                )?;
                Self::from_run(loaded, spec.options.clone())?
            }
            None => {
                if spec.memory.is_none() {
                    return Err(Error::invalid(
                        "nothing to score with: give a trained run (--checkpoint), good reference \
                         images (--normal) or a bank (--bank), or score the inputs mutually \
                         (--mutual)",
                    ));
                }
                let (backbones, postprocess) = load_backbones(
                    spec.config.as_deref(),
                    spec.backbones_preset.as_deref(),
                    &spec.device,
                )?;
                Self::without_head(backbones, postprocess, spec.options.clone())?
            }
        };
        let (detector, skipped) = match &spec.memory {
            Some(memory) => {
                let (memory, skipped) = memory.load(&detector.backbones, &spec.device)?;
                (detector.with_memory(memory)?, skipped)
            }
            None => (detector, Vec::new()),
        };
        let detector = match &spec.calibration {
            Some(path) => detector.with_calibration(Calibration::read(path)?)?,
            None => detector,
        };
        Ok((detector, skipped))
    }

    /// A detector over a loaded run.
    pub fn from_run(loaded: LoadedRun, options: DetectorOptions) -> Result<Self> {
        let name = loaded.run.run.path().display().to_string();
        let mut detector = Self::new(loaded.run.head, loaded.backbones, options)?;
        detector.identity.checkpoint = name;
        Ok(detector)
    }

    /// A detector over a head and backbones built in memory (tests, benchmarks, training
    /// loops that evaluate as they go).
    pub fn new(
        head: SsvpHead,
        backbones: Arc<Backbones>,
        options: DetectorOptions,
    ) -> Result<Self> {
        let id = backbones.identity();
        let m = head.model_config();
        if m.clip_dim != id.clip_dim
            || m.dino_dim != id.dino_dim
            || m.num_scales() != id.clip_layers.len()
        {
            return Err(Error::new(
                ErrorKind::Mismatch,
                format!(
                    "the head expects {} scales of CLIP {} / DINO {} features, the backbones give \
                     {} scales of {} / {}",
                    m.num_scales(),
                    m.clip_dim,
                    m.dino_dim,
                    id.clip_layers.len(),
                    id.clip_dim,
                    id.dino_dim
                ),
            ));
        }
        let postprocess = head.config().postprocess.clone();
        let mut detector = Self::without_head(backbones, postprocess, options)?;
        detector.identity.head = head_digest(&head)?;
        detector.head = Some(head);
        Ok(detector)
    }

    /// A detector with no trained head: give it a memory ([`Detector::with_memory`]) before
    /// detecting. `postprocess` smooths its maps as evaluation does.
    pub fn without_head(
        backbones: Arc<Backbones>,
        postprocess: PostprocessConfig,
        options: DetectorOptions,
    ) -> Result<Self> {
        options.validate()?;
        let id = backbones.identity();
        let identity = ModelIdentity {
            checkpoint: String::new(),
            head: String::new(),
            bank: String::new(),
            backbones: id.digest(),
            backbone_names: format!("{} / {}", id.clip, id.dino),
        };
        Ok(Self {
            head: None,
            memory: None,
            towers: TowerSet::BOTH,
            postprocess,
            backbones,
            identity,
            options,
            calibration: None,
            text: Mutex::new(HashMap::new()),
        })
    }

    /// Adds a training-free scorer (with a head: the fused mode). A bank must come from these
    /// backbones; mutual scoring compares whole images and refuses tiling; fusing references
    /// needs a bank of two or more images (their leave-one-out distances set the scale).
    pub fn with_memory(mut self, memory: Memory) -> Result<Self> {
        if let Memory::References { bank, taps, .. } = &memory {
            let id = self.backbones.identity();
            let names: Vec<String> = taps.iter().map(|t| t.name(id)).collect();
            bank.check_compatible(&id.digest(), &format!("{} / {}", id.clip, id.dino), &names)?;
            if self.head.is_some() && bank.meta().normal_scale.is_none() {
                return Err(Error::new(
                    ErrorKind::NotEnoughData,
                    "fusing the head with references needs at least 2 reference images (their \
                     leave-one-out distances set the scale the two are averaged on)",
                ));
            }
            self.identity.bank = bank_digest(bank)?;
        }
        if let Memory::Mutual(config) = &memory {
            config.validate()?;
            if self.options.tiling.is_some() {
                return Err(Error::invalid(
                    "mutual scoring compares whole images with each other; it cannot be tiled \
                     (drop --tile)",
                ));
            }
        }
        let scales = self.backbones.identity().clip_layers.len();
        let taps = match &memory {
            Memory::References { taps, .. } => taps.clone(),
            Memory::Mutual(config) => config.taps.resolve(scales)?,
        };
        if self.head.is_none() {
            // Only RsCIN reads a global feature; without it the towers stop early.
            let globals = matches!(&memory, Memory::Mutual(c) if c.rscin.is_some());
            self.towers = towers_of(&taps, globals);
        }
        self.memory = Some(memory);
        Ok(self)
    }

    /// Applies a calibration, refusing one made for another model or other settings.
    pub fn with_calibration(mut self, calibration: Calibration) -> Result<Self> {
        calibration.check_compatible(&self.identity, &self.settings())?;
        self.calibration = Some(calibration);
        Ok(self)
    }

    /// The model's identity (recorded in calibrations and reports).
    pub fn identity(&self) -> &ModelIdentity {
        &self.identity
    }

    /// `head`, `references`, `mutual` or `fused`.
    pub fn mode(&self) -> &'static str {
        match (&self.head, &self.memory) {
            (Some(_), Some(_)) => "fused",
            (None, Some(Memory::References { .. })) => "references",
            (None, Some(Memory::Mutual(_))) => "mutual",
            _ => "head",
        }
    }

    /// The settings that change scores and maps.
    pub fn settings(&self) -> DetectorSettings {
        let id = self.backbones.identity();
        DetectorSettings {
            class_name: self.options.class_name.clone(),
            map_size: self.options.map_size,
            postprocess: self.postprocess.clone(),
            tiling: self.options.tiling,
            memory: self.memory.as_ref().map(|m| match m {
                Memory::References { taps, scoring, .. } => MemorySettings::References {
                    taps: taps.iter().map(|t| t.name(id)).collect(),
                    scoring: scoring.clone(),
                },
                Memory::Mutual(config) => MemorySettings::Mutual(config.clone()),
            }),
        }
    }

    /// Sets the images (or tiles) per backbone pass: a server gathers requests into batches of
    /// its own size. Like `--batch-size`, it changes how images are grouped; an image's score
    /// can then differ in the last float bits (batched matrix products round differently), not
    /// beyond.
    pub fn set_batch_size(&mut self, batch_size: usize) {
        self.options.batch_size = batch_size.max(1);
    }

    /// How the detector runs and decides.
    pub fn options(&self) -> &DetectorOptions {
        &self.options
    }

    /// The calibration in use, if any.
    pub fn calibration(&self) -> Option<&Calibration> {
        self.calibration.as_ref()
    }

    /// The towers the scorers read, and whether their global features are (without, each
    /// tower stops after its deepest tap).
    pub fn towers(&self) -> TowerSet {
        self.towers
    }

    /// The frozen backbones (shared: a feature cache can wrap the same towers).
    pub fn backbones(&self) -> &Arc<Backbones> {
        &self.backbones
    }

    /// The trained head, if any.
    pub fn head(&self) -> Option<&SsvpHead> {
        self.head.as_ref()
    }

    /// The training-free scorer, if any.
    pub fn memory(&self) -> Option<&Memory> {
        self.memory.as_ref()
    }

    /// Upsampling and smoothing of the maps.
    pub fn postprocess(&self) -> &PostprocessConfig {
        &self.postprocess
    }

    /// The size of a mutual-scoring set, when the detector scores mutually.
    pub fn set_size(&self) -> Option<usize> {
        match &self.memory {
            Some(Memory::Mutual(c)) => Some(c.set_size),
            _ => None,
        }
    }

    /// How `n` images are cut into scoring calls, in order: batches of the batch size, or for
    /// mutual scoring sets of about the set size ([`crate::memory::set_sizes`]), since every
    /// image of a call is then compared with the others.
    pub fn call_sizes(&self, n: usize) -> Vec<usize> {
        match self.set_size() {
            Some(size) => crate::memory::set_sizes(n, size),
            None => {
                let b = self.options.batch_size;
                (0..n).step_by(b).map(|start| b.min(n - start)).collect()
            }
        }
    }

    /// The value range of map PNGs and overlay colours (see [`DetectorOptions::map_scale`]).
    pub fn map_scale(&self) -> ColorScale {
        self.options
            .map_scale
            .or_else(|| self.calibration.as_ref().map(|c| c.display_scale()))
            .unwrap_or(match self.mode() {
                // Cosine distances of good patches stay well under 0.5.
                "references" => ColorScale { lo: 0.0, hi: 0.5 },
                // Probabilities (head, fused); mutual: Euclidean distances of unit vectors, in
                // [0, 2], good patches near 0.5.
                _ => ColorScale { lo: 0.0, hi: 1.0 },
            })
    }

    /// The raw-score threshold of decisions, if any.
    pub fn image_threshold(&self) -> Option<f64> {
        self.options
            .image_threshold
            .or_else(|| self.calibration.as_ref().map(|c| c.image.threshold))
    }

    /// The map threshold of regions, if any.
    pub fn pixel_threshold(&self) -> Option<f32> {
        self.options
            .pixel_threshold
            .or_else(|| self.calibration.as_ref().map(|c| c.pixel.threshold))
    }

    /// `T_init` of a class: computed on first use, then shared by every call.
    fn text_features(&self, head: &SsvpHead, class_name: &str) -> Result<Tensor> {
        let mut cache = self
            .text
            .lock()
            .map_err(|_| Error::model(anyhow::anyhow!("the prompt cache lock was poisoned")))?;
        if let Some(t) = cache.get(class_name) {
            return Ok(t.clone());
        }
        let encoder = self.backbones.prompt_encoder().map_err(Error::model)?;
        let t = head
            .encode_prompts(&encoder, class_name)
            .map_err(|e| {
                Error::model(
                    anyhow::Error::from(e)
                        .context(format!("encoding the prompts of `{class_name}`")),
                )
            })?
            .detach();
        cache.insert(class_name.to_string(), t.clone());
        Ok(t)
    }

    /// The scorers on backbone features of a batch, each map post-processed onto the
    /// `map_size x map_size` grid. This is the step `ssvp eval` measures. With mutual scoring
    /// the batch is the set: every image scores the others.
    pub fn score_features(
        &self,
        features: &[ImageFeatures],
        class_name: &str,
    ) -> Result<Vec<UnitScore>> {
        self.score_features_with(features, class_name, self.memory.as_ref())
    }

    /// [`Detector::score_features`] with another memory than the detector's own (evaluation
    /// draws a bank per category).
    pub fn score_features_with(
        &self,
        features: &[ImageFeatures],
        class_name: &str,
        memory: Option<&Memory>,
    ) -> Result<Vec<UnitScore>> {
        Ok(self.score_features_timed(features, class_name, memory)?.0)
    }

    /// The head's raw outputs: per image its parts and its token-grid map.
    fn head_outputs(
        &self,
        head: &SsvpHead,
        features: &[ImageFeatures],
        class_name: &str,
    ) -> Result<Vec<(HeadParts, Vec<f32>)>> {
        let t_init = self.text_features(head, class_name)?;
        let batch = stack_features(features)?;
        let out = head.forward(&batch, &t_init, &Mode::Eval, None)?;
        let maps = out.fused_map.to_dtype(DType::F32)?.to_vec3::<f32>()?;
        let as_f64 = |t: &Tensor| t.to_dtype(DType::F64)?.to_vec1::<f64>();
        let (scores, globals, locals) = (
            as_f64(&out.score)?,
            as_f64(&out.score_global)?,
            as_f64(&out.score_local)?,
        );
        Ok(maps
            .into_iter()
            .enumerate()
            .map(|(i, map)| {
                let parts = HeadParts {
                    score: scores[i],
                    global: globals[i],
                    local: locals[i],
                };
                (parts, map.into_iter().flatten().collect())
            })
            .collect())
    }

    /// The training-free scorer's raw outputs: per image its score and patch-score grid, and
    /// the normal scale fused scores divide by.
    fn memory_outputs(&self, memory: &Memory, features: &[ImageFeatures]) -> Result<MemoryOutputs> {
        match memory {
            Memory::References {
                bank,
                taps,
                scoring,
            } => {
                let mut out = Vec::with_capacity(features.len());
                for f in features {
                    let mut grid = bank.distances(&tapped(f, taps)?)?;
                    if let Some(opts) = &scoring.foreground {
                        // Background patches score 0 and stay in the grid (AnomalyDINO).
                        let fg = foreground_mask(taps[0].of(f)?, f.grid, opts)?;
                        grid.iter_mut()
                            .zip(fg)
                            .filter(|(_, keep)| !keep)
                            .for_each(|(d, _)| *d = 0.0);
                    }
                    let score = top_fraction_mean(&grid, scoring.top_fraction);
                    out.push((f64::from(score), grid));
                }
                Ok((out, bank.meta().normal_scale))
            }
            Memory::Mutual(config) => {
                let scales = self.backbones.identity().clip_layers.len();
                let taps: Vec<Tap> = config.taps.resolve(scales)?;
                let layers: Vec<Vec<Tensor>> = taps
                    .iter()
                    .map(|t| features.iter().map(|f| t.of(f).cloned()).collect())
                    .collect::<Result<_>>()?;
                let grid = features.first().map(|f| f.grid).unwrap_or((0, 0));
                let patches = ssvp_memory::mutual::mutual_scores(&layers, grid, &config.options)?;
                let mut scores: Vec<f64> = patches
                    .iter()
                    .map(|p| f64::from(p.iter().copied().fold(f32::NEG_INFINITY, f32::max)))
                    .collect();
                if let Some(windows) = &config.rscin {
                    let globals = rscin_globals(features, taps[0])?;
                    scores = ssvp_memory::mutual::rscin(&scores, &globals, windows)?;
                }
                let scale = set_scale(&patches);
                Ok((scores.into_iter().zip(patches).collect(), Some(scale)))
            }
        }
    }

    /// [`Detector::score_features_with`] with the scorers' times (head, memory) and the
    /// post-processing time.
    fn score_features_timed(
        &self,
        features: &[ImageFeatures],
        class_name: &str,
        memory: Option<&Memory>,
    ) -> Result<(Vec<UnitScore>, f64, f64, f64)> {
        if features.is_empty() {
            return Ok((Vec::new(), 0.0, 0.0, 0.0));
        }
        let started = Instant::now();
        let head = match &self.head {
            Some(h) => Some(self.head_outputs(h, features, class_name)?),
            None => None,
        };
        let head_ms = ms_since(started);
        let started = Instant::now();
        let distances = match memory {
            Some(m) => Some(self.memory_outputs(m, features)?),
            None => None,
        };
        let memory_ms = ms_since(started);
        let started = Instant::now();
        let grid = features[0].grid;
        let (size, pp) = (self.options.map_size, &self.postprocess);
        let mut results = Vec::with_capacity(features.len());
        for i in 0..features.len() {
            let head_part = head.as_ref().map(|h| &h[i]);
            let dist_part = distances.as_ref().map(|(d, scale)| (&d[i], *scale));
            let unit = match (head_part, dist_part) {
                (Some((parts, map)), None) => UnitScore {
                    score: parts.score,
                    head: Some(*parts),
                    distance: None,
                    map: postprocess_map(map, grid, size, pp)?,
                },
                (None, Some(((score, map), _))) => UnitScore {
                    score: *score,
                    head: None,
                    distance: Some(*score),
                    map: postprocess_map(map, grid, size, pp)?,
                },
                (Some((parts, hmap)), Some(((score, dmap), scale))) => {
                    let scale = scale.filter(|s| *s > 0.0).ok_or_else(|| {
                        Error::new(
                            ErrorKind::NotEnoughData,
                            "no normal distance scale to fuse with (a bank of one image?)",
                        )
                    })?;
                    let mut map = postprocess_map(hmap, grid, size, pp)?;
                    let dmap = postprocess_map(dmap, grid, size, pp)?;
                    for (m, d) in map.data.iter_mut().zip(&dmap.data) {
                        *m = 0.5 * (*m + normalise_distance(*d, scale));
                    }
                    let fused_distance = f64::from(normalise_distance(*score as f32, scale));
                    UnitScore {
                        score: 0.5 * (parts.score + fused_distance),
                        head: Some(*parts),
                        distance: Some(*score),
                        map,
                    }
                }
                (None, None) => {
                    return Err(Error::invalid(
                        "this detector has neither a head nor references nor mutual scoring",
                    ))
                }
            };
            results.push(unit);
        }
        Ok((results, head_ms, memory_ms, ms_since(started)))
    }

    /// Detects with the configured class name.
    pub fn detect(&self, images: &[InputImage]) -> Result<Vec<Detection>> {
        let class = self.options.class_name.clone();
        self.detect_as(images, &class)
    }

    /// Detects with another class name (refused when calibrated: a calibration holds for the
    /// class it was made with).
    pub fn detect_as(&self, images: &[InputImage], class_name: &str) -> Result<Vec<Detection>> {
        let prepared = self.prepare(Cow::Borrowed(images));
        self.detect_prepared(&prepared, class_name)
    }

    /// Cuts images into the units the backbones see (the whole image, or its tiles) and
    /// preprocesses the whole images: the part of [`Detector::detect`] that a batch run does on
    /// its decoding thread, so that it overlaps the backbones' work on the previous batch.
    /// Tiles are cut and preprocessed when they are scored, so that a huge image never holds
    /// the inputs of all its tiles at once; so is a chunk whose preprocessing fails here, so
    /// that its error is reported by [`Detector::detect_prepared`].
    pub fn prepare<'a>(&self, images: Cow<'a, [InputImage]>) -> PreparedBatch<'a> {
        let mut units: Vec<(usize, Option<Tile>)> = Vec::new();
        for (i, input) in images.iter().enumerate() {
            let (w, h) = (input.image.width, input.image.height);
            match &self.options.tiling {
                Some(t) if w > t.size || h > t.size => {
                    units.extend(layout(w, h, t).into_iter().map(|tile| (i, Some(tile))));
                }
                _ => units.push((i, None)),
            }
        }
        let mut pixels = Vec::new();
        for chunk in units.chunks(self.options.batch_size) {
            pixels.push(if chunk.iter().all(|(_, tile)| tile.is_none()) {
                let refs: Vec<&RgbImage8> = chunk.iter().map(|(i, _)| &images[*i].image).collect();
                self.preprocess(&refs).ok()
            } else {
                None
            });
        }
        PreparedBatch {
            images,
            units,
            pixels,
        }
    }

    /// The inputs of the towers the scorers read, for a chunk, and the time it took.
    fn preprocess(&self, images: &[&RgbImage8]) -> Result<Preprocessed> {
        let started = Instant::now();
        let (clip, dino) = self
            .backbones
            .preprocess_towers(images, self.towers)
            .map_err(Error::model)?;
        Ok(Preprocessed {
            clip,
            dino,
            ms: ms_since(started),
        })
    }

    /// Scores a batch made by [`Detector::prepare`].
    pub fn detect_prepared(
        &self,
        batch: &PreparedBatch<'_>,
        class_name: &str,
    ) -> Result<Vec<Detection>> {
        if class_name.trim().is_empty() {
            return Err(Error::invalid("the class name must not be empty"));
        }
        if let Some(c) = &self.calibration {
            if c.settings.class_name != class_name {
                return Err(Error::new(
                    ErrorKind::Mismatch,
                    format!(
                        "the calibration was made for class `{}`, not `{class_name}`",
                        c.settings.class_name
                    ),
                ));
            }
        }
        let images = &batch.images;
        let mut per_image: Vec<Assembly> = images
            .iter()
            .map(|input| Assembly::new(input, self.options.tiling.as_ref()))
            .collect();
        // Mutual scoring needs the features of the whole set before any image can be scored.
        let whole_set = matches!(self.memory, Some(Memory::Mutual(_)));
        let mut held: Vec<(usize, ImageFeatures, Timings)> = Vec::new();
        for (chunk, ready) in batch
            .units
            .chunks(self.options.batch_size)
            .zip(&batch.pixels)
        {
            let crops: Vec<Option<RgbImage8>> = chunk
                .iter()
                .map(|(i, tile)| tile.map(|t| crop(&images[*i].image, &t)))
                .collect();
            let pixels: Vec<&RgbImage8> = chunk
                .iter()
                .zip(&crops)
                .map(|((i, _), c)| c.as_ref().unwrap_or(&images[*i].image))
                .collect();
            let lazy;
            let pre = match ready {
                Some(p) => p,
                None => {
                    lazy = self.preprocess(&pixels)?;
                    &lazy
                }
            };
            let started = Instant::now();
            let (features, towers) = self
                .backbones
                .features_of_towers_timed(pre.clip.as_ref(), pre.dino.as_ref(), self.towers.globals)
                .map_err(Error::model)?;
            let backbones_ms = ms_since(started);
            let n = chunk.len() as f64;
            let share = Timings {
                preprocess_ms: pre.ms / n,
                backbones_ms: backbones_ms / n,
                clip_ms: towers.clip_ms / n,
                dino_ms: towers.dino_ms / n,
                ..Timings::default()
            };
            if whole_set {
                held.extend(chunk.iter().zip(features).map(|((i, _), f)| (*i, f, share)));
                continue;
            }
            let (scores, head_ms, memory_ms, post_ms) =
                self.score_features_timed(&features, class_name, self.memory.as_ref())?;
            let share = Timings {
                head_ms: head_ms / n,
                memory_ms: memory_ms / n,
                postprocess_ms: post_ms / n,
                ..share
            };
            for (((i, tile), unit_pixels), score) in chunk.iter().zip(&pixels).zip(scores) {
                per_image[*i].add(tile.as_ref(), unit_pixels, score, &share)?;
            }
        }
        if whole_set {
            let (idx, rest): (Vec<usize>, Vec<(ImageFeatures, Timings)>) =
                held.into_iter().map(|(i, f, t)| (i, (f, t))).unzip();
            let (features, shares): (Vec<ImageFeatures>, Vec<Timings>) = rest.into_iter().unzip();
            let (scores, head_ms, memory_ms, post_ms) =
                self.score_features_timed(&features, class_name, self.memory.as_ref())?;
            let n = features.len().max(1) as f64;
            for ((i, score), share) in idx.into_iter().zip(scores).zip(shares) {
                let share = Timings {
                    head_ms: head_ms / n,
                    memory_ms: memory_ms / n,
                    postprocess_ms: post_ms / n,
                    ..share
                };
                per_image[i].add(None, &images[i].image, score, &share)?;
            }
        }
        let gamma = self.head.as_ref().map(|h| h.model_config().gamma);
        per_image
            .into_iter()
            .zip(images.iter())
            .map(|(assembly, input)| self.finish(assembly, input, class_name, gamma))
            .collect()
    }

    /// The calibration's 0-1 score of a raw `score` for the decision at `threshold`.
    fn calibrated_score(&self, score: f64, threshold: Option<f64>) -> Option<f64> {
        self.calibration
            .as_ref()
            .zip(threshold)
            .map(|(c, t)| c.calibrated_score(score, t))
    }

    /// Decides `detection` again at another raw-score threshold (a request's own threshold in
    /// the server): `threshold`, `anomalous` and `calibrated_score` change by the same rules
    /// as at detection time; the scores, map and regions do not.
    pub fn decide_at(&self, detection: &mut Detection, threshold: f64) -> Result<()> {
        if !threshold.is_finite() {
            return Err(Error::invalid(format!(
                "the threshold must be a finite number, not {threshold}"
            )));
        }
        detection.threshold = Some(threshold);
        detection.anomalous = Some(detection.score > threshold);
        detection.calibrated_score = self.calibrated_score(detection.score, Some(threshold));
        Ok(())
    }

    /// Turns the assembled map and scores of one image into its [`Detection`].
    fn finish(
        &self,
        assembly: Assembly,
        input: &InputImage,
        class_name: &str,
        gamma: Option<f64>,
    ) -> Result<Detection> {
        let mut timings = assembly.timings;
        timings.decode_ms = input.decode_ms;
        let started = Instant::now();
        let scored = assembly.into_map()?;
        timings.postprocess_ms += ms_since(started);
        let (map, tiles) = (scored.map, scored.tiles);
        let head = scored.head;
        let score_head = match (head, gamma) {
            (Some(h), _) if tiles == 1 => Some(h.score),
            // Tiles of the head alone: S_final of the maxima (the tiling module's rule).
            (Some(h), Some(g)) => Some((1.0 - g) * h.global + g * h.local),
            _ => None,
        };
        // One unit: its own score. Tiles: the head's tiled S_final alone, otherwise the
        // highest tile score.
        let score = match (tiles, self.memory.is_some(), score_head) {
            (1, _, _) => scored.max_score,
            (_, false, Some(s)) => s,
            _ => scored.max_score,
        };
        let threshold = self.image_threshold();
        let calibration = self.calibration.as_ref();
        let started = Instant::now();
        let pixel_threshold = self.pixel_threshold();
        let regions = pixel_threshold
            .map(|t| regions_above(&map, t, self.options.min_region_area).regions)
            .unwrap_or_default();
        timings.regions_ms = ms_since(started);
        Ok(Detection {
            width: map.width,
            height: map.height,
            class_name: class_name.to_string(),
            mode: self.mode().to_string(),
            score,
            score_head,
            score_global: head.map(|h| h.global),
            score_local: head.map(|h| h.local),
            score_distance: scored.max_distance,
            calibrated_score: self.calibrated_score(score, threshold),
            p_value: calibration.map(|c| c.p_value(score)),
            anomalous: threshold.map(|t| score > t),
            threshold,
            pixel_threshold,
            regions,
            map_stats: MapStats::of(&map.data),
            tiles,
            timings,
            map,
        })
    }
}

/// Images ready for the backbones: see [`Detector::prepare`].
pub struct PreparedBatch<'a> {
    images: Cow<'a, [InputImage]>,
    /// `(image index, tile)` in scoring order; `None` = the whole image.
    units: Vec<(usize, Option<Tile>)>,
    /// Per chunk of `batch_size` units: the towers' inputs when already preprocessed.
    pixels: Vec<Option<Preprocessed>>,
}

impl PreparedBatch<'_> {
    /// The images of the batch, in order.
    pub fn images(&self) -> &[InputImage] {
        &self.images
    }

    /// The images, owned.
    pub fn into_images(self) -> Vec<InputImage> {
        self.images.into_owned()
    }
}

/// The towers' inputs of one chunk (`None`: a tower the scorers do not read).
struct Preprocessed {
    clip: Option<Tensor>,
    dino: Option<Tensor>,
    ms: f64,
}

/// The partial result of one image while its units come back from the backbones.
struct Assembly {
    width: usize,
    height: usize,
    /// Set for a tiled image.
    stitcher: Option<Stitcher>,
    /// The map of an image scored whole.
    whole: Option<AnomalyMap>,
    /// Max over units of each head part (`S_final`, `S_global`, `S_local`).
    head: Option<HeadParts>,
    /// Max over units of the training-free score.
    max_distance: Option<f64>,
    /// Max over units of the unit score (the image's own score when it was scored whole).
    max_score: f64,
    tiles: usize,
    timings: Timings,
}

/// An image's assembled result.
struct Scored {
    map: AnomalyMap,
    head: Option<HeadParts>,
    max_distance: Option<f64>,
    max_score: f64,
    tiles: usize,
}

impl Assembly {
    fn new(input: &InputImage, tiling: Option<&Tiling>) -> Self {
        let (width, height) = (input.image.width, input.image.height);
        let stitcher = tiling
            .filter(|t| width > t.size || height > t.size)
            .map(|t| Stitcher::new(width, height, t.overlap));
        Self {
            width,
            height,
            stitcher,
            whole: None,
            head: None,
            max_distance: None,
            max_score: f64::NEG_INFINITY,
            tiles: 0,
            timings: Timings::default(),
        }
    }

    /// Adds one unit's head result, resized to the unit's own pixels.
    fn add(
        &mut self,
        tile: Option<&Tile>,
        pixels: &RgbImage8,
        score: UnitScore,
        share: &Timings,
    ) -> Result<()> {
        let started = Instant::now();
        let map = resize_map(&score.map, pixels.width, pixels.height)?;
        match (tile, &mut self.stitcher) {
            (Some(tile), Some(st)) => st.add(tile, &map)?,
            _ => self.whole = Some(map),
        }
        if let Some(h) = score.head {
            self.head = Some(match self.head {
                Some(m) => HeadParts {
                    score: m.score.max(h.score),
                    global: m.global.max(h.global),
                    local: m.local.max(h.local),
                },
                None => h,
            });
        }
        if let Some(d) = score.distance {
            self.max_distance = Some(self.max_distance.map_or(d, |m| m.max(d)));
        }
        self.max_score = self.max_score.max(score.score);
        self.tiles += 1;
        self.timings.add(share);
        self.timings.postprocess_ms += ms_since(started);
        Ok(())
    }

    /// The map at the image's size with the scores of its units.
    fn into_map(self) -> Result<Scored> {
        let map = match (self.stitcher, self.whole) {
            (Some(st), _) => st.finish()?,
            (None, Some(map)) => map,
            (None, None) => {
                return Err(Error::model(anyhow::anyhow!(
                    "no map was computed for a {}x{} image",
                    self.width,
                    self.height
                )))
            }
        };
        Ok(Scored {
            map,
            head: self.head,
            max_distance: self.max_distance,
            max_score: self.max_score,
            tiles: self.tiles,
        })
    }
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

/// SHA-256 over the head's trainable tensors (sorted by name) and its `[model]` config.
fn head_digest(head: &SsvpHead) -> Result<String> {
    let mut hasher = Sha256::new();
    let model = serde_json::to_string(head.model_config()).map_err(Error::model)?;
    hasher.update(model.as_bytes());
    for (name, var) in head.named_vars() {
        hasher.update(name.as_bytes());
        let values = var
            .as_tensor()
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        for v in values {
            hasher.update(v.to_le_bytes());
        }
    }
    Ok(hex_digest(hasher))
}

/// The finished digest as lowercase hex.
fn hex_digest(hasher: Sha256) -> String {
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// SHA-256 over a bank's metadata (JSON) and its vectors (f32 little-endian, tap by tap).
fn bank_digest(bank: &ssvp_memory::PatchBank) -> Result<String> {
    let mut hasher = Sha256::new();
    hasher.update(
        serde_json::to_string(bank.meta())
            .map_err(Error::model)?
            .as_bytes(),
    );
    for keys in bank.keys() {
        for v in keys.flatten_all()?.to_vec1::<f32>()? {
            hasher.update(v.to_le_bytes());
        }
    }
    Ok(hex_digest(hasher))
}

/// RsCIN's global features: MuSc takes DINO's normed CLS as is and CLIP's image embedding
/// L2-normalised; the tower of the first tap decides.
fn rscin_globals(features: &[ImageFeatures], first: Tap) -> Result<Tensor> {
    let rows: Vec<Tensor> = features
        .iter()
        .map(|f| match first.tower {
            crate::memory::Tower::Dino => f.dino_global.clone(),
            crate::memory::Tower::Clip => f.clip_global.clone(),
        })
        .collect();
    let g = Tensor::stack(&rows, 0)?;
    Ok(match first.tower {
        crate::memory::Tower::Dino => g,
        crate::memory::Tower::Clip => ssvp_memory::knn::l2_normalize_rows(&g)?,
    })
}

/// Features of image files through any source (a cache, live backbones): what evaluation scores.
pub fn features_of_files(
    source: &dyn FeatureSource,
    paths: &[PathBuf],
) -> Result<Vec<ImageFeatures>> {
    source.features_batch(paths).map_err(|e| {
        let text = format!("{e:#}");
        // A file that fails to decode is the input's fault, not the model's.
        if e.chain()
            .any(|c| c.downcast_ref::<ssvp_image::Error>().is_some())
        {
            Error::new(ErrorKind::InvalidInput, text)
        } else {
            Error::model(e)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server shares one detector between request threads.
    #[test]
    fn a_detector_can_be_shared_between_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<Detector>();
    }

    #[test]
    fn bad_options_are_named() {
        let bad = |o: DetectorOptions| o.validate().unwrap_err().to_string();
        assert!(bad(DetectorOptions {
            class_name: " ".into(),
            ..DetectorOptions::default()
        })
        .contains("class name"));
        assert!(bad(DetectorOptions {
            tiling: Some(Tiling {
                size: 64,
                overlap: 64
            }),
            ..DetectorOptions::default()
        })
        .contains("overlap"));
        assert!(bad(DetectorOptions {
            map_scale: Some(ColorScale { lo: 1.0, hi: 0.0 }),
            ..DetectorOptions::default()
        })
        .contains("map scale"));
    }
}
