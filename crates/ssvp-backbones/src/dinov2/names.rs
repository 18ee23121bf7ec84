//! The one place that maps foreign DINOv2 checkpoint spellings onto the canonical names that the
//! modules read: those of the Hugging Face hub files (`embeddings.cls_token`,
//! `encoder.layer.N.attention.attention.query.weight`, `layernorm.weight`, ...;
//! docs/formats.md §6.3).
//!
//! The spellings:
//! - Hugging Face `model.safetensors`, as on the hub and as `save_pretrained` still writes them
//!   in transformers 5.23 (it converts back on save): canonical, reported as
//!   [`NameScheme::HuggingFace`].
//! - transformers ≥ 5 in-memory names (`state_dict()` of a loaded model, e.g. written with
//!   `torch.save`): `attention.{q,k,v,o}_proj` and, for SwiGLU, `mlp.{gate,up,down}_proj`.
//!   Also [`NameScheme::HuggingFace`]: the same tree, other leaf names.
//! - Any of the above under a task model's prefix (`dinov2.`, `dinov2_with_registers.`,
//!   e.g. `Dinov2ForImageClassification`, whose `classifier.*` is dropped):
//!   [`NameScheme::HuggingFaceModelPrefix`].
//! - Meta `.pth` (facebookresearch/dinov2 `vision_transformer.py`): `blocks.N.…` with a fused
//!   qkv projection, `ls1.gamma`, `pos_embed`, `norm`, SwiGLU as `w12`/`w3` (or unpacked
//!   `w1`/`w2`/`w3`), and chunked training checkpoints' `blocks.C.N.…`: [`NameScheme::Meta`].

use candle_core::Tensor;

pub use crate::weights::NameScheme;
use crate::weights::{Checkpoint, Renames};
use crate::{Error, Result};

/// DINOv2's renaming onto the hub names (see the module docs for the spellings).
#[derive(Debug, Clone, Copy, Default)]
pub struct Dinov2Names;

impl Renames for Dinov2Names {
    fn detect(checkpoint: &Checkpoint) -> Result<NameScheme> {
        detect_scheme(checkpoint)
    }

    fn to_canonical(checkpoint: Checkpoint) -> Result<(Checkpoint, NameScheme)> {
        to_canonical(checkpoint)
    }
}

/// Task-model prefixes in front of the base model's names.
const PREFIXES: [&str; 2] = ["dinov2_with_registers.", "dinov2."];

/// Tells the spelling from the names alone: [`NameScheme::HuggingFace`],
/// [`NameScheme::HuggingFaceModelPrefix`] or [`NameScheme::Meta`]. DINOv3 files are named as
/// such in the error, since both families share `blocks.N` and `embeddings.`.
pub fn detect_scheme(checkpoint: &Checkpoint) -> Result<NameScheme> {
    let (mut hf, mut prefixed, mut meta, mut dinov3) = (false, false, false, false);
    for name in checkpoint.names() {
        dinov3 |= name == "storage_tokens"
            || name.starts_with("rope_embed.")
            || name.starts_with("layer.")
            || name.starts_with("model.layer.");
        meta |= name.starts_with("blocks.") || name == "pos_embed";
        let unprefixed = PREFIXES.iter().find_map(|p| name.strip_prefix(p));
        prefixed |= unprefixed.is_some_and(is_hf_name);
        hf |= is_hf_name(name);
    }
    if dinov3 {
        return Err(Error::format(format!(
            "checkpoint {} is a DINOv3 ViT (it has `storage_tokens`, `rope_embed` or `layer.N` \
             tensors), not DINOv2: load it with the dinov3 module",
            checkpoint.origin()
        )));
    }
    if meta {
        return Ok(NameScheme::Meta);
    }
    match (hf, prefixed) {
        (_, true) => Ok(NameScheme::HuggingFaceModelPrefix),
        (true, false) => Ok(NameScheme::HuggingFace),
        (false, false) => {
            let mut sample: Vec<&str> = checkpoint.names().collect();
            sample.sort_unstable();
            sample.truncate(6);
            Err(Error::format(format!(
                "checkpoint {} does not look like a DINOv2 ViT: no `blocks.N.*` (Meta) or \
                 `encoder.layer.N.*` (Hugging Face) tensors; it holds e.g. {}",
                checkpoint.origin(),
                sample.join(", ")
            )))
        }
    }
}

