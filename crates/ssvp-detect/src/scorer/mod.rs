//! The scorers: what turns the backbone features of a batch of images (or tiles) into, per
//! unit, a score, a map on the detector's map grid and the score's named parts. The
//! [`Detector`](crate::Detector) is the pipeline around one [`Scorer`]; it never asks which
//! scorer it holds.
//!
//! | scorer | file | reads | score |
//! |---|---|---|---|
//! | [`HeadScorer`] | `head.rs` | both towers whole (patches and global features) | the SSVP head's `S_final` |
//! | [`References`] | `references.rs` | the bank's taps, each tower stopped at its deepest | AnomalyDINO's top-1 % mean distance to good patches |
//! | [`Mutual`] | `mutual.rs` | the selected taps (+ globals for RsCIN) | MuSc: the images of a set score each other |
//! | [`Fused`] | `fused.rs` | the head's and the other scorer's | the mean of the two on a common scale |
//! | [`Feedback`] | `feedback.rs` | the inner scorer's and a bank of parts marked good | the inner score times `min(1, distance / scale)` |
//!
//! The head and fused scorers need the `head` feature (on by default); the training-free ones
//! build without the head crate.
//!
//! Adding a scorer is one new file here with a type that implements [`Scorer`], plus its
//! `pub mod` line below; a detector takes it with [`Detector::with_scorer`]
//! (docs/architecture.md lists the steps). What the scorer states in [`Scorer::describe`]
//! drives the rest: which towers are loaded and run and how far (the early stop), the
//! `mode` of every detection, what a calibration is valid for, and the model's identity.
//!
//! [`Detector::with_scorer`]: crate::Detector::with_scorer

pub mod feedback;
#[cfg(feature = "head")]
pub mod fused;
#[cfg(feature = "head")]
pub mod head;
pub mod mutual;
pub mod references;

use std::cell::Cell;
use std::time::Instant;

use ssvp_eval::postprocess::{postprocess_map, AnomalyMap, PostprocessConfig};
use ssvp_features::{ImageFeatures, TowerSet};
use ssvp_image::ColorScale;
use ssvp_memory::PatchBank;

pub use feedback::Feedback;
#[cfg(feature = "head")]
pub use fused::Fused;
#[cfg(feature = "head")]
pub use head::HeadScorer;
pub use mutual::Mutual;
pub use references::References;

use crate::dont_care::{DontCare, NormRect};
use crate::error::Result;
use crate::settings::{DetectorOptions, ScorerSettings};

/// Turns image features into scores and maps. Implementations are read-only after
/// construction: the server scores from several threads at once.
pub trait Scorer: Send + Sync {
    /// What the scorer is and reads; asked once, when a detector takes it.
    fn describe(&self) -> Description;

    /// Scores a batch. Every unit's map comes from [`ScoreContext::map`] (the map grid, smoothed
    /// as in evaluation); the don't-care tokens of unit `i` (the `i`-th features) score 0 before
    /// the unit's score and map are formed ([`ScoreContext::mask_tokens`]). A scorer whose
    /// [`Description::set_size`] is set gets a whole set at once and may compare its images
    /// with each other.
    fn score(&self, features: &[ImageFeatures], ctx: &ScoreContext<'_>) -> Result<Vec<UnitScore>>;

    /// An image's scores from those of its units: one unit for an image scored whole, the
    /// maxima over its tiles otherwise. By default the image takes its highest unit score.
    fn image_scores(&self, units: &UnitMaxima) -> ImageScores {
        ImageScores {
            score: units.score,
            head: None,
        }
    }

    /// Refuses detector options the scorer cannot work with (e.g. tiling for a scorer that
    /// compares whole images).
    fn check_options(&self, options: &DetectorOptions) -> Result<()> {
        let _ = options;
        Ok(())
    }

    /// The bank of good references the scores are distances to, if any (calibration refuses
    /// its references as normal images).
    fn bank(&self) -> Option<&PatchBank> {
        None
    }

    /// The same scorer over another bank (a station's bank grown by parts marked good):
    /// `None` for a scorer that reads no bank.
    fn with_bank(&self, bank: PatchBank) -> Option<Result<Box<dyn Scorer>>> {
        let _ = bank;
        None
    }
}

/// A shared scorer scores as itself (the head is shared between its own detector and the fused
/// scorers built on it).
impl<S: Scorer + ?Sized> Scorer for std::sync::Arc<S> {
    fn describe(&self) -> Description {
        (**self).describe()
    }
    fn score(&self, features: &[ImageFeatures], ctx: &ScoreContext<'_>) -> Result<Vec<UnitScore>> {
        (**self).score(features, ctx)
    }
    fn image_scores(&self, units: &UnitMaxima) -> ImageScores {
        (**self).image_scores(units)
    }
    fn check_options(&self, options: &DetectorOptions) -> Result<()> {
        (**self).check_options(options)
    }
    fn bank(&self) -> Option<&PatchBank> {
        (**self).bank()
    }
    fn with_bank(&self, bank: PatchBank) -> Option<Result<Box<dyn Scorer>>> {
        (**self).with_bank(bank)
    }
}

/// What a scorer is and reads.
#[derive(Clone, Debug, PartialEq)]
pub struct Description {
    /// The `mode` every detection reports (`head`, `references`, `mutual`, `fused`, ...).
    pub mode: String,
    /// The towers it reads, and whether it reads their global features (without, each tower
    /// stops after its deepest tap).
    pub towers: TowerSet,
    /// Its settings, for calibrations (`None`: nothing besides the weights changes its scores).
    pub settings: Option<ScorerSettings>,
    /// Images scored together when it compares a set's images with each other.
    pub set_size: Option<usize>,
    /// The value range of its maps when no calibration gives one.
    pub map_scale: ColorScale,
    /// The stages it runs, for timings and benchmarks.
    pub stages: Stages,
    /// SHA-256 of the trained head it runs, empty without one.
    pub head_digest: String,
    /// SHA-256 of the reference bank it reads, empty without one.
    pub bank_digest: String,
}

/// Which timed stages a scorer runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stages {
    /// The trained head (`Timings::head_ms`).
    pub head: bool,
    /// A training-free memory: references or mutual scoring (`Timings::memory_ms`).
    pub memory: bool,
}

