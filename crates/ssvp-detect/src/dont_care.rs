//! Don't-care regions: areas of the part image an operator marks as irrelevant (a label, a
//! fixture edge), which neither score nor show.
//!
//! A [`DontCare`] is a list of polygons in image-normalised coordinates (`x` from 0 at the left
//! edge to 1 at the right, `y` from 0 at the top to 1 at the bottom), so that one set of regions
//! holds for every resolution of the same view. As JSON:
//!
//! ```json
//! {"polygons": [[[0.1, 0.1], [0.4, 0.1], [0.4, 0.3], [0.1, 0.3]]]}
//! ```
//!
//! A point is covered when it lies inside any polygon by the even-odd rule (a ray from it
//! crosses the polygon's edges an odd number of times), so concave polygons work and a
//! self-intersecting one covers its odd-wound parts. The detector applies the regions twice:
//!
//! - **Tokens, before scoring.** A token of a unit (the whole image, or a tile given as its
//!   [`NormRect`] in the image) is masked when its *centre* is covered. The backbones'
//!   preprocessing squashes a unit to a square, so token `(r, c)` of a `rows x cols` grid has its
//!   centre at `((c + 0.5) / cols, (r + 0.5) / rows)` of the unit ([`DontCare::token_mask`]).
//!   Each scorer sets its masked token scores to 0 before it forms the image score and the map
//!   ([`crate::ScoreContext::mask_tokens`]).
//! - **Pixels, after assembly.** The map at the image's own size is set to 0 wherever a pixel's
//!   centre is covered ([`DontCare::zero_map`]), so that smoothing and upsampling never let a
//!   masked area show in overlays or regions.
//!
//! An empty `DontCare` behaves exactly as none.

use std::path::Path;

use serde::{Deserialize, Serialize};
use ssvp_eval::postprocess::AnomalyMap;

use crate::error::{Error, Result};
use crate::tiling::Tile;

/// Most polygons one set of regions may hold.
pub const MAX_POLYGONS: usize = 64;
/// Most points one polygon may have.
pub const MAX_POINTS: usize = 256;

/// A closed polygon: its corners `(x, y)` in image-normalised coordinates (0..=1, `x` to the
/// right, `y` down), the last joined to the first.
pub type Polygon = Vec<(f64, f64)>;

/// Regions of an image that are not inspected (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawDontCare")]
pub struct DontCare {
    /// The polygons, in image-normalised coordinates.
    polygons: Vec<Polygon>,
}

/// The JSON form before it is validated.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDontCare {
    polygons: Vec<Polygon>,
}

impl TryFrom<RawDontCare> for DontCare {
    type Error = Error;

    fn try_from(raw: RawDontCare) -> Result<Self> {
        DontCare::new(raw.polygons)
    }
}

/// A rectangle of an image in image-normalised coordinates: where a unit (the whole image or
/// one of its tiles) lies in it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct NormRect {
    /// Left edge.
    pub x0: f64,
    /// Top edge.
    pub y0: f64,
    /// Right edge.
    pub x1: f64,
    /// Bottom edge.
    pub y1: f64,
}

impl NormRect {
    /// The whole image.
    pub const WHOLE: NormRect = NormRect {
        x0: 0.0,
        y0: 0.0,
        x1: 1.0,
        y1: 1.0,
    };

    /// Where `tile` lies in a `width x height` image.
    pub fn of_tile(tile: &Tile, width: usize, height: usize) -> Self {
        let (w, h) = (width.max(1) as f64, height.max(1) as f64);
        NormRect {
            x0: tile.x as f64 / w,
            y0: tile.y as f64 / h,
            x1: (tile.x + tile.width) as f64 / w,
            y1: (tile.y + tile.height) as f64 / h,
        }
    }
}

