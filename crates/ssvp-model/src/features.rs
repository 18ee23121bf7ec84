//! The frozen towers as the head uses them: loaded at the head's taps and checked against its
//! widths ([`load_backbones`]), and the real prompt text encoder over CLIP's text tower
//! ([`PromptEncoding`]). Feature extraction itself is `ssvp-features`'.

use candle_core::Device;
use ssvp_features::{Backbones, BackbonesConfig};

use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::prompt::ClipPromptEncoder;

/// Loads (or, for `tiny`, builds) the backbones at the head's taps and checks that their widths
/// feed it (`model.clip_dim`, `dino_dim`, `text_width`).
pub fn load_backbones(
    cfg: &BackbonesConfig,
    model: &ModelConfig,
    device: &Device,
) -> Result<Backbones> {
    model.validate()?;
    let backbones = Backbones::load(cfg, &model.taps(), device)?;
    model.check_backbones(backbones.identity())?;
    Ok(backbones)
}

/// The paper's towers with seeded random weights ([`Backbones::seeded_vitl`]) at the head's taps,
/// checked against its widths: what benchmarks time when no checkpoint is at hand.
pub fn seeded_vitl_backbones(
    cfg: &BackbonesConfig,
    model: &ModelConfig,
    device: &Device,
) -> Result<Backbones> {
    model.validate()?;
    let backbones = Backbones::seeded_vitl(cfg, &model.taps(), device)?;
    model.check_backbones(backbones.identity())?;
    Ok(backbones)
}

/// The prompt text encoder of a set of backbones: their CLIP text tower and tokenizer.
pub trait PromptEncoding {
    /// A [`ClipPromptEncoder`] over the text tower (an error for a vision-only CLIP).
    fn prompt_encoder(&self) -> Result<ClipPromptEncoder<'_>>;
}

impl PromptEncoding for Backbones {
    fn prompt_encoder(&self) -> Result<ClipPromptEncoder<'_>> {
        let text = self
            .clip()
            .map_err(|e| Error::Config(e.to_string()))?
            .text()
            .map_err(|e| Error::Config(format!("{e:#}")))?;
        Ok(ClipPromptEncoder::new(text, self.tokenizer()))
    }
}
