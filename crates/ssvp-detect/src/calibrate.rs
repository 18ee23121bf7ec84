//! Calibration from normal images only: a threshold with a false-alarm guarantee, a score in
//! [0, 1] that reads the same for every model, and a map threshold for regions.
//!
//! Users have good parts and rarely labelled defects, so everything here is fitted on the scores
//! of `n` normal images (the calibration split), assumed exchangeable with the normal parts to
//! come (same line, same camera, same settings):
//!
//! - **Image threshold** (split conformal): `t = s_(k)`, the `k`-th smallest calibration score,
//!   with `k = ceil((n + 1)(1 - α))` for the target false-alarm rate `α`. A new normal image then
//!   scores above `t` with probability at most `α` (and at least `α - 1/(n + 1)`). `k ≤ n` needs
//!   `n ≥ ceil(1/α) - 1` images (99 for α = 0.01); with fewer, no threshold has the guarantee
//!   and [`Calibration::fit`] says how many are needed.
//! - **p-value** of a score `s`: `(1 + #{i : s_i ≥ s}) / (n + 1)`, the conformal p-value; a
//!   normal image has `P(p ≤ α) ≤ α`. `s > t` implies `p ≤ α`.
//! - **Calibrated score** `σ((s - t) / τ)`: monotone in `s`, 0.5 exactly at the threshold (so
//!   above 0.5 means flagged), with `τ = (t - median) / ln 9` so that the median normal image
//!   reads 0.1. If the calibration scores are (nearly) constant, `τ` falls back to their standard
//!   deviation / ln 9 and then to 1e-6 so the mapping stays defined.
//! - **Pixel threshold**: the same order statistic `k` of the per-image *maxima* of the normal
//!   maps (at each image's own resolution, as regions are cut). A clean part then yields any
//!   region with probability at most `α`: the region guarantee is per image, like the decision.
//! - **Held-out check**: with `holdout_fraction > 0` a seeded random part of the normal images is
//!   kept out of the fit and its false-alarm rate (and the share of held-out images with a
//!   region) is measured and recorded.
//! - **Display range** for overlays and map PNGs: from the median of the normal maps' medians
//!   (`lo`, the background) to `hi = t_pixel + (t_pixel - lo)`, so the pixel threshold sits mid
//!   scale and every overlay uses the same colours for the same values.

use std::path::Path;

use serde::{Deserialize, Serialize};
use ssvp_image::ColorScale;

use crate::decision::is_anomalous;
use crate::error::{Error, ErrorKind, Result};
use crate::settings::{DetectorSettings, ModelIdentity};

/// Version of the calibration file.
pub const CALIBRATION_FORMAT: u32 = 1;
/// The default target false-alarm rate.
pub const DEFAULT_TARGET_FPR: f64 = 0.01;

/// What calibration needs of one normal image.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NormalScore {
    /// The raw image score.
    pub score: f64,
    /// Maximum of its anomaly map (at the image's resolution).
    pub map_max: f32,
    /// Median of its anomaly map.
    pub map_median: f32,
}

impl NormalScore {
    /// What a good image's detection gives a calibration.
    pub fn of(detection: &crate::Detection) -> Self {
        Self {
            score: detection.score,
            map_max: detection.map_stats.max,
            map_median: map_median(&detection.map.data),
        }
    }
}

/// The median of a map (lower middle for even sizes: a value that occurs in the map).
pub(crate) fn map_median(values: &[f32]) -> f32 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    let mid = (v.len() - 1) / 2;
    let (_, m, _) = v.select_nth_unstable_by(mid, f32::total_cmp);
    *m
}

/// The image-level part of a calibration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageCalibration {
    /// Raw-score threshold: flagged when `score > threshold`.
    pub threshold: f64,
    /// The order statistic used, `k = ceil((n + 1)(1 - α))` (1-based).
    pub rank: usize,
    /// Temperature of the calibrated score.
    pub temperature: f64,
    /// Median calibration score.
    pub median: f64,
    /// The calibration scores, ascending (for p-values).
    pub scores: Vec<f64>,
}

/// The map-level part of a calibration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PixelCalibration {
    /// Map threshold of regions: pixels `> threshold` form regions.
    pub threshold: f32,
    /// How it was chosen.
    pub rule: String,
    /// Median of the normal maps' medians: the background level.
    pub background: f32,
}

/// The measured behaviour on held-out normal images.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Holdout {
    /// Held-out normal images.
    pub images: usize,
    /// How many scored above the threshold.
    pub false_alarms: usize,
    /// `false_alarms / images`.
    pub fpr: f64,
    /// How many had at least one pixel above the pixel threshold.
    pub with_regions: usize,
}

