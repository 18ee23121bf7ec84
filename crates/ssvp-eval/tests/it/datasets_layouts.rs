//! Every supported layout on a tiny generated tree: detection, counts, labels, stem pairing,
//! prompt names.

use std::path::Path;

use crate::datasets_util::{image, mask_at, mask_with, mvtec_tree, write};
use ssvp_eval::datasets::{
    detect_layout, load, load_mask, Dataset, Label, Layout, LoadOptions, Split,
};

fn read(root: &Path, layout: Option<Layout>, split: Split) -> Dataset {
    let loaded = load(
        root,
        &LoadOptions {
            layout,
            split: Some(split),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(loaded.skipped.is_empty(), "{:?}", loaded.skipped);
    loaded.dataset
}

fn counts(ds: &Dataset) -> Vec<(String, usize, usize)> {
    ds.categories
        .iter()
        .map(|c| (c.name.clone(), c.counts().normal, c.counts().anomalous))
        .collect()
}

/// The foreground pixel x of the (single-pixel) mask of each anomalous sample, by image stem.
fn mask_pixels(ds: &Dataset) -> Vec<(String, u32)> {
    ds.samples()
        .filter(|s| s.label == Label::Anomalous)
        .map(|s| {
            let m = load_mask(s.mask_path.as_ref().unwrap()).unwrap();
            let i = m.pixels.iter().position(|&p| p == 1).unwrap() as u32;
            let stem = s
                .image_path
                .file_stem()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (stem, i % m.width)
        })
        .collect()
}

#[test]
fn mvtec_test_split_pairs_masks_by_stem() {
    let dir = tempfile::tempdir().unwrap();
    mvtec_tree(dir.path());
    assert_eq!(detect_layout(dir.path()).unwrap(), Layout::Mvtec);
    let ds = read(dir.path(), None, Split::Test);
    assert_eq!(ds.layout, Layout::Mvtec);
    assert_eq!(
        counts(&ds),
        vec![("bottle".into(), 1, 3), ("metal_nut".into(), 1, 3)]
    );
    // Mask NNN_mask.png marks pixel x = NNN: the stem decides, not the listing order.
    for (stem, x) in mask_pixels(&ds) {
        assert_eq!(stem.parse::<u32>().unwrap(), x);
    }
    let nut = ds.category("metal_nut").unwrap();
    assert_eq!(nut.prompt_name, "metal nut");
    // Defect folders in sorted order: broken/ before good/.
    let s = &nut.samples[0];
    assert_eq!(s.rel_path, "metal_nut/test/broken/000.png");
    assert_eq!(s.defect_type, "broken");
    assert_eq!(
        s.mask_path.as_deref(),
        Some(
            dir.path()
                .join("metal_nut/ground_truth/broken/000_mask.png")
                .as_path()
        )
    );
    assert_eq!(nut.samples[3].defect_type, "good");
    assert_eq!(nut.samples[3].label, Label::Normal);
    assert_eq!(nut.samples[3].mask_path, None);
}

#[test]
fn mvtec_train_split_is_the_normal_training_images() {
    let dir = tempfile::tempdir().unwrap();
    mvtec_tree(dir.path());
    let ds = read(dir.path(), Some(Layout::Mvtec), Split::Train);
    assert_eq!(ds.split, Split::Train);
    assert_eq!(
        counts(&ds),
        vec![("bottle".into(), 2, 0), ("metal_nut".into(), 2, 0)]
    );
}

#[test]
fn category_filter_keeps_order_and_rejects_unknown_names() {
    let dir = tempfile::tempdir().unwrap();
    mvtec_tree(dir.path());
    let opts = LoadOptions {
        categories: vec!["metal_nut".into(), "bottle".into()],
        ..Default::default()
    };
    let ds = load(dir.path(), &opts).unwrap().dataset;
    let names: Vec<_> = ds.categories.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["metal_nut", "bottle"]);
    let err = load(
        dir.path(),
        &LoadOptions {
            categories: vec!["cable".into()],
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("cable") && err.contains("bottle, metal_nut"),
        "{err}"
    );
}

#[test]
fn mpdd_is_recognised_by_its_categories() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    image(r.join("bracket_black/test/good/000.png"), 6, 5);
    image(r.join("bracket_black/test/hole/000.png"), 6, 5);
    mask_at(
        r.join("bracket_black/ground_truth/hole/000_mask.png"),
        6,
        5,
        1,
        1,
    );
    image(r.join("tubes/test/good/000.png"), 6, 5);
    image(r.join("tubes/test/anomalous/007.png"), 6, 5);
    mask_at(
        r.join("tubes/ground_truth/anomalous/007_mask.png"),
        6,
        5,
        1,
        1,
    );
    let ds = read(r, None, Split::Test);
    assert_eq!(ds.layout, Layout::Mpdd);
    assert_eq!(
        counts(&ds),
        vec![("bracket_black".into(), 1, 1), ("tubes".into(), 1, 1)]
    );
    assert_eq!(ds.categories[0].prompt_name, "bracket black");
}

#[test]
fn btad_ok_ko_with_bmp_images_and_same_stem_masks() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    for (cls, ext) in [("01", "bmp"), ("02", "png"), ("03", "bmp")] {
        image(r.join(format!("{cls}/train/ok/0000.{ext}")), 7, 4);
        image(r.join(format!("{cls}/test/ok/0000.{ext}")), 7, 4);
        image(r.join(format!("{cls}/test/ko/0003.{ext}")), 7, 4);
        image(r.join(format!("{cls}/test/ko/0001.{ext}")), 7, 4);
        mask_at(
            r.join(format!("{cls}/ground_truth/ko/0001.png")),
            7,
            4,
            1,
            0,
        );
        mask_at(
            r.join(format!("{cls}/ground_truth/ko/0003.{ext}")),
            7,
            4,
            3,
            0,
        );
    }
    let ds = read(r, None, Split::Test);
    assert_eq!(ds.layout, Layout::Btad);
    assert_eq!(
        counts(&ds),
        vec![
            ("01".into(), 1, 2),
            ("02".into(), 1, 2),
            ("03".into(), 1, 2)
        ]
    );
    for (stem, x) in mask_pixels(&ds) {
        assert_eq!(stem.parse::<u32>().unwrap(), x);
    }
    let prompts: Vec<_> = ds
        .categories
        .iter()
        .map(|c| c.prompt_name.as_str())
        .collect();
    assert_eq!(prompts, ["metal", "wood", "metal"]);
    assert_eq!(ds.categories[0].samples[2].defect_type, "ok");
    assert_eq!(counts(&read(r, None, Split::Train))[1], ("02".into(), 1, 0));
}

