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
//!
//! Without a head the detector's training-free scorer is evaluated: mutual scoring runs over
//! each category's test split in sets ([`crate::memory::set_sizes`]), and references are drawn
//! per category from its good training images ([`ReferenceDraw`], the few-shot protocol of
//! AnomalyDINO and of the WinCLIP/AnomalyCLIP few-shot tables).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use ssvp_eval::datasets::{eval_mask, Category, Dataset, Sample};
use ssvp_eval::maps::io::npy_bytes;
use ssvp_eval::metrics::predictions::ImageScore;
use ssvp_eval::metrics::{binary_metrics, PixelAccumulator};
use ssvp_eval::report::{CategoryResult, EvaluationReport};
use ssvp_features::{FeatureSource, ImageFeatures};
use ssvp_util::rng::{fnv1a, mix64, SplitMix64};

use crate::detector::{features_of_files, Detector};
use crate::error::{Error, ErrorKind, Result};
use crate::memory::{
    bank_of_features, bank_of_images, references_memory, BankOptions, Memory, ReferenceScoring,
};

/// Options of [`evaluate`] that are not the detector's.
#[derive(Debug, Clone, Default)]
pub struct EvalOptions {
    /// Write every post-processed map as `<dir>/<image path without extension>.npy` (float32),
    /// the layout `ssvp metrics --maps` reads.
    pub save_maps: Option<PathBuf>,
    /// Skip images whose features cannot be computed (a file that fails to decode) instead of
    /// failing; they are listed in [`Evaluation::skipped`].
    pub skip_bad: bool,
    /// Score each category against references drawn from its good training images (instead of
    /// the detector's own memory).
    pub references: Option<ReferenceDraw>,
}

/// One draw of the few-shot protocol: `shots` good training images per category.
#[derive(Debug, Clone)]
pub struct ReferenceDraw {
    /// The dataset's train split (its good images are the candidates).
    pub train: Dataset,
    /// References per category.
    pub shots: usize,
    /// Which draw (0, 1, ...): each draw is another seeded permutation.
    pub draw: u64,
    /// Seed of the permutations.
    pub seed: u64,
    /// How each category's bank is built.
    pub bank: BankOptions,
    /// How distances become scores.
    pub scoring: ReferenceScoring,
}

/// The references of one draw: the first `shots` of a seeded permutation of the category's
/// good training images (sorted by path first, so the draw does not depend on listing order).
/// The permutation depends on the category, the draw and the seed only, so the references of
/// `K` shots are the first `K` of those of any larger `K`: more shots only add images.
pub fn draw_references<'a>(
    train: &'a Dataset,
    category: &str,
    shots: usize,
    draw: u64,
    seed: u64,
) -> Result<Vec<&'a Sample>> {
    let Some(cat) = train.category(category) else {
        return Err(Error::new(
            ErrorKind::NotEnoughData,
            format!("the train split has no category `{category}` to draw references from"),
        ));
    };
    let mut good: Vec<&Sample> = cat
        .samples
        .iter()
        .filter(|s| !s.label.is_anomalous())
        .collect();
    good.sort_by(|a, b| a.rel_path.cmp(&b.rel_path));
    if shots == 0 || shots > good.len() {
        return Err(Error::new(
            ErrorKind::NotEnoughData,
            format!(
                "{shots} references asked for `{category}`, which has {} good training images",
                good.len()
            ),
        ));
    }
    let mut rng = SplitMix64::new(seed ^ fnv1a(category.as_bytes()) ^ mix64(draw));
    for i in (1..good.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        good.swap(i, j);
    }
    good.truncate(shots);
    Ok(good)
}

