//! Broken trees: every offending path is reported, or skipped on request; never silently.

use std::path::{Path, PathBuf};

use crate::datasets_util::{garbage, image, mask_at, mask_with, mvtec_tree, write};
use ssvp_eval::datasets::{
    load, load_mask, CheckLevel, DatasetError, Layout, LoadOptions, OnProblem, Problem, ProblemKind,
};

/// An MVTec tree with one of each problem (and good samples around them).
fn broken_tree(r: &Path) -> Vec<(PathBuf, &'static str)> {
    mvtec_tree(r);
    // Anomalous image without its mask.
    let no_mask = image(r.join("bottle/test/broken/005.png"), 8, 8);
    // Mask of the wrong size.
    image(r.join("bottle/test/broken/006.png"), 8, 8);
    let wrong = mask_at(
        r.join("bottle/ground_truth/broken/006_mask.png"),
        8,
        7,
        0,
        0,
    );
    // Unreadable image.
    let bad = garbage(r.join("metal_nut/test/good/009.png"));
    // A category whose test folder is empty.
    std::fs::create_dir_all(r.join("cable/test/good")).unwrap();
    std::fs::create_dir_all(r.join("cable/train/good")).unwrap();
    vec![
        (no_mask, "missing_mask"),
        (wrong, "mask_size_mismatch"),
        (r.join("cable"), "empty_category"),
        (bad, "unreadable_image"),
    ]
}

fn kind_name(p: &Problem) -> &'static str {
    match p.kind {
        ProblemKind::MissingImage => "missing_image",
        ProblemKind::UnreadableImage { .. } => "unreadable_image",
        ProblemKind::MissingMask => "missing_mask",
        ProblemKind::UnreadableMask { .. } => "unreadable_mask",
        ProblemKind::MaskSizeMismatch { .. } => "mask_size_mismatch",
        ProblemKind::EmptyMask => "empty_mask",
        ProblemKind::EmptyCategory => "empty_category",
        ProblemKind::BadEntry { .. } => "bad_entry",
    }
}

fn sorted(mut v: Vec<(PathBuf, &'static str)>) -> Vec<(PathBuf, &'static str)> {
    v.sort();
    v
}

#[test]
fn fail_lists_every_offending_path() {
    let dir = tempfile::tempdir().unwrap();
    let expected = broken_tree(dir.path());
    let err = load(dir.path(), &LoadOptions::default()).unwrap_err();
    let DatasetError::Problems(list) = &err else {
        panic!("expected a problem list, got {err}");
    };
    let got: Vec<_> = list
        .0
        .iter()
        .map(|p| (p.path.clone(), kind_name(p)))
        .collect();
    assert_eq!(sorted(got), sorted(expected.clone()));
    let text = err.to_string();
    assert!(text.starts_with("4 problems"), "{text}");
    // Says what to do in the CLI's words, not in Rust's (`OnProblem::Skip`).
    assert!(text.contains("skip them with --skip-bad)"), "{text}");
    assert!(!text.contains("::"), "{text}");
    for (path, _) in &expected {
        assert!(
            text.contains(&path.display().to_string()),
            "{text} lacks {}",
            path.display()
        );
    }
    let size = list
        .0
        .iter()
        .find(|p| kind_name(p) == "mask_size_mismatch")
        .unwrap();
    assert_eq!(
        size.kind,
        ProblemKind::MaskSizeMismatch {
            image: (8, 8),
            mask: (8, 7)
        }
    );
}

#[test]
fn skip_drops_offenders_and_returns_them() {
    let dir = tempfile::tempdir().unwrap();
    let expected = broken_tree(dir.path());
    let loaded = load(
        dir.path(),
        &LoadOptions {
            on_problem: OnProblem::Skip,
            ..Default::default()
        },
    )
    .unwrap();
    let got: Vec<_> = loaded
        .skipped
        .iter()
        .map(|p| (p.path.clone(), kind_name(p)))
        .collect();
    assert_eq!(sorted(got), sorted(expected));
    let ds = loaded.dataset;
    // The empty category is gone, the good samples remain (3 anomalous + 1 normal each).
    let names: Vec<_> = ds.categories.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["bottle", "metal_nut"]);
    assert_eq!(ds.len(), 8);
    assert!(ds.samples().all(|s| !s.rel_path.contains("005")
        && !s.rel_path.contains("006")
        && !s.rel_path.contains("009")));
}

#[test]
fn full_check_decodes_and_flags_empty_masks_and_truncated_files() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    mvtec_tree(r);
    image(r.join("bottle/test/broken/007.png"), 8, 8);
    let empty = mask_with(
        r.join("bottle/ground_truth/broken/007_mask.png"),
        8,
        8,
        255,
        |_, _| false,
    );
    // A png whose header is intact but whose data is cut off.
    let full = image(r.join("bottle/test/good/001.png"), 8, 8);
    let bytes = std::fs::read(&full).unwrap();
    std::fs::write(&full, &bytes[..bytes.len() / 2 + 10]).unwrap();

    // Header checks accept both.
    assert!(load(r, &LoadOptions::default()).is_ok());
    let err = load(
        r,
        &LoadOptions {
            check: CheckLevel::Full,
            ..Default::default()
        },
    )
    .unwrap_err();
    let DatasetError::Problems(list) = err else {
        panic!("expected problems")
    };
    let got: Vec<_> = list
        .0
        .iter()
        .map(|p| (p.path.clone(), kind_name(p)))
        .collect();
    assert_eq!(
        sorted(got),
        sorted(vec![(empty, "empty_mask"), (full, "unreadable_image")])
    );
}

