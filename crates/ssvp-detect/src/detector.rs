//! [`Detector`]: the per-image pipeline of ssvp, in one place. `ssvp detect`, `ssvp calibrate`,
//! `ssvp eval` and the server all call it, so a benchmark image gets the same score and map
//! whichever front scored it.
//!
//! ```text
//! decoded image ─(tiles)─► preprocess ─► the towers the scorer reads (stopped at its deepest
//! tap when it reads no global feature) ─► scorer (crate::scorer: head, references,
//! mutual, fused, or any other; don't-care tokens score 0) ─► per unit: score, map on the
//! map grid ─► resize to the tile/image ─(stitch)─► map at the image's resolution (0 in
//! don't-care regions) ─► the scorer's image score ─► decision (crate::decision), calibrated
//! score, p-value ─► regions
//! ```
//!
//! The detector never asks which scorer it holds: what the scorer states in its
//! [`Description`] decides which towers run, the mode it reports and what a calibration holds
//! for. Loaded once, it scores from any number of threads (`&self`).

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use candle_core::Tensor;
use ssvp_eval::maps::regions::regions_above;
use ssvp_eval::postprocess::PostprocessConfig;
use ssvp_features::{Backbones, FeatureSource, ImageFeatures, TowerSet};
use ssvp_image::{ColorScale, RgbImage8};
#[cfg(feature = "head")]
use ssvp_model::SsvpHead;
use ssvp_util::error::message_chain;

use crate::assembly::{ms_since, Assembly};
use crate::calibrate::Calibration;
use crate::decision::{check_threshold, is_anomalous};
use crate::detection::{Detection, MapStats, Timings};
use crate::dont_care::{DontCare, NormRect};
use crate::error::{Error, ErrorKind, Result};
use crate::input::InputImage;
use crate::memory::{set_sizes, Memory};
use crate::scorer::{Description, ScoreContext, Scorer, UnitScore};
#[cfg(feature = "head")]
use crate::scorer::{Fused, HeadScorer};
use crate::settings::{DetectorOptions, DetectorSettings, ModelIdentity};
use crate::tiling::{crop, is_tiled, layout, Tile};

/// The loaded model and how it decides. See the module docs. A clone shares the backbones
/// and the scorer (both read-only), so a detector that decides otherwise (another threshold,
/// other regions) is cheap to make beside the one in use.
#[derive(Clone)]
pub struct Detector {
    /// What scores, and what it said of itself when the detector took it.
    scorer: Option<(Arc<dyn Scorer>, Description)>,
    /// The trained head, kept to fuse it with other memories (evaluation draws a bank per
    /// category).
    #[cfg(feature = "head")]
    head: Option<Arc<HeadScorer>>,
    /// Upsampling and smoothing of every map (the run's or the config's `[postprocess]`).
    postprocess: PostprocessConfig,
    backbones: Arc<Backbones>,
    identity: ModelIdentity,
    options: DetectorOptions,
    calibration: Option<Calibration>,
    /// Regions of every image that are not inspected (never empty: empty is `None`).
    dont_care: Option<DontCare>,
}

impl Detector {
    /// A detector over a head and backbones built in memory (tests, benchmarks, training
    /// loops that evaluate as they go).
    #[cfg(feature = "head")]
    pub fn new(
        head: SsvpHead,
        backbones: Arc<Backbones>,
        options: DetectorOptions,
    ) -> Result<Self> {
        let postprocess = head.config().postprocess.clone();
        let head = Arc::new(HeadScorer::new(head, Arc::clone(&backbones))?);
        let mut detector = Self::without_head(backbones, postprocess, options)?;
        detector.head = Some(Arc::clone(&head));
        detector.with_scorer(Box::new(head))
    }

