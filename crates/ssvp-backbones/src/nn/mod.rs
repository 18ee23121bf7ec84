//! The few building blocks every transformer here shares, in one place so that the hot path
//! (matmuls and attention) can be measured and swapped without touching the models.
//!
//! Two kinds of path exist. Frozen vision towers run inference only and may use candle's fused
//! kernels. Anything that must carry gradients (the text tower with learnable prompts, and the
//! SSVP head) has to use autograd-capable ops: candle's fused `layer_norm` and
//! `softmax_last_dim` have no backward and silently cut the graph (docs/formats.md, "Candle
//! facts"). The [`Grad`] switch makes that choice explicit at every call.

mod activation;
mod attention_cpu;
mod cpu_values;
mod linear_cpu;
pub mod vit;

pub use activation::Activation;
pub use cpu_values::{cpu_f32, with_cpu_f32};

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::VarBuilder;

/// Whether a forward pass must keep the autograd graph intact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Grad {
    /// Inference: fused kernels allowed.
    #[default]
    Frozen,
    /// Gradients must flow to the inputs (or to inserted embeddings).
    Tracked,
}

/// `y = x Wᵀ + b`, weights stored `[out, in]` as in PyTorch.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// A layer from its weight `[out, in]` and optional bias `[out]`.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    /// Reads `weight` (and `bias` when asked) under `vb`, checking their shapes.
    pub fn load(vb: VarBuilder, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = if bias {
            Some(vb.get(out_dim, "bias")?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    /// The weight, `[out, in]`.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// The bias, `[out]`, if the layer has one.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // Flatten leading dims into one matmul: the gemm kernel is fastest on one large product.
        let dims = x.dims();
        let in_dim = dims[dims.len() - 1];
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let x2 = x.reshape((rows, in_dim))?;
        let on_cpu = |t: &Tensor| t.dtype() == DType::F32 && t.device().is_cpu();
        let y = match &self.bias {
            Some(b) if on_cpu(&x2) && on_cpu(&self.weight) && on_cpu(b) => {
                x2.contiguous()?.apply_op3(
                    &self.weight.contiguous()?,
                    &b.contiguous()?,
                    linear_cpu::MatmulWeightTBias,
                )?
            }
            None if on_cpu(&x2) && on_cpu(&self.weight) => x2
                .contiguous()?
                .apply_op2(&self.weight.contiguous()?, linear_cpu::MatmulWeightT)?,
            Some(b) => x2.matmul(&self.weight.t()?)?.broadcast_add(b)?,
            None => x2.matmul(&self.weight.t()?)?,
        };
        let mut out_dims = dims.to_vec();
        *out_dims.last_mut().expect("rank >= 1") = self.weight.dim(0)?;
        y.reshape(out_dims)
    }
}

/// LayerNorm over the last dimension with an explicit gradient policy.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// A LayerNorm from its scale, shift and epsilon.
    pub fn new(weight: Tensor, bias: Tensor, eps: f64) -> Self {
        Self { weight, bias, eps }
    }

    /// Reads `weight` and `bias` (`[dim]`) under `vb`.
    pub fn load(vb: VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            bias: vb.get(dim, "bias")?,
            eps,
        })
    }

    /// Normalises `x` over its last dimension: candle's fused kernel for [`Grad::Frozen`] on
    /// contiguous f32 input, otherwise an op that has a backward.
    pub fn forward_with(&self, x: &Tensor, grad: Grad) -> Result<Tensor> {
        match grad {
            Grad::Frozen if x.is_contiguous() && x.dtype() == DType::F32 => {
                candle_nn::ops::layer_norm(x, &self.weight, &self.bias, self.eps as f32)
            }
            _ => layer_norm_differentiable(x, &self.weight, &self.bias, self.eps),
        }
    }
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, Grad::Frozen)
    }
}

