//! A whole training run as a front asks for it ([`TrainJob`], [`run_job`]): the config and its
//! overrides, the run directory (fresh, forced or resumed), the training data, the backbones and
//! their feature cache, then [`train`](super::train). `ssvp train` maps its arguments onto a
//! [`TrainJob`] and prints the [`JobEvent`]s; every check of a resumed run against what it is
//! asked to do lives here ([`check_resume`]), once.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Device;
use ssvp_eval::datasets::{
    self, CheckLevel, Dataset, Layout, LoadOptions, OnProblem, Problem, Split,
};
use ssvp_features::{Backbones, CacheStats, CacheStorage, FeatureCache, FeatureSource};

use super::{
    samples_from_dataset, train, training_data, Start, TrainEvent, TrainOptions, TrainSample,
    TrainSummary, DEFAULT_MASK_SIZE,
};
use crate::config::SsvpConfig;
use crate::error::{Error, Result};
use crate::features::{load_backbones, PromptEncoding};
use crate::head::SsvpHead;
use crate::run_dir::{RunDir, RunState};

/// How a [`TrainJob`] treats its run directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobStart {
    /// A new run; a non-empty directory is refused unless `force` (then the earlier run's
    /// files are removed).
    Fresh {
        /// Start over in a non-empty run directory.
        force: bool,
    },
    /// Continue the run in the directory from its last checkpoint, with its own config and
    /// data.
    Resume,
}

/// Where the backbones' features are cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CacheChoice {
    /// No cache: every epoch runs the backbones again.
    Off,
    /// A feature cache in `dir` (`None`: [`FeatureCache::default_dir`]).
    On {
        /// The cache directory.
        dir: Option<PathBuf>,
        /// Precision of the cached features.
        storage: CacheStorage,
    },
}

/// A training run as a front asks for it. Options left `None` (or empty) take the defaults of a
/// fresh run and the run's own values on resume; a given option that contradicts the resumed
/// run is refused with [`Error::Mismatch`].
#[derive(Debug, Clone)]
pub struct TrainJob {
    /// The run directory.
    pub out: PathBuf,
    /// Fresh (forced or not) or resumed.
    pub start: JobStart,
    /// SSVP config file (TOML); `None`: the paper's setting, or the tiny one with the preset.
    /// On resume the run's own config is used and a given file must equal it.
    pub config: Option<PathBuf>,
    /// Backbones preset (`tiny`), as [`SsvpConfig::load`] takes it.
    pub backbones_preset: Option<String>,
    /// Override of `optim.epochs`.
    pub epochs: Option<usize>,
    /// Override of `optim.batch_size`.
    pub batch_size: Option<usize>,
    /// Override of `optim.seed`.
    pub seed: Option<u64>,
    /// Turn the training augmentations on (`augment.enabled`).
    pub augment: bool,
    /// Dataset root (required for a fresh run; on resume: the run's unless given).
    pub root: Option<PathBuf>,
    /// Dataset layout (`None`: detect it; on resume: the run's).
    pub layout: Option<Layout>,
    /// Train on these categories only (empty: all; on resume: the run's).
    pub categories: Vec<String>,
    /// Side of the square training masks (default [`DEFAULT_MASK_SIZE`]; on resume: the
    /// run's).
    pub mask_size: Option<usize>,
    /// Drop unreadable samples instead of failing (a resumed run that skipped them skips them
    /// again).
    pub skip_bad: bool,
    /// Also checkpoint every this many steps.
    pub checkpoint_every: Option<usize>,
    /// Stop (with a checkpoint) after this many steps in total.
    pub max_steps: Option<usize>,
    /// The feature cache.
    pub cache: CacheChoice,
    /// Where the tensors live.
    pub device: Device,
}

