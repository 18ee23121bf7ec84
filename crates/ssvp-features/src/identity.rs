//! [`BackboneIdentity`]: what produced a set of features, by content, so that a cache entry, a
//! trained head, a bank or a calibration made with other backbones is refused.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Version of the feature layout; bumped whenever extraction changes what a cached file means.
pub const FEATURE_FORMAT: u32 = 1;

/// What produced the features: enough to refuse a checkpoint or cache made with other backbones.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BackboneIdentity {
    /// The CLIP weights as named in the config (a path, a hub id or `tiny`).
    pub clip: String,
    /// The DINOv3 weights as named in the config.
    pub dino: String,
    /// CLIP input `(height, width)` in pixels.
    pub clip_size: (usize, usize),
    /// DINOv3 input `(height, width)` in pixels.
    pub dino_size: (usize, usize),
    /// 1-based CLIP blocks, one per scale.
    pub clip_layers: Vec<usize>,
    /// 1-based DINOv3 blocks, one per scale.
    pub dino_layers: Vec<usize>,
    /// Compute dtype of the backbones (`f32`, `f16`, `bf16`).
    pub dtype: String,
    /// CLIP positional-grid resampling (`bicubic` / `bilinear`).
    pub pos_interp: String,
    /// First CLIP block with V-V attention, if any.
    pub dpam_from: Option<usize>,
    /// Joint CLIP space width `D_c`.
    pub clip_dim: usize,
    /// DINOv3 token width `D_d`.
    pub dino_dim: usize,
    /// CLIP text token width (0 for a vision-only CLIP).
    pub text_width: usize,
    /// Patch grid `(h, w)` both towers run at.
    pub grid: (usize, usize),
    /// Content fingerprint of the CLIP weights (`seeded:<seed>` for `tiny`).
    pub clip_weights: String,
    /// Content fingerprint of the DINOv3 weights.
    pub dino_weights: String,
    /// The preprocessing recipes, spelled out.
    pub preprocess: String,
    /// [`FEATURE_FORMAT`] at extraction time.
    pub format: u32,
}

impl BackboneIdentity {
    /// Everything that changes feature values, without the weights' spellings (the same weights
    /// named by another path or hub id give the same features).
    fn content(&self) -> Self {
        Self {
            clip: String::new(),
            dino: String::new(),
            ..self.clone()
        }
    }

    /// The weights as named, for messages: `CLIP / DINO`, or the DINO weights alone when no
    /// CLIP tower is loaded.
    pub fn names(&self) -> String {
        if self.clip == crate::NO_TOWER {
            self.dino.clone()
        } else {
            format!("{} / {}", self.clip, self.dino)
        }
    }

    /// How many layers each tower taps (the scales of the head, the positions a
    /// [`crate::TapSelection`] picks from): DINO's count, which CLIP's equals when it is loaded.
    pub fn scales(&self) -> usize {
        self.dino_layers.len()
    }

    /// [`Self::digest`] of the fields the towers of `towers` decide: what a bank reading only
    /// DINO features is valid for, whether or not CLIP is loaded beside it.
    pub fn digest_of(&self, towers: crate::TowerSet) -> String {
        let mut content = self.content();
        if !towers.clip {
            content.clip_size = (0, 0);
            content.clip_layers = Vec::new();
            content.pos_interp = String::new();
            content.dpam_from = None;
            content.clip_dim = 0;
            content.text_width = 0;
            content.clip_weights = String::new();
            // "clip: …; dino: …" keeps its DINO part, the same string a DINO-only load records.
            if let Some(at) = content.preprocess.find("dino: ") {
                content.preprocess = content.preprocess[at..].to_string();
            }
        }
        if !towers.dino {
            content.dino_size = (0, 0);
            content.dino_layers = Vec::new();
            content.dino_dim = 0;
            content.dino_weights = String::new();
            content.preprocess = String::new();
        }
        let json = serde_json::to_string(&content).expect("identity serialises");
        hex(&Sha256::digest(json.as_bytes()))
    }

    /// A hex digest of everything that changes the features: the cache's key prefix.
    pub fn digest(&self) -> String {
        let json = serde_json::to_string(&self.content()).expect("identity serialises");
        hex(&Sha256::digest(json.as_bytes()))
    }

    /// Whether features (or a head trained on them) made with `other` fit these backbones; the
    /// error lists every field that differs.
    pub fn check_matches(&self, other: &Self) -> Result<()> {
        let as_object = |id: &Self| match serde_json::to_value(id.content()) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => unreachable!("an identity serialises to a JSON object"),
        };
        let (a, b) = (as_object(self), as_object(other));
        let diffs: Vec<String> = a
            .iter()
            .filter(|(k, v)| b.get(*k) != Some(*v))
            .map(|(k, v)| {
                format!(
                    "{k}: {v} here, {} there",
                    b.get(k).cloned().unwrap_or_default()
                )
            })
            .collect();
        if diffs.is_empty() {
            Ok(())
        } else {
            Err(Error::Mismatch(format!(
                "made with other backbones ({} / {} vs {} / {}): {}",
                other.clip,
                other.dino,
                self.clip,
                self.dino,
                diffs.join("; ")
            )))
        }
    }
}

/// SHA-256 of `bytes` as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A cheap content fingerprint of a weights file: its size and the SHA-256 of its first and last
/// 4 MiB (hashing whole multi-GB checkpoints on every start would cost seconds).
pub fn weights_fingerprint(path: &Path) -> Result<String> {
    const SPAN: u64 = 4 << 20;
    let io = |e| Error::io(format!("cannot read {}", path.display()), path, e);
    let mut f = std::fs::File::open(path)
        .map_err(|e| Error::io(format!("cannot open {}", path.display()), path, e))?;
    let size = f.metadata().map_err(io)?.len();
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; SPAN.min(size) as usize];
    f.read_exact(&mut buf).map_err(io)?;
    hasher.update(&buf);
    if size > SPAN {
        let start = size.saturating_sub(SPAN).max(SPAN);
        f.seek(SeekFrom::Start(start)).map_err(io)?;
        let mut tail = Vec::new();
        f.read_to_end(&mut tail).map_err(io)?;
        hasher.update(&tail);
    }
    Ok(format!("sha256-ends:{size}:{}", hex(&hasher.finalize())))
}
