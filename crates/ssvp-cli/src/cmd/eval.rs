//! `ssvp eval`: zero-shot evaluation of a trained head on a target dataset (library:
//! `ssvp_detect::evaluate`, the `Detector` that `ssvp detect` runs; results are `ssvp_eval::report` types, the JSON of `ssvp metrics`).

use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ssvp_detect::detector::{load_run, DEFAULT_MAP_SIZE};
use ssvp_detect::evaluate::{evaluate, EvalOptions};
use ssvp_detect::{Detector, DetectorOptions};
use ssvp_eval::datasets::CheckLevel;
use ssvp_eval::metrics::predictions::scores_csv;

use super::model_common::{check_dataset_args, feature_source, load_test_split, CacheArgs};
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
    #[arg(long, default_value_t = DEFAULT_MAP_SIZE)]
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
    /// Drop unreadable samples (missing, truncated or corrupt files) instead of failing.
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
    let loaded = load_run(
        &args.checkpoint,
        args.config.as_deref(),
        args.backbones.as_deref(),
        &device,
    )?;
    let state = &loaded.run.state;
    if !state.complete {
        eprintln!(
            "warning: {} is an unfinished run (step {} of {})",
            args.checkpoint.display(),
            state.step,
            state.total_steps
        );
    }
    let source = feature_source(&loaded.backbones, &args.cache)?;
    let detector = Detector::from_run(
        loaded,
        DetectorOptions {
            map_size: args.eval_size,
            batch_size: args.batch_size,
            ..DetectorOptions::default()
        },
    )?;
    let dataset = load_test_split(
        &args.root,
        layout,
        &args.categories,
        args.skip_bad,
        // A file that fails to decode later is skipped by the evaluation itself (its batch is
        // retried image by image), so no image is decoded twice.
        CheckLevel::Headers,
        "evaluation",
    )?;
    let opts = EvalOptions {
        save_maps: args.save_maps.clone(),
        skip_bad: args.skip_bad,
    };
    let bar =
        ProgressBar::with_draw_target(Some(dataset.len() as u64), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("eval {bar:30} {pos}/{len} images [{elapsed}<{eta}] {msg}")
            .expect("valid template"),
    );
    let evaluation = evaluate(&detector, source.as_source(), &dataset, &opts, &mut |p| {
        bar.set_position(p.done as u64);
        bar.set_message(p.category.to_string());
    })?;
    bar.finish_and_clear();
    for (path, reason) in &evaluation.skipped {
        eprintln!("skipped: {}: {reason}", path.display());
    }
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