#[test]
fn rsdd_reprocessed_tree_bmp_images_png_masks() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    image(
        r.join("Metal15/test/good/RSDD_I-metal-000001_0000000200.bmp"),
        5,
        9,
    );
    image(
        r.join("Metal15/test/anomaly/RSDD_I-metal-defect-000001_0000000000.bmp"),
        5,
        9,
    );
    mask_at(
        r.join("Metal15/ground_truth/anomaly/RSDD_I-metal-defect-000001_0000000000.png"),
        5,
        9,
        2,
        2,
    );
    std::fs::create_dir_all(r.join("Metal15/train/good")).unwrap();
    let ds = read(r, None, Split::Test);
    assert_eq!(ds.layout, Layout::Rsdd);
    assert_eq!(counts(&ds), vec![("Metal15".into(), 1, 1)]);
    assert_eq!(ds.categories[0].prompt_name, "metal");
}

#[test]
fn sdd_dagm_and_dtd_reprocessed_trees_are_named_by_category() {
    let cases: [(&str, Layout, &str); 3] = [
        ("SDD", Layout::Sdd, "electrical commutator"),
        ("Class3", Layout::Dagm, "texture"),
        ("Woven_001", Layout::DtdSynthetic, "woven"),
    ];
    for (cls, layout, prompt) in cases {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        image(r.join(cls).join("train/good/000.png"), 4, 4);
        image(r.join(cls).join("test/good/000.png"), 4, 4);
        image(r.join(cls).join("test/defect/001.png"), 4, 4);
        mask_at(
            r.join(cls).join("ground_truth/defect/001_mask.png"),
            4,
            4,
            0,
            0,
        );
        let ds = read(r, None, Split::Test);
        assert_eq!(ds.layout, layout, "{cls}");
        assert_eq!(counts(&ds), vec![(cls.to_string(), 1, 1)]);
        assert_eq!(ds.categories[0].prompt_name, prompt);
    }
}

