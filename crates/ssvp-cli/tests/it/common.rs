//! Running the `ssvp` binary from the CLI tests.
#![allow(dead_code)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// Runs `ssvp` with `args`.
pub fn ssvp(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ssvp"))
        .args(args)
        .output()
        .expect("run ssvp")
}

/// Runs `ssvp` with `args` and `stdin` as its standard input.
pub fn ssvp_stdin(args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ssvp"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ssvp");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// What the command wrote to stderr.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts success, showing stderr otherwise.
pub fn ok(out: &Output) {
    assert!(out.status.success(), "ssvp failed: {}", stderr(out));
}

/// Asserts exit code 2 and a message containing `needle`.
pub fn fails_with(out: &Output, needle: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(2), "expected exit code 2: {err}");
    assert!(err.contains(needle), "stderr lacks `{needle}`: {err}");
}

/// A path as an argument.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The records of a `detections.jsonl` in `dir`.
pub fn records(dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("detections.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Writes a synthetic benchmark of `kinds` (comma-separated) with `ssvp synth`.
pub fn synth(out: &Path, kinds: &str, per_category: usize, size: usize, seed: u64) {
    let (per, size, seed) = (per_category.to_string(), size.to_string(), seed.to_string());
    ok(&ssvp(&[
        "synth",
        "--out",
        s(out),
        "--kinds",
        kinds,
        "--per-category",
        &per,
        "--size",
        &size,
        "--seed",
        &seed,
    ]));
}
