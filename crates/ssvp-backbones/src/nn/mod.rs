//! The few building blocks every transformer here shares, in one place so that the hot path
//! (matmuls and attention) can be measured and swapped without touching the models.
//!
//! Two kinds of path exist. Frozen vision towers run inference only and may use candle's fused
//! kernels. Anything that must carry gradients (the text tower with learnable prompts, and the
//! SSVP head) has to use autograd-capable ops: candle's fused `layer_norm` and
//! `softmax_last_dim` have no backward and silently cut the graph (framework-notes.md). The
//! [`Grad`] switch makes that choice explicit at every call.

mod attention_cpu;

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
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self { weight, bias }
    }

    pub fn load(vb: VarBuilder, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = if bias {
            Some(vb.get(out_dim, "bias")?)
        } else {
            None
        };
        Ok(Self { weight, bias })
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

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
        let y = x.reshape((rows, in_dim))?.matmul(&self.weight.t()?)?;
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
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
    pub fn new(weight: Tensor, bias: Tensor, eps: f64) -> Self {
        Self { weight, bias, eps }
    }

    pub fn load(vb: VarBuilder, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            weight: vb.get(dim, "weight")?,
            bias: vb.get(dim, "bias")?,
            eps,
        })
    }

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

/// LayerNorm from elementary ops (two-pass mean/variance, computed in f32), so that autograd
/// sees every step.
pub fn layer_norm_differentiable(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    eps: f64,
) -> Result<Tensor> {
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
        let (start, end) = layout.contiguous_offsets().ok_or_else(|| {
            candle_core::Error::Msg("softmax-with-backward needs a contiguous input".into())
        })?;
        let input = match storage {
            candle_core::CpuStorage::F32(v) => &v[start..end],
            _ => {
                return Err(candle_core::Error::Msg(
                    "softmax-with-backward is f32 only".into(),
                ))
            }
        };
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
/// Unmasked f32 attention on the CPU (every vision tower and the SSVP head) runs as one fused
/// op ([`attention_cpu`]) that never materialises a `[tokens x tokens]` tensor, in either
/// direction; the rest is composed from candle ops.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    grad: Grad,
) -> Result<Tensor> {
    let head_dim = q.dim(D::Minus1)?;
    let scale = 1.0 / (head_dim as f64).sqrt();
    if mask.is_none()
        && [q, k, v]
            .iter()
            .all(|t| t.dtype() == DType::F32 && t.device().is_cpu())
    {
        return q.contiguous()?.apply_op3(
            &k.contiguous()?,
            &v.contiguous()?,
            FusedAttention { scale },
        );
    }
    // Scale q, not the [tokens x tokens] logits: N/head_dim times fewer multiplies (21x for
    // ViT-L at 518 px). The transposed k is read through strides (gemm takes either layout).
    let logits = (q * scale)?.contiguous()?.matmul(&k.contiguous()?.t()?)?;
    let logits = match mask {
        Some(m) => logits.broadcast_add(m)?,
        None => logits,
    };
    softmax_last_dim(&logits, grad)?.matmul(&v.contiguous()?)
}

/// Unmasked softmax attention as one op ([`attention_cpu`]): the forward pass keeps no
/// `[tokens x tokens]` map, and the backward pass recomputes the probabilities block by block.
/// Composed from candle ops, the head's cross-attentions over 37x37 tokens kept 8 such maps per
/// image alive for the backward pass and made a training batch of 8 outgrow a 24 GB machine.
#[derive(Debug, Clone, Copy)]
struct FusedAttention {
    scale: f64,
}

/// The shapes of an attention call on `q [.., Nq, d]`, `k [.., Nk, d]`, `v [.., Nk, dv]`.
fn attention_dims(
    q: &candle_core::Shape,
    k: &candle_core::Shape,
    v: &candle_core::Shape,
) -> Result<attention_cpu::Dims> {
    let (qd, kd, vd) = (q.dims(), k.dims(), v.dims());
    let r = qd.len();
    if r < 2
        || kd.len() != r
        || vd.len() != r
        || qd[..r - 2] != kd[..r - 2]
        || kd[..r - 1] != vd[..r - 1]
        || qd[r - 1] != kd[r - 1]
    {
        return Err(candle_core::Error::Msg(format!(
            "attention shapes do not fit: q {qd:?}, k {kd:?}, v {vd:?}"
        )));
    }
    Ok(attention_cpu::Dims {
        pairs: qd[..r - 2].iter().product(),
        queries: qd[r - 2],
        keys: kd[r - 2],
        dim: qd[r - 1],
        value_dim: vd[r - 1],
    })
}

/// The f32 values of a contiguous CPU storage.
fn cpu_f32<'a>(
    storage: &'a candle_core::CpuStorage,
    layout: &candle_core::Layout,
) -> Result<&'a [f32]> {
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg("fused attention needs contiguous inputs".into()))?;
    match storage {
        candle_core::CpuStorage::F32(v) => Ok(&v[start..end]),
        _ => Err(candle_core::Error::Msg(
            "fused attention is f32 only".into(),
        )),
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
        let dims = attention_dims(l1.shape(), l2.shape(), l3.shape())?;
        let out = attention_cpu::forward(
            cpu_f32(s1, l1)?,
            cpu_f32(s2, l2)?,
            cpu_f32(s3, l3)?,
            dims,
            self.scale as f32,
        )?;
        let mut shape = l1.dims().to_vec();
        *shape.last_mut().expect("rank checked") = dims.value_dim;
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
        let dims = attention_dims(q.shape(), k.shape(), v.shape())?;
        let guards = [q, k, v, &grad_out].map(|t| t.storage_and_layout());
        let mut slices = Vec::with_capacity(4);
        for (storage, layout) in &guards {
            match &**storage {
                candle_core::Storage::Cpu(s) => slices.push(cpu_f32(s, layout)?),
                _ => {
                    return Err(candle_core::Error::Msg(
                        "fused attention runs on the CPU only".into(),
                    ))
                }
            }
        }
        let (dq, dk, dv) = attention_cpu::backward(
            slices[0],
            slices[1],
            slices[2],
            slices[3],
            dims,
            self.scale as f32,
        )?;
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

    /// The fused attention equals the composed attention in value and in the gradients of q,
    /// k and v.
    #[test]
    fn fused_attention_matches_the_composed_one_with_gradients() {
        let dev = Device::Cpu;
        let var = |n: usize, shift: f32| {
            let values: Vec<f32> = (0..n)
                .map(|i| ((i as f32 * 0.37 + shift).sin()) * 1.5)
                .collect();
            Var::from_vec(values, (2, 3, 9, 4), &dev).unwrap()
        };
        let (q, k, v) = (var(216, 0.1), var(216, 1.3), var(216, 2.9));
        let w = Tensor::from_vec(
            (0..216)
                .map(|i| (i as f32 * 0.11).cos())
                .collect::<Vec<f32>>(),
            (2, 3, 9, 4),
            &dev,
        )
        .unwrap();
        // A transposed (non-contiguous) k exercises the contiguity handling too.
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
        let g1 = (recomputed * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let g2 = (composed * &w)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        for x in [&q, &k, &v] {
            let (a, b) = (g1.get(x).unwrap(), g2.get(x).unwrap());
            assert!(
                max_abs(&(a - b).unwrap()) < 1e-5 * max_abs(b).max(1.0),
                "{}",
                max_abs(&(a - b).unwrap())
            );
            assert!(max_abs(a) > 1e-3);
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