/// A calibration file (`ssvp calibrate --out calib.json`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// [`CALIBRATION_FORMAT`] of the writer.
    pub format: u32,
    /// The ssvp version that wrote it.
    pub ssvp_version: String,
    /// The model it holds for.
    pub model: ModelIdentity,
    /// The settings it holds for.
    pub settings: DetectorSettings,
    /// Target false-alarm rate α.
    pub target_fpr: f64,
    /// Normal images used for the fit.
    pub calibration_images: usize,
    /// The image threshold and what the calibrated score and p-values need.
    pub image: ImageCalibration,
    /// The map threshold of regions.
    pub pixel: PixelCalibration,
    /// The measured false-alarm rate on held-out normal images (none without a held-out part).
    pub holdout: Option<Holdout>,
}

/// The smallest calibration set with a conformal threshold at false-alarm rate `alpha`.
pub fn min_images(alpha: f64) -> usize {
    ((1.0 / alpha) - 1e-9).ceil() as usize - 1
}

/// How many of `n` normal images are held out for the false-alarm check and how many are left
/// for the fit: `(fit, held)`, with `held = round(n · holdout_fraction)`.
pub fn split_sizes(n: usize, holdout_fraction: f64) -> (usize, usize) {
    let held = ((n as f64 * holdout_fraction).round() as usize).min(n);
    (n - held, held)
}

/// `ceil((n + 1)(1 - alpha))`, robust to the rounding of `1 - alpha`.
fn conformal_rank(n: usize, alpha: f64) -> usize {
    ((n as f64 + 1.0) * (1.0 - alpha) - 1e-9).ceil().max(1.0) as usize
}

/// A seeded permutation of `0..n` (SplitMix64 Fisher-Yates), for the held-out split.
fn permutation(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = ssvp_util::rng::SplitMix64::new(seed);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 {
        sorted[n / 2]
    } else {
        0.5 * (sorted[n / 2 - 1] + sorted[n / 2])
    }
}

/// Checks a calibration before any image is scored: the target false-alarm rate in (0, 1),
/// the held-out fraction in [0, 1), and enough of the `n` normal images left after the hold-out
/// for a conformal threshold at that rate. [`Calibration::fit`] checks the same, so a front may
/// call this early (before loading a model) without restating any rule.
pub fn check_plan(n: usize, target_fpr: f64, holdout_fraction: f64) -> Result<()> {
    if !(target_fpr > 0.0 && target_fpr < 1.0) {
        return Err(Error::invalid(format!(
            "the target false-positive rate must lie in (0, 1), got {target_fpr}"
        )));
    }
    if !(0.0..1.0).contains(&holdout_fraction) {
        return Err(Error::invalid(format!(
            "the held-out fraction must lie in [0, 1), got {holdout_fraction}"
        )));
    }
    let (fit, held) = split_sizes(n, holdout_fraction);
    let needed = min_images(target_fpr);
    if fit < needed {
        let total_needed = if holdout_fraction > 0.0 {
            (needed as f64 / (1.0 - holdout_fraction)).ceil() as usize
        } else {
            needed
        };
        let alpha_possible = 1.0 / (fit as f64 + 1.0);
        return Err(Error::new(
            ErrorKind::NotEnoughData,
            format!(
                "{fit} normal images are left for calibration ({} given, {held} held out), but a \
                 false-alarm rate of {target_fpr} needs at least {needed} ({total_needed} with \
                 this held-out fraction); add normal images, or raise the target to at least \
                 {alpha_possible:.4}{}",
                n,
                if held > 0 {
                    ", or hold out fewer (--holdout 0)"
                } else {
                    ""
                }
            ),
        ));
    }
    Ok(())
}

