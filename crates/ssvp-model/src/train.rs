//! Training the SSVP head on an auxiliary dataset (the standard zero-shot protocol: the labelled
//! test split of, e.g., VisA, all categories, with masks), the backbones frozen.
//!
//! Choices (docs/method.md §2 #11 and #14 leave them to the training loop):
//! - **Features** come from a [`FeatureSource`]; [`run_job`] wraps the backbones in a
//!   `FeatureCache`, and [`train`] first runs one pass over every image so the cache is filled before the first
//!   epoch: epochs then cost the head (and the text tower under the prompts) only.
//! - **Augmentation** (`[augment]`, off by default) acts on pixels before the frozen backbones:
//!   an augmented image is decoded, transformed with its mask, and run through the backbones
//!   afresh ([`FeatureSource::features_of_images`], which bypasses the cache). An image whose
//!   drawn plan changes nothing still reads the cache. With augmentation on, the warm-up pass
//!   over the cache is skipped, since almost every step recomputes its features anyway.
//! - **Batches mix categories.** One seeded permutation of all samples per epoch (PyTorch's
//!   `shuffle=True`, last partial batch kept). `T_init` is per class name, so each step encodes
//!   the prompts once per *distinct* class name in the batch (keeping the graph to the prompt
//!   bank) and gathers the rows per image into `T_init [B, 2P, D]`.
//! - **Masks** are read at their own size, resized to a square `mask_size` by the evaluation
//!   protocol (PIL bilinear on the 0/255 mask, then `> 0.5`), and the head's loss upsamples its
//!   token-grid maps to them (exact bilinear, differentiable). Normal images get all-zero masks.
//!   The default, 518, is the input side the baseline trains its masks at.
//! - **VAE noise** of step `s` is drawn from a generator seeded by `(seed, s)`, and the epoch
//!   permutation from `(seed, epoch)`, so a resumed run replays exactly what an uninterrupted one
//!   would have done.
//! - **Resume** restores the Adam moments exactly: [`TrainOptimizer`] is the same update as
//!   [`crate::SsvpOptimizer`] (one Adam(W) per learning-rate group, same schedule, same
//!   operation order) with its moments readable and writable.
//! - **Two entry points.** [`train`] trains a given head on given samples into a run directory;
//!   [`run_job`] is a whole run as `ssvp train` asks for it (config and overrides, data, backbones,
//!   cache), and holds every check of a resumed run against the options it is given.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use serde::{Deserialize, Serialize};
use ssvp_eval::datasets::Dataset;
use ssvp_image::{GrayImage8, RgbImage8};

use crate::augment::{
    check_mask_size, grid_values, load_image_and_mask, mask_to_training, AugmentPlan, Augmenter,
};
use crate::config::{OptimConfig, SsvpConfig};
use crate::error::{Error, Result};
use ssvp_features::{BackboneIdentity, FeatureSource, ImageFeatures};

use crate::head::stack_features;
use crate::head::{Mode, ParamGroup, SsvpHead};
use crate::loss::Targets;
use crate::optim::CosineSchedule;
use crate::rng::{Rng, STREAM_NOISE, STREAM_PERMUTATION};
use crate::run_dir::{checkpoint_names, RunDir, RunState, TrainingData, RUN_FORMAT_VERSION};
use crate::vcpg::PromptTextEncoder;
use ssvp_eval::datasets::eval_mask;

/// Default side of the square training masks.
pub const DEFAULT_MASK_SIZE: usize = 518;

pub use crate::samples::{samples_from_dataset, TrainSample};
pub use job::{run_job, CacheChoice, JobEvent, JobStart, JobSummary, TrainJob};

mod job;

/// What [`train`] records about its data in the run directory.
pub fn training_data(dataset: &Dataset) -> TrainingData {
    let counts = dataset.counts();
    TrainingData {
        root: dataset.root.clone(),
        layout: dataset.layout.name().to_string(),
        split: dataset.split.as_str().to_string(),
        categories: dataset.categories.iter().map(|c| c.name.clone()).collect(),
        samples: counts.total(),
        anomalous: counts.anomalous,
        skip_bad: false,
    }
}

