//! `ssvp train` and `ssvp eval` end to end with the tiny backbones on a small synthetic set:
//! the run directory's files, the JSONL log, resume, the results JSON (the schema of
//! `ssvp metrics`, and the same numbers when `ssvp metrics` re-evaluates the saved maps), and
//! exit code 2 with a clear message for bad input.

use crate::common;

use std::path::{Path, PathBuf};

use common::{fails_with, ok, s, ssvp, synth};
use serde_json::Value;

struct Setup {
    _tmp: tempfile::TempDir,
    data: PathBuf,
    cache: PathBuf,
    root: PathBuf,
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let data = root.join("data");
    synth(&data, "woven,disc,screw", 4, 48, 2);
    Setup {
        cache: root.join("cache"),
        data,
        root,
        _tmp: tmp,
    }
}

fn train_args<'a>(st: &'a Setup, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "train",
        "--backbones",
        "tiny",
        "--root",
        s(&st.data),
        "--out",
        s(out),
        "--categories",
        "woven,disc",
        "--cache-dir",
        s(&st.cache),
        "--mask-size",
        "48",
        "--batch-size",
        "4",
    ];
    args.extend_from_slice(extra);
    args
}

#[test]
fn train_resume_eval_and_metrics_round_trip() {
    let st = setup();
    let run = st.root.join("run");
    // 16 images, batch 4: 4 steps per epoch. Stop after 6 of 8 steps, then resume.
    ok(&ssvp(&train_args(
        &st,
        &run,
        &["--epochs", "2", "--max-steps", "6"],
    )));
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["step"], 6);
    assert_eq!(state["complete"], false);
    for f in [
        "config.toml",
        "backbones.json",
        "head-step-0000006.safetensors",
        "optim-step-0000006.safetensors",
        "train_log.jsonl",
    ] {
        assert!(run.join(f).is_file(), "{f} missing");
    }
    // A second fresh run into the same directory is refused.
    fails_with(
        &ssvp(&train_args(&st, &run, &["--epochs", "2"])),
        "--resume",
    );
    // Resume with a different epoch count is refused, with the same one continues.
    fails_with(
        &ssvp(&train_args(&st, &run, &["--epochs", "3", "--resume"])),
        "--epochs 3 differs",
    );
    ok(&ssvp(&train_args(&st, &run, &["--resume"])));
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("state.json")).unwrap()).unwrap();
    assert_eq!(
        (state["step"].as_u64(), state["complete"].as_bool()),
        (Some(8), Some(true))
    );
    let log = std::fs::read_to_string(run.join("train_log.jsonl")).unwrap();
    let steps: Vec<u64> = log
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["step"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(steps, (0..8).collect::<Vec<_>>());
    let first: Value = serde_json::from_str(log.lines().next().unwrap()).unwrap();
    for term in [
        "focal_scales",
        "dice_scales",
        "focal_fused",
        "dice_fused",
        "seg",
        "class",
        "vae_recon",
        "vae_kl",
        "vae",
        "margin",
        "total",
        "lr_prompts",
        "lr_rest",
    ] {
        assert!(first[term].is_number(), "log lacks {term}");
    }

    // Zero-shot evaluation on the held-out category, with maps for `ssvp metrics`.
    let results = st.root.join("results.json");
    let maps = st.root.join("maps");
    let md = st.root.join("results.md");
    let out = ssvp(&[
        "eval",
        "--checkpoint",
        s(&run),
        "--root",
        s(&st.data),
        "--categories",
        "screw",
        "--cache-dir",
        s(&st.cache),
        "--eval-size",
        "48",
        "--out",
        s(&results),
        "--markdown",
        s(&md),
        "--save-maps",
        s(&maps),
    ]);
    ok(&out);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("screw") && table.contains("pixel_aupro"),
        "{table}"
    );
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&results).unwrap()).unwrap();
    let screw = &json["categories"]["screw"];
    for m in [
        "image_auroc",
        "image_ap",
        "image_f1_max",
        "pixel_auroc",
        "pixel_ap",
        "pixel_f1_max",
        "pixel_aupro",
        "pixel_aupro_cflow",
    ] {
        let v = screw[m].as_f64().unwrap_or_else(|| panic!("{m} missing"));
        assert!((0.0..=1.0).contains(&v), "{m} = {v}");
        assert_eq!(json["mean"][m], screw[m]);
    }
    assert_eq!(screw["counts"]["images"], 8);
    assert_eq!(screw["counts"]["pixels"]["pixels"], 8 * 48 * 48);
    assert!(md.is_file());
    assert!(maps.join("screw/test/good/000.npy").is_file());

    // `ssvp metrics` on the saved maps and scores reproduces the same numbers.
    let again = st.root.join("again.json");
    ok(&ssvp(&[
        "metrics",
        "--scores",
        s(&maps.join("scores.csv")),
        "--maps",
        s(&maps),
        "--masks",
        s(&st.data),
        "--out",
        s(&again),
    ]));
    let again: Value = serde_json::from_str(&std::fs::read_to_string(&again).unwrap()).unwrap();
    assert_eq!(again["categories"], json["categories"]);
}