#[test]
fn visa_split_csv_with_multiclass_masks() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    write(
        r.join("split_csv/1cls.csv"),
        "object,split,label,image,mask\n\
         pcb1,train,normal,pcb1/Data/Images/Normal/0000.JPG,\n\
         pcb1,test,normal,pcb1/Data/Images/Normal/0001.JPG,\n\
         pcb1,test,anomaly,pcb1/Data/Images/Anomaly/000.JPG,pcb1/Data/Masks/Anomaly/000.png\n\
         chewinggum,test,anomaly,chewinggum/Data/Images/Anomaly/005.JPG,chewinggum/Data/Masks/Anomaly/005.png\n\
         chewinggum,test,normal,chewinggum/Data/Images/Normal/0100.JPG,\n\
         chewinggum,train,normal,chewinggum/Data/Images/Normal/0101.JPG,\n",
    );
    for p in [
        "pcb1/Data/Images/Normal/0000.JPG",
        "pcb1/Data/Images/Normal/0001.JPG",
        "pcb1/Data/Images/Anomaly/000.JPG",
        "chewinggum/Data/Images/Anomaly/005.JPG",
        "chewinggum/Data/Images/Normal/0100.JPG",
        "chewinggum/Data/Images/Normal/0101.JPG",
    ] {
        image(r.join(p), 10, 6);
    }
    // Multi-class index maps: classes 1, 2 and 7 are all foreground.
    mask_with(
        r.join("pcb1/Data/Masks/Anomaly/000.png"),
        10,
        6,
        2,
        |x, _| x < 3,
    );
    mask_with(
        r.join("chewinggum/Data/Masks/Anomaly/005.png"),
        10,
        6,
        7,
        |x, y| x == 9 && y == 5,
    );
    let ds = read(r, None, Split::Test);
    assert_eq!(ds.layout, Layout::Visa);
    // Category order = first appearance in the csv.
    assert_eq!(
        counts(&ds),
        vec![("pcb1".into(), 1, 1), ("chewinggum".into(), 1, 1)]
    );
    let prompts: Vec<_> = ds
        .categories
        .iter()
        .map(|c| c.prompt_name.as_str())
        .collect();
    assert_eq!(prompts, ["printed circuit board", "chewing gum"]);
    let a = &ds.categories[0].samples[1]; // csv row order
    assert_eq!(a.defect_type, "");
    assert_eq!(a.rel_path, "pcb1/Data/Images/Anomaly/000.JPG");
    let m = load_mask(a.mask_path.as_ref().unwrap()).unwrap();
    assert_eq!((m.width, m.height), (10, 6));
    let expected: Vec<u8> = (0..60).map(|i| u8::from(i % 10 < 3)).collect();
    assert_eq!(m.pixels, expected);
    assert_eq!(
        counts(&read(r, None, Split::Train)),
        vec![("pcb1".into(), 1, 0), ("chewinggum".into(), 1, 0)]
    );
}

#[test]
fn ksdd2_raw_labels_come_from_the_gt() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    for split in ["train", "test"] {
        image(r.join(format!("{split}/10000.png")), 4, 12);
        mask_with(
            r.join(format!("{split}/10000_GT.png")),
            4,
            12,
            255,
            |_, _| false,
        );
        image(r.join(format!("{split}/10001.png")), 4, 12);
        mask_at(r.join(format!("{split}/10001_GT.png")), 4, 12, 2, 7);
    }
    image(r.join("test/10002.png"), 4, 12);
    mask_with(r.join("test/10002_GT.png"), 4, 12, 0, |_, _| true);
    assert_eq!(detect_layout(r).unwrap(), Layout::Ksdd2);
    let ds = read(r, None, Split::Test);
    assert_eq!(counts(&ds), vec![("ksdd2".into(), 2, 1)]);
    assert_eq!(ds.categories[0].prompt_name, "electrical commutator");
    let labels: Vec<_> = ds
        .samples()
        .map(|s| (s.rel_path.as_str(), s.label, s.mask_path.is_some()))
        .collect();
    assert_eq!(
        labels,
        [
            ("test/10000.png", Label::Normal, false),
            ("test/10001.png", Label::Anomalous, true),
            ("test/10002.png", Label::Normal, false),
        ]
    );
    assert_eq!(
        counts(&read(r, None, Split::Train)),
        vec![("ksdd2".into(), 1, 1)]
    );
}