/// The head's scores of one image or tile.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HeadParts {
    /// `S_final`.
    pub score: f64,
    /// `S_global`.
    pub global: f64,
    /// `S_local`.
    pub local: f64,
}

/// What a scorer gives for one image or tile before it is brought to the image's size.
#[derive(Clone, Debug)]
pub struct UnitScore {
    /// The scorer's score (see `Detection::score`).
    pub score: f64,
    /// The head's scores, when a head scored.
    pub head: Option<HeadParts>,
    /// The training-free image score, when references or mutual scoring scored.
    pub distance: Option<f64>,
    /// The distance normal patches reach, which fusion divides distances by (`None` when the
    /// scorer has none, e.g. a bank of one image).
    pub normal_scale: Option<f32>,
    /// The map upsampled to `map_size x map_size` and smoothed, exactly as evaluated.
    pub map: AnomalyMap,
}

/// The maxima of an image's unit scores (its own scores when it was scored whole).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct UnitMaxima {
    /// Units: 1 for an image scored whole, its tile count otherwise.
    pub units: usize,
    /// The highest unit score.
    pub score: f64,
    /// The highest of each head part.
    pub head: Option<HeadParts>,
    /// The highest training-free score.
    pub distance: Option<f64>,
}

/// An image's scores.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ImageScores {
    /// The score the decision is taken on.
    pub score: f64,
    /// The head's `S_final` of the image, when a head scored.
    pub head: Option<f64>,
}

/// The stage a scorer's work is timed under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// The trained head.
    Head,
    /// A training-free memory.
    Memory,
}

/// What a scorer is given besides the features: the class name, the map grid and its
/// post-processing, the don't-care regions of its units, and clocks for its stages.
pub struct ScoreContext<'a> {
    /// The class name of the prompts.
    pub class_name: &'a str,
    map_size: usize,
    postprocess: &'a PostprocessConfig,
    /// The regions, and where each unit of the call lies in its image.
    dont_care: Option<(&'a DontCare, &'a [NormRect])>,
    head_ms: Cell<f64>,
    memory_ms: Cell<f64>,
    postprocess_ms: Cell<f64>,
}

impl<'a> ScoreContext<'a> {
    /// A context for one scoring call.
    pub fn new(class_name: &'a str, map_size: usize, postprocess: &'a PostprocessConfig) -> Self {
        Self {
            class_name,
            map_size,
            postprocess,
            dont_care: None,
            head_ms: Cell::new(0.0),
            memory_ms: Cell::new(0.0),
            postprocess_ms: Cell::new(0.0),
        }
    }

    /// The context with don't-care `regions`: `units[i]` is where unit `i` of the call (the
    /// `i`-th features) lies in its image. Empty regions are no regions.
    pub fn with_dont_care(mut self, regions: &'a DontCare, units: &'a [NormRect]) -> Self {
        self.dont_care = (!regions.is_empty()).then_some((regions, units));
        self
    }

    /// Which tokens of unit `unit` (of token grid `grid`, row-major) are don't-care (see
    /// [`DontCare::token_mask`]); `None` when none is, so that a unit the regions miss scores
    /// exactly as without them.
    pub fn dont_care(&self, unit: usize, grid: (usize, usize)) -> Option<Vec<bool>> {
        let (regions, units) = self.dont_care?;
        let mask = regions.token_mask(grid, *units.get(unit)?);
        mask.contains(&true).then_some(mask)
    }

    /// Sets the don't-care token scores of unit `unit` to 0 in `values` (its token-grid scores,
    /// row-major): what every scorer does before it forms the unit's score and map. Returns
    /// whether any token was masked (`values` is untouched otherwise).
    pub fn mask_tokens(&self, unit: usize, grid: (usize, usize), values: &mut [f32]) -> bool {
        let Some(mask) = self.dont_care(unit, grid) else {
            return false;
        };
        values
            .iter_mut()
            .zip(mask)
            .filter(|(_, masked)| *masked)
            .for_each(|(v, _)| *v = 0.0);
        true
    }

    /// A token-grid map (`grid.0 * grid.1` values, row-major) upsampled to the map grid and
    /// smoothed exactly as evaluation does.
    pub fn map(&self, values: &[f32], grid: (usize, usize)) -> Result<AnomalyMap> {
        let started = Instant::now();
        let map = postprocess_map(values, grid, self.map_size, self.postprocess)?;
        add_ms(&self.postprocess_ms, started);
        Ok(map)
    }

    /// Runs `work`, counting its time under `stage`.
    pub fn timed<T>(&self, stage: Stage, work: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let out = work();
        add_ms(
            match stage {
                Stage::Head => &self.head_ms,
                Stage::Memory => &self.memory_ms,
            },
            started,
        );
        out
    }

    /// Milliseconds spent so far in the head, the memory and post-processing.
    pub fn times(&self) -> (f64, f64, f64) {
        (
            self.head_ms.get(),
            self.memory_ms.get(),
            self.postprocess_ms.get(),
        )
    }
}

fn add_ms(total: &Cell<f64>, started: Instant) {
    total.set(total.get() + started.elapsed().as_secs_f64() * 1e3);
}
