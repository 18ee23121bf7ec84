//! The errors of run directories and checkpoints are told apart by type, not by message: a
//! missing file, an unreadable one, a run of another format version and a corrupt state.

use std::error::Error as _;
use std::path::Path;

use candle_core::Device;
use ssvp_model::run_dir::{RunDir, TrainedRun, RUN_FORMAT_VERSION};
use ssvp_model::{Error, ErrorKind, SsvpConfig, SsvpHead};

/// The `io::Error` an error carries as its source.
fn io_source(err: &Error) -> &std::io::Error {
    err.source()
        .and_then(|s| s.downcast_ref::<std::io::Error>())
        .unwrap_or_else(|| panic!("{err:?} has no io::Error source"))
}

fn assert_not_found(err: Error, path: &Path) {
    assert_eq!(err.kind(), ErrorKind::NotFound, "{err:?}");
    assert_eq!(io_source(&err).kind(), std::io::ErrorKind::NotFound);
    match &err {
        Error::NotFound(e) => assert_eq!(e.path, path),
        other => panic!("expected NotFound, got {other:?}"),
    }
    assert!(err
        .to_string()
        .starts_with(&format!("{}: ", path.display())));
}

fn assert_unreadable(err: Error, path: &Path) {
    assert_eq!(err.kind(), ErrorKind::Io, "{err:?}");
    assert_ne!(io_source(&err).kind(), std::io::ErrorKind::NotFound);
    match &err {
        Error::Io(e) => assert_eq!(e.path, path),
        other => panic!("expected Io, got {other:?}"),
    }
}

/// A folder with the three files `RunDir::open` requires; `state` is state.json's text.
fn fake_run(dir: &Path, state: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("state.json"), state).unwrap();
    std::fs::write(
        dir.join("config.toml"),
        SsvpConfig::tiny().to_toml_string().unwrap(),
    )
    .unwrap();
    std::fs::write(dir.join("backbones.json"), "{}").unwrap();
}

#[test]
fn a_missing_run_directory_is_not_found_and_an_unreadable_one_is_io() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nowhere");
    assert_not_found(RunDir::open(&missing).unwrap_err(), &missing);
    assert_not_found(
        TrainedRun::load(&missing, &Device::Cpu).err().unwrap(),
        &missing,
    );
    // A path below a file cannot be read (not a directory): not "missing".
    let file = tmp.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    let below = file.join("run");
    assert_unreadable(RunDir::open(&below).unwrap_err(), &below);
    // A folder that is not a run directory is neither.
    let err = RunDir::open(tmp.path()).unwrap_err();
    assert!(matches!(err, Error::RunDir(_)), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
}

#[test]
fn a_missing_checkpoint_file_is_not_found_and_an_unreadable_one_is_io() {
    let tmp = tempfile::tempdir().unwrap();
    let head = SsvpHead::new(&SsvpConfig::tiny(), &Device::Cpu).unwrap();
    let missing = tmp.path().join("head.safetensors");
    assert_not_found(head.load(&missing).unwrap_err(), &missing);
    // A directory where the file is expected.
    let dir = tmp.path().join("dir.safetensors");
    std::fs::create_dir(&dir).unwrap();
    assert_unreadable(head.load(&dir).unwrap_err(), &dir);
    // A file that is there but holds no tensors is the checkpoint's fault.
    let junk = tmp.path().join("junk.safetensors");
    std::fs::write(&junk, b"not a safetensors file").unwrap();
    let err = head.load(&junk).unwrap_err();
    assert!(matches!(err, Error::Checkpoint(_)), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    // The config file of a run, likewise.
    let config = tmp.path().join("config.toml");
    assert_not_found(SsvpConfig::from_toml_file(&config).unwrap_err(), &config);
}

#[test]
fn a_state_of_another_format_version_is_a_version_error_and_a_corrupt_one_a_checkpoint_error() {
    let tmp = tempfile::tempdir().unwrap();
    let newer = tmp.path().join("newer");
    // A later version may have other fields: the version is read before the rest.
    fake_run(&newer, r#"{"format_version": 99, "something_new": true}"#);
    std::fs::write(newer.join("config.toml"), "[a_section_of_version_99]\n").unwrap();
    let err = RunDir::open(&newer).unwrap().read_state().unwrap_err();
    match &err {
        Error::Version {
            path,
            found,
            supported,
        } => {
            assert_eq!((*found, *supported), (99, RUN_FORMAT_VERSION));
            assert_eq!(path, &newer.join("state.json"));
        }
        other => panic!("expected Version, got {other:?}"),
    }
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    assert!(err.to_string().contains("run format version 99"), "{err}");
    let err = TrainedRun::load(&newer, &Device::Cpu).err().unwrap();
    assert!(matches!(err, Error::Version { found: 99, .. }), "{err:?}");

    let corrupt = tmp.path().join("corrupt");
    fake_run(&corrupt, r#"{"format_version": 1, "step": "#);
    let err = RunDir::open(&corrupt).unwrap().read_state().unwrap_err();
    assert!(matches!(err, Error::Checkpoint(_)), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    // Of the right version but missing fields: corrupt, not another version.
    let partial = tmp.path().join("partial");
    fake_run(
        &partial,
        &format!(r#"{{"format_version": {RUN_FORMAT_VERSION}}}"#),
    );
    let err = RunDir::open(&partial).unwrap().read_state().unwrap_err();
    assert!(matches!(err, Error::Checkpoint(_)), "{err:?}");
}