#[test]
fn dagm_raw_defective_iff_label_file_exists() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    for cls in ["Class1", "Class2"] {
        image(r.join(format!("{cls}/Test/0001.PNG")), 8, 8);
        image(r.join(format!("{cls}/Test/0002.PNG")), 8, 8);
        mask_at(
            r.join(format!("{cls}/Test/Label/0002_label.PNG")),
            8,
            8,
            4,
            4,
        );
        write(r.join(format!("{cls}/Test/Label/Labels.txt")), "1\n");
        image(r.join(format!("{cls}/Train/0005.PNG")), 8, 8);
        std::fs::create_dir_all(r.join(format!("{cls}/Train/Label"))).unwrap();
    }
    assert_eq!(detect_layout(r).unwrap(), Layout::DagmRaw);
    let ds = read(r, None, Split::Test);
    assert_eq!(
        counts(&ds),
        vec![("Class1".into(), 1, 1), ("Class2".into(), 1, 1)]
    );
    assert_eq!(ds.categories[0].prompt_name, "texture");
    let s = &ds.categories[1].samples[1];
    assert_eq!(s.rel_path, "Class2/Test/0002.PNG");
    assert!(s
        .mask_path
        .as_ref()
        .unwrap()
        .ends_with("Class2/Test/Label/0002_label.PNG"));
    assert_eq!(
        counts(&read(r, None, Split::Train))[0],
        ("Class1".into(), 1, 0)
    );
}

#[test]
fn plain_folders_with_optional_masks() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    image(r.join("gasket/good/a.jpg"), 9, 9);
    image(r.join("gasket/good/b.png"), 9, 9);
    image(r.join("gasket/cut/c.png"), 9, 9);
    image(r.join("gasket/cut/d.bmp"), 9, 9);
    mask_at(r.join("gasket/masks/cut/c.png"), 9, 9, 1, 1);
    mask_at(r.join("gasket/masks/cut/d_mask.png"), 9, 9, 2, 2);
    image(r.join("gasket/dent/e.png"), 9, 9); // no masks/dent: image-level only
    image(r.join("gasket/train/f.png"), 9, 9);
    assert_eq!(detect_layout(r).unwrap(), Layout::Folder);
    let ds = read(r, None, Split::Test);
    assert_eq!(counts(&ds), vec![("gasket".into(), 2, 3)]);
    let by_name: Vec<_> = ds
        .samples()
        .map(|s| {
            (
                s.rel_path.as_str(),
                s.defect_type.as_str(),
                s.mask_path
                    .as_ref()
                    .map(|m| m.file_name().unwrap().to_string_lossy().into_owned()),
            )
        })
        .collect();
    assert_eq!(
        by_name,
        [
            ("gasket/cut/c.png", "cut", Some("c.png".to_string())),
            ("gasket/cut/d.bmp", "cut", Some("d_mask.png".to_string())),
            ("gasket/dent/e.png", "dent", None),
            ("gasket/good/a.jpg", "good", None),
            ("gasket/good/b.png", "good", None),
        ]
    );
    let train = read(r, None, Split::Train);
    assert_eq!(counts(&train), vec![("gasket".into(), 1, 0)]);
}

#[test]
fn layout_names_parse() {
    for l in Layout::ALL {
        assert_eq!(l.name().parse::<Layout>().unwrap(), l);
    }
    assert_eq!("MVTec_AD".parse::<Layout>().unwrap(), Layout::Mvtec);
    assert!("imagenet".parse::<Layout>().unwrap_err().contains("mvtec"));
}

#[test]
fn unrecognisable_tree_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("stuff/things")).unwrap();
    let err = load(dir.path(), &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot recognise"), "{err}");
    let err = load(dir.path().join("absent"), &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("absent"), "{err}");
}