    /// A detector with no trained head: give it a memory ([`Detector::with_memory`]) or a
    /// scorer ([`Detector::with_scorer`]) before detecting. `postprocess` smooths its maps as
    /// evaluation does.
    pub fn without_head(
        backbones: Arc<Backbones>,
        postprocess: PostprocessConfig,
        options: DetectorOptions,
    ) -> Result<Self> {
        options.validate()?;
        let id = backbones.identity();
        let identity = ModelIdentity {
            checkpoint: String::new(),
            head: String::new(),
            bank: String::new(),
            backbones: id.digest(),
            backbone_names: id.names(),
            made_with: Some(backbones.record().clone()),
        };
        Ok(Self {
            scorer: None,
            #[cfg(feature = "head")]
            head: None,
            postprocess,
            backbones,
            identity,
            options,
            calibration: None,
            dont_care: None,
        })
    }

    /// Scores with `scorer` from now on (the seam a new scorer plugs into). Its description
    /// sets which towers run, the mode and the model's identity; options it cannot work with
    /// are refused.
    pub fn with_scorer(mut self, scorer: Box<dyn Scorer>) -> Result<Self> {
        scorer.check_options(&self.options)?;
        let description = scorer.describe();
        self.identity.head = description.head_digest.clone();
        self.identity.bank = description.bank_digest.clone();
        self.scorer = Some((Arc::from(scorer), description));
        Ok(self)
    }

    /// The same detector deciding at `threshold` (`None`: the calibration's, if any) instead
    /// of the threshold it was given.
    pub fn with_image_threshold(mut self, threshold: Option<f64>) -> Result<Self> {
        if let Some(t) = threshold {
            check_threshold(t)?;
        }
        self.options.image_threshold = threshold;
        Ok(self)
    }

    /// A new detector whose bank is `bank`, scored as this detector scores its own (same taps
    /// and scoring; fused with the head, or correcting it, as before). The calibration is
    /// dropped, as in [`Detector::with_replaced_memory`].
    pub fn with_bank(&self, bank: ssvp_memory::PatchBank) -> Result<Detector> {
        let scorer = self.scorer()?.with_bank(bank).ok_or_else(|| {
            Error::invalid(format!(
                "a {} detector scores against no bank of good references",
                self.mode()
            ))
        })??;
        let mut detector = self.clone();
        detector.calibration = None;
        detector.with_scorer(scorer)
    }

    /// This detector's bank grown by `images` named `names` ([`crate::memory::grow_bank`], in
    /// batches of this detector's batch size). Refused for a scorer that reads no bank.
    pub fn grow_bank(
        &self,
        images: &[RgbImage8],
        names: Vec<String>,
    ) -> Result<ssvp_memory::PatchBank> {
        let bank = self.scorer()?.bank().ok_or_else(|| {
            Error::invalid(format!(
                "a {} detector holds no bank of good references to add images to",
                self.mode()
            ))
        })?;
        crate::memory::grow_bank(
            bank,
            &self.backbones,
            self.options.batch_size,
            images,
            names,
        )
    }

    /// A new detector whose scorer is corrected by `bank`, a feedback bank of parts marked
    /// good ([`crate::memory::feedback_bank`]; the rule is [`crate::scorer::feedback`]'s). For
    /// a scorer with no bank of its own: a scorer with one takes feedback into it
    /// ([`Detector::with_bank`]). The calibration is dropped.
    pub fn with_feedback(&self, bank: ssvp_memory::PatchBank) -> Result<Detector> {
        let inner = self
            .scorer
            .as_ref()
            .map(|(s, _)| Arc::clone(s))
            .ok_or_else(|| Error::invalid("this detector has no scorer to correct"))?;
        let taps = crate::memory::taps_of_bank(&bank, self.backbones.identity())?;
        let names = bank.meta().taps.clone();
        let distances = crate::scorer::References::new(
            bank,
            taps,
            names,
            crate::memory::ReferenceScoring::default(),
        )?;
        let scorer = crate::scorer::Feedback::new(inner, Box::new(distances))?;
        let mut detector = self.clone();
        detector.calibration = None;
        detector.with_scorer(Box::new(scorer))
    }

    /// Adds a training-free memory (with a head: the fused mode). A bank must come from these
    /// backbones; mutual scoring compares whole images and refuses tiling; fusing references
    /// needs a bank of two or more images (their leave-one-out distances set the scale).
    pub fn with_memory(self, memory: Memory) -> Result<Self> {
        let scorer = self.scorer_of(memory)?;
        self.with_scorer(scorer)
    }

