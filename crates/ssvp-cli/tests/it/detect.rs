//! `ssvp calibrate`, `ssvp detect` and `ssvp report` end to end with the tiny backbones on a
//! small synthetic set: the files, the exit codes, bad inputs, stdin lists and globs, shards and
//! their merged report, a calibration of another model refused, and detect == eval.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{ok, records, s, ssvp, ssvp_stdin, stderr, synth};
use serde_json::Value;

fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    data: PathBuf,
    run: PathBuf,
}

fn train(root: &Path, data: &Path, name: &str, seed: &str) -> PathBuf {
    let run = root.join(name);
    ok(&ssvp(&[
        "train",
        "--backbones",
        "tiny",
        "--root",
        s(data),
        "--categories",
        "woven",
        "--out",
        s(&run),
        "--epochs",
        "2",
        "--batch-size",
        "5",
        "--mask-size",
        "64",
        "--seed",
        seed,
        "--no-cache",
    ]));
    run
}

fn setup() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let data = root.join("data");
    synth(&data, "woven,disc", 10, 64, 4);
    let run = train(&root, &data, "run", "111");
    Setup {
        _tmp: tmp,
        root,
        data,
        run,
    }
}

fn model<'a>(st: &'a Setup, class: &'a str) -> Vec<&'a str> {
    vec![
        "--checkpoint",
        s(&st.run),
        "--class-name",
        class,
        "--map-size",
        "64",
    ]
}

