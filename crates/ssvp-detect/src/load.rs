//! Where a detector's model comes from: a run directory of `ssvp train` with the backbones it
//! was trained on, or backbones alone for the training-free scorers, plus a memory and a
//! calibration ([`LoadSpec`], [`Detector::load`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Device;
use ssvp_eval::postprocess::PostprocessConfig;
use ssvp_features::Backbones;
use ssvp_model::run_dir::TrainedRun;
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
    let cfg = SsvpConfig::load(config, preset)
        .map_err(|e| Error::new(ErrorKind::InvalidInput, e.to_string()))?;
    // Without a head only the taps matter: no head width is checked against the towers.
    let backbones = Backbones::load(&cfg.backbones, &cfg.model.taps(), device)
        .map_err(|e| Error::from(e).context("loading the backbones"))?;
    Ok((Arc::new(backbones), cfg.postprocess))
}

/// The bank files of a reference folder that could not be read, as a load reports them.
pub type Skipped = Vec<(PathBuf, Error)>;

impl Detector {
    /// A detector over a loaded run.
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