/// LayerNorm that autograd sees through: on f32 CPU tensors one op with an analytic backward
/// ([`LayerNormWithBackward`]), elsewhere composed from elementary ops (two-pass mean/variance,
/// computed in f32).
pub fn layer_norm_differentiable(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<Tensor> {
    if [x, weight, bias]
        .iter()
        .all(|t| t.dtype() == DType::F32 && t.device().is_cpu())
    {
        return x.contiguous()?.apply_op3(
            &weight.contiguous()?,
            &bias.contiguous()?,
            LayerNormWithBackward { eps },
        );
    }
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let mean = x.mean_keepdim(D::Minus1)?;
    let centred = x.broadcast_sub(&mean)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centred.broadcast_div(&(var + eps)?.sqrt()?)?;
    normed
        .to_dtype(dtype)?
        .broadcast_mul(weight)?
        .broadcast_add(bias)
}

/// `(x − mean) / sqrt(var + eps) · w + b` over the last dimension (two-pass, biased variance,
/// as PyTorch's LayerNorm) with the analytic backward: for `x̂` the normalised input and
/// `ĝ = g ⊙ w`, `dx = rstd · (ĝ − mean(ĝ) − x̂ · mean(ĝ ⊙ x̂))`, `dw = Σ_rows g ⊙ x̂`,
/// `db = Σ_rows g`, with `x̂` and `rstd` recomputed from `x`. Composed from candle ops, a
/// LayerNorm kept six `[rows, width]` intermediates alive for the backward pass and made a
/// dozen passes over them; this keeps none.
#[derive(Debug, Clone, Copy)]
pub struct LayerNormWithBackward {
    /// Added to the variance before the square root.
    pub eps: f64,
}

impl LayerNormWithBackward {
    /// `(mean, 1 / sqrt(var + eps))` of one row.
    fn moments(&self, row: &[f32]) -> (f32, f32) {
        let n = row.len() as f32;
        let mean = row.iter().sum::<f32>() / n;
        let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / n;
        (mean, 1.0 / (var + self.eps as f32).sqrt())
    }

    fn check(dim: usize, w: usize, b: usize) -> Result<()> {
        if w != dim || b != dim {
            return Err(candle_core::Error::Msg(format!(
                "layer norm over {dim} values with a weight of {w} and a bias of {b}"
            )));
        }
        Ok(())
    }
}

impl candle_core::CustomOp3 for LayerNormWithBackward {
    fn name(&self) -> &'static str {
        "layer-norm-with-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
        s3: &candle_core::CpuStorage,
        l3: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use rayon::prelude::*;
        let input = cpu_f32(s1, l1, "layer norm")?;
        let w = cpu_f32(s2, l2, "layer norm")?;
        let b = cpu_f32(s3, l3, "layer norm")?;
        let dim = l1.dims().last().copied().unwrap_or(1).max(1);
        Self::check(dim, w.len(), b.len())?;
        let mut out = vec![0f32; input.len()];
        out.par_chunks_mut(dim)
            .zip(input.par_chunks(dim))
            .for_each(|(dst, src)| {
                let (mean, rstd) = self.moments(src);
                for (((d, &s), &wv), &bv) in dst.iter_mut().zip(src).zip(w).zip(b) {
                    *d = (s - mean) * rstd * wv + bv;
                }
            });
        Ok((candle_core::CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        weight: &Tensor,
        bias: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        use rayon::prelude::*;
        let grad_res = grad_res.contiguous()?;
        let dim = x.dims().last().copied().unwrap_or(1).max(1);
        with_cpu_f32(&[x, weight, &grad_res], "layer norm backward", |v| {
            let (xs, w, g) = (v[0], v[1], v[2]);
            Self::check(dim, w.len(), bias.elem_count())?;
            let (want_dx, want_dw, want_db) = (x.track_op(), weight.track_op(), bias.track_op());
            // One pass over fixed blocks of rows in parallel: each row's moments once, its dx,
            // and the block's partial dw/db, which are then summed in block order so that the
            // result does not depend on how rayon splits the work (resumed runs are compared bit
            // for bit with uninterrupted ones).
            const ROWS_PER_BLOCK: usize = 64;
            let block = dim * ROWS_PER_BLOCK;
            let mut dx = vec![0f32; if want_dx { xs.len() } else { 0 }];
            let mut dx_blocks: Vec<&mut [f32]> = dx.chunks_mut(block).collect();
            dx_blocks.resize_with(xs.len().div_ceil(block), Default::default);
            let partials: Vec<(Vec<f32>, Vec<f32>)> = dx_blocks
                .into_par_iter()
                .zip(xs.par_chunks(block).zip(g.par_chunks(block)))
                .map(|(dxb, (xb, gb))| {
                    let (mut dw, mut db) = (vec![0f32; dim], vec![0f32; dim]);
                    for (r, (x, g)) in xb.chunks_exact(dim).zip(gb.chunks_exact(dim)).enumerate() {
                        let (mean, rstd) = self.moments(x);
                        if want_dw || want_db {
                            for (((dwv, dbv), &xv), &gv) in
                                dw.iter_mut().zip(db.iter_mut()).zip(x).zip(g)
                            {
                                *dwv += gv * (xv - mean) * rstd;
                                *dbv += gv;
                            }
                        }
                        if want_dx {
                            let n = dim as f32;
                            let (mut mean_g, mut mean_gx) = (0f32, 0f32);
                            for ((&xv, &gv), &wv) in x.iter().zip(g).zip(w) {
                                let gh = gv * wv;
                                mean_g += gh;
                                mean_gx += gh * (xv - mean) * rstd;
                            }
                            let (mean_g, mean_gx) = (mean_g / n, mean_gx / n);
                            let row = &mut dxb[r * dim..(r + 1) * dim];
                            for (((d, &xv), &gv), &wv) in row.iter_mut().zip(x).zip(g).zip(w) {
                                let xhat = (xv - mean) * rstd;
                                *d = rstd * (gv * wv - mean_g - xhat * mean_gx);
                            }
                        }
                    }
                    (dw, db)
                })
                .collect();
            let (mut dw, mut db) = (vec![0f32; dim], vec![0f32; dim]);
            for (pw, pb) in partials {
                dw.iter_mut().zip(pw).for_each(|(a, b)| *a += b);
                db.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
            }
            let dev = x.device();
            let dx = want_dx
                .then(|| Tensor::from_vec(dx, x.shape(), dev))
                .transpose()?;
            let dw = want_dw
                .then(|| Tensor::from_vec(dw, weight.shape(), dev))
                .transpose()?;
            let db = want_db
                .then(|| Tensor::from_vec(db, bias.shape(), dev))
                .transpose()?;
            Ok((dx, dw, db))
        })
    }
}

/// Softmax over the last dimension with an explicit gradient policy.
///
/// On the tracked path, f32 CPU tensors go through [`SoftmaxWithBackward`]: one fused kernel that
/// keeps only its output for the backward pass. Composing it from `exp`, `sum` and `div` (the
/// fallback for other dtypes and devices) keeps three `[.., N, N]` intermediates alive per
/// attention map, which is what made a batch of 8 at 37x37 tokens run out of memory in training.
pub fn softmax_last_dim(x: &Tensor, grad: Grad) -> Result<Tensor> {
    match grad {
        Grad::Frozen if x.is_contiguous() => candle_nn::ops::softmax_last_dim(x),
        Grad::Tracked if x.dtype() == DType::F32 && x.device().is_cpu() => {
            x.contiguous()?.apply_op1(SoftmaxWithBackward)
        }
        _ => candle_nn::ops::softmax(x, D::Minus1),
    }
}

/// Softmax over the last dimension with an analytic backward:
/// `dx = y ⊙ (dy − Σ_j dy_j y_j)`, computed from the saved output `y` alone.
#[derive(Debug, Clone, Copy)]
pub struct SoftmaxWithBackward;

impl candle_core::CustomOp1 for SoftmaxWithBackward {
    fn name(&self) -> &'static str {
        "softmax-last-dim-with-backward"
    }

    fn cpu_fwd(
        &self,
        storage: &candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        use rayon::prelude::*;
        let input = cpu_f32(storage, layout, "softmax-with-backward")?;
        let dim = layout.dims().last().copied().unwrap_or(1).max(1);
        let mut out = vec![0f32; input.len()];
        out.par_chunks_mut(dim)
            .zip(input.par_chunks(dim))
            .for_each(|(dst, src)| {
                let max = src.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f32;
                for (d, &s) in dst.iter_mut().zip(src) {
                    *d = (s - max).exp();
                    sum += *d;
                }
                let inv = 1.0 / sum;
                dst.iter_mut().for_each(|d| *d *= inv);
            });
        Ok((candle_core::CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let dot = (grad_res * res)?.sum_keepdim(D::Minus1)?;
        Ok(Some(res.mul(&grad_res.broadcast_sub(&dot)?)?))
    }
}

/// Scaled dot-product attention on `[batch, heads, tokens, head_dim]` tensors.
///
/// `mask` is added to the logits (e.g. `-inf` above the diagonal for causal text attention).
/// Unmasked f32 attention on the CPU runs as one fused op (`nn/attention_cpu.rs`) that never
/// materialises a `[tokens x tokens]` tensor, in either direction; the rest is composed from
/// candle ops. [`multi_head_attention`] takes the projections as they come out of a linear
/// layer and saves the head split and merge copies.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    grad: Grad,
) -> Result<Tensor> {
    if mask.is_none() && fused_applies(&[q, k, v]) {
        return FusedAttention::new(q.dim(D::Minus1)?, None).apply(q, k, v);
    }
    composed_attention(q, k, v, mask, grad)
}

/// Multi-head attention on projections laid out `[batch, tokens, heads * head_dim]` (q and k)
/// and `[batch, tokens, heads * value_dim]` (v), the output laid out likewise
/// (`[batch, queries, heads * value_dim]`, ready for the output projection).
///
/// The fused path reads and writes that layout in place; the composed one splits the heads
/// into `[batch, heads, tokens, dim]` copies and merges them back.
pub fn multi_head_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    mask: Option<&Tensor>,
    grad: Grad,
) -> Result<Tensor> {
    let width = q.dim(D::Minus1)?;
    if heads == 0 || width % heads != 0 || v.dim(D::Minus1)? % heads != 0 {
        return Err(candle_core::Error::Msg(format!(
            "multi-head attention: {heads} heads do not divide q width {width} and v width {}",
            v.dim(D::Minus1)?
        )));
    }
    if mask.is_none() && q.rank() == 3 && fused_applies(&[q, k, v]) {
        return FusedAttention::new(width / heads, Some(heads)).apply(q, k, v);
    }
    let out = composed_attention(
        &split_heads(q, heads)?,
        &split_heads(k, heads)?,
        &split_heads(v, heads)?,
        mask,
        grad,
    )?;
    merge_heads(&out)
}

/// Whether the fused CPU kernel can take these tensors.
fn fused_applies(ts: &[&Tensor]) -> bool {
    ts.iter()
        .all(|t| t.dtype() == DType::F32 && t.device().is_cpu())
}

fn composed_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    grad: Grad,
) -> Result<Tensor> {
    let head_dim = q.dim(D::Minus1)?;
    let scale = 1.0 / (head_dim as f64).sqrt();
    // Scale q, not the [tokens x tokens] logits: N/head_dim times fewer multiplies (21x for
    // ViT-L at 518 px). The transposed k is read through strides (gemm takes either layout).
    let logits = (q * scale)?.contiguous()?.matmul(&k.contiguous()?.t()?)?;
    let logits = match mask {
        Some(m) => logits.broadcast_add(m)?,
        None => logits,
    };
    softmax_last_dim(&logits, grad)?.matmul(&v.contiguous()?)
}

