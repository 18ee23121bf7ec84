//! MVTec-style trees: MVTec AD, MPDD, BTAD, DTD-Synthetic, the re-processed SDD/KSDD, DAGM and
//! RSDD trees, the synthetic benchmark.
//!
//! `<cls>/<split>/<specie>/<stem>.<ext>`; `specie` `good` (or BTAD's `ok`) is normal, anything
//! else a defect type whose masks live in `<cls>/ground_truth/<specie>/` as `<stem>_mask.<ext>`
//! (MVTec, MPDD, DTD-Synthetic, SDD) or `<stem>.<ext>` (BTAD; Bayes-PFL trees, `.bmp` images with
//! `.png` masks). The `_mask` name wins when both exist.

use std::path::Path;

use super::{
    find_mask, list_dirs, list_files, list_images, new_category, rel_string, Label, Layout,
    Listing, Result, Sample, Split,
};

/// Folder names of normal images.
pub(crate) const NORMAL_SPECIES: [&str; 2] = ["good", "ok"];

const MASK_SUFFIXES: [&str; 2] = ["_mask", ""];

pub(crate) fn list(root: &Path, layout: Layout, split: Split) -> Result<Listing> {
    let phase = split.as_str();
    let mut categories = Vec::new();
    for cls in list_dirs(root)? {
        let cls_dir = root.join(&cls);
        if !cls_dir.join("test").is_dir() && !cls_dir.join("train").is_dir() {
            // Not a category (e.g. a licence folder or split_csv next to the classes).
            continue;
        }
        let phase_dir = cls_dir.join(phase);
        let mut samples = Vec::new();
        if phase_dir.is_dir() {
            for specie in list_dirs(&phase_dir)? {
                let specie_dir = phase_dir.join(&specie);
                let normal = NORMAL_SPECIES.contains(&specie.as_str());
                let gt_dir = cls_dir.join("ground_truth").join(&specie);
                let gt_files = if !normal && gt_dir.is_dir() {
                    list_files(&gt_dir)?
                } else {
                    Vec::new()
                };
                for name in list_images(&specie_dir)? {
                    let image_path = specie_dir.join(&name);
                    let mask_path = if normal {
                        None
                    } else {
                        find_mask(&gt_dir, &gt_files, super::stem_of(&name), &MASK_SUFFIXES)
                    };
                    samples.push(Sample {
                        category: cls.clone(),
                        rel_path: rel_string(root, &image_path),
                        image_path,
                        mask_path,
                        label: if normal {
                            Label::Normal
                        } else {
                            Label::Anomalous
                        },
                        defect_type: specie.clone(),
                    });
                }
            }
        }
        categories.push(new_category(&cls, layout, samples));
    }
    if categories.is_empty() {
        return Err(super::DatasetError::Layout(format!(
            "{}: no category folder with train/ or test/ (expected an MVTec-style tree <cls>/test/<defect>/)",
            root.display()
        )));
    }
    Ok(Listing {
        root: root.to_path_buf(),
        categories,
        problems: Vec::new(),
    })
}

const MPDD: [&str; 6] = [
    "bracket_black",
    "bracket_brown",
    "bracket_white",
    "connector",
    "metal_plate",
    "tubes",
];

const DTD: [&str; 12] = [
    "Woven_001",
    "Woven_127",
    "Woven_104",
    "Stratified_154",
    "Blotchy_099",
    "Woven_068",
    "Woven_125",
    "Marbled_078",
    "Perforated_037",
    "Mesh_114",
    "Fibrous_183",
    "Matted_069",
];

fn numbered(name: &str, prefix: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    lower.len() > prefix.len()
        && lower.starts_with(prefix)
        && lower[prefix.len()..].chars().all(|c| c.is_ascii_digit())
}

/// Name an MVTec-style tree after its categories (the reader is the same for all of them).
pub(crate) fn name_tree(root: &Path, cats: &[&String]) -> Layout {
    let all = |f: &dyn Fn(&str) -> bool| cats.iter().all(|c| f(c.as_str()));
    let btad = cats.iter().any(|c| {
        let test = root.join(c.as_str()).join("test");
        test.join("ok").is_dir() && !test.join("good").is_dir()
    });
    if btad {
        Layout::Btad
    } else if all(&|c| MPDD.contains(&c)) {
        Layout::Mpdd
    } else if all(&|c| DTD.contains(&c)) {
        Layout::DtdSynthetic
    } else if all(&|c| numbered(c, "class") || numbered(c, "fabric")) {
        Layout::Dagm
    } else if all(&|c| {
        matches!(
            c.to_ascii_lowercase().as_str(),
            "sdd" | "electrical commutators"
        )
    }) {
        Layout::Sdd
    } else if all(&|c| c.eq_ignore_ascii_case("metal15")) {
        Layout::Rsdd
    } else {
        Layout::Mvtec
    }
}
