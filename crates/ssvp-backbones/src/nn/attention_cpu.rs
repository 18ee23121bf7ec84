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

/// Shapes and memory layout of one attention call: `batch x heads` independent problems, each
/// with `queries x dim` q, `keys x dim` k and `keys x value_dim` v (and a `queries x value_dim`
/// output), packed in one of two layouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Dims {
    pub batch: usize,
    pub heads: usize,
    pub queries: usize,
    pub keys: usize,
    pub dim: usize,
    pub value_dim: usize,
    /// `true`: `[batch, tokens, heads * dim]`, the layout a projection produces (heads side by
    /// side in each token's row); `false`: `[batch, heads, tokens, dim]`.
    pub packed_heads: bool,
}

/// Where one (batch, head) problem's matrix lives in a buffer: its first element and the
/// distance between its rows (columns are adjacent).
#[derive(Debug, Clone, Copy)]
struct Place {
    base: usize,
    row: usize,
}

impl Dims {
    fn pairs(&self) -> usize {
        self.batch * self.heads
    }

    /// The place of pair `pair`'s `tokens x width` matrix.
    fn place(&self, pair: usize, tokens: usize, width: usize) -> Place {
        let (b, h) = (pair / self.heads, pair % self.heads);
        if self.packed_heads {
            Place {
                base: b * tokens * self.heads * width + h * width,
                row: self.heads * width,
            }
        } else {
            Place {
                base: pair * tokens * width,
                row: width,
            }
        }
    }
    fn q(&self, pair: usize) -> Place {
        self.place(pair, self.queries, self.dim)
    }
    fn k(&self, pair: usize) -> Place {
        self.place(pair, self.keys, self.dim)
    }
    fn v(&self, pair: usize) -> Place {
        self.place(pair, self.keys, self.value_dim)
    }
    fn o(&self, pair: usize) -> Place {
        self.place(pair, self.queries, self.value_dim)
    }

    fn len(&self, tokens: usize, width: usize) -> usize {
        self.pairs() * tokens * width
    }