/// Options of the training loop that are not hyper-parameters of the method.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    /// Side of the square masks the segmentation loss compares the maps with.
    pub mask_size: usize,
    /// Also checkpoint every this many steps (checkpoints are always written at the end of
    /// every epoch).
    pub checkpoint_every: Option<usize>,
    /// Stop (with a checkpoint) once this many steps are done in total; the run stays
    /// incomplete and `--resume` continues it.
    pub stop_after: Option<usize>,
    /// Run every image through the feature source once before the first epoch (fills a
    /// feature cache; progress is reported as [`TrainEvent::Features`]).
    pub warm_cache: bool,
}

impl TrainOptions {
    /// Refuses options the loop cannot run with (a zero mask size).
    pub fn validate(&self) -> Result<()> {
        check_mask_size(self.mask_size)
    }
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            mask_size: DEFAULT_MASK_SIZE,
            checkpoint_every: None,
            stop_after: None,
            warm_cache: true,
        }
    }
}

/// One optimiser step, as logged to `train_log.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepRecord {
    /// 0-based epoch.
    pub epoch: usize,
    /// 0-based step over the whole run.
    pub step: usize,
    /// Images in the batch (the last batch of an epoch may be partial).
    pub batch_size: usize,
    /// How many images of the batch were augmented (their features computed afresh).
    #[serde(default)]
    pub augmented: usize,
    /// Learning rate of the prompt group at this step.
    pub lr_prompts: f64,
    /// Learning rate of everything else at this step.
    pub lr_rest: f64,
    /// Every loss term of [`crate::LossTerms::named`].
    #[serde(flatten)]
    pub losses: BTreeMap<String, f64>,
    /// Wall time of the step (features, forward, backward, update).
    pub seconds: f64,
}

/// Progress reports of [`train`].
#[derive(Debug)]
pub enum TrainEvent<'a> {
    /// Feature extraction pass: `done` of `total` images.
    Features {
        /// Images done.
        done: usize,
        /// Images in all.
        total: usize,
    },
    /// Training starts (or resumes) at `step` of `total_steps`.
    Start {
        /// The first step to run.
        step: usize,
        /// Steps of the whole run.
        total_steps: usize,
        /// Steps per epoch.
        steps_per_epoch: usize,
    },
    /// A step is done (and logged).
    Step(&'a StepRecord),
    /// A checkpoint after `step` steps is committed.
    Checkpoint {
        /// Steps done.
        step: usize,
    },
}

/// How [`train`] starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// A fresh run in an empty (or `--force`d) run directory.
    Fresh,
    /// Continue the run directory's last checkpoint.
    Resume,
}

/// What a call of [`train`] did.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// The run's state after the call (its last checkpoint).
    pub state: RunState,
    /// Steps run by this call.
    pub steps_run: usize,
    /// Wall time of the steps run.
    pub seconds: f64,
    /// The last step run by this call.
    pub last: Option<StepRecord>,
}

/// Adam(W) per learning-rate group with the warm-up + cosine schedule: the update of
/// [`crate::SsvpOptimizer`] (candle's `AdamW::step`, operation for operation), with the moments
/// exposed so that a checkpoint can hold them.
pub struct TrainOptimizer {
    groups: Vec<AdamGroup>,
    schedule: CosineSchedule,
    cfg: OptimConfig,
    step: usize,
}

struct AdamGroup {
    base_lr: f64,
    /// `(name, parameter, first moment, second moment)`.
    vars: Vec<(String, Var, Var, Var)>,
}

