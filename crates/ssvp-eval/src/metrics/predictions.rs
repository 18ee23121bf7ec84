//! Evaluating anyone's predictions: a scores CSV plus optional folders of maps and masks.
//!
//! `scores.csv` has the header `category,path,label,score` (any column order, extra columns
//! ignored), `label` 0 = normal / 1 = anomalous. The image at `path` (relative, e.g.
//! `bottle/test/broken_large/000.png`) is paired by relative directory and stem with
//! - its map `<maps>/bottle/test/broken_large/000.{npy,tiff,tif,png}` (first found, in that order);
//! - its mask `<masks>/bottle/test/broken_large/000.png` or `000_mask.png`; when `<masks>` is an
//!   MVTec-style root (`<masks>/bottle/ground_truth` exists) instead
//!   `<masks>/bottle/ground_truth/broken_large/000_mask.png` or `000.png`. A normal image may
//!   have no mask (all zero); an anomalous one must have one.
//!
//! Resolution rule ([`EvalResolution`]): by default every image is evaluated on its map's grid
//! and the mask is brought to that grid by the field's protocol (0/255 mask, PIL bilinear
//! resize, `> 0.5`), which is what AnomalyCLIP/AdaCLIP/APRIL-GAN do at 518x518.

use std::collections::{BTreeMap, HashSet};
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use rayon::prelude::*;

use super::{binary_metrics, MetricsError, PixelAccumulator};
use crate::maps::io::{read_map, read_mask, MapError};
use crate::postprocess::{
    gaussian_filter, resize_bilinear, resize_mask, AnomalyMap, GtMask, PostprocessError,
};
use crate::report::{csv_field, CategoryResult, EvaluationReport};

/// The score of one evaluated image: what `ssvp eval` writes as a row of `scores.csv`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ImageScore {
    /// The category (on-disk name) of the image (the `category` column).
    pub category: String,
    /// Image path relative to the dataset root (the `path` column).
    pub path: String,
    /// The ground truth (the `label` column: 1 = anomalous, 0 = normal).
    pub anomalous: bool,
    /// The image's anomaly score (the `score` column).
    pub score: f64,
}

/// `category,path,label,score` text of `scores`: the input [`parse_scores_csv`] reads.
pub fn scores_csv(scores: &[ImageScore]) -> String {
    let mut out = String::from("category,path,label,score\n");
    for s in scores {
        out.push_str(&format!(
            "{},{},{},{:e}\n",
            csv_field(&s.category),
            csv_field(&s.path),
            u8::from(s.anomalous),
            s.score
        ));
    }
    out
}

/// One row of the scores CSV.
#[derive(Clone, Debug, PartialEq)]
pub struct ScoreRow {
    /// 1-based line number in the CSV (for error messages).
    pub line: usize,
    /// The `category` column.
    pub category: String,
    /// The `path` column: the image relative to the dataset root.
    pub path: String,
    /// The `label` column (1 = anomalous).
    pub anomalous: bool,
    /// The `score` column (finite).
    pub score: f64,
}

/// Why predictions could not be evaluated.
#[derive(Debug, thiserror::Error)]
pub enum PredictionsError {
    /// The scores CSV could not be read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The CSV file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// A malformed line of the scores CSV.
    #[error("{}:{line}: {message}", path.display())]
    Csv {
        /// The CSV file.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// What is wrong with the line.
        message: String,
    },
    /// An image path that could escape the map or mask folder.
    #[error("image path {image:?} must be relative, without `..` or a root")]
    BadPath {
        /// The `path` column as written.
        image: String,
    },
    /// No map file of an image exists.
    #[error("no map for {image} (tried {})", list(tried))]
    MissingMap {
        /// The image (the `path` column).
        image: String,
        /// Every candidate path that was looked for.
        tried: Vec<PathBuf>,
    },
    /// An anomalous image has no mask file.
    #[error("anomalous image {image} has no mask (tried {})", list(tried))]
    MissingMask {
        /// The image (the `path` column).
        image: String,
        /// Every candidate path that was looked for.
        tried: Vec<PathBuf>,
    },
    /// A map or mask file that could not be read.
    #[error("{}: {source}", path.display())]
    Map {
        /// The map or mask file.
        path: PathBuf,
        /// Why it could not be read.
        source: MapError,
    },
    /// Under [`EvalResolution::Strict`], a map and its mask of different sizes.
    #[error("{image}: map {} is {}x{} but mask {} is {}x{} (sizes must match with --eval-size strict)",
        map.display(), map_size.0, map_size.1, mask.display(), mask_size.0, mask_size.1)]
    SizeMismatch {
        /// The image (the `path` column).
        image: String,
        /// The map file.
        map: PathBuf,
        /// The map's width and height.
        map_size: (usize, usize),
        /// The mask file.
        mask: PathBuf,
        /// The mask's width and height.
        mask_size: (usize, usize),
    },
    /// Resizing or smoothing an image's map or mask failed.
    #[error("{image}: {source}")]
    Postprocess {
        /// The image (the `path` column).
        image: String,
        /// The failure.
        source: PostprocessError,
    },
    /// A metric rejected its input (non-finite scores, mismatched sizes).
    #[error("{context}: {source}")]
    Metrics {
        /// Where it happened (a category, an image).
        context: String,
        /// The failure.
        source: MetricsError,
    },
}

