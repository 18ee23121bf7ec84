//! Training samples: the labelled images (with their masks) a head is trained on, as read from
//! an auxiliary dataset. Both the augmenter and the training loop take them.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use ssvp_eval::datasets::Dataset;

/// One training image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainSample {
    /// The dataset category the image belongs to.
    pub category: String,
    /// The class name the prompts are built with (the category's prompt name).
    pub class_name: String,
    /// The image file.
    pub image_path: PathBuf,
    /// Its ground-truth mask (none for good images, or where the dataset has none).
    pub mask_path: Option<PathBuf>,
    /// Whether the image shows a defect.
    pub anomalous: bool,
}

/// Every sample of every category of `dataset`, with its category's prompt name.
pub fn samples_from_dataset(dataset: &Dataset) -> Vec<TrainSample> {
    dataset
        .categories
        .iter()
        .flat_map(|cat| {
            cat.samples.iter().map(|s| TrainSample {
                category: cat.name.clone(),
                class_name: cat.prompt_name.clone(),
                image_path: s.image_path.clone(),
                mask_path: s.mask_path.clone(),
                anomalous: s.label.is_anomalous(),
            })
        })
        .collect()
}