impl DontCare {
    /// Regions of `polygons`, validated: at most [`MAX_POLYGONS`] polygons of 3 to
    /// [`MAX_POINTS`] points each, every coordinate a finite number in `[0, 1]`. The error names
    /// the polygon (and point) at fault.
    pub fn new(polygons: Vec<Polygon>) -> Result<Self> {
        if polygons.len() > MAX_POLYGONS {
            return Err(Error::invalid(format!(
                "{} don't-care polygons given; at most {MAX_POLYGONS} are allowed",
                polygons.len()
            )));
        }
        for (i, polygon) in polygons.iter().enumerate() {
            if polygon.len() < 3 {
                return Err(Error::invalid(format!(
                    "don't-care polygon {i} has {} points; a polygon needs at least 3",
                    polygon.len()
                )));
            }
            if polygon.len() > MAX_POINTS {
                return Err(Error::invalid(format!(
                    "don't-care polygon {i} has {} points; at most {MAX_POINTS} are allowed",
                    polygon.len()
                )));
            }
            if let Some((j, (x, y))) = polygon
                .iter()
                .enumerate()
                .find(|(_, (x, y))| !(0.0..=1.0).contains(x) || !(0.0..=1.0).contains(y))
            {
                return Err(Error::invalid(format!(
                    "don't-care polygon {i}, point {j} is ({x}, {y}); coordinates are fractions \
                     of the image's width and height, numbers from 0 to 1"
                )));
            }
        }
        Ok(Self { polygons })
    }

    /// The rectangle with corners `(x0, y0)` and `(x1, y1)` (any order) as one 4-point
    /// polygon; refused like [`DontCare::new`] when a coordinate is outside `[0, 1]`.
    pub fn rectangle(x0: f64, y0: f64, x1: f64, y1: f64) -> Result<Self> {
        Self::new(vec![vec![(x0, y0), (x1, y0), (x1, y1), (x0, y1)]])
    }

    /// The polygons.
    pub fn polygons(&self) -> &[Polygon] {
        &self.polygons
    }

    /// Whether there are no regions (then nothing is masked: the detector behaves exactly as
    /// without regions).
    pub fn is_empty(&self) -> bool {
        self.polygons.is_empty()
    }

    /// Whether the point `(x, y)` (image-normalised) lies inside any polygon, by the even-odd
    /// rule.
    pub fn covers(&self, x: f64, y: f64) -> bool {
        self.polygons.iter().any(|p| inside(p, x, y))
    }

    /// Which tokens of a unit are masked: `grid` is the unit's token grid `(rows, cols)`,
    /// `unit` where the unit lies in the image. Row-major, true where the token's centre
    /// (`((c + 0.5) / cols, (r + 0.5) / rows)` of the unit, which the backbones see squashed to
    /// a square) is covered.
    pub fn token_mask(&self, grid: (usize, usize), unit: NormRect) -> Vec<bool> {
        let (rows, cols) = grid;
        let (w, h) = (unit.x1 - unit.x0, unit.y1 - unit.y0);
        let mut mask = Vec::with_capacity(rows * cols);
        for r in 0..rows {
            let y = unit.y0 + (r as f64 + 0.5) / rows as f64 * h;
            for c in 0..cols {
                let x = unit.x0 + (c as f64 + 0.5) / cols as f64 * w;
                mask.push(self.covers(x, y));
            }
        }
        mask
    }

    /// Which pixels of a `width x height` image are masked: row-major, true where the pixel's
    /// centre `((x + 0.5) / width, (y + 0.5) / height)` is covered (the same answer as
    /// [`DontCare::covers`], computed a row at a time).
    pub fn pixel_mask(&self, width: usize, height: usize) -> Vec<bool> {
        let mut mask = vec![false; width * height];
        let mut crossings = Vec::new();
        for py in 0..height {
            let y = (py as f64 + 0.5) / height as f64;
            let row = &mut mask[py * width..(py + 1) * width];
            for polygon in &self.polygons {
                crossings.clear();
                crossings.extend(edges(polygon).filter_map(|(a, b)| crossing(a, b, y)));
                crossings.sort_by(f64::total_cmp);
                // Inside exactly where an odd number of crossings lies to the right:
                // `c[2k] <= x < c[2k + 1]`.
                for span in crossings.chunks_exact(2) {
                    let first = ((span[0] * width as f64 - 0.5).floor().max(0.0)) as usize;
                    for (px, cell) in row.iter_mut().enumerate().skip(first) {
                        let x = (px as f64 + 0.5) / width as f64;
                        if x >= span[1] {
                            break;
                        }
                        if x >= span[0] {
                            *cell = true;
                        }
                    }
                }
            }
        }
        mask
    }

