//! Zero-shot evaluation of a trained head on a target dataset: features -> head (Eval mode, the
//! category's prompt name) -> fused map -> bilinear upsampling to the evaluation grid ->
//! Gaussian smoothing -> exact image and pixel metrics per category, reported with the same
//! serde types (and so the same JSON) as `ssvp metrics`.
//!
//! Protocol (docs/method.md §2 #10): the `h x w` map `P_map` is upsampled to `eval_size x
//! eval_size` with torch's bilinear (`postprocess.upsample_align_corners`), smoothed with scipy's
//! `gaussian_filter(σ = postprocess.gaussian_sigma)`; GT masks are resized to the same grid by the
//! field's rule (PIL bilinear on the 0/255 mask, `> 0.5`); a normal image's mask is all zero. The
//! image score is the head's `S_final` (computed on the token grid, before smoothing).
//! `postprocess.per_class_minmax` rescales the written scores per category; it is monotone, so
//! it never changes a per-category metric.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use candle_core::{DType, Device};
use serde::{Deserialize, Serialize};
use ssvp_eval::datasets::{load_mask, Category, Dataset};
use ssvp_eval::metrics::{binary_metrics, PixelAccumulator};
use ssvp_eval::postprocess::{gaussian_filter, resize_bilinear, resize_mask, AnomalyMap, GtMask};
use ssvp_eval::report::{CategoryResult, EvaluationReport};

use crate::config::{PostprocessConfig, SsvpConfig};
use crate::features::{stack_features, BackboneIdentity, FeatureSource};
use crate::head::{Mode, SsvpHead};
use crate::run_dir::{RunDir, RunState, IDENTITY_FILE};
use crate::vcpg::PromptTextEncoder;

/// The field's evaluation grid for 518-px inputs.
pub const DEFAULT_EVAL_SIZE: usize = 518;

/// Options of [`evaluate`] that are not in the config.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Side of the square evaluation grid (maps and masks).
    pub eval_size: usize,
    /// Images per head forward.
    pub batch_size: usize,
    /// Write every post-processed map as `<dir>/<image path without extension>.npy` (float32),
    /// the layout `ssvp metrics --maps` reads.
    pub save_maps: Option<PathBuf>,
}

impl Default for EvalOptions {
    fn default() -> Self {
        Self {
            eval_size: DEFAULT_EVAL_SIZE,
            batch_size: 8,
            save_maps: None,
        }
    }
}

/// The score of one evaluated image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageScore {
    pub category: String,
    /// Image path relative to the dataset root (the `path` column of scores.csv).
    pub path: String,
    pub anomalous: bool,
    pub score: f64,
}

/// Everything [`evaluate`] produces.
#[derive(Debug, Clone)]
pub struct Evaluation {
    pub report: EvaluationReport,
    pub scores: Vec<ImageScore>,
}

/// Progress of [`evaluate`]: `done` of `total` images.
#[derive(Debug, Clone)]
pub struct EvalProgress<'a> {
    pub category: &'a str,
    pub done: usize,
    pub total: usize,
}

/// The map of one image on the evaluation grid: bilinear upsampling then Gaussian smoothing.
pub fn postprocess_map(
    map: &[f32],
    grid: (usize, usize),
    eval_size: usize,
    pp: &PostprocessConfig,
) -> anyhow::Result<AnomalyMap> {
    let (h, w) = grid;
    let raw = AnomalyMap::new(w, h, map.to_vec())?;
    let up = resize_bilinear(&raw, eval_size, eval_size, pp.upsample_align_corners)?;
    if pp.gaussian_sigma > 0.0 {
        Ok(gaussian_filter(&up, pp.gaussian_sigma)?)
    } else {
        Ok(up)
    }
}

/// A mask file as a binary grid at its own size (any non-zero pixel is a defect).
pub fn load_gt_mask(path: &Path) -> anyhow::Result<GtMask> {
    let m = load_mask(path)?;
    Ok(GtMask::new(
        m.width as usize,
        m.height as usize,
        m.pixels.iter().map(|&p| p != 0).collect(),
    )?)
}

/// The GT mask of a sample on the `size x size` evaluation grid (all zero without a mask file).
pub fn eval_mask(mask_path: Option<&Path>, size: usize) -> anyhow::Result<GtMask> {
    match mask_path {
        Some(path) => Ok(resize_mask(&load_gt_mask(path)?, size, size)?),
        None => Ok(GtMask::new(size, size, vec![false; size * size])?),
    }
}

