//! What a detector is and how it decides, as plain data: the options a front sets
//! ([`DetectorOptions`]), the settings a calibration holds for ([`DetectorSettings`], with the
//! scorer's own as [`ScorerSettings`]) and the identity of the model ([`ModelIdentity`]). A leaf:
//! the pipeline, the scorers and calibration all read it, it reads none of them.

use serde::{Deserialize, Serialize};
use ssvp_eval::postprocess::PostprocessConfig;
use ssvp_image::ColorScale;

use crate::error::{Error, ErrorKind, Result};
use crate::tiling::Tiling;

/// The side of the square grid maps are post-processed on before being resized to the image:
/// the field's evaluation grid for 518 px inputs (and `ssvp eval`'s default `--eval-size`).
pub const DEFAULT_MAP_SIZE: usize = 518;
/// The class name of the prompts when none is given.
pub const DEFAULT_CLASS_NAME: &str = "object";
/// Images (or tiles) per backbone pass.
pub const DEFAULT_BATCH_SIZE: usize = 4;

/// How the detector runs and decides.
#[derive(Clone, Debug, PartialEq)]
pub struct DetectorOptions {
    /// The class name in the prompts ("a photo of a damaged {class}"-style; SSVP's prompts are
    /// class-aware).
    pub class_name: String,
    /// Side of the square grid the head's map is upsampled and smoothed on, as in evaluation.
    pub map_size: usize,
    /// Images (or tiles) per backbone pass.
    pub batch_size: usize,
    /// Score large images tile by tile (`None`: every image is resized whole).
    pub tiling: Option<Tiling>,
    /// A raw-score threshold for the decision; overrides the calibration's.
    pub image_threshold: Option<f64>,
    /// A map threshold for regions; overrides the calibration's.
    pub pixel_threshold: Option<f32>,
    /// Regions smaller than this many pixels are dropped (specks).
    pub min_region_area: usize,
    /// The value range of map PNGs and overlay colours; default: the calibration's display
    /// range, else `[0, 1]` (the head's maps are probabilities).
    pub map_scale: Option<ColorScale>,
}

impl Default for DetectorOptions {
    fn default() -> Self {
        Self {
            class_name: DEFAULT_CLASS_NAME.into(),
            map_size: DEFAULT_MAP_SIZE,
            batch_size: DEFAULT_BATCH_SIZE,
            tiling: None,
            image_threshold: None,
            pixel_threshold: None,
            min_region_area: 1,
            map_scale: None,
        }
    }
}

impl DetectorOptions {
    /// Checks every value, naming the one that is wrong.
    pub fn validate(&self) -> Result<()> {
        if self.class_name.trim().is_empty() {
            return Err(Error::invalid("the class name must not be empty"));
        }
        if self.map_size == 0 || self.batch_size == 0 {
            return Err(Error::invalid(
                "the map size and the batch size must be positive",
            ));
        }
        if let Some(t) = &self.tiling {
            t.validate()?;
        }
        if self.image_threshold.is_some_and(|t| !t.is_finite())
            || self.pixel_threshold.is_some_and(|t| !t.is_finite())
        {
            return Err(Error::invalid("thresholds must be finite numbers"));
        }
        if let Some(s) = &self.map_scale {
            if !(s.lo.is_finite() && s.hi.is_finite() && s.hi > s.lo) {
                return Err(Error::invalid(format!(
                    "the map scale [{}, {}] must be finite with lo < hi",
                    s.lo, s.hi
                )));
            }
        }
        Ok(())
    }
}

/// Everything besides the weights that changes a score or a map: a calibration is only valid
/// for the settings it was made with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DetectorSettings {
    /// The class name of the prompts.
    pub class_name: String,
    /// Side of the grid the map is post-processed on.
    pub map_size: usize,
    /// Upsampling and smoothing of the head's map (the run's `[postprocess]`).
    pub postprocess: PostprocessConfig,
    /// Tile size and overlap, if images are tiled.
    pub tiling: Option<Tiling>,
    /// The scorer's own settings (`None`: the head alone). Named `memory` in files, where the
    /// training-free scorers first recorded theirs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<ScorerSettings>,
}

