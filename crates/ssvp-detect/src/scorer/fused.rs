//! [`Fused`]: the trained head and a training-free scorer together. Both maps (each already on
//! the map grid) and both scores are averaged after the distance is brought onto the head's
//! probability scale by the normal scale of its scorer ([`normalise_distance`]). The towers run
//! once: the taps the other scorer reads are tensors the head reads too. Don't-care regions
//! are masked by each part (both score 0 there before their maps are averaged).

use std::sync::Arc;

use ssvp_features::{ImageFeatures, TowerSet};
use ssvp_image::ColorScale;
use ssvp_memory::PatchBank;

use super::{
    Description, HeadScorer, ImageScores, ScoreContext, Scorer, Stages, UnitMaxima, UnitScore,
};
use crate::error::{Error, ErrorKind, Result};
use crate::settings::DetectorOptions;

/// The head fused with a scorer of distances.
pub struct Fused {
    head: Arc<HeadScorer>,
    distances: Box<dyn Scorer>,
}

impl Fused {
    /// The head fused with `distances`, a scorer whose units carry a normal scale. A bank
    /// of one image has none (its leave-one-out distances set it), so fusing it is refused.
    pub fn new(head: Arc<HeadScorer>, distances: Box<dyn Scorer>) -> Result<Self> {
        if distances
            .bank()
            .is_some_and(|b| b.meta().normal_scale.is_none())
        {
            return Err(Error::new(
                ErrorKind::NotEnoughData,
                "fusing the head with references needs at least 2 reference images (their \
                 leave-one-out distances set the scale the two are averaged on)",
            ));
        }
        Ok(Self { head, distances })
    }
}

/// Maps a distance `d` onto [0, 1) by the normal scale `s`: `u / (1 + u)` with `u = d / s`,
/// so a distance normal patches reach (`d = s`) lands at 0.5, where the head's probability
/// turns anomalous. Fused maps and scores average this with the head's.
pub fn normalise_distance(d: f32, scale: f32) -> f32 {
    let u = (d / scale).max(0.0);
    u / (1.0 + u)
}

impl Scorer for Fused {
    fn describe(&self) -> Description {
        let head = self.head.describe();
        let other = self.distances.describe();
        Description {
            mode: "fused".into(),
            towers: TowerSet {
                clip: head.towers.clip || other.towers.clip,
                dino: head.towers.dino || other.towers.dino,
                globals: head.towers.globals || other.towers.globals,
            },
            settings: other.settings,
            set_size: other.set_size,
            map_scale: ColorScale { lo: 0.0, hi: 1.0 },
            stages: Stages {
                head: true,
                memory: true,
            },
            head_digest: head.head_digest,
            bank_digest: other.bank_digest,
        }
    }

    fn score(&self, features: &[ImageFeatures], ctx: &ScoreContext<'_>) -> Result<Vec<UnitScore>> {
        let heads = self.head.score(features, ctx)?;
        let distances = self.distances.score(features, ctx)?;
        heads
            .into_iter()
            .zip(distances)
            .map(|(h, d)| {
                let scale = d.normal_scale.filter(|s| *s > 0.0).ok_or_else(|| {
                    Error::new(
                        ErrorKind::NotEnoughData,
                        "no normal distance scale to fuse with (a bank of one image?)",
                    )
                })?;
                let mut map = h.map;
                for (m, v) in map.data.iter_mut().zip(&d.map.data) {
                    *m = 0.5 * (*m + normalise_distance(*v, scale));
                }
                let fused_distance = f64::from(normalise_distance(d.score as f32, scale));
                Ok(UnitScore {
                    score: 0.5 * (h.score + fused_distance),
                    head: h.head,
                    distance: Some(d.score),
                    normal_scale: None,
                    map,
                })
            })
            .collect()
    }

    /// The highest unit score decides; the head's `S_final` is reported by its own rule.
    fn image_scores(&self, units: &UnitMaxima) -> ImageScores {
        ImageScores {
            score: units.score,
            head: self.head.image_head_score(units),
        }
    }

    fn check_options(&self, options: &DetectorOptions) -> Result<()> {
        self.distances.check_options(options)
    }

    fn bank(&self) -> Option<&PatchBank> {
        self.distances.bank()
    }

    fn with_bank(&self, bank: PatchBank) -> Option<Result<Box<dyn Scorer>>> {
        let distances = match self.distances.with_bank(bank)? {
            Ok(d) => d,
            Err(e) => return Some(Err(e)),
        };
        Some(Fused::new(Arc::clone(&self.head), distances).map(|f| Box::new(f) as Box<dyn Scorer>))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalised_distances_meet_the_head_at_one_half() {
        assert_eq!(normalise_distance(0.2, 0.2), 0.5);
        assert_eq!(normalise_distance(0.0, 0.2), 0.0);
        assert!(normalise_distance(2.0, 0.2) > 0.9);
    }
}
