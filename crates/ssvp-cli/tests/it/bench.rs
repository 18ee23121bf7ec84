//! `ssvp bench`: the report's shape and arithmetic on the tiny towers (no timing is asserted),
//! the stages that run in each mode, and the refusals.

use crate::common;

use common::{ok, ssvp, stderr};
use serde_json::Value;

fn bench(args: &[&str]) -> Value {
    let mut all = vec!["bench", "--setting", "tiny", "--json", "--no-peak"];
    all.extend_from_slice(args);
    let out = ssvp(&all);
    ok(&out);
    serde_json::from_slice(&out.stdout).expect("bench --json prints JSON")
}

fn stage<'a>(report: &'a Value, name: &str) -> Option<&'a Value> {
    report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == name)
}

fn names(report: &Value) -> Vec<String> {
    report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn head_mode_reports_every_stage_with_the_towers_work() {
    let r = bench(&[
        "--images",
        "3",
        "--batch-size",
        "2",
        "--image-size",
        "96x80",
    ]);
    assert_eq!(r["setting"], "tiny");
    assert_eq!(r["mode"], "head");
    assert_eq!(r["device"], "cpu");
    assert_eq!(r["images"], 3);
    assert_eq!(r["batch_size"], 2);
    assert_eq!(r["image_size"], serde_json::json!([96, 80]));
    assert_eq!(
        names(&r),
        [
            "decode",
            "preprocess",
            "clip",
            "dino",
            "head",
            "postprocess"
        ]
    );
    let (clip, dino) = (stage(&r, "clip").unwrap(), stage(&r, "dino").unwrap());
    let (cg, dg) = (
        clip["gflop"].as_f64().unwrap(),
        dino["gflop"].as_f64().unwrap(),
    );
    assert!(cg > 0.0 && dg > 0.0);
    assert!((r["gflop_per_image"].as_f64().unwrap() - (cg + dg)).abs() < 1e-12);
    for s in [clip, dino] {
        let (ms, gflops) = (s["ms"].as_f64().unwrap(), s["gflops"].as_f64().unwrap());
        let expected = s["gflop"].as_f64().unwrap() / (ms / 1e3);
        assert!((gflops - expected).abs() <= 1e-9 * expected, "{s}");
        assert!(s["peak_share"].is_null(), "no probe was asked for");
    }
    assert!(stage(&r, "head").unwrap()["gflop"].is_null());
    let ms = r["ms_per_image"].as_f64().unwrap();
    assert!((r["images_per_s"].as_f64().unwrap() * ms - 1e3).abs() < 1e-6);
    assert!(r["fma_peak"].is_null());
}

/// References read DINOv3 alone and no global feature: no CLIP or head stage, and DINOv3's work
/// is that of its deepest tap, not of the whole tower.
#[test]
fn references_skip_clip_and_stop_dino_at_its_deepest_tap() {
    let head = bench(&[
        "--images",
        "1",
        "--batch-size",
        "1",
        "--image-size",
        "64x64",
    ]);
    let refs = bench(&[
        "--references",
        "2",
        "--images",
        "2",
        "--batch-size",
        "2",
        "--image-size",
        "64x64",
    ]);
    assert_eq!(refs["mode"], "references");
    assert_eq!(
        names(&refs),
        ["decode", "preprocess", "dino", "memory", "postprocess"]
    );
    let whole = stage(&head, "dino").unwrap()["gflop"].as_f64().unwrap();
    let stopped = stage(&refs, "dino").unwrap()["gflop"].as_f64().unwrap();
    assert!(stopped > 0.0 && stopped <= whole, "{stopped} vs {whole}");
}

#[test]
fn the_probe_gives_a_share_of_peak_and_the_table_prints() {
    let out = ssvp(&[
        "bench",
        "--setting",
        "tiny",
        "--images",
        "1",
        "--batch-size",
        "1",
        "--image-size",
        "64x64",
    ]);
    ok(&out);
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "stage",
        "clip",
        "dino",
        "images/s",
        "FMA peak",
        "peak memory",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
}

#[test]
fn bad_settings_are_refused_with_a_reason() {
    for (args, needle) in [
        (
            vec!["--setting", "tiny", "--checkpoint", "/nowhere"],
            "need --setting real",
        ),
        (vec!["--setting", "tiny", "--images", "0"], "at least one"),
        (vec!["--setting", "tiny", "--image-size", "64"], "WxH"),
        (
            vec!["--setting", "tiny", "--references", "0"],
            "at least one",
        ),
        (vec!["--setting", "tiny", "--device", "tpu"], "cpu, cuda"),
        (vec!["--setting", "huge"], "possible values"),
    ] {
        let mut all = vec!["bench", "--no-peak"];
        all.extend(args.iter().copied());
        let out = ssvp(&all);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = stderr(&out);
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}
