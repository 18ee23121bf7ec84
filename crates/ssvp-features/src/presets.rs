//! Named backbone presets (`--backbones NAME`): which weights each tower loads, at which input
//! size, tapped where. One table, read by every command that runs a model, by `ssvp fetch`
//! (which hub repositories to download) and by `ssvp doctor` (which presets are cached).
//!
//! | preset | CLIP | DINO | input | taps | for |
//! |---|---|---|---|---|---|
//! | `paper` | ViT-L/14@336 | DINOv3 ViT-L/16 | 518 / 592 px (37 x 37) | CLIP 6/12/18/24, DINOv3 4/7/10/12 | the SSVP head |
//! | `anomalydino` | none | DINOv2 ViT-S/14 | 448 px (32 x 32) | quarter points, last = 12 | references, banks, mutual |
//! | `dinov2-b` | none | DINOv2 ViT-B/14 | 448 px (32 x 32) | quarter points | references, banks, mutual |
//! | `dinov3-s` | none | DINOv3 ViT-S/16 | 448 px (28 x 28) | quarter points | references, banks, mutual |
//! | `dinov3-b` | none | DINOv3 ViT-B/16 | 448 px (28 x 28) | quarter points | references, banks, mutual |
//! | `tiny` | seeded, 4 blocks | seeded DINOv3, 4 blocks | 112 / 128 px (8 x 8) | every block | tests, `ssvp demo` |
//!
//! `anomalydino` follows AnomalyDINO (Damm et al., WACV 2025): DINOv2 ViT-S/14, Pillow bicubic
//! resize to 448 px, ImageNet mean/std, the last block's final-normed patch tokens. AnomalyDINO
//! keeps the aspect ratio (smaller edge to 448); ssvp resizes every image to 448 x 448 so that
//! all images share one patch grid (banks, batches, mutual scoring). On square images, as in
//! MVTec-AD, the two are the same.

use serde::{Deserialize, Serialize};

use crate::config::{BackbonesConfig, DinoArch, DinoLayerSet, TapLayers, NO_TOWER, TINY};
use crate::error::{Error, Result};

/// The preset of the SSVP head: CLIP ViT-L/14@336 at 518 px and DINOv3 ViT-L/16 at 592 px.
pub const PAPER: &str = "paper";
/// The preset of the training-free scorers when no head is given: DINOv2 ViT-S/14 at 448 px.
pub const ANOMALYDINO: &str = "anomalydino";

/// One named preset.
#[derive(Clone, Debug, PartialEq)]
pub struct Preset {
    /// Its `--backbones` name.
    pub name: &'static str,
    /// One line for `--help`, `ssvp doctor` and the docs.
    pub summary: &'static str,
    /// The towers and input sizes.
    pub config: BackbonesConfig,
    /// The tapped blocks.
    pub taps: TapLayers,
}

impl Preset {
    /// Hub repositories of the towers that load weights (none for `tiny`), as `(tower, repo)`.
    pub fn hub_repos(&self) -> Vec<(&'static str, String)> {
        [("clip", &self.config.clip), ("dino", &self.config.dino)]
            .into_iter()
            .filter(|(_, spec)| spec.as_str() != TINY && spec.as_str() != NO_TOWER)
            .map(|(tower, spec)| (tower, spec.clone()))
            .collect()
    }

    /// Whether the preset has a CLIP tower (the head needs one; references do not).
    pub fn has_clip(&self) -> bool {
        self.config.has_clip()
    }
}

/// Every preset's name, in the order `--help` lists them.
pub const NAMES: [&str; 6] = [PAPER, ANOMALYDINO, "dinov2-b", "dinov3-s", "dinov3-b", TINY];

/// A DINO-only preset: `dino` weights of `arch` at `size` px, quarter-point taps.
fn dino_only(dino: &str, arch: DinoArch, size: usize) -> (BackbonesConfig, TapLayers) {
    let config = BackbonesConfig {
        clip: NO_TOWER.into(),
        dino: dino.into(),
        dino_arch: arch,
        // Unused without a CLIP tower, kept on the DINO grid so that `grid` agrees.
        clip_size: size,
        dino_size: size,
        ..BackbonesConfig::default()
    };
    let taps = TapLayers {
        clip: Vec::new(),
        dino: DinoLayerSet::QuarterPoints,
    };
    (config, taps)
}

/// The preset named `name`, or an error listing the presets.
pub fn preset(name: &str) -> Result<Preset> {
    let (summary, (config, taps)) = match name {
        PAPER => (
            "CLIP ViT-L/14@336 at 518 px + DINOv3 ViT-L/16 at 592 px (the SSVP head; DINOv3 is gated)",
            (BackbonesConfig::default(), TapLayers::paper()),
        ),
        ANOMALYDINO => (
            "DINOv2 ViT-S/14 at 448 px, AnomalyDINO's features (ungated, Apache-2.0, 22 M parameters)",
            dino_only("facebook/dinov2-small", DinoArch::Dinov2, 448),
        ),
        "dinov2-b" => (
            "DINOv2 ViT-B/14 at 448 px (ungated, 86 M parameters)",
            dino_only("facebook/dinov2-base", DinoArch::Dinov2, 448),
        ),
        "dinov3-s" => (
            "DINOv3 ViT-S/16 at 448 px (gated, 22 M parameters)",
            dino_only(
                "facebook/dinov3-vits16-pretrain-lvd1689m",
                DinoArch::Dinov3,
                448,
            ),
        ),
        "dinov3-b" => (
            "DINOv3 ViT-B/16 at 448 px (gated, 86 M parameters)",
            dino_only(
                "facebook/dinov3-vitb16-pretrain-lvd1689m",
                DinoArch::Dinov3,
                448,
            ),
        ),
        TINY => (
            "seeded random CLIP + DINOv3 of 4 blocks at an 8 x 8 grid: no weights, no meaning (tests, demo)",
            (BackbonesConfig::tiny(), TapLayers::tiny()),
        ),
        other => {
            return Err(Error::Config(format!(
                "no backbones preset `{other}`; the presets are {}",
                NAMES.join(", ")
            )))
        }
    };
    let name = NAMES
        .iter()
        .find(|n| **n == name)
        .expect("every matched preset is listed");
    Ok(Preset {
        name,
        summary,
        config: BackbonesConfig {
            preset: Some(name.to_string()),
            ..config
        },
        taps,
    })
}