/// Progress reports of [`run_job`].
#[derive(Debug)]
pub enum JobEvent<'a> {
    /// A sample (or category) of the dataset was dropped under `skip_bad`.
    Skipped(&'a Problem),
    /// The data is read and the backbones are loaded; training starts.
    Loaded {
        /// The dataset trained on.
        dataset: &'a Dataset,
        /// Its samples, in training order before shuffling.
        samples: &'a [TrainSample],
        /// The config the run trains with.
        config: &'a SsvpConfig,
    },
    /// A report of the training loop.
    Train(TrainEvent<'a>),
}

/// What [`run_job`] did.
#[derive(Debug, Clone)]
pub struct JobSummary {
    /// The run directory.
    pub run: PathBuf,
    /// The training loop's summary.
    pub train: TrainSummary,
    /// The feature cache's directory and counters (`None` without a cache).
    pub cache: Option<(PathBuf, CacheStats)>,
}

/// The data options a job resolves to (the given ones, or the resumed run's).
struct DataChoice {
    root: PathBuf,
    layout: Option<Layout>,
    categories: Vec<String>,
    mask_size: usize,
    skip_bad: bool,
}

/// Runs a training job: resolves its config and data (the resumed run's where not given, and
/// refuses what contradicts it), opens or creates the run directory (nothing is written before
/// the options are checked), reads the dataset, loads the backbones behind the feature cache and
/// trains.
pub fn run_job(job: &TrainJob, on_event: &mut dyn FnMut(JobEvent)) -> Result<JobSummary> {
    let (run, cfg, choice, start) = match job.start {
        JobStart::Resume => {
            let run = RunDir::open(&job.out).map_err(|e| {
                e.context(format!(
                    "--resume: {} holds no run to continue",
                    job.out.display()
                ))
            })?;
            let state = run.read_state()?;
            let cfg = run.read_config()?;
            let given = job
                .config
                .as_deref()
                .map(|path| SsvpConfig::load(Some(path), job.backbones_preset.as_deref()))
                .transpose()?;
            check_resume(
                &run,
                &cfg,
                &state,
                &ResumeRequest {
                    config: given.as_ref().zip(job.config.as_deref().map(Some)),
                    epochs: job.epochs,
                    batch_size: job.batch_size,
                    seed: job.seed,
                    augment: job.augment,
                    mask_size: job.mask_size,
                    categories: &job.categories,
                    layout: job.layout,
                },
            )?;
            let data = &state.data;
            let layout = data.layout.parse::<Layout>().map_err(|e| {
                Error::Checkpoint(format!(
                    "{}: layout `{}`: {e}",
                    run.file(crate::run_dir::STATE_FILE).display(),
                    data.layout
                ))
            })?;
            let choice = DataChoice {
                root: job.root.clone().unwrap_or_else(|| data.root.clone()),
                layout: Some(layout),
                categories: data.categories.clone(),
                mask_size: state.mask_size,
                skip_bad: job.skip_bad || data.skip_bad,
            };
            check_root(&choice.root)?;
            (run, cfg, choice, Start::Resume)
        }
        JobStart::Fresh { force } => {
            let mut cfg = SsvpConfig::load(job.config.as_deref(), job.backbones_preset.as_deref())?;
            if let Some(e) = job.epochs {
                cfg.optim.epochs = e;
            }
            if let Some(b) = job.batch_size {
                cfg.optim.batch_size = b;
            }
            if let Some(s) = job.seed {
                cfg.optim.seed = s;
            }
            if job.augment {
                cfg.augment.enabled = true;
            }
            cfg.validate()?;
            let root = job
                .root
                .clone()
                .ok_or_else(|| Error::Config("a fresh training run needs a dataset root".into()))?;
            let choice = DataChoice {
                root,
                layout: job.layout,
                categories: job.categories.clone(),
                mask_size: job.mask_size.unwrap_or(DEFAULT_MASK_SIZE),
                skip_bad: job.skip_bad,
            };
            // Checked before the run directory is created, so a typo leaves nothing behind.
            options(job, &choice).validate()?;
            check_root(&choice.root)?;
            (RunDir::create(&job.out, force)?, cfg, choice, Start::Fresh)
        }
    };

    let loaded = datasets::load(
        &choice.root,
        &LoadOptions {
            layout: choice.layout,
            split: Some(Split::Test),
            categories: choice.categories.clone(),
            on_problem: if choice.skip_bad {
                OnProblem::Skip
            } else {
                OnProblem::Fail
            },
            // Under skip_bad every image is decoded once up front: training has no other way
            // to skip a truncated file, whose features it computes only in the first epoch.
            check: if choice.skip_bad {
                CheckLevel::Decode
            } else {
                CheckLevel::Headers
            },
        },
    )
    .map_err(|source| Error::Dataset {
        context: format!("reading the training data in {}", choice.root.display()),
        source,
    })?;
    for problem in &loaded.skipped {
        on_event(JobEvent::Skipped(problem));
    }
    let dataset = loaded.dataset;
    let samples = samples_from_dataset(&dataset);

    let backbones = Arc::new(load_backbones(&cfg.backbones, &cfg.model, &job.device)?);
    let encoder = backbones.prompt_encoder()?;
    let cache = match &job.cache {
        CacheChoice::Off => None,
        CacheChoice::On { dir, storage } => Some(FeatureCache::new(
            Arc::clone(&backbones),
            dir.clone()
                .unwrap_or_else(FeatureCache::<Arc<Backbones>>::default_dir),
            *storage,
        )?),
    };
    let source: &dyn FeatureSource = match &cache {
        Some(c) => c,
        None => &backbones,
    };
    let head = SsvpHead::new(&cfg, &job.device)?;

    on_event(JobEvent::Loaded {
        dataset: &dataset,
        samples: &samples,
        config: &cfg,
    });
    let mut data = training_data(&dataset);
    data.skip_bad = choice.skip_bad;
    let summary = train(
        &run,
        &head,
        source,
        &encoder,
        &samples,
        data,
        &options(job, &choice),
        start,
        &mut |ev| on_event(JobEvent::Train(ev)),
    )?;
    Ok(JobSummary {
        run: run.path().to_path_buf(),
        train: summary,
        cache: cache.map(|c| (c.dir().to_path_buf(), c.stats())),
    })
}

/// The training loop's options of a job.
fn options(job: &TrainJob, choice: &DataChoice) -> TrainOptions {
    TrainOptions {
        mask_size: choice.mask_size,
        checkpoint_every: job.checkpoint_every,
        stop_after: job.max_steps,
        warm_cache: true,
    }
}

/// Refuses a dataset root that does not exist.
fn check_root(root: &Path) -> Result<()> {
    std::fs::metadata(root).map(drop).map_err(|e| {
        Error::io(root, e).context(format!("dataset root {} does not exist", root.display()))
    })
}

/// What a resumed run is asked to be; `None` (or empty) takes the run's.
#[derive(Default)]
pub(crate) struct ResumeRequest<'a> {
    /// A whole config, and the file it was read from (`None`: the head's own).
    pub config: Option<(&'a SsvpConfig, Option<&'a Path>)>,
    pub epochs: Option<usize>,
    pub batch_size: Option<usize>,
    pub seed: Option<u64>,
    /// Augmentation asked for (`false` asks nothing).
    pub augment: bool,
    pub mask_size: Option<usize>,
    pub categories: &'a [String],
    pub layout: Option<Layout>,
}

