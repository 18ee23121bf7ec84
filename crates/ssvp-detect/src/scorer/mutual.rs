//! [`Mutual`]: zero-shot scoring of a set of unlabeled images against each other (MuSc). Every
//! patch scores by its distances to the most similar patches of the other images (0 in an
//! image's don't-care regions, which still serve as the others' neighbours); an image scores
//! its highest patch, optionally re-scored by RsCIN over the set's global features.
//! Only RsCIN reads a global feature: without it each tower stops after its deepest tap.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};
use ssvp_features::{towers_of, ImageFeatures, Tap, TapSelection, Tower};
use ssvp_image::ColorScale;
use ssvp_memory::MutualOptions;

use super::{Description, ScoreContext, Scorer, Stage, Stages, UnitScore};
use crate::error::{Error, Result};
use crate::settings::{DetectorOptions, ScorerSettings};

/// Images per mutual-scoring set when none is given: MuSc's cost grows with the square of the
/// set, and 32 images of 37 x 37 patches keep a set's features (4 DINOv3 layers, f32) near
/// 720 MB.
pub const DEFAULT_SET_SIZE: usize = 32;

/// How mutual scoring runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MutualConfig {
    /// The features.
    pub taps: TapSelection,
    /// Degrees and the averaged share of the other images.
    pub options: MutualOptions,
    /// RsCIN window sizes (`None`: raw scores; MuSc uses `[1, 2, 3]` on MVTec and BTAD,
    /// `[1, 8, 9]` on VisA).
    pub rscin: Option<Vec<usize>>,
    /// Images per mutual-scoring set (a batch run cuts its inputs into sets of about this
    /// size, [`set_sizes`]).
    pub set_size: usize,
}

impl Default for MutualConfig {
    fn default() -> Self {
        Self {
            taps: TapSelection::mutual_default(),
            options: MutualOptions::default(),
            rscin: None,
            set_size: DEFAULT_SET_SIZE,
        }
    }
}

impl MutualConfig {
    /// Checks the values, naming the wrong one.
    pub fn validate(&self) -> Result<()> {
        self.options.validate()?;
        let min = self.options.min_images();
        if self.set_size < min {
            return Err(Error::invalid(format!(
                "a mutual-scoring set needs at least {min} images, not {}",
                self.set_size
            )));
        }
        if let Some(w) = &self.rscin {
            if w.is_empty() || w.contains(&0) {
                return Err(Error::invalid(format!(
                    "RsCIN window sizes must be positive, got {w:?}"
                )));
            }
        }
        Ok(())
    }
}

/// Cuts `n` images into sets of at most `set_size`, as equal as possible (sizes differ by at
/// most one), so that no last set is left too small to score.
pub fn set_sizes(n: usize, set_size: usize) -> Vec<usize> {
    if n == 0 {
        return Vec::new();
    }
    let sets = n.div_ceil(set_size.max(1));
    (0..sets)
        .map(|i| n / sets + usize::from(i < n % sets))
        .collect()
}

/// The normal scale of a mutual set: the 99th percentile of all its patch scores (mutual
/// scores are relative to their set anyway).
pub fn set_scale(patch_scores: &[Vec<f32>]) -> f32 {
    let all: Vec<f32> = patch_scores.iter().flatten().copied().collect();
    ssvp_memory::score::quantile(&all, 0.99)
}

/// The images of a set score each other.
pub struct Mutual {
    config: MutualConfig,
    taps: Vec<Tap>,
}

/// What a calibration records of mutual scoring: its whole configuration.
#[derive(Serialize)]
#[serde(tag = "mode", rename = "mutual")]
struct Settings<'a> {
    #[serde(flatten)]
    config: &'a MutualConfig,
}

impl Mutual {
    /// Mutual scoring on backbones that tap `scales` blocks per tower.
    pub fn new(config: MutualConfig, scales: usize) -> Result<Self> {
        config.validate()?;
        let taps = config.taps.resolve(scales)?;
        Ok(Self { config, taps })
    }