/// The bank of one category's references under `draw`.
fn category_memory(
    detector: &Detector,
    source: &dyn FeatureSource,
    draw: &ReferenceDraw,
    category: &str,
) -> Result<Memory> {
    let refs = draw_references(&draw.train, category, draw.shots, draw.draw, draw.seed)?;
    let names: Vec<String> = refs.iter().map(|s| s.rel_path.clone()).collect();
    let bank = if draw.bank.rotations > 1 {
        let images = refs
            .iter()
            .map(|s| ssvp_image::load_rgb8(&s.image_path).map_err(Error::from))
            .collect::<Result<Vec<_>>>()?;
        bank_of_images(source, &images, names, &draw.bank)?
    } else {
        let paths: Vec<PathBuf> = refs.iter().map(|s| s.image_path.clone()).collect();
        let mut features = Vec::with_capacity(paths.len());
        for chunk in paths.chunks(detector.options().batch_size) {
            features.extend(features_of_files(source, chunk)?);
        }
        bank_of_features(source.identity(), &features, names, &draw.bank)?
    };
    references_memory(bank, source.identity(), draw.scoring.clone())
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

/// What scores in an evaluation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvalMode {
    /// The trained head.
    Head,
    /// Distances to references drawn from each category's good training images.
    References,
    /// Mutual scoring of each category's test images.
    Mutual,
}

impl EvalMode {
    /// The mode asked for, else the head when there is one; the head mode needs a head.
    pub fn resolve(asked: Option<EvalMode>, has_head: bool) -> Result<EvalMode> {
        match (asked, has_head) {
            (Some(EvalMode::Head), false) => Err(Error::invalid("--mode head needs --checkpoint")),
            (Some(m), _) => Ok(m),
            (None, true) => Ok(EvalMode::Head),
            (None, false) => Err(Error::invalid(
                "give a trained run (--checkpoint) or a mode without training (--mode references \
                 or --mode mutual)",
            )),
        }
    }

    /// The protocol's name of the mode: a training-free mode with a head is `fused`.
    pub fn protocol_name(self, has_head: bool) -> &'static str {
        match (self, has_head) {
            (EvalMode::Head, _) => "head",
            (_, true) => "fused",
            (EvalMode::References, false) => "references",
            (EvalMode::Mutual, false) => "mutual",
        }
    }
}

/// The references an evaluation draws: for each `shots` K, `draws` seeded permutations of each
/// category's good training images.
#[derive(Debug, Clone)]
pub struct ReferencePlan {
    /// The dataset's train split.
    pub train: Dataset,
    /// References per category, one run per value.
    pub shots: Vec<usize>,
    /// Draws per value of `shots`.
    pub draws: usize,
    /// Seed of the permutations.
    pub seed: u64,
    /// How each category's bank is built.
    pub bank: BankOptions,
    /// How distances become scores.
    pub scoring: ReferenceScoring,
}

impl ReferencePlan {
    /// Every (K, draw) of the plan, in order.
    pub fn draws(&self) -> Vec<ReferenceDraw> {
        self.shots
            .iter()
            .flat_map(|&shots| {
                (0..self.draws as u64).map(move |draw| ReferenceDraw {
                    train: self.train.clone(),
                    shots,
                    draw,
                    seed: self.seed,
                    bank: self.bank.clone(),
                    scoring: self.scoring.clone(),
                })
            })
            .collect()
    }
}

/// The runs of one evaluation: one run, or one per (K, draw) of a [`ReferencePlan`].
pub struct EvalRuns {
    /// How it scored.
    pub protocol: EvalProtocol,
    /// Each run with its draw (`None`: no references drawn).
    pub runs: Vec<(Option<ReferenceDraw>, Evaluation)>,
}

/// What an evaluation runs.
#[derive(Debug, Clone)]
pub struct EvalRequest {
    /// What scores.
    pub mode: EvalMode,
    /// The references to draw (references mode).
    pub references: Option<ReferencePlan>,
    /// Maps to save and unreadable samples to skip, per run.
    pub options: EvalOptions,
    /// Outputs that hold one run only are asked for (maps, a scores file).
    pub single_run: bool,
}