#[test]
fn bad_input_exits_2_with_a_clear_message() {
    let st = setup();
    let run = st.root.join("run");
    fails_with(
        &ssvp(&train_args(
            &Setup {
                data: st.root.join("nowhere"),
                cache: st.cache.clone(),
                root: st.root.clone(),
                _tmp: tempfile::tempdir().unwrap(),
            },
            &run,
            &["--epochs", "1"],
        )),
        "does not exist",
    );
    fails_with(
        &ssvp(&train_args(&st, &st.root.join("fresh"), &["--resume"])),
        "holds no run to continue",
    );
    fails_with(
        &ssvp(&[
            "eval",
            "--checkpoint",
            s(&st.data),
            "--root",
            s(&st.data),
            "--cache-dir",
            s(&st.cache),
        ]),
        "is not a run directory",
    );

    // A checkpoint made with other backbones (another seed of the tiny weights) is refused.
    ok(&ssvp(&train_args(
        &st,
        &run,
        &["--epochs", "1", "--max-steps", "1"],
    )));
    let config = st.root.join("other.toml");
    let mut text = std::fs::read_to_string(run.join("config.toml")).unwrap();
    text = text.replace("seed = 7\n", "seed = 8\n");
    assert!(
        text.contains("seed = 8"),
        "backbones seed not found in {text}"
    );
    std::fs::write(&config, text).unwrap();
    fails_with(
        &ssvp(&[
            "eval",
            "--checkpoint",
            s(&run),
            "--root",
            s(&st.data),
            "--categories",
            "screw",
            "--cache-dir",
            s(&st.cache),
            "--config",
            s(&config),
        ]),
        "other backbones",
    );
}

#[test]
fn augmented_training_records_its_setting_and_rejects_bad_probabilities() {
    let st = setup();
    let run = st.root.join("aug");
    ok(&ssvp(&train_args(
        &st,
        &run,
        &["--epochs", "1", "--augment"],
    )));
    let config = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(config.contains("[augment]\nenabled = true\n"), "{config}");
    let log = std::fs::read_to_string(run.join("train_log.jsonl")).unwrap();
    let augmented: u64 = log
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["augmented"]
                .as_u64()
                .unwrap()
        })
        .sum();
    assert!(augmented > 0, "{log}");

    let bad = st.root.join("bad.toml");
    std::fs::write(&bad, "[augment]\nenabled = true\nrotate_p = 1.5\n").unwrap();
    fails_with(
        &ssvp(&train_args(
            &st,
            &st.root.join("bad-run"),
            &["--config", s(&bad)],
        )),
        "augment.rotate_p must be a probability",
    );
}

/// `--resume` needs nothing but the run: root, categories, mask size and cache come from it
/// (the cache directory is not part of the run; without it the features are recomputed).
#[test]
fn resume_takes_every_option_from_the_run() {
    let st = setup();
    let run = st.root.join("run");
    ok(&ssvp(&train_args(
        &st,
        &run,
        &["--epochs", "1", "--max-steps", "2"],
    )));
    ok(&ssvp(&[
        "train",
        "--resume",
        "--out",
        s(&run),
        "--cache-dir",
        s(&st.cache),
    ]));
    let state: Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["complete"], true);
    assert_eq!(state["mask_size"], 48);
    // A flag that contradicts the run is refused, naming both values.
    fails_with(
        &ssvp(&["train", "--resume", "--out", s(&run), "--mask-size", "64"]),
        "--mask-size 64 differs from the run's 48",
    );
}

/// A truncated PNG (its header is fine) is skipped under --skip-bad by train and eval, and
/// stops both without it.
#[test]
fn skip_bad_skips_an_image_that_fails_to_decode() {
    let st = setup();
    let victim = st.data.join("woven/test/good/000.png");
    let bytes = std::fs::read(&victim).unwrap();
    std::fs::write(&victim, &bytes[..bytes.len() / 2]).unwrap();
    let run = st.root.join("run");
    let out = ssvp(&train_args(&st, &run, &["--epochs", "1"]));
    assert_eq!(out.status.code(), Some(2));
    let run = st.root.join("run2");
    let out = ssvp(&train_args(&st, &run, &["--epochs", "1", "--skip-bad"]));
    ok(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("000.png"), "the skipped image is named: {err}");
    assert!(err.contains("training on 15 images"), "{err}");
    let eval = |extra: &[&str]| {
        let mut args = vec![
            "eval",
            "--checkpoint",
            s(&run),
            "--root",
            s(&st.data),
            "--categories",
            "woven",
            "--eval-size",
            "48",
            "--no-cache",
        ];
        args.extend_from_slice(extra);
        ssvp(&args)
    };
    assert_eq!(eval(&[]).status.code(), Some(2));
    ok(&eval(&["--skip-bad"]));
}
