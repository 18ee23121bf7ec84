//! The one place that maps foreign DINOv3 checkpoint spellings onto the canonical Hugging Face
//! names that the modules read (`embeddings.cls_token`, `layer.N.attention.q_proj.weight`, ...).
//!
//! Three spellings exist:
//! - Hugging Face `model.safetensors` as written by `save_pretrained`: `layer.N.…` (canonical).
//! - transformers ≥ 5 in-memory / `state_dict()` names: `model.layer.N.…` (also `model.embeddings`
//!   and `model.norm` in case a tool writes the whole tree with the prefix).
//! - Meta `.pth` (`dinov3/models/vision_transformer.py`): `blocks.N.…` with a fused qkv projection,
//!   `ls1.gamma`, `storage_tokens`, and SwiGLU weights called `w1/w2/w3`.

use candle_core::Tensor;

pub use crate::weights::NameScheme;
use crate::weights::{Checkpoint, Renames};
use crate::{Error, Result};

/// DINOv3's renaming: `layer.N.…` (Hugging Face) kept, `model.layer.N.…` (transformers 5) and
/// `blocks.N.…` (Meta) mapped onto it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Dinov3Names;

impl Renames for Dinov3Names {
    fn detect(checkpoint: &Checkpoint) -> Result<NameScheme> {
        detect_scheme(checkpoint)
    }

    fn to_canonical(checkpoint: Checkpoint) -> Result<(Checkpoint, NameScheme)> {
        to_canonical(checkpoint)
    }
}

/// Tells the spelling from the names alone: [`NameScheme::HuggingFace`],
/// [`NameScheme::HuggingFaceModelPrefix`] or [`NameScheme::Meta`].
pub fn detect_scheme(checkpoint: &Checkpoint) -> Result<NameScheme> {
    let mut hf = false;
    let mut hf_prefixed = false;
    for name in checkpoint.names() {
        if name.starts_with("blocks.") || name == "storage_tokens" {
            return Ok(NameScheme::Meta);
        }
        hf_prefixed |= name.starts_with("model.layer.");
        hf |= name.starts_with("layer.") || name.starts_with("embeddings.");
    }
    match (hf, hf_prefixed) {
        (_, true) => Ok(NameScheme::HuggingFaceModelPrefix),
        (true, false) => Ok(NameScheme::HuggingFace),
        (false, false) => {
            let mut sample: Vec<&str> = checkpoint.names().collect();
            sample.sort_unstable();
            sample.truncate(6);
            Err(Error::format(format!(
                "checkpoint {} does not look like a DINOv3 ViT: no `blocks.N.*` (Meta) or \
                 `layer.N.*` (Hugging Face) tensors; it holds e.g. {}",
                checkpoint.origin(),
                sample.join(", ")
            )))
        }
    }
}

/// Renames every tensor onto the canonical names, splitting and masking where Meta's layout
/// differs. Tensors the model never reads at inference are dropped.
pub fn to_canonical(checkpoint: Checkpoint) -> Result<(Checkpoint, NameScheme)> {
    let scheme = detect_scheme(&checkpoint)?;
    let canonical = match scheme {
        NameScheme::Meta => meta_to_canonical(checkpoint)?,
        // Detection gives only the two Hugging Face spellings otherwise.
        _ => checkpoint.rename(|name| Some(strip_model_prefix(name).to_string())),
    };
    Ok((canonical, scheme))
}

/// `model.layer.3.norm1.weight` -> `layer.3.norm1.weight`; other names unchanged.
fn strip_model_prefix(name: &str) -> &str {
    match name.strip_prefix("model.") {
        Some(rest)
            if rest.starts_with("layer.")
                || rest.starts_with("embeddings.")
                || rest.starts_with("norm.") =>
        {
            rest
        }
        _ => name,
    }
}

fn meta_to_canonical(mut ckpt: Checkpoint) -> Result<Checkpoint> {
    let blocks: Vec<usize> = (0..)
        .take_while(|i| ckpt.contains(&format!("blocks.{i}.norm1.weight")))
        .collect();
    for i in &blocks {
        split_qkv(&mut ckpt, *i)?;
        split_fused_swiglu(&mut ckpt, *i)?;
    }
    // Meta keeps the mask token as [1, D]; Hugging Face as [1, 1, D]. Inference never reads it,
    // but a renamed checkpoint should have the canonical shape.
    if let Some(mask) = ckpt.remove("mask_token") {
        let mask = if mask.rank() == 2 {
            mask.unsqueeze(0)?
        } else {
            mask
        };
        ckpt.insert("embeddings.mask_token", mask);
    }
    // The MLP naming trap: `up_proj` is fc1 for plain MLPs but w2 (not w1) for SwiGLU.
    Ok(ckpt.rename(meta_name))
}

