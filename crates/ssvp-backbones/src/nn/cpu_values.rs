//! Raw access to the f32 values of CPU tensors, for the custom ops (the fused attention, linear,
//! LayerNorm and softmax here, the focal loss in `ssvp-model`): their forward passes receive
//! storages and layouts, their backward passes tensors.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Error, Layout, Result, Storage, Tensor};

/// The f32 values of a contiguous CPU storage; `op` names the caller in the error.
pub fn cpu_f32<'a>(storage: &'a CpuStorage, layout: &Layout, op: &str) -> Result<&'a [f32]> {
    let (start, end) = layout
        .contiguous_offsets()
        .ok_or_else(|| Error::Msg(format!("{op} needs contiguous inputs")))?;
    match storage {
        CpuStorage::F32(v) => Ok(&v[start..end]),
        other => Err(Error::Msg(format!(
            "{op} is f32 only, got {:?}",
            other.dtype()
        ))),
    }
}

/// Runs `f` on the f32 values of contiguous CPU tensors, in the order given (the storages stay
/// read-locked during the call).
pub fn with_cpu_f32<R>(
    tensors: &[&Tensor],
    op: &str,
    f: impl FnOnce(&[&[f32]]) -> Result<R>,
) -> Result<R> {
    let guards: Vec<_> = tensors.iter().map(|t| t.storage_and_layout()).collect();
    let slices = guards
        .iter()
        .map(|(storage, layout)| match &**storage {
            Storage::Cpu(s) => cpu_f32(s, layout, op),
            _ => Err(Error::Msg(format!("{op} runs on the CPU only"))),
        })
        .collect::<Result<Vec<_>>>()?;
    f(&slices)
}