    /// Sets the map to 0 wherever a pixel's centre is covered (the map is at the image's own
    /// size, so its pixels are the image's).
    pub fn zero_map(&self, map: &mut AnomalyMap) {
        if self.is_empty() {
            return;
        }
        let mask = self.pixel_mask(map.width, map.height);
        for (v, masked) in map.data.iter_mut().zip(mask) {
            if masked {
                *v = 0.0;
            }
        }
    }

    /// Reads regions from a JSON file (`{"polygons": [[[x, y], ...], ...]}`), validated.
    pub fn read(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str(&text).map_err(|e| {
            Error::invalid(format!(
                "{} is not a file of don't-care regions: {e}",
                path.display()
            ))
        })
    }

    /// Writes the regions as JSON, atomically.
    pub fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(Error::model)?;
        ssvp_util::fs::write_atomic(path, text.as_bytes()).map_err(|e| Error::io(path, e))
    }
}

/// The edges of a polygon, the last point joined to the first.
fn edges(polygon: &[(f64, f64)]) -> impl Iterator<Item = ((f64, f64), (f64, f64))> + '_ {
    let n = polygon.len();
    (0..n).map(move |i| (polygon[(i + n - 1) % n], polygon[i]))
}

/// Where the edge `a`-`b` crosses the horizontal line at `y`, if it does (half-open in `y`, so
/// a vertex on the line counts once).
fn crossing(a: (f64, f64), b: (f64, f64), y: f64) -> Option<f64> {
    ((a.1 > y) != (b.1 > y)).then(|| a.0 + (y - a.1) * (b.0 - a.0) / (b.1 - a.1))
}

