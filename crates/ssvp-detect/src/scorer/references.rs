//! [`References`]: few-shot scoring against a bank of good parts (AnomalyDINO). A patch scores
//! its cosine distance to the nearest bank vector (0 where background masking or a don't-care
//! region says so); the image the mean of its top 1 % patch distances. It reads only the bank's
//! taps, so a DINOv3-only bank never runs CLIP and each tower stops after its deepest tap.

use serde::{Deserialize, Serialize};
use ssvp_features::{tapped, towers_of, ImageFeatures, Tap};
use ssvp_image::ColorScale;
use ssvp_memory::foreground::foreground_mask;
use ssvp_memory::score::top_fraction_mean;
use ssvp_memory::{ForegroundOptions, PatchBank};

use super::{Description, ScoreContext, Scorer, Stage, Stages, UnitScore};
use crate::error::{Error, Result};
use crate::settings::{hex_digest, ScorerSettings};

/// AnomalyDINO's image score: the mean of the top 1 % of the patch distances.
pub const DEFAULT_TOP_FRACTION: f64 = 0.01;

/// How a test image's distances to the references become its scores.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReferenceScoring {
    /// Share of the top patch distances averaged into the image score (AnomalyDINO: 0.01).
    pub top_fraction: f64,
    /// Zero the distances of background patches (AnomalyDINO's masking of objects), found by
    /// the PCA of the first tap's tokens.
    pub foreground: Option<ForegroundOptions>,
}

impl Default for ReferenceScoring {
    fn default() -> Self {
        Self {
            top_fraction: DEFAULT_TOP_FRACTION,
            foreground: None,
        }
    }
}

impl ReferenceScoring {
    /// Checks the values, naming the wrong one.
    pub fn validate(&self) -> Result<()> {
        if !(self.top_fraction > 0.0 && self.top_fraction <= 1.0) {
            return Err(Error::invalid(format!(
                "the top fraction of the image score must be in (0, 1], not {}",
                self.top_fraction
            )));
        }
        if let Some(f) = &self.foreground {
            if !f.threshold.is_finite() {
                return Err(Error::invalid("the foreground threshold must be a number"));
            }
        }
        Ok(())
    }
}

/// Distances to a bank of good references.
pub struct References {
    bank: PatchBank,
    taps: Vec<Tap>,
    tap_names: Vec<String>,
    scoring: ReferenceScoring,
    digest: String,
}

/// What a calibration records of a references scorer (the bank itself is in the identity).
#[derive(Serialize)]
#[serde(tag = "mode", rename = "references")]
struct Settings<'a> {
    taps: &'a [String],
    scoring: &'a ReferenceScoring,
}

impl References {
    /// A scorer over `bank`, read at `taps` (named `tap_names` on these backbones, as the bank
    /// records them).
    pub fn new(
        bank: PatchBank,
        taps: Vec<Tap>,
        tap_names: Vec<String>,
        scoring: ReferenceScoring,
    ) -> Result<Self> {
        scoring.validate()?;
        let digest = bank_digest(&bank)?;
        Ok(Self {
            bank,
            taps,
            tap_names,
            scoring,
            digest,
        })
    }

    /// The bank's taps on these backbones.
    pub fn taps(&self) -> &[Tap] {
        &self.taps
    }

    /// How distances become scores.
    pub fn scoring(&self) -> &ReferenceScoring {
        &self.scoring
    }
}

impl Scorer for References {
    fn describe(&self) -> Description {
        Description {
            mode: "references".into(),
            towers: towers_of(&self.taps, false),
            settings: Some(ScorerSettings::of(&Settings {
                taps: &self.tap_names,
                scoring: &self.scoring,
            })),
            set_size: None,
            // Cosine distances of good patches stay well under 0.5.
            map_scale: ColorScale { lo: 0.0, hi: 0.5 },
            stages: Stages {
                head: false,
                memory: true,
            },
            head_digest: String::new(),
            bank_digest: self.digest.clone(),
        }
    }

    fn score(&self, features: &[ImageFeatures], ctx: &ScoreContext<'_>) -> Result<Vec<UnitScore>> {
        let grids = ctx.timed(Stage::Memory, || -> Result<Vec<(f32, Vec<f32>)>> {
            let mut out = Vec::with_capacity(features.len());
            for (unit, f) in features.iter().enumerate() {
                let mut grid = self.bank.distances(&tapped(f, &self.taps)?)?;
                if let Some(opts) = &self.scoring.foreground {
                    // Background patches score 0 and stay in the grid (AnomalyDINO).
                    let fg = foreground_mask(self.taps[0].of(f)?, f.grid, opts)?;
                    grid.iter_mut()
                        .zip(fg)
                        .filter(|(_, keep)| !keep)
                        .for_each(|(d, _)| *d = 0.0);
                }
                // Don't-care patches score 0 before the image score, like background ones.
                ctx.mask_tokens(unit, f.grid, &mut grid);
                out.push((top_fraction_mean(&grid, self.scoring.top_fraction), grid));
            }
            Ok(out)
        })?;
        let normal_scale = self.bank.meta().normal_scale;
        features
            .iter()
            .zip(grids)
            .map(|(f, (score, grid))| {
                let score = f64::from(score);
                Ok(UnitScore {
                    score,
                    head: None,
                    distance: Some(score),
                    normal_scale,
                    map: ctx.map(&grid, f.grid)?,
                })
            })
            .collect()
    }

    fn bank(&self) -> Option<&PatchBank> {
        Some(&self.bank)
    }

    fn with_bank(&self, bank: PatchBank) -> Option<Result<Box<dyn Scorer>>> {
        if bank.meta().taps != self.tap_names {
            return Some(Err(crate::error::Error::invalid(format!(
                "the new bank was read at {:?}, this scorer at {:?}",
                bank.meta().taps,
                self.tap_names
            ))));
        }
        Some(
            References::new(
                bank,
                self.taps.clone(),
                self.tap_names.clone(),
                self.scoring.clone(),
            )
            .map(|r| Box::new(r) as Box<dyn Scorer>),
        )
    }
}

/// SHA-256 over a bank's metadata (JSON) and its vectors (f32 little-endian, tap by tap).
fn bank_digest(bank: &PatchBank) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(
        serde_json::to_string(bank.meta())
            .expect("bank metadata serialises")
            .as_bytes(),
    );
    for keys in bank.keys() {
        for v in keys.flatten_all()?.to_vec1::<f32>()? {
            hasher.update(v.to_le_bytes());
        }
    }
    Ok(hex_digest(hasher))
}
