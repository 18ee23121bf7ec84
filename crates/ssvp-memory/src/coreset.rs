//! Greedy k-center coreset (PatchCore's approximate greedy): a subset of the bank whose every
//! vector has a selected vector close by, so that nearest-neighbour distances barely change
//! while the bank shrinks to `fraction` of its size.
//!
//! As in PatchCore, distances are taken in a random projection to 128 dimensions (a bias-free
//! linear map with weights uniform in `±1/sqrt(D)`), the first scores are the mean distances to
//! 10 random starting vectors, and each step selects the vector farthest from the selection
//! so far (the lowest index among equals). The projection and the starts are drawn from
//! SplitMix64 with the given seed, so a numpy re-implementation selects the same indices
//! (`reference/gen_memory.py`).

use candle_core::{Device, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use ssvp_util::rng::SplitMix64;

use crate::error::{Error, Result};

/// How a coreset is drawn.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CoresetOptions {
    /// Share of the bank to keep, in (0, 1]: `floor(fraction * M)` vectors (at least one).
    pub fraction: f64,
    /// Dimension of the random projection distances are measured in (no projection when the
    /// vectors are not longer).
    pub projection_dim: usize,
    /// Random starting vectors whose mean distance gives the first scores.
    pub starts: usize,
    /// Seed of the projection and the starts.
    pub seed: u64,
}

impl Default for CoresetOptions {
    fn default() -> Self {
        Self {
            fraction: 0.1,
            projection_dim: 128,
            starts: 10,
            seed: 0,
        }
    }
}

impl CoresetOptions {
    /// Checks the values, naming the wrong one.
    pub fn validate(&self) -> Result<()> {
        if !(self.fraction > 0.0 && self.fraction <= 1.0) {
            return Err(Error::invalid(format!(
                "the coreset fraction must be in (0, 1], not {}",
                self.fraction
            )));
        }
        if self.projection_dim == 0 || self.starts == 0 {
            return Err(Error::invalid(
                "the coreset projection and the number of starts must be positive",
            ));
        }
        Ok(())
    }
}

/// A uniform draw in [0, 1) from the top 53 bits.
fn unit(rng: &mut SplitMix64) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// The projection weights `[out, in]` (row-major, nn.Linear's layout), then the start indices.
fn draws(m: usize, d: usize, opts: &CoresetOptions) -> (Option<Vec<f32>>, Vec<usize>) {
    let mut rng = SplitMix64::new(opts.seed);
    let weights = (d > opts.projection_dim).then(|| {
        let bound = 1.0 / (d as f64).sqrt();
        (0..opts.projection_dim * d)
            .map(|_| ((2.0 * unit(&mut rng) - 1.0) * bound) as f32)
            .collect()
    });
    let wanted = opts.starts.min(m);
    let mut starts = Vec::with_capacity(wanted);
    while starts.len() < wanted {
        let i = (rng.next_u64() % m as u64) as usize;
        if !starts.contains(&i) {
            starts.push(i);
        }
    }
    (weights, starts)
}

/// Scores per parallel work item: large enough that a step's scheduling cost is noise.
const CHUNK: usize = 4096;

/// The index of the largest value, the lowest among equals.
fn argmax(values: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best
}