/// Evaluates `detector` on `dataset`: once, or in references mode once per (K, draw) of the
/// reference plan. `on_draw` hears of each draw before it runs.
pub fn evaluate_runs(
    detector: &Detector,
    source: &dyn FeatureSource,
    dataset: &Dataset,
    request: &EvalRequest,
    on_draw: &mut dyn FnMut(&ReferenceDraw),
    on_progress: &mut dyn FnMut(EvalProgress),
) -> Result<EvalRuns> {
    let (mode, references, opts) = (request.mode, request.references.as_ref(), &request.options);
    let draws: Vec<Option<ReferenceDraw>> = match (mode, references) {
        (EvalMode::References, Some(plan)) => {
            if plan.shots.is_empty() || plan.draws == 0 {
                return Err(Error::invalid(
                    "references mode needs at least one number of shots and one draw",
                ));
            }
            plan.draws().into_iter().map(Some).collect()
        }
        (EvalMode::References, None) => {
            return Err(Error::invalid("references mode needs a reference plan"))
        }
        _ => vec![None],
    };
    if draws.len() > 1 && (request.single_run || opts.save_maps.is_some()) {
        return Err(Error::invalid(
            "--save-maps and --scores need a single run (one K, one draw)",
        ));
    }
    let mut runs = Vec::with_capacity(draws.len());
    for draw in draws {
        if let Some(d) = &draw {
            on_draw(d);
        }
        let run_opts = EvalOptions {
            references: draw.clone(),
            ..opts.clone()
        };
        let evaluation = evaluate(detector, source, dataset, &run_opts, on_progress)?;
        runs.push((draw, evaluation));
    }
    let plan = references.filter(|_| mode == EvalMode::References);
    let protocol = EvalProtocol {
        mode: mode.protocol_name(detector.has_head()).to_string(),
        shots: plan.map(|p| p.shots[0]),
        draws: plan.map(|p| p.draws),
        seed: plan.map(|p| p.seed),
        settings: detector.settings(),
    };
    Ok(EvalRuns { protocol, runs })
}

impl EvalRuns {
    /// The summary of each K over its draws, in the order of `shots`.
    pub fn summaries(&self, shots: &[usize]) -> Vec<DrawSummary> {
        shots
            .iter()
            .map(|&k| {
                let reports: Vec<EvaluationReport> = self
                    .runs
                    .iter()
                    .filter(|(d, _)| d.as_ref().is_some_and(|d| d.shots == k))
                    .map(|(_, e)| e.report.clone())
                    .collect();
                summarize_draws(k, &reports)
            })
            .collect()
    }

    /// The JSON of the runs: a single run as the `ssvp metrics` schema with its `protocol`;
    /// several as `protocol`, `runs` (each K, draw and report) and `summary`.
    pub fn to_json(&self, shots: &[usize]) -> serde_json::Value {
        if let [(_, evaluation)] = self.runs.as_slice() {
            let mut json = serde_json::to_value(&evaluation.report).expect("reports serialise");
            json["protocol"] = serde_json::to_value(&self.protocol).expect("protocols serialise");
            return json;
        }
        let protocol = EvalProtocol {
            shots: None,
            ..self.protocol.clone()
        };
        let runs: Vec<serde_json::Value> = self
            .runs
            .iter()
            .map(|(d, e)| {
                serde_json::json!({
                    "shots": d.as_ref().map(|d| d.shots),
                    "draw": d.as_ref().map(|d| d.draw),
                    "report": e.report,
                })
            })
            .collect();
        serde_json::json!({
            "protocol": protocol,
            "runs": runs,
            "summary": self.summaries(shots),
        })
    }
}

/// How an evaluation scored, recorded beside its metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalProtocol {
    /// `head`, `references`, `mutual` or `fused`.
    pub mode: String,
    /// References per category (references mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shots: Option<usize>,
    /// Seeded draws of the references per `shots`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub draws: Option<usize>,
    /// Seed of the draws.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// The detector's scoring settings (taps, mutual options, post-processing).
    pub settings: crate::settings::DetectorSettings,
}