    /// The scorer of `memory` on these backbones, fused with this detector's head if it has one.
    pub fn scorer_of(&self, memory: Memory) -> Result<Box<dyn Scorer>> {
        let distances = memory.into_scorer(self.backbones.identity())?;
        #[cfg(feature = "head")]
        if let Some(head) = &self.head {
            return Ok(Box::new(Fused::new(Arc::clone(head), distances)?));
        }
        Ok(distances)
    }

    /// A new detector with the memory replaced by `memory` (fused with the head, if this
    /// detector has one), leaving this one as it is: a server keeps serving this detector while
    /// the new one is built, then swaps them. The backbones (shared), the head, the options,
    /// the post-processing, the don't-care regions and the checkpoint's name are kept; the
    /// calibration is not, since it names this model's bank. Re-apply one with
    /// [`Detector::with_calibration`] (a calibration of this detector carries over when the new
    /// scores can only be lower: [`Calibration::carried_to`]).
    pub fn with_replaced_memory(&self, memory: Memory) -> Result<Detector> {
        let scorer = self.scorer_of(memory)?;
        let detector = Self {
            scorer: None,
            #[cfg(feature = "head")]
            head: self.head.clone(),
            postprocess: self.postprocess.clone(),
            backbones: Arc::clone(&self.backbones),
            identity: self.identity.clone(),
            options: self.options.clone(),
            calibration: None,
            dont_care: self.dont_care.clone(),
        };
        detector.with_scorer(scorer)
    }

    /// Ignores `regions` of every image from now on (see [`crate::dont_care`]): their tokens
    /// score 0 before any image score is formed, and the map is 0 there. `None` or empty
    /// regions leave the detector exactly as without them. The regions are not part of the
    /// settings a calibration compares: a calibration made without them (or with others) is
    /// not refused, so calibrate again after changing them.
    pub fn with_dont_care(mut self, regions: Option<DontCare>) -> Self {
        self.dont_care = regions.filter(|r| !r.is_empty());
        self
    }

    /// The don't-care regions in use (`None` when there are none).
    pub fn dont_care(&self) -> Option<&DontCare> {
        self.dont_care.as_ref()
    }

    /// Applies a calibration, refusing one made for another model or other settings.
    pub fn with_calibration(mut self, calibration: Calibration) -> Result<Self> {
        calibration.check_compatible(&self.identity, &self.settings())?;
        self.calibration = Some(calibration);
        Ok(self)
    }

    /// Names the run directory the head came from in the identity (informative only).
    #[cfg(feature = "head")]
    pub(crate) fn set_checkpoint_name(&mut self, name: String) {
        self.identity.checkpoint = name;
    }

    /// The model's identity (recorded in calibrations and reports).
    pub fn identity(&self) -> &ModelIdentity {
        &self.identity
    }

    /// The scorer, or an error for a detector that has none yet.
    pub fn scorer(&self) -> Result<&dyn Scorer> {
        self.scorer
            .as_ref()
            .map(|(s, _)| s.as_ref())
            .ok_or_else(|| {
                Error::invalid("this detector has neither a head nor references nor mutual scoring")
            })
    }

    /// What the scorer said of itself, if there is one.
    pub fn description(&self) -> Option<&Description> {
        self.scorer.as_ref().map(|(_, d)| d)
    }

    /// The scorer's mode: `head`, `references`, `mutual`, `fused`, or a new scorer's own.
    pub fn mode(&self) -> &str {
        self.description().map_or("head", |d| d.mode.as_str())
    }

    /// The settings that change scores and maps.
    pub fn settings(&self) -> DetectorSettings {
        DetectorSettings {
            class_name: self.options.class_name.clone(),
            map_size: self.options.map_size,
            postprocess: self.postprocess.clone(),
            tiling: self.options.tiling,
            memory: self.description().and_then(|d| d.settings.clone()),
        }
    }