#[allow(clippy::too_many_arguments)]
fn evaluate_category(
    head: &SsvpHead,
    source: &dyn FeatureSource,
    encoder: &dyn PromptTextEncoder,
    cat: &Category,
    opts: &EvalOptions,
    done: &mut usize,
    total: usize,
    on_progress: &mut dyn FnMut(EvalProgress),
) -> anyhow::Result<(CategoryResult, Vec<ImageScore>)> {
    let pp = &head.config().postprocess;
    let t_init = head
        .encode_prompts(encoder, &cat.prompt_name)
        .with_context(|| format!("encoding the prompts of `{}`", cat.prompt_name))?
        .detach();
    let mut acc = PixelAccumulator::new();
    let mut scores = Vec::with_capacity(cat.samples.len());
    for chunk in cat.samples.chunks(opts.batch_size.max(1)) {
        let paths: Vec<PathBuf> = chunk.iter().map(|s| s.image_path.clone()).collect();
        let features = stack_features(&source.features_batch(&paths)?)?;
        let out = head.forward(&features, &t_init, &Mode::Eval, None)?;
        let maps = out.fused_map.to_dtype(DType::F32)?.to_vec3::<f32>()?;
        let image_scores = out.score.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        for ((sample, map), score) in chunk.iter().zip(maps).zip(image_scores) {
            let flat: Vec<f32> = map.into_iter().flatten().collect();
            let map = postprocess_map(&flat, features.grid, opts.eval_size, pp)?;
            let mask = eval_mask(sample.mask_path.as_deref(), opts.eval_size)?;
            acc.push(&map.data, &mask.data, map.width, map.height)
                .with_context(|| format!("map of {}", sample.image_path.display()))?;
            if let Some(dir) = &opts.save_maps {
                let rel = Path::new(&sample.rel_path).with_extension("npy");
                write_npy(&dir.join(rel), &map)?;
            }
            scores.push(ImageScore {
                category: cat.name.clone(),
                path: sample.rel_path.clone(),
                anomalous: sample.label.is_anomalous(),
                score,
            });
            *done += 1;
            on_progress(EvalProgress {
                category: &cat.name,
                done: *done,
                total,
            });
        }
    }
    let raw: Vec<f64> = scores.iter().map(|s| s.score).collect();
    let labels: Vec<bool> = scores.iter().map(|s| s.anomalous).collect();
    let image = binary_metrics(&raw, &labels)?;
    let pixel = acc.finish();
    let anomalous = labels.iter().filter(|&&l| l).count() as u64;
    let result = CategoryResult::new(&image, Some(&pixel), scores.len() as u64, anomalous);
    if pp.per_class_minmax {
        let lo = raw.iter().cloned().fold(f64::INFINITY, f64::min);
        let hi = raw.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let span = if hi > lo { hi - lo } else { 1.0 };
        for s in &mut scores {
            s.score = (s.score - lo) / span;
        }
    }
    Ok((result, scores))
}

/// Evaluates `head` zero-shot on every category of `dataset`.
pub fn evaluate(
    head: &SsvpHead,
    source: &dyn FeatureSource,
    encoder: &dyn PromptTextEncoder,
    dataset: &Dataset,
    opts: &EvalOptions,
    on_progress: &mut dyn FnMut(EvalProgress),
) -> anyhow::Result<Evaluation> {
    if opts.eval_size == 0 {
        bail!("the evaluation size must be positive");
    }
    let total = dataset.len();
    let mut done = 0;
    let mut categories = BTreeMap::new();
    let mut scores = Vec::with_capacity(total);
    for cat in &dataset.categories {
        let (result, cat_scores) = evaluate_category(
            head,
            source,
            encoder,
            cat,
            opts,
            &mut done,
            total,
            on_progress,
        )?;
        categories.insert(cat.name.clone(), result);
        scores.extend(cat_scores);
    }
    Ok(Evaluation {
        report: EvaluationReport::from_categories(categories),
        scores,
    })
}

/// `category,path,label,score` (the input `ssvp metrics --scores` reads).
pub fn scores_csv(scores: &[ImageScore]) -> String {
    let mut out = String::from("category,path,label,score\n");
    for s in scores {
        out.push_str(&format!(
            "{},{},{},{:e}\n",
            csv_field(&s.category),
            csv_field(&s.path),
            u8::from(s.anomalous),
            s.score
        ));
    }
    out
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Writes a 2-D little-endian float32 `.npy` (format 1.0), creating parent folders.
pub fn write_npy(path: &Path, map: &AnomalyMap) -> anyhow::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    let mut header = format!(
        "{{'descr': '<f4', 'fortran_order': False, 'shape': ({}, {}), }}",
        map.height, map.width
    );
    // Magic (6) + version (2) + length (2) + header + '\n' is a multiple of 64.
    let unpadded = 10 + header.len() + 1;
    header.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    header.push('\n');
    let mut bytes = Vec::with_capacity(10 + header.len() + 4 * map.data.len());
    bytes.extend_from_slice(b"\x93NUMPY\x01\x00");
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    for v in &map.data {
        bytes.extend_from_slice(&v.to_le_bytes());
    }
    let mut f =
        std::fs::File::create(path).with_context(|| format!("writing {}", path.display()))?;
    f.write_all(&bytes)
        .with_context(|| format!("writing {}", path.display()))
}

/// A trained head loaded from a run directory.
pub struct TrainedRun {
    pub run: RunDir,
    pub config: SsvpConfig,
    pub state: RunState,
    pub head: SsvpHead,
    /// The backbones' identity as stored (`backbones.json`).
    pub identity: BackboneIdentity,
}

impl TrainedRun {
    /// Opens `dir` (a run directory of `ssvp train`) and loads the head of its last checkpoint.
    pub fn load(dir: impl AsRef<Path>, device: &Device) -> anyhow::Result<Self> {
        let run = RunDir::open(dir)?;
        let config = run.read_config()?;
        let state = run.read_state()?;
        let identity: BackboneIdentity = run.read_identity()?;
        let head = SsvpHead::new(&config, device)?;
        head.load(run.file(&state.head_file))?;
        Ok(Self {
            run,
            config,
            state,
            head,
            identity,
        })
    }

    /// Refuses backbones whose identity differs from the one the head was trained on, naming
    /// the fields that differ (the same weights under another path or hub id are accepted).
    pub fn check_identity(&self, current: &BackboneIdentity) -> anyhow::Result<()> {
        self.identity.check_matches(current).with_context(|| {
            format!(
                "the checkpoint {} ({}) was trained on features of other backbones than the \
                 requested ones ({} / {}); evaluate with the backbones it was trained with",
                self.run.path().display(),
                self.run.file(IDENTITY_FILE).display(),
                current.clip,
                current.dino
            )
        })
    }
}
