//! `ssvp metrics` end to end on a tiny generated benchmark (`ssvp synth`, 32x32 images):
//! values asserted against hand-countable expectations (image AUROC by brute-force pair
//! counting; perfect maps give pixel metrics of exactly 1), skipped metrics reported as null
//! with reasons, and clear errors with exit code 2 for a bad CSV row and a missing map.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use ssvp_eval::maps::io::read_mask;

fn ssvp(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ssvp"))
        .args(args)
        .output()
        .expect("run ssvp")
}

/// Writes a little-endian float32 C-order .npy file.
fn write_npy(path: &Path, height: usize, width: usize, data: &[f32]) {
    let mut header =
        format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({height}, {width}), }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend((header.len() as u16).to_le_bytes());
    bytes.extend(header.as_bytes());
    bytes.extend(data.iter().flat_map(|v| v.to_le_bytes()));
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, bytes).unwrap();
}

struct Bench {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    data: PathBuf,
    maps: PathBuf,
    rows: Vec<(String, String, bool, f64)>,
}

/// One synthetic category with perfect maps, plus a second, normal-only category.
fn bench() -> Bench {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_path_buf();
    let data = root.join("data");
    let out = ssvp(&[
        "synth",
        "--out",
        data.to_str().unwrap(),
        "--kinds",
        "screw",
        "--per-category",
        "6",
        "--size",
        "32",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let maps = root.join("maps");
    let mut images: Vec<PathBuf> = Vec::new();
    for defect in fs::read_dir(data.join("screw/test")).unwrap() {
        for img in fs::read_dir(defect.unwrap().path()).unwrap() {
            images.push(img.unwrap().path());
        }
    }
    images.sort();
    let mut rows = Vec::new();
    let (mut normal_i, mut anomalous_i) = (0, 0);
    for img in &images {
        let rel = img
            .strip_prefix(&data)
            .unwrap()
            .to_str()
            .unwrap()
            .replace('\\', "/");
        let defect = img
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        let stem = img.file_stem().unwrap().to_str().unwrap();
        let anomalous = defect != "good";
        // Perfect map: 1 on GT pixels, 0 elsewhere.
        let map: Vec<f32> = if anomalous {
            let mask =
                read_mask(&data.join(format!("screw/ground_truth/{defect}/{stem}_mask.png")))
                    .unwrap();
            assert_eq!((mask.width, mask.height), (32, 32));
            mask.data
                .iter()
                .map(|&m| if m { 1.0 } else { 0.0 })
                .collect()
        } else {
            vec![0.0; 32 * 32]
        };
        write_npy(&maps.join(rel.replace(".png", ".npy")), 32, 32, &map);
        // Image scores with a tie between the top normal and the lowest anomalous image.
        let score = if anomalous {
            anomalous_i += 1;
            0.5 + 0.1 * anomalous_i as f64
        } else {
            normal_i += 1;
            0.1 * normal_i as f64
        };
        rows.push(("screw".to_string(), rel.clone(), anomalous, score));
        if !anomalous {
            rows.push(("onlygood".to_string(), rel, false, score));
        }
    }
    Bench {
        _tmp: tmp,
        root,
        data,
        maps,
        rows,
    }
}

fn write_csv(path: &Path, rows: &[(String, String, bool, f64)]) {
    let mut text = "category,path,label,score\n".to_string();
    for (c, p, l, s) in rows {
        text += &format!("{c},{p},{},{s}\n", u8::from(*l));
    }
    fs::write(path, text).unwrap();
}

/// Mann-Whitney AUROC by counting all pairs (ties count 1/2).
fn brute_force_auroc(rows: &[(String, String, bool, f64)], category: &str) -> f64 {
    let rows: Vec<_> = rows.iter().filter(|r| r.0 == category).collect();
    let (mut wins, mut pairs) = (0.0, 0.0);
    for p in rows.iter().filter(|r| r.2) {
        for n in rows.iter().filter(|r| !r.2) {
            pairs += 1.0;
            wins += if p.3 > n.3 {
                1.0
            } else if p.3 == n.3 {
                0.5
            } else {
                0.0
            };
        }
    }
    wins / pairs
}

#[test]
fn metrics_on_a_generated_set() {
    let b = bench();
    let csv = b.root.join("scores.csv");
    write_csv(&csv, &b.rows);
    let (json, md, table) = (
        b.root.join("r.json"),
        b.root.join("r.md"),
        b.root.join("r.csv"),
    );
    let out = ssvp(&[
        "metrics",
        "--scores",
        csv.to_str().unwrap(),
        "--maps",
        b.maps.to_str().unwrap(),
        "--masks",
        b.data.to_str().unwrap(),
        "--out",
        json.to_str().unwrap(),
        "--markdown",
        md.to_str().unwrap(),
        "--csv",
        table.to_str().unwrap(),
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("screw") && stdout.contains("mean"),
        "{stdout}"
    );

    let r: Value = serde_json::from_str(&fs::read_to_string(&json).unwrap()).unwrap();
    let screw = &r["categories"]["screw"];
    let expected_auroc = brute_force_auroc(&b.rows, "screw");
    assert!(expected_auroc > 0.9 && expected_auroc < 1.0);
    assert!((screw["image_auroc"].as_f64().unwrap() - expected_auroc).abs() < 1e-12);
    for metric in ["pixel_auroc", "pixel_ap", "pixel_f1_max", "pixel_aupro"] {
        assert!(
            (screw[metric].as_f64().unwrap() - 1.0).abs() < 1e-12,
            "{metric}: {}",
            screw[metric]
        );
    }
    // Perfect 0/1 maps: no threshold has a false positive, the cflow FPR range is empty.
    assert!(screw["pixel_aupro_cflow"].is_null());
    assert_eq!(screw["skipped"][0]["metric"], "pixel_aupro_cflow");
    // The normal-only category: every metric skipped with a reason, and left out of the mean.
    let good = &r["categories"]["onlygood"];
    assert!(good["image_auroc"].is_null() && good["pixel_auroc"].is_null());
    assert!(good["skipped"].as_array().unwrap().len() >= 7);
    assert_eq!(r["mean"]["image_auroc"], screw["image_auroc"]);
    assert_eq!(r["mean"]["excluded"]["image_auroc"][0], "onlygood");
    assert_eq!(screw["counts"]["images"], 12);
    assert!(fs::read_to_string(&md).unwrap().contains("| screw |"));
    assert!(fs::read_to_string(&table)
        .unwrap()
        .starts_with("category,image_auroc,"));

    // Image metrics only (no maps): no pixel keys at all.
    let out = ssvp(&[
        "metrics",
        "--scores",
        csv.to_str().unwrap(),
        "--out",
        json.to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let r: Value = serde_json::from_str(&fs::read_to_string(&json).unwrap()).unwrap();
    assert!(r["categories"]["screw"].get("pixel_auroc").is_none());
}

#[test]
fn bad_inputs_fail_with_clear_errors() {
    let b = bench();
    // A bad label on data line 3 (file line 4).
    let mut rows = b.rows.clone();
    let csv = b.root.join("bad.csv");
    write_csv(&csv, &rows);
    let text = fs::read_to_string(&csv).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    let broken = lines[3].replace(",0,", ",x,").replace(",1,", ",x,");
    lines[3] = &broken;
    fs::write(&csv, lines.join("\n")).unwrap();
    let out = ssvp(&["metrics", "--scores", csv.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("bad.csv:4: label \"x\" is not 0 or 1"),
        "{err}"
    );

    // A NaN score.
    rows[0].3 = f64::NAN;
    write_csv(&csv, &rows);
    let out = ssvp(&["metrics", "--scores", csv.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        err.contains("bad.csv:2: score \"NaN\" is not finite"),
        "{err}"
    );

    // A missing map names the image and the files tried.
    let victim = &b.rows.iter().find(|r| r.2).unwrap().1;
    fs::remove_file(b.maps.join(victim.replace(".png", ".npy"))).unwrap();
    write_csv(&csv, &b.rows);
    let out = ssvp(&[
        "metrics",
        "--scores",
        csv.to_str().unwrap(),
        "--maps",
        b.maps.to_str().unwrap(),
        "--masks",
        b.data.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains(&format!("error: no map for {victim}")),
        "{err}"
    );
    assert!(err.contains(".npy") && err.contains(".tiff"), "{err}");

    // Strict sizes: a map of the wrong size is an error naming both files.
    write_npy(
        &b.maps.join(victim.replace(".png", ".npy")),
        16,
        16,
        &[0.0; 256],
    );
    let out = ssvp(&[
        "metrics",
        "--scores",
        csv.to_str().unwrap(),
        "--maps",
        b.maps.to_str().unwrap(),
        "--masks",
        b.data.to_str().unwrap(),
        "--eval-size",
        "strict",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("is 16x16 but mask"), "{err}");
}
