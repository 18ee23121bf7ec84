//! The one seam for checkpoint spellings: which naming a file uses ([`NameScheme`]) and the
//! per-model renaming onto the canonical Hugging Face paths that the modules read
//! ([`Renames`], implemented by `clip::names::ClipNames` and `dinov3::names::Dinov3Names`).

use super::Checkpoint;
use crate::Result;

/// How a checkpoint spells its tensors. Each model accepts the schemes its `Renames` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameScheme {
    /// Hugging Face transformers names as `save_pretrained` writes them (CLIP
    /// `vision_model.…`/`text_model.…`, DINOv3 `layer.N.…`): already canonical.
    HuggingFace,
    /// transformers ≥ 5 state-dict names, `model.layer.N.…` (DINOv3).
    HuggingFaceModelPrefix,
    /// OpenAI / open_clip `CLIP` and `CustomTextCLIP` (`visual.transformer.resblocks.N…`).
    OpenAi,
    /// timm vision-only CLIP (`blocks.N…`, `cls_token`, `pos_embed`, `head.weight`).
    Timm,
    /// Meta's original DINOv3 `.pth` (`blocks.N.…` with a fused qkv, `storage_tokens`).
    Meta,
}

/// A model family's renaming of foreign checkpoint spellings onto its canonical (Hugging Face)
/// names. Detection reads the names alone; renaming splits fused tensors, transposes
/// right-multiplied projections and drops buffers the model never reads.
pub trait Renames {
    /// Tells the scheme from the names alone, or says why the file is not of this model.
    fn detect(checkpoint: &Checkpoint) -> Result<NameScheme>;

    /// Renames every tensor onto the canonical names; returns the scheme it was written in.
    fn to_canonical(checkpoint: Checkpoint) -> Result<(Checkpoint, NameScheme)>;
}
