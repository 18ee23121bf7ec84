//! meta.json: byte-exact writing against Python's json.dumps, round trips, and reading the
//! variants in the wild (AnomalyCLIP's capitalised DAGM keys, Bayes-PFL placeholders).

use std::path::Path;

use crate::datasets_util::{image, mask_at, mvtec_tree, write};
use ssvp_eval::datasets::{
    load, meta_json_string, write_meta_json, Dataset, Label, Layout, LoadOptions, OnProblem,
    ProblemKind, Split,
};

fn read(root: &Path, layout: Option<Layout>, split: Split) -> Dataset {
    load(
        root,
        &LoadOptions {
            layout,
            split: Some(split),
            ..Default::default()
        },
    )
    .unwrap()
    .dataset
}

/// The tree described by reference/gen_datasets_meta.py.
fn fixture_tree(r: &Path) {
    let cls = "pi\u{e8}ce \u{2603}";
    image(r.join(cls).join("train/good/000.png"), 4, 4);
    image(r.join(cls).join("train/good/001 copy.png"), 4, 4);
    image(r.join(cls).join("test/good/000.png"), 4, 4);
    for (defect, stems) in [
        ("broken_large", &["000", "001"][..]),
        ("d\u{e9}faut \u{1F600}", &["010"][..]),
    ] {
        for stem in stems {
            image(r.join(cls).join(format!("test/{defect}/{stem}.png")), 4, 4);
            mask_at(
                r.join(cls)
                    .join(format!("ground_truth/{defect}/{stem}_mask.png")),
                4,
                4,
                1,
                1,
            );
        }
    }
    image(r.join("bottle/train/good/000.png"), 4, 4);
    image(r.join("bottle/test/good/000.png"), 4, 4);
    image(r.join("bottle/test/good/001.png"), 4, 4);
    image(r.join("bottle/test/contamination/003.png"), 4, 4);
    mask_at(
        r.join("bottle/ground_truth/contamination/003_mask.png"),
        4,
        4,
        0,
        0,
    );
}

#[test]
fn written_index_matches_python_json_dumps_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    fixture_tree(dir.path());
    let train = read(dir.path(), None, Split::Train);
    let test = read(dir.path(), None, Split::Test);
    let ours = meta_json_string(Some(&train), Some(&test)).unwrap();
    let python = include_str!("../fixtures/datasets/meta_python.json");
    assert_eq!(ours, python);
}

#[test]
fn write_then_read_gives_the_same_samples() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    mvtec_tree(r);
    let train = read(r, None, Split::Train);
    let test = read(r, None, Split::Test);
    write_meta_json(r.join("meta.json"), Some(&train), Some(&test)).unwrap();
    // With meta.json present the tree is still read as MVTec; ask for the index explicitly.
    assert_eq!(read(r, None, Split::Test).layout, Layout::Mvtec);
    for (split, original) in [(Split::Train, &train), (Split::Test, &test)] {
        let back = read(r, Some(Layout::MetaJson), split);
        assert_eq!(back.layout, Layout::MetaJson);
        assert_eq!(back.categories.len(), original.categories.len());
        for (a, b) in back.categories.iter().zip(&original.categories) {
            assert_eq!(a.name, b.name);
            assert_eq!(a.prompt_name, b.prompt_name);
            assert_eq!(a.samples, b.samples);
        }
    }
    // The meta file itself may be given as the root.
    let via_file = read(&r.join("meta.json"), None, Split::Test);
    assert_eq!(
        via_file.categories,
        read(r, Some(Layout::MetaJson), Split::Test).categories
    );
}

#[test]
fn missing_split_is_written_as_an_empty_object() {
    let dir = tempfile::tempdir().unwrap();
    mvtec_tree(dir.path());
    let test = read(dir.path(), None, Split::Test);
    let text = meta_json_string(None, Some(&test)).unwrap();
    assert!(
        text.starts_with("{\n    \"train\": {},\n    \"test\": {\n        \"bottle\": [\n"),
        "{text}"
    );
    assert!(text.ends_with("        ]\n    }\n}\n"));
}