#[test]
fn calibrate_detect_report_and_exit_codes() {
    let st = setup();
    let calib = st.root.join("calib.json");
    // Too few good images for the default 1 % false-alarm rate: refused before scoring.
    let mut args = vec!["calibrate"];
    args.extend(model(&st, "woven"));
    let normal = st.data.join("woven/train/good");
    args.extend(["--normal", s(&normal), "--out", s(&calib)]);
    let out = ssvp(&args);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("at least 99"), "{}", stderr(&out));
    assert!(!calib.exists());
    args.extend(["--target-fpr", "0.1", "--holdout", "0"]);
    ok(&ssvp(&args));
    let cal: Value = serde_json::from_str(&std::fs::read_to_string(&calib).unwrap()).unwrap();
    assert_eq!(cal["calibration_images"], 10);
    assert_eq!(cal["settings"]["class_name"], "woven");

    // Detect over a folder and one bad file: every image gets a line, the bad one an error,
    // and the exit code says that an image failed.
    let bad = st.root.join("notes.png");
    std::fs::write(&bad, "not an image").unwrap();
    let out_dir = st.root.join("out");
    let test_dir = st.data.join("woven/test");
    let mut args = vec!["detect"];
    args.extend(model(&st, "woven"));
    args.extend(["--calibration", s(&calib), "--out", s(&out_dir)]);
    args.extend([s(&test_dir), s(&bad)]);
    let out = ssvp(&args);
    assert_eq!(code(&out), 3, "{}", stderr(&out));
    let recs = records(&out_dir);
    assert_eq!(recs.len(), 21);
    let failed: Vec<_> = recs.iter().filter(|r| r["status"] == "error").collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0]["error"]["kind"], "unsupported");
    // The closing lines count the failure and name the file and why.
    let err = stderr(&out);
    assert!(err.contains(", 1 failed; threshold"), "{err}");
    let named = err
        .lines()
        .find(|l| l.trim_start().starts_with("failed:"))
        .unwrap_or_else(|| panic!("no failed file named: {err}"));
    assert!(named.contains("notes.png"), "{err}");
    for f in ["detections.csv", "report.html", "run.json"] {
        assert!(out_dir.join(f).is_file(), "{f}");
    }
    let csv = std::fs::read_to_string(out_dir.join("detections.csv")).unwrap();
    assert_eq!(csv.lines().count(), 22);
    let scored = recs.iter().find(|r| r["status"] == "ok").unwrap();
    let d = &scored["detection"];
    assert!(d["calibrated_score"].is_f64() && d["p_value"].is_f64());
    assert_eq!(
        d["anomalous"].as_bool().unwrap(),
        d["calibrated_score"].as_f64().unwrap() > 0.5
    );
    // Maps and overlays mirror the input tree below the inputs' common folder.
    let map = scored["files"]["map"].as_str().unwrap();
    assert!(map.starts_with("maps/data/woven/test/"), "{map}");
    assert!(out_dir.join(map).is_file());
    // A second run into the same directory is refused; --resume does nothing new.
    assert_eq!(code(&ssvp(&args)), 2);
    args.push("--resume");
    let out = ssvp(&args);
    assert_eq!(code(&out), 3);
    assert!(stderr(&out).contains("0 scored now"), "{}", stderr(&out));
    assert_eq!(records(&out_dir).len(), 21);

    // An output folder inside the input tree is not scored by the next run.
    let inner = test_dir.join("ssvp-out");
    let mut args = vec!["detect"];
    args.extend(model(&st, "woven"));
    args.extend(["--out", s(&inner), "--resume", s(&test_dir)]);
    ok(&ssvp(&args));
    let out = ssvp(&args);
    ok(&out);
    assert!(stderr(&out).contains("20 images"), "{}", stderr(&out));
    assert!(stderr(&out).contains("0 scored now"), "{}", stderr(&out));
    // No calibration and no --threshold: nothing was decided, and the line says so (not
    // "0 flagged").
    assert!(stderr(&out).contains("20 not decided"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("flagged"), "{}", stderr(&out));
    std::fs::remove_dir_all(&inner).unwrap();

    // --fail-on-anomaly: exit 1 when something is flagged (threshold 0 flags everything).
    let mut args = vec!["detect"];
    args.extend(model(&st, "woven"));
    let flag_dir = st.root.join("flag");
    args.extend(["--threshold", "0", "--fail-on-anomaly", "--no-overlays"]);
    // --map-scale LO,HI as its help writes it (one argument), recorded in run.json.
    args.extend(["--map-scale", "0,0.5"]);
    args.extend(["--out", s(&flag_dir), s(&test_dir)]);
    assert_eq!(code(&ssvp(&args)), 1);
    let run: Value =
        serde_json::from_str(&std::fs::read_to_string(flag_dir.join("run.json")).unwrap()).unwrap();
    assert_eq!(run["map_scale"], serde_json::json!([0.0, 0.5]));
    let mut bad_scale = args.clone();
    let at = bad_scale.iter().position(|a| *a == "0,0.5").unwrap();
    bad_scale[at] = "0.5";
    let out = ssvp(&bad_scale);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("is not LO,HI"), "{}", stderr(&out));

    // A list of paths on stdin and a glob over a directory.
    let list_dir = st.root.join("list");
    let good = st.data.join("woven/test/good");
    let list = format!(
        "{}\n\n{}\n",
        good.join("000.png").display(),
        good.join("001.png").display()
    );
    let mut args = vec!["detect"];
    args.extend(model(&st, "woven"));
    args.extend(["--out", s(&list_dir), "-"]);
    ok(&ssvp_stdin(&args, &list));
    assert_eq!(records(&list_dir).len(), 2);
    let glob_dir = st.root.join("glob");
    let mut args = vec!["detect"];
    args.extend(model(&st, "woven"));
    args.extend([
        "--glob",
        "hole/*",
        "--no-maps",
        "--out",
        s(&glob_dir),
        s(&test_dir),
    ]);
    ok(&ssvp(&args));
    let recs = records(&glob_dir);
    assert!(!recs.is_empty());
    assert!(recs
        .iter()
        .all(|r| r["path"].as_str().unwrap().contains("/hole/")));
    assert!(recs.iter().all(|r| r["files"]["map"].is_null()));

    // Two shards and their merged report hold every image once.
    let mut shard_dirs = Vec::new();
    for k in ["0/2", "1/2"] {
        let dir = st.root.join(format!("shard{}", &k[..1]));
        let mut args = vec!["detect"];
        args.extend(model(&st, "woven"));
        args.extend(["--shard", k, "--out", s(&dir), s(&test_dir)]);
        ok(&ssvp(&args));
        shard_dirs.push(dir);
    }
    let (a, b) = (records(&shard_dirs[0]), records(&shard_dirs[1]));
    assert_eq!(a.len() + b.len(), 20);
    assert!(a.iter().all(|r| b.iter().all(|q| q["path"] != r["path"])));
    let merged = st.root.join("merged");
    ok(&ssvp(&[
        "report",
        "--out",
        s(&merged),
        s(&shard_dirs[0]),
        s(&shard_dirs[1]),
    ]));
    let m = records(&merged);
    assert_eq!(m.len(), 20);
    let link = m[0]["files"]["overlay"].as_str().unwrap();
    assert!(link.starts_with("../shard"), "{link}");
    assert!(merged.join(link).is_file());
    let out = ssvp(&[
        "detect",
        "--out",
        s(&merged),
        "--checkpoint",
        s(&st.run),
        "--shard",
        "2/2",
        s(&test_dir),
    ]);
    assert_eq!(code(&out), 2);
    assert!(stderr(&out).contains("0-based"), "{}", stderr(&out));

    // The calibration of another model (same architecture, another seed) is refused.
    let other = train(&st.root, &st.data, "other", "112");
    let out = ssvp(&[
        "detect",
        "--checkpoint",
        s(&other),
        "--class-name",
        "woven",
        "--map-size",
        "64",
        "--calibration",
        s(&calib),
        "--out",
        s(&st.root.join("o")),
        s(&test_dir),
    ]);
    assert_eq!(code(&out), 2);
    assert!(
        stderr(&out).contains("made for another model"),
        "{}",
        stderr(&out)
    );
}