impl DetectorSettings {
    /// What differs from `now`, one phrase per setting (empty when they are equal).
    pub fn differences(&self, now: &DetectorSettings) -> Vec<String> {
        let (a, b) = (self, now);
        let mut diffs = Vec::new();
        if a.class_name != b.class_name {
            diffs.push(format!(
                "class name `{}` (now `{}`)",
                a.class_name, b.class_name
            ));
        }
        if a.map_size != b.map_size {
            diffs.push(format!("map size {} (now {})", a.map_size, b.map_size));
        }
        let (pa, pb) = (&a.postprocess, &b.postprocess);
        if pa.gaussian_sigma != pb.gaussian_sigma {
            diffs.push(format!(
                "post-processing: Gaussian sigma {} (now {})",
                pa.gaussian_sigma, pb.gaussian_sigma
            ));
        }
        if pa.upsample_align_corners != pb.upsample_align_corners {
            diffs.push(format!(
                "post-processing: upsampling with align_corners {} (now {})",
                pa.upsample_align_corners, pb.upsample_align_corners
            ));
        }
        if pa.per_class_minmax != pb.per_class_minmax {
            diffs.push(format!(
                "post-processing: per-class min-max normalisation {} (now {})",
                on_off(pa.per_class_minmax),
                on_off(pb.per_class_minmax)
            ));
        }
        if a.tiling != b.tiling {
            diffs.push(format!(
                "tiling: {} (now {})",
                describe_tiling(a.tiling.as_ref()),
                describe_tiling(b.tiling.as_ref())
            ));
        }
        if a.memory != b.memory {
            let name = |m: &Option<ScorerSettings>| match m {
                None => "none (the head alone)".to_string(),
                Some(s) => s.as_json().to_string(),
            };
            diffs.push(format!(
                "training-free scoring {} (now {})",
                name(&a.memory),
                name(&b.memory)
            ));
        }
        diffs
    }
}

/// A scorer's settings as it serialises them: kept as compact JSON text, so that any scorer
/// records its own settings type without this crate listing them, and written back (pretty or
/// compact) with the same keys in the same order and the same numbers, so a calibration file
/// reads back equal to what was written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScorerSettings(String);

impl ScorerSettings {
    /// The settings of `value` (a struct or enum of the scorer's).
    pub fn of<T: Serialize>(value: &T) -> Self {
        Self(serde_json::to_string(value).expect("scorer settings serialise to JSON"))
    }

    /// The compact JSON text.
    pub fn as_json(&self) -> &str {
        &self.0
    }
}

impl Serialize for ScorerSettings {
    fn serialize<S: serde::Serializer>(
        &self,
        serializer: S,
    ) -> std::result::Result<S::Ok, S::Error> {
        let mut text = serde_json::Deserializer::from_str(&self.0);
        serde_transcode::transcode(&mut text, serializer)
    }
}

impl<'de> Deserialize<'de> for ScorerSettings {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        let mut out = Vec::new();
        let mut json = serde_json::Serializer::new(&mut out);
        serde_transcode::transcode(deserializer, &mut json).map_err(serde::de::Error::custom)?;
        String::from_utf8(out)
            .map(Self)
            .map_err(serde::de::Error::custom)
    }
}

