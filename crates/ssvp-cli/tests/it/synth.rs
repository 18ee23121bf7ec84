//! `ssvp synth` end to end.

use std::process::Command;

fn ssvp() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ssvp"))
}

#[test]
fn writes_a_readable_benchmark_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("bench");
    let run = |extra: &[&str]| {
        ssvp()
            .args(["synth", "--out"])
            .arg(&out)
            .args([
                "--kinds",
                "disc,grain",
                "--per-category",
                "3",
                "--size",
                "48",
                "--seed",
                "4",
            ])
            .args(extra)
            .output()
            .unwrap()
    };
    let first = run(&[]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(stdout.contains("wrote 24 files"), "{stdout}");
    for p in [
        "disc/train/good/002.png",
        "disc/test/good/000.png",
        "disc/test/scratch/000.png",
        "disc/ground_truth/scratch/000_mask.png",
        "grain/test/crack/000.png",
        "grain/ground_truth/hole/000_mask.png",
    ] {
        assert!(out.join(p).is_file(), "{p}");
    }
    let bytes = std::fs::read(out.join("disc/test/scratch/000.png")).unwrap();

    let again = run(&[]);
    assert_eq!(again.status.code(), Some(2));
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.starts_with("error:") && err.contains("not empty"),
        "{err}"
    );

    let forced = run(&["--force"]);
    assert!(forced.status.success());
    assert_eq!(
        std::fs::read(out.join("disc/test/scratch/000.png")).unwrap(),
        bytes
    );
}

#[test]
fn lists_kinds_and_rejects_bad_arguments() {
    let list = ssvp().args(["synth", "--list-kinds"]).output().unwrap();
    assert!(list.status.success());
    let text = String::from_utf8_lossy(&list.stdout);
    for k in ["woven", "grain", "speckle", "disc", "screw", "board"] {
        assert!(text.contains(k), "{text}");
    }
    let dir = tempfile::tempdir().unwrap();
    let bad_kind = ssvp()
        .args(["synth", "--kinds", "plasma", "--out"])
        .arg(dir.path().join("x"))
        .output()
        .unwrap();
    assert_eq!(bad_kind.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad_kind.stderr).contains("unknown synthetic kind `plasma`"));
    let bad_size = ssvp()
        .args(["synth", "--size", "4", "--out"])
        .arg(dir.path().join("y"))
        .output()
        .unwrap();
    assert_eq!(bad_size.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad_size.stderr).contains("image size 4"));
    // --out is required without --list-kinds (clap's usage error).
    let no_out = ssvp().args(["synth"]).output().unwrap();
    assert!(!no_out.status.success());
}