fn is_hf_name(name: &str) -> bool {
    name.starts_with("encoder.layer.") || name.starts_with("embeddings.")
}

/// Renames every tensor onto the canonical names, splitting or joining where a spelling's layout
/// differs. Tensors the model never reads at inference (a classifier head) are dropped.
pub fn to_canonical(checkpoint: Checkpoint) -> Result<(Checkpoint, NameScheme)> {
    let scheme = detect_scheme(&checkpoint)?;
    let canonical = match scheme {
        NameScheme::Meta => meta_to_canonical(checkpoint)?,
        _ => {
            let unprefixed = checkpoint.rename(|name| {
                let name = PREFIXES
                    .iter()
                    .find_map(|p| name.strip_prefix(p))
                    .unwrap_or(name);
                // A task head (`classifier.*`) is not part of the backbone.
                (is_hf_name(name) || name.starts_with("layernorm.")).then(|| name.to_string())
            });
            transformers5_to_canonical(unprefixed)?
        }
    };
    Ok((canonical, scheme))
}

/// transformers ≥ 5 in-memory leaf names onto the hub's: the inverse of its
/// `conversion_mapping.py` entry for `Dinov2Model`.
fn transformers5_to_canonical(mut ckpt: Checkpoint) -> Result<Checkpoint> {
    let layers: Vec<usize> = (0..)
        .take_while(|i| ckpt.contains(&format!("encoder.layer.{i}.norm1.weight")))
        .collect();
    for i in layers {
        let mlp = format!("encoder.layer.{i}.mlp");
        for suffix in ["weight", "bias"] {
            let (gate, up) = (
                format!("{mlp}.gate_proj.{suffix}"),
                format!("{mlp}.up_proj.{suffix}"),
            );
            if ckpt.contains(&gate) {
                // `weights_in` is [gate; up] along the output (transformers chunks it in two).
                let fused = Tensor::cat(&[&ckpt.take(&gate)?, &ckpt.take(&up)?], 0)?;
                ckpt.insert(format!("{mlp}.weights_in.{suffix}"), fused);
            }
        }
    }
    Ok(ckpt.rename(|name| {
        let renamed = [
            (".attention.q_proj.", ".attention.attention.query."),
            (".attention.k_proj.", ".attention.attention.key."),
            (".attention.v_proj.", ".attention.attention.value."),
            (".attention.o_proj.", ".attention.output.dense."),
            (".mlp.down_proj.", ".mlp.weights_out."),
        ]
        .iter()
        .find_map(|(from, to)| name.contains(from).then(|| name.replacen(from, to, 1)));
        Some(renamed.unwrap_or_else(|| name.to_string()))
    }))
}

fn meta_to_canonical(ckpt: Checkpoint) -> Result<Checkpoint> {
    // Chunked training checkpoints (`block_chunks > 0`) keep global block numbers under a chunk
    // index: `blocks.C.N.…` is block N.
    let mut ckpt = ckpt.rename(|name| {
        let Some(rest) = name.strip_prefix("blocks.") else {
            return Some(name.to_string());
        };
        let mut parts = rest.splitn(3, '.');
        match (parts.next(), parts.next(), parts.next()) {
            (Some(c), Some(n), Some(tail))
                if c.parse::<usize>().is_ok() && n.parse::<usize>().is_ok() =>
            {
                Some(format!("blocks.{n}.{tail}"))
            }
            _ => Some(name.to_string()),
        }
    });
    let blocks: Vec<usize> = (0..)
        .take_while(|i| ckpt.contains(&format!("blocks.{i}.norm1.weight")))
        .collect();
    for i in &blocks {
        split_qkv(&mut ckpt, *i)?;
        join_unpacked_swiglu(&mut ckpt, *i)?;
    }
    Ok(ckpt.rename(meta_name))
}

