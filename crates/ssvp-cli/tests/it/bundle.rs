//! `ssvp bundle`: create (from a bank and a calibration, or building the bank from `--normal`),
//! info (text and JSON), verify (exit 0, then 2 naming a damaged member, a truncated file, a
//! file that is no bundle), unpack into `$SSVP_CACHE` with an empty `HF_HOME` and
//! `HF_HUB_OFFLINE=1`, and detect from the unpacked parts.

use crate::common;

use std::path::Path;
use std::process::{Command, Output};

use common::{fails_with, ok, records, s, ssvp, stderr, synth};
use serde_json::Value;

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `ssvp` offline, with an empty Hugging Face home and `SSVP_CACHE` set.
fn ssvp_offline(args: &[&str], cache: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ssvp"))
        .args(args)
        .env("HF_HOME", "")
        .env("HF_HUB_OFFLINE", "1")
        .env("SSVP_CACHE", cache)
        .output()
        .expect("run ssvp")
}

#[test]
fn create_info_verify_unpack_and_detect_from_a_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let data = root.join("data");
    synth(&data, "disc", 8, 96, 4);
    let good = data.join("disc/train/good");
    let test_good = data.join("disc/test/good");
    let tiny = ["--backbones", "tiny", "--map-size", "96"];

    let bank = root.join("disc.bank");
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
    let cal = root.join("cal.json");
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

    // Create: seeded weights need no file, and it says so.
    let line3 = root.join("line3.ssvp");
    let out = ssvp(&[
        "bundle",
        "create",
        "--bank",
        s(&bank),
        "--calibration",
        s(&cal),
        "--include-weights",
        "--out",
        s(&line3),
    ]);
    ok(&out);
    assert!(
        stderr(&out).contains("2 members (bank, calibration)"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("seeded"), "{}", stderr(&out));

    // Info, as text and as JSON.
    let out = ssvp(&["bundle", "info", s(&line3)]);
    ok(&out);
    let text = stdout(&out);
    for needle in [
        "bank.safetensors",
        "calibration.json",
        "scoring:    references",
        "seeded",
        "class `object`, map 96 px",
    ] {
        assert!(text.contains(needle), "info lacks `{needle}`: {text}");
    }
    let out = ssvp(&["bundle", "info", "--json", s(&line3)]);
    ok(&out);
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(info["id"].as_str().unwrap().len(), 64);
    let members = info["manifest"]["members"].as_array().unwrap();
    assert_eq!(members.len(), 2);
    assert_eq!(members[0]["kind"], "bank");
    assert_eq!(info["manifest"]["backbones"]["towers"][0], "dino");

    // Verify: every digest holds.
    let out = ssvp(&["bundle", "verify", s(&line3)]);
    ok(&out);
    assert!(
        stdout(&out).contains("every digest holds"),
        "{}",
        stdout(&out)
    );

    // A flipped byte in the bank: exit 2, the member named.
    let mut bytes = std::fs::read(&line3).unwrap();
    let at = members[0]["offset"].as_u64().unwrap() as usize + 1000;
    bytes[at] ^= 1;
    let flipped = root.join("flipped.ssvp");
    std::fs::write(&flipped, &bytes).unwrap();
    let out = ssvp(&["bundle", "verify", s(&flipped)]);
    fails_with(&out, "member `bank.safetensors` (bank) is corrupt");
    assert!(stdout(&out).contains("CORRUPT"), "{}", stdout(&out));
    assert!(
        !stderr(&out).contains("calibration.json"),
        "{}",
        stderr(&out)
    );
    // Cut short, and not a bundle at all.
    let cut = root.join("cut.ssvp");
    std::fs::write(&cut, &bytes[..bytes.len() - 10]).unwrap();
    fails_with(&ssvp(&["bundle", "verify", s(&cut)]), "truncated");
    fails_with(
        &ssvp(&["bundle", "verify", s(&bank)]),
        "not an ssvp bundle: bad magic",
    );
    fails_with(
        &ssvp(&["bundle", "info", s(&root.join("missing.ssvp"))]),
        "missing.ssvp",
    );

    // Unpack offline into $SSVP_CACHE; detect reads the unpacked bank and calibration.
    let cache = root.join("cache");
    let out = ssvp_offline(&["bundle", "unpack", "--json", s(&line3)], &cache);
    ok(&out);
    let unpacked: Value = serde_json::from_slice(&out.stdout).unwrap();
    let dir = unpacked["dir"].as_str().unwrap();
    assert!(dir.starts_with(s(&cache)), "{dir}");
    assert_eq!(unpacked["reused"], false);
    let unpacked_bank = unpacked["bank"].as_str().unwrap();
    assert_eq!(
        std::fs::read(unpacked_bank).unwrap(),
        std::fs::read(&bank).unwrap()
    );
    let again = ssvp_offline(&["bundle", "unpack", s(&line3)], &cache);
    ok(&again);
    assert!(
        stdout(&again).contains("already unpacked"),
        "{}",
        stdout(&again)
    );
    let by_bundle = root.join("by-bundle");
    let mut args = vec![
        "detect",
        "--bank",
        unpacked_bank,
        "--calibration",
        unpacked["calibration"].as_str().unwrap(),
        "--out",
        s(&by_bundle),
        s(&test_good),
    ];
    args.extend(tiny);
    let out = ssvp_offline(&args, &cache);
    assert!(
        out.status.code() == Some(0) || out.status.code() == Some(1),
        "{}",
        stderr(&out)
    );
    assert_eq!(records(&by_bundle).len(), 8);

    // The bank built from --normal while packing records the backbones at hand, whole.
    let built = root.join("built.ssvp");
    ok(&ssvp(&[
        "bundle",
        "create",
        "--backbones",
        "tiny",
        "--normal",
        s(&good),
        "--shots",
        "4",
        "--out",
        s(&built),
    ]));
    let out = ssvp(&["bundle", "info", "--json", s(&built)]);
    ok(&out);
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    let backbones = &info["manifest"]["backbones"];
    assert_eq!(backbones["named_by"], "backbones");
    assert_eq!(backbones["identity"]["dino"], "tiny");
    assert_eq!(backbones["preset"], "tiny");
    // No scratch bank is left beside it.
    let stray: Vec<_> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(stray.is_empty(), "{stray:?}");

    // Parts that do not belong together, and weights that cannot be found.
    fails_with(
        &ssvp(&[
            "bundle",
            "create",
            "--calibration",
            s(&cal),
            "--out",
            s(&root.join("x.ssvp")),
        ]),
        "pack the bank too (--bank)",
    );
    fails_with(
        &ssvp_offline(
            &[
                "bundle",
                "create",
                "--bank",
                s(&bank),
                "--include-weights",
                "--dino-weights",
                "/nowhere/dinov3",
                "--out",
                s(&root.join("y.ssvp")),
            ],
            &cache,
        ),
        "dino weights `/nowhere/dinov3`",
    );
    assert!(!root.join("x.ssvp").exists() && !root.join("y.ssvp").exists());
}