#[test]
fn reads_anomalyclip_dagm_style_capitalised_keys() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    image(r.join("Class1/Test/0001.PNG"), 6, 6);
    image(r.join("Class1/Test/0002.PNG"), 6, 6);
    mask_at(r.join("Class1/Test/Label/0002_label.PNG"), 6, 6, 3, 3);
    // As AnomalyCLIP's DAGM.py writes it: "Train"/"Test", specie_name "".
    write(
        r.join("meta.json"),
        r#"{
    "Train": {},
    "Test": {
        "Class1": [
            {"img_path": "Class1/Test/0001.PNG", "mask_path": "", "cls_name": "Class1", "specie_name": "", "anomaly": 0},
            {"img_path": "Class1/Test/0002.PNG", "mask_path": "Class1/Test/Label/0002_label.PNG", "cls_name": "Class1", "specie_name": "", "anomaly": 1}
        ]
    }
}
"#,
    );
    let ds = read(r, Some(Layout::MetaJson), Split::Test);
    let c = &ds.categories[0];
    assert_eq!(c.prompt_name, "texture");
    assert_eq!(c.counts().normal, 1);
    assert_eq!(c.counts().anomalous, 1);
    assert_eq!(c.samples[1].label, Label::Anomalous);
    assert_eq!(
        c.samples[1].mask_path.as_deref(),
        Some(r.join("Class1/Test/Label/0002_label.PNG").as_path())
    );
    // The raw tree itself is detected as raw DAGM, not the index.
    assert_eq!(read(r, None, Split::Test).layout, Layout::DagmRaw);
}

#[test]
fn bayes_pfl_placeholders_and_bad_items_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let r = dir.path();
    image(r.join("RSDD/Metal15/test/anomaly/a_0.bmp"), 5, 5);
    mask_at(
        r.join("RSDD/Metal15/ground_truth/anomaly/a_0.png"),
        5,
        5,
        0,
        0,
    );
    // Bayes-PFL's meta_RSDD.json sits next to the dataset folder; extra `dataset_name` field,
    // a placeholder item for the empty train folder.
    write(
        r.join("meta_RSDD.json"),
        r#"{"train": {"Metal15": [{"img_path": "", "mask_path": "", "cls_name": "Metal15", "specie_name": "good", "dataset_name": "", "anomaly": 0}]},
 "test": {"Metal15": [
   {"img_path": "RSDD/Metal15/test/anomaly/a_0.bmp", "mask_path": "RSDD/Metal15/ground_truth/anomaly/a_0.png", "cls_name": "Metal15", "specie_name": "anomaly", "dataset_name": "RSDD", "anomaly": 1},
   {"img_path": "RSDD/Metal15/test/anomaly/a_1.bmp", "mask_path": "", "cls_name": "Metal15", "specie_name": "anomaly", "anomaly": "yes"}
 ]}}"#,
    );
    let meta = r.join("meta_RSDD.json");
    let loaded = load(
        &meta,
        &LoadOptions {
            on_problem: OnProblem::Skip,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(loaded.dataset.layout, Layout::MetaJson);
    assert_eq!(loaded.dataset.len(), 1);
    assert_eq!(loaded.dataset.categories[0].prompt_name, "metal");
    assert_eq!(loaded.skipped.len(), 1);
    assert!(
        matches!(&loaded.skipped[0].kind, ProblemKind::BadEntry { reason } if reason.contains("test[Metal15][1]"))
    );
    // The train split holds only a placeholder: an empty category, reported.
    let err = load(
        &meta,
        &LoadOptions {
            split: Some(Split::Train),
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("empty category"), "{err}");
}

#[test]
fn not_an_index_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path().join("meta.json"), "[1, 2, 3]");
    let err = load(dir.path(), &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a meta.json index"), "{err}");
    write(dir.path().join("meta.json"), r#"{"train": {}}"#);
    let err = load(dir.path(), &LoadOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("no `test` split"), "{err}");
}