/// Unmasked softmax attention as one op (`nn/attention_cpu.rs`): the forward pass keeps no
/// `[tokens x tokens]` map, and the backward pass recomputes the probabilities block by block.
/// Composed from candle ops, the head's cross-attentions over 37x37 tokens kept 8 such maps per
/// image alive for the backward pass and made a training batch of 8 outgrow a 24 GB machine.
#[derive(Debug, Clone, Copy)]
struct FusedAttention {
    scale: f64,
    /// `Some(heads)`: inputs laid out `[batch, tokens, heads * dim]`; `None`:
    /// `[.., tokens, dim]` with every leading dimension an independent problem.
    packed_heads: Option<usize>,
}

impl FusedAttention {
    fn new(head_dim: usize, packed_heads: Option<usize>) -> Self {
        Self {
            scale: 1.0 / (head_dim as f64).sqrt(),
            packed_heads,
        }
    }

    fn apply(self, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
        q.contiguous()?
            .apply_op3(&k.contiguous()?, &v.contiguous()?, self)
    }

    /// The shapes of a call on `q [.., Nq, d]`, `k [.., Nk, d]`, `v [.., Nk, dv]` (widths
    /// `heads * d` and `heads * dv` when the heads are packed).
    fn dims(
        &self,
        q: &candle_core::Shape,
        k: &candle_core::Shape,
        v: &candle_core::Shape,
    ) -> Result<attention_cpu::Dims> {
        let (qd, kd, vd) = (q.dims(), k.dims(), v.dims());
        let r = qd.len();
        let fits = r >= 2
            && kd.len() == r
            && vd.len() == r
            && qd[..r - 2] == kd[..r - 2]
            && kd[..r - 1] == vd[..r - 1]
            && qd[r - 1] == kd[r - 1];
        let heads = self.packed_heads.unwrap_or(1);
        if !fits
            || (self.packed_heads.is_some() && r != 3)
            || qd[r - 1] % heads != 0
            || vd[r - 1] % heads != 0
        {
            return Err(candle_core::Error::Msg(format!(
                "attention shapes do not fit: q {qd:?}, k {kd:?}, v {vd:?} ({heads} heads)"
            )));
        }
        Ok(attention_cpu::Dims {
            batch: qd[..r - 2].iter().product(),
            heads,
            queries: qd[r - 2],
            keys: kd[r - 2],
            dim: qd[r - 1] / heads,
            value_dim: vd[r - 1] / heads,
            packed_heads: self.packed_heads.is_some(),
        })
    }
}