    /// Sets the images (or tiles) per backbone pass: a server gathers requests into batches of
    /// its own size. Like `--batch-size`, it changes how images are grouped; an image's score
    /// can then differ in the last float bits (batched matrix products round differently), not
    /// beyond.
    pub fn set_batch_size(&mut self, batch_size: usize) {
        self.options.batch_size = batch_size.max(1);
    }

    /// How the detector runs and decides.
    pub fn options(&self) -> &DetectorOptions {
        &self.options
    }

    /// The calibration in use, if any.
    pub fn calibration(&self) -> Option<&Calibration> {
        self.calibration.as_ref()
    }

    /// The towers the scorer reads, and whether their global features are (without, each
    /// tower stops after its deepest tap).
    pub fn towers(&self) -> TowerSet {
        self.description().map_or(TowerSet::BOTH, |d| d.towers)
    }

    /// The frozen backbones (shared: a feature cache can wrap the same towers).
    pub fn backbones(&self) -> &Arc<Backbones> {
        &self.backbones
    }

    /// The trained head, if any.
    #[cfg(feature = "head")]
    pub fn head(&self) -> Option<&SsvpHead> {
        self.head.as_ref().map(|h| h.head())
    }

    /// Whether a trained head scores (alone or fused).
    pub fn has_head(&self) -> bool {
        self.description().is_some_and(|d| d.stages.head)
    }

    /// Upsampling and smoothing of the maps.
    pub fn postprocess(&self) -> &PostprocessConfig {
        &self.postprocess
    }

    /// The size of a set, when the scorer compares a set's images with each other.
    pub fn set_size(&self) -> Option<usize> {
        self.description().and_then(|d| d.set_size)
    }

    /// How `n` images are cut into scoring calls, in order: batches of the batch size, or for
    /// a scorer of sets, sets of about the set size ([`set_sizes`]), since every image of a
    /// call is then compared with the others.
    pub fn call_sizes(&self, n: usize) -> Vec<usize> {
        match self.set_size() {
            Some(size) => set_sizes(n, size),
            None => {
                let b = self.options.batch_size;
                (0..n).step_by(b).map(|start| b.min(n - start)).collect()
            }
        }
    }

    /// The value range of map PNGs and overlay colours (see [`DetectorOptions::map_scale`]):
    /// the option, else the calibration's display range, else the scorer's own.
    pub fn map_scale(&self) -> ColorScale {
        self.options
            .map_scale
            .or_else(|| self.calibration.as_ref().map(|c| c.display_scale()))
            .or_else(|| self.description().map(|d| d.map_scale))
            .unwrap_or(ColorScale { lo: 0.0, hi: 1.0 })
    }

    /// The raw-score threshold of decisions, if any.
    pub fn image_threshold(&self) -> Option<f64> {
        self.options
            .image_threshold
            .or_else(|| self.calibration.as_ref().map(|c| c.image.threshold))
    }

    /// The map threshold of regions, if any.
    pub fn pixel_threshold(&self) -> Option<f32> {
        self.options
            .pixel_threshold
            .or_else(|| self.calibration.as_ref().map(|c| c.pixel.threshold))
    }

    /// The scorer on backbone features of a batch, each map post-processed onto the
    /// `map_size x map_size` grid. This is the step `ssvp eval` measures. For a scorer of
    /// sets the batch is the set: every image scores the others. The features are of whole
    /// images: the don't-care regions mask their tokens as in [`Detector::detect`] (the maps
    /// here are on the map grid, so the pixel-level zeroing of `detect` is not applied).
    pub fn score_features(
        &self,
        features: &[ImageFeatures],
        class_name: &str,
    ) -> Result<Vec<UnitScore>> {
        if features.is_empty() {
            return Ok(Vec::new());
        }
        self.score_features_with(features, class_name, self.scorer()?)
    }

    /// [`Detector::score_features`] with another scorer than the detector's own (evaluation
    /// draws a bank per category, [`Detector::scorer_of`]).
    pub fn score_features_with(
        &self,
        features: &[ImageFeatures],
        class_name: &str,
        scorer: &dyn Scorer,
    ) -> Result<Vec<UnitScore>> {
        let units = vec![NormRect::WHOLE; features.len()];
        Ok(self
            .score_features_timed(features, &units, class_name, scorer)?
            .0)
    }