/// Splits `blocks.N.attn.qkv` ([3D, D] weight, [3D] bias) into thirds. Unlike DINOv3, DINOv2's
/// key bias is real: Meta's `Attention` uses the whole qkv bias.
fn split_qkv(ckpt: &mut Checkpoint, block: usize) -> Result<()> {
    let prefix = format!("blocks.{block}.attn.qkv");
    let out = format!("encoder.layer.{block}.attention.attention");
    let names = ["query", "key", "value"];
    for suffix in ["weight", "bias"] {
        let name = format!("{prefix}.{suffix}");
        let Some(fused) = ckpt.remove(&name) else {
            if suffix == "weight" {
                return Err(Error::format(format!(
                    "checkpoint {} has no tensor `{name}`",
                    ckpt.origin()
                )));
            }
            continue;
        };
        let rows = fused.dims().first().copied().unwrap_or(0);
        if rows == 0 || !rows.is_multiple_of(3) {
            return Err(Error::format(format!(
                "tensor `{name}` in {} has shape {:?}: a fused qkv needs a first dim divisible \
                 by 3",
                ckpt.origin(),
                fused.dims()
            )));
        }
        let width = rows / 3;
        for (i, proj) in names.iter().enumerate() {
            let part = fused.narrow(0, i * width, width)?.contiguous()?;
            ckpt.insert(format!("{out}.{proj}.{suffix}"), part);
        }
    }
    Ok(())
}

/// xformers' SwiGLU without packed weights stores `w1` (gate) and `w2` (up) apart; the packed
/// `w12` that Meta's released ViT-g has is `[w1; w2]`.
fn join_unpacked_swiglu(ckpt: &mut Checkpoint, block: usize) -> Result<()> {
    for suffix in ["weight", "bias"] {
        let w1 = format!("blocks.{block}.mlp.w1.{suffix}");
        if ckpt.contains(&w1) {
            let w2 = format!("blocks.{block}.mlp.w2.{suffix}");
            let fused = Tensor::cat(&[&ckpt.take(&w1)?, &ckpt.take(&w2)?], 0)?;
            ckpt.insert(format!("blocks.{block}.mlp.w12.{suffix}"), fused);
        }
    }
    Ok(())
}