/// The even-odd test of one polygon: an odd number of crossings right of `x`.
fn inside(polygon: &[(f64, f64)], x: f64, y: f64) -> bool {
    edges(polygon)
        .filter_map(|(a, b)| crossing(a, b, y))
        .filter(|&c| x < c)
        .count()
        % 2
        == 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn bad_polygons_are_named() {
        let err = DontCare::new(vec![vec![(0.1, 0.1), (0.2, 0.2)]]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput);
        assert!(err.to_string().contains("polygon 0 has 2 points"), "{err}");
        let ok = vec![(0.1, 0.1), (0.2, 0.1), (0.2, 0.2)];
        let err =
            DontCare::new(vec![ok.clone(), vec![(0.1, 0.1), (1.5, 0.1), (0.2, 0.2)]]).unwrap_err();
        assert!(err.to_string().contains("polygon 1, point 1"), "{err}");
        let err = DontCare::new(vec![vec![(f64::NAN, 0.1), (0.2, 0.1), (0.2, 0.2)]]).unwrap_err();
        assert!(err.to_string().contains("polygon 0, point 0"), "{err}");
        let err = DontCare::new(vec![ok.clone(); MAX_POLYGONS + 1]).unwrap_err();
        assert!(err.to_string().contains("at most 64"), "{err}");
        let err = DontCare::new(vec![vec![(0.5, 0.5); MAX_POINTS + 1]]).unwrap_err();
        assert!(err.to_string().contains("at most 256"), "{err}");
        assert!(DontCare::rectangle(-0.1, 0.0, 0.5, 0.5).is_err());
        // The JSON form is validated as it is read.
        let bad: std::result::Result<DontCare, _> =
            serde_json::from_str(r#"{"polygons": [[[0, 0], [1, 0]]]}"#);
        assert!(bad.unwrap_err().to_string().contains("polygon 0 has 2"));
    }

    #[test]
    fn json_and_files_round_trip() {
        let dc = DontCare::rectangle(0.1, 0.2, 0.5, 0.75).unwrap();
        let json = serde_json::to_string(&dc).unwrap();
        assert_eq!(
            json,
            r#"{"polygons":[[[0.1,0.2],[0.5,0.2],[0.5,0.75],[0.1,0.75]]]}"#
        );
        assert_eq!(serde_json::from_str::<DontCare>(&json).unwrap(), dc);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dont_care.json");
        dc.write(&path).unwrap();
        assert_eq!(DontCare::read(&path).unwrap(), dc);
        std::fs::write(&path, "{\"polygons\": 3}").unwrap();
        assert_eq!(
            DontCare::read(&path).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
        let missing = DontCare::read(&dir.path().join("none.json")).unwrap_err();
        assert_eq!(missing.kind(), ErrorKind::NotFound);
    }

    /// A concave "U" open at the top: arms at x 0.1–0.3 and 0.7–0.9, the notch down to y 0.6.
    fn u_shape() -> Polygon {
        vec![
            (0.1, 0.1),
            (0.3, 0.1),
            (0.3, 0.6),
            (0.7, 0.6),
            (0.7, 0.1),
            (0.9, 0.1),
            (0.9, 0.9),
            (0.1, 0.9),
        ]
    }

    #[test]
    fn points_inside_convex_and_concave_polygons() {
        let rect = DontCare::rectangle(0.2, 0.2, 0.6, 0.4).unwrap();
        assert!(rect.covers(0.3, 0.3));
        assert!(!rect.covers(0.1, 0.3) && !rect.covers(0.3, 0.5) && !rect.covers(0.7, 0.3));
        // A "U": the notch between its arms is outside.
        let u = DontCare::new(vec![u_shape()]).unwrap();
        assert!(u.covers(0.2, 0.3), "left arm");
        assert!(u.covers(0.8, 0.3), "right arm");
        assert!(u.covers(0.5, 0.8), "base");
        assert!(!u.covers(0.5, 0.3), "the notch");
        assert!(!u.covers(0.95, 0.5) && !u.covers(0.5, 0.05));
        // Two polygons: their union.
        let two = DontCare::new(vec![rect.polygons()[0].clone(), u.polygons()[0].clone()]).unwrap();
        assert!(two.covers(0.5, 0.3) && two.covers(0.5, 0.8));
        assert!(!DontCare::default().covers(0.5, 0.5));
        assert!(DontCare::default().is_empty());
    }

    #[test]
    fn token_masks_take_token_centres_of_the_unit() {
        // A 4 x 4 grid: token centres at 0.125, 0.375, 0.625, 0.875.
        let dc = DontCare::rectangle(0.0, 0.0, 0.5, 0.3).unwrap();
        let mask = dc.token_mask((4, 4), NormRect::WHOLE);
        let expect: Vec<bool> = (0..16).map(|i| i / 4 == 0 && i % 4 < 2).collect();
        assert_eq!(mask, expect);
        // A 2 x 3 (rows x cols) grid: centres x 1/6, 1/2, 5/6 and y 1/4, 3/4.
        let dc = DontCare::rectangle(0.4, 0.5, 1.0, 1.0).unwrap();
        assert_eq!(
            dc.token_mask((2, 3), NormRect::WHOLE),
            vec![false, false, false, false, true, true]
        );
        // The right half of the image as a tile: its token centres are at x 0.625 and 0.875.
        let tile = NormRect::of_tile(
            &Tile {
                x: 50,
                y: 0,
                width: 50,
                height: 100,
            },
            100,
            100,
        );
        assert_eq!(
            tile,
            NormRect {
                x0: 0.5,
                y0: 0.0,
                x1: 1.0,
                y1: 1.0
            }
        );
        let dc = DontCare::rectangle(0.7, 0.0, 1.0, 0.5).unwrap();
        assert_eq!(dc.token_mask((2, 2), tile), vec![false, true, false, false]);
    }

    #[test]
    fn pixel_masks_agree_with_covers() {
        let dc = DontCare::new(vec![
            u_shape(),
            vec![(0.0, 0.0), (1.0, 0.25), (0.5, 0.5)],
            vec![(0.25, 0.25), (0.5, 0.25), (0.5, 0.5), (0.25, 0.5)],
        ])
        .unwrap();
        for (w, h) in [(37, 23), (64, 64), (5, 9)] {
            let mask = dc.pixel_mask(w, h);
            for y in 0..h {
                for x in 0..w {
                    let (fx, fy) = ((x as f64 + 0.5) / w as f64, (y as f64 + 0.5) / h as f64);
                    assert_eq!(mask[y * w + x], dc.covers(fx, fy), "({x}, {y}) of {w}x{h}");
                }
            }
        }
        let mut map = AnomalyMap::new(4, 4, vec![1.0; 16]).unwrap();
        DontCare::rectangle(0.0, 0.0, 0.5, 0.5)
            .unwrap()
            .zero_map(&mut map);
        let zeros: Vec<usize> = (0..16).filter(|&i| map.data[i] == 0.0).collect();
        assert_eq!(zeros, vec![0, 1, 4, 5]);
    }
}
