//! Anomaly-map post-processing exactly as the reference pipelines do it, on plain row-major
//! buffers: torch bilinear upsampling (both `align_corners` conventions), scipy
//! `gaussian_filter`, and the GT-mask protocol (PIL bilinear resize of the 0/255 mask, then
//! `/255 > 0.5`).

use serde::{Deserialize, Serialize};
use ssvp_image::{resize_f32_bilinear_antialias, resize_u8, Filter};

/// A row-major `width x height` grid: an anomaly map (`f32`) or a binary GT mask (`bool`).
#[derive(Clone, Debug, PartialEq)]
pub struct Grid<T> {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `width * height` values, rows top to bottom.
    pub data: Vec<T>,
}

/// Anomaly scores, higher = more anomalous.
pub type AnomalyMap = Grid<f32>;
/// Binary ground truth, `true` = anomalous pixel.
pub type GtMask = Grid<bool>;

/// Invalid input to a post-processing step.
#[derive(Debug, thiserror::Error)]
pub enum PostprocessError {
    /// A buffer whose length is not `width * height`.
    #[error("buffer of {len} values does not hold a {width}x{height} grid")]
    BadBuffer {
        /// The buffer's length.
        len: usize,
        /// The claimed width.
        width: usize,
        /// The claimed height.
        height: usize,
    },
    /// A grid or target size with a zero side.
    #[error("invalid size {width}x{height}: both sides must be positive")]
    EmptySize {
        /// The width asked for.
        width: usize,
        /// The height asked for.
        height: usize,
    },
    /// A Gaussian σ that is not finite and positive (the value given).
    #[error("gaussian sigma must be finite and positive, got {0}")]
    BadSigma(f64),
    /// The image resampler refused a resize (of a mask, or an antialiased map).
    #[error(transparent)]
    Resize(#[from] ssvp_image::Error),
}

impl<T> Grid<T> {
    /// A grid of `data`, checked to hold `width * height` values with both sides positive.
    pub fn new(width: usize, height: usize, data: Vec<T>) -> Result<Self, PostprocessError> {
        if width == 0 || height == 0 {
            return Err(PostprocessError::EmptySize { width, height });
        }
        if Some(data.len()) != width.checked_mul(height) {
            return Err(PostprocessError::BadBuffer {
                len: data.len(),
                width,
                height,
            });
        }
        Ok(Self {
            width,
            height,
            data,
        })
    }

