//! Detection without a trained head from the command line, with the tiny backbones on a small
//! synthetic set: `detect --normal`, `bank build` + `detect --bank` (the same scores),
//! `bank info`, a bank with rotations and a coreset, `detect --mutual` (and a set too small to
//! score), `calibrate` on a bank, `eval
//! --mode references|mutual` and its JSON, and the errors of bad references and banks.

use crate::common;

use std::path::Path;

use common::{fails_with, ok, records, s, ssvp, stderr, synth};
use serde_json::Value;

fn scores(dir: &Path) -> Vec<(String, f64)> {
    records(dir)
        .iter()
        .map(|r| {
            (
                r["path"].as_str().unwrap().to_string(),
                r["detection"]["score"].as_f64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn references_bank_mutual_calibrate_and_eval_without_a_head() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let data = root.join("data");
    synth(&data, "disc", 8, 96, 4);
    let good = data.join("disc/train/good");
    let test = data.join("disc/test");
    let tiny = ["--backbones", "tiny", "--map-size", "96"];

    // References straight from a folder.
    let by_refs = root.join("refs");
    let mut args = vec![
        "detect",
        "--normal",
        s(&good),
        "--out",
        s(&by_refs),
        s(&test),
    ];
    args.extend(tiny);
    ok(&ssvp(&args));
    let recs = records(&by_refs);
    assert_eq!(recs.len(), 16);
    assert!(recs.iter().all(|r| r["detection"]["mode"] == "references"));
    assert!(recs.iter().all(|r| r["detection"]["score_head"].is_null()));

    // The same references as a bank file: the same scores, bit for bit.
    let bank = root.join("disc.safetensors");
    let mut args = vec!["bank", "build", "--normal", s(&good), "--out", s(&bank)];
    args.extend(tiny);
    ok(&ssvp(&args));
    // `--device` reaches the towers of `bank build` too: a CPU-only build refuses a GPU
    // instead of quietly building on the CPU.
    if !cfg!(feature = "cuda") {
        let gpu = root.join("gpu.safetensors");
        let mut args = vec!["bank", "build", "--normal", s(&good), "--device", "cuda"];
        args.extend(["--out", s(&gpu)]);
        args.extend(tiny);
        fails_with(&ssvp(&args), "built without CUDA");
        assert!(!gpu.exists());
    }
    let info = ssvp(&["bank", "info", s(&bank)]);
    ok(&info);
    let meta: Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(meta["references"].as_array().unwrap().len(), 8);
    assert_eq!(meta["taps"][0], "dino.4");
    let by_bank = root.join("bank");
    let mut args = vec!["detect", "--bank", s(&bank), "--out", s(&by_bank), s(&test)];
    args.extend(tiny);
    ok(&ssvp(&args));
    assert_eq!(scores(&by_refs), scores(&by_bank));
    // The bank brings its backbones: without --backbones, the same towers and scores.
    let by_record = root.join("record");
    let args = ["detect", "--bank", s(&bank), "--map-size", "96"];
    ok(&ssvp(
        &[&args[..], &["--out", s(&by_record), s(&test)]].concat(),
    ));
    assert_eq!(scores(&by_refs), scores(&by_record));
    // A preset other than the bank's is refused, naming both.
    let out = ssvp(
        &[
            &args[..],
            &["--backbones", "paper", "--out", s(&by_record), s(&test)],
        ]
        .concat(),
    );
    fails_with(&out, "conflicts with the bank");
    assert!(stderr(&out).contains("`tiny`"), "{}", stderr(&out));

    // Rotated copies and a coreset: 8 references x 4 rotations x 64 patches, half of them kept.
    let small = root.join("small.safetensors");
    let mut args = vec![
        "bank",
        "build",
        "--normal",
        s(&good),
        "--rotations",
        "4",
        "--coreset",
        "0.5",
        "--out",
        s(&small),
    ];
    args.extend(tiny);
    ok(&ssvp(&args));
    let info: Value = serde_json::from_slice(&ssvp(&["bank", "info", s(&small)]).stdout).unwrap();
    assert_eq!(info["vectors_per_tap"], 8 * 4 * 64 / 2);
    assert_eq!(info["rotations"], 4);
    let by_small = root.join("small");
    let mut args = vec![
        "detect",
        "--bank",
        s(&small),
        "--out",
        s(&by_small),
        s(&test),
    ];
    args.extend(tiny);
    ok(&ssvp(&args));
    assert_eq!(records(&by_small).len(), 16);

    // Calibrated on good images the bank has not seen, then used by detect.
    let cal = root.join("cal.json");
    let test_good = data.join("disc/test/good");
    let mut args = vec![
        "calibrate",
        "--bank",
        s(&bank),
        "--normal",
        s(&test_good),
        "--target-fpr",
        "0.25",
        "--holdout",
        "0",
        "--out",
        s(&cal),
    ];
    args.extend(tiny);
    ok(&ssvp(&args));
    // The calibration records the backbones it was made with (CLIP left out: a DINO bank).
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&cal).unwrap()).unwrap();
    let made_with = &json["model"]["made_with"]["backbones"];
    assert_eq!(made_with["preset"], "tiny");
    assert_eq!(made_with["clip"], "none");
    let calibrated = root.join("calibrated");
    let mut args = vec![
        "detect",
        "--bank",
        s(&bank),
        "--calibration",
        s(&cal),
        "--out",
        s(&calibrated),
        s(&test),
    ];
    args.extend(tiny);
    ok(&ssvp(&args));
    assert!(records(&calibrated)
        .iter()
        .all(|r| r["detection"]["anomalous"].is_boolean()));
    // Calibrating on the bank's own references is refused.
    let bad_json = root.join("bad.json");
    let mut args = vec![
        "calibrate",
        "--references",
        s(&good),
        "--normal",
        s(&good),
        "--target-fpr",
        "0.25",
        "--holdout",
        "0",
        "--out",
        s(&bad_json),
    ];
    args.extend(tiny);
    fails_with(&ssvp(&args), "references of the bank");

    // Mutual: the 16 test images in one set; 3 images are too few and fail as records.
    let mutual = root.join("mutual");
    let mut args = vec!["detect", "--mutual", "--out", s(&mutual), s(&test)];
    args.extend(tiny);
    ok(&ssvp(&args));
    assert!(records(&mutual)
        .iter()
        .all(|r| r["detection"]["mode"] == "mutual"));
    let few = root.join("few");
    let three = data.join("three");
    std::fs::create_dir_all(&three).unwrap();
    for i in 0..3 {
        let name = format!("00{i}.png");
        std::fs::copy(test.join("good").join(&name), three.join(&name)).unwrap();
    }
    let mut args = vec!["detect", "--mutual", "--out", s(&few), s(&three)];
    args.extend(tiny);
    let out = ssvp(&args);
    assert_eq!(out.status.code(), Some(3), "{}", common::stderr(&out));
    assert!(records(&few).iter().all(|r| r["status"] == "error"
        && r["error"]["kind"] == "not_enough_data"
        && r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("at least 5")));

    // Evaluation: several K and draws give runs and a summary; one K the metrics schema.
    let many = root.join("many.json");
    ok(&ssvp(&[
        "eval",
        "--mode",
        "references",
        "--backbones",
        "tiny",
        "--root",
        s(&data),
        "--shots",
        "1,2",
        "--draws",
        "2",
        "--rotations",
        "2",
        "--eval-size",
        "96",
        "--no-cache",
        "--out",
        s(&many),
    ]));
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&many).unwrap()).unwrap();
    assert_eq!(json["runs"].as_array().unwrap().len(), 4);
    assert_eq!(json["summary"][1]["shots"], 2);
    assert!(json["summary"][0]["mean"]["pixel_auroc"].as_f64().unwrap() > 0.5);
    let one = root.join("one.json");
    ok(&ssvp(&[
        "eval",
        "--mode",
        "mutual",
        "--backbones",
        "tiny",
        "--root",
        s(&data),
        "--eval-size",
        "96",
        "--no-cache",
        "--out",
        s(&one),
    ]));
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&one).unwrap()).unwrap();
    assert!(json["categories"]["disc"]["pixel_auroc"].is_number());
    assert_eq!(json["protocol"]["mode"], "mutual");
}

