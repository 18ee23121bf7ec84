//! `ssvp dataset` end to end, on a tree written by `ssvp synth`.

use std::path::Path;
use std::process::{Command, Output};

fn ssvp() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ssvp"))
}

fn synth(out: &Path) {
    let o = ssvp()
        .args(["synth", "--out"])
        .arg(out)
        .args([
            "--kinds",
            "screw,woven",
            "--per-category",
            "4",
            "--size",
            "40",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

fn dataset(root: &Path, extra: &[&str]) -> Output {
    ssvp()
        .args(["dataset", "--root"])
        .arg(root)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn prints_counts_and_writes_meta_json() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("bench");
    synth(&root);
    let meta = dir.path().join("meta.json");
    let o = dataset(
        &root,
        &["--check", "--write-meta-json", meta.to_str().unwrap()],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("mvtec layout, test split"), "{out}");
    let row = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(name))
            .unwrap()
            .split_whitespace()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    assert_eq!(row("screw"), ["screw", "screw", "4", "4"]);
    assert_eq!(row("total"), ["total", "8", "8"]);

    let index: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&meta).unwrap()).unwrap();
    assert_eq!(index["train"]["woven"].as_array().unwrap().len(), 4);
    assert_eq!(index["test"]["screw"].as_array().unwrap().len(), 8);
    let item = &index["test"]["screw"][0];
    assert_eq!(item["anomaly"], 1);
    assert!(item["mask_path"].as_str().unwrap().ends_with("_mask.png"));

    // The written index reads back (given as a file; paths are relative to the tree root).
    std::fs::copy(&meta, root.join("meta.json")).unwrap();
    let o = dataset(
        &root,
        &[
            "--layout",
            "meta-json",
            "--split",
            "train",
            "--categories",
            "woven",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("meta-json layout, train split"), "{out}");
    assert!(!out.contains("screw"), "{out}");
    // Without --check it says that it read headers only.
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("checked the headers only"), "{err}");
}

#[test]
fn help_says_what_is_checked_without_check() {
    let o = ssvp().args(["dataset", "--help"]).output().unwrap();
    assert!(o.status.success());
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(
        help.contains("Without --check only the files' headers are read"),
        "{help}"
    );
}

#[test]
fn problems_fail_with_every_path_or_are_skipped_with_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("bench");
    synth(&root);
    let gone = root.join("screw/ground_truth/scratch/000_mask.png");
    std::fs::remove_file(&gone).unwrap();
    let broken = root.join("woven/test/good/001.png");
    std::fs::write(&broken, b"not a png").unwrap();

    let o = dataset(&root, &[]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.starts_with("error: reading dataset"), "{err}");
    assert!(err.contains("2 problems"), "{err}");
    assert!(
        err.contains(
            &root
                .join("screw/test/scratch/000.png")
                .display()
                .to_string()
        ),
        "{err}"
    );
    assert!(err.contains(&broken.display().to_string()), "{err}");

    let o = dataset(&root, &["--skip-bad"]);
    assert!(o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("skipped 2 problem(s)"), "{err}");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["total", "7", "7"]),
        "{out}"
    );
}

#[test]
fn bad_arguments_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let o = dataset(&dir.path().join("nowhere"), &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("nowhere"));

    let o = dataset(dir.path(), &["--layout", "imagenet"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown layout `imagenet`"));

    let o = dataset(dir.path(), &["--split", "val"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown split `val`"));

    let o = dataset(dir.path(), &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("cannot recognise"));
}
