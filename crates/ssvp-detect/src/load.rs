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
use ssvp_features::presets::{self, ANOMALYDINO};
use ssvp_features::{
    BackboneChoice, Backbones, BackbonesConfig, BackbonesRecord, TapLayers, NO_TOWER,
};
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
    /// The backbones flags: a preset (`--backbones`) and/or other weights for a tower. Without
    /// them: the run's backbones, else those a bank or calibration recorded, else the
    /// `anomalydino` preset.
    pub backbones: BackboneChoice,
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
    choice: &BackboneChoice,
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
    let preset = choice.preset.as_deref();
    if config.is_some() || preset.is_some() {
        let given = SsvpConfig::load(config, preset)
            .map_err(|e| Error::new(ErrorKind::InvalidInput, e.to_string()))?;
        cfg.backbones = given.backbones;
        if config.is_some() {
            run.set_postprocess(given.postprocess, device)?;
        }
    }
    choice
        .apply_weights(&mut cfg.backbones)
        .map_err(|e| Error::from(e).context("the backbones flags"))?;
    let backbones = ssvp_model::load_backbones(&cfg.backbones, &cfg.model, device)
        .map_err(|e| Error::from(e).context("loading the backbones"))?;
    run.check_identity(backbones.identity())?;
    Ok(LoadedRun {
        run,
        backbones: Arc::new(backbones),
    })
}

/// The backbones (and map post-processing) of a config file and/or the backbones flags, for
/// scoring without a trained head: `recorded` (what a bank or calibration was made with) when
/// neither names backbones, else the `anomalydino` preset. A flag's preset that conflicts with
/// the recorded one is refused. Without `needs_clip` a CLIP tower is left out (not loaded,
/// not fetched).
pub fn load_backbones(
    config: Option<&Path>,
    choice: &BackboneChoice,
    recorded: Option<&Recorded>,
    needs_clip: bool,
    device: &Device,
) -> Result<(Arc<Backbones>, PostprocessConfig)> {
    let (backbones, taps, postprocess) = scoring_backbones(config, choice, recorded, needs_clip)?;
    let backbones = Backbones::load(&backbones, &taps, device)
        .map_err(|e| Error::from(e).context("loading the backbones"))?;
    Ok((Arc::new(backbones), postprocess))
}

/// What an artifact recorded about the backbones it was made with.
#[derive(Clone, Debug)]
pub struct Recorded {
    /// The artifact, for messages (`the bank line3.bank`).
    pub what: String,
    /// Its backbones.
    pub record: BackbonesRecord,
}

impl Recorded {
    /// What the bank at `path` recorded (`None` for a bank written before banks recorded it).
    pub fn of_bank(path: &Path) -> Result<Option<Self>> {
        let meta = crate::memory::read_bank_meta(path)?;
        meta.made_with
            .map(|v| {
                Ok(Self {
                    what: format!("the bank {}", path.display()),
                    record: serde_json::from_value(v).map_err(|e| {
                        Error::invalid(format!(
                            "the bank {} records backbones this build cannot read: {e}",
                            path.display()
                        ))
                    })?,
                })
            })
            .transpose()
    }

    /// What the calibration at `path` recorded.
    pub fn of_calibration(path: &Path) -> Result<Option<Self>> {
        Ok(Calibration::read(path)?.model.made_with.map(|record| Self {
            what: format!("the calibration {}", path.display()),
            record,
        }))
    }

    /// What the artifacts of `spec` recorded: its bank's, else its calibration's.
    pub fn of_spec(spec: &LoadSpec) -> Result<Option<Self>> {
        if let Some(MemorySpec::Bank { path, .. }) = &spec.memory {
            if let Some(found) = Self::of_bank(path)? {
                return Ok(Some(found));
            }
        }
        match &spec.calibration {
            Some(path) => Self::of_calibration(path),
            None => Ok(None),
        }
    }
}

/// The backbone settings [`load_backbones`] loads (see there), without loading them.
pub fn scoring_backbones(
    config: Option<&Path>,
    choice: &BackboneChoice,
    recorded: Option<&Recorded>,
    needs_clip: bool,
) -> Result<(BackbonesConfig, TapLayers, PostprocessConfig)> {
    let flags = |e: ssvp_features::Error| Error::from(e).context("the backbones flags");
    if let Some(found) = recorded {
        choice
            .check_against(&found.record.backbones, &found.what)
            .map_err(flags)?;
    }
    // The artifact's own settings when the flags name no other backbones: they keep the
    // weights it was made with (a local copy, say), which the bare preset would not.
    let same_preset = |found: &Recorded| {
        choice.preset.is_none() || choice.preset == found.record.backbones.preset
    };
    let (mut backbones, mut taps, postprocess) = match (config, &choice.preset, recorded) {
        (None, _, Some(found)) if same_preset(found) => (
            found.record.backbones.clone(),
            found.record.taps.clone(),
            PostprocessConfig::default(),
        ),
        (Some(_), _, _) | (None, Some(_), _) => scoring_config(config, choice.preset.as_deref())?,
        // Nothing named and nothing recorded (a recorded one was taken above).
        (None, None, _) => {
            let preset = presets::preset(ANOMALYDINO).map_err(flags)?;
            (preset.config, preset.taps, PostprocessConfig::default())
        }
    };
    choice.apply_weights(&mut backbones).map_err(flags)?;
    if !needs_clip {
        backbones.clip = NO_TOWER.into();
        taps.clip.clear();
    } else if !backbones.has_clip() {
        return Err(Error::invalid(format!(
            "these scores read CLIP features, but the {} backbones have no CLIP tower; choose \
             backbones with one (--backbones paper or tiny)",
            backbones.preset.as_deref().unwrap_or("configured")
        )));
    }
    Ok((backbones, taps, postprocess))
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
    if let Some(name) = preset {
        // A preset replaces the file's backbones; the file's taps stay (its head reads them).
        let preset = presets::preset(name).map_err(|e| invalid(e.to_string()))?;
        backbones = preset.config;
        if config.is_none() {
            taps = preset.taps;
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
                    &spec.backbones,
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
                let needs_clip = match &spec.memory {
                    Some(memory) => memory.reads_clip()?,
                    None => false,
                };
                let (backbones, postprocess) = load_backbones(
                    spec.config.as_deref(),
                    &spec.backbones,
                    Recorded::of_spec(spec)?.as_ref(),
                    needs_clip,
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
