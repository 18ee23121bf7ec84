//! AnomalyDINO's zero-shot foreground mask: objects on a plain background get their background
//! patches scored 0, so that a speck of dust on the belt is not a defect of the part.
//!
//! The first principal component of one image's patch tokens separates object from background;
//! patches projecting above `threshold` are foreground. Its sign is arbitrary, so when the
//! foreground covers at most 35 % of the centre window (rows and columns from 20 % to 80 % of
//! the grid; objects are assumed centred) the other sign is taken. The mask is then dilated
//! and closed with a 3 x 3 square, in 2-D on the grid (the paper's description; the official
//! code runs these on the flattened `(N, 1)` array, which makes them 1-D along raster order),
//! with pixels outside the grid ignored.
//!
//! The component is found by power iteration on the centred tokens, its sign fixed so that its
//! largest-magnitude coordinate is positive (as sklearn's `svd_flip` with the decision on `V`),
//! before the centre-window rule.

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How the foreground is found.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ForegroundOptions {
    /// Projection on the first component above which a patch is foreground. AnomalyDINO's 10
    /// was set for DINOv2 tokens; other backbones' tokens have other scales, so look at a few
    /// masks (`ssvp detect` maps show masked patches at 0) before trusting it.
    pub threshold: f32,
    /// The centre-window coverage at or below which the sign is flipped.
    pub centre_coverage: f32,
}

impl Default for ForegroundOptions {
    fn default() -> Self {
        Self {
            threshold: 10.0,
            centre_coverage: 0.35,
        }
    }
}

/// The first principal direction of the rows of `x` (`n x d`, row-major), by power iteration
/// on the centred data, sign-fixed; and the centred projections of the rows on it.
fn first_component(x: &[f32], n: usize, d: usize) -> (Vec<f64>, Vec<f64>) {
    let mut mean = vec![0f64; d];
    for row in x.chunks_exact(d) {
        mean.iter_mut()
            .zip(row)
            .for_each(|(m, v)| *m += f64::from(*v));
    }
    mean.iter_mut().for_each(|m| *m /= n as f64);
    let centred: Vec<f64> = x
        .chunks_exact(d)
        .flat_map(|row| row.iter().zip(&mean).map(|(v, m)| f64::from(*v) - m))
        .collect();
    // A fixed, non-degenerate start: every coordinate differs.
    let mut v: Vec<f64> = (0..d)
        .map(|j| 1.0 + (j as f64 * 0.618_034).fract())
        .collect();
    let mut p = vec![0f64; n];
    for _ in 0..500 {
        for (pi, row) in p.iter_mut().zip(centred.chunks_exact(d)) {
            *pi = row.iter().zip(&v).map(|(a, b)| a * b).sum();
        }
        let mut next = vec![0f64; d];
        for (pi, row) in p.iter().zip(centred.chunks_exact(d)) {
            next.iter_mut().zip(row).for_each(|(w, a)| *w += pi * a);
        }
        let norm = next.iter().map(|w| w * w).sum::<f64>().sqrt();
        if norm == 0.0 {
            break;
        }
        next.iter_mut().for_each(|w| *w /= norm);
        let change: f64 = next.iter().zip(&v).map(|(a, b)| (a - b).abs()).sum();
        v = next;
        if change < 1e-12 {
            break;
        }
    }
    let big = v.iter().enumerate().fold(
        0,
        |best, (j, w)| if w.abs() > v[best].abs() { j } else { best },
    );
    if v[big] < 0.0 {
        v.iter_mut().for_each(|w| *w = -*w);
    }
    for (pi, row) in p.iter_mut().zip(centred.chunks_exact(d)) {
        *pi = row.iter().zip(&v).map(|(a, b)| a * b).sum();
    }
    (v, p)
}

/// A 3 x 3 dilation (`grow`) or erosion of a mask on an `h x w` grid; outside cells are
/// ignored.
fn morph(mask: &[bool], h: usize, w: usize, grow: bool) -> Vec<bool> {
    let mut out = vec![false; mask.len()];
    for y in 0..h {
        for x in 0..w {
            let mut any = false;
            let mut all = true;
            for ny in y.saturating_sub(1)..(y + 2).min(h) {
                for nx in x.saturating_sub(1)..(x + 2).min(w) {
                    let m = mask[ny * w + nx];
                    any |= m;
                    all &= m;
                }
            }
            out[y * w + x] = if grow { any } else { all };
        }
    }
    out
}

/// The foreground mask of one image's patch tokens `[N, D]` on an `(h, w)` grid.
pub fn foreground_mask(
    tokens: &Tensor,
    grid: (usize, usize),
    opts: &ForegroundOptions,
) -> Result<Vec<bool>> {
    let (n, d) = tokens.dims2()?;
    let (h, w) = grid;
    if h * w != n || n == 0 {
        return Err(Error::invalid(format!(
            "{n} patch tokens do not fill a {h}x{w} grid"
        )));
    }
    let x = tokens
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let (_, p) = first_component(&x, n, d);
    let t = f64::from(opts.threshold);
    let mut fg: Vec<bool> = p.iter().map(|v| *v > t).collect();
    let (r0, r1) = ((h as f64 * 0.2) as usize, (h as f64 * 0.8) as usize);
    let (c0, c1) = ((w as f64 * 0.2) as usize, (w as f64 * 0.8) as usize);
    let window = (r1 - r0) * (c1 - c0);
    let covered = (r0..r1)
        .flat_map(|y| (c0..c1).map(move |x| (y, x)))
        .filter(|(y, x)| fg[y * w + x])
        .count();
    if window == 0 || covered as f64 <= f64::from(opts.centre_coverage) * window as f64 {
        fg = p.iter().map(|v| -*v > t).collect();
    }
    let dilated = morph(&fg, h, w, true);
    let closed = morph(&morph(&dilated, h, w, true), h, w, false);
    Ok(closed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_centred_object_is_found_whatever_the_sign() {
        // 12 x 12 grid: a 6 x 6 object in the middle, tokens far apart along one direction.
        let (h, w, d) = (12, 12, 6);
        for sign in [1f32, -1.0] {
            let mut x = Vec::new();
            for y in 0..h {
                for c in 0..w {
                    let inside = (3..9).contains(&y) && (3..9).contains(&c);
                    let base = if inside { 30.0 * sign } else { -10.0 * sign };
                    for j in 0..d {
                        x.push(
                            base * if j == 0 { 1.0 } else { 0.1 }
                                + ((y * w + c + j) % 3) as f32 * 0.01,
                        );
                    }
                }
            }
            let t = Tensor::from_vec(x, (h * w, d), &Device::Cpu).unwrap();
            let m = foreground_mask(&t, (h, w), &ForegroundOptions::default()).unwrap();
            // The object, grown by one patch by the dilation.
            for y in 0..h {
                for c in 0..w {
                    let grown = (2..10).contains(&y) && (2..10).contains(&c);
                    assert_eq!(m[y * w + c], grown, "sign {sign} at {y},{c}");
                }
            }
        }
    }

    #[test]
    fn closing_fills_a_hole_and_borders_are_ignored() {
        let mut m = vec![true; 25];
        m[12] = false;
        let closed = morph(&morph(&m, 5, 5, true), 5, 5, false);
        assert!(closed.iter().all(|v| *v));
        let mut corner = vec![false; 25];
        corner[0] = true;
        let grown = morph(&corner, 5, 5, true);
        assert_eq!(grown.iter().filter(|v| **v).count(), 4);
    }
}
