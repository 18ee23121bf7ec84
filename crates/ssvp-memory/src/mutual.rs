//! Mutual scoring of an unlabeled set of images (MuSc, Li et al., ICLR 2024): every image's
//! patches are scored by how far they are from the patches of the other images of the set.
//! Most images are mostly normal, so a normal patch finds a close match in almost every other
//! image, while a defect finds one in few.
//!
//! Per feature layer and aggregation degree `r`:
//! 1. **LNAMD**: one LayerNorm over the whole `(C, H, W)` map of the image (no affine,
//!    eps 1e-5), then the mean of each channel over the `r x r` neighbourhood with zero
//!    padding and divisor `r²`, then each patch vector L2-normalised.
//! 2. **MSM**: for image `i`, patch `p` and every other image `j`,
//!    `d_ij(p) = min_q |z_ip - z_jq|` (Euclidean on unit vectors, `sqrt(2 - 2 cos)`); the
//!    patch score is the mean of the smallest `floor(fraction * (B - 1))` of the `B - 1`
//!    values (MuSc's interval average with `topmin_max = 0.3`, `topmin_min = 0`).
//!
//! Scores are averaged over the layers, then over the degrees. The image score is the
//! maximum of the patch grid (MuSc takes the maximum of the map upsampled with
//! `align_corners = True`, which has the same maximum). [`rscin`] optionally re-scores
//! images by their neighbours in a global feature space.
//!
//! Cost: `B (B - 1) / 2` products of `L x C` by `C x L` per layer and degree (each gives both
//! directions of a pair), so time grows with the square of the set; callers cut large sets
//! into chunks (MuSc's `divide_num`).

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::knn::mutual_max;

/// How images score each other.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MutualOptions {
    /// Aggregation degrees `r` (odd): MuSc's `r_list = [1, 3, 5]`.
    pub degrees: Vec<usize>,
    /// Share of the other images whose distances are averaged: the smallest
    /// `floor(fraction * (B - 1))` (MuSc: 0.3).
    pub fraction: f64,
}

impl Default for MutualOptions {
    fn default() -> Self {
        Self {
            degrees: vec![1, 3, 5],
            fraction: 0.3,
        }
    }
}

impl MutualOptions {
    /// Checks the values, naming the wrong one.
    pub fn validate(&self) -> Result<()> {
        if self.degrees.is_empty() || self.degrees.iter().any(|r| *r == 0 || r % 2 == 0) {
            return Err(Error::invalid(format!(
                "aggregation degrees must be odd and positive, got {:?}",
                self.degrees
            )));
        }
        if !(self.fraction > 0.0 && self.fraction <= 1.0) {
            return Err(Error::invalid(format!(
                "the mutual-scoring fraction must be in (0, 1], not {}",
                self.fraction
            )));
        }
        Ok(())
    }

    /// The fewest images a set must have so that at least one other image is averaged
    /// (5 at the default fraction 0.3).
    pub fn min_images(&self) -> usize {
        let mut b = 2;
        while ((self.fraction * (b - 1) as f64).floor() as usize) < 1 {
            b += 1;
        }
        b
    }
}

/// LNAMD of one image's patch tokens `[L, C]` on an `(h, w)` grid at degree `r`: unit
/// vectors `[L, C]` (f32, on the input's device).
pub fn lnamd(tokens: &Tensor, grid: (usize, usize), r: usize) -> Result<Tensor> {
    let (l, c) = tokens.dims2()?;
    let (h, w) = grid;
    if h * w != l {
        return Err(Error::invalid(format!(
            "{l} patch tokens do not fill a {h}x{w} grid"
        )));
    }
    if r == 0 || r % 2 == 0 {
        return Err(Error::invalid(format!(
            "degree {r} is not odd and positive"
        )));
    }
    let device = tokens.device().clone();
    let mut x = tokens
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    // One LayerNorm over the whole map: mean and biased variance of all L*C values.
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let var = x
        .iter()
        .map(|&v| (f64::from(v) - mean).powi(2))
        .sum::<f64>()
        / n;
    let inv = 1.0 / (var + 1e-5).sqrt();
    for v in x.iter_mut() {
        *v = ((f64::from(*v) - mean) * inv) as f32;
    }
    if r > 1 {
        x = box_mean(&x, h, w, c, r);
    }
    for row in x.chunks_exact_mut(c) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        row.iter_mut().for_each(|v| *v /= norm);
    }
    Ok(Tensor::from_vec(x, (l, c), &Device::Cpu)?.to_device(&device)?)
}

