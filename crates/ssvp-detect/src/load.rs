//! Where a detector's model comes from: a run directory of `ssvp train` with the backbones it
//! was trained on, or backbones alone for the training-free scorers, plus a memory and a
//! calibration ([`LoadSpec`], [`Detector::load`]).
//!
//! Trained runs need the `head` feature (on by default). Without it, the scoring sections of a
//! config file are read by [`scoring_config`].

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Device;
use ssvp_eval::postprocess::PostprocessConfig;
use ssvp_features::Backbones;
use ssvp_features::{BackbonesConfig, TapLayers};
#[cfg(feature = "head")]
use ssvp_model::run_dir::TrainedRun;
#[cfg(feature = "head")]
use ssvp_model::SsvpConfig;

use crate::calibrate::Calibration;
use crate::detector::Detector;
use crate::error::{Error, ErrorKind, Result};
use crate::memory::MemorySpec;
use crate::settings::DetectorOptions;

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
#[cfg(feature = "head")]
pub struct LoadedRun {
    /// The head, its config and the identity of its backbones.
    pub run: TrainedRun,
    /// The backbones, shared with whatever else reads features (a cache, an evaluation).
    pub backbones: Arc<Backbones>,
}

/// Opens a run directory and loads the backbones it was trained with (or the ones `config` /
/// `preset` name instead, which must have the same identity). `config` also replaces the
/// run's post-processing.
#[cfg(feature = "head")]
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
        Error::from(e).context(format!("loading the checkpoint {}", checkpoint.display()))
    })?;
    let mut cfg = run.config.clone();
    if config.is_some() || preset.is_some() {
        let given = SsvpConfig::load(config, preset)
            .map_err(|e| Error::new(ErrorKind::InvalidInput, e.to_string()))?;
        cfg.backbones = given.backbones;
        if config.is_some() {
            run.set_postprocess(given.postprocess, device)?;
        }
    }
    let backbones = ssvp_model::load_backbones(&cfg.backbones, &cfg.model, device)
        .map_err(|e| Error::from(e).context("loading the backbones"))?;
    run.check_identity(backbones.identity())?;
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
    #[cfg(feature = "head")]
    let (backbones, taps, postprocess) = {
        let cfg = SsvpConfig::load(config, preset)
            .map_err(|e| Error::new(ErrorKind::InvalidInput, e.to_string()))?;
        (cfg.backbones, cfg.model.taps(), cfg.postprocess)
    };
    #[cfg(not(feature = "head"))]
    let (backbones, taps, postprocess) = scoring_config(config, preset)?;
    // Without a head only the taps matter: no head width is checked against the towers.
    let backbones = Backbones::load(&backbones, &taps, device)
        .map_err(|e| Error::from(e).context("loading the backbones"))?;
    Ok((Arc::new(backbones), postprocess))
}

/// The scoring sections of an SSVP config file (`[backbones]`, `[postprocess]`, the taps of
/// `[model]`) and the `tiny` preset, read as `SsvpConfig::load` reads them: what a build without
/// the head (and so without its config type) loads. The head's sections are not read. A test
/// of the default build holds the two readers equal.
pub fn scoring_config(
    config: Option<&Path>,
    preset: Option<&str>,
) -> Result<(BackbonesConfig, TapLayers, PostprocessConfig)> {
    #[derive(serde::Deserialize, Default)]
    #[serde(default)]
    struct File {
        backbones: BackbonesConfig,
        postprocess: PostprocessConfig,
        model: Taps,
    }
    #[derive(serde::Deserialize)]
    #[serde(default)]
    struct Taps {
        clip_layers: Vec<usize>,
        dino_layers: ssvp_features::DinoLayerSet,
    }
    impl Default for Taps {
        fn default() -> Self {
            let paper = TapLayers::paper();
            Self {
                clip_layers: paper.clip,
                dino_layers: paper.dino,
            }
        }
    }
    let invalid = |message: String| Error::new(ErrorKind::InvalidInput, message);
    let (mut backbones, mut taps, postprocess) = match config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
            let file: File = toml::from_str(&text)
                .map_err(|e| invalid(format!("{}: invalid SSVP config: {e}", path.display())))?;
            let taps = TapLayers {
                clip: file.model.clip_layers,
                dino: file.model.dino_layers,
            };
            (file.backbones, taps, file.postprocess)
        }
        None => (
            BackbonesConfig::default(),
            TapLayers::paper(),
            PostprocessConfig::default(),
        ),
    };
    match preset {
        None => {}
        Some(ssvp_features::TINY) => {
            backbones = BackbonesConfig::tiny();
            if config.is_none() {
                taps = TapLayers::tiny();
            }
        }
        Some(other) => {
            return Err(invalid(format!(
                "backbones preset `{other}`: the only preset is `tiny`; name real weights in \
                 the config's [backbones] section (clip = ..., dino = ...)"
            )))
        }
    }
    backbones.validate()?;
    Ok((backbones, taps, postprocess))
}

/// The bank files of a reference folder that could not be read, as a load reports them.
pub type Skipped = Vec<(PathBuf, Error)>;

impl Detector {
    /// A detector over a loaded run.
    #[cfg(feature = "head")]
    pub fn from_run(loaded: LoadedRun, options: DetectorOptions) -> Result<Self> {
        let name = loaded.run.run.path().display().to_string();
        let mut detector = Self::new(loaded.run.head, loaded.backbones, options)?;
        detector.set_checkpoint_name(name);
        Ok(detector)
    }

    /// Loads the run, its backbones, the memory and the calibration of `spec`.
    pub fn load(spec: &LoadSpec) -> Result<Self> {
        Ok(Self::load_reporting(spec)?.0)
    }

    /// [`Detector::load`], also returning the reference files that were skipped as unreadable.
    pub fn load_reporting(spec: &LoadSpec) -> Result<(Self, Skipped)> {
        spec.options.validate()?;
        let detector = match &spec.checkpoint {
            #[cfg(feature = "head")]
            Some(checkpoint) => {
                let loaded = load_run(
                    checkpoint,
                    spec.config.as_deref(),
                    spec.backbones_preset.as_deref(),
                    &spec.device,
                )?;
                Self::from_run(loaded, spec.options.clone())?
            }
            #[cfg(not(feature = "head"))]
            Some(_) => {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    "this build scores without a trained head (built without the `head` \
                     feature); drop --checkpoint",
                ))
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
                let (memory, skipped) = memory.load(detector.backbones(), &spec.device)?;
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
}