    /// `(width, height)`.
    pub fn size(&self) -> (usize, usize) {
        (self.width, self.height)
    }
}

/// One output coordinate of torch's linear interpolation: two source indices and their weights.
#[derive(Clone, Copy, Debug)]
struct LinearTap {
    i0: usize,
    i1: usize,
    w0: f32,
    w1: f32,
}

/// torch `compute_source_index_and_lambda` in float32 (the CPU kernel's `opmath_t` for f32).
fn linear_taps(input: usize, output: usize, align_corners: bool) -> Vec<LinearTap> {
    let scale = if align_corners {
        if output > 1 {
            (input - 1) as f32 / (output - 1) as f32
        } else {
            0.0
        }
    } else {
        input as f32 / output as f32
    };
    (0..output)
        .map(|dst| {
            if input == output {
                return LinearTap {
                    i0: dst,
                    i1: dst,
                    w0: 1.0,
                    w1: 0.0,
                };
            }
            let src = if align_corners {
                scale * dst as f32
            } else {
                (scale * (dst as f32 + 0.5) - 0.5).max(0.0)
            };
            let i0 = (src.floor() as usize).min(input - 1);
            let w1 = (src - i0 as f32).clamp(0.0, 1.0);
            LinearTap {
                i0,
                i1: i0 + usize::from(i0 < input - 1),
                w0: 1.0 - w1,
                w1,
            }
        })
        .collect()
}

/// `F.interpolate(map[None, None], (out_height, out_width), mode="bilinear",
/// align_corners=align_corners)` for a float32 map (no antialias: the field only upsamples).
pub fn resize_bilinear(
    map: &AnomalyMap,
    out_width: usize,
    out_height: usize,
    align_corners: bool,
) -> Result<AnomalyMap, PostprocessError> {
    if out_width == 0 || out_height == 0 {
        return Err(PostprocessError::EmptySize {
            width: out_width,
            height: out_height,
        });
    }
    let rows = linear_taps(map.height, out_height, align_corners);
    let cols = linear_taps(map.width, out_width, align_corners);
    let mut out = Vec::with_capacity(out_width * out_height);
    for r in &rows {
        let top = &map.data[r.i0 * map.width..(r.i0 + 1) * map.width];
        let bottom = &map.data[r.i1 * map.width..(r.i1 + 1) * map.width];
        for c in &cols {
            // Same association as torch's nested `t0 * w0 + t1 * w1`, height outermost.
            let t0 = top[c.i0] * c.w0 + top[c.i1] * c.w1;
            let t1 = bottom[c.i0] * c.w0 + bottom[c.i1] * c.w1;
            out.push(t0 * r.w0 + t1 * r.w1);
        }
    }
    Grid::new(out_width, out_height, out)
}

/// numpy's pairwise summation for the short arrays used here (n <= 128: eight strided partial
/// sums combined as a tree), so that the normalised kernel equals scipy's to the last bit.
fn numpy_sum(x: &[f64]) -> f64 {
    if x.len() < 8 {
        return x.iter().fold(0.0, |a, &b| a + b);
    }
    let mut r = [0.0f64; 8];
    r.copy_from_slice(&x[..8]);
    let mut i = 8;
    while i + 8 <= x.len() {
        for j in 0..8 {
            r[j] += x[i + j];
        }
        i += 8;
    }
    let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for &v in &x[i..] {
        res += v;
    }
    res
}

/// scipy `_gaussian_kernel1d(sigma, 0, radius)` with `radius = int(truncate * sigma + 0.5)`:
/// `exp(-0.5 / sigma^2 * k^2)` for k = -radius..=radius, normalised to sum 1.
pub fn gaussian_kernel(sigma: f64, truncate: f64) -> Result<Vec<f64>, PostprocessError> {
    if !(sigma.is_finite() && sigma > 0.0) {
        return Err(PostprocessError::BadSigma(sigma));
    }
    let radius = (truncate * sigma + 0.5) as i64;
    let factor = -0.5 / (sigma * sigma);
    let phi: Vec<f64> = (-radius..=radius)
        .map(|k| (factor * (k * k) as f64).exp())
        .collect();
    let total = numpy_sum(&phi);
    Ok(phi.into_iter().map(|w| w / total).collect())
}

/// scipy's `reflect` boundary (half-sample symmetric: `d c b a | a b c d | d c b a`), also for
/// kernels wider than the line.
fn reflect(i: i64, n: usize) -> usize {
    let n = n as i64;
    let period = 2 * n;
    let m = i.rem_euclid(period);
    (if m >= n { period - 1 - m } else { m }) as usize
}

/// One `correlate1d` pass over a line: sums in f64 with scipy's symmetric-kernel order
/// (`x[0]·w[0]`, then `(x[-j] + x[j])·w[j]` from the outermost tap inwards), rounded to f32.
fn filter_line(line: &[f32], kernel: &[f64], out: &mut [f32], padded: &mut Vec<f64>) {
    let radius = kernel.len() / 2;
    let n = line.len();
    padded.clear();
    padded.extend((-(radius as i64)..(n + radius) as i64).map(|i| line[reflect(i, n)] as f64));
    for (x, o) in out.iter_mut().enumerate() {
        let c = x + radius;
        let mut acc = padded[c] * kernel[radius];
        for j in (1..=radius).rev() {
            acc += (padded[c - j] + padded[c + j]) * kernel[radius - j];
        }
        *o = acc as f32;
    }
}

/// `scipy.ndimage.gaussian_filter(map, sigma, truncate=truncate)` on a float32 map, mode
/// `reflect`: separable, axis 0 (columns) then axis 1 (rows), float32 output after each pass.
pub fn gaussian_filter_truncated(
    map: &AnomalyMap,
    sigma: f64,
    truncate: f64,
) -> Result<AnomalyMap, PostprocessError> {
    let kernel = gaussian_kernel(sigma, truncate)?;
    let (w, h) = map.size();
    let mut padded = Vec::new();
    // Axis 0: filter each column.
    let mut first = vec![0f32; w * h];
    let (mut column, mut filtered) = (vec![0f32; h], vec![0f32; h]);
    for x in 0..w {
        for (y, c) in column.iter_mut().enumerate() {
            *c = map.data[y * w + x];
        }
        filter_line(&column, &kernel, &mut filtered, &mut padded);
        for (y, &f) in filtered.iter().enumerate() {
            first[y * w + x] = f;
        }
    }
    // Axis 1: filter each row.
    let mut out = vec![0f32; w * h];
    for (src, dst) in first.chunks_exact(w).zip(out.chunks_exact_mut(w)) {
        filter_line(src, &kernel, dst, &mut padded);
    }
    Grid::new(w, h, out)
}

/// `scipy.ndimage.gaussian_filter(map, sigma)` (truncate 4, mode reflect); the field uses σ = 4.
pub fn gaussian_filter(map: &AnomalyMap, sigma: f64) -> Result<AnomalyMap, PostprocessError> {
    gaussian_filter_truncated(map, sigma, 4.0)
}

/// Resizes a binary GT mask by the field's protocol: the 0/255 mask is resized with PIL
/// `BILINEAR` (antialiased when shrinking) and thresholded with `v / 255 > 0.5`, i.e. `v >= 128`.
/// Same size: returned unchanged.
pub fn resize_mask(
    mask: &GtMask,
    out_width: usize,
    out_height: usize,
) -> Result<GtMask, PostprocessError> {
    if mask.size() == (out_width, out_height) {
        return Ok(mask.clone());
    }
    let bytes: Vec<u8> = mask.data.iter().map(|&m| if m { 255 } else { 0 }).collect();
    let resized = resize_u8(
        &bytes,
        mask.width,
        mask.height,
        1,
        out_width,
        out_height,
        Filter::PillowBilinear,
    )?;
    Grid::new(
        out_width,
        out_height,
        resized.into_iter().map(|v| v >= 128).collect(),
    )
}

/// Test-time post-processing of a token-grid map (the `[postprocess]` section of an SSVP
/// config; docs/method.md §2 #10 explains the defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PostprocessConfig {
    /// Gaussian smoothing of the upsampled map, in pixels of the evaluation grid.
    pub gaussian_sigma: f64,
    /// Bilinear upsampling of the token-grid map to the evaluation grid with align_corners = true.
    pub upsample_align_corners: bool,
    /// Per-class min-max normalisation of image scores (Bayes-PFL test); off = raw scores.
    pub per_class_minmax: bool,
}