impl TrainOptimizer {
    /// Zero moments for the head's trainable tensors, the schedule over `total_steps`.
    pub fn new(head: &SsvpHead, cfg: &OptimConfig, total_steps: usize) -> Result<Self> {
        let groups = [
            (ParamGroup::Prompts, cfg.lr_prompts),
            (ParamGroup::Rest, cfg.lr_rest),
        ]
        .into_iter()
        .map(|(group, base_lr)| {
            let vars = head
                .group_vars(group)
                .into_iter()
                .map(|(name, var)| {
                    let m = Var::zeros(var.shape(), var.dtype(), var.device())?;
                    let v = Var::zeros(var.shape(), var.dtype(), var.device())?;
                    Ok((name, var, m, v))
                })
                .collect::<candle_core::Result<Vec<_>>>()?;
            Ok(AdamGroup { base_lr, vars })
        })
        .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self {
            groups,
            schedule: CosineSchedule::new(cfg, total_steps),
            cfg: cfg.clone(),
            step: 0,
        })
    }

    /// Steps done.
    pub fn step_index(&self) -> usize {
        self.step
    }

    /// `(prompts, rest)` learning rates of the next step.
    pub fn learning_rates(&self) -> (f64, f64) {
        let f = self.schedule.factor(self.step);
        (self.groups[0].base_lr * f, self.groups[1].base_lr * f)
    }

    /// One update from gradients.
    pub fn step(&mut self, grads: &candle_core::backprop::GradStore) -> Result<()> {
        let factor = self.schedule.factor(self.step);
        // candle's AdamW counts its own steps from 1; every group steps every time.
        let t = (self.step + 1) as i32;
        let (beta1, beta2) = (self.cfg.beta1, self.cfg.beta2);
        let scale_m = 1f64 / (1f64 - beta1.powi(t));
        let scale_v = 1f64 / (1f64 - beta2.powi(t));
        for group in &self.groups {
            let lr = group.base_lr * factor;
            let lr_lambda = lr * self.cfg.weight_decay;
            for (_, theta, m, v) in &group.vars {
                if let Some(g) = grads.get(theta) {
                    let next_m = ((m.as_tensor() * beta1)? + (g * (1.0 - beta1))?)?;
                    let next_v = ((v.as_tensor() * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
                    let m_hat = (&next_m * scale_m)?;
                    let v_hat = (&next_v * scale_v)?;
                    let next_theta = (theta.as_tensor() * (1f64 - lr_lambda))?;
                    let adjusted = (m_hat / (v_hat.sqrt()? + self.cfg.eps)?)?;
                    let next_theta = (next_theta - (adjusted * lr)?)?;
                    m.set(&next_m)?;
                    v.set(&next_v)?;
                    theta.set(&next_theta)?;
                }
            }
        }
        self.step += 1;
        Ok(())
    }

    /// The moments as named tensors (`m.<param>`, `v.<param>`).
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        self.groups
            .iter()
            .flat_map(|g| &g.vars)
            .flat_map(|(name, _, m, v)| {
                [
                    (format!("m.{name}"), m.as_tensor().clone()),
                    (format!("v.{name}"), v.as_tensor().clone()),
                ]
            })
            .collect()
    }

    /// Writes the moments as safetensors.
    pub fn save(&self, path: &Path) -> Result<()> {
        let tensors: std::collections::HashMap<String, Tensor> =
            self.state_tensors().into_iter().collect();
        Ok(candle_core::safetensors::save(&tensors, path)?)
    }

    /// Restores the moments written by [`Self::save`] after `step` steps.
    /// A missing file is [`Error::NotFound`], an unreadable one [`Error::Io`], one that does
    /// not hold exactly the moments of the head's tensors [`Error::Checkpoint`].
    pub fn load(&mut self, path: &Path, step: usize) -> Result<()> {
        let device = self
            .groups
            .iter()
            .flat_map(|g| &g.vars)
            .map(|(_, v, _, _)| v.device().clone())
            .next()
            .unwrap_or(Device::Cpu);
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let tensors = candle_core::safetensors::load_buffer(&bytes, &device).map_err(|e| {
            Error::Checkpoint(format!("reading optimiser state {}: {e}", path.display()))
        })?;
        for (name, _, m, v) in self.groups.iter().flat_map(|g| &g.vars) {
            for (prefix, var) in [("m", m), ("v", v)] {
                let key = format!("{prefix}.{name}");
                let t = tensors.get(&key).ok_or_else(|| {
                    Error::Checkpoint(format!("optimiser state {} lacks {key}", path.display()))
                })?;
                if t.dims() != var.dims() {
                    return Err(Error::Checkpoint(format!(
                        "optimiser state {}: {key} has shape {:?}, the head's {:?}",
                        path.display(),
                        t.dims(),
                        var.dims()
                    )));
                }
                var.set(t)?;
            }
        }
        let needed = 2 * self.groups.iter().map(|g| g.vars.len()).sum::<usize>();
        if tensors.len() != needed {
            return Err(Error::Checkpoint(format!(
                "optimiser state {} holds {} tensors, the head needs {needed}",
                path.display(),
                tensors.len(),
            )));
        }
        self.step = step;
        Ok(())
    }
}

