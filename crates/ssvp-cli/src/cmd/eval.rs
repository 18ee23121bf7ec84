//! `ssvp eval`: zero-shot evaluation of a trained head on a target dataset (library:
//! `ssvp_model::evaluate`; results are `ssvp_eval::report` types, the JSON of `ssvp metrics`).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ssvp_model::evaluate::{evaluate, scores_csv, EvalOptions, TrainedRun, DEFAULT_EVAL_SIZE};
use ssvp_model::features::{Backbones, FeatureSource};

use super::model_common::{
    check_dataset_args, feature_source, load_config, load_test_split, CacheArgs,
};
use super::report_files::{write_text_files, ReportFiles};

const EVAL_HELP: &str = "\
Pipeline per image: backbone features (cached) -> head in eval mode with the category's prompt
name -> fused anomaly map -> bilinear upsampling to --eval-size (align_corners from the config) ->
Gaussian smoothing (postprocess.gaussian_sigma, 4 by default); GT masks are resized to the same
grid (PIL bilinear on the 0/255 mask, > 0.5). The image score is the head's S_final. Metrics per
category (image AUROC/AP/F1-max, pixel AUROC/AP/F1-max/AUPRO) and their unweighted mean; the JSON
has the schema of `ssvp metrics`.

The backbones are the checkpoint's own (its config.toml) unless --backbones/--config name others;
backbones whose identity differs from the ones the head was trained on are refused.
With --save-maps DIR the maps go to DIR/<image path>.npy and the scores to DIR/scores.csv, so
`ssvp metrics --scores DIR/scores.csv --maps DIR --masks <root>` recomputes the same numbers.";

#[derive(clap::Args)]
#[command(after_help = EVAL_HELP)]
pub struct EvalArgs {
    /// Run directory written by `ssvp train`.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Dataset layout name (mvtec, visa, ...) or `auto`.
    #[arg(long, default_value = "auto")]
    pub dataset: String,
    /// Dataset root (its labelled test split is evaluated).
    #[arg(long)]
    pub root: PathBuf,
    /// Evaluate these categories only (comma-separated on-disk names).
    #[arg(long, value_delimiter = ',')]
    pub categories: Vec<String>,
    #[command(flatten)]
    pub files: ReportFiles,
    /// Write the image scores (category,path,label,score).
    #[arg(long)]
    pub scores: Option<PathBuf>,
    /// Write every post-processed map as DIR/<image path>.npy plus DIR/scores.csv.
    #[arg(long)]
    pub save_maps: Option<PathBuf>,
    /// Side of the square evaluation grid.
    #[arg(long, default_value_t = DEFAULT_EVAL_SIZE)]
    pub eval_size: usize,
    /// Images per head forward.
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    /// Backbones to evaluate with: `tiny` (default: those of the checkpoint's config).
    #[arg(long)]
    pub backbones: Option<String>,
    /// Take the [backbones] and [postprocess] sections from this config instead of the
    /// checkpoint's (the head always comes from the checkpoint).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Drop unreadable samples instead of failing.
    #[arg(long)]
    pub skip_bad: bool,
    #[command(flatten)]
    pub cache: CacheArgs,
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let layout = check_dataset_args(&args.dataset, &args.root)?;
    anyhow::ensure!(
        args.eval_size > 0 && args.batch_size > 0,
        "--eval-size and --batch-size must be positive"
    );
    let device = candle_core::Device::Cpu;
    let mut trained = TrainedRun::load(&args.checkpoint, &device)
        .with_context(|| format!("loading the checkpoint {}", args.checkpoint.display()))?;
    if !trained.state.complete {
        eprintln!(
            "warning: {} is an unfinished run (step {} of {})",
            args.checkpoint.display(),
            trained.state.step,
            trained.state.total_steps
        );
    }
    let mut cfg = trained.config.clone();
    if args.config.is_some() || args.backbones.is_some() {
        let given = load_config(args.config.as_deref(), args.backbones.as_deref())?;
        cfg.backbones = given.backbones;
        if args.config.is_some() {
            cfg.postprocess = given.postprocess;
        }
    }
    let backbones = Arc::new(
        Backbones::load(&cfg.backbones, &cfg.model, &device)
            .context("loading the requested backbones")?,
    );
    trained.check_identity(backbones.identity())?;
    if cfg.postprocess != trained.config.postprocess {
        trained.config.postprocess = cfg.postprocess.clone();
        let head = ssvp_model::SsvpHead::new(&trained.config, &device)?;
        head.load(trained.run.file(&trained.state.head_file))?;
        trained.head = head;
    }
    let encoder = backbones.prompt_encoder()?;
    let source = feature_source(&backbones, &args.cache)?;

    let dataset = load_test_split(
        &args.root,
        layout,
        &args.categories,
        args.skip_bad,
        "evaluation",
    )?;
    let opts = EvalOptions {
        eval_size: args.eval_size,
        batch_size: args.batch_size,
        save_maps: args.save_maps.clone(),
    };
    let bar =
        ProgressBar::with_draw_target(Some(dataset.len() as u64), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("eval {bar:30} {pos}/{len} images [{elapsed}<{eta}] {msg}")
            .expect("valid template"),
    );
    let evaluation = evaluate(
        &trained.head,
        &source,
        &encoder,
        &dataset,
        &opts,
        &mut |p| {
            bar.set_position(p.done as u64);
            bar.set_message(p.category.to_string());
        },
    )?;
    bar.finish_and_clear();
    let report = &evaluation.report;
    print!("{}", report.to_table());
    let csv_scores = scores_csv(&evaluation.scores);
    let mut outputs = args.files.render(report);
    if let Some(path) = &args.scores {
        outputs.push((path.clone(), csv_scores.clone()));
    }
    if let Some(dir) = &args.save_maps {
        outputs.push((dir.join("scores.csv"), csv_scores));
    }
    write_text_files(&outputs)?;
    if let Some(stats) = source.stats() {
        eprintln!("{stats}");
    }
    Ok(())
}