/// The name-only part of the Meta mapping; `None` drops the tensor.
fn meta_name(name: &str) -> Option<String> {
    let top = match name {
        "cls_token" => Some("embeddings.cls_token"),
        "pos_embed" => Some("embeddings.position_embeddings"),
        "register_tokens" => Some("embeddings.register_tokens"),
        // [1, D] in both spellings; inference never reads it.
        "mask_token" => Some("embeddings.mask_token"),
        "patch_embed.proj.weight" => Some("embeddings.patch_embeddings.projection.weight"),
        "patch_embed.proj.bias" => Some("embeddings.patch_embeddings.projection.bias"),
        "norm.weight" => Some("layernorm.weight"),
        "norm.bias" => Some("layernorm.bias"),
        _ => None,
    };
    if let Some(top) = top {
        return Some(top.to_string());
    }
    if let Some(rest) = name.strip_prefix("blocks.") {
        let (index, sub) = rest.split_once('.')?;
        let sub = match sub {
            "ls1.gamma" => "layer_scale1.lambda1",
            "ls2.gamma" => "layer_scale2.lambda1",
            "attn.proj.weight" => "attention.output.dense.weight",
            "attn.proj.bias" => "attention.output.dense.bias",
            "mlp.w12.weight" => "mlp.weights_in.weight",
            "mlp.w12.bias" => "mlp.weights_in.bias",
            "mlp.w3.weight" => "mlp.weights_out.weight",
            "mlp.w3.bias" => "mlp.weights_out.bias",
            keep if keep.starts_with("norm1.")
                || keep.starts_with("norm2.")
                || keep.starts_with("mlp.fc1.")
                || keep.starts_with("mlp.fc2.") =>
            {
                keep
            }
            _ => return None,
        };
        return Some(format!("encoder.layer.{index}.{sub}"));
    }
    // Already split by `split_qkv`.
    if name.starts_with("encoder.layer.") {
        return Some(name.into());
    }
    // `head.*` and anything else Meta's trainer left: not part of the backbone.
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

    fn values(c: &Checkpoint, n: &str) -> Vec<f32> {
        c.get(n)
            .unwrap_or_else(|| panic!("{n}"))
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    }

    #[test]
    fn meta_qkv_is_split_with_its_key_bias_and_chunks_are_flattened() {
        let dev = Device::Cpu;
        let d = 2;
        let w = Tensor::arange(0f32, 12., &dev)
            .unwrap()
            .reshape((3 * d, d))
            .unwrap();
        let b = Tensor::new(&[1f32, 2., 30., 40., 5., 6.], &dev).unwrap();
        let one = Tensor::ones(d, DType::F32, &dev).unwrap();
        let c = ckpt(&[
            ("blocks.0.0.norm1.weight", one.clone()),
            ("blocks.0.0.attn.qkv.weight", w),
            ("blocks.0.0.attn.qkv.bias", b),
            ("blocks.0.0.ls1.gamma", one.clone()),
            ("blocks.0.0.mlp.w1.weight", one.clone()),
            ("blocks.0.0.mlp.w2.weight", (&one * 2.).unwrap()),
            ("blocks.0.0.mlp.w3.weight", one.clone()),
            ("pos_embed", one.clone()),
            ("norm.bias", one.clone()),
            ("head.weight", one),
        ]);
        let (c, scheme) = to_canonical(c).unwrap();
        assert_eq!(scheme, NameScheme::Meta);
        let attn = "encoder.layer.0.attention.attention";
        assert_eq!(
            values(&c, &format!("{attn}.query.weight")),
            [0., 1., 2., 3.]
        );
        assert_eq!(values(&c, &format!("{attn}.key.weight")), [4., 5., 6., 7.]);
        assert_eq!(
            values(&c, &format!("{attn}.value.weight")),
            [8., 9., 10., 11.]
        );
        assert_eq!(values(&c, &format!("{attn}.key.bias")), [30., 40.]);
        assert_eq!(
            values(&c, "encoder.layer.0.mlp.weights_in.weight"),
            [1., 1., 2., 2.]
        );
        for n in [
            "encoder.layer.0.norm1.weight",
            "encoder.layer.0.layer_scale1.lambda1",
            "encoder.layer.0.mlp.weights_out.weight",
            "embeddings.position_embeddings",
            "layernorm.bias",
        ] {
            assert!(c.contains(n), "{n}");
        }
        assert!(!c
            .names()
            .any(|n| n.contains("head") || n.contains("blocks")));
    }

    #[test]
    fn transformers5_names_and_task_prefixes_are_mapped() {
        let dev = Device::Cpu;
        let t = |v: f32| Tensor::new(&[v], &dev).unwrap();
        let c = ckpt(&[
            ("dinov2.embeddings.cls_token", t(0.)),
            ("dinov2.encoder.layer.0.norm1.weight", t(0.)),
            ("dinov2.encoder.layer.0.attention.q_proj.weight", t(0.)),
            ("dinov2.encoder.layer.0.attention.o_proj.bias", t(0.)),
            ("dinov2.encoder.layer.0.mlp.gate_proj.weight", t(1.)),
            ("dinov2.encoder.layer.0.mlp.up_proj.weight", t(2.)),
            ("dinov2.encoder.layer.0.mlp.down_proj.weight", t(3.)),
            ("dinov2.layernorm.weight", t(0.)),
            ("classifier.weight", t(0.)),
        ]);
        let (c, scheme) = to_canonical(c).unwrap();
        assert_eq!(scheme, NameScheme::HuggingFaceModelPrefix);
        let mut names: Vec<_> = c.names().collect();
        names.sort_unstable();
        assert_eq!(
            names,
            [
                "embeddings.cls_token",
                "encoder.layer.0.attention.attention.query.weight",
                "encoder.layer.0.attention.output.dense.bias",
                "encoder.layer.0.mlp.weights_in.weight",
                "encoder.layer.0.mlp.weights_out.weight",
                "encoder.layer.0.norm1.weight",
                "layernorm.weight",
            ]
        );
        assert_eq!(
            values(&c, "encoder.layer.0.mlp.weights_in.weight"),
            [1., 2.]
        );
    }

    #[test]
    fn dinov3_and_unrelated_files_are_rejected() {
        let t = Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap();
        for name in ["storage_tokens", "layer.0.norm1.weight"] {
            let Err(err) = to_canonical(ckpt(&[(name, t.clone()), ("blocks.0.x", t.clone())]))
            else {
                panic!("a DINOv3 file was taken for DINOv2");
            };
            assert!(err.to_string().contains("dinov3 module"), "{err}");
        }
        let Err(err) = to_canonical(ckpt(&[("visual.conv1.weight", t)])) else {
            panic!("a CLIP checkpoint was taken for DINOv2");
        };
        assert!(err.to_string().contains("visual.conv1.weight"), "{err}");
    }
}
