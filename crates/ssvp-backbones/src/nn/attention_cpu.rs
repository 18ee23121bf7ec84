//! Fused softmax attention on the CPU, forward and backward, for unmasked f32 inputs.
//!
//! Why: composed from candle ops, attention over 1369 tokens materialises every
//! `[batch, heads, tokens, tokens]` intermediate at once (the logits, the probabilities, and in
//! the backward pass five more), each a fresh allocation of hundreds of megabytes whose pages the
//! kernel must fault in and zero. Profiles of the head's training step put a third of its time in
//! those page faults. Here each (batch, head) pair is processed in blocks of query rows, with one
//! `[BLOCK, keys]` scratch buffer per worker that is reused across blocks and pairs: no
//! `tokens x tokens` tensor exists at any time, and the backward pass recomputes the
//! probabilities of a block instead of keeping them.
//!
//! With `S = s·q kᵀ`, `P = softmax(S)` (rows), `O = P v`, and `dO` the incoming gradient:
//! `dv = Pᵀ dO`, `dP = dO vᵀ`, `dS = P ⊙ (dP − rowsum(dP ⊙ P))`, `dq = s·dS k`, `dk = s·dSᵀ q`.
//! Per block of rows that is 5 matmuls in the backward pass and 2 in the forward one, the same
//! count as the composed ops with a recomputed `P`.
//!
//! The matmuls are the `gemm` crate's (candle's own CPU matmul), called single-threaded inside a
//! rayon loop over the (batch, head) pairs.

use gemm::Parallelism;
use rayon::prelude::*;

/// Query rows per block: the scratch rows `[BLOCK, keys]` stay in the L2 cache at 1369 keys.
const BLOCK: usize = 128;

/// Shapes of one attention call: `pairs` (batch x heads) independent problems, each with
/// `queries x dim` q, `keys x dim` k and `keys x value_dim` v, row-major and packed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dims {
    pub pairs: usize,
    pub queries: usize,
    pub keys: usize,
    pub dim: usize,
    pub value_dim: usize,
}

impl Dims {
    fn q_len(&self) -> usize {
        self.queries * self.dim
    }
    fn k_len(&self) -> usize {
        self.keys * self.dim
    }
    fn v_len(&self) -> usize {
        self.keys * self.value_dim
    }
    fn o_len(&self) -> usize {
        self.queries * self.value_dim
    }

    fn check(&self, q: usize, k: usize, v: usize) -> candle_core::Result<()> {
        let expect = (
            self.pairs * self.q_len(),
            self.pairs * self.k_len(),
            self.pairs * self.v_len(),
        );
        if (q, k, v) != expect {
            return Err(candle_core::Error::Msg(format!(
                "fused attention: buffers of {q}/{k}/{v} values for shapes {self:?}"
            )));
        }
        Ok(())
    }
}

/// A strided matrix view for [`matmul`]: element `(i, j)` is at `offset + i·row + j·col`.
#[derive(Clone, Copy)]
struct View {
    rows: usize,
    cols: usize,
    row: usize,
    col: usize,
}

impl View {
    fn row_major(rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            row: cols,
            col: 1,
        }
    }
    /// The transpose of a row-major `cols x rows` matrix.
    fn transposed(rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            row: 1,
            col: rows,
        }
    }
    /// Number of elements the view spans.
    fn span(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            0
        } else {
            (self.rows - 1) * self.row + (self.cols - 1) * self.col + 1
        }
    }
}