fn list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reads and validates a scores CSV.
pub fn read_scores_csv(path: &Path) -> Result<Vec<ScoreRow>, PredictionsError> {
    let text = std::fs::read_to_string(path).map_err(|source| PredictionsError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse_scores_csv(&text, path)
}

/// Splits one CSV line into fields (RFC 4180 double quotes; no multi-line fields).
fn split_csv_line(line: &str) -> Result<Vec<String>, String> {
    let mut fields = Vec::new();
    let mut field = String::new();
    let mut chars = line.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', true) => quoted = false,
            ('"', false) if field.is_empty() => quoted = true,
            (',', false) => fields.push(std::mem::take(&mut field)),
            (c, _) => field.push(c),
        }
    }
    if quoted {
        return Err("unterminated quoted field".into());
    }
    fields.push(field);
    Ok(fields)
}

/// Parses scores CSV text; `source` names the file in errors.
pub fn parse_scores_csv(text: &str, source: &Path) -> Result<Vec<ScoreRow>, PredictionsError> {
    let err = |line: usize, message: String| PredictionsError::Csv {
        path: source.to_path_buf(),
        line,
        message,
    };
    let mut lines = text
        .trim_start_matches('\u{feff}')
        .lines()
        .enumerate()
        .map(|(i, l)| (i + 1, l.trim_end_matches('\r')))
        .filter(|(_, l)| !l.trim().is_empty());
    let (header_line, header) = lines.next().ok_or_else(|| {
        err(
            1,
            "empty file; expected the header category,path,label,score".into(),
        )
    })?;
    let header = split_csv_line(header).map_err(|m| err(header_line, m))?;
    let column = |name: &str| {
        header.iter().position(|h| h.trim() == name).ok_or_else(|| {
            err(
                header_line,
                format!(
                    "header has no {name:?} column (expected category,path,label,score; got {})",
                    header.join(",")
                ),
            )
        })
    };
    let (c_cat, c_path, c_label, c_score) = (
        column("category")?,
        column("path")?,
        column("label")?,
        column("score")?,
    );
    let mut rows = Vec::new();
    let mut seen = HashSet::new();
    for (line, text) in lines {
        let fields = split_csv_line(text).map_err(|m| err(line, m))?;
        if fields.len() != header.len() {
            return Err(err(
                line,
                format!("{} fields, the header has {}", fields.len(), header.len()),
            ));
        }
        let category = fields[c_cat].trim().to_string();
        let path = fields[c_path].trim().to_string();
        if category.is_empty() || path.is_empty() {
            return Err(err(line, "empty category or path".into()));
        }
        let anomalous = match fields[c_label].trim() {
            "0" => false,
            "1" => true,
            other => return Err(err(line, format!("label {other:?} is not 0 or 1"))),
        };
        let raw = fields[c_score].trim();
        let score: f64 = raw
            .parse()
            .map_err(|_| err(line, format!("score {raw:?} is not a number")))?;
        if !score.is_finite() {
            return Err(err(line, format!("score {raw:?} is not finite")));
        }
        if !seen.insert((category.clone(), path.clone())) {
            return Err(err(line, format!("duplicate row for {category}/{path}")));
        }
        rows.push(ScoreRow {
            line,
            category,
            path,
            anomalous,
            score,
        });
    }
    if rows.is_empty() {
        return Err(err(header_line, "no data rows".into()));
    }
    Ok(rows)
}

/// Where pixel metrics are evaluated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum EvalResolution {
    /// On each map's own grid; masks are resized to it by the protocol (the default).
    #[default]
    Map,
    /// On an `n x n` grid: maps resized bilinearly (torch), masks by the protocol (the field
    /// uses 518).
    Square(usize),
    /// On the mask's grid (the original image size): maps resized bilinearly to it. A normal
    /// image without a mask file stays on its map's grid.
    Original,
    /// Maps and masks must already have the same size; a mismatch is an error.
    Strict,
}