    /// [`Detector::score_features_with`] with the time of the head, the memory and the
    /// post-processing; `units[i]` is where the `i`-th features lie in their image.
    fn score_features_timed(
        &self,
        features: &[ImageFeatures],
        units: &[NormRect],
        class_name: &str,
        scorer: &dyn Scorer,
    ) -> Result<(Vec<UnitScore>, f64, f64, f64)> {
        if features.is_empty() {
            return Ok((Vec::new(), 0.0, 0.0, 0.0));
        }
        let mut ctx = ScoreContext::new(class_name, self.options.map_size, &self.postprocess);
        if let Some(regions) = &self.dont_care {
            ctx = ctx.with_dont_care(regions, units);
        }
        let units = scorer.score(features, &ctx)?;
        if units.len() != features.len() {
            return Err(Error::new(
                ErrorKind::Model,
                format!(
                    "the scorer gave {} results for {} images",
                    units.len(),
                    features.len()
                ),
            ));
        }
        let (head_ms, memory_ms, post_ms) = ctx.times();
        Ok((units, head_ms, memory_ms, post_ms))
    }

    /// Detects with the configured class name.
    pub fn detect(&self, images: &[InputImage]) -> Result<Vec<Detection>> {
        let class = self.options.class_name.clone();
        self.detect_as(images, &class)
    }

    /// Detects with another class name (refused when calibrated: a calibration holds for the
    /// class it was made with).
    pub fn detect_as(&self, images: &[InputImage], class_name: &str) -> Result<Vec<Detection>> {
        let prepared = self.prepare(Cow::Borrowed(images));
        self.detect_prepared(&prepared, class_name)
    }