/// The mean metrics of several draws of one `shots`: mean and sample standard deviation (0 for
/// a single draw) of each metric of the reports' `mean` row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DrawSummary {
    /// References per category.
    pub shots: usize,
    /// Draws summarised.
    pub draws: usize,
    /// Metric name -> mean over the draws.
    pub mean: BTreeMap<String, f64>,
    /// Metric name -> standard deviation over the draws.
    pub std: BTreeMap<String, f64>,
}

/// Summarises the reports of the draws of one `shots`.
pub fn summarize_draws(shots: usize, reports: &[EvaluationReport]) -> DrawSummary {
    let mut values: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for r in reports {
        for name in r.mean.metrics.names() {
            if let Some(v) = r.mean.metrics.get(name) {
                values.entry(name.to_string()).or_default().push(v);
            }
        }
    }
    let mut mean = BTreeMap::new();
    let mut std = BTreeMap::new();
    for (name, v) in values {
        let n = v.len() as f64;
        let m = v.iter().sum::<f64>() / n;
        let var = if v.len() > 1 {
            v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0)
        } else {
            0.0
        };
        mean.insert(name.clone(), m);
        std.insert(name, var.sqrt());
    }
    DrawSummary {
        shots,
        draws: reports.len(),
        mean,
        std,
    }
}

/// Features of `samples`; under `skip_bad` a failing batch is retried image by image, so one
/// bad file costs only itself (`None`, listed in `skipped`).
fn features_or_skip(
    source: &dyn FeatureSource,
    samples: &[Sample],
    skip_bad: bool,
    skipped: &mut Vec<(PathBuf, String)>,
) -> Result<Vec<Option<ImageFeatures>>> {
    let paths: Vec<PathBuf> = samples.iter().map(|s| s.image_path.clone()).collect();
    match features_of_files(source, &paths) {
        Ok(f) => Ok(f.into_iter().map(Some).collect()),
        Err(e) if skip_bad && e.kind() == ErrorKind::InvalidInput => paths
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
            .collect(),
        Err(e) => Err(e),
    }
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
    let drawn = match &opts.references {
        Some(draw) => Some(category_memory(detector, source, draw, &cat.name)?),
        None => None,
    };
    let drawn = drawn.map(|memory| detector.scorer_of(memory)).transpose()?;
    let scorer = match &drawn {
        Some(s) => s.as_ref(),
        None => detector.scorer()?,
    };
    let batch_size = detector.options().batch_size;
    // Images per scoring call: a mutual set scores as a whole, anything else per batch (drawn
    // references are never mutual, so the detector's own rule holds).
    let sizes = detector.call_sizes(cat.samples.len());
    let mut start = 0;
    for size in sizes {
        let chunk = &cat.samples[start..start + size];
        start += size;
        let mut features = Vec::with_capacity(chunk.len());
        for part in chunk.chunks(batch_size) {
            features.extend(features_or_skip(source, part, opts.skip_bad, skipped)?);
        }
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
        let results = detector.score_features_with(&feats, &cat.prompt_name, scorer)?;
        for ((sample, _), result) in kept.iter().zip(results) {
            let mask = eval_mask(sample.mask_path.as_deref(), map_size)
                .map_err(|e| Error::invalid(e.to_string()))?;
            acc.push(&result.map.data, &mask.data, map_size, map_size)
                .map_err(|e| {
                    Error::model_msg(format!("map of {}: {e}", sample.image_path.display()))
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
    let image = binary_metrics(&raw, &labels).map_err(|e| Error::model_msg(format!("{e}")))?;
    let pixel = acc.finish();
    let anomalous = labels.iter().filter(|&&l| l).count() as u64;
    let result = CategoryResult::new(&image, Some(&pixel), scores.len() as u64, anomalous);
    if detector.postprocess().per_class_minmax {
        let lo = raw.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = raw.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let span = if hi > lo { hi - lo } else { 1.0 };
        for s in &mut scores {
            s.score = (s.score - lo) / span;
        }
    }
    Ok((result, scores))
}
