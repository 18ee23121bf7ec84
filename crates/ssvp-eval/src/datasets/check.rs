//! Per-sample file checks, run in parallel; offending samples are taken out of their category
//! and reported, in category and sample order.

use std::path::Path;

use rayon::prelude::*;

use super::{load_mask, Category, CheckLevel, Layout, Problem, ProblemKind, Sample};

pub(crate) fn check_samples(
    categories: &mut [Category],
    layout: Layout,
    level: CheckLevel,
) -> Vec<Problem> {
    let mut problems = Vec::new();
    for cat in categories.iter_mut() {
        let results: Vec<Vec<Problem>> = cat
            .samples
            .par_iter()
            .map(|s| check_one(s, layout, level))
            .collect();
        let samples = std::mem::take(&mut cat.samples);
        for (sample, found) in samples.into_iter().zip(results) {
            if found.is_empty() {
                cat.samples.push(sample);
            } else {
                problems.extend(found);
            }
        }
    }
    problems
}

fn problem(sample: &Sample, path: &Path, kind: ProblemKind) -> Problem {
    Problem {
        category: sample.category.clone(),
        path: path.to_path_buf(),
        kind,
    }
}

fn check_one(s: &Sample, layout: Layout, level: CheckLevel) -> Vec<Problem> {
    let mut out = Vec::new();
    let image_dims = if !s.image_path.is_file() {
        out.push(problem(s, &s.image_path, ProblemKind::MissingImage));
        None
    } else {
        match read_dims(&s.image_path, level) {
            Ok(d) => Some(d),
            Err(reason) => {
                out.push(problem(
                    s,
                    &s.image_path,
                    ProblemKind::UnreadableImage { reason },
                ));
                None
            }
        }
    };
    if !s.label.is_anomalous() {
        return out;
    }
    let Some(mask_path) = &s.mask_path else {
        if layout.requires_masks() {
            out.push(problem(s, &s.image_path, ProblemKind::MissingMask));
        }
        return out;
    };
    if !mask_path.is_file() {
        out.push(problem(s, mask_path, ProblemKind::MissingMask));
        return out;
    }
    let mask_dims = match level {
        CheckLevel::Headers | CheckLevel::Decode => header_dims(mask_path),
        CheckLevel::Full => match load_mask(mask_path) {
            Ok(m) => {
                if m.count_foreground() == 0 {
                    out.push(problem(s, mask_path, ProblemKind::EmptyMask));
                }
                Ok((m.width, m.height))
            }
            Err(e) => Err(e.to_string()),
        },
    };
    match mask_dims {
        Err(reason) => out.push(problem(
            s,
            mask_path,
            ProblemKind::UnreadableMask { reason },
        )),
        Ok(mask) => {
            if let Some(image) = image_dims {
                if image != mask {
                    out.push(problem(
                        s,
                        mask_path,
                        ProblemKind::MaskSizeMismatch { image, mask },
                    ));
                }
            }
        }
    }
    out
}

fn read_dims(path: &Path, level: CheckLevel) -> Result<(u32, u32), String> {
    match level {
        CheckLevel::Headers => header_dims(path),
        CheckLevel::Decode | CheckLevel::Full => image::ImageReader::open(path)
            .map_err(|e| e.to_string())?
            .with_guessed_format()
            .map_err(|e| e.to_string())?
            .decode()
            .map(|img| (img.width(), img.height()))
            .map_err(|e| e.to_string()),
    }
}

/// Size from the header only; the format is sniffed from the bytes, not trusted from the
/// extension.
fn header_dims(path: &Path) -> Result<(u32, u32), String> {
    image::ImageReader::open(path)
        .map_err(|e| e.to_string())?
        .with_guessed_format()
        .map_err(|e| e.to_string())?
        .into_dimensions()
        .map_err(|e| e.to_string())
}