/// The per-channel mean over the `r x r` neighbourhood of every patch, zero-padded, divisor
/// `r²` (what MuSc's unfold + adaptive pooling computes). Separable: rows, then columns.
fn box_mean(x: &[f32], h: usize, w: usize, c: usize, r: usize) -> Vec<f32> {
    let half = (r / 2) as isize;
    let mut rows = vec![0f32; x.len()];
    for y in 0..h {
        for xx in 0..w {
            let out = &mut rows[(y * w + xx) * c..(y * w + xx + 1) * c];
            for dx in -half..=half {
                let sx = xx as isize + dx;
                if sx < 0 || sx >= w as isize {
                    continue;
                }
                let src = &x[(y * w + sx as usize) * c..(y * w + sx as usize + 1) * c];
                out.iter_mut().zip(src).for_each(|(o, s)| *o += s);
            }
        }
    }
    let mut out = vec![0f32; x.len()];
    let scale = 1.0 / (r * r) as f32;
    for y in 0..h {
        for xx in 0..w {
            let o = &mut out[(y * w + xx) * c..(y * w + xx + 1) * c];
            for dy in -half..=half {
                let sy = y as isize + dy;
                if sy < 0 || sy >= h as isize {
                    continue;
                }
                let src = &rows[(sy as usize * w + xx) * c..(sy as usize * w + xx + 1) * c];
                o.iter_mut().zip(src).for_each(|(a, s)| *a += s);
            }
            o.iter_mut().for_each(|a| *a *= scale);
        }
    }
    out
}

/// Mutual patch scores of a set of `B` images. `layers[k][b]` holds image `b`'s patch tokens
/// `[L, C_k]` at feature layer `k`, all on the `grid`. Returns per image its `L` patch scores
/// (row-major on the grid).
pub fn mutual_scores(
    layers: &[Vec<Tensor>],
    grid: (usize, usize),
    opts: &MutualOptions,
) -> Result<Vec<Vec<f32>>> {
    opts.validate()?;
    let Some(first) = layers.first() else {
        return Err(Error::invalid(
            "mutual scoring needs at least one feature layer",
        ));
    };
    let b = first.len();
    if layers.iter().any(|l| l.len() != b) {
        return Err(Error::invalid(
            "every feature layer must hold the same images",
        ));
    }
    let need = opts.min_images();
    if b < need {
        return Err(Error::new(
            ErrorKind::NotEnoughData,
            format!(
                "mutual scoring needs at least {need} images in a set (each image is compared \
                 with the closest {:.0} % of the others), got {b}",
                opts.fraction * 100.0
            ),
        ));
    }
    let l = grid.0 * grid.1;
    let k = (opts.fraction * (b - 1) as f64).floor() as usize;
    let mut total = vec![vec![0f64; l]; b];
    for &r in &opts.degrees {
        let mut per_degree = vec![vec![0f64; l]; b];
        for layer in layers {
            let z: Vec<Tensor> = layer
                .iter()
                .map(|t| lnamd(t, grid, r))
                .collect::<Result<_>>()?;
            let scores = msm(&z, l, k)?;
            for (acc, s) in per_degree.iter_mut().zip(&scores) {
                acc.iter_mut().zip(s).for_each(|(a, v)| *a += f64::from(*v));
            }
        }
        let nl = layers.len() as f64;
        for (acc, s) in total.iter_mut().zip(&per_degree) {
            acc.iter_mut().zip(s).for_each(|(a, v)| *a += v / nl);
        }
    }
    let nr = opts.degrees.len() as f64;
    Ok(total
        .into_iter()
        .map(|s| s.into_iter().map(|v| (v / nr) as f32).collect())
        .collect())
}

/// MSM on unit vectors `z[b]` (`[L, C]` each): per image and patch, the mean of the `k`
/// smallest distances to the other images.
fn msm(z: &[Tensor], l: usize, k: usize) -> Result<Vec<Vec<f32>>> {
    let b = z.len();
    // dist[i][j]: image i's patches against image j (unused on the diagonal).
    let mut dist: Vec<Vec<Vec<f32>>> = vec![vec![Vec::new(); b]; b];
    let to_dist = |s: Vec<f32>| -> Vec<f32> {
        s.into_iter()
            .map(|c| (2.0 - 2.0 * c).max(0.0).sqrt())
            .collect()
    };
    for i in 0..b {
        for j in i + 1..b {
            let (rows, cols) = mutual_max(&z[i], &z[j])?;
            dist[i][j] = to_dist(rows);
            dist[j][i] = to_dist(cols);
        }
    }
    let mut out = Vec::with_capacity(b);
    let mut column = Vec::with_capacity(b - 1);
    for (i, row) in dist.iter().enumerate() {
        let mut scores = Vec::with_capacity(l);
        for p in 0..l {
            column.clear();
            column.extend(
                row.iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, d)| d[p]),
            );
            column.sort_by(|a, b| a.total_cmp(b));
            let sum: f64 = column[..k].iter().map(|&v| f64::from(v)).sum();
            scores.push((sum / k as f64) as f32);
        }
        out.push(scores);
    }
    Ok(out)
}

