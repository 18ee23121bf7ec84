//! The one place that maps foreign CLIP checkpoint spellings onto Hugging Face `CLIPModel` names
//! (docs/formats.md §1.3), which are the paths the modules read: [`ClipNames`], CLIP's
//! [`Renames`].
//!
//! Schemes, detected from the names:
//! - HF (`vision_model.…`, `text_model.…`, `visual_projection.weight`, `text_projection.weight`):
//!   kept, minus the `position_ids` buffers.
//! - OpenAI / open_clip `CLIP` (`visual.transformer.resblocks.N…`, `transformer.resblocks.N…`),
//!   including open_clip `CustomTextCLIP` (text tower under `text.`): fused `in_proj` split into
//!   q/k/v rows, right-multiplied projections (`visual.proj`, `text_projection`) transposed.
//! - timm vision-only (`blocks.N…`, `cls_token`, `pos_embed`, `head.weight`).

use std::collections::HashMap;

use candle_core::Tensor;

pub use crate::weights::NameScheme as Scheme;
use crate::weights::{Checkpoint, NameScheme, Renames};
use crate::{Error, Result};

/// CLIP's renaming: HF names kept, OpenAI/open_clip and timm names mapped onto them.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClipNames;

impl Renames for ClipNames {
    fn detect(ckpt: &Checkpoint) -> Result<NameScheme> {
        let names: Vec<&str> = ckpt.names().collect();
        let has = |prefix: &str| names.iter().any(|n| n.starts_with(prefix));
        if has("vision_model.") || has("text_model.") {
            Ok(NameScheme::HuggingFace)
        } else if has("visual.") || has("transformer.resblocks.") || has("text.transformer.") {
            if has("visual.trunk.") {
                return Err(Error::format(format!(
                    "checkpoint {} is an open_clip model with a timm vision trunk \
                     (`visual.trunk.…`); only OpenAI-style towers are supported",
                    ckpt.origin()
                )));
            }
            Ok(NameScheme::OpenAi)
        } else if has("blocks.") && has("cls_token") {
            Ok(NameScheme::Timm)
        } else {
            let mut sample: Vec<&str> = names.into_iter().take(5).collect();
            sample.sort_unstable();
            Err(Error::format(format!(
                "checkpoint {} is not a CLIP checkpoint in HF, OpenAI/open_clip or timm naming \
                 (first names: {})",
                ckpt.origin(),
                sample.join(", ")
            )))
        }
    }

    /// Renames every tensor onto HF names. Unknown tensors are an error rather than silently
    /// unused: an unsupported variant (LayerScale `ls_1.gamma`, attention pooling, …) would
    /// otherwise load and give wrong features.
    fn to_canonical(ckpt: Checkpoint) -> Result<(Checkpoint, NameScheme)> {
        to_hf_names(ckpt)
    }
}

/// Renames every tensor onto HF names ([`ClipNames`]' [`Renames::to_canonical`]).
pub fn to_hf_names(ckpt: Checkpoint) -> Result<(Checkpoint, NameScheme)> {
    let scheme = ClipNames::detect(&ckpt)?;
    let origin = ckpt.origin().to_string();
    let mut out: HashMap<String, Tensor> = HashMap::new();
    let mut unknown = Vec::new();
    for (name, tensor) in ckpt.into_tensors() {
        let mapped = match scheme {
            NameScheme::OpenAi => map_openai(&name, tensor)?,
            NameScheme::Timm => map_timm(&name, tensor)?,
            // Detection gives no other scheme for CLIP.
            _ => map_hf(&name, tensor),
        };
        match mapped {
            Mapped::Keep(pairs) => {
                for (new_name, t) in pairs {
                    out.insert(new_name, t);
                }
            }
            Mapped::Drop => {}
            Mapped::Unknown => unknown.push(name),
        }
    }
    if !unknown.is_empty() {
        unknown.sort();
        let more = unknown.len().saturating_sub(5);
        unknown.truncate(5);
        return Err(Error::format(format!(
            "checkpoint {origin} ({scheme:?} naming) has tensors this CLIP implementation does not \
             know: {}{}",
            unknown.join(", "),
            if more > 0 { format!(" and {more} more") } else { String::new() }
        )));
    }
    Ok((Checkpoint::from_tensors(origin, out), scheme))
}