/// Squared Euclidean distance with eight partial sums, so that the loop vectorises.
fn sq_dist(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for l in 0..8 {
            let t = x[l] - y[l];
            acc[l] += t * t;
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (x, y) in ra.iter().zip(rb) {
        s += (x - y) * (x - y);
    }
    s
}

/// The indices (in selection order) of a greedy k-center coreset of the rows of `vectors`
/// (`[M, D]`).
pub fn greedy_coreset(vectors: &Tensor, opts: &CoresetOptions) -> Result<Vec<usize>> {
    opts.validate()?;
    let (m, d) = vectors.dims2()?;
    if m == 0 {
        return Err(Error::invalid("cannot draw a coreset of an empty bank"));
    }
    let target = ((opts.fraction * m as f64).floor() as usize).clamp(1, m);
    if target == m {
        return Ok((0..m).collect());
    }
    let (weights, starts) = draws(m, d, opts);
    let x = vectors
        .to_device(&Device::Cpu)?
        .to_dtype(candle_core::DType::F32)?;
    let (points, p) = match weights {
        Some(w) => {
            let w = Tensor::from_vec(w, (opts.projection_dim, d), &Device::Cpu)?;
            let projected = x.matmul(&w.t()?)?;
            (
                projected.flatten_all()?.to_vec1::<f32>()?,
                opts.projection_dim,
            )
        }
        None => (x.flatten_all()?.to_vec1::<f32>()?, d),
    };
    let row = |i: usize| &points[i * p..(i + 1) * p];
    let mut score: Vec<f32> = (0..m)
        .map(|i| {
            let sum: f64 = starts
                .iter()
                .map(|&s| f64::from(sq_dist(row(i), row(s)).sqrt()))
                .sum();
            (sum / starts.len() as f64) as f32
        })
        .collect();
    let mut selected = Vec::with_capacity(target);
    let mut best = argmax(&score);
    for _ in 0..target {
        selected.push(best);
        let chosen = row(best).to_vec();
        // Lower every score to its distance to the chosen vector and find the next farthest
        // in the same pass, in parallel chunks (the selection's whole cost is this loop).
        best = score
            .par_chunks_mut(CHUNK)
            .enumerate()
            .map(|(c, chunk)| {
                let mut local = (f32::NEG_INFINITY, usize::MAX);
                for (k, s) in chunk.iter_mut().enumerate() {
                    let i = c * CHUNK + k;
                    let dist = sq_dist(row(i), &chosen).sqrt();
                    if dist < *s {
                        *s = dist;
                    }
                    if *s > local.0 {
                        local = (*s, i);
                    }
                }
                local
            })
            .reduce(
                || (f32::NEG_INFINITY, usize::MAX),
                // The larger score wins; among equals the lower index, as a serial scan.
                |a, b| {
                    if b.0 > a.0 || (b.0 == a.0 && b.1 < a.1) {
                        b
                    } else {
                        a
                    }
                },
            )
            .1;
    }
    Ok(selected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_farthest_points_are_taken_first() {
        // Two tight clusters and one outlier: the outlier, then one point of the other
        // cluster, cover everything.
        let pts: Vec<f32> = vec![
            0.0, 0.0, 0.1, 0.0, 0.0, 0.1, 10.0, 10.0, 10.1, 10.0, -50.0, 0.0,
        ];
        let x = Tensor::from_vec(pts, (6, 2), &Device::Cpu).unwrap();
        let opts = CoresetOptions {
            fraction: 0.5,
            starts: 2,
            ..CoresetOptions::default()
        };
        let sel = greedy_coreset(&x, &opts).unwrap();
        assert_eq!(sel.len(), 3);
        assert_eq!(sel[0], 5);
        assert!(sel[1] == 3 || sel[1] == 4, "{sel:?}");
        let mut all = sel.clone();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 3, "a vector is never selected twice: {sel:?}");
    }

    #[test]
    fn fraction_one_keeps_everything_and_bad_fractions_are_refused() {
        let x = Tensor::zeros((4, 3), candle_core::DType::F32, &Device::Cpu).unwrap();
        let all = CoresetOptions {
            fraction: 1.0,
            ..CoresetOptions::default()
        };
        assert_eq!(greedy_coreset(&x, &all).unwrap(), vec![0, 1, 2, 3]);
        for f in [0.0, -0.1, 1.5, f64::NAN] {
            let bad = CoresetOptions {
                fraction: f,
                ..CoresetOptions::default()
            };
            assert!(greedy_coreset(&x, &bad).is_err(), "{f}");
        }
    }
}
