//! `ssvp doctor` on an empty cache, on `tiny`, as JSON, and on a cache with a truncated
//! weights file laid out by hand as the Hugging Face cache lays it out.

use std::path::Path;
use std::process::Output;

use super::common::stderr;
use super::fetch::ssvp_hub;

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn offline(home: &Path, args: &[&str]) -> Output {
    ssvp_hub(home, &[("HF_HUB_OFFLINE", "1")], args)
}

#[test]
fn nothing_cached_fails_and_says_what_to_fetch() {
    let home = tempfile::tempdir().unwrap();
    let out = offline(home.path(), &["doctor", "--no-smoke"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}\n{}", stderr(&out));
    for needle in [
        "Machine",
        "AVX2",
        "AVX-512F",
        "AMX-BF16",
        "threads",
        "memory",
        "Hugging Face cache",
        "not cached",
        "fix: unset HF_HUB_OFFLINE",
        "ssvp fetch anomalydino",
        "ssvp fetch paper",
        "export HF_TOKEN=",
        "FAIL",
    ] {
        assert!(text.contains(needle), "no `{needle}` in:\n{text}");
    }
    // Doctor creates nothing in the cache.
    assert!(!home.path().join("hub").exists());
}

#[test]
fn tiny_passes_and_reports_a_smoke_time() {
    let home = tempfile::tempdir().unwrap();
    for args in [
        &["doctor", "tiny"][..],
        &["doctor", "--backbones", "tiny"][..],
    ] {
        let out = offline(home.path(), args);
        let text = stdout(&out);
        assert!(out.status.success(), "{text}\n{}", stderr(&out));
        let row = text
            .lines()
            .find(|l| l.trim_start().starts_with("tiny"))
            .unwrap_or_else(|| panic!("no tiny row:\n{text}"));
        assert!(
            row.contains("none needed") && row.contains(" ms") && row.ends_with("ok"),
            "{row}"
        );
        assert!(text.contains("PASS"), "{text}");
    }
}

#[test]
fn json_report_is_machine_readable() {
    let home = tempfile::tempdir().unwrap();
    let out = offline(home.path(), &["doctor", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["passed"], false);
    assert!(report["cpu"]["features"]["avx2"].is_boolean());
    assert!(report["memory"]["total_mib"].as_u64().unwrap_or(1) > 0);
    let presets = report["presets"].as_array().unwrap();
    assert_eq!(presets.len(), 6);
    let tiny = presets.iter().find(|p| p["name"] == "tiny").unwrap();
    assert_eq!(tiny["usable"], true);
    assert!(tiny["smoke"]["image_ms"].as_f64().unwrap() > 0.0);
    let paper = presets.iter().find(|p| p["name"] == "paper").unwrap();
    assert_eq!(paper["weights"], "missing");
    assert_eq!(paper["gated"], true);
    assert_eq!(report["problems"][0]["severity"], "fail");
}

#[test]
fn a_truncated_weights_file_is_found_and_the_fix_is_fetch() {
    let home = tempfile::tempdir().unwrap();
    let repo = home.path().join("hub/models--facebook--dinov2-small");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    // A safetensors header describing 400 bytes of data, with 100 of them present.
    let header = br#"{"w":{"dtype":"F32","shape":[100],"data_offsets":[0,400]}}"#;
    let mut weights = (header.len() as u64).to_le_bytes().to_vec();
    weights.extend(header);
    weights.extend([0u8; 100]);
    let blobs = repo.join("blobs");
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), commit).unwrap();
    std::fs::write(blobs.join("a".repeat(64)), &weights).unwrap();
    std::fs::write(blobs.join("b".repeat(40)), b"{}").unwrap();
    std::os::unix::fs::symlink(
        format!("../../blobs/{}", "a".repeat(64)),
        snapshot.join("model.safetensors"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        format!("../../blobs/{}", "b".repeat(40)),
        snapshot.join("config.json"),
    )
    .unwrap();
    let out = offline(home.path(), &["doctor", "anomalydino"]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}\n{}", stderr(&out));
    assert!(
        text.contains("INCOMPLETE") && text.contains("truncated"),
        "{text}"
    );
    assert!(text.contains("ssvp fetch anomalydino"), "{text}");
}