impl Calibration {
    /// Fits a calibration to the normal images' scores (see the module docs); a
    /// `holdout_fraction` of them, drawn with `seed`, is kept out of the fit and measured.
    pub fn fit(
        normal: &[NormalScore],
        target_fpr: f64,
        holdout_fraction: f64,
        seed: u64,
        model: ModelIdentity,
        settings: DetectorSettings,
    ) -> Result<Self> {
        check_plan(normal.len(), target_fpr, holdout_fraction)?;
        if let Some(bad) = normal
            .iter()
            .find(|n| !n.score.is_finite() || !n.map_max.is_finite())
        {
            return Err(Error::new(
                ErrorKind::Model,
                format!(
                    "a normal image has a non-finite score or map (score {}, map maximum {})",
                    bad.score, bad.map_max
                ),
            ));
        }
        let (_, held) = split_sizes(normal.len(), holdout_fraction);
        let order = permutation(normal.len(), seed);
        let (held_idx, fit_idx) = order.split_at(held);
        let n = fit_idx.len();
        let rank = conformal_rank(n, target_fpr);
        let mut scores: Vec<f64> = fit_idx.iter().map(|&i| normal[i].score).collect();
        scores.sort_by(f64::total_cmp);
        let threshold = scores[rank - 1];
        let med = median(&scores);
        let temperature = {
            let ln9 = 9f64.ln();
            let spread = threshold - med;
            if spread > 1e-12 {
                spread / ln9
            } else {
                let mean = scores.iter().sum::<f64>() / n as f64;
                let sd = (scores.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / n as f64).sqrt();
                if sd > 1e-12 {
                    sd / ln9
                } else {
                    1e-6
                }
            }
        };
        let mut maxima: Vec<f32> = fit_idx.iter().map(|&i| normal[i].map_max).collect();
        maxima.sort_by(f32::total_cmp);
        let pixel_threshold = maxima[rank - 1];
        let mut medians: Vec<f64> = fit_idx
            .iter()
            .map(|&i| normal[i].map_median as f64)
            .collect();
        medians.sort_by(f64::total_cmp);
        let background = median(&medians) as f32;
        let holdout = (held > 0).then(|| {
            let false_alarms = held_idx
                .iter()
                .filter(|&&i| is_anomalous(normal[i].score, threshold))
                .count();
            Holdout {
                images: held,
                false_alarms,
                fpr: false_alarms as f64 / held as f64,
                with_regions: held_idx
                    .iter()
                    .filter(|&&i| normal[i].map_max > pixel_threshold)
                    .count(),
            }
        });
        Ok(Self {
            format: CALIBRATION_FORMAT,
            ssvp_version: env!("CARGO_PKG_VERSION").to_string(),
            model,
            settings,
            target_fpr,
            calibration_images: n,
            image: ImageCalibration {
                threshold,
                rank,
                temperature,
                median: med,
                scores,
            },
            pixel: PixelCalibration {
                threshold: pixel_threshold,
                rule: format!(
                    "the {rank}-th smallest of the {n} normal maps' maxima (the conformal rank \
                     for a {target_fpr} rate of images with any region)"
                ),
                background,
            },
            holdout,
        })
    }

    /// `σ((score - threshold) / τ)`: 0.5 at `threshold`.
    pub fn calibrated_score(&self, score: f64, threshold: f64) -> f64 {
        1.0 / (1.0 + (-(score - threshold) / self.image.temperature).exp())
    }

    /// The conformal p-value of `score` among the calibration scores.
    pub fn p_value(&self, score: f64) -> f64 {
        let s = &self.image.scores;
        // Scores are ascending: those >= score start at the partition point.
        let at_least = s.len() - s.partition_point(|&v| v < score);
        (1 + at_least) as f64 / (s.len() + 1) as f64
    }

    /// The fixed value range of overlays and map PNGs (see the module docs).
    pub fn display_scale(&self) -> ColorScale {
        let lo = self.pixel.background;
        let hi = self.pixel.threshold + (self.pixel.threshold - lo);
        if hi > lo {
            ColorScale { lo, hi }
        } else {
            ColorScale { lo, hi: lo + 1e-3 }
        }
    }

    /// A copy of this calibration for the model `identity`, unchanged otherwise: what a
    /// detector whose references bank grew (`ssvp_memory::PatchBank::with_references`) keeps
    /// deciding with until it is calibrated again.
    ///
    /// Valid only when the new model's score of every image is lower than or equal to the old
    /// one's: a references bank that only grew (each patch distance is a minimum over a
    /// superset of vectors, so every image score can only fall). The normal images' scores
    /// fall too, so the kept threshold is then higher than a fresh fit's: the false-alarm
    /// bound still holds (conservatively), the p-values and calibrated scores read as if
    /// computed on the old scores, and detection may miss slightly more than after
    /// re-calibrating. Any other change of the model (another head, other backbones, a bank
    /// that lost or changed vectors) needs a new calibration; nothing here checks it.
    pub fn carried_to(&self, identity: &ModelIdentity) -> Calibration {
        Calibration {
            model: identity.clone(),
            ..self.clone()
        }
    }

    /// Refuses use with another model or other settings, naming what differs.
    pub fn check_compatible(
        &self,
        model: &ModelIdentity,
        settings: &DetectorSettings,
    ) -> Result<()> {
        model.check_matches(&self.model, "the calibration")?;
        let diffs = self.settings.differences(settings);
        if !diffs.is_empty() {
            return Err(Error::new(
                ErrorKind::Mismatch,
                format!(
                    "the calibration was made with other settings: {}; calibrate again with these \
                     settings or use the calibration's",
                    diffs.join(", ")
                ),
            ));
        }
        Ok(())
    }