/// The sample order of `epoch` (Fisher-Yates with a generator seeded by `(seed, epoch)`).
pub fn epoch_permutation(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    let mut rng = Rng::new(seed, STREAM_PERMUTATION, epoch as u64);
    for i in (1..n).rev() {
        order.swap(i, rng.below(i + 1));
    }
    order
}

/// Standard-normal VAE noise `[b, d]` of step `step`.
pub fn step_noise(seed: u64, step: usize, b: usize, d: usize, device: &Device) -> Result<Tensor> {
    let mut rng = Rng::new(seed, STREAM_NOISE, step as u64);
    let data: Vec<f32> = (0..b * d).map(|_| rng.normal() as f32).collect();
    Ok(Tensor::from_vec(data, (b, d), device)?)
}

/// The training mask of one sample, `size x size`, 1 = defect (all zero for a normal image).
pub fn training_mask(sample: &TrainSample, size: usize) -> Result<Vec<f32>> {
    require_mask(sample)?;
    check_mask_size(size)?;
    let grid = eval_mask(sample.mask_path.as_deref(), size).map_err(|source| Error::Dataset {
        context: format!("the mask of {}", sample.image_path.display()),
        source,
    })?;
    Ok(grid_values(&grid))
}

/// Refuses an anomalous training image without a mask: training needs its pixel labels.
fn require_mask(sample: &TrainSample) -> Result<()> {
    if sample.anomalous && sample.mask_path.is_none() {
        return Err(Error::Data(format!(
            "{}: anomalous training image without a mask (training needs pixel labels)",
            sample.image_path.display()
        )));
    }
    Ok(())
}

/// `T_init [B, 2P, D]` for the class names of a batch: the prompts are encoded once per distinct
/// name (in first-seen order) and gathered per image.
pub fn batch_t_init(
    head: &SsvpHead,
    encoder: &dyn PromptTextEncoder,
    class_names: &[&str],
) -> Result<Tensor> {
    let mut distinct: Vec<&str> = Vec::new();
    let mut index = Vec::with_capacity(class_names.len());
    for name in class_names {
        let i = match distinct.iter().position(|d| d == name) {
            Some(i) => i,
            None => {
                distinct.push(name);
                distinct.len() - 1
            }
        };
        index.push(i as u32);
    }
    let encoded = distinct
        .iter()
        .map(|name| {
            head.encode_prompts(encoder, name)
                .map_err(|e| e.context(format!("encoding the prompts of `{name}`")))
        })
        .collect::<Result<Vec<_>>>()?;
    let stacked = Tensor::stack(&encoded, 0)?;
    if distinct.len() == 1 {
        let (p, d) = (stacked.dim(1)?, stacked.dim(2)?);
        return Ok(stacked
            .broadcast_as((class_names.len(), p, d))?
            .contiguous()?);
    }
    let index = Tensor::from_vec(index, class_names.len(), stacked.device())?;
    Ok(stacked.index_select(&index, 0)?)
}

