//! Anomaly-map overlays on plain buffers: a fixed colour scale, matplotlib's `jet` colormap,
//! alpha blending, region outlines and a colour bar.
//!
//! The scale is fixed by the caller rather than stretched to each map's min/max, so that the
//! same colour means the same score in every image of a report (per-image stretching would paint
//! the least anomalous patch of a good part deep red).

use crate::decode::{check_len, RgbImage8};
use crate::error::{Error, Result};

/// A fixed score range: a value `v` is drawn at `clamp((v - lo) / (hi - lo), 0, 1)` along the
/// colormap, so overlays of different images are comparable.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ColorScale {
    /// Score drawn at the cold end of the colormap (and everything below it).
    pub lo: f32,
    /// Score drawn at the hot end (and everything above it).
    pub hi: f32,
}

impl ColorScale {
    /// A checked scale; `lo` and `hi` must be finite with `lo < hi`, otherwise every value
    /// would map to the same colour (or to NaN).
    pub fn new(lo: f32, hi: f32) -> Result<Self> {
        let scale = Self { lo, hi };
        scale.validate()?;
        Ok(scale)
    }

    /// The position of `v` on the colormap, in `[0, 1]`; NaN maps to 0 (drawn as `lo`) so that
    /// a missing score never looks anomalous.
    pub fn unit(&self, v: f32) -> f32 {
        let t = (v - self.lo) / (self.hi - self.lo);
        if t.is_nan() {
            0.0
        } else {
            t.clamp(0.0, 1.0)
        }
    }

    fn validate(&self) -> Result<()> {
        if self.lo.is_finite() && self.hi.is_finite() && self.lo < self.hi {
            Ok(())
        } else {
            Err(Error::Size(format!(
                "colour scale needs finite lo < hi, got [{}, {}]",
                self.lo, self.hi
            )))
        }
    }
}

/// Number of entries of matplotlib's colormap lookup tables (`rcParams["image.lut"]`).
const LUT_SIZE: usize = 256;

/// matplotlib's `_jet_data`: (x, y) break points of each channel's piecewise-linear ramp.
const JET_R: &[(f64, f64)] = &[
    (0.0, 0.0),
    (0.35, 0.0),
    (0.66, 1.0),
    (0.89, 1.0),
    (1.0, 0.5),
];
const JET_G: &[(f64, f64)] = &[
    (0.0, 0.0),
    (0.125, 0.0),
    (0.375, 1.0),
    (0.64, 1.0),
    (0.91, 0.0),
    (1.0, 0.0),
];
const JET_B: &[(f64, f64)] = &[
    (0.0, 0.5),
    (0.11, 1.0),
    (0.34, 1.0),
    (0.65, 0.0),
    (1.0, 0.0),
];

fn piecewise_linear(points: &[(f64, f64)], x: f64) -> f64 {
    for pair in points.windows(2) {
        let ((x0, y0), (x1, y1)) = (pair[0], pair[1]);
        if x <= x1 {
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0);
        }
    }
    points[points.len() - 1].1
}

/// Lookup-table index of `t`, as matplotlib's `Colormap.__call__` computes it:
/// `min(int(t * 256), 255)`, NaN as 0.
fn lut_index(t: f32) -> usize {
    if t.is_nan() {
        return 0;
    }
    ((t.clamp(0.0, 1.0) * LUT_SIZE as f32) as usize).min(LUT_SIZE - 1)
}

/// Entry `i` of matplotlib's 256-entry `jet` table, sampled at `i / 255`.
fn jet_entry(i: usize) -> [u8; 3] {
    let x = i as f64 / (LUT_SIZE - 1) as f64;
    [JET_R, JET_G, JET_B].map(|ch| (piecewise_linear(ch, x) * 255.0).round() as u8)
}

/// matplotlib's `jet` colormap at `t` in `[0, 1]` (clamped; NaN as 0), dark blue to dark red.
///
/// Quantised to matplotlib's 256-entry lookup table, like `plt.cm.jet(t)`, so that overlays
/// match the Python reference tools' pixel for pixel; channels are rounded to 8 bits (matplotlib's
/// `bytes=True` truncates, which differs by at most one level).
pub fn jet(t: f32) -> [u8; 3] {
    jet_entry(lut_index(t))
}

/// Colours a row-major single-channel map (`width * height` values) with `jet` on a fixed
/// `scale`: values outside the scale saturate at its ends, NaN is drawn as `lo`.
pub fn colorize(
    values: &[f32],
    width: usize,
    height: usize,
    scale: ColorScale,
) -> Result<RgbImage8> {
    scale.validate()?;
    check_len(width, height, 1, values.len())?;
    // 256 colours cover every output; computing them once keeps this a table lookup per pixel.
    let lut: Vec<[u8; 3]> = (0..LUT_SIZE).map(jet_entry).collect();
    let data = values
        .iter()
        .flat_map(|&v| lut[lut_index(scale.unit(v))])
        .collect();
    RgbImage8::from_raw(width, height, data)
}

fn check_rgb(img: &RgbImage8, what: &str) -> Result<()> {
    check_len(img.width, img.height, 3, img.data.len())
        .map_err(|e| Error::Buffer(format!("{what}: {e}")))
}

