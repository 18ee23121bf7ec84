//! DAGM 2007 as distributed (Kaggle "DAGM_KaggleUpload"): `ClassN/{Train,Test}/NNNN.PNG`,
//! defect labels `ClassN/{Train,Test}/Label/NNNN_label.PNG` (coarse ellipses).
//!
//! An image is defective iff its label file exists (AnomalyCLIP `DAGM.py`). `Labels.txt` is
//! not needed. Defect type `defect` / `good`.

use std::path::Path;

use super::{
    find_mask, list_dirs, list_files, list_images, new_category, rel_string, stem_of, Label,
    Layout, Listing, Result, Sample, Split,
};

pub(crate) fn list(root: &Path, split: Split) -> Result<Listing> {
    let phase = match split {
        Split::Train => "Train",
        Split::Test => "Test",
    };
    let mut categories = Vec::new();
    for cls in list_dirs(root)? {
        let cls_dir = root.join(&cls);
        if !cls_dir.join("Train").is_dir() && !cls_dir.join("Test").is_dir() {
            continue;
        }
        let dir = cls_dir.join(phase);
        let label_dir = dir.join("Label");
        let mut samples = Vec::new();
        if dir.is_dir() {
            let labels = if label_dir.is_dir() {
                list_files(&label_dir)?
            } else {
                Vec::new()
            };
            for name in list_images(&dir)? {
                let image_path = dir.join(&name);
                let mask_path = find_mask(&label_dir, &labels, stem_of(&name), &["_label"]);
                let anomalous = mask_path.is_some();
                samples.push(Sample {
                    category: cls.clone(),
                    rel_path: rel_string(root, &image_path),
                    image_path,
                    mask_path,
                    label: if anomalous {
                        Label::Anomalous
                    } else {
                        Label::Normal
                    },
                    defect_type: if anomalous { "defect" } else { "good" }.to_string(),
                });
            }
        }
        categories.push(new_category(&cls, Layout::DagmRaw, samples));
    }
    if categories.is_empty() {
        return Err(super::DatasetError::Layout(format!(
            "{}: no ClassN/Train or ClassN/Test folder (expected raw DAGM 2007)",
            root.display()
        )));
    }
    Ok(Listing {
        root: root.to_path_buf(),
        categories,
        problems: Vec::new(),
    })
}