/// The features, masks and labels of one batch, augmented by `plans`.
struct BatchInputs {
    features: Vec<ImageFeatures>,
    masks: Vec<f32>,
    labels: Vec<f32>,
    augmented: usize,
}

fn batch_inputs(
    source: &dyn FeatureSource,
    samples: &[TrainSample],
    batch: &[usize],
    plans: &[AugmentPlan],
    mask_size: usize,
) -> Result<BatchInputs> {
    let b = batch.len();
    let mut features: Vec<Option<ImageFeatures>> = (0..b).map(|_| None).collect();
    let mut masks: Vec<Vec<f32>> = vec![Vec::new(); b];
    let mut labels = vec![0f32; b];
    // Unchanged images: the source's path (and cache); augmented ones: decoded, transformed,
    // and run through the backbones as one batch.
    let plain: Vec<usize> = (0..b).filter(|&j| plans[j].is_identity()).collect();
    let paths: Vec<PathBuf> = plain
        .iter()
        .map(|&j| samples[batch[j]].image_path.clone())
        .collect();
    for (&j, f) in plain.iter().zip(source.features_batch(&paths)?) {
        let s = &samples[batch[j]];
        features[j] = Some(f);
        masks[j] = training_mask(s, mask_size)?;
        labels[j] = if s.anomalous { 1.0 } else { 0.0 };
    }
    let tile = |i: usize| -> Result<(RgbImage8, GrayImage8)> {
        let s = &samples[i];
        load_image_and_mask(&s.image_path, s.mask_path.as_deref())
    };
    let changed: Vec<usize> = (0..b).filter(|&j| !plans[j].is_identity()).collect();
    let mut images = Vec::with_capacity(changed.len());
    for &j in &changed {
        let s = &samples[batch[j]];
        require_mask(s)?;
        let (image, mask) = tile(batch[j])?;
        let (image, mask) = plans[j]
            .apply(image, mask, &tile)
            .map_err(|e| e.context(format!("augmenting {}", s.image_path.display())))?;
        masks[j] = mask_to_training(&mask, mask_size)?;
        // A mosaic is built from anomalous images only.
        labels[j] = if s.anomalous || plans[j].mosaic.is_some() {
            1.0
        } else {
            0.0
        };
        images.push(image);
    }
    let computed = source.features_of_images(&images)?;
    if computed.len() != changed.len() {
        return Err(Error::Shape(format!(
            "the feature source returned {} results for {} images",
            computed.len(),
            changed.len()
        )));
    }
    for (&j, f) in changed.iter().zip(computed) {
        features[j] = Some(f);
    }
    Ok(BatchInputs {
        features: features
            .into_iter()
            .map(|f| f.expect("every image has features"))
            .collect(),
        masks: masks.concat(),
        labels,
        augmented: changed.len(),
    })
}