    /// Reads a calibration file.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let cal: Self = serde_json::from_str(&text).map_err(|e| {
            Error::invalid(format!(
                "{} is not a calibration file of `ssvp calibrate`: {e}",
                path.display()
            ))
        })?;
        if cal.format != CALIBRATION_FORMAT {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "{}: calibration format {} (this build reads {CALIBRATION_FORMAT})",
                    path.display(),
                    cal.format
                ),
            ));
        }
        Ok(cal)
    }

    /// Writes the calibration as pretty JSON, atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(Error::model)?;
        ssvp_util::fs::write_atomic(path, text.as_bytes()).map_err(|e| Error::io(path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> ModelIdentity {
        ModelIdentity {
            checkpoint: "run".into(),
            head: "h".into(),
            bank: String::new(),
            backbones: "b".into(),
            backbone_names: "tiny / tiny".into(),
            made_with: None,
        }
    }

    fn settings() -> DetectorSettings {
        DetectorSettings {
            class_name: "object".into(),
            map_size: 64,
            postprocess: Default::default(),
            tiling: None,
            memory: None,
        }
    }

    fn normals(n: usize) -> Vec<NormalScore> {
        (0..n)
            .map(|i| NormalScore {
                score: i as f64 / n as f64,
                map_max: (n - i) as f32,
                map_median: 0.25,
            })
            .collect()
    }

    #[test]
    fn conformal_rank_and_minimum() {
        assert_eq!(min_images(0.01), 99);
        assert_eq!(min_images(0.05), 19);
        assert_eq!(min_images(0.1), 9);
        assert_eq!(conformal_rank(99, 0.01), 99);
        assert_eq!(conformal_rank(19, 0.05), 19);
        assert_eq!(conformal_rank(100, 0.1), 91);
        // The CLI's up-front check and the fit split the same way, halves included.
        assert_eq!(split_sizes(124, 0.2), (99, 25));
        assert_eq!(split_sizes(5, 0.5), (2, 3));
        assert_eq!(split_sizes(10, 0.0), (10, 0));
    }

    #[test]
    fn threshold_p_value_and_score_agree() {
        let cal = Calibration::fit(&normals(40), 0.1, 0.0, 1, identity(), settings()).unwrap();
        // k = ceil(41 * 0.9) = 37: the 37th smallest of 0, 1/40, ..., 39/40.
        assert_eq!(cal.image.rank, 37);
        assert_eq!(cal.image.threshold, 36.0 / 40.0);
        let t = cal.image.threshold;
        assert!((cal.calibrated_score(t, t) - 0.5).abs() < 1e-12);
        assert!((cal.calibrated_score(cal.image.median, t) - 0.1).abs() < 1e-9);
        let mut last = 0.0;
        for i in 0..100 {
            let s = i as f64 / 80.0;
            let c = cal.calibrated_score(s, t);
            assert!(c >= last && (0.0..=1.0).contains(&c));
            last = c;
            // Flagged exactly when the calibrated score is above one half, and then p <= α.
            assert_eq!(s > t, c > 0.5);
            if s > t {
                assert!(cal.p_value(s) <= 0.1);
            }
        }
        assert_eq!(cal.p_value(-1.0), 1.0);
        assert_eq!(cal.p_value(10.0), 1.0 / 41.0);
        // The pixel threshold is the same rank of the maps' maxima (40 down to 1).
        assert_eq!(cal.pixel.threshold, 37.0);
    }

    #[test]
    fn too_few_images_say_how_many_are_needed() {
        let err = Calibration::fit(&normals(50), 0.01, 0.2, 1, identity(), settings()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotEnoughData);
        let msg = err.to_string();
        assert!(
            msg.contains("40 normal images") && msg.contains("at least 99"),
            "{msg}"
        );
        assert!(msg.contains("124 with this held-out fraction"), "{msg}");
        assert!(Calibration::fit(&normals(50), 0.0, 0.2, 1, identity(), settings()).is_err());
    }

    #[test]
    fn holdout_is_seeded_and_measured() {
        let a = Calibration::fit(&normals(100), 0.1, 0.3, 7, identity(), settings()).unwrap();
        let b = Calibration::fit(&normals(100), 0.1, 0.3, 7, identity(), settings()).unwrap();
        assert_eq!(a, b);
        let h = a.holdout.as_ref().unwrap();
        assert_eq!(h.images, 30);
        assert_eq!(a.calibration_images, 70);
        assert_eq!(h.fpr, h.false_alarms as f64 / 30.0);
    }

    #[test]
    fn another_model_or_setting_is_refused() {
        let cal = Calibration::fit(&normals(40), 0.1, 0.0, 1, identity(), settings()).unwrap();
        cal.check_compatible(&identity(), &settings()).unwrap();
        let mut other = identity();
        other.head = "other".into();
        let err = cal.check_compatible(&other, &settings()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Mismatch);
        let mut s = settings();
        s.class_name = "bottle".into();
        let err = cal.check_compatible(&identity(), &s).unwrap_err();
        assert!(
            err.to_string()
                .contains("class name `object` (now `bottle`)"),
            "{err}"
        );
    }
}
