//! [`HeadScorer`]: the trained SSVP head. It reads both towers whole (the patch tokens of the
//! tapped blocks and both global features) and scores `S_final`, the fusion of its global and
//! local scores, with the class name in its prompts. Don't-care tokens are set to 0 in its
//! map `P_map`, and `S_local` and `S_final` are read again from the masked map; `S_global`,
//! from the unit's global feature, is not masked.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::{DType, Tensor};
use sha2::{Digest, Sha256};
use ssvp_features::{Backbones, ImageFeatures, TowerSet};
use ssvp_image::ColorScale;
use ssvp_model::{stack_features, LocalScore, Mode, PromptEncoding, SsvpHead};
use ssvp_util::error::message_chain;

use super::{
    Description, HeadParts, ImageScores, ScoreContext, Scorer, Stage, Stages, UnitMaxima, UnitScore,
};
use crate::error::{Error, ErrorKind, Result};
use crate::tiling::tiled_head_score;

/// The trained head over the backbones it was trained on.
pub struct HeadScorer {
    head: SsvpHead,
    backbones: Arc<Backbones>,
    digest: String,
    /// `T_init` per class name: the prompt bank through the text tower, once per class.
    text: Mutex<HashMap<String, Tensor>>,
}

impl HeadScorer {
    /// The head on `backbones`, which must give the scales and widths it was built for.
    pub fn new(head: SsvpHead, backbones: Arc<Backbones>) -> Result<Self> {
        let id = backbones.identity();
        let m = head.model_config();
        if m.clip_dim != id.clip_dim
            || m.dino_dim != id.dino_dim
            || m.num_scales() != id.clip_layers.len()
        {
            return Err(Error::new(
                ErrorKind::Mismatch,
                format!(
                    "the head expects {} scales of CLIP {} / DINO {} features, the backbones give \
                     {} scales of {} / {}",
                    m.num_scales(),
                    m.clip_dim,
                    m.dino_dim,
                    id.clip_layers.len(),
                    id.clip_dim,
                    id.dino_dim
                ),
            ));
        }
        let digest = head_digest(&head)?;
        Ok(Self {
            head,
            backbones,
            digest,
            text: Mutex::new(HashMap::new()),
        })
    }

    /// The trained head.
    pub fn head(&self) -> &SsvpHead {
        &self.head
    }

    /// `T_init` of a class: computed on first use, then shared by every call.
    fn text_features(&self, class_name: &str) -> Result<Tensor> {
        let mut cache = self
            .text
            .lock()
            .map_err(|_| Error::new(ErrorKind::Model, "the prompt cache lock was poisoned"))?;
        if let Some(t) = cache.get(class_name) {
            return Ok(t.clone());
        }
        let encoder = self.backbones.prompt_encoder()?;
        let t = self
            .head
            .encode_prompts(&encoder, class_name)
            .map_err(|e| {
                Error::new(
                    ErrorKind::Model,
                    format!(
                        "encoding the prompts of `{class_name}`: {}",
                        message_chain(&e)
                    ),
                )
            })?
            .detach();
        cache.insert(class_name.to_string(), t.clone());
        Ok(t)
    }

    /// The head's raw outputs: per image its parts and its token-grid map.
    fn outputs(
        &self,
        features: &[ImageFeatures],
        class_name: &str,
    ) -> Result<Vec<(HeadParts, Vec<f32>)>> {
        let t_init = self.text_features(class_name)?;
        let batch = stack_features(features)?;
        let out = self.head.forward(&batch, &t_init, &Mode::Eval, None)?;
        let maps = out.fused_map.to_dtype(DType::F32)?.to_vec3::<f32>()?;
        let as_f64 = |t: &Tensor| t.to_dtype(DType::F64)?.to_vec1::<f64>();
        let (scores, globals, locals) = (
            as_f64(&out.score)?,
            as_f64(&out.score_global)?,
            as_f64(&out.score_local)?,
        );
        Ok(maps
            .into_iter()
            .enumerate()
            .map(|(i, map)| {
                let parts = HeadParts {
                    score: scores[i],
                    global: globals[i],
                    local: locals[i],
                };
                (parts, map.into_iter().flatten().collect())
            })
            .collect())
    }

