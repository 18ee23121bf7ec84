//! One image's result while its units (the whole image, or its tiles) come back from the
//! scorer: each unit's map is brought to the unit's own pixels and stitched, and the maxima of
//! its scores are kept for the scorer's image rule ([`crate::scorer::Scorer::image_scores`]).

use std::time::Instant;

use ssvp_eval::postprocess::{resize_map, AnomalyMap};
use ssvp_image::RgbImage8;

use crate::detection::Timings;
use crate::error::{Error, ErrorKind, Result};
use crate::input::InputImage;
use crate::scorer::{HeadParts, UnitMaxima, UnitScore};
use crate::tiling::{is_tiled, Stitcher, Tile, Tiling};

/// The partial result of one image.
pub(crate) struct Assembly {
    width: usize,
    height: usize,
    /// Set for a tiled image.
    stitcher: Option<Stitcher>,
    /// The map of an image scored whole.
    whole: Option<AnomalyMap>,
    /// Max over units of each head part (`S_final`, `S_global`, `S_local`).
    head: Option<HeadParts>,
    /// Max over units of the training-free score.
    max_distance: Option<f64>,
    /// Max over units of the unit score (the image's own score when it was scored whole).
    max_score: f64,
    tiles: usize,
    /// The image's share of every stage's time.
    pub(crate) timings: Timings,
}

/// An image's assembled result: its map at its own size and its units' maxima.
pub(crate) struct Assembled {
    pub(crate) map: AnomalyMap,
    pub(crate) maxima: UnitMaxima,
}

impl Assembly {
    pub(crate) fn new(input: &InputImage, tiling: Option<&Tiling>) -> Self {
        let (width, height) = (input.image.width, input.image.height);
        let stitcher = is_tiled(width, height, tiling)
            .then(|| tiling.map(|t| Stitcher::new(width, height, t.overlap)))
            .flatten();
        Self {
            width,
            height,
            stitcher,
            whole: None,
            head: None,
            max_distance: None,
            max_score: f64::NEG_INFINITY,
            tiles: 0,
            timings: Timings::default(),
        }
    }

    /// Adds one unit's result, its map resized to the unit's own pixels.
    pub(crate) fn add(
        &mut self,
        tile: Option<&Tile>,
        pixels: &RgbImage8,
        score: UnitScore,
        share: &Timings,
    ) -> Result<()> {
        let started = Instant::now();
        let map = resize_map(&score.map, pixels.width, pixels.height)?;
        match (tile, &mut self.stitcher) {
            (Some(tile), Some(st)) => st.add(tile, &map)?,
            _ => self.whole = Some(map),
        }
        if let Some(h) = score.head {
            self.head = Some(match self.head {
                Some(m) => HeadParts {
                    score: m.score.max(h.score),
                    global: m.global.max(h.global),
                    local: m.local.max(h.local),
                },
                None => h,
            });
        }
        if let Some(d) = score.distance {
            self.max_distance = Some(self.max_distance.map_or(d, |m| m.max(d)));
        }
        self.max_score = self.max_score.max(score.score);
        self.tiles += 1;
        self.timings.add(share);
        self.timings.postprocess_ms += ms_since(started);
        Ok(())
    }

    /// The map at the image's size with the maxima of its units.
    pub(crate) fn finish(self) -> Result<Assembled> {
        let map = match (self.stitcher, self.whole) {
            (Some(st), _) => st.finish()?,
            (None, Some(map)) => map,
            (None, None) => {
                return Err(Error::new(
                    ErrorKind::Model,
                    format!(
                        "no map was computed for a {}x{} image",
                        self.width, self.height
                    ),
                ))
            }
        };
        Ok(Assembled {
            map,
            maxima: UnitMaxima {
                units: self.tiles,
                score: self.max_score,
                head: self.head,
                distance: self.max_distance,
            },
        })
    }
}

/// Milliseconds since `t`.
pub(crate) fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}