impl candle_core::CustomOp3 for FusedAttention {
    fn name(&self) -> &'static str {
        "fused-attention"
    }

    fn cpu_fwd(
        &self,
        s1: &candle_core::CpuStorage,
        l1: &candle_core::Layout,
        s2: &candle_core::CpuStorage,
        l2: &candle_core::Layout,
        s3: &candle_core::CpuStorage,
        l3: &candle_core::Layout,
    ) -> Result<(candle_core::CpuStorage, candle_core::Shape)> {
        let dims = self.dims(l1.shape(), l2.shape(), l3.shape())?;
        let out = attention_cpu::forward(
            cpu_f32(s1, l1, "fused attention")?,
            cpu_f32(s2, l2, "fused attention")?,
            cpu_f32(s3, l3, "fused attention")?,
            dims,
            self.scale as f32,
        )?;
        let mut shape = l1.dims().to_vec();
        *shape.last_mut().expect("rank checked") = dims.value_dim * dims.heads;
        Ok((candle_core::CpuStorage::F32(out), shape.into()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad_out: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let grad_out = grad_out.contiguous()?;
        let dims = self.dims(q.shape(), k.shape(), v.shape())?;
        let (dq, dk, dv) = with_cpu_f32(&[q, k, v, &grad_out], "fused attention", |t| {
            attention_cpu::backward(t[0], t[1], t[2], t[3], dims, self.scale as f32)
        })?;
        let dev = q.device();
        Ok((
            Some(Tensor::from_vec(dq, q.shape(), dev)?),
            Some(Tensor::from_vec(dk, k.shape(), dev)?),
            Some(Tensor::from_vec(dv, v.shape(), dev)?),
        ))
    }
}

/// `x · sigmoid(1.702 x)`, the activation of OpenAI CLIP.
pub fn quick_gelu(x: &Tensor) -> Result<Tensor> {
    x * candle_nn::ops::sigmoid(&(x * 1.702)?)?
}

/// Splits `[batch, tokens, heads*head_dim]` into `[batch, heads, tokens, head_dim]`.
pub fn split_heads(x: &Tensor, heads: usize) -> Result<Tensor> {
    let (b, n, width) = x.dims3()?;
    x.reshape((b, n, heads, width / heads))?.transpose(1, 2)
}

/// Inverse of [`split_heads`].
pub fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (b, h, n, d) = x.dims4()?;
    x.transpose(1, 2)?.reshape((b, n, h * d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_abs(t: &Tensor) -> f32 {
        t.abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// `sin(0.37·i + shift)` laid out in `shape`: deterministic, varied test values.
    fn wave(shape: impl Into<candle_core::Shape>, shift: f32) -> Tensor {
        let shape = shape.into();
        let values: Vec<f32> = (0..shape.elem_count())
            .map(|i| (i as f32 * 0.37 + shift).sin())
            .collect();
        Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
    }

    fn wave_var(shape: impl Into<candle_core::Shape>, shift: f32) -> Var {
        Var::from_tensor(&wave(shape, shift)).unwrap()
    }

    /// The gradients of `vars` in `got` equal those in `expected` within `tol` relative to
    /// `max(|expected|, 1)`, and are not all zero.
    fn assert_same_grads(
        got: &candle_core::backprop::GradStore,
        expected: &candle_core::backprop::GradStore,
        vars: &[&Var],
        tol: f32,
    ) {
        for (i, v) in vars.iter().enumerate() {
            let (a, e) = (got.get(v).unwrap(), expected.get(v).unwrap());
            let diff = max_abs(&(a - e).unwrap());
            assert!(diff < tol * max_abs(e).max(1.0), "input {i}: {diff}");
            assert!(max_abs(a) > 1e-3, "input {i} got no gradient");
        }
    }

    /// The fused attention equals the composed attention in value and in the gradients of q,
    /// k and v.
    #[test]
    fn fused_attention_matches_the_composed_one_with_gradients() {
        let shape = (2, 3, 9, 4);
        let (q, k, v) = (
            wave_var(shape, 0.1),
            wave_var(shape, 1.3),
            wave_var(shape, 2.9),
        );
        let w = wave(shape, 4.2);
        let recomputed = attention(
            q.as_tensor(),
            k.as_tensor(),
            v.as_tensor(),
            None,
            Grad::Tracked,
        )
        .unwrap();
        let logits = (q.as_tensor() * 0.5)
            .unwrap()
            .matmul(&k.as_tensor().t().unwrap())
            .unwrap();
        let composed = candle_nn::ops::softmax(&logits, D::Minus1)
            .unwrap()
            .matmul(v.as_tensor())
            .unwrap();
        assert!(max_abs(&(&recomputed - &composed).unwrap()) < 1e-6);
        let loss = |t: Tensor| (t * &w).unwrap().sum_all().unwrap().backward().unwrap();
        assert_same_grads(&loss(recomputed), &loss(composed), &[&q, &k, &v], 1e-5);
    }

    /// The f32 CPU linear op equals candle's matmul in value and gradients, and leaves out the
    /// gradient of an input that is not part of the graph.
    #[test]
    fn linear_matches_matmul_with_gradients_and_skips_untracked_inputs() {
        let (x, w, b) = (
            wave_var((2, 3, 5), 0.3),
            wave_var((4, 5), 1.7),
            wave_var(4, 2.2),
        );
        let g = wave((2, 3, 4), 0.9);
        let lin = Linear::new(w.as_tensor().clone(), Some(b.as_tensor().clone()));
        let fused = lin.forward(x.as_tensor()).unwrap();
        let plain = x
            .as_tensor()
            .broadcast_matmul(&w.as_tensor().t().unwrap())
            .unwrap()
            .broadcast_add(b.as_tensor())
            .unwrap();
        assert!(max_abs(&(&fused - &plain).unwrap()) < 1e-6);
        let loss = |t: &Tensor| (t * &g).unwrap().sum_all().unwrap();
        let (g1, g2) = (
            loss(&fused).backward().unwrap(),
            loss(&plain).backward().unwrap(),
        );
        assert_same_grads(&g1, &g2, &[&x, &w, &b], 1e-5);
        // A plain (untracked) input gets no gradient; the weight still does.
        let input = x.as_tensor().detach();
        let grads = loss(&lin.forward(&input).unwrap()).backward().unwrap();
        assert!(grads.get(&input).is_none());
        let (a, e) = (grads.get(&w).unwrap(), g2.get(&w).unwrap());
        assert!(max_abs(&(a - e).unwrap()) < 1e-5);
    }

    /// The bias written first and the product accumulated onto it equal the product plus the
    /// bias, also when the product runs over several of the kernel's depth blocks (700 inputs).
    #[test]
    fn linear_with_bias_accumulates_over_deep_products() {
        let (x, w, b) = (wave((33, 700), 0.3), wave((300, 700), 1.7), wave(300, 2.2));
        let fused = Linear::new(w.clone(), Some(b.clone())).forward(&x).unwrap();
        let plain = x
            .matmul(&w.t().unwrap())
            .unwrap()
            .broadcast_add(&b)
            .unwrap();
        let scale = max_abs(&plain);
        assert!(max_abs(&(&fused - &plain).unwrap()) < 1e-5 * scale);
    }

    /// The packed-heads path equals splitting the heads, attending and merging them back, in
    /// value and in the gradients of q, k and v (queries != keys, value width != key width).
    #[test]
    fn multi_head_attention_on_packed_heads_matches_split_heads() {
        let (q, k, v) = (
            wave_var((2, 7, 12), 0.2),
            wave_var((2, 5, 12), 1.4),
            wave_var((2, 5, 9), 2.6),
        );
        let w = wave((2, 7, 9), 3.3);
        let packed = multi_head_attention(
            q.as_tensor(),
            k.as_tensor(),
            v.as_tensor(),
            3,
            None,
            Grad::Tracked,
        )
        .unwrap();
        let split = merge_heads(
            &composed_attention(
                &split_heads(q.as_tensor(), 3).unwrap(),
                &split_heads(k.as_tensor(), 3).unwrap(),
                &split_heads(v.as_tensor(), 3).unwrap(),
                None,
                Grad::Tracked,
            )
            .unwrap(),
        )
        .unwrap();
        assert_eq!(packed.dims(), &[2, 7, 9]);
        assert!(max_abs(&(&packed - &split).unwrap()) < 1e-6);
        let loss = |t: Tensor| (t * &w).unwrap().sum_all().unwrap().backward().unwrap();
        assert_same_grads(&loss(packed), &loss(split), &[&q, &k, &v], 1e-5);
        let err = multi_head_attention(
            q.as_tensor(),
            k.as_tensor(),
            v.as_tensor(),
            5,
            None,
            Grad::Frozen,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("5 heads do not divide"), "{err}");
    }

    /// The fused normalisation equals the composed LayerNorm in value and in the gradients of
    /// the input, the weight and the bias.
    #[test]
    fn fused_layer_norm_matches_the_composed_one_with_gradients() {
        // Rows with a non-zero mean, so the centring matters.
        let x = Var::from_tensor(&wave((4, 6, 10), 0.1).affine(2.0, 0.3).unwrap()).unwrap();
        let (w, b) = (wave_var(10, 1.0), wave_var(10, 2.0));
        let g = wave((4, 6, 10), 3.0);
        let fused =
            layer_norm_differentiable(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5).unwrap();
        // The composed path, forced through f64 (the fused op only takes f32).
        let composed = layer_norm_differentiable(
            &x.as_tensor().to_dtype(DType::F64).unwrap(),
            &w.as_tensor().to_dtype(DType::F64).unwrap(),
            &b.as_tensor().to_dtype(DType::F64).unwrap(),
            1e-5,
        )
        .unwrap()
        .to_dtype(DType::F32)
        .unwrap();
        assert!(max_abs(&(&fused - &composed).unwrap()) < 1e-5);
        let loss = |t: &Tensor| (t * &g).unwrap().sum_all().unwrap();
        let (g1, g2) = (
            loss(&fused).backward().unwrap(),
            loss(&composed).backward().unwrap(),
        );
        assert_same_grads(&g1, &g2, &[&x, &w, &b], 1e-4);
    }

    /// The fused ops' gradients do not depend on how the work is split across threads: a
    /// resumed training run must equal an uninterrupted one bit for bit.
    #[test]
    fn fused_gradients_are_identical_for_any_thread_count() {
        let run = || {
            let x = wave_var((3, 100, 48), 0.2);
            let (w, b) = (wave_var(48, 1.2), wave_var(48, 2.2));
            let lw = wave_var((48, 48), 3.2);
            let y = layer_norm_differentiable(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5)
                .unwrap();
            let y = Linear::new(lw.as_tensor().clone(), None)
                .forward(&y)
                .unwrap();
            let y = multi_head_attention(&y, &y, &y, 4, None, Grad::Tracked).unwrap();
            let grads = (y * 0.5)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .backward()
                .unwrap();
            [&x, &w, &b, &lw].map(|v| {
                grads
                    .get(v)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap()
            })
        };
        let with_threads = |n: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .unwrap()
                .install(run)
        };
        let one = with_threads(1);
        for n in [2, 3, 5] {
            assert!(one == with_threads(n), "gradients differ with {n} threads");
        }
    }

    /// The fused tracked softmax equals candle's composed softmax in value and in input gradient
    /// (including a -inf masked entry, as causal attention produces).
    #[test]
    fn tracked_softmax_matches_the_composed_one_with_gradients() {
        let dev = Device::Cpu;
        let values: Vec<f32> = (0..2 * 3 * 7)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.7)
            .collect();
        let mut masked = values.clone();
        masked[3] = f32::NEG_INFINITY;
        let x = Var::from_vec(masked, (2, 3, 7), &dev).unwrap();
        let w = Tensor::from_vec(
            (0..42)
                .map(|i| (i as f32 * 0.3).sin())
                .collect::<Vec<f32>>(),
            (2, 3, 7),
            &dev,
        )
        .unwrap();
        let fused = softmax_last_dim(x.as_tensor(), Grad::Tracked).unwrap();
        let composed = candle_nn::ops::softmax(x.as_tensor(), D::Minus1).unwrap();
        let max_diff = |a: &Tensor, b: &Tensor| {
            (a - b)
                .unwrap()
                .abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        assert!(max_diff(&fused, &composed) < 1e-6);
        let g_fused = (fused * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let g_composed = (composed * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let (a, b) = (g_fused.get(&x).unwrap(), g_composed.get(&x).unwrap());
        assert!(max_diff(a, b) < 1e-6, "{}", max_diff(a, b));
        assert!(
            a.abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 0.1
        );
    }
}