/// `dst = (accumulate ? dst : 0) + scale · a b` with `dst` row-major `a.rows x b.cols`.
fn matmul(dst: &mut [f32], a: &[f32], av: View, b: &[f32], bv: View, scale: f32, accumulate: bool) {
    let (m, k, n) = (av.rows, av.cols, bv.cols);
    assert!(bv.rows == k && dst.len() >= m * n && a.len() >= av.span() && b.len() >= bv.span());
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    // SAFETY: the asserts above keep every index the views address inside the slices, and
    // `dst` does not alias `a` or `b` (it is a distinct `&mut`).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            av.col as isize,
            av.row as isize,
            b.as_ptr(),
            bv.col as isize,
            bv.row as isize,
            1.0,
            scale,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

/// `P` of one block: `scale · q_block kᵀ`, then a softmax over each row, into `p`.
fn block_probabilities(
    p: &mut [f32],
    q_block: &[f32],
    rows: usize,
    k: &[f32],
    d: &Dims,
    scale: f32,
) {
    let keys = d.keys;
    matmul(
        p,
        q_block,
        View::row_major(rows, d.dim),
        k,
        View::transposed(d.dim, keys),
        scale,
        false,
    );
    for row in p[..rows * keys].chunks_exact_mut(keys) {
        let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0f32;
        for x in row.iter_mut() {
            *x = (*x - max).exp();
            sum += *x;
        }
        let inv = 1.0 / sum;
        row.iter_mut().for_each(|x| *x *= inv);
    }
}

/// `softmax(scale · q kᵀ) v` for every pair.
pub(crate) fn forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    d: Dims,
    scale: f32,
) -> candle_core::Result<Vec<f32>> {
    d.check(q.len(), k.len(), v.len())?;
    let mut out = vec![0f32; d.pairs * d.o_len()];
    if d.o_len() == 0 {
        return Ok(out);
    }
    out.par_chunks_mut(d.o_len()).enumerate().for_each_init(
        || vec![0f32; BLOCK * d.keys],
        |p, (pair, o)| {
            let q = &q[pair * d.q_len()..(pair + 1) * d.q_len()];
            let k = &k[pair * d.k_len()..(pair + 1) * d.k_len()];
            let v = &v[pair * d.v_len()..(pair + 1) * d.v_len()];
            for r0 in (0..d.queries).step_by(BLOCK) {
                let rows = BLOCK.min(d.queries - r0);
                block_probabilities(p, &q[r0 * d.dim..], rows, k, &d, scale);
                matmul(
                    &mut o[r0 * d.value_dim..],
                    p,
                    View::row_major(rows, d.keys),
                    v,
                    View::row_major(d.keys, d.value_dim),
                    1.0,
                    false,
                );
            }
        },
    );
    Ok(out)
}