/// Every preset, in [`NAMES`] order.
pub fn all() -> Vec<Preset> {
    NAMES
        .iter()
        .map(|n| preset(n).expect("listed presets exist"))
        .collect()
}

/// Which backbones a command runs: a preset and/or other weights for either tower (a hub id, a
/// directory or a file; `--clip-weights` / `--dino-weights`), as the flags give them. Weights
/// replace the preset's at the same sizes and taps (a local copy of a preset's weights).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackboneChoice {
    /// `--backbones`.
    pub preset: Option<String>,
    /// `--clip-weights`.
    pub clip_weights: Option<String>,
    /// `--dino-weights`.
    pub dino_weights: Option<String>,
}

impl BackboneChoice {
    /// A choice of a preset alone.
    pub fn preset(name: &str) -> Self {
        Self {
            preset: Some(name.into()),
            ..Self::default()
        }
    }

    /// Whether nothing was chosen (the artifacts' or the default backbones are used).
    pub fn is_empty(&self) -> bool {
        self.preset.is_none() && self.clip_weights.is_none() && self.dino_weights.is_none()
    }

    /// The preset's config and taps, or `fallback`'s when no preset was named; the weights
    /// flags then replace the towers' weights.
    pub fn resolve(
        &self,
        fallback: (BackbonesConfig, TapLayers),
    ) -> Result<(BackbonesConfig, TapLayers)> {
        let (mut config, taps) = match &self.preset {
            Some(name) => {
                let p = preset(name)?;
                (p.config, p.taps)
            }
            None => fallback,
        };
        self.apply_weights(&mut config)?;
        Ok((config, taps))
    }

    /// Replaces the towers' weights by `--clip-weights` / `--dino-weights`.
    pub fn apply_weights(&self, config: &mut BackbonesConfig) -> Result<()> {
        if let Some(w) = &self.clip_weights {
            if !config.has_clip() {
                return Err(Error::Config(format!(
                    "--clip-weights {w}: the backbones{} have no CLIP tower",
                    config
                        .preset
                        .as_deref()
                        .map(|p| format!(" of preset `{p}`"))
                        .unwrap_or_default()
                )));
            }
            config.clip = w.clone();
        }
        if let Some(w) = &self.dino_weights {
            config.dino = w.clone();
        }
        Ok(())
    }

    /// Refuses a preset that differs from the one an artifact (`what`) was made with, naming
    /// both.
    pub fn check_against(&self, recorded: &BackbonesConfig, what: &str) -> Result<()> {
        if let (Some(given), Some(made)) = (&self.preset, &recorded.preset) {
            if given != made {
                return Err(Error::Config(format!(
                    "--backbones {given} conflicts with {what}, which was made with the `{made}` \
                     backbones; drop --backbones (the {what} brings its own) or rebuild the {what} \
                     with `{given}`"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_listed_preset_resolves_and_validates() {
        for p in all() {
            p.config.validate().unwrap();
            assert_eq!(p.config.preset.as_deref(), Some(p.name));
        }
        let err = preset("vit-huge").unwrap_err().to_string();
        assert!(
            err.contains("anomalydino") && err.contains("paper"),
            "{err}"
        );
    }

    #[test]
    fn weights_replace_the_preset_towers_and_clip_needs_a_clip_tower() {
        let choice = BackboneChoice {
            preset: Some(ANOMALYDINO.into()),
            dino_weights: Some("/models/dinov2-small".into()),
            ..Default::default()
        };
        let (cfg, taps) = choice
            .resolve((BackbonesConfig::default(), TapLayers::paper()))
            .unwrap();
        assert_eq!(cfg.dino, "/models/dinov2-small");
        assert_eq!(cfg.dino_size, 448);
        assert_eq!(taps.dino, DinoLayerSet::QuarterPoints);
        let bad = BackboneChoice {
            clip_weights: Some("x".into()),
            ..choice
        };
        let err = bad
            .resolve((BackbonesConfig::default(), TapLayers::paper()))
            .unwrap_err();
        assert!(err.to_string().contains("no CLIP tower"), "{err}");
    }

    #[test]
    fn a_conflicting_preset_names_both() {
        let made = preset(TINY).unwrap().config;
        let err = BackboneChoice::preset(PAPER)
            .check_against(&made, "bank")
            .unwrap_err()
            .to_string();
        assert!(err.contains("paper") && err.contains("tiny"), "{err}");
        BackboneChoice::preset(TINY)
            .check_against(&made, "bank")
            .unwrap();
    }
}
