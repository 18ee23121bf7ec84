//! [`Feedback`]: a scorer with no bank of its own (the trained head) corrected by a bank of
//! parts an operator marked good. Every score and map value of the inner scorer is multiplied
//! by `min(1, d / s)`, where `d` is the part's distance to the feedback bank (per token for the
//! map, AnomalyDINO's top-fraction mean for the score) and `s` the bank's normal scale:
//!
//! - a part marked good is at distance ~0 from the bank, so it scores ~0;
//! - a part unlike every marked part (`d >= s`) keeps its score exactly;
//! - the factor is at most 1 and only falls as the bank grows (a minimum over a superset), so
//!   no score ever rises: a conformal threshold of the inner scorer stays a valid bound
//!   (conservative), which is what lets a station carry it.
//!
//! The scale `s` is fixed when the bank is made from its first part
//! ([`crate::memory::feedback_bank`]) and kept as the bank grows, so the factor never rises.

use std::sync::Arc;

use ssvp_features::{ImageFeatures, TowerSet};
use ssvp_memory::PatchBank;

use super::{Description, ImageScores, ScoreContext, Scorer, Stages, UnitMaxima, UnitScore};
use crate::error::{Error, ErrorKind, Result};
use crate::settings::DetectorOptions;

/// An inner scorer scaled down near the parts of a feedback bank.
pub struct Feedback {
    inner: Arc<dyn Scorer>,
    /// Distances to the feedback bank (a references scorer over it).
    bank: Box<dyn Scorer>,
}

impl Feedback {
    /// `inner` corrected by `bank`, a scorer of distances to the parts marked good whose bank
    /// carries the normal scale `s`.
    pub fn new(inner: Arc<dyn Scorer>, bank: Box<dyn Scorer>) -> Result<Self> {
        if inner.bank().is_some() {
            return Err(Error::invalid(
                "a scorer with a bank of its own takes feedback into that bank, not into a \
                 second one",
            ));
        }
        match bank.bank().and_then(|b| b.meta().normal_scale) {
            Some(s) if s > 0.0 => Ok(Self { inner, bank }),
            _ => Err(Error::new(
                ErrorKind::NotEnoughData,
                "a feedback bank needs its normal scale (made by memory::feedback_bank)",
            )),
        }
    }

    fn scale(&self) -> f32 {
        self.bank
            .bank()
            .and_then(|b| b.meta().normal_scale)
            .unwrap_or(f32::INFINITY)
    }
}

/// The factor a distance `d` scales a score by: `min(1, d / s)`.
pub fn feedback_factor(d: f32, scale: f32) -> f32 {
    (d / scale).clamp(0.0, 1.0)
}

impl Scorer for Feedback {
    fn describe(&self) -> Description {
        let inner = self.inner.describe();
        let bank = self.bank.describe();
        Description {
            mode: format!("{}+feedback", inner.mode),
            towers: TowerSet {
                clip: inner.towers.clip || bank.towers.clip,
                dino: inner.towers.dino || bank.towers.dino,
                globals: inner.towers.globals || bank.towers.globals,
            },
            settings: inner.settings,
            set_size: inner.set_size,
            map_scale: inner.map_scale,
            stages: Stages {
                head: inner.stages.head,
                memory: true,
            },
            head_digest: inner.head_digest,
            bank_digest: bank.bank_digest,
        }
    }

    fn score(&self, features: &[ImageFeatures], ctx: &ScoreContext<'_>) -> Result<Vec<UnitScore>> {
        let inner = self.inner.score(features, ctx)?;
        let distances = self.bank.score(features, ctx)?;
        let scale = self.scale();
        Ok(inner
            .into_iter()
            .zip(distances)
            .map(|(u, d)| {
                let mut map = u.map;
                for (m, v) in map.data.iter_mut().zip(&d.map.data) {
                    *m *= feedback_factor(*v, scale);
                }
                UnitScore {
                    score: u.score * f64::from(feedback_factor(d.score as f32, scale)),
                    head: u.head,
                    distance: Some(d.score),
                    normal_scale: u.normal_scale,
                    map,
                }
            })
            .collect())
    }

    /// The highest unit score decides (each unit already scaled by its own distance).
    fn image_scores(&self, units: &UnitMaxima) -> ImageScores {
        ImageScores {
            score: units.score,
            head: self.inner.image_scores(units).head,
        }
    }

    fn check_options(&self, options: &DetectorOptions) -> Result<()> {
        self.inner.check_options(options)?;
        self.bank.check_options(options)
    }

    fn bank(&self) -> Option<&PatchBank> {
        self.bank.bank()
    }

    fn with_bank(&self, bank: PatchBank) -> Option<Result<Box<dyn Scorer>>> {
        let distances = match self.bank.with_bank(bank)? {
            Ok(d) => d,
            Err(e) => return Some(Err(e)),
        };
        Some(Feedback::new(Arc::clone(&self.inner), distances).map(|f| Box::new(f) as _))
    }
}