impl FromStr for EvalResolution {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "map" => Ok(Self::Map),
            "original" => Ok(Self::Original),
            "strict" => Ok(Self::Strict),
            n => match n.parse::<usize>() {
                Ok(n) if n > 0 => Ok(Self::Square(n)),
                _ => Err(format!(
                    "{s:?} is not map, original, strict or a positive size like 518"
                )),
            },
        }
    }
}

/// Pixel-level inputs and post-processing choices.
#[derive(Clone, Debug)]
pub struct PixelOptions {
    /// The folder of maps, mirroring the images' relative paths.
    pub maps: PathBuf,
    /// The folder of masks: the same mirror, or an MVTec-style root with `ground_truth`.
    pub masks: PathBuf,
    /// The grid pixel metrics are computed on.
    pub resolution: EvalResolution,
    /// Bilinear map resizing convention (torch `align_corners`).
    pub align_corners: bool,
    /// Optional scipy-style Gaussian smoothing (σ in evaluation pixels) after resizing.
    pub sigma: Option<f64>,
}

/// The relative path split into its directory components and stem, rejecting escapes.
fn split_relative(image: &str) -> Option<(Vec<String>, String)> {
    let path = Path::new(image);
    let mut dirs = Vec::new();
    for c in path.parent()?.components() {
        match c {
            Component::Normal(s) => dirs.push(s.to_str()?.to_string()),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some((dirs, path.file_stem()?.to_str()?.to_string()))
}

fn join(root: &Path, dirs: &[String], file: &str) -> PathBuf {
    let mut p = root.to_path_buf();
    p.extend(dirs);
    p.push(file);
    p
}

/// Candidate map files of an image, in lookup order.
pub fn map_candidates(maps: &Path, image: &str) -> Vec<PathBuf> {
    let Some((dirs, stem)) = split_relative(image) else {
        return Vec::new();
    };
    ["npy", "tiff", "tif", "png"]
        .iter()
        .map(|ext| join(maps, &dirs, &format!("{stem}.{ext}")))
        .collect()
}

/// Candidate mask files of an image, in lookup order.
///
/// Mirrored layout: `<masks>/<dir>/<stem>.png`, then `<stem>_mask.png`. When `<masks>` is an
/// MVTec-style root (the path has a `test` component and `<masks>/<...>/ground_truth` exists),
/// only `ground_truth/<defect>/<stem>_mask.png` and `<stem>.png` are used — the mirrored
/// candidate would be the test image itself.
pub fn mask_candidates(masks: &Path, image: &str) -> Vec<PathBuf> {
    let Some((dirs, stem)) = split_relative(image) else {
        return Vec::new();
    };
    let mut layout = dirs.clone();
    let mut names = [format!("{stem}.png"), format!("{stem}_mask.png")];
    if let Some(i) = dirs.iter().position(|d| d == "test") {
        if join(masks, &dirs[..i], "ground_truth").is_dir() {
            layout[i] = "ground_truth".to_string();
            names.swap(0, 1);
        }
    }
    names.iter().map(|n| join(masks, &layout, n)).collect()
}

/// Loads one image's map and mask and brings both to the evaluation grid.
fn load_pixels(
    row: &ScoreRow,
    opts: &PixelOptions,
) -> Result<(AnomalyMap, GtMask), PredictionsError> {
    let tried = map_candidates(&opts.maps, &row.path);
    if tried.is_empty() {
        return Err(PredictionsError::BadPath {
            image: row.path.clone(),
        });
    }
    let map_path = tried.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
        PredictionsError::MissingMap {
            image: row.path.clone(),
            tried: tried.clone(),
        }
    })?;
    let map = read_map(&map_path).map_err(|source| PredictionsError::Map {
        path: map_path.clone(),
        source,
    })?;
    let mask_tried = mask_candidates(&opts.masks, &row.path);
    let mask_file = mask_tried.iter().find(|p| p.is_file());
    let mask = match mask_file {
        Some(p) => Some((
            p.clone(),
            read_mask(p).map_err(|source| PredictionsError::Map {
                path: p.clone(),
                source,
            })?,
        )),
        None if row.anomalous => {
            return Err(PredictionsError::MissingMask {
                image: row.path.clone(),
                tried: mask_tried,
            })
        }
        None => None,
    };
    let post = |source| PredictionsError::Postprocess {
        image: row.path.clone(),
        source,
    };
    let (w, h) = match (opts.resolution, &mask) {
        (EvalResolution::Square(n), _) => (n, n),
        (EvalResolution::Original, Some((_, m))) => m.size(),
        (EvalResolution::Strict, Some((p, m))) if m.size() != map.size() => {
            return Err(PredictionsError::SizeMismatch {
                image: row.path.clone(),
                map: map_path,
                map_size: map.size(),
                mask: p.clone(),
                mask_size: m.size(),
            })
        }
        _ => map.size(),
    };
    let mut map = if map.size() == (w, h) {
        map
    } else {
        resize_bilinear(&map, w, h, opts.align_corners).map_err(post)?
    };
    if let Some(sigma) = opts.sigma {
        map = gaussian_filter(&map, sigma).map_err(post)?;
    }
    let mask = match mask {
        Some((_, m)) => resize_mask(&m, w, h).map_err(post)?,
        None => GtMask {
            width: w,
            height: h,
            data: vec![false; w * h],
        },
    };
    Ok((map, mask))
}