/// Refuses a resume of `run` (its `stored` config and `state`) that asks for another config,
/// schedule, augmentation, mask size or data: the one place these are compared. The message
/// names the option (as `ssvp train` spells it), the value given and the run's.
pub(crate) fn check_resume(
    run: &RunDir,
    stored: &SsvpConfig,
    state: &RunState,
    req: &ResumeRequest,
) -> Result<()> {
    let refuse = |msg: String| Err(Error::Mismatch(msg));
    if let Some((given, file)) = req.config {
        if given != stored {
            return refuse(match file {
                Some(path) => format!(
                    "--resume continues with the run's own config.toml; {} differs from it",
                    path.display()
                ),
                None => format!(
                    "{}: the run was trained with a different configuration (resume uses the \
                     run's config.toml; start a new run to change it)",
                    run.path().display()
                ),
            });
        }
    }
    let optim = &stored.optim;
    for (flag, given, stored) in [
        (
            "--epochs",
            req.epochs.map(|v| v as u64),
            optim.epochs as u64,
        ),
        (
            "--batch-size",
            req.batch_size.map(|v| v as u64),
            optim.batch_size as u64,
        ),
        ("--seed", req.seed, optim.seed),
    ] {
        if let Some(v) = given.filter(|&v| v != stored) {
            return refuse(format!(
                "--resume: {flag} {v} differs from the run's {stored} (start a new run to change \
                 it)"
            ));
        }
    }
    if req.augment && !stored.augment.enabled {
        return refuse(
            "--resume: --augment differs from the run's config (augment.enabled = false)".into(),
        );
    }
    let differs = |flag: &str, given: String, stored: String| {
        Err(Error::Mismatch(format!(
            "--resume: {flag} {given} differs from the run's {stored} (resume takes the run's \
             options; start a new run to change them)"
        )))
    };
    let data = &state.data;
    if let Some(m) = req.mask_size.filter(|&m| m != state.mask_size) {
        return differs("--mask-size", m.to_string(), state.mask_size.to_string());
    }
    if !req.categories.is_empty() && req.categories != data.categories.as_slice() {
        return differs(
            "--categories",
            req.categories.join(","),
            data.categories.join(","),
        );
    }
    if let Some(layout) = req.layout.filter(|l| l.name() != data.layout) {
        return differs("--dataset", layout.name().to_string(), data.layout.clone());
    }
    Ok(())
}
