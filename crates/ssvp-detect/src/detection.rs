//! [`Detection`]: everything the detector says about one image. It is the serde type of every
//! front: a line of `detections.jsonl`, the answer of the server's `/v1/detect`.
//!
//! Field names follow the field's vocabulary where one exists (anomalib's `pred_score`,
//! `pred_label` and `anomaly_map` become `score`, `anomalous` and `map`); docs/detect.md gives
//! the JSON field by field.

use serde::{Deserialize, Serialize};
use ssvp_eval::maps::regions::Region;
use ssvp_eval::postprocess::AnomalyMap;

/// The detector's answer for one image.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Detection {
    /// Width of the image (after EXIF orientation) and of its map, in pixels.
    pub width: usize,
    /// Height of the image and of its map, in pixels.
    pub height: usize,
    /// The class name the prompts used.
    pub class_name: String,
    /// What scored: `head` (the trained SSVP head), `references` (distances to a bank of good
    /// images), `mutual` (the images of a set scoring each other) or `fused` (the head with
    /// references or mutual scores).
    pub mode: String,
    /// The raw image score. With the head: `S_final = (1 - γ)·S_global + γ·S_local` (or its
    /// tiled form, see docs/detect.md), in [0, 1]; with references: the mean of the top 1 % of
    /// the patch distances; mutual: the largest patch score (RsCIN-rescored if asked); fused:
    /// the mean of the head's score and the normalised distance score (docs/training-free.md).
    /// Tiled with references or mutual scoring (fused too): the highest tile score.
    /// Comparable only between images scored with the same model and settings.
    pub score: f64,
    /// The head's `S_final` (`None` without a head).
    pub score_head: Option<f64>,
    /// The global (CLIP/DINO CLS) part of the head's score.
    pub score_global: Option<f64>,
    /// The local part of the head's score (the maximum of the token-grid map).
    pub score_local: Option<f64>,
    /// The training-free image score, raw: references' top-1 % mean distance or the mutual
    /// score (`None` with the head alone).
    pub score_distance: Option<f64>,
    /// The score mapped to [0, 1] by the calibration: monotone in `score`, 0.5 at the
    /// threshold, so `calibrated_score > 0.5` is exactly `anomalous`. `None` uncalibrated.
    pub calibrated_score: Option<f64>,
    /// Conformal p-value of the score among the calibration's normal images: the chance that a
    /// normal part scores at least this high. `None` uncalibrated.
    pub p_value: Option<f64>,
    /// The decision `score > threshold`; `None` when no threshold is known (no calibration and
    /// no explicit threshold).
    pub anomalous: Option<bool>,
    /// The raw-score threshold the decision used.
    pub threshold: Option<f64>,
    /// The map threshold the regions used (`None`: no regions were extracted).
    pub pixel_threshold: Option<f32>,
    /// Defect regions: connected components of the map above `pixel_threshold`, highest peak
    /// first, in the image's pixel coordinates.
    pub regions: Vec<Region>,
    /// Summary of the anomaly map.
    pub map_stats: MapStats,
    /// Number of tiles the image was cut into (1 when it was scored whole).
    pub tiles: usize,
    /// Where the time went, in milliseconds.
    pub timings: Timings,
    /// The anomaly map at the image's own resolution (row-major, `width x height`). Not part
    /// of the JSON: fronts write it as a file or encode it on request.
    #[serde(skip, default = "empty_map")]
    pub map: AnomalyMap,
}

fn empty_map() -> AnomalyMap {
    AnomalyMap {
        width: 0,
        height: 0,
        data: Vec::new(),
    }
}

/// Minimum, maximum and mean of a map.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MapStats {
    /// Lowest value.
    pub min: f32,
    /// Highest value: a region exists exactly when it exceeds the pixel threshold.
    pub max: f32,
    /// Mean value.
    pub mean: f32,
}

impl MapStats {
    /// The statistics of `values` (NaN-free by construction of the pipeline).
    pub fn of(values: &[f32]) -> Self {
        let mut min = f32::INFINITY;
        let mut max = f32::NEG_INFINITY;
        let mut sum = 0f64;
        for &v in values {
            min = min.min(v);
            max = max.max(v);
            sum += v as f64;
        }
        Self {
            min,
            max,
            mean: (sum / values.len().max(1) as f64) as f32,
        }
    }
}

/// Wall-clock time per stage, in milliseconds. Stages that run on a whole batch (preprocess,
/// backbones, head) are shared equally among the images (or tiles) of the batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Timings {
    /// Reading and decoding the file (filled by the caller that decoded it).
    pub decode_ms: f64,
    /// Resizing and normalising for both backbones.
    pub preprocess_ms: f64,
    /// The CLIP and DINOv3 forward passes.
    pub backbones_ms: f64,
    /// CLIP's share of `backbones_ms`.
    #[serde(default)]
    pub clip_ms: f64,
    /// DINOv3's share of `backbones_ms`.
    #[serde(default)]
    pub dino_ms: f64,
    /// The SSVP head.
    pub head_ms: f64,
    /// The training-free scorer: the bank search or the mutual scoring of the set.
    #[serde(default)]
    pub memory_ms: f64,
    /// Upsampling, smoothing, resizing to the image and stitching tiles.
    pub postprocess_ms: f64,
    /// Thresholding the map into regions.
    pub regions_ms: f64,
}

impl Timings {
    /// Sum of the stages.
    pub fn total_ms(&self) -> f64 {
        self.decode_ms
            + self.preprocess_ms
            + self.backbones_ms
            + self.head_ms
            + self.memory_ms
            + self.postprocess_ms
            + self.regions_ms
    }

    pub(crate) fn add(&mut self, other: &Timings) {
        self.decode_ms += other.decode_ms;
        self.preprocess_ms += other.preprocess_ms;
        self.backbones_ms += other.backbones_ms;
        self.clip_ms += other.clip_ms;
        self.dino_ms += other.dino_ms;
        self.head_ms += other.head_ms;
        self.memory_ms += other.memory_ms;
        self.postprocess_ms += other.postprocess_ms;
        self.regions_ms += other.regions_ms;
    }
}