/// `ssvp detect` and `ssvp eval` give the same maps and scores for a benchmark's images (one
/// image per batch on both sides, so even the summation order is the same).
#[test]
fn detect_and_eval_agree_on_a_benchmark() {
    let st = setup();
    let maps = st.root.join("eval-maps");
    ok(&ssvp(&[
        "eval",
        "--checkpoint",
        s(&st.run),
        "--root",
        s(&st.data),
        "--categories",
        "disc",
        "--eval-size",
        "64",
        "--batch-size",
        "1",
        "--no-cache",
        "--save-maps",
        s(&maps),
    ]));
    let out_dir = st.root.join("det");
    let test_dir = st.data.join("disc/test");
    let mut args = vec!["detect"];
    args.extend(model(&st, "disc"));
    args.extend(["--batch-size", "1", "--map-format", "npy", "--no-overlays"]);
    args.extend(["--out", s(&out_dir), s(&test_dir)]);
    ok(&ssvp(&args));
    let scores = std::fs::read_to_string(maps.join("scores.csv")).unwrap();
    let recs = records(&out_dir);
    assert_eq!(recs.len(), 20);
    for r in &recs {
        let path = r["path"].as_str().unwrap();
        let rel = Path::new(path).strip_prefix(&st.data).unwrap();
        let row = scores
            .lines()
            .find(|l| l.contains(&format!(",{},", rel.display())))
            .unwrap();
        let eval_score: f64 = row.rsplit(',').next().unwrap().parse().unwrap();
        let det_score = r["detection"]["score"].as_f64().unwrap();
        assert_eq!(
            format!("{eval_score:e}"),
            format!("{det_score:e}"),
            "{path}"
        );
        let eval_map = std::fs::read(maps.join(rel).with_extension("npy")).unwrap();
        let det_map = std::fs::read(out_dir.join(r["files"]["map"].as_str().unwrap())).unwrap();
        assert_eq!(eval_map, det_map, "{path}");
    }
}
