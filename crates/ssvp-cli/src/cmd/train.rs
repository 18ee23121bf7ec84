//! `ssvp train`: train the SSVP head on an auxiliary dataset (library:
//! `ssvp_model::train`, `ssvp_model::run_dir`, `ssvp_model::features`).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ssvp_eval::datasets::CheckLevel;
use ssvp_model::features::Backbones;
use ssvp_model::run_dir::{RunDir, RunState};
use ssvp_model::train::{
    samples_from_dataset, train, training_data, Start, TrainEvent, TrainOptions, DEFAULT_MASK_SIZE,
};
use ssvp_model::{SsvpConfig, SsvpHead};

use super::model_common::{check_dataset_args, feature_source, load_test_split, CacheArgs};

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

/// The data options of a resumed run: taken from the run, and refused when given otherwise.
struct DataChoice {
    root: PathBuf,
    dataset: String,
    categories: Vec<String>,
    mask_size: usize,
    skip_bad: bool,
}

fn resumed_data(args: &TrainArgs, state: &RunState) -> anyhow::Result<DataChoice> {
    let data = &state.data;
    let differs = |flag: &str, given: String, stored: String| {
        anyhow::anyhow!(
            "--resume: {flag} {given} differs from the run's {stored} (resume takes the run's \
             options; start a new run to change them)"
        )
    };
    if let Some(m) = args.mask_size {
        if m != state.mask_size {
            return Err(differs(
                "--mask-size",
                m.to_string(),
                state.mask_size.to_string(),
            ));
        }
    }
    if !args.categories.is_empty() && args.categories != data.categories {
        return Err(differs(
            "--categories",
            args.categories.join(","),
            data.categories.join(","),
        ));
    }
    if args.dataset != "auto" && !args.dataset.eq_ignore_ascii_case(&data.layout) {
        return Err(differs(
            "--dataset",
            args.dataset.clone(),
            data.layout.clone(),
        ));
    }
    Ok(DataChoice {
        root: args.root.clone().unwrap_or_else(|| data.root.clone()),
        dataset: data.layout.clone(),
        categories: data.categories.clone(),
        mask_size: state.mask_size,
        skip_bad: args.skip_bad || data.skip_bad,
    })
}