/// The offline line PC: a bank made with local DINOv2 weights (the committed 2-block fixture,
/// `anomalydino` preset) is bundled with those weights; unpacked on a "machine" with an empty
/// Hugging Face home and no network, the unpacked weights score exactly as the originals.
#[test]
fn a_bundle_carries_the_dino_weights_a_bank_was_made_with() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let data = root.join("data");
    synth(&data, "disc", 6, 64, 9);
    let (good, test) = (data.join("disc/train/good"), data.join("disc/test"));
    let weights =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../ssvp-backbones/tests/fixtures/dinov2/s");
    let cache = root.join("cache");
    let bank = root.join("line.bank");
    ok(&ssvp_offline(
        &[
            "bank",
            "build",
            "--backbones",
            "anomalydino",
            "--dino-weights",
            s(&weights),
            "--normal",
            s(&good),
            "--out",
            s(&bank),
        ],
        &cache,
    ));
    let line = root.join("line.ssvp");
    ok(&ssvp_offline(
        &[
            "bundle",
            "create",
            "--bank",
            s(&bank),
            "--include-weights",
            "--out",
            s(&line),
        ],
        &cache,
    ));
    let out = ssvp(&["bundle", "info", "--json", s(&line)]);
    ok(&out);
    let info: Value = serde_json::from_slice(&out.stdout).unwrap();
    let manifest = &info["manifest"];
    let paths: Vec<&str> = manifest["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "bank.safetensors",
            "weights/dino/model.safetensors",
            "weights/dino/config.json"
        ]
    );
    assert_eq!(manifest["backbones"]["towers"], serde_json::json!(["dino"]));
    assert_eq!(manifest["weights"][0]["packed"], false);
    assert_eq!(manifest["weights"][1]["packed"], true);

    // Scores on the original machine, then from the unpacked bundle alone.
    let original = root.join("original");
    ok(&ssvp_offline(
        &[
            "detect",
            "--bank",
            s(&bank),
            "--dino-weights",
            s(&weights),
            "--out",
            s(&original),
            s(&test),
        ],
        &cache,
    ));
    let line_pc = root.join("line-pc");
    let out = ssvp_offline(&["bundle", "unpack", "--json", s(&line)], &line_pc);
    ok(&out);
    let unpacked: Value = serde_json::from_slice(&out.stdout).unwrap();
    let from_bundle = root.join("from-bundle");
    ok(&ssvp_offline(
        &[
            "detect",
            "--bank",
            unpacked["bank"].as_str().unwrap(),
            "--dino-weights",
            unpacked["dino_weights"].as_str().unwrap(),
            "--out",
            s(&from_bundle),
            s(&test),
        ],
        &line_pc,
    ));
    let scores = |dir: &Path| -> Vec<f64> {
        records(dir)
            .iter()
            .map(|r| r["detection"]["score"].as_f64().unwrap())
            .collect()
    };
    assert_eq!(scores(&original), scores(&from_bundle));
    assert_eq!(scores(&original).len(), 12);

    // `--bundle` alone, with a calibration inside: on a fresh line PC (empty HF home, no
    // network, empty bundle cache) the detections equal the unbundled model's, field by field.
    let cal = root.join("cal.json");
    let test_good = data.join("disc/test/good");
    let calibrate = [
        "calibrate",
        "--bank",
        s(&bank),
        "--dino-weights",
        s(&weights),
        "--normal",
        s(&test_good),
        "--target-fpr",
        "0.25",
        "--holdout",
        "0",
        "--out",
        s(&cal),
    ];
    ok(&ssvp_offline(&calibrate, &cache));
    let whole = root.join("whole.ssvp");
    let create = [
        "bundle",
        "create",
        "--bank",
        s(&bank),
        "--calibration",
        s(&cal),
        "--include-weights",
        "--out",
        s(&whole),
    ];
    ok(&ssvp_offline(&create, &cache));
    let unbundled = root.join("unbundled");
    let detect = [
        "detect",
        "--bank",
        s(&bank),
        "--dino-weights",
        s(&weights),
        "--calibration",
        s(&cal),
        "--out",
        s(&unbundled),
        s(&test),
    ];
    let status = |out: &Output| out.status.code().unwrap_or(-1);
    let first = ssvp_offline(&detect, &cache);
    assert!(matches!(status(&first), 0 | 1), "{}", stderr(&first));
    let bundled = root.join("bundled");
    let fresh = root.join("fresh-line-pc");
    let args = [
        "detect",
        "--bundle",
        s(&whole),
        "--out",
        s(&bundled),
        s(&test),
    ];
    let second = ssvp_offline(&args, &fresh);
    assert_eq!(status(&first), status(&second), "{}", stderr(&second));
    // Everything but the clock.
    let detections = |dir: &Path| -> Vec<Value> {
        records(dir)
            .into_iter()
            .map(|r| {
                let mut d = r["detection"].clone();
                d.as_object_mut().unwrap().remove("timings");
                d
            })
            .collect()
    };
    assert_eq!(detections(&unbundled), detections(&bundled));
    assert!(detections(&bundled)
        .iter()
        .any(|d| d["calibrated_score"].is_number()));
    // Recalibrating a bundled model on the line: its own calibration is replaced, not loaded.
    let recal = root.join("recal.json");
    let args = [
        "calibrate",
        "--bundle",
        s(&whole),
        "--normal",
        s(&test_good),
        "--target-fpr",
        "0.25",
        "--holdout",
        "0",
        "--out",
        s(&recal),
    ];
    ok(&ssvp_offline(&args, &fresh));
    let threshold = |p: &Path| -> Value {
        let json: Value = serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap();
        json["image"]["threshold"].clone()
    };
    assert_eq!(threshold(&recal), threshold(&cal));
    // A flag naming a part the bundle holds is refused, naming both.
    let out = ssvp_offline(
        &[
            "detect",
            "--bundle",
            s(&whole),
            "--bank",
            s(&bank),
            "--out",
            s(&bundled),
            s(&test),
        ],
        &fresh,
    );
    fails_with(&out, "--bank");
    assert!(stderr(&out).contains("bundle"), "{}", stderr(&out));

    // A corrupted bundle is refused before anything runs, the member named.
    let mut bytes = std::fs::read(&whole).unwrap();
    let n = bytes.len();
    bytes[n - 200] ^= 0x40;
    let broken = root.join("broken.ssvp");
    std::fs::write(&broken, bytes).unwrap();
    let args = [
        "detect",
        "--bundle",
        s(&broken),
        "--out",
        s(&bundled),
        s(&test),
    ];
    let out = ssvp_offline(&args, &root.join("another-line-pc"));
    fails_with(&out, "weights/dino/");
}