#[test]
fn bad_references_and_banks_are_refused_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let data = root.join("data");
    synth(&data, "screw", 6, 64, 0);
    let good = data.join("screw/train/good");
    let test = data.join("screw/test");
    let out = root.join("out");
    let detect = |extra: &[&str]| {
        let mut args = vec!["detect", "--backbones", "tiny", "--out", s(&out)];
        args.extend(extra);
        args.push(s(&test));
        ssvp(&args)
    };
    let empty = root.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    fails_with(&detect(&["--normal", s(&empty)]), "no images found");
    let junk = root.join("junk");
    std::fs::create_dir_all(&junk).unwrap();
    std::fs::write(junk.join("a.png"), b"not a png").unwrap();
    fails_with(&detect(&["--normal", s(&junk)]), "could be read");
    fails_with(
        &detect(&["--normal", s(&good), "--shots", "99"]),
        "more references",
    );
    fails_with(&detect(&[]), "nothing to score with");
    fails_with(
        &detect(&["--normal", s(&good), "--mutual"]),
        "one training-free scorer",
    );
    let (none, junk_bank) = (root.join("none.safetensors"), root.join("junk.safetensors"));
    fails_with(&detect(&["--bank", s(&none)]), "does not exist");
    std::fs::write(&junk_bank, b"junk").unwrap();
    fails_with(&detect(&["--bank", s(&junk_bank)]), "not a bank");
    // A bank of other backbones: the tiny towers at another input size.
    let bank = root.join("bank.safetensors");
    ok(&ssvp(&[
        "bank",
        "build",
        "--backbones",
        "tiny",
        "--normal",
        s(&good),
        "--out",
        s(&bank),
    ]));
    let config = root.join("bigger.toml");
    std::fs::write(
        &config,
        "[backbones]\nclip = \"tiny\"\ndino = \"tiny\"\nclip_size = 224\ndino_size = 256\n\n\
         [model]\nclip_layers = [1, 2, 3, 4]\ndino_layers = \"quarter_points\"\nclip_dim = 64\n\
         dino_dim = 64\ntext_width = 64\n",
    )
    .unwrap();
    let out2 = root.join("out2");
    fails_with(
        &ssvp(&[
            "detect",
            "--config",
            s(&config),
            "--bank",
            s(&bank),
            "--out",
            s(&out2),
            s(&test),
        ]),
        "other backbones",
    );
    fails_with(
        &ssvp(&[
            "eval",
            "--mode",
            "references",
            "--backbones",
            "tiny",
            "--root",
            s(&data),
            "--shots",
            "7",
            "--no-cache",
        ]),
        "6 good training images",
    );
}

