//! What a batch run leaves in its output directory, one module per artefact:
//!
//! ```text
//! <out>/detections.jsonl   one Record per image, appended and flushed as each image finishes
//! <out>/detections.csv     the same, one row per image (written at the end)
//! <out>/report.html        the report (written at the end); its pictures are thumbs/, overlays/
//! <out>/maps/<input path>.{png,npy,tiff}      the anomaly map at the image's resolution
//! <out>/overlays/<input path>.jpg             the image with the map blended in, regions outlined
//! <out>/thumbs/<input path>.jpg, .overlay.jpg small copies for the report
//! ```
//!
//! `<input path>` mirrors the input's path ([`crate::inputs::mirror_path`]) with its extension
//! replaced, so the folders reproduce the input tree.

pub mod csv;
pub mod encode;
pub mod files;
pub mod html;
pub mod records;

pub use records::{OutputFiles, Record, RecordError, SourceRecord, Status};

/// The JSONL file of a run.
pub const JSONL_FILE: &str = "detections.jsonl";
/// The CSV file of a run.
pub const CSV_FILE: &str = "detections.csv";
/// The HTML report of a run.
pub const HTML_FILE: &str = "report.html";
/// The run's description (model, settings, thresholds), for merged reports.
pub const RUN_FILE: &str = "run.json";

use serde::{Deserialize, Serialize};

use crate::settings::{DetectorSettings, ModelIdentity};

/// What a run was: written as `run.json` beside the records, shown at the top of the report,
/// and read back by `ssvp report` to merge shards (which must agree on it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunInfo {
    /// The ssvp version.
    pub ssvp_version: String,
    /// The model that scored.
    pub model: ModelIdentity,
    /// The settings it scored with.
    pub settings: DetectorSettings,
    /// Raw-score threshold of the decisions, if any.
    pub threshold: Option<f64>,
    /// Where the threshold came from: `calibration`, `--threshold` or `none`.
    pub threshold_source: String,
    /// Map threshold of the regions, if any.
    pub pixel_threshold: Option<f32>,
    /// The value range `[lo, hi]` of map PNGs and overlay colours.
    pub map_scale: [f32; 2],
    /// The calibration's target false-alarm rate, if calibrated.
    pub target_fpr: Option<f64>,
    /// Normal images the calibration was fitted on.
    pub calibration_images: Option<usize>,
    /// The calibration's measured false-alarm rate on held-out normal images.
    pub holdout_fpr: Option<f64>,
    /// `K/N` when the run was one shard of a larger batch.
    pub shard: Option<String>,
}
