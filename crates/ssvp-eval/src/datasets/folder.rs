//! A plain folder convention for users' own data ([`super::Layout::Folder`]).
//!
//! ```text
//! <root>/<category>/good/*.png                 normal images (`ok/` or `normal/` also work)
//! <root>/<category>/<defect>/*.png             anomalous images; the folder names the defect
//! <root>/<category>/masks/<defect>/<stem>.png  optional masks, `<stem>_mask.png` also accepted
//! <root>/<category>/train/*.png                optional normal training images (split train;
//!                                              `train/good/` also works)
//! ```
//!
//! Any image extension the readers know (png, jpg, jpeg, bmp, tif, tiff) works for images and
//! masks. `masks` and `train` are reserved folder names. Masks are optional **per defect
//! folder**: when `masks/<defect>/` exists every image of `<defect>/` must have its mask
//! (a missing one is reported); when it does not exist the defect's images are labelled
//! anomalous without a mask (image-level metrics only).

use std::path::Path;

use super::{
    find_mask, list_dirs, list_files, list_images, new_category, rel_string, stem_of, Label,
    Layout, Listing, Problem, ProblemKind, Result, Sample, Split,
};

/// Folder names of normal images.
pub const NORMAL_DIRS: [&str; 3] = ["good", "ok", "normal"];
/// Folder holding `<defect>/` mask folders.
pub const MASKS_DIR: &str = "masks";
/// Folder of normal training images.
pub const TRAIN_DIR: &str = "train";

const MASK_SUFFIXES: [&str; 2] = ["", "_mask"];

pub(crate) fn list(root: &Path, split: Split) -> Result<Listing> {
    let mut categories = Vec::new();
    let mut problems = Vec::new();
    for cls in list_dirs(root)? {
        let cls_dir = root.join(&cls);
        let subdirs = list_dirs(&cls_dir)?;
        let mut samples = Vec::new();
        let push =
            |samples: &mut Vec<Sample>, dir: &Path, name: &str, label, defect: &str, mask| {
                let image_path = dir.join(name);
                samples.push(Sample {
                    category: cls.clone(),
                    rel_path: rel_string(root, &image_path),
                    image_path,
                    mask_path: mask,
                    label,
                    defect_type: defect.to_string(),
                });
            };
        match split {
            Split::Train => {
                let train = cls_dir.join(TRAIN_DIR);
                let good = NORMAL_DIRS
                    .iter()
                    .map(|n| train.join(n))
                    .find(|d| d.is_dir());
                let dir = good.unwrap_or(train);
                if dir.is_dir() {
                    let defect = dir.file_name().and_then(|n| n.to_str()).unwrap_or("good");
                    let defect = if defect == TRAIN_DIR { "good" } else { defect };
                    for name in list_images(&dir)? {
                        push(&mut samples, &dir, &name, Label::Normal, defect, None);
                    }
                }
            }
            Split::Test => {
                for sub in &subdirs {
                    if sub == MASKS_DIR || sub == TRAIN_DIR {
                        continue;
                    }
                    let dir = cls_dir.join(sub);
                    if NORMAL_DIRS.contains(&sub.as_str()) {
                        for name in list_images(&dir)? {
                            push(&mut samples, &dir, &name, Label::Normal, sub, None);
                        }
                        continue;
                    }
                    let mask_dir = cls_dir.join(MASKS_DIR).join(sub);
                    let mask_files = if mask_dir.is_dir() {
                        Some(list_files(&mask_dir)?)
                    } else {
                        None
                    };
                    for name in list_images(&dir)? {
                        let mask = match &mask_files {
                            None => None,
                            Some(files) => {
                                match find_mask(&mask_dir, files, stem_of(&name), &MASK_SUFFIXES) {
                                    Some(m) => Some(m),
                                    None => {
                                        problems.push(Problem {
                                            category: cls.clone(),
                                            path: dir.join(&name),
                                            kind: ProblemKind::MissingMask,
                                        });
                                        continue;
                                    }
                                }
                            }
                        };
                        push(&mut samples, &dir, &name, Label::Anomalous, sub, mask);
                    }
                }
            }
        }
        categories.push(new_category(&cls, Layout::Folder, samples));
    }
    if categories.is_empty() {
        return Err(super::DatasetError::Layout(format!(
            "{}: no category folder (expected <root>/<category>/good/ and <root>/<category>/<defect>/)",
            root.display()
        )));
    }
    Ok(Listing {
        root: root.to_path_buf(),
        categories,
        problems,
    })
}
