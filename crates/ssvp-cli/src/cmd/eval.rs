//! `ssvp eval`: evaluation of a trained head (zero-shot), of normal references (few-shot) or of
//! mutual scoring on a target dataset (library: `ssvp_detect::evaluate`, the `Detector` that
//! `ssvp detect` runs; results are `ssvp_eval::report` types, the JSON of `ssvp metrics`).

use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ssvp_detect::detector::{load_backbones, load_run, DEFAULT_MAP_SIZE};
use ssvp_detect::evaluate::{
    evaluate, summarize_draws, EvalOptions, EvalProtocol, Evaluation, ReferenceDraw,
};
use ssvp_detect::{Detector, DetectorOptions, Memory};
use ssvp_eval::datasets::{CheckLevel, Dataset, Split};
use ssvp_eval::metrics::predictions::scores_csv;

use super::detector_args::{BankBuildArgs, FeatureArgs, MutualArgs};
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
    pub device: super::detector_args::DeviceArgs,
    /// Run directory written by `ssvp train` (needed for --mode head; with another mode the
    /// head is fused with it).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
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
        args.eval_size > 0 && args.batch_size > 0 && args.draws > 0,
        "--eval-size, --batch-size and --draws must be positive"
    );
    let mode = match (args.mode, &args.checkpoint) {
        (Some(m), _) => m,
        (None, Some(_)) => EvalMode::Head,
        (None, None) => anyhow::bail!(
            "give a trained run (--checkpoint) or a mode without training (--mode references or              --mode mutual)"
        ),
    };
    anyhow::ensure!(
        mode != EvalMode::Head || args.checkpoint.is_some(),
        "--mode head needs --checkpoint"
    );
    let device = args.device.open()?;
    let options = DetectorOptions {
        map_size: args.eval_size,
        batch_size: args.batch_size,
        ..DetectorOptions::default()
    };
    let (detector, source) = match &args.checkpoint {
        Some(checkpoint) => {
            let loaded = load_run(
                checkpoint,
                args.config.as_deref(),
                args.backbones.as_deref(),
                &device,
            )?;
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
            let (backbones, postprocess) =
                load_backbones(args.config.as_deref(), args.backbones.as_deref(), &device)?;
            let source = feature_source(&backbones, &args.cache)?;
            (
                Detector::without_head(backbones, postprocess, options)?,
                source,
            )
        }
    };
    let detector = match mode {
        EvalMode::Mutual => {
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
    // One run per (K, draw) in references mode; one run otherwise.
    let draws: Vec<Option<ReferenceDraw>> = if mode == EvalMode::References {
        let train = split(Split::Train, "reference")?;
        let scoring = args.bank_build.scoring();
        let bank = args
            .bank_build
            .options(&args.features, args.batch_size, Default::default())?;
        args.shots
            .iter()
            .flat_map(|&shots| {
                (0..args.draws as u64).map({
                    let (train, bank, scoring) = (train.clone(), bank.clone(), scoring.clone());
                    move |draw| {
                        Some(ReferenceDraw {
                            train: train.clone(),
                            shots,
                            draw,
                            seed: args.seed,
                            bank: bank.clone(),
                            scoring: scoring.clone(),
                        })
                    }
                })
            })
            .collect()
    } else {
        vec![None]
    };
    anyhow::ensure!(
        draws.len() == 1 || (args.save_maps.is_none() && args.scores.is_none()),
        "--save-maps and --scores need a single run (one K, one draw)"
    );
    let mut runs: Vec<(Option<ReferenceDraw>, Evaluation)> = Vec::new();
    for draw in draws {
        if let Some(d) = &draw {
            eprintln!("references: {} shots, draw {}", d.shots, d.draw);
        }
        let opts = EvalOptions {
            save_maps: args.save_maps.clone(),
            skip_bad: args.skip_bad,
            references: draw.clone(),
        };
        let evaluation = run_one(&detector, &source, &dataset, &opts)?;
        runs.push((draw, evaluation));
    }
    let protocol = EvalProtocol {
        mode: if mode == EvalMode::Head {
            "head".into()
        } else if args.checkpoint.is_some() {
            "fused".into()
        } else {
            format!("{mode:?}").to_lowercase()
        },
        shots: (mode == EvalMode::References).then(|| args.shots[0]),
        draws: (mode == EvalMode::References).then_some(args.draws),
        seed: (mode == EvalMode::References).then_some(args.seed),
        settings: detector.settings(),
    };
    write_outputs(&args, protocol, &runs)?;
    if let Some(stats) = source.stats() {
        eprintln!("{stats}");
    }
    Ok(())
}

/// One evaluation with a progress bar.
fn run_one(
    detector: &Detector,
    source: &super::model_common::Source,
    dataset: &Dataset,
    opts: &EvalOptions,
) -> anyhow::Result<Evaluation> {
    let bar =
        ProgressBar::with_draw_target(Some(dataset.len() as u64), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template("eval {bar:30} {pos}/{len} images [{elapsed}<{eta}] {msg}")
            .expect("valid template"),
    );
    let evaluation = evaluate(detector, source.as_source(), dataset, opts, &mut |p| {
        bar.set_position(p.done as u64);
        bar.set_message(p.category.to_string());
    })?;
    bar.finish_and_clear();
    for (path, reason) in &evaluation.skipped {
        eprintln!("skipped: {}: {reason}", path.display());
    }
    Ok(evaluation)
}

/// Prints the tables and writes the requested files: a single run as the `ssvp metrics` schema
/// with its protocol, several as runs plus a mean/std summary per K.
fn write_outputs(
    args: &EvalArgs,
    mut protocol: EvalProtocol,
    runs: &[(Option<ReferenceDraw>, Evaluation)],
) -> anyhow::Result<()> {
    let mut outputs = Vec::new();
    if let [(_, evaluation)] = runs {
        let report = &evaluation.report;
        print!("{}", report.to_table());
        let csv_scores = scores_csv(&evaluation.scores);
        outputs = args.files.render(report);
        if let Some(path) = &args.files.out.clone() {
            let mut json = serde_json::to_value(report)?;
            json["protocol"] = serde_json::to_value(&protocol)?;
            outputs.retain(|(p, _)| p != path);
            outputs.push((path.clone(), serde_json::to_string_pretty(&json)? + "\n"));
        }
        if let Some(path) = &args.scores {
            outputs.push((path.clone(), csv_scores.clone()));
        }
        if let Some(dir) = &args.save_maps {
            outputs.push((dir.join("scores.csv"), csv_scores));
        }
    } else {
        protocol.shots = None;
        let mut summaries = Vec::new();
        let mut json_runs = Vec::new();
        for &shots in &args.shots {
            let reports: Vec<_> = runs
                .iter()
                .filter(|(d, _)| d.as_ref().is_some_and(|d| d.shots == shots))
                .map(|(d, e)| {
                    json_runs.push(serde_json::json!({
                        "shots": shots,
                        "draw": d.as_ref().map(|d| d.draw),
                        "report": e.report,
                    }));
                    e.report.clone()
                })
                .collect();
            let summary = summarize_draws(shots, &reports);
            let show = |name: &str| {
                format!(
                    "{:.1} +- {:.1}",
                    100.0 * summary.mean.get(name).copied().unwrap_or(f64::NAN),
                    100.0 * summary.std.get(name).copied().unwrap_or(f64::NAN)
                )
            };
            println!(
                "K={shots} ({} draws): image AUROC {}  pixel AUROC {}  AUPRO {}",
                summary.draws,
                show("image_auroc"),
                show("pixel_auroc"),
                show("pixel_aupro")
            );
            summaries.push(summary);
        }
        if let Some(path) = &args.files.out.clone() {
            let json = serde_json::json!({
                "protocol": protocol,
                "runs": json_runs,
                "summary": summaries,
            });
            outputs.push((path.clone(), serde_json::to_string_pretty(&json)? + "\n"));
        }
    }
    write_text_files(&outputs)
}
