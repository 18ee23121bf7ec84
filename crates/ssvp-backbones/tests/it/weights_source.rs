//! Hub resolution without the network: HF_HUB_OFFLINE with and without a cached snapshot, laid
//! out exactly as huggingface_hub writes its cache (refs/<rev> holds the commit; files live in
//! snapshots/<commit>/).
//!
//! One test function on purpose: it sets process-wide environment variables.

use ssvp_backbones::weights::{hub_cache_dir, ModelSource, WantedFiles};

#[test]
fn offline_hub_resolution_uses_the_standard_cache_or_says_why_not() {
    let cache = tempfile::tempdir().unwrap();
    std::env::set_var("HF_HUB_CACHE", cache.path());
    std::env::set_var("HF_HUB_OFFLINE", "1");
    assert_eq!(hub_cache_dir(), cache.path());

    let wanted = WantedFiles {
        weights: &["model.safetensors", "pytorch_model.bin"],
        config: Some("config.json"),
    };
    let source = ModelSource::parse("facebook/dinov3-vits16-pretrain-lvd1689m").unwrap();

    // Nothing cached: a clear error that names the repo, the cache and the way out.
    let err = source.resolve(wanted).unwrap_err().to_string();
    assert!(err.contains("HF_HUB_OFFLINE"), "{err}");
    assert!(
        err.contains("facebook/dinov3-vits16-pretrain-lvd1689m"),
        "{err}"
    );
    assert!(err.contains(&cache.path().display().to_string()), "{err}");

    // A cached snapshot is found without touching the network.
    let repo_dir = cache
        .path()
        .join("models--facebook--dinov3-vits16-pretrain-lvd1689m");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    std::fs::create_dir_all(repo_dir.join("refs")).unwrap();
    std::fs::write(repo_dir.join("refs").join("main"), commit).unwrap();
    let snapshot = repo_dir.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::write(snapshot.join("pytorch_model.bin"), b"weights").unwrap();
    std::fs::write(snapshot.join("config.json"), b"{}").unwrap();

    let files = source.resolve(wanted).unwrap();
    assert_eq!(files.weights, snapshot.join("pytorch_model.bin"));
    assert_eq!(files.config, Some(snapshot.join("config.json")));
    assert!(files
        .origin
        .contains("hub:facebook/dinov3-vits16-pretrain-lvd1689m@main"));

    // HF_HOME is the fallback when HF_HUB_CACHE is unset.
    std::env::remove_var("HF_HUB_CACHE");
    std::env::set_var("HF_HOME", "/tmp/some-hf-home");
    assert_eq!(
        hub_cache_dir(),
        std::path::Path::new("/tmp/some-hf-home/hub")
    );
}
