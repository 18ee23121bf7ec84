//! The field's anomaly-detection metrics, computed exactly.
//!
//! - Image level ([`binary_metrics`]): AUROC (`roc_auc_score`), AP (`average_precision_score`)
//!   and F1-max (over `precision_recall_curve`), tie groups handled like sklearn.
//! - Pixel level ([`PixelAccumulator`]): the same three over every pixel of every image of a
//!   category, plus AUPRO integrated to FPR 0.3 — exact (anomalib's sort-based algorithm,
//!   [`PixelMetrics::aupro`]) and the cflow-style 200-threshold variant of AnomalyCLIP /
//!   APRIL-GAN ([`PixelMetrics::aupro_cflow`]). The accumulator is streaming: one image at a
//!   time, about 4 bytes per normal pixel and 8 per anomalous pixel, exact results.
//! - Whole benchmarks ([`predictions`]): a scores CSV plus optional map and mask folders, per
//!   category results and the unweighted mean over categories.
//!
//! Undefined metrics (a category with a single class, no GT region, ...) are reported as
//! [`Undefined`] with the reason, never as 0. NaN and infinite scores are errors.

mod binary;
mod curve;
pub mod keys;
mod pixel;
pub mod predictions;

pub use binary::{binary_metrics, BinaryMetrics};
pub use curve::AUPRO_FPR_LIMIT;
pub use pixel::{cflow_thresholds, PixelAccumulator, PixelCounts, PixelMetrics, CFLOW_STEPS};

/// Why a metric has no value for some input. Reported next to the metric (e.g. as "skipped"),
/// never turned into a number.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Undefined {
    /// Nothing to score.
    #[error("no samples")]
    Empty,
    /// Every sample (or pixel) is anomalous: no false-positive rate exists.
    #[error("only one class: no normal samples")]
    NoNegatives,
    /// Every sample (or pixel) is normal: no recall exists.
    #[error("only one class: no anomalous samples")]
    NoPositives,
    /// AUPRO averages over defect regions, and there are none.
    #[error("no anomalous GT region in any mask")]
    NoRegions,
    /// The cflow thresholds span `[min, max]` of the maps, an empty range here.
    #[error("the maps are constant (max == min), so the 200 cflow thresholds are undefined")]
    CflowConstantMaps,
    /// Fewer than two cflow thresholds (the count given) stay under the FPR limit.
    #[error("only {0} cflow threshold(s) reach FPR < 0.3; the curve needs two")]
    CflowTooFewPoints(usize),
    /// The cflow curve's FPR range is empty, so its min-max rescaling is undefined.
    #[error("every cflow threshold below FPR 0.3 has the same FPR; the rescaling divides by 0")]
    CflowFlatFpr,
}

/// Invalid input: the evaluation stops.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// A NaN or infinite score.
    #[error("{what} {index} is {value}: scores must be finite")]
    NonFinite {
        /// What holds it (`"score"` or `"map pixel"`).
        what: &'static str,
        /// Its position.
        index: usize,
        /// The value itself.
        value: f64,
    },
    /// Scores and labels of different lengths.
    #[error("{scores} scores but {labels} labels")]
    LengthMismatch {
        /// How many scores.
        scores: usize,
        /// How many labels.
        labels: usize,
    },
    /// A map and its mask of different sizes.
    #[error("map is {map_width}x{map_height} but mask is {mask_width}x{mask_height}")]
    SizeMismatch {
        /// The map's width.
        map_width: usize,
        /// The map's height.
        map_height: usize,
        /// The mask's width.
        mask_width: usize,
        /// The mask's height.
        mask_height: usize,
    },
    /// A buffer whose length is not `width * height`.
    #[error("buffer of {len} values does not hold a {width}x{height} grid")]
    BadBuffer {
        /// The buffer's length.
        len: usize,
        /// The claimed width.
        width: usize,
        /// The claimed height.
        height: usize,
    },
    /// More pixels or regions than the accumulator's 32-bit counters hold (the count given).
    #[error(
        "too many pixels or regions for one category ({0}); the accumulator counts them in u32"
    )]
    TooLarge(usize),
}
