//! `ssvp metrics`: evaluate anyone's predictions (library: `ssvp_eval::metrics::predictions`
//! for reading and pairing, `ssvp_eval::report` for the outputs).

use std::path::PathBuf;

use ssvp_eval::metrics::predictions::{
    evaluate_predictions, read_scores_csv, EvalResolution, PixelOptions,
};

use super::report_files::{write_text_files, ReportFiles};

/// Shown after the options of `ssvp metrics --help`.
const PAIRING_HELP: &str = "\
scores.csv has the header `category,path,label,score` (label 0 = normal, 1 = anomalous).
Each path (e.g. bottle/test/crack/000.png) is paired by relative directory and stem with the map
<maps>/bottle/test/crack/000.{npy,tiff,tif,png} and the mask <masks>/bottle/test/crack/000{,_mask}.png
(or, when <masks> is an MVTec root, <masks>/bottle/ground_truth/crack/000_mask.png). A normal image
needs no mask. Maps: 2-D float32/float64 .npy, float32 .tiff, 8/16-bit grayscale .png. Masks:
non-zero = anomalous.

Metrics are fractions in [0, 1] per category plus their unweighted mean over categories; an
undefined metric (e.g. a category with one class) is reported as skipped with its reason, never
as 0. pixel_aupro is the exact AUPRO to FPR 0.3; pixel_aupro_cflow is the AnomalyCLIP/APRIL-GAN
200-threshold variant (not comparable to pixel_aupro).";

/// Arguments of `ssvp metrics` (image metrics from a scores CSV; with --maps/--masks, exact
/// pixel metrics per category).
#[derive(clap::Args)]
#[command(after_help = PAIRING_HELP)]
pub struct MetricsArgs {
    /// Scores CSV with columns category,path,label,score.
    #[arg(long)]
    pub scores: PathBuf,
    /// Folder of anomaly maps mirroring the CSV paths (enables pixel metrics; needs --masks).
    #[arg(long, requires = "masks")]
    pub maps: Option<PathBuf>,
    /// Folder of GT masks mirroring the CSV paths (or an MVTec-style dataset root).
    #[arg(long, requires = "maps")]
    pub masks: Option<PathBuf>,
    /// Evaluation grid: `map` (each map's own size; masks resized to it by the field's
    /// protocol: PIL bilinear on the 0/255 mask, then > 0.5), an integer N (N x N, maps
    /// resized bilinearly; the field uses 518), `original` (the mask's size) or `strict`
    /// (map and mask sizes must already match).
    #[arg(long, default_value = "map", value_parser = parse_resolution)]
    pub eval_size: EvalResolution,
    /// Resize maps with align_corners=True (torch convention) instead of False.
    #[arg(long)]
    pub align_corners: bool,
    /// Gaussian smoothing of the maps on the evaluation grid (scipy gaussian_filter, truncate
    /// 4, reflect), e.g. 4 as in AnomalyCLIP/AdaCLIP. Default: none.
    #[arg(long)]
    pub sigma: Option<f64>,
    #[command(flatten)]
    pub files: ReportFiles,
}

fn parse_resolution(s: &str) -> Result<EvalResolution, String> {
    s.parse()
}

pub fn run(args: MetricsArgs) -> anyhow::Result<()> {
    let rows = read_scores_csv(&args.scores)?;
    let pixels = match (args.maps, args.masks) {
        (Some(maps), Some(masks)) => {
            for dir in [&maps, &masks] {
                anyhow::ensure!(dir.is_dir(), "{} is not a directory", dir.display());
            }
            Some(PixelOptions {
                maps,
                masks,
                resolution: args.eval_size,
                align_corners: args.align_corners,
                sigma: args.sigma,
            })
        }
        _ => None,
    };
    let report = evaluate_predictions(&rows, pixels.as_ref())?;
    print!("{}", report.to_table());
    write_text_files(&args.files.render(&report))
}