/// One optimiser step on `batch` (indices into `samples`); returns every loss term and the
/// number of augmented images.
#[allow(clippy::too_many_arguments)]
fn train_step(
    head: &SsvpHead,
    opt: &mut TrainOptimizer,
    source: &dyn FeatureSource,
    encoder: &dyn PromptTextEncoder,
    samples: &[TrainSample],
    batch: &[usize],
    plans: &[AugmentPlan],
    mask_size: usize,
    seed: u64,
    device: &Device,
) -> Result<(BTreeMap<String, f64>, usize)> {
    let inputs = batch_inputs(source, samples, batch, plans, mask_size)?;
    let features = stack_features(&inputs.features)?;
    let b = batch.len();
    let names: Vec<&str> = batch
        .iter()
        .map(|&i| samples[i].class_name.as_str())
        .collect();
    let t_init = batch_t_init(head, encoder, &names)?;
    let targets = Targets {
        masks: Tensor::from_vec(inputs.masks, (b, mask_size, mask_size), device)?,
        labels: Tensor::from_vec(inputs.labels, b, device)?,
    };
    let noise = step_noise(
        seed,
        opt.step_index(),
        b,
        head.model_config().vae_latent,
        device,
    )?;
    let out = head.forward(&features, &t_init, &Mode::Train { noise }, Some(&targets))?;
    let loss = out
        .loss
        .ok_or_else(|| Error::Shape("the head returned no loss terms".into()))?;
    let total = loss.total.to_dtype(DType::F32)?.to_scalar::<f32>()?;
    if !total.is_finite() {
        return Err(Error::Diverged {
            loss: total,
            step: opt.step_index(),
        });
    }
    let grads = loss.total.backward()?;
    opt.step(&grads)?;
    let losses = loss
        .named()
        .into_iter()
        .map(|(name, t)| {
            Ok((
                name.to_string(),
                t.to_dtype(DType::F64)?.to_scalar::<f64>()?,
            ))
        })
        .collect::<candle_core::Result<_>>()?;
    Ok((losses, inputs.augmented))
}

fn write_checkpoint(
    run: &RunDir,
    head: &SsvpHead,
    opt: &TrainOptimizer,
    state: &mut RunState,
) -> Result<()> {
    let (head_file, optim_file) = checkpoint_names(opt.step_index());
    run.write_atomic_with(&head_file, |tmp| head.save(tmp))?;
    run.write_atomic_with(&optim_file, |tmp| opt.save(tmp))?;
    state.step = opt.step_index();
    state.complete = state.step >= state.total_steps;
    state.head_file = head_file;
    state.optimizer_file = optim_file;
    run.commit_state(state)?;
    Ok(())
}

