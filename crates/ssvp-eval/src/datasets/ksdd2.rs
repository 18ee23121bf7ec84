//! KolektorSDD2 as distributed: `{train,test}/<id>.png` with `<id>_GT.png` next to it.
//!
//! The label comes from the GT itself (any non-zero pixel = anomalous), so every GT is decoded
//! here. An image without a GT cannot be labelled and is reported. One category, `ksdd2`.

use std::path::Path;

use rayon::prelude::*;

use super::{
    find_mask, list_files, load_mask, new_category, rel_string, stem_of, DatasetError, Label,
    Layout, Listing, Problem, ProblemKind, Result, Sample, Split,
};

pub(crate) const CATEGORY: &str = "ksdd2";
const GT_SUFFIX: &str = "_GT";

pub(crate) fn list(root: &Path, split: Split) -> Result<Listing> {
    let dir = root.join(split.as_str());
    if !dir.is_dir() {
        return Err(DatasetError::Layout(format!(
            "{}: KSDD2 split folder {} not found",
            root.display(),
            dir.display()
        )));
    }
    let files = list_files(&dir)?;
    let images: Vec<&String> = files
        .iter()
        .filter(|f| super::is_image_name(f) && !stem_of(f).ends_with(GT_SUFFIX))
        .collect();
    let results: Vec<std::result::Result<Sample, Problem>> = images
        .par_iter()
        .map(|name| {
            let image_path = dir.join(name.as_str());
            let problem = |path: &Path, kind| Problem {
                category: CATEGORY.to_string(),
                path: path.to_path_buf(),
                kind,
            };
            let Some(gt) = find_mask(&dir, &files, stem_of(name), &[GT_SUFFIX]) else {
                return Err(problem(&image_path, ProblemKind::MissingMask));
            };
            let mask = load_mask(&gt).map_err(|e| {
                problem(
                    &gt,
                    ProblemKind::UnreadableMask {
                        reason: e.to_string(),
                    },
                )
            })?;
            let anomalous = mask.count_foreground() > 0;
            Ok(Sample {
                category: CATEGORY.to_string(),
                rel_path: rel_string(root, &image_path),
                image_path,
                mask_path: anomalous.then_some(gt),
                label: if anomalous {
                    Label::Anomalous
                } else {
                    Label::Normal
                },
                defect_type: if anomalous { "defect" } else { "good" }.to_string(),
            })
        })
        .collect();
    let mut samples = Vec::new();
    let mut problems = Vec::new();
    for r in results {
        match r {
            Ok(s) => samples.push(s),
            Err(p) => problems.push(p),
        }
    }
    Ok(Listing {
        root: root.to_path_buf(),
        categories: vec![new_category(CATEGORY, Layout::Ksdd2, samples)],
        problems,
    })
}
