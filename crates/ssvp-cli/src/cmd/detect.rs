//! `ssvp detect`: score a folder of images with a trained head, good references or mutual
//! scoring (library: `ssvp_detect::job`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ssvp_detect::inputs::{collect, glob_set, outside, require_some, Shard};
use ssvp_detect::job::{run_detect, DetectJob, JobSummary};
use ssvp_detect::output::files::FileOptions;
use ssvp_eval::maps::io::MapFormat;

use super::detector_args::{expand_inputs, load_detector, DecisionArgs, ModelArgs};

const DETECT_HELP: &str = "\
Examples:
  # Against a bank of good parts (`ssvp bank build`) with its calibration (`ssvp calibrate`):
  ssvp detect --bank line3-bank.safetensors --calibration line3-bank-calib.json \\
      --out results/today /data/line3/today
  # With a trained SSVP head (`ssvp train`) and its calibration:
  ssvp detect --checkpoint runs/visa --class-name \"metal plate\" --calibration line3-calib.json \\
      --out results/today /data/line3/today
  # Either, packed by `ssvp bundle create` for a line PC with no network:
  ssvp detect --bundle line3.ssvp --out results/today /data/line3/today
  `ssvp demo` runs a bank, a calibration and this command on synthetic parts.

Inputs: image files (PNG, JPEG, BMP, TIFF; 8/16-bit, grey, RGB(A), palette), directories (walked
recursively in sorted order, keeping png/jpg/jpeg/bmp/tif/tiff files, or those matching --glob
relative to the directory), and `-` for a list of paths on stdin. EXIF orientation is applied and
alpha is dropped (not composited), as in evaluation.

Per image: backbones -> SSVP head with --class-name (--checkpoint), or distances to good
references (--normal, --bank), or mutual scores among the inputs (--mutual), or the head fused
with either -> map upsampled and smoothed exactly as `ssvp eval` does (--map-size grid) ->
resized to the image's own size -> calibrated score, decision and regions (connected areas of
the map above the pixel threshold). docs/training-free.md has the rules of the modes.

Outputs in --out: detections.jsonl (one line per image, flushed as it finishes; failed images
are lines with status \"error\"), detections.csv, report.html, run.json, maps/ (16-bit PNG:
level = round(clamp((v - lo) / (hi - lo), 0, 1) * 65535) with [lo, hi] the map scale recorded
in every record; or --map-format npy/tiff for exact float32), overlays/ and thumbs/ (JPEG),
mirroring the input paths.

Exit codes: 0 all images scored; 1 some image judged anomalous (only with --fail-on-anomaly);
2 the command failed; 3 some images could not be scored (see their records). 3 wins over 1.

Sharding: --shard K/N (0-based, as a Kubernetes indexed Job's JOB_COMPLETION_INDEX) scores the
K-th of N contiguous slices of the sorted inputs; `ssvp report --out DIR SHARD_DIRS...` merges
the shards' outputs into one JSONL/CSV/HTML report.";

#[derive(clap::Args)]
#[command(after_help = DETECT_HELP)]
pub struct DetectArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Good reference images (files or directories, repeatable): patches score their cosine
    /// distance to the nearest reference patch (AnomalyDINO). A handful of good parts is
    /// enough; for hundreds, build a bank with a coreset once (`ssvp bank build`).
    #[arg(long, value_name = "PATH")]
    pub normal: Vec<PathBuf>,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Images, directories, or `-` (paths on stdin).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// Keep the files of directories that match these patterns (relative to the directory,
    /// e.g. `**/*.png`, `cam1/*`); repeatable.
    #[arg(long)]
    pub glob: Vec<String>,
    /// Continue an interrupted run: skip the images already in detections.jsonl.
    #[arg(long, conflicts_with = "force")]
    pub resume: bool,
    /// Start over in an output directory that holds detections (they are deleted).
    #[arg(long)]
    pub force: bool,
    /// Score only the K-th of N slices of the sorted inputs (0-based: 0/4 .. 3/4).
    #[arg(long, value_name = "K/N")]
    pub shard: Option<Shard>,
    #[command(flatten)]
    pub decision: DecisionArgs,
    /// Map file format: png (16-bit, scaled), npy or tiff (float32).
    #[arg(long, default_value = "png")]
    pub map_format: MapFormat,
    /// Do not write maps.
    #[arg(long)]
    pub no_maps: bool,
    /// Do not write overlays and thumbnails.
    #[arg(long)]
    pub no_overlays: bool,
    /// Exit with code 1 when any image is judged anomalous.
    #[arg(long)]
    pub fail_on_anomaly: bool,
    /// Title of the HTML report.
    #[arg(long, default_value = "ssvp inspection report")]
    pub title: String,
    /// Decide as the inspection station in DIR does now: its bank version (parts marked
    /// good), don't-care regions, calibration and threshold. The model flags must name the
    /// model the station was started with.
    #[arg(long, value_name = "DIR")]
    pub station: Option<PathBuf>,
}