    /// Cuts images into the units the backbones see (the whole image, or its tiles) and
    /// preprocesses the whole images: the part of [`Detector::detect`] that a batch run does on
    /// its decoding thread, so that it overlaps the backbones' work on the previous batch.
    /// Tiles are cut and preprocessed when they are scored, so that a huge image never holds
    /// the inputs of all its tiles at once; so is a chunk whose preprocessing fails here, so
    /// that its error is reported by [`Detector::detect_prepared`].
    pub fn prepare<'a>(&self, images: Cow<'a, [InputImage]>) -> PreparedBatch<'a> {
        let mut units: Vec<(usize, Option<Tile>)> = Vec::new();
        for (i, input) in images.iter().enumerate() {
            let (w, h) = (input.image.width, input.image.height);
            match &self.options.tiling {
                Some(t) if is_tiled(w, h, Some(t)) => {
                    units.extend(layout(w, h, t).into_iter().map(|tile| (i, Some(tile))));
                }
                _ => units.push((i, None)),
            }
        }
        let mut pixels = Vec::new();
        for chunk in units.chunks(self.options.batch_size) {
            pixels.push(if chunk.iter().all(|(_, tile)| tile.is_none()) {
                let refs: Vec<&RgbImage8> = chunk.iter().map(|(i, _)| &images[*i].image).collect();
                self.preprocess(&refs).ok()
            } else {
                None
            });
        }
        PreparedBatch {
            images,
            units,
            pixels,
        }
    }

    /// The inputs of the towers the scorers read, for a chunk, and the time it took.
    fn preprocess(&self, images: &[&RgbImage8]) -> Result<Preprocessed> {
        let started = Instant::now();
        let (clip, dino) = self.backbones.preprocess_towers(images, self.towers())?;
        Ok(Preprocessed {
            clip,
            dino,
            ms: ms_since(started),
        })
    }

    /// Scores a batch made by [`Detector::prepare`].
    pub fn detect_prepared(
        &self,
        batch: &PreparedBatch<'_>,
        class_name: &str,
    ) -> Result<Vec<Detection>> {
        if class_name.trim().is_empty() {
            return Err(Error::invalid("the class name must not be empty"));
        }
        if let Some(c) = &self.calibration {
            if c.settings.class_name != class_name {
                return Err(Error::new(
                    ErrorKind::Mismatch,
                    format!(
                        "the calibration was made for class `{}`, not `{class_name}`",
                        c.settings.class_name
                    ),
                ));
            }
        }
        let scorer = self.scorer()?;
        let images = &batch.images;
        let mut per_image: Vec<Assembly> = images
            .iter()
            .map(|input| Assembly::new(input, self.options.tiling.as_ref()))
            .collect();
        // A scorer that compares a set's images needs the features of the whole set before
        // any image can be scored.
        let whole_set = self.set_size().is_some();
        let mut held: Vec<(usize, NormRect, ImageFeatures, Timings)> = Vec::new();
        for (chunk, ready) in batch
            .units
            .chunks(self.options.batch_size)
            .zip(&batch.pixels)
        {
            let crops: Vec<Option<RgbImage8>> = chunk
                .iter()
                .map(|(i, tile)| tile.map(|t| crop(&images[*i].image, &t)))
                .collect();
            let rects: Vec<NormRect> = chunk
                .iter()
                .map(|(i, tile)| {
                    tile.map_or(NormRect::WHOLE, |t| {
                        NormRect::of_tile(&t, images[*i].image.width, images[*i].image.height)
                    })
                })
                .collect();
            let pixels: Vec<&RgbImage8> = chunk
                .iter()
                .zip(&crops)
                .map(|((i, _), c)| c.as_ref().unwrap_or(&images[*i].image))
                .collect();
            let lazy;
            let pre = match ready {
                Some(p) => p,
                None => {
                    lazy = self.preprocess(&pixels)?;
                    &lazy
                }
            };
            let started = Instant::now();
            let (features, towers) = self.backbones.features_of_towers_timed(
                pre.clip.as_ref(),
                pre.dino.as_ref(),
                self.towers().globals,
            )?;
            let backbones_ms = ms_since(started);
            let n = chunk.len() as f64;
            let share = Timings {
                preprocess_ms: pre.ms / n,
                backbones_ms: backbones_ms / n,
                clip_ms: towers.clip_ms / n,
                dino_ms: towers.dino_ms / n,
                ..Timings::default()
            };
            if whole_set {
                held.extend(
                    chunk
                        .iter()
                        .zip(&rects)
                        .zip(features)
                        .map(|(((i, _), rect), f)| (*i, *rect, f, share)),
                );
                continue;
            }
            let (scores, head_ms, memory_ms, post_ms) =
                self.score_features_timed(&features, &rects, class_name, scorer)?;
            let share = Timings {
                head_ms: head_ms / n,
                memory_ms: memory_ms / n,
                postprocess_ms: post_ms / n,
                ..share
            };
            for (((i, tile), unit_pixels), score) in chunk.iter().zip(&pixels).zip(scores) {
                per_image[*i].add(tile.as_ref(), unit_pixels, score, &share)?;
            }
        }
        if whole_set {
            let idx: Vec<usize> = held.iter().map(|(i, ..)| *i).collect();
            let rects: Vec<NormRect> = held.iter().map(|(_, r, ..)| *r).collect();
            let (features, shares): (Vec<ImageFeatures>, Vec<Timings>) =
                held.into_iter().map(|(_, _, f, t)| (f, t)).unzip();
            let (scores, head_ms, memory_ms, post_ms) =
                self.score_features_timed(&features, &rects, class_name, scorer)?;
            let n = features.len().max(1) as f64;
            for ((i, score), share) in idx.into_iter().zip(scores).zip(shares) {
                let share = Timings {
                    head_ms: head_ms / n,
                    memory_ms: memory_ms / n,
                    postprocess_ms: post_ms / n,
                    ..share
                };
                per_image[i].add(None, &images[i].image, score, &share)?;
            }
        }
        per_image
            .into_iter()
            .zip(images.iter())
            .map(|(assembly, input)| self.finish(assembly, input, class_name, scorer))
            .collect()
    }

    /// The calibration's 0-1 score of a raw `score` for the decision at `threshold`.
    fn calibrated_score(&self, score: f64, threshold: Option<f64>) -> Option<f64> {
        self.calibration
            .as_ref()
            .zip(threshold)
            .map(|(c, t)| c.calibrated_score(score, t))
    }

    /// Decides `detection` again at another raw-score threshold (a request's own threshold in
    /// the server): `threshold`, `anomalous` and `calibrated_score` change by the same rules
    /// as at detection time; the scores, map and regions do not.
    pub fn decide_at(&self, detection: &mut Detection, threshold: f64) -> Result<()> {
        check_threshold(threshold)?;
        detection.threshold = Some(threshold);
        detection.anomalous = Some(is_anomalous(detection.score, threshold));
        detection.calibrated_score = self.calibrated_score(detection.score, Some(threshold));
        Ok(())
    }

    /// Turns the assembled map and scores of one image into its [`Detection`].
    fn finish(
        &self,
        assembly: Assembly,
        input: &InputImage,
        class_name: &str,
        scorer: &dyn Scorer,
    ) -> Result<Detection> {
        let mut timings = assembly.timings;
        timings.decode_ms = input.decode_ms;
        let started = Instant::now();
        let assembled = assembly.finish()?;
        let (mut map, maxima) = (assembled.map, assembled.maxima);
        // The scorer zeroed the don't-care tokens; smoothing and upsampling spread their
        // neighbours' values back in, so the regions are zeroed again at the image's pixels.
        if let Some(regions) = &self.dont_care {
            regions.zero_map(&mut map);
        }
        timings.postprocess_ms += ms_since(started);
        let scores = scorer.image_scores(&maxima);
        let score = scores.score;
        let threshold = self.image_threshold();
        let calibration = self.calibration.as_ref();
        let started = Instant::now();
        let pixel_threshold = self.pixel_threshold();
        let regions = pixel_threshold
            .map(|t| regions_above(&map, t, self.options.min_region_area).regions)
            .unwrap_or_default();
        timings.regions_ms = ms_since(started);
        Ok(Detection {
            width: map.width,
            height: map.height,
            class_name: class_name.to_string(),
            mode: self.mode().to_string(),
            score,
            score_head: scores.head,
            score_global: maxima.head.map(|h| h.global),
            score_local: maxima.head.map(|h| h.local),
            score_distance: maxima.distance,
            calibrated_score: self.calibrated_score(score, threshold),
            p_value: calibration.map(|c| c.p_value(score)),
            anomalous: threshold.map(|t| is_anomalous(score, t)),
            threshold,
            pixel_threshold,
            regions,
            map_stats: MapStats::of(&map.data),
            tiles: maxima.units,
            timings,
            map,
        })
    }
}

