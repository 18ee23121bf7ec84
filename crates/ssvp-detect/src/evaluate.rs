//! Zero-shot evaluation of a [`Detector`] on a benchmark: for each category, backbone features
//! (any [`FeatureSource`], usually the on-disk cache) -> [`Detector::score_features`] with the
//! category's prompt name -> the map on the `map_size` grid -> exact image and pixel metrics,
//! reported with the serde types (and so the JSON) of `ssvp metrics`.
//!
//! The map and the score of an image are those of `ssvp detect` on the same image before its map
//! is resized to the image (the same function computes them); GT masks are brought to the
//! `map_size` grid by the field's protocol ([`ssvp_eval::datasets::eval_mask`]).
//! `postprocess.per_class_minmax` rescales the written scores per category; it is monotone, so
//! it never changes a per-category metric.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ssvp_eval::datasets::{eval_mask, Category, Dataset};
use ssvp_eval::maps::io::npy_bytes;
use ssvp_eval::metrics::predictions::ImageScore;
use ssvp_eval::metrics::{binary_metrics, PixelAccumulator};
use ssvp_eval::report::{CategoryResult, EvaluationReport};
use ssvp_model::features::FeatureSource;

use crate::detector::{features_of_files, Detector};
use crate::error::{Error, ErrorKind, Result};

/// Options of [`evaluate`] that are not the detector's.
#[derive(Debug, Clone, Default)]
pub struct EvalOptions {
    /// Write every post-processed map as `<dir>/<image path without extension>.npy` (float32),
    /// the layout `ssvp metrics --maps` reads.
    pub save_maps: Option<PathBuf>,
    /// Skip images whose features cannot be computed (a file that fails to decode) instead of
    /// failing; they are listed in [`Evaluation::skipped`].
    pub skip_bad: bool,
}

/// Everything [`evaluate`] produces.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// Per-category and mean metrics, in the schema of `ssvp metrics`.
    pub report: EvaluationReport,
    /// Every image's score (the rows of `scores.csv`).
    pub scores: Vec<ImageScore>,
    /// Images left out under [`EvalOptions::skip_bad`], with the reason.
    pub skipped: Vec<(PathBuf, String)>,
}

/// Progress of [`evaluate`]: `done` of `total` images.
#[derive(Debug, Clone)]
pub struct EvalProgress<'a> {
    /// The category being evaluated.
    pub category: &'a str,
    /// Images done so far, over all categories.
    pub done: usize,
    /// Images in the whole evaluation.
    pub total: usize,
}

/// Evaluates `detector` zero-shot on every category of `dataset`, in batches of the
/// detector's batch size. The evaluation grid is the detector's `map_size`.
pub fn evaluate(
    detector: &Detector,
    source: &dyn FeatureSource,
    dataset: &Dataset,
    opts: &EvalOptions,
    on_progress: &mut dyn FnMut(EvalProgress),
) -> Result<Evaluation> {
    let total = dataset.len();
    let mut state = Progress { done: 0, total };
    let mut categories = BTreeMap::new();
    let mut scores = Vec::with_capacity(total);
    let mut skipped = Vec::new();
    for cat in &dataset.categories {
        let (result, cat_scores) = evaluate_category(
            detector,
            source,
            cat,
            opts,
            &mut state,
            &mut skipped,
            on_progress,
        )?;
        categories.insert(cat.name.clone(), result);
        scores.extend(cat_scores);
    }
    Ok(Evaluation {
        report: EvaluationReport::from_categories(categories),
        scores,
        skipped,
    })
}

struct Progress {
    done: usize,
    total: usize,
}

fn evaluate_category(
    detector: &Detector,
    source: &dyn FeatureSource,
    cat: &Category,
    opts: &EvalOptions,
    progress: &mut Progress,
    skipped: &mut Vec<(PathBuf, String)>,
    on_progress: &mut dyn FnMut(EvalProgress),
) -> Result<(CategoryResult, Vec<ImageScore>)> {
    let map_size = detector.options().map_size;
    let mut acc = PixelAccumulator::new();
    let mut scores = Vec::with_capacity(cat.samples.len());
    for chunk in cat.samples.chunks(detector.options().batch_size) {
        let paths: Vec<PathBuf> = chunk.iter().map(|s| s.image_path.clone()).collect();
        // Under skip_bad a failing batch is retried image by image, so one bad file costs only
        // itself.
        let features = match features_of_files(source, &paths) {
            Ok(f) => f.into_iter().map(Some).collect::<Vec<_>>(),
            Err(e) if opts.skip_bad && e.kind() == ErrorKind::InvalidInput => paths
                .iter()
                .map(
                    |p| match features_of_files(source, std::slice::from_ref(p)) {
                        Ok(mut f) => Ok(f.pop()),
                        Err(e) if e.kind() == ErrorKind::InvalidInput => {
                            skipped.push((p.clone(), e.to_string()));
                            Ok(None)
                        }
                        Err(e) => Err(e),
                    },
                )
                .collect::<Result<Vec<_>>>()?,
            Err(e) => return Err(e),
        };
        let kept: Vec<_> = chunk
            .iter()
            .zip(features)
            .filter_map(|(s, f)| f.map(|f| (s, f)))
            .collect();
        if kept.is_empty() {
            progress.done += chunk.len();
            continue;
        }
        let feats: Vec<_> = kept.iter().map(|(_, f)| f.clone()).collect();
        let results = detector.score_features(&feats, &cat.prompt_name)?;
        for ((sample, _), result) in kept.iter().zip(results) {
            let mask = eval_mask(sample.mask_path.as_deref(), map_size)
                .map_err(|e| Error::invalid(e.to_string()))?;
            acc.push(&result.map.data, &mask.data, map_size, map_size)
                .map_err(|e| {
                    Error::model(anyhow::anyhow!(
                        "map of {}: {e}",
                        sample.image_path.display()
                    ))
                })?;
            if let Some(dir) = &opts.save_maps {
                let path = dir.join(Path::new(&sample.rel_path).with_extension("npy"));
                ssvp_util::fs::write_atomic(&path, &npy_bytes(&result.map))
                    .map_err(|e| Error::io(&path, e))?;
            }
            scores.push(ImageScore {
                category: cat.name.clone(),
                path: sample.rel_path.clone(),
                anomalous: sample.label.is_anomalous(),
                score: result.score,
            });
        }
        progress.done += chunk.len();
        on_progress(EvalProgress {
            category: &cat.name,
            done: progress.done,
            total: progress.total,
        });
    }
    let raw: Vec<f64> = scores.iter().map(|s| s.score).collect();
    let labels: Vec<bool> = scores.iter().map(|s| s.anomalous).collect();
    let image = binary_metrics(&raw, &labels).map_err(|e| Error::model(anyhow::anyhow!("{e}")))?;
    let pixel = acc.finish();
    let anomalous = labels.iter().filter(|&&l| l).count() as u64;
    let result = CategoryResult::new(&image, Some(&pixel), scores.len() as u64, anomalous);
    if detector.head().config().postprocess.per_class_minmax {
        let lo = raw.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = raw.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let span = if hi > lo { hi - lo } else { 1.0 };
        for s in &mut scores {
            s.score = (s.score - lo) / span;
        }
    }
    Ok((result, scores))
}
