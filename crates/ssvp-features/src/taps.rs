//! Taps: which tower's tokens, at which of the tapped blocks, a reader of features takes.
//!
//! The backbones tap a few blocks of each tower ([`crate::TapLayers`]); a [`Tap`] names one of
//! them by tower and position, a [`TapSelection`] (`dino`/`clip`/`both` at `last`/`all`/a list)
//! resolves to taps, and [`towers_of`] turns the taps a reader needs into the [`TowerSet`] to
//! run, which is what stops a tower early or leaves it out.

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::backbones::TowerSet;
use crate::error::{Error, Result};
use crate::features::ImageFeatures;
use crate::identity::BackboneIdentity;

/// One backbone's tapped layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tower {
    /// DINOv3 patch tokens, final-normed (AnomalyDINO's and MuSc's DINO features).
    Dino,
    /// CLIP patch tokens after ln_post and the projection (the tokens the head reads).
    Clip,
}

/// One feature tap: a tower and the position of the layer among the backbones' tapped layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tap {
    /// Which backbone.
    pub tower: Tower,
    /// 0-based position among the tapped layers (`model.clip_layers` / the DINO layer set).
    pub position: usize,
}

impl Tap {
    /// `dino.24`: the tower and the 1-based block of the backbone, as the bank file records it.
    pub fn name(&self, identity: &BackboneIdentity) -> String {
        let (tower, layers) = match self.tower {
            Tower::Dino => ("dino", &identity.dino_layers),
            Tower::Clip => ("clip", &identity.clip_layers),
        };
        match layers.get(self.position) {
            Some(block) => format!("{tower}.{block}"),
            // A tower that is not loaded taps nothing (no bank names such a tap).
            None => format!("{tower}.none"),
        }
    }

    /// The tapped tokens `[N, D]` of one image; an error when its tower was not run or has
    /// fewer tapped layers.
    pub fn of<'a>(&self, features: &'a ImageFeatures) -> Result<&'a Tensor> {
        let (layers, tower) = match self.tower {
            Tower::Dino => (&features.dino_local, "DINOv3"),
            Tower::Clip => (&features.clip_local, "CLIP"),
        };
        layers.get(self.position).ok_or_else(|| {
            Error::Missing(format!(
                "the {tower} features hold {} tapped layers, not the {} this scorer reads",
                layers.len(),
                self.position + 1
            ))
        })
    }
}

/// Which towers the training-free scorers read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Towers {
    /// DINOv3 only (the default: AnomalyDINO's features).
    Dino,
    /// CLIP only.
    Clip,
    /// Both; patch scores are averaged over every tap.
    Both,
}

/// Which of the tapped layers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layers {
    /// The deepest tapped layer.
    Last,
    /// Every tapped layer.
    All,
    /// These 1-based positions among the tapped layers.
    Positions(Vec<usize>),
}

/// The features of the training-free scorers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TapSelection {
    /// Which towers.
    pub towers: Towers,
    /// Which layers of each.
    pub layers: Layers,
}

impl TapSelection {
    /// References' default: DINOv3's deepest tapped layer (AnomalyDINO).
    pub fn references_default() -> Self {
        Self {
            towers: Towers::Dino,
            layers: Layers::Last,
        }
    }

    /// Mutual scoring's default: every tapped DINOv3 layer (MuSc's four).
    pub fn mutual_default() -> Self {
        Self {
            towers: Towers::Dino,
            layers: Layers::All,
        }
    }

    /// Parses `dino`, `clip` or `both` and `last`, `all` or a list of positions like `2,4`.
    pub fn parse(towers: &str, layers: &str) -> Result<Self> {
        let towers = match towers {
            "dino" => Towers::Dino,
            "clip" => Towers::Clip,
            "both" => Towers::Both,
            other => {
                return Err(Error::Config(format!(
                    "unknown features `{other}`: use dino, clip or both"
                )))
            }
        };
        let layers = match layers {
            "last" => Layers::Last,
            "all" => Layers::All,
            list => Layers::Positions(
                list.split(',')
                    .map(|s| {
                        s.trim().parse::<usize>().map_err(|_| {
                            Error::Config(format!(
                                "feature layers must be `last`, `all` or positions like `2,4`, \
                                 not `{list}`"
                            ))
                        })
                    })
                    .collect::<Result<_>>()?,
            ),
        };
        Ok(Self { towers, layers })
    }

    /// The taps on backbones with `scales` tapped layers.
    pub fn resolve(&self, scales: usize) -> Result<Vec<Tap>> {
        if scales == 0 {
            return Err(Error::Config("the backbones tap no layers".into()));
        }
        let positions: Vec<usize> = match &self.layers {
            Layers::Last => vec![scales - 1],
            Layers::All => (0..scales).collect(),
            Layers::Positions(p) => {
                if p.is_empty() || p.iter().any(|&i| i == 0 || i > scales) {
                    return Err(Error::Config(format!(
                        "feature layer positions {p:?} must lie in 1..={scales} (the backbones \
                         tap {scales} layers)"
                    )));
                }
                p.iter().map(|i| i - 1).collect()
            }
        };
        let towers: &[Tower] = match self.towers {
            Towers::Dino => &[Tower::Dino],
            Towers::Clip => &[Tower::Clip],
            Towers::Both => &[Tower::Dino, Tower::Clip],
        };
        Ok(towers
            .iter()
            .flat_map(|&tower| {
                positions
                    .iter()
                    .map(move |&position| Tap { tower, position })
            })
            .collect())
    }
}

/// The tapped tokens of one image, in tap order.
pub fn tapped(features: &ImageFeatures, taps: &[Tap]) -> Result<Vec<Tensor>> {
    taps.iter().map(|t| t.of(features).cloned()).collect()
}

/// The towers that `taps` read, with or without their global features.
pub fn towers_of(taps: &[Tap], globals: bool) -> TowerSet {
    TowerSet {
        clip: taps.iter().any(|t| t.tower == Tower::Clip),
        dino: taps.iter().any(|t| t.tower == Tower::Dino),
        globals,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_selections_parse_and_resolve() {
        let t = TapSelection::parse("both", "2,4")
            .unwrap()
            .resolve(4)
            .unwrap();
        assert_eq!(t.len(), 4);
        assert_eq!(
            t[0],
            Tap {
                tower: Tower::Dino,
                position: 1
            }
        );
        assert_eq!(
            t[3],
            Tap {
                tower: Tower::Clip,
                position: 3
            }
        );
        let last = TapSelection::references_default().resolve(4).unwrap();
        assert_eq!(
            last,
            vec![Tap {
                tower: Tower::Dino,
                position: 3
            }]
        );
        assert!(TapSelection::parse("dino", "5")
            .unwrap()
            .resolve(4)
            .is_err());
        assert!(TapSelection::parse("dino", "0")
            .unwrap()
            .resolve(4)
            .is_err());
        assert!(TapSelection::parse("resnet", "last").is_err());
        assert!(TapSelection::parse("dino", "deep").is_err());
    }
}
