//! High-resolution images scored tile by tile.
//!
//! A 4000 px photo squashed to the backbones' 518 px input shrinks a 40 px defect to 5 px,
//! below one 14 px patch. With tiling, the image is cut into `size x size` tiles overlapping by
//! at least `overlap` pixels, each tile is scored as an image of its own (resized to the
//! backbones' input), and the tiles' maps are stitched back:
//!
//! - **Layout.** Along each axis the tiles are evenly spaced from the first pixel to the last,
//!   `n = ceil((len - overlap) / (size - overlap))` of them, so every tile is full size and
//!   neighbours overlap by at least `overlap`. An axis no longer than `size` is one tile.
//! - **Blending.** Each tile's map is weighted by `w(x)·w(y)` with the ramp
//!   `w(i) = min(1, (i + 0.5) / overlap, (len - i - 0.5) / overlap)` and the weighted sum is
//!   divided by the summed weights. The weights fall towards a tile's borders, where its context
//!   is cut, and are positive everywhere, so every pixel is covered and the seams are smooth
//!   (a pixel covered by one tile gets that tile's value exactly).
//! - **Image score.** `S = (1 - γ)·max_t S_global(t) + γ·max_t S_local(t)` over the tiles `t`,
//!   with the head's γ: the image is as anomalous as its most anomalous tile, and an image that
//!   fits in one tile gets exactly the head's `S_final`. (The stitched map's own maximum is not
//!   used: blending and smoothing lower its peaks, so it would rank tiled images below whole
//!   ones.) [`tiled_head_score`] is this rule; a scorer without a head takes its highest tile.

use serde::{Deserialize, Serialize};
use ssvp_eval::postprocess::AnomalyMap;
use ssvp_image::RgbImage8;

use crate::error::{Error, Result};

/// The head's image score of a tiled image: `(1 - γ)·max_t S_global(t) + γ·max_t S_local(t)`,
/// from the maxima over the tiles of `S_global` and `S_local` (see the module docs).
pub fn tiled_head_score(max_global: f64, max_local: f64, gamma: f64) -> f64 {
    (1.0 - gamma) * max_global + gamma * max_local
}

/// Whether an image of `width x height` is cut into tiles under `tiling`: only when a side is
/// longer than the tile.
pub fn is_tiled(width: usize, height: usize, tiling: Option<&Tiling>) -> bool {
    tiling.is_some_and(|t| width > t.size || height > t.size)
}

/// Tile size and minimum overlap, in pixels of the original image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tiling {
    /// Side of the square tiles.
    pub size: usize,
    /// Minimum overlap of neighbouring tiles.
    pub overlap: usize,
}

impl Tiling {
    /// Checks `size > 0` and `overlap < size`.
    pub fn validate(&self) -> Result<()> {
        if self.size == 0 {
            return Err(Error::invalid("the tile size must be positive"));
        }
        if self.overlap >= self.size {
            return Err(Error::invalid(format!(
                "the tile overlap ({} px) must be smaller than the tile size ({} px)",
                self.overlap, self.size
            )));
        }
        Ok(())
    }
}

/// One tile: a rectangle of the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tile {
    /// Left edge, in image pixels.
    pub x: usize,
    /// Top edge.
    pub y: usize,
    /// Width (the tile size, or the image's when it is narrower).
    pub width: usize,
    /// Height.
    pub height: usize,
}

/// Start offsets of the tiles along one axis of length `len`.
fn axis_starts(len: usize, size: usize, overlap: usize) -> Vec<usize> {
    if len <= size {
        return vec![0];
    }
    let stride = size - overlap;
    let n = (len - overlap).div_ceil(stride);
    let span = len - size;
    // Evenly spaced, first at 0 and last at len - size; rounded to the nearest pixel.
    (0..n).map(|i| (i * span + (n - 1) / 2) / (n - 1)).collect()
}

/// The tiles covering a `width x height` image, row by row.
pub fn layout(width: usize, height: usize, tiling: &Tiling) -> Vec<Tile> {
    let xs = axis_starts(width, tiling.size, tiling.overlap);
    let ys = axis_starts(height, tiling.size, tiling.overlap);
    let (tw, th) = (width.min(tiling.size), height.min(tiling.size));
    ys.iter()
        .flat_map(|&y| {
            xs.iter().map(move |&x| Tile {
                x,
                y,
                width: tw,
                height: th,
            })
        })
        .collect()
}

/// The pixels of `tile`.
pub fn crop(image: &RgbImage8, tile: &Tile) -> RgbImage8 {
    let mut data = Vec::with_capacity(tile.width * tile.height * 3);
    for y in tile.y..tile.y + tile.height {
        let start = (y * image.width + tile.x) * 3;
        data.extend_from_slice(&image.data[start..start + tile.width * 3]);
    }
    RgbImage8 {
        width: tile.width,
        height: tile.height,
        data,
    }
}