enum Mapped {
    Keep(Vec<(String, Tensor)>),
    Drop,
    Unknown,
}

fn keep(name: impl Into<String>, t: Tensor) -> Mapped {
    Mapped::Keep(vec![(name.into(), t)])
}

fn map_hf(name: &str, t: Tensor) -> Mapped {
    if name.ends_with("position_ids") {
        return Mapped::Drop;
    }
    let known = name == "logit_scale"
        || name == "visual_projection.weight"
        || name == "text_projection.weight"
        || name.starts_with("vision_model.")
        || name.starts_with("text_model.");
    if known {
        keep(name, t)
    } else {
        Mapped::Unknown
    }
}

/// Splits a fused `[3D, D]` / `[3D]` in_proj into q, k, v (rows in that order).
fn split_qkv(prefix: &str, kind: &str, t: &Tensor) -> Result<Mapped> {
    let rows = t.dim(0)?;
    if rows % 3 != 0 {
        return Err(Error::format(format!(
            "fused attention tensor `{prefix}` has {rows} rows, not a multiple of 3"
        )));
    }
    let d = rows / 3;
    let mut pairs = Vec::with_capacity(3);
    for (i, part) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
        pairs.push((
            format!("{prefix}.self_attn.{part}.{kind}"),
            t.narrow(0, i * d, d)?.contiguous()?,
        ));
    }
    Ok(Mapped::Keep(pairs))
}

/// Maps the inside of one OpenAI residual block (`attn.in_proj_weight`, `ln_1.bias`, …) onto
/// the HF layer at `layer_prefix`.
fn map_openai_block(layer_prefix: &str, rest: &str, t: Tensor) -> Result<Mapped> {
    Ok(match rest {
        "attn.in_proj_weight" => split_qkv(layer_prefix, "weight", &t)?,
        "attn.in_proj_bias" => split_qkv(layer_prefix, "bias", &t)?,
        _ => {
            let Some((module, param)) = rest.rsplit_once('.') else {
                return Ok(Mapped::Unknown);
            };
            let hf_module = match module {
                "attn.out_proj" => "self_attn.out_proj",
                "ln_1" => "layer_norm1",
                "ln_2" => "layer_norm2",
                "mlp.c_fc" => "mlp.fc1",
                "mlp.c_proj" => "mlp.fc2",
                _ => return Ok(Mapped::Unknown),
            };
            keep(format!("{layer_prefix}.{hf_module}.{param}"), t)
        }
    })
}

/// `resblocks.N.<rest>` → (N, rest).
fn block_index(s: &str) -> Option<(usize, &str)> {
    let (idx, rest) = s.split_once('.')?;
    Some((idx.parse().ok()?, rest))
}

