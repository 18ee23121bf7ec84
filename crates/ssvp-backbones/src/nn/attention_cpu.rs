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
        softmax_in_place(row);
    }
}

/// Softmax of one row, in place.
fn softmax_in_place(row: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { softmax_in_place_avx2(row) };
    }
    softmax_in_place_portable(row)
}

/// [`softmax_in_place_portable`] compiled for AVX2 + FMA, so that the branch-free [`exp_f32`]
/// loop vectorises 8 lanes wide.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_in_place_avx2(row: &mut [f32]) {
    softmax_in_place_portable(row)
}

#[inline(always)]
fn softmax_in_place_portable(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for x in row.iter_mut() {
        *x = exp_f32(*x - max);
    }
    // Summed in 8 independent lanes (vectorisable) rather than one serial chain.
    let mut lanes = [0f32; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for (l, v) in lanes.iter_mut().zip(c) {
            *l += v;
        }
    }
    let sum = lanes.iter().sum::<f32>() + chunks.remainder().iter().sum::<f32>();
    let inv = 1.0 / sum;
    row.iter_mut().for_each(|x| *x *= inv);
}

/// `g = p ⊙ (g − Σ g ⊙ p)`: the softmax backward of one row, in place.
fn softmax_backward_in_place(g: &mut [f32], p: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has the features the function is compiled for.
        return unsafe { softmax_backward_in_place_avx2(g, p) };
    }
    softmax_backward_in_place_portable(g, p)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_backward_in_place_avx2(g: &mut [f32], p: &[f32]) {
    softmax_backward_in_place_portable(g, p)
}

#[inline(always)]
fn softmax_backward_in_place_portable(g: &mut [f32], p: &[f32]) {
    let mut lanes = [0f32; 8];
    let mut gc = g.chunks_exact(8);
    let mut pc = p.chunks_exact(8);
    for (a, b) in (&mut gc).zip(&mut pc) {
        for ((l, x), y) in lanes.iter_mut().zip(a).zip(b) {
            *l += x * y;
        }
    }
    let tail: f32 = gc
        .remainder()
        .iter()
        .zip(pc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    let dot = lanes.iter().sum::<f32>() + tail;
    for (x, &y) in g.iter_mut().zip(p) {
        *x = y * (*x - dot);
    }
}

/// `e^x` for `x <= 0` (softmax arguments after the max is subtracted), within 2 ulp of the
/// correctly rounded value on [-87, 0]; 0 below. Branch-free so that loops over it vectorise:
/// libm's scalar `expf` call per element was a tenth of the head's training step.
///
/// Cephes' `expf` scheme: `x = n ln2 + r` with `|r| <= ln2 / 2` (ln2 split in two parts for
/// exactness), a degree-6 polynomial for `e^r`, and `2^n` put into the exponent bits.
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Not `max`: a NaN must stay NaN (a diverged step should show as one).
    let x = if x < -87.0 { -87.0 } else { x };
    let n = (x * LOG2E).round();
    let r = x - n * LN2_HI - n * LN2_LO;
    let p = 1.987_569_1e-4f32;
    let p = p.mul_add(r, 1.398_199_9e-3);
    let p = p.mul_add(r, 8.333_452e-3);
    let p = p.mul_add(r, 4.166_579_6e-2);
    let p = p.mul_add(r, 1.666_666_5e-1);
    let p = p.mul_add(r, 0.5);
    let e_r = (p * r).mul_add(r, r) + 1.0;
    // 2^n for n in [-126, 0]: the biased exponent n + 127 in the exponent field.
    let two_n = f32::from_bits(((n as i32 + 127) as u32) << 23);
    e_r * two_n
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
                        softmax_backward_in_place(dp_row, p_row);
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
    fn exp_is_within_two_ulp_of_libm_on_the_softmax_range() {
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -87.0 * i as f32 / 200_000.0;
            let (a, b) = (exp_f32(x) as f64, (x as f64).exp());
            worst = worst.max((a - b).abs() / b);
        }
        assert!(worst < 2.0 * f32::EPSILON as f64, "{worst}");
        assert_eq!(exp_f32(0.0), 1.0);
        assert_eq!(exp_f32(-1000.0), exp_f32(-87.0));
        assert!(exp_f32(f32::NAN).is_nan());
        let mut row = vec![3.0, -1.0, f32::NEG_INFINITY, 0.5, 2.0, 2.0, -7.0, 1.0, 0.0, 4.0];
        let expect: Vec<f64> = {
            let e: Vec<f64> = row.iter().map(|&v| (v as f64 - 4.0).exp()).collect();
            let z: f64 = e.iter().sum();
            e.iter().map(|v| v / z).collect()
        };
        softmax_in_place(&mut row);
        for (a, b) in row.iter().zip(&expect) {
            assert!((*a as f64 - b).abs() < 1e-7, "{a} vs {b}");
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
