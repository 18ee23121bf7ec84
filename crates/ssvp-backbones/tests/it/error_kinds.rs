//! Errors are told apart by kind, not by message: a missing file, another I/O failure, a file of
//! another format, offline with nothing cached, a gated repository, a bad config.

use std::error::Error as _;
use std::io::Write;
use std::path::{Path, PathBuf};

use candle_core::Device;
use ssvp_backbones::dinov3::Dinov3Config;
use ssvp_backbones::weights::{HubSettings, ModelSource, WantedFiles};
use ssvp_backbones::{Checkpoint, Error, ErrorKind};

const WANTED: WantedFiles<'static> = WantedFiles {
    weights: &["model.safetensors"],
    config: Some("config.json"),
};

fn io_source(err: &Error) -> &std::io::Error {
    err.source()
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .unwrap_or_else(|| panic!("no io::Error source: {err:?}"))
}

#[test]
fn a_missing_file_is_not_found_with_the_system_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("model.safetensors");
    let err = Checkpoint::load(&missing, &Device::Cpu).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err:?}");
    assert_eq!(io_source(&err).kind(), std::io::ErrorKind::NotFound);
    assert!(
        matches!(&err, Error::NotFound { path: Some(p), .. } if p == &missing),
        "{err:?}"
    );

    let err = ModelSource::parse(missing.to_str().unwrap()).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err:?}");
    assert_eq!(io_source(&err).kind(), std::io::ErrorKind::NotFound);
}

#[test]
fn other_io_failures_are_io_not_not_found() {
    let dir = tempfile::tempdir().unwrap();
    // A path whose parent is a file: ENOTDIR, which no user (root included) can get past.
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let below = file.join("model.safetensors");
    let err = Checkpoint::load(&below, &Device::Cpu).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Io, "{err:?}");
    assert_ne!(io_source(&err).kind(), std::io::ErrorKind::NotFound);

    // A directory given as the checkpoint: it opens, but reading fails (EISDIR).
    let err = Checkpoint::load(dir.path(), &Device::Cpu).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Io, "{err:?}");

    // A file without read permission: PermissionDenied, unless running as root (who reads
    // anything, so the check is skipped there).
    let locked = dir.path().join("locked.safetensors");
    std::fs::write(&locked, b"locked").unwrap();
    set_mode(&locked, 0o000);
    if std::fs::File::open(&locked).is_err() {
        let err = Checkpoint::load(&locked, &Device::Cpu).err().unwrap();
        assert_eq!(err.kind(), ErrorKind::Io, "{err:?}");
        assert_eq!(io_source(&err).kind(), std::io::ErrorKind::PermissionDenied);
    }
    set_mode(&locked, 0o644);
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn truncated_or_garbage_weights_are_format_errors() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"this is not a safetensors header at all").unwrap();
    let err = Checkpoint::load(&garbage, &Device::Cpu).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Format, "{err:?}");

    let fixture =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/clip/a_hf.safetensors");
    let bytes = std::fs::read(fixture).unwrap();
    let truncated = dir.path().join("truncated.safetensors");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    let err = Checkpoint::load(&truncated, &Device::Cpu).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Format, "{err:?}");

    let tiny = dir.path().join("tiny.bin");
    std::fs::write(&tiny, b"ab").unwrap();
    let err = Checkpoint::load(&tiny, &Device::Cpu).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Format, "{err:?}");
}

#[test]
fn offline_with_an_empty_cache_is_offline() {
    let cache = tempfile::tempdir().unwrap();
    let settings = HubSettings {
        cache_dir: cache.path().to_path_buf(),
        offline: true,
        token: None,
        endpoint: None,
    };
    let err = ModelSource::parse("facebook/dinov3-vits16-pretrain-lvd1689m")
        .unwrap()
        .resolve_with(WANTED, &settings)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Offline, "{err:?}");
    assert!(err.to_string().contains("HF_HUB_OFFLINE"), "{err}");
}

/// A local stand-in for the hub that answers every request with `status`.
fn fake_hub(status: u16) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut buf = [0u8; 4096];
            let _ = std::io::Read::read(&mut stream, &mut buf);
            let _ = write!(
                stream,
                "HTTP/1.1 {status} Status\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
        }
    });
    format!("http://{addr}")
}

#[test]
fn hub_refusals_are_gated_and_absent_files_not_found() {
    let cache = tempfile::tempdir().unwrap();
    let source = ModelSource::parse("facebook/dinov3-vitl16-pretrain-lvd1689m").unwrap();
    let resolve = |status: u16| {
        let settings = HubSettings {
            cache_dir: cache.path().to_path_buf(),
            offline: false,
            token: None,
            endpoint: Some(fake_hub(status)),
        };
        source.resolve_with(WANTED, &settings).unwrap_err()
    };
    for status in [401, 403] {
        let err = resolve(status);
        assert_eq!(err.kind(), ErrorKind::Gated, "{status}: {err:?}");
        assert!(matches!(err, Error::Gated { status: s, .. } if s == status));
    }
    assert_eq!(resolve(404).kind(), ErrorKind::NotFound);
    assert_eq!(resolve(500).kind(), ErrorKind::Network);
}

#[test]
fn bad_configs_and_devices_have_their_own_kinds() {
    let err = Dinov3Config::from_hf_json("{ not json").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    assert!(err
        .source()
        .is_some_and(|s| s.downcast_ref::<serde_json::Error>().is_some()));
    let err = ssvp_backbones::clip::ClipConfig::preset("ViT-H-14").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);

    let err = ssvp_backbones::runtime::parse_device("tpu").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    if !ssvp_backbones::runtime::CUDA_BUILT {
        let err = ssvp_backbones::runtime::parse_device("cuda").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Device);
    }
}

#[test]
fn context_keeps_the_inner_kind_and_the_chain_keeps_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, "[]").unwrap();
    let err = ssvp_backbones::clip::ClipConfig::from_hf_file(&path).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Config);
    let text = crate::chain(&err);
    assert!(
        text.starts_with(&path.display().to_string())
            && text.ends_with("CLIP config.json is not a JSON object"),
        "{text}"
    );
}
