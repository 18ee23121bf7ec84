//! `ssvp train`: train the SSVP head on an auxiliary dataset. The arguments become a
//! `ssvp_model::train::TrainJob`; `ssvp_model::train::run_job` resolves, checks and runs it, and
//! this file prints its progress and summary.

use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ssvp_model::train::{run_job, CacheChoice, JobEvent, JobStart, TrainEvent, TrainJob};

use super::model_common::{parse_layout, CacheArgs};

const TRAIN_HELP: &str = "\
Trains on the labelled TEST split of the auxiliary dataset (all categories, masks; normal images
get all-zero masks), the standard zero-shot protocol: e.g. train on VisA, evaluate on MVTec AD.
The frozen backbones' features are computed once per image and cached (--cache-dir); epochs then
cost the head only.

--augment (or `[augment] enabled = true` in the config) applies the Bayes-PFL baseline's
augmentations: rotation up to +-30 degrees, quarter turns, brightness/contrast, Gaussian noise, one
of blur / colour jitter / Gaussian blur, each with probability 0.5, and on MVTec AD a 2x2 mosaic of
four anomalous images with probability 0.4. Augmented images need fresh backbone passes, so every
epoch then costs about as much as the first.

The run directory holds config.toml (the full config), backbones.json (the backbones' identity),
state.json, head-step-N.safetensors (the trainable tensors only), optim-step-N.safetensors (Adam
moments, so --resume continues exactly) and train_log.jsonl (every loss term of every step).";

#[derive(clap::Args)]
#[command(after_help = TRAIN_HELP)]
pub struct TrainArgs {
    #[command(flatten)]
    pub device: super::detector_args::DeviceArgs,
    /// SSVP config (TOML); missing keys take the paper's defaults. Default: the paper's setting
    /// (or the tiny one with --backbones tiny).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Dataset layout name (mvtec, visa, ...) or `auto`.
    #[arg(long, default_value = "auto")]
    pub dataset: String,
    /// Dataset root (with --resume: the run's, unless given).
    #[arg(long, required_unless_present = "resume")]
    pub root: Option<PathBuf>,
    /// Run directory (refused when not empty, unless --resume or --force).
    #[arg(long)]
    pub out: PathBuf,
    /// `tiny`: seeded random backbones of a few hundred thousand parameters (no weights files);
    /// without --config the head is sized to them too.
    #[arg(long)]
    pub backbones: Option<String>,
    /// Override optim.epochs.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Override optim.batch_size.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Override optim.seed.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Turn on the baseline's training augmentations (sets augment.enabled; see below).
    #[arg(long)]
    pub augment: bool,
    /// Train on these categories only (comma-separated on-disk names).
    #[arg(long, value_delimiter = ',')]
    pub categories: Vec<String>,
    /// Continue the run in --out from its last checkpoint (with its own config).
    #[arg(long, conflicts_with = "force")]
    pub resume: bool,
    /// Start over in a non-empty --out (removes the previous run's files).
    #[arg(long)]
    pub force: bool,
    /// Side of the square masks the segmentation loss uses [default: 518; with --resume the
    /// run's].
    #[arg(long)]
    pub mask_size: Option<usize>,
    /// Also checkpoint every N steps (always at the end of each epoch).
    #[arg(long)]
    pub checkpoint_every: Option<usize>,
    /// Stop after N steps in total (with a checkpoint); --resume continues.
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Drop unreadable samples instead of failing.
    #[arg(long)]
    pub skip_bad: bool,
    #[command(flatten)]
    pub cache: CacheArgs,
}

/// The library's job for these arguments.
fn job(args: &TrainArgs) -> anyhow::Result<TrainJob> {
    Ok(TrainJob {
        out: args.out.clone(),
        start: if args.resume {
            JobStart::Resume
        } else {
            JobStart::Fresh { force: args.force }
        },
        config: args.config.clone(),
        backbones_preset: args.backbones.clone(),
        epochs: args.epochs,
        batch_size: args.batch_size,
        seed: args.seed,
        augment: args.augment,
        root: args.root.clone(),
        layout: parse_layout(&args.dataset)?,
        categories: args.categories.clone(),
        mask_size: args.mask_size,
        skip_bad: args.skip_bad,
        checkpoint_every: args.checkpoint_every,
        max_steps: args.max_steps,
        cache: if args.cache.no_cache {
            CacheChoice::Off
        } else {
            CacheChoice::On {
                dir: args.cache.cache_dir.clone(),
                storage: args.cache.cache_dtype,
            }
        },
        device: args.device.open()?,
    })
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let job = job(&args)?;
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    let mut on_event = |ev: JobEvent| match ev {
        JobEvent::Skipped(problem) => eprintln!("skipped: {problem}"),
        JobEvent::Loaded {
            dataset,
            samples,
            config,
        } => eprintln!(
            "training on {} images ({} anomalous) of {} categories from {} ({}), {} epochs of \
             batch {}{}",
            samples.len(),
            samples.iter().filter(|s| s.anomalous).count(),
            dataset.categories.len(),
            dataset.root.display(),
            dataset.layout,
            config.optim.epochs,
            config.optim.batch_size,
            if config.augment.enabled {
                ", augmented (features recomputed every step)"
            } else {
                ""
            }
        ),
        JobEvent::Train(TrainEvent::Features { done, total }) => {
            if done == 1 || bar.length() != Some(total as u64) {
                bar.set_length(total as u64);
                bar.set_style(
                    ProgressStyle::with_template("features {bar:30} {pos}/{len} [{elapsed}<{eta}]")
                        .expect("valid template"),
                );
            }
            bar.set_position(done as u64);
        }
        JobEvent::Train(TrainEvent::Start {
            step, total_steps, ..
        }) => {
            bar.set_style(
                ProgressStyle::with_template(
                    "train {bar:30} {pos}/{len} steps [{elapsed}<{eta}] {msg}",
                )
                .expect("valid template"),
            );
            bar.set_length(total_steps as u64);
            bar.set_position(step as u64);
        }
        JobEvent::Train(TrainEvent::Step(r)) => {
            bar.set_position(r.step as u64 + 1);
            bar.set_message(format!(
                "epoch {} loss {:.4}",
                r.epoch + 1,
                r.losses.get("total").copied().unwrap_or(f64::NAN)
            ));
        }
        JobEvent::Train(TrainEvent::Checkpoint { .. }) => {}
    };
    let summary = run_job(&job, &mut on_event)?;
    bar.finish_and_clear();
    let state = &summary.train.state;
    let loss = summary
        .train
        .last
        .as_ref()
        .and_then(|r| r.losses.get("total").copied());
    eprintln!(
        "{} steps in {:.1} s; run at step {}/{} (epoch {}/{}){}{}",
        summary.train.steps_run,
        summary.train.seconds,
        state.step,
        state.total_steps,
        state.epoch(),
        state.epochs,
        loss.map(|l| format!(", last loss {l:.4}"))
            .unwrap_or_default(),
        if state.complete {
            String::new()
        } else {
            " — incomplete, continue with --resume".into()
        }
    );
    if let Some((dir, stats)) = &summary.cache {
        eprintln!("{}", stats.line(dir));
    }
    println!("{}", summary.run.display());
    Ok(())
}