pub fn run(mut args: DetectArgs) -> anyhow::Result<ExitCode> {
    args.model.memory.normal = std::mem::take(&mut args.normal);
    let mut options = args.model.options();
    args.decision.apply(&mut options)?;
    let globs = glob_set(&args.glob)?;
    let paths = expand_inputs(&args.inputs)?;
    let mut inputs = outside(collect(&paths, globs.as_ref())?, &args.out);
    require_some(&inputs, &paths)?;
    if let Some(shard) = &args.shard {
        inputs = shard.select(&inputs);
    }
    let detector = load_detector(
        &args
            .model
            .spec(options, args.decision.calibration.clone())?,
    )?;
    let detector = match &args.station {
        None => std::sync::Arc::new(detector),
        Some(dir) => {
            if !dir.join("station.sqlite").is_file() {
                anyhow::bail!(
                    "--station {}: no station there (it is made by `ssvp serve --station DIR`)",
                    dir.display()
                );
            }
            ssvp_station::Station::open(dir, detector, Default::default())?
                .in_force()
                .detector
        }
    };
    let job = DetectJob {
        out_dir: args.out.clone(),
        files: FileOptions {
            map_format: (!args.no_maps).then_some(args.map_format),
            overlays: !args.no_overlays,
            ..FileOptions::default()
        },
        decode: args.model.decode(),
        resume: args.resume,
        force: args.force,
        title: args.title.clone(),
        shard: args.shard,
    };
    let bar =
        ProgressBar::with_draw_target(Some(inputs.len() as u64), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "detect {bar:30} {pos}/{len} images {per_sec} [{elapsed}<{eta}] {msg}",
        )
        .expect("valid template"),
    );
    let summary = run_detect(&detector, &inputs, &job, &mut |p| {
        bar.set_length(p.total as u64);
        bar.set_position(p.done as u64);
        bar.set_message(format!("{} flagged, {} failed", p.flagged, p.failed));
    })?;
    bar.finish_and_clear();
    eprintln!(
        "{}",
        summary_line(&summary, &args.out, detector.image_threshold())
    );
    for (path, why) in &summary.failures {
        // Most messages name their file already.
        if why.contains(path.as_str()) {
            eprintln!("  failed: {why}");
        } else {
            eprintln!("  failed: {path}: {why}");
        }
    }
    if summary.failed > summary.failures.len() {
        eprintln!(
            "  ... and {} more failed (their records in {} say why)",
            summary.failed - summary.failures.len(),
            args.out.join(ssvp_detect::output::JSONL_FILE).display()
        );
    }
    Ok(if summary.failed > 0 {
        ExitCode::from(3)
    } else if args.fail_on_anomaly && summary.anomalous > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The closing line of a run: how many images, flagged, not decided (no threshold) and failed.
pub fn summary_line(summary: &JobSummary, out: &Path, threshold: Option<f64>) -> String {
    let rate = summary.scored_now as f64 / summary.seconds.max(1e-9);
    let mut verdicts = Vec::new();
    if threshold.is_some() || summary.anomalous > 0 {
        verdicts.push(format!("{} flagged anomalous", summary.anomalous));
    }
    if summary.undecided > 0 {
        verdicts.push(format!("{} not decided", summary.undecided));
    }
    verdicts.push(format!("{} failed", summary.failed));
    format!(
        "{} images in {} ({} scored now at {rate:.2} images/s{}): {}; {}",
        summary.records,
        out.display(),
        summary.scored_now,
        if summary.resumed > 0 {
            format!(", {} done earlier", summary.resumed)
        } else {
            String::new()
        },
        verdicts.join(", "),
        match threshold {
            Some(t) => format!("threshold {t:.6}"),
            None => "no threshold, so no decisions (calibrate with `ssvp calibrate`, or pass \
                     --threshold)"
                .into(),
        }
    )
}
