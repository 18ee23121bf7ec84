//! `ssvp demo`: the whole job on synthetic parts, offline: exit 0, the report and the files of
//! every step, defective parts flagged, the printed summary; a second run replaces the first;
//! a folder that is not a demo's is refused.

use crate::common;

use common::{fails_with, ok, records, s, ssvp};

#[test]
fn demo_flags_defects_and_writes_a_report() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("demo");
    let run = ssvp(&["demo", "--out", s(&out)]);
    ok(&run);
    let stdout = String::from_utf8_lossy(&run.stdout).into_owned();

    // Every step's file, and the report.
    for file in [
        "demo.json",
        "bank.safetensors",
        "calibration.json",
        "inspect/report.html",
        "inspect/detections.jsonl",
        "inspect/detections.csv",
        "parts/good-refs/000.png",
        "parts/good-holdout/008.png",
        "parts/today/good/000.png",
    ] {
        assert!(out.join(file).is_file(), "{file} is missing:\n{stdout}");
    }
    let recs = records(&out.join("inspect"));
    assert_eq!(recs.len(), 16);
    // Decided at the calibration's threshold, with the bank.
    assert!(recs
        .iter()
        .all(|r| r["detection"]["mode"] == "references" && r["detection"]["threshold"].is_f64()));
    let flagged_defects = recs
        .iter()
        .filter(|r| {
            !r["path"].as_str().unwrap().contains("/good/") && r["detection"]["anomalous"] == true
        })
        .count();
    assert!(flagged_defects >= 1, "no defective part flagged:\n{stdout}");

    // The printed summary: the caveat, the steps, one line per part, the counts, the report.
    assert!(stdout.contains("random weights"), "{stdout}");
    assert!(stdout.contains("not of accuracy"), "{stdout}");
    for step in ["1. parts", "2. bank", "3. calibrate", "4. detect"] {
        assert!(stdout.contains(step), "`{step}` missing:\n{stdout}");
    }
    let part_lines = stdout
        .lines()
        .filter(|l| l.ends_with("FLAGGED") || l.ends_with(" ok"))
        .count();
    assert_eq!(part_lines, 16, "{stdout}");
    assert!(
        stdout.contains(&format!("Flagged {flagged_defects} of 8 defective parts;")),
        "{stdout}"
    );
    assert!(stdout.contains("on 8 good parts."), "{stdout}");
    assert!(
        stdout.contains(&format!(
            "Report: {}",
            out.join("inspect/report.html").display()
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("ssvp bank build --backbones tiny"),
        "{stdout}"
    );

    // The bank (written through safetensors' private temporary file) is as readable as the
    // JSON files.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |f: &str| std::fs::metadata(out.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("bank.safetensors"), mode("calibration.json"));
        assert_eq!(mode("bank.safetensors"), mode("inspect/detections.csv"));
    }

    // Again into the same folder: the earlier demo is replaced, with the same results.
    let again = ssvp(&["demo", "--out", s(&out)]);
    ok(&again);
    assert_eq!(records(&out.join("inspect")).len(), 16);
    assert!(String::from_utf8_lossy(&again.stdout)
        .contains(&format!("Flagged {flagged_defects} of 8 defective parts;")));

    // A folder with other files is left alone.
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "mine").unwrap();
    fails_with(
        &ssvp(&["demo", "--out", s(&other)]),
        "is not the output of an earlier `ssvp demo`",
    );
    assert_eq!(std::fs::read_dir(&other).unwrap().count(), 1);
}
