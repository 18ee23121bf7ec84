//! `ssvp calibrate`: thresholds and calibrated scores from normal images only (library:
//! `ssvp_detect::calibrate`, `ssvp_detect::job::calibrate_files`).

use std::path::PathBuf;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ssvp_detect::calibrate::{check_plan, DEFAULT_TARGET_FPR};
use ssvp_detect::inputs::{collect, glob_set, require_some};
use ssvp_detect::job::{calibrate_files, CalibrateJob};

use super::detector_args::{expand_inputs, load_detector, ModelArgs};

const CALIBRATE_HELP: &str = "\
Scores good parts only and writes a calibration for `ssvp detect --calibration`:
- image threshold t: the k-th smallest of the n calibration scores, k = ceil((n+1)(1-a)) for the
  target false-alarm rate a (split conformal): a new good part is flagged with probability <= a.
  It needs n >= ceil(1/a) - 1 images (99 for a = 0.01, 19 for 0.05);
- calibrated score sigma((s - t) / tau) in [0, 1], 0.5 at t (above 0.5 = flagged), tau such
  that the median good part reads 0.1; and each image's conformal p-value;
- pixel threshold: the same rank of the good maps' maxima, so a good part shows a region with
  probability <= a;
- with --holdout F a seeded fraction F of the images is kept out and its false-alarm rate
  measured.
The file records the model (head and backbones) and the settings (class name, map size,
post-processing, tiling): detect refuses it for anything else.";

#[derive(clap::Args)]
#[command(after_help = CALIBRATE_HELP)]
pub struct CalibrateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Good reference images of the references mode (as `ssvp detect --normal`); they must
    /// not be among the calibration images. A bank (--bank) is the usual way.
    #[arg(long, value_name = "PATH")]
    pub references: Vec<PathBuf>,
    /// Normal (good) images: files, directories or `-`.
    #[arg(long, required = true, num_args = 1..)]
    pub normal: Vec<PathBuf>,
    /// Keep the files of directories that match these patterns; repeatable.
    #[arg(long)]
    pub glob: Vec<String>,
    /// Where to write the calibration (JSON).
    #[arg(long)]
    pub out: PathBuf,
    /// Target false-alarm rate on good parts.
    #[arg(long, default_value_t = DEFAULT_TARGET_FPR)]
    pub target_fpr: f64,
    /// Fraction of the good images held out to measure the false-alarm rate.
    #[arg(long, default_value_t = 0.2)]
    pub holdout: f64,
    /// Seed of the held-out draw.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn run(mut args: CalibrateArgs) -> anyhow::Result<()> {
    args.model.memory.normal = std::mem::take(&mut args.references);
    let globs = glob_set(&args.glob)?;
    let paths = expand_inputs(&args.normal)?;
    let inputs = collect(&paths, globs.as_ref())?;
    require_some(&inputs, &paths)?;
    // Said before the model is loaded and any image is scored, since that can take a while.
    check_plan(inputs.len(), args.target_fpr, args.holdout)?;
    let mut spec = args.model.spec(args.model.options(), None)?;
    // A bundle's own calibration is what this one replaces: the model is loaded without it.
    spec.calibration = None;
    let detector = load_detector(&spec)?;
    let bar =
        ProgressBar::with_draw_target(Some(inputs.len() as u64), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "calibrate {bar:30} {pos}/{len} images {per_sec} [{elapsed}<{eta}]",
        )
        .expect("valid template"),
    );
    let job = CalibrateJob {
        decode: args.model.decode(),
        target_fpr: args.target_fpr,
        holdout: args.holdout,
        seed: args.seed,
    };
    let (cal, skipped) = calibrate_files(&detector, &inputs, &job, &mut |p| {
        bar.set_position(p.done as u64);
    })?;
    bar.finish_and_clear();
    for (path, err) in &skipped {
        eprintln!("skipped {path}: {err}");
    }
    cal.write(&args.out)?;
    eprintln!(
        "calibrated on {} good images (class `{}`): threshold {:.6} (rank {} of {}), pixel \
         threshold {:.6}{}",
        cal.calibration_images,
        cal.settings.class_name,
        cal.image.threshold,
        cal.image.rank,
        cal.calibration_images,
        cal.pixel.threshold,
        match &cal.holdout {
            Some(h) => format!(
                "; held-out: {} of {} good images flagged (FPR {:.4}, target {}), {} with regions",
                h.false_alarms, h.images, h.fpr, cal.target_fpr, h.with_regions
            ),
            None => String::new(),
        }
    );
    eprintln!("wrote {}", args.out.display());
    Ok(())
}