/// Splits `blocks.N.attn.qkv` ([3D, D] weight, [3D] bias) into thirds. The K third of the bias is
/// never used: Meta masks it to zero (`bias_mask`) in every forward, so the stored values are
/// whatever training left there and must not reach the model.
fn split_qkv(ckpt: &mut Checkpoint, block: usize) -> Result<()> {
    let prefix = format!("blocks.{block}.attn.qkv");
    let out = format!("layer.{block}.attention");
    let weight = ckpt.take(&format!("{prefix}.weight"))?;
    let width = thirds(&weight, &format!("{prefix}.weight"), ckpt.origin())?;
    for (i, proj) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
        let part = weight.narrow(0, i * width, width)?.contiguous()?;
        ckpt.insert(format!("{out}.{proj}.weight"), part);
    }
    let mask = ckpt.remove(&format!("{prefix}.bias_mask"));
    if let Some(bias) = ckpt.remove(&format!("{prefix}.bias")) {
        thirds(&bias, &format!("{prefix}.bias"), ckpt.origin())?;
        // Apply the mask as Meta does; the K third is dropped below in any case.
        let bias = match mask {
            Some(mask) => bias.mul(&mask.to_dtype(bias.dtype())?)?,
            None => bias,
        };
        for (i, proj) in [(0, "q_proj"), (2, "v_proj")] {
            let part = bias.narrow(0, i * width, width)?.contiguous()?;
            ckpt.insert(format!("{out}.{proj}.bias"), part);
        }
    }
    Ok(())
}

fn thirds(t: &Tensor, name: &str, origin: &str) -> Result<usize> {
    let rows = t.dims().first().copied().unwrap_or(0);
    if rows == 0 || !rows.is_multiple_of(3) {
        return Err(Error::format(format!(
            "tensor `{name}` in {origin} has shape {:?}: a fused qkv needs a first dim divisible by 3",
            t.dims()
        )));
    }
    Ok(rows / 3)
}

/// Some SwiGLU variants fuse w1 and w2 into `w12` ([2H, D]): first half gate, second half up.
fn split_fused_swiglu(ckpt: &mut Checkpoint, block: usize) -> Result<()> {
    for suffix in ["weight", "bias"] {
        let name = format!("blocks.{block}.mlp.w12.{suffix}");
        if let Some(fused) = ckpt.remove(&name) {
            let half = fused.dim(0)? / 2;
            ckpt.insert(
                format!("blocks.{block}.mlp.w1.{suffix}"),
                fused.narrow(0, 0, half)?.contiguous()?,
            );
            ckpt.insert(
                format!("blocks.{block}.mlp.w2.{suffix}"),
                fused.narrow(0, half, half)?.contiguous()?,
            );
        }
    }
    Ok(())
}