    /// The configuration.
    pub fn config(&self) -> &MutualConfig {
        &self.config
    }
}

impl Scorer for Mutual {
    fn describe(&self) -> Description {
        Description {
            mode: "mutual".into(),
            towers: towers_of(&self.taps, self.config.rscin.is_some()),
            settings: Some(ScorerSettings::of(&Settings {
                config: &self.config,
            })),
            set_size: Some(self.config.set_size),
            // Euclidean distances of unit vectors, in [0, 2], good patches near 0.5.
            map_scale: ColorScale { lo: 0.0, hi: 1.0 },
            stages: Stages {
                head: false,
                memory: true,
            },
            head_digest: String::new(),
            bank_digest: String::new(),
        }
    }

    fn score(&self, features: &[ImageFeatures], ctx: &ScoreContext<'_>) -> Result<Vec<UnitScore>> {
        let Some(first) = features.first() else {
            return Ok(Vec::new());
        };
        let grid = first.grid;
        let (scores, patches, scale) = ctx.timed(Stage::Memory, || -> Result<_> {
            let layers: Vec<Vec<Tensor>> = self
                .taps
                .iter()
                .map(|t| features.iter().map(|f| Ok(t.of(f)?.clone())).collect())
                .collect::<Result<_>>()?;
            let mut patches =
                ssvp_memory::mutual::mutual_scores(&layers, grid, &self.config.options)?;
            // The set's normal scale is read before the regions are masked: it is the level
            // the set's patches reach, whatever an image's regions hide.
            let scale = set_scale(&patches);
            for (unit, p) in patches.iter_mut().enumerate() {
                ctx.mask_tokens(unit, grid, p);
            }
            let mut scores: Vec<f64> = patches
                .iter()
                .map(|p| f64::from(p.iter().copied().fold(f32::NEG_INFINITY, f32::max)))
                .collect();
            if let Some(windows) = &self.config.rscin {
                let globals = rscin_globals(features, self.taps[0])?;
                scores = ssvp_memory::mutual::rscin(&scores, &globals, windows)?;
            }
            Ok((scores, patches, scale))
        })?;
        scores
            .into_iter()
            .zip(&patches)
            .map(|(score, grid_map)| {
                Ok(UnitScore {
                    score,
                    head: None,
                    distance: Some(score),
                    normal_scale: Some(scale),
                    map: ctx.map(grid_map, grid)?,
                })
            })
            .collect()
    }

    fn check_options(&self, options: &DetectorOptions) -> Result<()> {
        if options.tiling.is_some() {
            return Err(Error::invalid(
                "mutual scoring compares whole images with each other; it cannot be tiled \
                 (drop --tile)",
            ));
        }
        Ok(())
    }
}

/// RsCIN's global features: MuSc takes DINO's normed CLS as is and CLIP's image embedding
/// L2-normalised; the tower of the first tap decides.
fn rscin_globals(features: &[ImageFeatures], first: Tap) -> Result<Tensor> {
    let rows: Vec<Tensor> = features
        .iter()
        .map(|f| match first.tower {
            Tower::Dino => f.dino_global.clone(),
            Tower::Clip => f.clip_global.clone(),
        })
        .collect();
    let g = Tensor::stack(&rows, 0)?;
    Ok(match first.tower {
        Tower::Dino => g,
        Tower::Clip => ssvp_memory::knn::l2_normalize_rows(&g)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_are_as_equal_as_possible() {
        assert_eq!(set_sizes(0, 32), Vec::<usize>::new());
        assert_eq!(set_sizes(10, 32), vec![10]);
        assert_eq!(set_sizes(33, 32), vec![17, 16]);
        assert_eq!(set_sizes(64, 32), vec![32, 32]);
        assert_eq!(set_sizes(70, 32), vec![24, 23, 23]);
    }
}