/// The blending ramp of one axis of a tile.
fn ramp(len: usize, overlap: usize) -> Vec<f32> {
    if overlap == 0 {
        return vec![1.0; len];
    }
    let o = overlap as f32;
    (0..len)
        .map(|i| {
            let from_start = (i as f32 + 0.5) / o;
            let from_end = (len as f32 - i as f32 - 0.5) / o;
            from_start.min(from_end).min(1.0)
        })
        .collect()
}

/// Accumulates weighted tile maps into one image-sized map.
pub struct Stitcher {
    width: usize,
    height: usize,
    overlap: usize,
    sum: Vec<f32>,
    weight: Vec<f32>,
}

impl Stitcher {
    /// An empty `width x height` canvas; `overlap` sets the blending ramps.
    pub fn new(width: usize, height: usize, overlap: usize) -> Self {
        Self {
            width,
            height,
            overlap,
            sum: vec![0.0; width * height],
            weight: vec![0.0; width * height],
        }
    }

    /// Adds the map of `tile` (which must be `tile.width x tile.height`).
    pub fn add(&mut self, tile: &Tile, map: &AnomalyMap) -> Result<()> {
        if (map.width, map.height) != (tile.width, tile.height)
            || tile.x + tile.width > self.width
            || tile.y + tile.height > self.height
        {
            return Err(Error::model_msg(format!(
                "a {}x{} tile map does not fit the {}x{} tile at ({}, {}) of a {}x{} image",
                map.width,
                map.height,
                tile.width,
                tile.height,
                tile.x,
                tile.y,
                self.width,
                self.height
            )));
        }
        let wx = ramp(tile.width, self.overlap);
        let wy = ramp(tile.height, self.overlap);
        for (ty, &w_row) in wy.iter().enumerate() {
            let row = (tile.y + ty) * self.width + tile.x;
            let src = &map.data[ty * tile.width..(ty + 1) * tile.width];
            for (tx, (&v, &w_col)) in src.iter().zip(&wx).enumerate() {
                let w = w_row * w_col;
                self.sum[row + tx] += w * v;
                self.weight[row + tx] += w;
            }
        }
        Ok(())
    }

    /// The blended map; fails if some pixel was covered by no tile.
    pub fn finish(self) -> Result<AnomalyMap> {
        if self.weight.iter().any(|&w| w <= 0.0) {
            return Err(Error::model_msg(format!(
                "the tiles do not cover the whole {}x{} image",
                self.width, self.height
            )));
        }
        let data = self
            .sum
            .iter()
            .zip(&self.weight)
            .map(|(&s, &w)| s / w)
            .collect();
        AnomalyMap::new(self.width, self.height, data).map_err(Error::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_are_full_size_cover_and_overlap_enough() {
        let t = Tiling {
            size: 100,
            overlap: 20,
        };
        for len in [1, 99, 100, 101, 180, 181, 260, 1000, 4099] {
            let starts = axis_starts(len, t.size, t.overlap);
            let size = len.min(t.size);
            assert_eq!(starts[0], 0);
            assert_eq!(starts.last().unwrap() + size, len, "len {len}");
            for pair in starts.windows(2) {
                let overlap = pair[0] + size - pair[1];
                assert!(overlap >= t.overlap, "len {len}: {starts:?}");
                assert!(pair[1] > pair[0]);
            }
        }
        assert_eq!(axis_starts(180, 100, 20), vec![0, 80]);
        assert_eq!(layout(250, 90, &t).len(), 3);
    }

    #[test]
    fn stitching_is_seamless_for_a_smooth_map() {
        // Tiles cut from one smooth map stitch back to exactly that map.
        let (w, h) = (230, 170);
        let full: Vec<f32> = (0..w * h)
            .map(|i| ((i % w) as f32 * 0.01 + (i / w) as f32 * 0.02).sin())
            .collect();
        let t = Tiling {
            size: 64,
            overlap: 16,
        };
        let mut st = Stitcher::new(w, h, t.overlap);
        for tile in layout(w, h, &t) {
            let mut data = Vec::new();
            for y in tile.y..tile.y + tile.height {
                data.extend_from_slice(&full[y * w + tile.x..y * w + tile.x + tile.width]);
            }
            st.add(
                &tile,
                &AnomalyMap::new(tile.width, tile.height, data).unwrap(),
            )
            .unwrap();
        }
        let out = st.finish().unwrap();
        for (a, b) in out.data.iter().zip(&full) {
            assert!((a - b).abs() < 1e-5);
        }
    }

    #[test]
    fn crop_takes_the_right_pixels() {
        let data: Vec<u8> = (0..4 * 3 * 3).map(|i| i as u8).collect();
        let img = RgbImage8::from_raw(4, 3, data).unwrap();
        let c = crop(
            &img,
            &Tile {
                x: 1,
                y: 1,
                width: 2,
                height: 2,
            },
        );
        assert_eq!(c.data, vec![15, 16, 17, 18, 19, 20, 27, 28, 29, 30, 31, 32]);
        assert!(Tiling {
            size: 10,
            overlap: 10
        }
        .validate()
        .is_err());
    }
}