/// RsCIN (MuSc's re-scoring with an image-level neighbourhood): image scores min-max scaled
/// over the set, then, per window size `k`, each image takes the weighted mean of the scaled
/// scores of its `k` most similar images (itself normally among them), with weights
/// `W = G Gᵀ` of the global features `globals` (`[B, G]`); the result is the mean over the
/// windows. Ties keep the lower index. A row whose kept weights do not sum to a positive
/// number keeps its own scaled score (MuSc would divide by zero).
pub fn rscin(scores: &[f64], globals: &Tensor, windows: &[usize]) -> Result<Vec<f64>> {
    let b = scores.len();
    let (bg, _) = globals.dims2()?;
    if bg != b {
        return Err(Error::invalid(format!(
            "{b} scores but {bg} global features"
        )));
    }
    if windows.is_empty() || windows.contains(&0) {
        return Err(Error::invalid(format!(
            "RsCIN window sizes must be positive, got {windows:?}"
        )));
    }
    let lo = scores.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let scaled: Vec<f64> = scores
        .iter()
        .map(|s| if hi > lo { (s - lo) / (hi - lo) } else { 0.0 })
        .collect();
    let g = globals.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
    let w = g.matmul(&g.t()?)?.to_vec2::<f32>()?;
    let mut out = vec![0f64; b];
    for &k in windows {
        let k = k.min(b);
        for (i, row) in w.iter().enumerate() {
            let mut order: Vec<usize> = (0..b).collect();
            order.sort_by(|&x, &y| row[y].total_cmp(&row[x]));
            let kept = &order[..k];
            let sum: f64 = kept.iter().map(|&j| f64::from(row[j])).sum();
            let value = if sum > 0.0 && sum.is_finite() {
                kept.iter()
                    .map(|&j| f64::from(row[j]) * scaled[j])
                    .sum::<f64>()
                    / sum
            } else {
                scaled[i]
            };
            out[i] += value;
        }
    }
    let nk = windows.len() as f64;
    Ok(out.into_iter().map(|v| v / nk).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_minimum_set_size_follows_the_fraction() {
        assert_eq!(MutualOptions::default().min_images(), 5);
        let half = MutualOptions {
            fraction: 0.5,
            ..MutualOptions::default()
        };
        assert_eq!(half.min_images(), 3);
    }

    #[test]
    fn box_mean_pads_with_zeros() {
        // A 3x3 grid of one channel, all ones: the centre averages 9 ones, a corner 4.
        let x = vec![1f32; 9];
        let m = box_mean(&x, 3, 3, 1, 3);
        assert!((m[4] - 1.0).abs() < 1e-6);
        assert!((m[0] - 4.0 / 9.0).abs() < 1e-6);
        assert!((m[1] - 6.0 / 9.0).abs() < 1e-6);
    }

    #[test]
    fn an_odd_patch_out_scores_highest() {
        // Six images of identical patches except one patch of image 2.
        let grid = (2, 2);
        let mut images = Vec::new();
        for b in 0..6 {
            let mut v = Vec::new();
            for p in 0..4 {
                let odd = b == 2 && p == 3;
                v.extend_from_slice(&[
                    if odd { -1.0 } else { 1.0 + p as f32 },
                    0.5,
                    if odd { 3.0 } else { -(p as f32) },
                ]);
            }
            images.push(Tensor::from_vec(v, (4, 3), &Device::Cpu).unwrap());
        }
        let s = mutual_scores(&[images], grid, &MutualOptions::default()).unwrap();
        let (mut best, mut at) = (f32::MIN, (0, 0));
        for (b, img) in s.iter().enumerate() {
            for (p, v) in img.iter().enumerate() {
                if *v > best {
                    best = *v;
                    at = (b, p);
                }
            }
        }
        assert_eq!(at, (2, 3));
    }

    #[test]
    fn too_few_images_are_refused_with_the_minimum() {
        let one = Tensor::ones((4, 3), DType::F32, &Device::Cpu).unwrap();
        let err = mutual_scores(&[vec![one; 4]], (2, 2), &MutualOptions::default()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotEnoughData);
        assert!(err.to_string().contains("at least 5"), "{err}");
    }

    #[test]
    fn rscin_window_one_is_the_scaled_score() {
        let g =
            Tensor::from_vec(vec![1f32, 0.0, 0.6, 0.8, 0.0, 1.0], (3, 2), &Device::Cpu).unwrap();
        let s = rscin(&[1.0, 3.0, 2.0], &g, &[1]).unwrap();
        assert_eq!(s, vec![0.0, 1.0, 0.5]);
        // Window 2: image 0's neighbours are itself (w 1) and image 1 (w 0.6).
        let s2 = rscin(&[1.0, 3.0, 2.0], &g, &[2]).unwrap();
        assert!((s2[0] - 0.6 / 1.6).abs() < 1e-6, "{s2:?}");
    }
}