impl Default for PostprocessConfig {
    fn default() -> Self {
        Self {
            gaussian_sigma: 4.0,
            upsample_align_corners: true,
            per_class_minmax: false,
        }
    }
}

/// The map of one image on the `size x size` evaluation grid: torch bilinear upsampling of the
/// `grid = (h, w)` token map, then scipy's Gaussian (skipped when `gaussian_sigma` is 0). Every
/// consumer of a head's map (evaluation, detection, calibration, the server) goes through this.
pub fn postprocess_map(
    map: &[f32],
    grid: (usize, usize),
    size: usize,
    pp: &PostprocessConfig,
) -> Result<AnomalyMap, PostprocessError> {
    let (h, w) = grid;
    let raw = AnomalyMap::new(w, h, map.to_vec())?;
    let up = resize_bilinear(&raw, size, size, pp.upsample_align_corners)?;
    if pp.gaussian_sigma > 0.0 {
        gaussian_filter(&up, pp.gaussian_sigma)
    } else {
        Ok(up)
    }
}

/// Brings a post-processed map to another size, e.g. an image's own: the triangle filter,
/// stretched when shrinking (antialiased, so a small peak is averaged rather than skipped), plain
/// bilinear when enlarging. Same size: returned unchanged.
pub fn resize_map(
    map: &AnomalyMap,
    out_width: usize,
    out_height: usize,
) -> Result<AnomalyMap, PostprocessError> {
    if map.size() == (out_width, out_height) {
        return Ok(map.clone());
    }
    if out_width == 0 || out_height == 0 {
        return Err(PostprocessError::EmptySize {
            width: out_width,
            height: out_height,
        });
    }
    let data =
        resize_f32_bilinear_antialias(&map.data, map.width, map.height, 1, out_width, out_height)?;
    Grid::new(out_width, out_height, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reflect_is_half_sample_symmetric() {
        let idx: Vec<usize> = (-4..7).map(|i| reflect(i, 3)).collect();
        assert_eq!(idx, vec![2, 2, 1, 0, 0, 1, 2, 2, 1, 0, 0]);
        assert_eq!(reflect(-5, 1), 0);
    }

    #[test]
    fn kernel_has_33_taps_for_sigma_4() {
        let k = gaussian_kernel(4.0, 4.0).unwrap();
        assert_eq!(k.len(), 33);
        assert!((k.iter().sum::<f64>() - 1.0).abs() < 1e-15);
        assert!(gaussian_kernel(0.0, 4.0).is_err());
    }

    #[test]
    fn constant_map_stays_constant() {
        let map = Grid::new(5, 3, vec![0.25f32; 15]).unwrap();
        let up = resize_bilinear(&map, 11, 7, false).unwrap();
        assert!(up.data.iter().all(|&v| v == 0.25));
        let smooth = gaussian_filter(&up, 4.0).unwrap();
        assert!(smooth.data.iter().all(|&v| (v - 0.25).abs() < 1e-7));
    }
}