/// The gradients `(dq, dk, dv)` of [`forward`] given `d_out`, recomputing the probabilities.
pub(crate) fn backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    d_out: &[f32],
    d: Dims,
    scale: f32,
) -> candle_core::Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    d.check(q.len(), k.len(), v.len())?;
    if d_out.len() != d.pairs * d.o_len() {
        return Err(candle_core::Error::Msg(format!(
            "fused attention: output gradient of {} values for shapes {d:?}",
            d_out.len()
        )));
    }
    let mut dq = vec![0f32; d.pairs * d.q_len()];
    let mut dk = vec![0f32; d.pairs * d.k_len()];
    let mut dv = vec![0f32; d.pairs * d.v_len()];
    if d.pairs == 0 || d.queries == 0 || d.keys == 0 {
        return Ok((dq, dk, dv));
    }
    dq.par_chunks_mut(d.q_len().max(1))
        .zip(dk.par_chunks_mut(d.k_len().max(1)))
        .zip(dv.par_chunks_mut(d.v_len().max(1)))
        .enumerate()
        .for_each_init(
            || (vec![0f32; BLOCK * d.keys], vec![0f32; BLOCK * d.keys]),
            |(p, dp), (pair, ((dq, dk), dv))| {
                let q = &q[pair * d.q_len()..(pair + 1) * d.q_len()];
                let k = &k[pair * d.k_len()..(pair + 1) * d.k_len()];
                let v = &v[pair * d.v_len()..(pair + 1) * d.v_len()];
                let d_out = &d_out[pair * d.o_len()..(pair + 1) * d.o_len()];
                for r0 in (0..d.queries).step_by(BLOCK) {
                    let rows = BLOCK.min(d.queries - r0);
                    let first = r0 == 0;
                    let q_block = &q[r0 * d.dim..(r0 + rows) * d.dim];
                    let do_block = &d_out[r0 * d.value_dim..(r0 + rows) * d.value_dim];
                    block_probabilities(p, q_block, rows, k, &d, scale);
                    // dv += Pᵀ dO
                    matmul(
                        dv,
                        p,
                        View::transposed(d.keys, rows),
                        do_block,
                        View::row_major(rows, d.value_dim),
                        1.0,
                        !first,
                    );
                    // dP = dO vᵀ, then dS = P ⊙ (dP − rowsum(dP ⊙ P)) in place.
                    matmul(
                        dp,
                        do_block,
                        View::row_major(rows, d.value_dim),
                        v,
                        View::transposed(d.value_dim, d.keys),
                        1.0,
                        false,
                    );
                    for (dp_row, p_row) in dp[..rows * d.keys]
                        .chunks_exact_mut(d.keys)
                        .zip(p[..rows * d.keys].chunks_exact(d.keys))
                    {
                        let dot: f32 = dp_row.iter().zip(p_row).map(|(a, b)| a * b).sum();
                        for (g, &pv) in dp_row.iter_mut().zip(p_row) {
                            *g = pv * (*g - dot);
                        }
                    }
                    // dq_block = s · dS k
                    matmul(
                        &mut dq[r0 * d.dim..],
                        dp,
                        View::row_major(rows, d.keys),
                        k,
                        View::row_major(d.keys, d.dim),
                        scale,
                        false,
                    );
                    // dk += s · dSᵀ q_block
                    matmul(
                        dk,
                        dp,
                        View::transposed(d.keys, rows),
                        q_block,
                        View::row_major(rows, d.dim),
                        scale,
                        !first,
                    );
                }
            },
        );
    Ok((dq, dk, dv))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain triple-loop attention in f64.
    fn naive(q: &[f32], k: &[f32], v: &[f32], d: Dims, scale: f64) -> Vec<f64> {
        let mut out = vec![0f64; d.pairs * d.o_len()];
        for p in 0..d.pairs {
            for i in 0..d.queries {
                let logits: Vec<f64> = (0..d.keys)
                    .map(|j| {
                        (0..d.dim)
                            .map(|c| {
                                q[p * d.q_len() + i * d.dim + c] as f64
                                    * k[p * d.k_len() + j * d.dim + c] as f64
                            })
                            .sum::<f64>()
                            * scale
                    })
                    .collect();
                let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
                let z: f64 = e.iter().sum();
                for c in 0..d.value_dim {
                    out[p * d.o_len() + i * d.value_dim + c] = (0..d.keys)
                        .map(|j| e[j] / z * v[p * d.v_len() + j * d.value_dim + c] as f64)
                        .sum();
                }
            }
        }
        out
    }

    fn values(n: usize, seed: f32) -> Vec<f32> {
        (0..n)
            .map(|i| (i as f32 * 0.731 + seed).sin() * 1.7)
            .collect()
    }

    /// Several blocks (300 queries), a ragged last block, and queries != keys.
    #[test]
    fn forward_and_backward_match_a_naive_reference() {
        let d = Dims {
            pairs: 3,
            queries: 300,
            keys: 37,
            dim: 5,
            value_dim: 4,
        };
        let (q, k, v) = (
            values(d.pairs * d.q_len(), 0.1),
            values(d.pairs * d.k_len(), 1.1),
            values(d.pairs * d.v_len(), 2.1),
        );
        let scale = 0.4f32;
        let out = forward(&q, &k, &v, d, scale).unwrap();
        let reference = naive(&q, &k, &v, d, scale as f64);
        for (a, b) in out.iter().zip(&reference) {
            assert!((*a as f64 - b).abs() < 1e-5, "{a} vs {b}");
        }
        // Gradients of L = Σ w ⊙ O against central differences of the f64 reference.
        let w = values(d.pairs * d.o_len(), 3.3);
        let (dq, dk, dv) = backward(&q, &k, &v, &w, d, scale).unwrap();
        let loss = |q: &[f32], k: &[f32], v: &[f32]| -> f64 {
            naive(q, k, v, d, scale as f64)
                .iter()
                .zip(&w)
                .map(|(o, w)| o * *w as f64)
                .sum()
        };
        let h = 1e-2f32;
        let check = |which: usize, grad: &[f32], idx: usize| {
            let (mut q2, mut k2, mut v2) = (q.clone(), k.clone(), v.clone());
            let (mut q3, mut k3, mut v3) = (q.clone(), k.clone(), v.clone());
            match which {
                0 => {
                    q2[idx] += h;
                    q3[idx] -= h;
                }
                1 => {
                    k2[idx] += h;
                    k3[idx] -= h;
                }
                _ => {
                    v2[idx] += h;
                    v3[idx] -= h;
                }
            }
            let numeric = (loss(&q2, &k2, &v2) - loss(&q3, &k3, &v3)) / (2.0 * h as f64);
            let analytic = grad[idx] as f64;
            assert!(
                (numeric - analytic).abs() < 2e-3 * numeric.abs().max(1.0),
                "input {which}[{idx}]: {analytic} vs numeric {numeric}"
            );
        };
        for idx in [0, 7, 1499, 2 * d.q_len() + 1234] {
            check(0, &dq, idx);
        }
        for idx in [0, 33, d.k_len() + 100, 3 * d.k_len() - 1] {
            check(1, &dk, idx);
        }
        for idx in [1, 50, 2 * d.v_len() + 17] {
            check(2, &dv, idx);
        }
    }

    #[test]
    fn mismatched_buffers_are_an_error_not_a_panic() {
        let d = Dims {
            pairs: 1,
            queries: 2,
            keys: 3,
            dim: 4,
            value_dim: 4,
        };
        assert!(forward(&[0.0; 8], &[0.0; 12], &[0.0; 11], d, 1.0).is_err());
        assert!(backward(&[0.0; 8], &[0.0; 12], &[0.0; 12], &[0.0; 7], d, 1.0).is_err());
    }
}