fn map_openai(name: &str, t: Tensor) -> Result<Mapped> {
    // Scalars stored by OpenAI's JIT archives, and open_clip's non-persistent mask.
    if matches!(name, "input_resolution" | "context_length" | "vocab_size")
        || name.ends_with("attn_mask")
    {
        return Ok(Mapped::Drop);
    }
    if let Some(rest) = name.strip_prefix("visual.") {
        if let Some(block) = rest.strip_prefix("transformer.resblocks.") {
            let Some((n, inner)) = block_index(block) else {
                return Ok(Mapped::Unknown);
            };
            return map_openai_block(&format!("vision_model.encoder.layers.{n}"), inner, t);
        }
        let e = "vision_model.embeddings";
        return Ok(match rest {
            "conv1.weight" => keep(format!("{e}.patch_embedding.weight"), t),
            "class_embedding" => keep(format!("{e}.class_embedding"), t),
            "positional_embedding" => keep(format!("{e}.position_embedding.weight"), t),
            "ln_pre.weight" | "ln_pre.bias" => {
                keep(rest.replace("ln_pre", "vision_model.pre_layrnorm"), t)
            }
            "ln_post.weight" | "ln_post.bias" => {
                keep(rest.replace("ln_post", "vision_model.post_layernorm"), t)
            }
            // Right-multiplied [width, embed]: HF stores the Linear weight [embed, width].
            "proj" => keep("visual_projection.weight", t.t()?.contiguous()?),
            _ => Mapped::Unknown,
        });
    }
    if name == "logit_scale" {
        return Ok(keep(name, t));
    }
    // CustomTextCLIP keeps the text tower under `text.`; otherwise it sits at the root.
    let rest = name.strip_prefix("text.").unwrap_or(name);
    if let Some(block) = rest.strip_prefix("transformer.resblocks.") {
        let Some((n, inner)) = block_index(block) else {
            return Ok(Mapped::Unknown);
        };
        return map_openai_block(&format!("text_model.encoder.layers.{n}"), inner, t);
    }
    let e = "text_model.embeddings";
    Ok(match rest {
        "token_embedding.weight" => keep(format!("{e}.token_embedding.weight"), t),
        "positional_embedding" => keep(format!("{e}.position_embedding.weight"), t),
        "ln_final.weight" | "ln_final.bias" => {
            keep(rest.replace("ln_final", "text_model.final_layer_norm"), t)
        }
        "text_projection" => keep("text_projection.weight", t.t()?.contiguous()?),
        // open_clip towers built with a Linear projection already store [out, in].
        "text_projection.weight" => keep("text_projection.weight", t),
        _ => Mapped::Unknown,
    })
}

fn map_timm(name: &str, t: Tensor) -> Result<Mapped> {
    let e = "vision_model.embeddings";
    if let Some(block) = name.strip_prefix("blocks.") {
        let Some((n, inner)) = block_index(block) else {
            return Ok(Mapped::Unknown);
        };
        let layer = format!("vision_model.encoder.layers.{n}");
        return Ok(match inner {
            "attn.qkv.weight" => split_qkv(&layer, "weight", &t)?,
            "attn.qkv.bias" => split_qkv(&layer, "bias", &t)?,
            _ => {
                let Some((module, param)) = inner.rsplit_once('.') else {
                    return Ok(Mapped::Unknown);
                };
                let hf_module = match module {
                    "norm1" => "layer_norm1",
                    "norm2" => "layer_norm2",
                    "attn.proj" => "self_attn.out_proj",
                    "mlp.fc1" => "mlp.fc1",
                    "mlp.fc2" => "mlp.fc2",
                    _ => return Ok(Mapped::Unknown),
                };
                keep(format!("{layer}.{hf_module}.{param}"), t)
            }
        });
    }
    Ok(match name {
        // [1, 1, D] and [1, N, D] in timm.
        "cls_token" => keep(format!("{e}.class_embedding"), t.flatten_all()?),
        "pos_embed" => keep(format!("{e}.position_embedding.weight"), t.squeeze(0)?),
        "patch_embed.proj.weight" => keep(format!("{e}.patch_embedding.weight"), t),
        "norm_pre.weight" | "norm_pre.bias" => {
            keep(name.replace("norm_pre", "vision_model.pre_layrnorm"), t)
        }
        "norm.weight" | "norm.bias" => keep(name.replace("norm", "vision_model.post_layernorm"), t),
        // timm's CLIP head is the projection as a Linear [embed, width]; its bias is all zero.
        "head.weight" => keep("visual_projection.weight", t),
        "head.bias" => {
            let max_abs = t
                .abs()?
                .flatten_all()?
                .max(0)?
                .to_dtype(candle_core::DType::F32)?;
            if max_abs.to_scalar::<f32>()? != 0.0 {
                return Err(Error::format(
                    "timm checkpoint has a non-zero `head.bias`; CLIP projections have no bias",
                ));
            }
            Mapped::Drop
        }
        _ => Mapped::Unknown,
    })
}