    /// The head's parts after don't-care tokens of `P_map` were set to 0 in `map`: `S_local`
    /// read again from the masked map by the head's rule (`model.local_score`: its maximum, or
    /// the mean of its `k` largest cells), and `S_final = (1 - γ)·S_global + γ·S_local` again.
    /// `S_global` is kept: it comes from the global feature of the whole unit, which has seen
    /// the masked area and cannot be masked after the fact. The values match the head's own
    /// up to float rounding (they are computed here in f32/f64 on the host, not by the head's
    /// tensors).
    fn masked_parts(&self, parts: HeadParts, map: &[f32]) -> HeadParts {
        let config = self.head.model_config();
        let local = match config.local_score {
            LocalScore::Max => map.iter().copied().fold(f32::NEG_INFINITY, f32::max),
            LocalScore::TopKMean { k } => {
                let mut sorted = map.to_vec();
                sorted.sort_by(|a, b| b.total_cmp(a));
                let k = k.clamp(1, sorted.len().max(1));
                sorted.iter().take(k).sum::<f32>() / k as f32
            }
        };
        let local = f64::from(local);
        HeadParts {
            score: tiled_head_score(parts.global, local, config.gamma),
            global: parts.global,
            local,
        }
    }

    /// The head's `S_final` of an image from its units' maxima: a unit's own score, or for
    /// tiles the fusion rule over the tiles' maxima of `S_global` and `S_local`.
    pub fn image_head_score(&self, units: &UnitMaxima) -> Option<f64> {
        units.head.map(|h| {
            if units.units == 1 {
                h.score
            } else {
                tiled_head_score(h.global, h.local, self.head.model_config().gamma)
            }
        })
    }
}

impl Scorer for HeadScorer {
    fn describe(&self) -> Description {
        Description {
            mode: "head".into(),
            towers: TowerSet::BOTH,
            settings: None,
            set_size: None,
            map_scale: ColorScale { lo: 0.0, hi: 1.0 },
            stages: Stages {
                head: true,
                memory: false,
            },
            head_digest: self.digest.clone(),
            bank_digest: String::new(),
        }
    }

    fn score(&self, features: &[ImageFeatures], ctx: &ScoreContext<'_>) -> Result<Vec<UnitScore>> {
        let Some(first) = features.first() else {
            return Ok(Vec::new());
        };
        let outputs = ctx.timed(Stage::Head, || self.outputs(features, ctx.class_name))?;
        outputs
            .into_iter()
            .enumerate()
            .map(|(unit, (mut parts, mut map))| {
                if ctx.mask_tokens(unit, first.grid, &mut map) {
                    parts = self.masked_parts(parts, &map);
                }
                Ok(UnitScore {
                    score: parts.score,
                    head: Some(parts),
                    distance: None,
                    normal_scale: None,
                    map: ctx.map(&map, first.grid)?,
                })
            })
            .collect()
    }

    /// A tiled image scores the head's `S_final` of its tiles' maxima, not its highest tile.
    fn image_scores(&self, units: &UnitMaxima) -> ImageScores {
        let head = self.image_head_score(units);
        ImageScores {
            score: head.unwrap_or(units.score),
            head,
        }
    }
}

/// SHA-256 over the head's trainable tensors (sorted by name) and its `[model]` config.
fn head_digest(head: &SsvpHead) -> Result<String> {
    let mut hasher = Sha256::new();
    let model = serde_json::to_string(head.model_config())
        .map_err(|e| Error::new(ErrorKind::Model, e.to_string()))?;
    hasher.update(model.as_bytes());
    for (name, var) in head.named_vars() {
        hasher.update(name.as_bytes());
        let values = var
            .as_tensor()
            .to_dtype(DType::F32)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        for v in values {
            hasher.update(v.to_le_bytes());
        }
    }
    Ok(crate::settings::hex_digest(hasher))
}