/// What scores: the trained head and the backbones it was trained on, by content.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelIdentity {
    /// The run directory the head came from, as named (informative only).
    pub checkpoint: String,
    /// SHA-256 of the head's trainable tensors (by name, f32 little-endian) and its `[model]`
    /// config: a retrained or reconfigured head has another. Empty without a head.
    pub head: String,
    /// SHA-256 of the reference bank (its vectors and metadata); empty without one.
    #[serde(default)]
    pub bank: String,
    /// The backbones' identity digest (`BackboneIdentity::digest`: weights fingerprints, input
    /// sizes, layers, preprocessing).
    pub backbones: String,
    /// The backbones as named, for messages.
    pub backbone_names: String,
    /// The backbone settings (preset, weights, sizes, taps), so that `detect --calibration`
    /// rebuilds the same towers without flags. Not compared: the digest above is. Absent in
    /// calibrations written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub made_with: Option<ssvp_features::BackbonesRecord>,
}

impl ModelIdentity {
    /// Fails with [`ErrorKind::Mismatch`] when `other` is another head or other backbones.
    pub fn check_matches(&self, other: &ModelIdentity, what: &str) -> Result<()> {
        let mut diffs = Vec::new();
        if self.head != other.head {
            diffs.push(format!(
                "the head differs ({} from {}, this detector's from {})",
                what,
                short_or_none(&other.checkpoint),
                short_or_none(&self.checkpoint)
            ));
        }
        if self.bank != other.bank {
            diffs.push(format!(
                "the reference bank differs ({what} was made with another)"
            ));
        }
        if self.backbones != other.backbones {
            diffs.push(format!(
                "the backbones differ ({} for {what}, {} here)",
                other.backbone_names, self.backbone_names
            ));
        }
        if diffs.is_empty() {
            Ok(())
        } else {
            Err(Error::new(
                ErrorKind::Mismatch,
                format!("{what} was made for another model: {}", diffs.join("; ")),
            ))
        }
    }
}

fn short_or_none(s: &str) -> &str {
    if s.is_empty() {
        "an unnamed checkpoint"
    } else {
        s
    }
}

fn on_off(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

/// `whole images` or `518 px tiles overlapping by at least 64 px`.
fn describe_tiling(tiling: Option<&Tiling>) -> String {
    match tiling {
        None => "whole images".into(),
        Some(t) => format!(
            "{} px tiles overlapping by at least {} px",
            t.size, t.overlap
        ),
    }
}

/// A finished SHA-256 as lowercase hex: the digests of [`ModelIdentity`].
pub(crate) fn hex_digest(hasher: sha2::Sha256) -> String {
    use sha2::Digest;
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_options_are_named() {
        let bad = |o: DetectorOptions| o.validate().unwrap_err().to_string();
        assert!(bad(DetectorOptions {
            class_name: " ".into(),
            ..DetectorOptions::default()
        })
        .contains("class name"));
        assert!(bad(DetectorOptions {
            tiling: Some(Tiling {
                size: 64,
                overlap: 64
            }),
            ..DetectorOptions::default()
        })
        .contains("overlap"));
        assert!(bad(DetectorOptions {
            map_scale: Some(ColorScale { lo: 1.0, hi: 0.0 }),
            ..DetectorOptions::default()
        })
        .contains("map scale"));
    }

    /// What a calibration of other settings is refused for reads as English, not as Rust.
    #[test]
    fn differences_read_as_english() {
        let a = DetectorSettings {
            class_name: "object".into(),
            map_size: 518,
            postprocess: PostprocessConfig::default(),
            tiling: None,
            memory: None,
        };
        let b = DetectorSettings {
            postprocess: PostprocessConfig {
                gaussian_sigma: 2.0,
                ..PostprocessConfig::default()
            },
            tiling: Some(Tiling {
                size: 1036,
                overlap: 128,
            }),
            ..a.clone()
        };
        let diffs = a.differences(&b);
        assert_eq!(
            diffs,
            [
                "post-processing: Gaussian sigma 4 (now 2)",
                "tiling: whole images (now 1036 px tiles overlapping by at least 128 px)",
            ]
        );
        assert!(diffs
            .iter()
            .all(|d| !d.contains('{') && !d.contains("Some(")));
    }
}