/// The name-only part of the Meta mapping; `None` drops the tensor.
fn meta_name(name: &str) -> Option<String> {
    match name {
        "cls_token" => return Some("embeddings.cls_token".into()),
        "storage_tokens" => return Some("embeddings.register_tokens".into()),
        "patch_embed.proj.weight" => return Some("embeddings.patch_embeddings.weight".into()),
        "patch_embed.proj.bias" => return Some("embeddings.patch_embeddings.bias".into()),
        "norm.weight" | "norm.bias" => return Some(name.into()),
        // RoPE periods are recomputed from the base; the untied norms serve training only.
        "rope_embed.periods" => return None,
        _ => {}
    }
    if name.starts_with("local_cls_norm.") {
        return None;
    }
    if let Some(rest) = name.strip_prefix("blocks.") {
        let (index, sub) = rest.split_once('.')?;
        let sub = match sub {
            "ls1.gamma" => "layer_scale1.lambda1",
            "ls2.gamma" => "layer_scale2.lambda1",
            "attn.proj.weight" => "attention.o_proj.weight",
            "attn.proj.bias" => "attention.o_proj.bias",
            "mlp.fc1.weight" => "mlp.up_proj.weight",
            "mlp.fc1.bias" => "mlp.up_proj.bias",
            "mlp.fc2.weight" => "mlp.down_proj.weight",
            "mlp.fc2.bias" => "mlp.down_proj.bias",
            "mlp.w1.weight" => "mlp.gate_proj.weight",
            "mlp.w1.bias" => "mlp.gate_proj.bias",
            "mlp.w2.weight" => "mlp.up_proj.weight",
            "mlp.w2.bias" => "mlp.up_proj.bias",
            "mlp.w3.weight" => "mlp.down_proj.weight",
            "mlp.w3.bias" => "mlp.down_proj.bias",
            norm if norm.starts_with("norm1.") || norm.starts_with("norm2.") => norm,
            _ => return None,
        };
        return Some(format!("layer.{index}.{sub}"));
    }
    // Already split by `split_qkv`, or the mask token moved above.
    if name.starts_with("layer.") || name.starts_with("embeddings.") {
        return Some(name.into());
    }
    None
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use candle_core::{DType, Device, Tensor};

    use super::*;

    fn ckpt(names: &[(&str, Tensor)]) -> Checkpoint {
        let map: HashMap<String, Tensor> = names
            .iter()
            .map(|(n, t)| (n.to_string(), t.clone()))
            .collect();
        Checkpoint::from_tensors("test", map)
    }

    #[test]
    fn meta_qkv_is_split_and_the_k_bias_is_dropped() {
        let dev = Device::Cpu;
        let d = 2;
        let w = Tensor::arange(0f32, 12., &dev)
            .unwrap()
            .reshape((3 * d, d))
            .unwrap();
        let b = Tensor::new(&[1f32, 2., 30., 40., 5., 6.], &dev).unwrap();
        let mask = Tensor::new(&[1f32, 1., 0., 0., 1., 1.], &dev).unwrap();
        let one = Tensor::ones(d, DType::F32, &dev).unwrap();
        let c = ckpt(&[
            ("blocks.0.norm1.weight", one.clone()),
            ("blocks.0.attn.qkv.weight", w),
            ("blocks.0.attn.qkv.bias", b),
            ("blocks.0.attn.qkv.bias_mask", mask),
            ("blocks.0.ls1.gamma", one.clone()),
            ("blocks.0.mlp.w1.weight", one.clone()),
            ("blocks.0.mlp.w2.weight", one.clone()),
            ("blocks.0.mlp.w3.weight", one.clone()),
            (
                "mask_token",
                Tensor::zeros((1, d), DType::F32, &dev).unwrap(),
            ),
            ("rope_embed.periods", one.clone()),
            ("local_cls_norm.weight", one),
        ]);
        let (c, scheme) = to_canonical(c).unwrap();
        assert_eq!(scheme, NameScheme::Meta);
        let get = |n: &str| {
            c.get(n)
                .unwrap_or_else(|| panic!("{n}"))
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        };
        assert_eq!(get("layer.0.attention.q_proj.weight"), vec![0., 1., 2., 3.]);
        assert_eq!(get("layer.0.attention.k_proj.weight"), vec![4., 5., 6., 7.]);
        assert_eq!(
            get("layer.0.attention.v_proj.weight"),
            vec![8., 9., 10., 11.]
        );
        assert_eq!(get("layer.0.attention.q_proj.bias"), vec![1., 2.]);
        assert_eq!(get("layer.0.attention.v_proj.bias"), vec![5., 6.]);
        assert!(!c.contains("layer.0.attention.k_proj.bias"));
        for n in [
            "layer.0.mlp.gate_proj.weight",
            "layer.0.mlp.up_proj.weight",
            "layer.0.mlp.down_proj.weight",
            "layer.0.layer_scale1.lambda1",
        ] {
            assert!(c.contains(n), "{n}");
        }
        assert_eq!(c.get("embeddings.mask_token").unwrap().dims(), &[1, 1, d]);
        assert!(!c
            .names()
            .any(|n| n.contains("periods") || n.contains("local_cls") || n.contains("bias_mask")));
    }

    #[test]
    fn hf_prefixes_are_stripped_and_unknown_files_rejected() {
        let t = Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap();
        let c = ckpt(&[
            ("model.layer.0.norm1.weight", t.clone()),
            ("model.embeddings.cls_token", t.clone()),
            ("embeddings.register_tokens", t.clone()),
            ("model.norm.bias", t.clone()),
        ]);
        let (c, scheme) = to_canonical(c).unwrap();
        assert_eq!(scheme, NameScheme::HuggingFaceModelPrefix);
        let mut names: Vec<_> = c.names().collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "embeddings.cls_token",
                "embeddings.register_tokens",
                "layer.0.norm1.weight",
                "norm.bias"
            ]
        );
        let Err(err) = to_canonical(ckpt(&[("visual.conv1.weight", t)])) else {
            panic!("a CLIP checkpoint was taken for DINOv3");
        };
        assert!(err.to_string().contains("visual.conv1.weight"), "{err}");
    }
}