/// `base * (1 - alpha) + heat * alpha`, rounded: the heat map shown through, the part still
/// recognisable underneath. `alpha` in `[0, 1]`; the two images must have the same size (resize
/// the map to the image first, e.g. with [`crate::resize_rgb8`]).
pub fn blend(base: &RgbImage8, heat: &RgbImage8, alpha: f32) -> Result<RgbImage8> {
    check_rgb(base, "base image")?;
    check_rgb(heat, "heat map")?;
    if (base.width, base.height) != (heat.width, heat.height) {
        return Err(Error::Size(format!(
            "cannot blend a {}x{} heat map onto a {}x{} image",
            heat.width, heat.height, base.width, base.height
        )));
    }
    if !(0.0..=1.0).contains(&alpha) {
        return Err(Error::Size(format!(
            "blend alpha must be in [0, 1], got {alpha}"
        )));
    }
    let data = base
        .data
        .iter()
        .zip(&heat.data)
        .map(|(&b, &h)| (b as f32 * (1.0 - alpha) + h as f32 * alpha).round() as u8)
        .collect();
    RgbImage8::from_raw(base.width, base.height, data)
}

/// Paints the outlines of the `true` regions of a row-major `mask` (same size as `img`) in
/// `color`, `thickness` pixels wide (0 draws nothing).
///
/// The outline is the set of region pixels with a 4-neighbour outside the region or outside the
/// image, i.e. it lies on the region's own border pixels, so a one-pixel region is still drawn
/// and touching regions stay distinguishable. Thicker lines are that set dilated by a
/// `thickness` x `thickness` square centred on it (one extra pixel on the right/bottom side for
/// even widths), clipped to the image. The dilation is separable, `O(pixels * thickness)`.
pub fn draw_outlines(
    img: &mut RgbImage8,
    mask: &[bool],
    color: [u8; 3],
    thickness: usize,
) -> Result<()> {
    check_rgb(img, "image")?;
    let (w, h) = (img.width, img.height);
    if mask.len() != w * h {
        return Err(Error::Size(format!(
            "mask has {} values, image is {w}x{h}",
            mask.len()
        )));
    }
    if thickness == 0 {
        return Ok(());
    }
    let inside = |x: isize, y: isize| {
        x >= 0
            && y >= 0
            && (x as usize) < w
            && (y as usize) < h
            && mask[y as usize * w + x as usize]
    };
    let mut edge = vec![false; w * h];
    for y in 0..h {
        for x in 0..w {
            let (xi, yi) = (x as isize, y as isize);
            edge[y * w + x] = mask[y * w + x]
                && !(inside(xi - 1, yi)
                    && inside(xi + 1, yi)
                    && inside(xi, yi - 1)
                    && inside(xi, yi + 1));
        }
    }
    let (before, after) = ((thickness - 1) / 2, thickness / 2);
    if thickness > 1 {
        let mut rows = vec![false; w * h];
        for y in 0..h {
            for x in (0..w).filter(|&x| edge[y * w + x]) {
                let (x0, x1) = (x.saturating_sub(before), (x + after).min(w - 1));
                rows[y * w + x0..=y * w + x1].fill(true);
            }
        }
        edge.fill(false);
        for y in 0..h {
            for x in (0..w).filter(|&x| rows[y * w + x]) {
                let (y0, y1) = (y.saturating_sub(before), (y + after).min(h - 1));
                for yy in y0..=y1 {
                    edge[yy * w + x] = true;
                }
            }
        }
    }
    for (px, _) in img.data.chunks_exact_mut(3).zip(&edge).filter(|(_, &e)| e) {
        px.copy_from_slice(&color);
    }
    Ok(())
}

/// A horizontal `jet` colour bar, `width` x `height`, from the scale's `lo` (left column) to its
/// `hi` (right column), to print next to overlays drawn with a [`ColorScale`]. A zero size gives
/// an image without pixels.
pub fn color_bar(width: usize, height: usize) -> RgbImage8 {
    let row: Vec<u8> = (0..width)
        .flat_map(|x| {
            let t = if width > 1 {
                x as f32 / (width - 1) as f32
            } else {
                0.0
            };
            jet(t)
        })
        .collect();
    RgbImage8 {
        width,
        height,
        data: row.repeat(height),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jet_matches_matplotlib_lut() {
        // plt.cm.jet([0, 0.5, 0.75, 1]) * 255, rounded.
        assert_eq!(jet(0.0), [0, 0, 128]);
        assert_eq!(jet(1.0), [128, 0, 0]);
        assert_eq!(jet(0.5), [125, 255, 122]);
        assert_eq!(jet(0.75), [255, 148, 0]);
        assert_eq!(jet(f32::NAN), jet(0.0));
        assert_eq!(jet(-3.0), jet(0.0));
        assert_eq!(jet(7.0), jet(1.0));
    }

    #[test]
    fn bad_scales_are_refused() {
        assert!(ColorScale::new(1.0, 1.0).is_err());
        assert!(ColorScale::new(0.0, f32::NAN).is_err());
        assert!(ColorScale::new(0.0, 2.0).is_ok());
    }

    #[test]
    fn color_bar_runs_from_lo_to_hi() {
        let bar = color_bar(10, 3);
        assert_eq!(bar.data.len(), 10 * 3 * 3);
        assert_eq!(bar.data[..3], jet(0.0));
        assert_eq!(bar.data[27..30], jet(1.0));
        assert_eq!(bar.data[..30], bar.data[60..90]);
        assert!(color_bar(0, 5).data.is_empty());
    }
}