/// Evaluates score rows (and, with `pixels`, their maps and masks) per category.
///
/// Images are loaded in parallel in small batches and pushed one at a time into a streaming
/// [`PixelAccumulator`], so memory stays at a few bytes per evaluated pixel.
pub fn evaluate_predictions(
    rows: &[ScoreRow],
    pixels: Option<&PixelOptions>,
) -> Result<EvaluationReport, PredictionsError> {
    let mut by_category: BTreeMap<&str, Vec<&ScoreRow>> = BTreeMap::new();
    for row in rows {
        by_category.entry(&row.category).or_default().push(row);
    }
    let mut results = BTreeMap::new();
    for (category, rows) in by_category {
        let scores: Vec<f64> = rows.iter().map(|r| r.score).collect();
        let labels: Vec<bool> = rows.iter().map(|r| r.anomalous).collect();
        let image =
            binary_metrics(&scores, &labels).map_err(|source| PredictionsError::Metrics {
                context: format!("category {category}"),
                source,
            })?;
        let pixel = match pixels {
            Some(opts) => {
                let mut acc = PixelAccumulator::new();
                let batch = 2 * rayon::current_num_threads().max(1);
                for chunk in rows.chunks(batch) {
                    let loaded: Vec<_> = chunk
                        .par_iter()
                        .map(|row| load_pixels(row, opts))
                        .collect::<Result<_, _>>()?;
                    for (row, (map, mask)) in chunk.iter().zip(loaded) {
                        acc.push(&map.data, &mask.data, map.width, map.height)
                            .map_err(|source| PredictionsError::Metrics {
                                context: format!("map of {}", row.path),
                                source,
                            })?;
                    }
                }
                Some(acc.finish())
            }
            None => None,
        };
        let anomalous = labels.iter().filter(|&&l| l).count() as u64;
        results.insert(
            category.to_string(),
            CategoryResult::new(&image, pixel.as_ref(), rows.len() as u64, anomalous),
        );
    }
    Ok(EvaluationReport::from_categories(results))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_errors_name_the_line() {
        let src = Path::new("s.csv");
        let ok = parse_scores_csv("category,path,label,score\nb,\"x,1.png\",1,0.5\n", src).unwrap();
        assert_eq!(ok[0].path, "x,1.png");
        let e = parse_scores_csv(
            "category,path,label,score\nb,x.png,1,0.5\nb,y.png,2,0.1\n",
            src,
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "s.csv:3: label \"2\" is not 0 or 1");
        let e = parse_scores_csv("category,path,label,score\nb,y.png,0,nan\n", src).unwrap_err();
        assert!(
            e.to_string()
                .contains("s.csv:2: score \"nan\" is not finite"),
            "{e}"
        );
        let e = parse_scores_csv("cat,path,label,score\n", src).unwrap_err();
        assert!(e.to_string().contains("no \"category\" column"), "{e}");
    }

    #[test]
    fn candidates_follow_the_pairing_rule() {
        let maps = map_candidates(Path::new("m"), "bottle/test/crack/000.png");
        assert_eq!(maps[0], Path::new("m/bottle/test/crack/000.npy"));
        let masks = mask_candidates(Path::new("k"), "bottle/test/crack/000.png");
        assert_eq!(masks[0], Path::new("k/bottle/test/crack/000.png"));
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("bottle/ground_truth")).unwrap();
        let masks = mask_candidates(root.path(), "bottle/test/crack/000.png");
        assert_eq!(
            masks[0],
            root.path().join("bottle/ground_truth/crack/000_mask.png")
        );
        assert!(map_candidates(Path::new("m"), "../x.png").is_empty());
    }

    #[test]
    fn resolution_parses() {
        assert_eq!("518".parse(), Ok(EvalResolution::Square(518)));
        assert_eq!("map".parse(), Ok(EvalResolution::Map));
        assert!("0".parse::<EvalResolution>().is_err());
    }
}
