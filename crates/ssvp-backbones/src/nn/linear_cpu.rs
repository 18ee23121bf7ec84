//! `y = x Wᵀ` as one op on the CPU (f32), with a backward pass that skips what nobody needs.
//!
//! Why: candle's matmul backward always computes both operand gradients and accumulates each
//! into a fresh zero tensor. In the SSVP head the first projections of every ATF block read the
//! frozen backbone features, which need no gradient: a third of the head's linear-layer backward
//! work (and as many `[tokens, width]` temporaries) went into gradients that were thrown away.
//! Here `dx` is computed only when `x` is part of the graph, and `dW` only when `W` is.

use gemm::Parallelism;

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};

use super::{cpu_f32, with_cpu_f32};

/// `x [rows, in] · Wᵀ` for `W [out, in]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MatmulWeightT;

fn parallelism() -> Parallelism {
    match rayon::current_num_threads() {
        0 | 1 => Parallelism::None,
        n => Parallelism::Rayon(n),
    }
}

/// `dst [m, n] = a · b` (or `dst += a · b` when `accumulate`) where `a` is `m x k` and `b` is
/// `k x n`, each given by `(row stride, column stride)`.
///
/// # Safety
/// The strides must keep every addressed element inside the slices.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_into(
    dst: &mut [f32],
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    a_strides: (usize, usize),
    b: &[f32],
    b_strides: (usize, usize),
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].fill(0.0);
        }
        return;
    }
    gemm::gemm(
        m,
        n,
        k,
        dst.as_mut_ptr(),
        1,
        n as isize,
        accumulate,
        a.as_ptr(),
        a_strides.1 as isize,
        a_strides.0 as isize,
        b.as_ptr(),
        b_strides.1 as isize,
        b_strides.0 as isize,
        if accumulate { 1.0 } else { 0.0 },
        1.0,
        false,
        false,
        false,
        parallelism(),
    );
}

/// Checks `x [rows, in]` against `w [out, in]`; returns `(rows, in, out)`.
fn dims(x: &Shape, w: &Shape) -> Result<(usize, usize, usize)> {
    let (rows, in_dim) = x.dims2()?;
    let (out_dim, w_in) = w.dims2()?;
    if in_dim != w_in {
        return Err(candle_core::Error::Msg(format!(
            "linear: input width {in_dim} but weight {out_dim}x{w_in}"
        )));
    }
    Ok((rows, in_dim, out_dim))
}

/// `x · Wᵀ`, plus `bias` when given: the bias is written into the output first and the product
/// accumulated onto it.
fn forward(
    s1: &CpuStorage,
    l1: &Layout,
    s2: &CpuStorage,
    l2: &Layout,
    bias: Option<&[f32]>,
) -> Result<(CpuStorage, Shape)> {
    let (rows, in_dim, out_dim) = dims(l1.shape(), l2.shape())?;
    let (x, w) = (cpu_f32(s1, l1, "linear")?, cpu_f32(s2, l2, "linear")?);
    let mut y = match bias {
        Some(b) if b.len() != out_dim => {
            return Err(candle_core::Error::Msg(format!(
                "linear: {out_dim} outputs but a bias of {}",
                b.len()
            )))
        }
        Some(b) => b.repeat(rows),
        None => vec![0f32; rows * out_dim],
    };
    // SAFETY: x is rows x in (row-major), Wᵀ is W read with swapped strides; both spans match
    // the buffers' lengths checked by `dims`, and y holds rows x out values.
    unsafe {
        gemm_into(
            &mut y,
            rows,
            out_dim,
            in_dim,
            x,
            (in_dim, 1),
            w,
            (1, in_dim),
            bias.is_some(),
        )
    };
    Ok((CpuStorage::F32(y), (rows, out_dim).into()))
}

impl candle_core::CustomOp2 for MatmulWeightT {
    fn name(&self) -> &'static str {
        "matmul-weight-transposed"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        forward(s1, l1, s2, l2, None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (rows, in_dim, out_dim) = dims(x.shape(), w.shape())?;
        let grad = grad.contiguous()?;
        with_cpu_f32(&[x, w, &grad], "linear backward", |v| {
            self.grads(x, w, (v[0], v[1], v[2]), (rows, in_dim, out_dim))
        })
    }
}

impl MatmulWeightT {
    /// `(dx, dW)` from the values of x, W and dY.
    fn grads(
        &self,
        x: &Tensor,
        w: &Tensor,
        (xs, ws, gs): (&[f32], &[f32], &[f32]),
        (rows, in_dim, out_dim): (usize, usize, usize),
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dev = x.device();
        // dW = dYᵀ x: out x in, only when W is trained (frozen towers under learnable prompts
        // need dx alone).
        let dw = if w.track_op() {
            let mut dw = vec![0f32; out_dim * in_dim];
            // SAFETY: dYᵀ reads dY [rows, out] with swapped strides, x is rows x in.
            unsafe {
                gemm_into(
                    &mut dw,
                    out_dim,
                    in_dim,
                    rows,
                    gs,
                    (1, out_dim),
                    xs,
                    (in_dim, 1),
                    false,
                )
            };
            Some(Tensor::from_vec(dw, (out_dim, in_dim), dev)?)
        } else {
            None
        };
        // dx = dY W: rows x in, only when x is part of the graph.
        let dx = if x.track_op() {
            let mut dx = vec![0f32; rows * in_dim];
            // SAFETY: dY is rows x out, W is out x in, both row-major.
            unsafe {
                gemm_into(
                    &mut dx,
                    rows,
                    in_dim,
                    out_dim,
                    gs,
                    (out_dim, 1),
                    ws,
                    (in_dim, 1),
                    false,
                )
            };
            Some(Tensor::from_vec(dx, (rows, in_dim), dev)?)
        } else {
            None
        };
        Ok((dx, dw))
    }
}

/// `x [rows, in] · Wᵀ + b` for `W [out, in]`, `b [out]`: the bias is written into the output
/// first and the product accumulated onto it, so that the output is written once instead of
/// being read and written again by a separate broadcast add.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MatmulWeightTBias;

impl candle_core::CustomOp3 for MatmulWeightTBias {
    fn name(&self) -> &'static str {
        "matmul-weight-transposed-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        forward(s1, l1, s2, l2, Some(cpu_f32(s3, l3, "linear")?))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = MatmulWeightT.bwd(x, w, _res, grad)?;
        let db = if b.track_op() {
            Some(grad.sum(0)?)
        } else {
            None
        };
        Ok((dx, dw, db))
    }
}
