//! `ssvp eval`: evaluation of a trained head (zero-shot), of normal references (few-shot) or of
//! mutual scoring on a target dataset (library: `ssvp_detect::evaluate`, the `Detector` that
//! `ssvp detect` runs; results are `ssvp_eval::report` types, the JSON of `ssvp metrics`).

use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ssvp_detect::evaluate::{
    evaluate_runs, EvalMode as Mode, EvalOptions, EvalRequest, EvalRuns, ReferencePlan,
};
use ssvp_detect::load::{load_backbones, load_run};
use ssvp_detect::settings::DEFAULT_MAP_SIZE;
use ssvp_detect::{Detector, DetectorOptions, Memory};
use ssvp_eval::datasets::{CheckLevel, Split};
use ssvp_eval::metrics::predictions::scores_csv;
use ssvp_features::Towers;

use super::detector_args::{BankBuildArgs, FeatureArgs, ModelSourceArgs, MutualArgs};
use super::model_common::{check_dataset_args, feature_source, load_split, CacheArgs};
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
`ssvp metrics --scores DIR/scores.csv --maps DIR --masks <root>` recomputes the same numbers.

Modes without training (no --checkpoint needed; with one, the head is fused with them):
--mode references draws --shots K good images per category from its train split (a seeded
permutation per category and draw; the K-shot references are the first K of it, so more shots
only add images), builds a bank and scores the test split against it; --draws N repeats with N
permutations and reports mean +- std per K. --mode mutual scores each category's test split
mutually, in sets of --set-size images. The JSON is the `ssvp metrics` schema with a
\"protocol\" entry (mode, shots, draws, settings); with several K or draws it holds \"runs\" (each
such a report) and \"summary\" (mean and std per K).";

/// What scores in an evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum EvalMode {
    /// The trained head (needs --checkpoint).
    Head,
    /// Distances to references drawn from each category's good training images.
    References,
    /// Mutual scoring of each category's test images.
    Mutual,
}

#[derive(clap::Args)]
#[command(after_help = EVAL_HELP)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelSourceArgs,
    /// What scores (default: head with --checkpoint).
    #[arg(long, value_enum)]
    pub mode: Option<EvalMode>,
    /// References per category, e.g. `1,2,4,8` (references mode).
    #[arg(long, value_delimiter = ',', default_value = "4")]
    pub shots: Vec<usize>,
    /// Seeded draws of the references per K.
    #[arg(long, default_value_t = 1)]
    pub draws: usize,
    /// Seed of the draws.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub features: FeatureArgs,
    #[command(flatten)]
    pub bank_build: BankBuildArgs,
    #[command(flatten)]
    pub mutual: MutualArgs,
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
    /// Drop unreadable samples (missing, truncated or corrupt files) instead of failing.
    #[arg(long)]
    pub skip_bad: bool,
    #[command(flatten)]
    pub cache: CacheArgs,
}

impl From<EvalMode> for Mode {
    fn from(mode: EvalMode) -> Self {
        match mode {
            EvalMode::Head => Mode::Head,
            EvalMode::References => Mode::References,
            EvalMode::Mutual => Mode::Mutual,
        }
    }
}