/// Images ready for the backbones: see [`Detector::prepare`].
pub struct PreparedBatch<'a> {
    images: Cow<'a, [InputImage]>,
    /// `(image index, tile)` in scoring order; `None` = the whole image.
    units: Vec<(usize, Option<Tile>)>,
    /// Per chunk of `batch_size` units: the towers' inputs when already preprocessed.
    pixels: Vec<Option<Preprocessed>>,
}

impl PreparedBatch<'_> {
    /// The images of the batch, in order.
    pub fn images(&self) -> &[InputImage] {
        &self.images
    }

    /// The images, owned.
    pub fn into_images(self) -> Vec<InputImage> {
        self.images.into_owned()
    }
}

/// The towers' inputs of one chunk (`None`: a tower the scorer does not read).
struct Preprocessed {
    clip: Option<Tensor>,
    dino: Option<Tensor>,
    ms: f64,
}

/// Features of image files through any source (a cache, live backbones): what evaluation scores.
pub fn features_of_files(
    source: &dyn FeatureSource,
    paths: &[PathBuf],
) -> Result<Vec<ImageFeatures>> {
    source.features_batch(paths).map_err(|e| match &e {
        // A file that fails to read or decode is the input's fault, not the model's.
        ssvp_features::Error::Image { .. } => {
            Error::new(ErrorKind::InvalidInput, message_chain(&e))
        }
        _ => Error::from(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The server shares one detector between request threads.
    #[test]
    fn a_detector_can_be_shared_between_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<Detector>();
    }
}