#[test]
fn problems_outside_the_category_filter_are_not_reported() {
    let dir = tempfile::tempdir().unwrap();
    broken_tree(dir.path());
    let opts = LoadOptions {
        categories: vec!["metal_nut".into()],
        ..Default::default()
    };
    let err = load(dir.path(), &opts).unwrap_err().to_string();
    assert!(err.starts_with("1 problem in"), "{err}");
    assert!(err.contains("009.png"), "{err}");
}

#[test]
fn visa_missing_mask_file_and_bad_rows() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    write(
        r.join("split_csv/1cls.csv"),
        "object,split,label,image,mask\n\
         candle,test,normal,candle/Data/Images/Normal/0000.JPG,\n\
         candle,test,anomaly,candle/Data/Images/Anomaly/000.JPG,candle/Data/Masks/Anomaly/000.png\n\
         candle,test,anomaly,candle/Data/Images/Anomaly/001.JPG,\n\
         candle,test,broken,candle/Data/Images/Anomaly/002.JPG,\n\
         candle,test\n",
    );
    image(r.join("candle/Data/Images/Normal/0000.JPG"), 4, 4);
    image(r.join("candle/Data/Images/Anomaly/000.JPG"), 4, 4);
    image(r.join("candle/Data/Images/Anomaly/001.JPG"), 4, 4);
    let err = load(r, &LoadOptions::default()).unwrap_err();
    let DatasetError::Problems(list) = err else {
        panic!("expected problems")
    };
    let got: Vec<_> = list
        .0
        .iter()
        .map(|p| (p.path.clone(), kind_name(p)))
        .collect();
    let csv = r.join("split_csv/1cls.csv");
    assert_eq!(
        sorted(got),
        sorted(vec![
            (csv.clone(), "bad_entry"),
            (csv, "bad_entry"),
            (r.join("candle/Data/Masks/Anomaly/000.png"), "missing_mask"),
            (r.join("candle/Data/Images/Anomaly/001.JPG"), "missing_mask"),
        ])
    );
}

#[test]
fn ksdd2_without_gt_and_folder_with_missing_mask_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    image(r.join("test/20000.png"), 4, 4);
    mask_at(r.join("test/20000_GT.png"), 4, 4, 0, 0);
    let lone = image(r.join("test/20001.png"), 4, 4);
    let err = load(r, &LoadOptions::default()).unwrap_err().to_string();
    assert!(err.contains(&lone.display().to_string()), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    image(r.join("part/good/a.png"), 4, 4);
    let unmasked = image(r.join("part/cut/b.png"), 4, 4);
    image(r.join("part/cut/c.png"), 4, 4);
    mask_at(r.join("part/masks/cut/c.png"), 4, 4, 0, 0);
    let loaded = load(
        r,
        &LoadOptions {
            layout: Some(Layout::Folder),
            on_problem: OnProblem::Skip,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(loaded.skipped.len(), 1);
    assert_eq!(loaded.skipped[0].path, unmasked);
    assert_eq!(loaded.dataset.len(), 2);
}

#[test]
fn load_mask_binarises_gray_and_colour_like_pillow() {
    let dir = tempfile::tempdir().unwrap();
    // Gray: any non-zero value is foreground (VisA class indices 1..).
    let p = mask_with(dir.path().join("m.png"), 3, 1, 1, |x, _| x != 1);
    assert_eq!(load_mask(&p).unwrap().pixels, [1, 0, 1]);
    // Colour: Pillow's L = (19595 R + 38470 G + 7471 B + 0x8000) >> 16, then > 0.
    // (0, 0, 8) -> 0.91 -> 1; (0, 0, 4) -> 0.456 -> 0; (1, 0, 0) -> 0.299 -> 0; (0, 1, 0) -> 1.
    let rgb = image::RgbImage::from_fn(4, 1, |x, _| {
        image::Rgb([[0, 0, 8], [0, 0, 4], [1, 0, 0], [0, 1, 0]][x as usize])
    });
    let p = dir.path().join("c.png");
    rgb.save(&p).unwrap();
    let m = load_mask(&p).unwrap();
    assert_eq!((m.width, m.height), (4, 1));
    assert_eq!(m.pixels, [1, 0, 0, 1]);
    assert_eq!(m.count_foreground(), 2);
    assert!(load_mask(garbage(dir.path().join("x.png"))).is_err());
}

#[test]
fn io_errors_keep_the_path_and_their_cause() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.png");
    let err = load_mask(&missing).unwrap_err();
    let DatasetError::Io { path, .. } = &err else {
        panic!("expected an I/O error, got {err:?}");
    };
    assert_eq!(path, &missing);
    assert!(
        err.to_string().starts_with(&missing.display().to_string()),
        "{err}"
    );
    let cause = std::error::Error::source(&err).expect("the I/O error is kept as the source");
    let io = cause
        .downcast_ref::<std::io::Error>()
        .expect("an io::Error");
    assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
}