/// Trains `head` on `samples` into the run directory `run`.
///
/// [`Start::Fresh`] writes the config, the identity of `source`'s backbones and
/// a step-0 checkpoint of the untrained head first; [`Start::Resume`] loads the last checkpoint
/// (head tensors, Adam moments, step) and refuses a run whose config, data or identity differs.
#[allow(clippy::too_many_arguments)]
pub fn train(
    run: &RunDir,
    head: &SsvpHead,
    source: &dyn FeatureSource,
    encoder: &dyn PromptTextEncoder,
    samples: &[TrainSample],
    data: TrainingData,
    opts: &TrainOptions,
    start: Start,
    on_event: &mut dyn FnMut(TrainEvent),
) -> Result<TrainSummary> {
    let cfg: SsvpConfig = head.config().clone();
    let oc = &cfg.optim;
    if samples.is_empty() {
        return Err(Error::Data("no training samples".into()));
    }
    oc.validate()?;
    opts.validate()?;
    let steps_per_epoch = samples.len().div_ceil(oc.batch_size);
    let total_steps = steps_per_epoch * oc.epochs;
    let device = head
        .named_vars()
        .first()
        .map(|(_, v)| v.device().clone())
        .unwrap_or(Device::Cpu);
    let mut opt = TrainOptimizer::new(head, oc, total_steps)?;
    let identity = source.identity();

    let mut state = match start {
        Start::Fresh => {
            run.write_config(&cfg)?;
            run.write_identity(identity)?;
            let _ = std::fs::remove_file(run.file(crate::run_dir::LOG_FILE));
            let mut state = RunState {
                format_version: RUN_FORMAT_VERSION,
                data,
                epochs: oc.epochs,
                batch_size: oc.batch_size,
                steps_per_epoch,
                total_steps,
                step: 0,
                complete: false,
                head_file: String::new(),
                optimizer_file: String::new(),
                mask_size: opts.mask_size,
            };
            write_checkpoint(run, head, &opt, &mut state)?;
            state
        }
        Start::Resume => {
            let state = run.read_state()?;
            let stored_cfg = run.read_config()?;
            job::check_resume(
                run,
                &stored_cfg,
                &state,
                &job::ResumeRequest {
                    config: Some((&cfg, None)),
                    mask_size: Some(opts.mask_size),
                    ..Default::default()
                },
            )?;
            let stored: BackboneIdentity = run.read_identity()?;
            stored.check_matches(identity).map_err(|e| {
                Error::Mismatch(format!(
                    "{}: the run's features were made with other backbones than the ones given \
                     now: {}",
                    run.path().display(),
                    ssvp_util::error::message_chain(&e)
                ))
            })?;
            if state.data.samples != data.samples
                || state.data.categories != data.categories
                || state.steps_per_epoch != steps_per_epoch
                || state.total_steps != total_steps
            {
                return Err(Error::Mismatch(format!(
                    "{}: the run trained on {} samples of {:?} ({} steps); the data given now \
                     has {} samples of {:?} ({} steps)",
                    run.path().display(),
                    state.data.samples,
                    state.data.categories,
                    state.total_steps,
                    data.samples,
                    data.categories,
                    total_steps
                )));
            }
            head.load(run.file(&state.head_file))?;
            opt.load(&run.file(&state.optimizer_file), state.step)?;
            run.truncate_log(state.step)?;
            state
        }
    };

    if state.complete {
        return Ok(TrainSummary {
            state,
            steps_run: 0,
            seconds: 0.0,
            last: None,
        });
    }

    let augmenter = cfg
        .augment
        .enabled
        .then(|| Augmenter::new(&cfg.augment, samples, &state.data.layout));
    if opts.warm_cache && augmenter.is_none() {
        let total = samples.len();
        let mut done = 0;
        for chunk in samples.chunks(oc.batch_size) {
            let paths: Vec<PathBuf> = chunk.iter().map(|s| s.image_path.clone()).collect();
            source.features_batch(&paths)?;
            done += chunk.len();
            on_event(TrainEvent::Features { done, total });
        }
    }

    on_event(TrainEvent::Start {
        step: state.step,
        total_steps,
        steps_per_epoch,
    });
    let started = Instant::now();
    let first_step = state.step;
    let mut last = None;
    let stop = opts.stop_after.unwrap_or(total_steps).min(total_steps);
    while opt.step_index() < stop {
        let step = opt.step_index();
        let epoch = step / steps_per_epoch;
        let in_epoch = step % steps_per_epoch;
        let order = epoch_permutation(samples.len(), oc.seed, epoch);
        let lo = in_epoch * oc.batch_size;
        let hi = (lo + oc.batch_size).min(samples.len());
        let batch = &order[lo..hi];
        let plans = match &augmenter {
            Some(a) => a.plans(oc.seed, step, batch, samples),
            None => vec![AugmentPlan::default(); batch.len()],
        };
        let (lr_prompts, lr_rest) = opt.learning_rates();
        let t0 = Instant::now();
        let (losses, augmented) = train_step(
            head,
            &mut opt,
            source,
            encoder,
            samples,
            batch,
            &plans,
            opts.mask_size,
            oc.seed,
            &device,
        )?;
        let record = StepRecord {
            epoch,
            step,
            batch_size: batch.len(),
            augmented,
            lr_prompts,
            lr_rest,
            losses,
            seconds: t0.elapsed().as_secs_f64(),
        };
        let line = serde_json::to_string(&record)
            .map_err(|e| Error::Serialize(format!("cannot serialise a step record: {e}")))?;
        run.append_log(&[line])?;
        on_event(TrainEvent::Step(&record));
        last = Some(record);
        let done = opt.step_index();
        let epoch_end = done % steps_per_epoch == 0;
        let periodic = opts
            .checkpoint_every
            .is_some_and(|k| k > 0 && done % k == 0);
        if epoch_end || periodic || done == stop {
            write_checkpoint(run, head, &opt, &mut state)?;
            on_event(TrainEvent::Checkpoint { step: done });
        }
    }
    Ok(TrainSummary {
        steps_run: state.step - first_step,
        state,
        seconds: started.elapsed().as_secs_f64(),
        last,
    })
}