    fn check(&self, q: usize, k: usize, v: usize) -> candle_core::Result<()> {
        let expect = (
            self.len(self.queries, self.dim),
            self.len(self.keys, self.dim),
            self.len(self.keys, self.value_dim),
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
    /// `rows x cols` with rows `row` apart and adjacent columns.
    fn rows_at(rows: usize, cols: usize, row: usize) -> Self {
        Self {
            rows,
            cols,
            row,
            col: 1,
        }
    }
    fn row_major(rows: usize, cols: usize) -> Self {
        Self::rows_at(rows, cols, cols)
    }
    /// The transpose of a `cols x rows` matrix whose rows are `row` apart.
    fn transposed(rows: usize, cols: usize, row: usize) -> Self {
        Self {
            rows,
            cols,
            row: 1,
            col: row,
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

/// A raw output pointer shared by the workers of one call; each (batch, head) problem writes a
/// disjoint set of elements (its own columns of the packed layout, or its own block).
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: see the type's doc; no two workers write the same element.
unsafe impl Send for Out {}
unsafe impl Sync for Out {}

impl Out {
    /// The pointer advanced by `offset`, read through a method so that closures capture the
    /// whole (`Send`) wrapper rather than its raw-pointer field.
    ///
    /// # Safety
    /// `offset` must lie inside the buffer the pointer came from.
    unsafe fn at(self, offset: usize) -> *mut f32 {
        self.0.add(offset)
    }
}

/// `dst = (accumulate ? dst : 0) + scale · a b`, `dst` being `a.rows x b.cols` at `dst`, rows
/// `dst_row` apart.
///
/// # Safety
/// `dst` must be valid for writes of every element of that matrix, and no other thread may
/// touch those elements during the call.
#[allow(clippy::too_many_arguments)]
unsafe fn matmul(
    dst: *mut f32,
    dst_row: usize,
    a: &[f32],
    av: View,
    b: &[f32],
    bv: View,
    scale: f32,
    accumulate: bool,
) {
    let (m, k, n) = (av.rows, av.cols, bv.cols);
    assert!(bv.rows == k && a.len() >= av.span() && b.len() >= bv.span());
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                std::slice::from_raw_parts_mut(dst.add(i * dst_row), n).fill(0.0);
            }
        }
        return;
    }
    // SAFETY: the assert keeps the reads inside `a` and `b`; the caller vouches for `dst`.
    gemm::gemm(
        m,
        n,
        k,
        dst,
        1,
        dst_row as isize,
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

/// `P` of one block: `scale · q_block kᵀ`, then a softmax over each row, into the packed
/// `rows x keys` scratch `p`.
#[allow(clippy::too_many_arguments)]
fn block_probabilities(
    p: &mut [f32],
    q_block: &[f32],
    q_row: usize,
    rows: usize,
    k: &[f32],
    k_row: usize,
    d: &Dims,
    scale: f32,
) {
    let keys = d.keys;
    assert!(p.len() >= rows * keys);
    // SAFETY: `p` is an exclusive slice holding the `rows x keys` result.
    unsafe {
        matmul(
            p.as_mut_ptr(),
            keys,
            q_block,
            View::rows_at(rows, d.dim, q_row),
            k,
            View::transposed(d.dim, keys, k_row),
            scale,
            false,
        );
    }
    for row in p[..rows * keys].chunks_exact_mut(keys) {
        softmax_in_place(row);
    }
}

/// `softmax(scale · q kᵀ) v` for every (batch, head) problem, in the layout of `d`.
pub(crate) fn forward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    d: Dims,
    scale: f32,
) -> candle_core::Result<Vec<f32>> {
    d.check(q.len(), k.len(), v.len())?;
    let mut out = vec![0f32; d.len(d.queries, d.value_dim)];
    if out.is_empty() || d.keys == 0 {
        return Ok(out);
    }
    let out_ptr = Out(out.as_mut_ptr());
    (0..d.pairs()).into_par_iter().for_each_init(
        || vec![0f32; BLOCK * d.keys],
        |p, pair| {
            let (qp, kp, vp, op) = (d.q(pair), d.k(pair), d.v(pair), d.o(pair));
            for r0 in (0..d.queries).step_by(BLOCK) {
                let rows = BLOCK.min(d.queries - r0);
                let q_block = &q[qp.base + r0 * qp.row..];
                block_probabilities(p, q_block, qp.row, rows, &k[kp.base..], kp.row, &d, scale);
                // SAFETY: rows r0..r0+rows of this pair's output, inside `out` (its place was
                // computed from the same dims `out` was sized by) and written by this pair only.
                unsafe {
                    matmul(
                        out_ptr.at(op.base + r0 * op.row),
                        op.row,
                        p,
                        View::row_major(rows, d.keys),
                        &v[vp.base..],
                        View::rows_at(d.keys, d.value_dim, vp.row),
                        1.0,
                        false,
                    );
                }
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
    if d_out.len() != d.len(d.queries, d.value_dim) {
        return Err(candle_core::Error::Msg(format!(
            "fused attention: output gradient of {} values for shapes {d:?}",
            d_out.len()
        )));
    }
    let mut dq = vec![0f32; q.len()];
    let mut dk = vec![0f32; k.len()];
    let mut dv = vec![0f32; v.len()];
    if d.pairs() == 0 || d.queries == 0 || d.keys == 0 {
        return Ok((dq, dk, dv));
    }
    let (dq_ptr, dk_ptr, dv_ptr) = (
        Out(dq.as_mut_ptr()),
        Out(dk.as_mut_ptr()),
        Out(dv.as_mut_ptr()),
    );
    (0..d.pairs()).into_par_iter().for_each_init(
        || (vec![0f32; BLOCK * d.keys], vec![0f32; BLOCK * d.keys]),
        |(p, dp), pair| {
            let (qp, kp, vp, op) = (d.q(pair), d.k(pair), d.v(pair), d.o(pair));
            let (k, v) = (&k[kp.base..], &v[vp.base..]);
            for r0 in (0..d.queries).step_by(BLOCK) {
                let rows = BLOCK.min(d.queries - r0);
                let first = r0 == 0;
                let q_block = &q[qp.base + r0 * qp.row..];
                let do_block = &d_out[op.base + r0 * op.row..];
                block_probabilities(p, q_block, qp.row, rows, k, kp.row, &d, scale);
                // SAFETY (all four matmuls): each destination is this pair's own matrix in
                // dq/dk/dv, at places computed from the dims the buffers were sized by.
                unsafe {
                    // dv += Pᵀ dO
                    matmul(
                        dv_ptr.at(vp.base),
                        vp.row,
                        p,
                        View::transposed(d.keys, rows, d.keys),
                        do_block,
                        View::rows_at(rows, d.value_dim, op.row),
                        1.0,
                        !first,
                    );
                    // dP = dO vᵀ
                    matmul(
                        dp.as_mut_ptr(),
                        d.keys,
                        do_block,
                        View::rows_at(rows, d.value_dim, op.row),
                        v,
                        View::transposed(d.value_dim, d.keys, vp.row),
                        1.0,
                        false,
                    );
                }
                // dS = P ⊙ (dP − rowsum(dP ⊙ P)), in place.
                for (dp_row, p_row) in dp[..rows * d.keys]
                    .chunks_exact_mut(d.keys)
                    .zip(p[..rows * d.keys].chunks_exact(d.keys))
                {
                    softmax_backward_in_place(dp_row, p_row);
                }
                unsafe {
                    // dq_block = s · dS k
                    matmul(
                        dq_ptr.at(qp.base + r0 * qp.row),
                        qp.row,
                        dp,
                        View::row_major(rows, d.keys),
                        k,
                        View::rows_at(d.keys, d.dim, kp.row),
                        scale,
                        false,
                    );
                    // dk += s · dSᵀ q_block
                    matmul(
                        dk_ptr.at(kp.base),
                        kp.row,
                        dp,
                        View::transposed(d.keys, rows, d.keys),
                        q_block,
                        View::rows_at(rows, d.dim, qp.row),
                        scale,
                        !first,
                    );
                }
            }
        },
    );
    Ok((dq, dk, dv))
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Plain triple-loop attention in f64, reading through the layout's places.
    fn naive(q: &[f32], k: &[f32], v: &[f32], d: Dims, scale: f64) -> Vec<f64> {
        let mut out = vec![0f64; d.len(d.queries, d.value_dim)];
        for pair in 0..d.pairs() {
            let (qp, kp, vp, op) = (d.q(pair), d.k(pair), d.v(pair), d.o(pair));
            for i in 0..d.queries {
                let logits: Vec<f64> = (0..d.keys)
                    .map(|j| {
                        (0..d.dim)
                            .map(|c| {
                                q[qp.base + i * qp.row + c] as f64
                                    * k[kp.base + j * kp.row + c] as f64
                            })
                            .sum::<f64>()
                            * scale
                    })
                    .collect();
                let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
                let z: f64 = e.iter().sum();
                for c in 0..d.value_dim {
                    out[op.base + i * op.row + c] = (0..d.keys)
                        .map(|j| e[j] / z * v[vp.base + j * vp.row + c] as f64)
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

    /// Several blocks (300 queries), a ragged last block, queries != keys, value_dim != dim,
    /// in both layouts.
    #[test]
    fn forward_and_backward_match_a_naive_reference() {
        for packed_heads in [false, true] {
            let d = Dims {
                batch: 2,
                heads: 2,
                queries: 300,
                keys: 37,
                dim: 5,
                value_dim: 4,
                packed_heads,
            };
            let (q, k, v) = (
                values(d.len(d.queries, d.dim), 0.1),
                values(d.len(d.keys, d.dim), 1.1),
                values(d.len(d.keys, d.value_dim), 2.1),
            );
            let scale = 0.4f32;
            let out = forward(&q, &k, &v, d, scale).unwrap();
            let reference = naive(&q, &k, &v, d, scale as f64);
            for (a, b) in out.iter().zip(&reference) {
                assert!((*a as f64 - b).abs() < 1e-5, "{a} vs {b}");
            }
            // Gradients of L = Σ w ⊙ O against central differences of the f64 reference.
            let w = values(out.len(), 3.3);
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
                let mut plus = [q.clone(), k.clone(), v.clone()];
                let mut minus = [q.clone(), k.clone(), v.clone()];
                plus[which][idx] += h;
                minus[which][idx] -= h;
                let numeric = (loss(&plus[0], &plus[1], &plus[2])
                    - loss(&minus[0], &minus[1], &minus[2]))
                    / (2.0 * h as f64);
                let analytic = grad[idx] as f64;
                assert!(
                    (numeric - analytic).abs() < 2e-3 * numeric.abs().max(1.0),
                    "packed {packed_heads}, input {which}[{idx}]: {analytic} vs numeric {numeric}"
                );
            };
            for idx in [0, 7, 1499, q.len() - 1, q.len() / 2 + 3] {
                check(0, &dq, idx);
            }
            for idx in [0, 33, k.len() / 3, k.len() - 1] {
                check(1, &dk, idx);
            }
            for idx in [1, 50, v.len() - 2] {
                check(2, &dv, idx);
            }
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
        let mut row = vec![
            3.0,
            -1.0,
            f32::NEG_INFINITY,
            0.5,
            2.0,
            2.0,
            -7.0,
            1.0,
            0.0,
            4.0,
        ];
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
            batch: 1,
            heads: 1,
            queries: 2,
            keys: 3,
            dim: 4,
            value_dim: 4,
            packed_heads: false,
        };
        assert!(forward(&[0.0; 8], &[0.0; 12], &[0.0; 11], d, 1.0).is_err());
        assert!(backward(&[0.0; 8], &[0.0; 12], &[0.0; 12], &[0.0; 7], d, 1.0).is_err());
    }
}