pub fn run(args: EvalArgs) -> anyhow::Result<()> {
    let layout = check_dataset_args(&args.dataset, &args.root)?;
    let m = &args.model;
    anyhow::ensure!(
        args.eval_size > 0 && m.batch_size > 0 && args.draws > 0,
        "--eval-size, --batch-size and --draws must be positive"
    );
    anyhow::ensure!(
        m.bundle.is_none(),
        "eval runs a model on a benchmark from --checkpoint / --backbones; --bundle is for \
         detect, calibrate, serve and bench (`ssvp bundle unpack` shows a bundle's parts)"
    );
    let mode = Mode::resolve(args.mode.map(Mode::from), m.checkpoint.is_some())?;
    let device = m.device.open()?;
    let options = DetectorOptions {
        map_size: args.eval_size,
        batch_size: m.batch_size,
        ..DetectorOptions::default()
    };
    let (detector, source) = match &m.checkpoint {
        Some(checkpoint) => {
            let loaded = load_run(checkpoint, m.config.as_deref(), &m.choice(), &device)?;
            let state = &loaded.run.state;
            if !state.complete {
                eprintln!(
                    "warning: {} is an unfinished run (step {} of {})",
                    checkpoint.display(),
                    state.step,
                    state.total_steps
                );
            }
            let source = feature_source(&loaded.backbones, &args.cache)?;
            (Detector::from_run(loaded, options)?, source)
        }
        None => {
            let taps = args.features.taps(mode == Mode::Mutual)?;
            let needs_clip = matches!(taps.towers, Towers::Clip | Towers::Both);
            let (backbones, postprocess) =
                load_backbones(m.config.as_deref(), &m.choice(), None, needs_clip, &device)?;
            let source = feature_source(&backbones, &args.cache)?;
            (
                Detector::without_head(backbones, postprocess, options)?,
                source,
            )
        }
    };
    let detector = match mode {
        Mode::Mutual => {
            detector.with_memory(Memory::Mutual(args.mutual.config(&args.features)?))?
        }
        _ => detector,
    };
    let split = |split, purpose| {
        load_split(
            &args.root,
            layout,
            &args.categories,
            args.skip_bad,
            // A file that fails to decode later is skipped by the evaluation itself (its batch is
            // retried image by image), so no image is decoded twice.
            CheckLevel::Headers,
            split,
            purpose,
        )
    };
    let dataset = split(Split::Test, "evaluation")?;
    let references = match mode {
        Mode::References => Some(ReferencePlan {
            train: split(Split::Train, "reference")?,
            shots: args.shots.clone(),
            draws: args.draws,
            seed: args.seed,
            bank: args
                .bank_build
                .options(&args.features, m.batch_size, Default::default())?,
            scoring: args.bank_build.scoring(),
        }),
        _ => None,
    };
    let request = EvalRequest {
        mode,
        references,
        options: EvalOptions {
            save_maps: args.save_maps.clone(),
            skip_bad: args.skip_bad,
            references: None,
        },
        single_run: args.scores.is_some() || args.save_maps.is_some(),
    };
    let bar =
        ProgressBar::with_draw_target(Some(dataset.len() as u64), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("eval {bar:30} {pos}/{len} images [{elapsed}<{eta}] {msg}")
            .expect("valid template"),
    );
    let runs = evaluate_runs(
        &detector,
        source.as_source(),
        &dataset,
        &request,
        &mut |d| {
            bar.suspend(|| eprintln!("references: {} shots, draw {}", d.shots, d.draw));
            bar.set_position(0);
        },
        &mut |p| {
            bar.set_position(p.done as u64);
            bar.set_message(p.category.to_string());
        },
    )?;
    bar.finish_and_clear();
    for (_, evaluation) in &runs.runs {
        for (path, reason) in &evaluation.skipped {
            eprintln!("skipped: {}: {reason}", path.display());
        }
    }
    write_outputs(&args, &runs)?;
    if let Some(stats) = source.stats() {
        eprintln!("{stats}");
    }
    Ok(())
}

/// Prints the tables and writes the requested files: a single run as the `ssvp metrics` schema
/// with its protocol, several as runs plus a mean/std summary per K.
fn write_outputs(args: &EvalArgs, runs: &EvalRuns) -> anyhow::Result<()> {
    let mut outputs = Vec::new();
    if let [(_, evaluation)] = runs.runs.as_slice() {
        let report = &evaluation.report;
        print!("{}", report.to_table());
        outputs = args.files.render(report);
        let csv_scores = scores_csv(&evaluation.scores);
        if let Some(path) = &args.scores {
            outputs.push((path.clone(), csv_scores.clone()));
        }
        if let Some(dir) = &args.save_maps {
            outputs.push((dir.join("scores.csv"), csv_scores));
        }
    } else {
        for summary in runs.summaries(&args.shots) {
            let show = |name: &str| {
                format!(
                    "{:.1} +- {:.1}",
                    100.0 * summary.mean.get(name).copied().unwrap_or(f64::NAN),
                    100.0 * summary.std.get(name).copied().unwrap_or(f64::NAN)
                )
            };
            println!(
                "K={} ({} draws): image AUROC {}  pixel AUROC {}  AUPRO {}",
                summary.shots,
                summary.draws,
                show("image_auroc"),
                show("pixel_auroc"),
                show("pixel_aupro")
            );
        }
    }
    if let Some(path) = &args.files.out {
        let json = runs.to_json(&args.shots);
        outputs.retain(|(p, _)| p != path);
        outputs.push((path.clone(), serde_json::to_string_pretty(&json)? + "\n"));
    }
    write_text_files(&outputs)
}