/// DINOv2 weights in a local directory (the committed 2-block parity fixture) under the
/// `anomalydino` preset, on a machine with no network and an empty Hugging Face cache:
/// references and mutual scoring run, no CLIP is fetched, and a bank made with them brings them
/// back.
#[test]
fn local_dinov2_weights_score_references_offline() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let data = root.join("data");
    synth(&data, "disc", 6, 64, 9);
    let (good, test) = (data.join("disc/train/good"), data.join("disc/test"));
    let weights =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../ssvp-backbones/tests/fixtures/dinov2/s");
    let hf_home = root.join("hf");
    std::fs::create_dir_all(&hf_home).unwrap();
    let offline = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_ssvp"))
            .args(args)
            .env("HF_HOME", &hf_home)
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap()
    };
    let flags = ["--backbones", "anomalydino", "--dino-weights", s(&weights)];
    let by_refs = root.join("refs");
    let args = [
        "detect",
        "--normal",
        s(&good),
        "--out",
        s(&by_refs),
        s(&test),
    ];
    ok(&offline(&[&args[..], &flags[..]].concat()));
    let recs = records(&by_refs);
    assert_eq!(recs.len(), 12);
    assert!(recs.iter().all(|r| r["detection"]["mode"] == "references"));
    let bank = root.join("line.bank");
    let args = ["bank", "build", "--normal", s(&good), "--out", s(&bank)];
    ok(&offline(&[&args[..], &flags[..]].concat()));
    let by_bank = root.join("bank");
    ok(&offline(&[
        "detect",
        "--bank",
        s(&bank),
        "--out",
        s(&by_bank),
        s(&test),
    ]));
    assert_eq!(scores(&by_refs), scores(&by_bank));
    // Naming the bank's own preset again keeps the local weights it was made with.
    let again = root.join("again");
    let args = ["detect", "--bank", s(&bank), "--backbones", "anomalydino"];
    ok(&offline(
        &[&args[..], &["--out", s(&again), s(&test)]].concat(),
    ));
    assert_eq!(scores(&by_refs), scores(&again));
    // Mutual scoring on the same DINOv2 tower: every tapped block, no references.
    let mutual = root.join("mutual");
    let args = ["detect", "--mutual", "--out", s(&mutual), s(&test)];
    ok(&offline(&[&args[..], &flags[..]].concat()));
    let recs = records(&mutual);
    assert_eq!(recs.len(), 12);
    assert!(recs.iter().all(|r| r["detection"]["mode"] == "mutual"));
    // Without the local weights the hub copy is wanted, and the error says how to get it.
    let out = offline(&[
        "detect",
        "--normal",
        s(&good),
        "--out",
        s(&by_refs),
        s(&test),
    ]);
    fails_with(&out, "--dino-weights");
    assert!(
        stderr(&out).contains("ssvp fetch anomalydino"),
        "{}",
        stderr(&out)
    );
}