pub fn run(args: TrainArgs) -> anyhow::Result<()> {
    let (run, cfg, choice) = if args.resume {
        let run = RunDir::open(&args.out).with_context(|| {
            format!("--resume: {} holds no run to continue", args.out.display())
        })?;
        let cfg = run.read_config()?;
        let state = run.read_state()?;
        if let Some(path) = &args.config {
            let given = SsvpConfig::load(Some(path), args.backbones.as_deref())?;
            anyhow::ensure!(
                given == cfg,
                "--resume continues with the run's own config.toml; {} differs from it",
                path.display()
            );
        }
        for (flag, given, stored) in [
            ("--epochs", args.epochs, cfg.optim.epochs),
            ("--batch-size", args.batch_size, cfg.optim.batch_size),
        ] {
            if let Some(v) = given {
                anyhow::ensure!(
                    v == stored,
                    "--resume: {flag} {v} differs from the run's {stored} (start a new run to change it)"
                );
            }
        }
        anyhow::ensure!(
            !args.augment || cfg.augment.enabled,
            "--resume: --augment differs from the run's config (augment.enabled = false)"
        );
        let choice = resumed_data(&args, &state)?;
        (run, cfg, choice)
    } else {
        let mut cfg: SsvpConfig =
            SsvpConfig::load(args.config.as_deref(), args.backbones.as_deref())?;
        if let Some(e) = args.epochs {
            cfg.optim.epochs = e;
        }
        if let Some(b) = args.batch_size {
            cfg.optim.batch_size = b;
        }
        if let Some(s) = args.seed {
            cfg.optim.seed = s;
        }
        if args.augment {
            cfg.augment.enabled = true;
        }
        anyhow::ensure!(
            cfg.optim.epochs > 0 && cfg.optim.batch_size > 0,
            "epochs and batch size must be positive"
        );
        let choice = DataChoice {
            root: args
                .root
                .clone()
                .expect("clap requires --root without --resume"),
            dataset: args.dataset.clone(),
            categories: args.categories.clone(),
            mask_size: args.mask_size.unwrap_or(DEFAULT_MASK_SIZE),
            skip_bad: args.skip_bad,
        };
        // Checked before the run directory is created, so a typo leaves nothing behind.
        check_dataset_args(&choice.dataset, &choice.root)?;
        (RunDir::create(&args.out, args.force)?, cfg, choice)
    };
    let layout = check_dataset_args(&choice.dataset, &choice.root)?;

    let dataset = load_test_split(
        &choice.root,
        layout,
        &choice.categories,
        choice.skip_bad,
        // Under --skip-bad every image is decoded once up front: training has no other way to
        // skip a truncated file, whose features it computes only in the first epoch.
        if choice.skip_bad {
            CheckLevel::Decode
        } else {
            CheckLevel::Headers
        },
        "training",
    )?;
    let samples = samples_from_dataset(&dataset);
    let device = args.device.open()?;
    let backbones = Arc::new(Backbones::load(&cfg.backbones, &cfg.model, &device)?);
    let encoder = backbones.prompt_encoder()?;
    let source = feature_source(&backbones, &args.cache)?;
    let head = SsvpHead::new(&cfg, &device)?;

    eprintln!(
        "training on {} images ({} anomalous) of {} categories from {} ({}), {} epochs of batch {}{}",
        samples.len(),
        samples.iter().filter(|s| s.anomalous).count(),
        dataset.categories.len(),
        dataset.root.display(),
        dataset.layout,
        cfg.optim.epochs,
        cfg.optim.batch_size,
        if cfg.augment.enabled {
            ", augmented (features recomputed every step)"
        } else {
            ""
        }
    );
    let opts = TrainOptions {
        mask_size: choice.mask_size,
        checkpoint_every: args.checkpoint_every,
        stop_after: args.max_steps,
        warm_cache: true,
    };
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    let mut on_event = |ev: TrainEvent| match ev {
        TrainEvent::Features { done, total } => {
            if done == 1 || bar.length() != Some(total as u64) {
                bar.set_length(total as u64);
                bar.set_style(
                    ProgressStyle::with_template("features {bar:30} {pos}/{len} [{elapsed}<{eta}]")
                        .expect("valid template"),
                );
            }
            bar.set_position(done as u64);
        }
        TrainEvent::Start {
            step, total_steps, ..
        } => {
            bar.set_style(
                ProgressStyle::with_template(
                    "train {bar:30} {pos}/{len} steps [{elapsed}<{eta}] {msg}",
                )
                .expect("valid template"),
            );
            bar.set_length(total_steps as u64);
            bar.set_position(step as u64);
        }
        TrainEvent::Step(r) => {
            bar.set_position(r.step as u64 + 1);
            bar.set_message(format!(
                "epoch {} loss {:.4}",
                r.epoch + 1,
                r.losses.get("total").copied().unwrap_or(f64::NAN)
            ));
        }
        TrainEvent::Checkpoint { .. } => {}
    };
    let start = if args.resume {
        Start::Resume
    } else {
        Start::Fresh
    };
    let mut data = training_data(&dataset);
    data.skip_bad = choice.skip_bad;
    let summary = train(
        &run,
        &head,
        source.as_source(),
        &encoder,
        &samples,
        data,
        &opts,
        start,
        &mut on_event,
    )?;
    bar.finish_and_clear();
    let state = &summary.state;
    let loss = summary
        .last
        .as_ref()
        .and_then(|r| r.losses.get("total").copied());
    eprintln!(
        "{} steps in {:.1} s; run at step {}/{} (epoch {}/{}){}{}",
        summary.steps_run,
        summary.seconds,
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
    if let Some(stats) = source.stats() {
        eprintln!("{stats}");
    }
    println!("{}", run.path().display());
    Ok(())
}
