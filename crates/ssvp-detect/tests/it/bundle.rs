//! Bundles (`ssvp bundle`): a bank, a calibration and weights packed into one file, read back
//! (manifest, verify, unpack into a cache folder, reused), every member's damage named, truncated
//! and foreign files refused, a Meta `.pth` converted to safetensors with its tensor names, and
//! parts that do not belong together refused.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use ssvp_backbones::dinov3::Dinov3Model;
use ssvp_backbones::weights::Checkpoint;
use ssvp_detect::bundle::{
    self, BundleInput, Manifest, MemberKind, MemberStatus, WeightsInput, HEADER_LEN, MAGIC,
};
use ssvp_detect::calibrate::Calibration;
use ssvp_detect::memory::{
    build_bank, load_bank, references_memory, BankOptions, ReferenceScoring,
};
use ssvp_detect::{Detector, DetectorOptions, ErrorKind};
use ssvp_eval::postprocess::PostprocessConfig;
use ssvp_eval::synth::Kind;
use ssvp_features::identity::weights_fingerprint;
use ssvp_features::Backbones;
use ssvp_model::SsvpConfig;

use crate::common::{backbones, made_up_calibration, shared_fixture, synth};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn dinov3_fixture() -> PathBuf {
    repo().join("crates/ssvp-backbones/tests/fixtures/dinov3/mlp")
}

/// A bank of 4 good discs on the tiny backbones, and a calibration of a references detector
/// over it (fitted on made-up normal scores: what matters here is what it records).
struct Parts {
    _dir: tempfile::TempDir,
    root: PathBuf,
    bank: PathBuf,
    calibration: PathBuf,
}

fn calibration_of(detector: &Detector, path: &Path) {
    made_up_calibration(detector).write(path).unwrap();
}

fn tiny_backbones() -> Arc<Backbones> {
    backbones(&SsvpConfig::tiny())
}

fn parts() -> Parts {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    synth(&root.join("data"), &[Kind::Disc], 4, 64, 3);
    let good: Vec<PathBuf> = std::fs::read_dir(root.join("data/disc/train/good"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    let backbones = tiny_backbones();
    let built = build_bank(&backbones, &good, &BankOptions::default()).unwrap();
    let bank = root.join("disc.bank");
    built.bank.save(&bank).unwrap();
    let detector = Detector::without_head(
        Arc::clone(&backbones),
        PostprocessConfig::default(),
        DetectorOptions::default(),
    )
    .unwrap()
    .with_memory(
        references_memory(
            built.bank,
            backbones.identity(),
            ReferenceScoring::default(),
        )
        .unwrap(),
    )
    .unwrap();
    let calibration = root.join("calib.json");
    calibration_of(&detector, &calibration);
    Parts {
        _dir: dir,
        root,
        bank,
        calibration,
    }
}

/// The tiny CLIP of `examples/tiny-clip` as weights to pack.
fn clip_weights() -> WeightsInput {
    bundle::resolve_weights("clip", repo().join("examples/tiny-clip").to_str().unwrap())
        .unwrap()
        .expect("real weights")
}

fn flip(path: &Path, at: u64) -> PathBuf {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at as usize] ^= 0x20;
    let out = path.with_extension(format!("flip{at}"));
    std::fs::write(&out, bytes).unwrap();
    out
}

fn truncated(path: &Path, len: u64) -> PathBuf {
    let bytes = std::fs::read(path).unwrap();
    let out = path.with_extension(format!("cut{len}"));
    std::fs::write(&out, &bytes[..len as usize]).unwrap();
    out
}

#[test]
fn a_bank_calibration_and_weights_round_trip_through_a_bundle() {
    let p = parts();
    let out = p.root.join("line3.ssvp");
    let input = BundleInput {
        bank: Some(p.bank.clone()),
        calibration: Some(p.calibration.clone()),
        weights: vec![clip_weights()],
        ..BundleInput::default()
    };
    let manifest = bundle::create(&input, &out).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&out).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
    }
    // No temporary file is left beside it.
    let names: Vec<String> = std::fs::read_dir(&p.root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(names.is_empty(), "{names:?}");

    // The manifest reads back as written: members, backbones, settings.
    assert_eq!(Manifest::read(&out).unwrap(), manifest);
    let paths: Vec<&str> = manifest.members.iter().map(|m| m.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "bank.safetensors",
            "calibration.json",
            "weights/clip/model.safetensors",
            "weights/clip/config.json"
        ]
    );
    assert!(manifest
        .members
        .iter()
        .all(|m| m.offset % bundle::ALIGN == 0 && m.sha256.len() == 64));
    assert_eq!(manifest.scoring, "references");
    assert_eq!(manifest.backbones.towers, ["dino"]);
    assert_eq!(
        (
            manifest.backbones.clip.as_str(),
            manifest.backbones.dino.as_str()
        ),
        ("tiny", "tiny")
    );
    assert!(manifest.backbones.digests.contains_key("bank"));
    let cal = Calibration::read(&p.calibration).unwrap();
    assert_eq!(manifest.settings.as_ref(), Some(&cal.settings));
    assert_eq!(manifest.model.as_ref(), Some(&cal.model));
    let clip = manifest.weights_of("clip").unwrap();
    assert!(clip.packed && clip.note.as_deref().unwrap().contains("does not read"));
    assert_eq!(
        clip.fingerprint.as_deref(),
        Some(
            weights_fingerprint(&repo().join("examples/tiny-clip/model.safetensors"))
                .unwrap()
                .as_str()
        )
    );
    let dino = manifest.weights_of("dino").unwrap();
    assert!(!dino.packed && dino.note.as_deref().unwrap().contains("seeded"));

    // Every digest holds.
    let report = bundle::verify(&out).unwrap();
    assert!(report.is_ok(), "{:?}", report.problem_messages());
    report.ensure_ok().unwrap();
    assert_eq!(report.file_len, std::fs::metadata(&out).unwrap().len());

    // Unpacked: each part is the file that was packed, byte for byte, where a loader expects it.
    let cache = p.root.join("cache");
    let unpacked = bundle::unpack(&out, &cache).unwrap();
    assert!(!unpacked.reused);
    assert_eq!(unpacked.dir, cache.join(&report.id));
    let same =
        |a: &Path, b: &Path| assert_eq!(std::fs::read(a).unwrap(), std::fs::read(b).unwrap());
    same(unpacked.bank.as_ref().unwrap(), &p.bank);
    same(unpacked.calibration.as_ref().unwrap(), &p.calibration);
    let clip_dir = unpacked.clip_weights.clone().unwrap();
    same(
        &clip_dir.join("model.safetensors"),
        &repo().join("examples/tiny-clip/model.safetensors"),
    );
    assert!(unpacked.dino_weights.is_none() && unpacked.checkpoint.is_none());
    let bank = load_bank(unpacked.bank.as_ref().unwrap(), &Device::Cpu).unwrap();
    assert_eq!(
        bank.meta(),
        load_bank(&p.bank, &Device::Cpu).unwrap().meta()
    );
    // A detector takes the unpacked bank and calibration as it took the originals.
    let backbones = tiny_backbones();
    Detector::without_head(
        Arc::clone(&backbones),
        PostprocessConfig::default(),
        DetectorOptions::default(),
    )
    .unwrap()
    .with_memory(
        references_memory(bank, backbones.identity(), ReferenceScoring::default()).unwrap(),
    )
    .unwrap()
    .with_calibration(Calibration::read(unpacked.calibration.as_ref().unwrap()).unwrap())
    .unwrap();
    // The packed CLIP loads from its folder as the original does (same fingerprint: the same
    // identity), and the resolver finds it there.
    let again = bundle::resolve_weights("clip", clip_dir.to_str().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(
        weights_fingerprint(&again.files[0]).unwrap(),
        *clip.fingerprint.as_ref().unwrap()
    );
    // Only the extraction remains in the cache.
    let entries: Vec<_> = std::fs::read_dir(&cache).unwrap().collect();
    assert_eq!(entries.len(), 1);

    // A second unpack reuses the folder; a damaged one is replaced.
    assert!(bundle::unpack(&out, &cache).unwrap().reused);
    std::fs::write(unpacked.bank.as_ref().unwrap(), b"tampered").unwrap();
    let fresh = bundle::unpack(&out, &cache).unwrap();
    assert!(!fresh.reused);
    same(fresh.bank.as_ref().unwrap(), &p.bank);
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 1);

    // The same parts give the same bundle, byte for byte, at the same time stamp.
    let twice = p.root.join("twice.ssvp");
    let mut second = bundle::create(&input, &twice).unwrap();
    second.created = manifest.created.clone();
    assert_eq!(second.members, manifest.members);
}

#[test]
fn a_flipped_byte_is_named_wherever_it_lands() {
    let p = parts();
    let out = p.root.join("line3.ssvp");
    let manifest = bundle::create(
        &BundleInput {
            bank: Some(p.bank.clone()),
            calibration: Some(p.calibration.clone()),
            weights: vec![clip_weights()],
            ..BundleInput::default()
        },
        &out,
    )
    .unwrap();
    let cache = p.root.join("cache");
    for member in &manifest.members {
        for at in [
            member.offset,
            member.offset + member.length / 2,
            member.offset + member.length - 1,
        ] {
            let bad = flip(&out, at);
            // The manifest still reads (`info` works); verify names this member alone.
            Manifest::read(&bad).unwrap();
            let report = bundle::verify(&bad).unwrap();
            assert!(!report.is_ok());
            let broken: Vec<&str> = report.broken().map(|m| m.path.as_str()).collect();
            assert_eq!(broken, [member.path.as_str()], "flip at {at}");
            assert!(matches!(
                report.broken().next().unwrap().status,
                MemberStatus::Corrupt { .. }
            ));
            let err = report.ensure_ok().unwrap_err();
            assert_eq!(err.kind(), ErrorKind::InvalidInput);
            assert!(err.to_string().contains(&member.path), "{err}");
            // Unpacking refuses it, naming the member, and leaves nothing behind.
            let err = bundle::unpack(&bad, &cache).unwrap_err();
            assert!(err.to_string().contains(&member.path), "{err}");
            assert!(!cache.exists() || std::fs::read_dir(&cache).unwrap().count() == 0);
            std::fs::remove_file(bad).unwrap();
        }
    }
    // A flipped byte in the manifest: its digest no longer matches the header's.
    let bad = flip(&out, HEADER_LEN + 10);
    let err = Manifest::read(&bad).unwrap_err();
    assert!(err.to_string().contains("manifest is corrupt"), "{err}");
    assert!(bundle::verify(&bad).is_err() && bundle::unpack(&bad, &cache).is_err());
    // In the header: its magic, lengths and reserved bytes are checked.
    for (at, says) in [
        (0, "bad magic"),
        (17, "manifest"),
        (33, "inconsistent"),
        (44, "manifest is corrupt"),
        (100, "reserved"),
    ] {
        let err = Manifest::read(&flip(&out, at)).unwrap_err();
        assert!(err.to_string().contains(says), "byte {at}: {err}");
    }
    // In the padding between members: verify reports it, the members themselves still hold.
    let gap = manifest
        .members
        .windows(2)
        .map(|w| (w[0].offset + w[0].length, w[1].offset))
        .find(|(end, next)| end < next)
        .expect("some member ends unaligned")
        .0;
    let report = bundle::verify(&flip(&out, gap)).unwrap();
    assert!(!report.is_ok() && report.broken().next().is_none());
    assert!(
        report.problems[0].contains("padding"),
        "{:?}",
        report.problems
    );
}

#[test]
fn truncated_and_foreign_files_are_refused_with_what_is_missing() {
    let p = parts();
    let out = p.root.join("line3.ssvp");
    let manifest = bundle::create(
        &BundleInput {
            bank: Some(p.bank.clone()),
            calibration: Some(p.calibration.clone()),
            ..BundleInput::default()
        },
        &out,
    )
    .unwrap();
    let len = std::fs::metadata(&out).unwrap().len();
    let cache = p.root.join("cache");
    // Cut inside the header, inside the manifest: nothing can be read.
    for cut in [4, 60, HEADER_LEN + 5] {
        let err = Manifest::read(&truncated(&out, cut)).unwrap_err();
        assert!(err.to_string().contains("truncated"), "{cut}: {err}");
    }
    // Cut inside the last member: the manifest reads, verify names the member and the cut.
    let last = manifest.members.last().unwrap();
    let cut = truncated(&out, len - 100);
    Manifest::read(&cut).unwrap();
    let report = bundle::verify(&cut).unwrap();
    let broken: Vec<_> = report.broken().collect();
    assert_eq!(broken.len(), 1);
    assert_eq!(broken[0].path, last.path);
    assert_eq!(
        broken[0].status,
        MemberStatus::Truncated {
            available: last.length - 100
        }
    );
    assert!(
        report.problems[0].contains("truncated"),
        "{:?}",
        report.problems
    );
    let err = bundle::unpack(&cut, &cache).unwrap_err();
    assert!(err.to_string().contains("truncated"), "{err}");
    // Bytes appended after the last member.
    let mut bytes = std::fs::read(&out).unwrap();
    bytes.extend_from_slice(b"more");
    let longer = p.root.join("longer.ssvp");
    std::fs::write(&longer, bytes).unwrap();
    let report = bundle::verify(&longer).unwrap();
    assert!(!report.is_ok() && report.problems[0].contains("4 bytes follow"));

    // Not a bundle at all: a bank, an empty file, a newer container.
    let err = Manifest::read(&p.bank).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(
        err.to_string().contains("not an ssvp bundle: bad magic"),
        "{err}"
    );
    let empty = p.root.join("empty.ssvp");
    std::fs::write(&empty, b"").unwrap();
    assert!(bundle::verify(&empty)
        .unwrap_err()
        .to_string()
        .contains("empty"));
    let mut newer = std::fs::read(&out).unwrap();
    assert_eq!(newer[..8], MAGIC);
    newer[8] = 9;
    let newer_path = p.root.join("newer.ssvp");
    std::fs::write(&newer_path, newer).unwrap();
    let err = bundle::verify(&newer_path).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported);
    assert!(err.to_string().contains("version 9"), "{err}");
    assert!(
        bundle::unpack(&out.with_extension("missing"), &cache)
            .unwrap_err()
            .kind()
            == ErrorKind::NotFound
    );
}

#[test]
fn a_meta_pth_is_packed_as_safetensors_with_its_tensor_names() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = dinov3_fixture();
    let out = dir.path().join("dino.ssvp");
    let input = BundleInput {
        weights: vec![WeightsInput {
            tower: "dino".into(),
            spec: fixture.join("meta.pth").display().to_string(),
            files: vec![fixture.join("meta.pth"), fixture.join("config.json")],
        }],
        ..BundleInput::default()
    };
    let manifest = bundle::create(&input, &out).unwrap();
    let record = manifest.weights_of("dino").unwrap();
    assert_eq!(record.converted_from.as_deref(), Some("meta.pth"));
    assert_eq!(
        record.fingerprint.as_deref(),
        Some(
            weights_fingerprint(&fixture.join("meta.pth"))
                .unwrap()
                .as_str()
        )
    );
    assert_eq!(
        record.files,
        ["weights/dino/model.safetensors", "weights/dino/config.json"]
    );
    // No staging folder is left beside the bundle.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    bundle::verify(&out).unwrap().ensure_ok().unwrap();
    let unpacked = bundle::unpack(&out, &dir.path().join("cache")).unwrap();
    let folder = unpacked.dino_weights.unwrap();
    let packed = folder.join("model.safetensors");
    assert_eq!(
        record.packed_fingerprint.as_deref(),
        Some(weights_fingerprint(&packed).unwrap().as_str())
    );
    // A safetensors file (not a zip), with Meta's names and values unchanged.
    assert_ne!(std::fs::read(&packed).unwrap()[..4], *b"PK\x03\x04");
    let original = Checkpoint::load(&fixture.join("meta.pth"), &Device::Cpu).unwrap();
    let converted = Checkpoint::load(&packed, &Device::Cpu).unwrap();
    let mut names: Vec<&str> = original.names().collect();
    names.sort();
    let mut got: Vec<&str> = converted.names().collect();
    got.sort();
    assert_eq!(names, got);
    assert!(
        names.iter().any(|n| n.starts_with("blocks.0.attn.qkv")),
        "{names:?}"
    );
    for name in &names {
        let (a, b) = (original.get(name).unwrap(), converted.get(name).unwrap());
        assert_eq!(a.dtype(), b.dtype(), "{name}");
        assert_eq!(a.dims(), b.dims(), "{name}");
        let diff = (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap())
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f64>()
            .unwrap_or(0.0);
        assert_eq!(diff, 0.0, "{name}");
    }
    // The model loads from the unpacked folder and computes what the .pth computes.
    let from_pth = Dinov3Model::load(
        fixture.join("meta.pth").to_str().unwrap(),
        None,
        DType::F32,
        &Device::Cpu,
    )
    .unwrap();
    let from_bundle =
        Dinov3Model::load(folder.to_str().unwrap(), None, DType::F32, &Device::Cpu).unwrap();
    let pixels = Tensor::randn(0f32, 1.0, (1, 3, 32, 32), &Device::Cpu).unwrap();
    let a = from_pth.forward(&pixels, &[1, 2], true).unwrap();
    let b = from_bundle.forward(&pixels, &[1, 2], true).unwrap();
    let delta = (a.patch - b.patch)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(delta, 0.0);

    // The resolver of `--include-weights` finds the same files as the DINOv3 loader.
    let found = bundle::resolve_weights("dino", fixture.to_str().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(
        found.files,
        [
            fixture.join("model.safetensors"),
            fixture.join("config.json")
        ]
    );
    assert!(bundle::resolve_weights("dino", "tiny").unwrap().is_none());
    assert!(bundle::resolve_weights("clip", "none").unwrap().is_none());
    let err = bundle::resolve_weights("dino", "/nowhere/weights").unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(bundle::resolve_weights("dinov9", "tiny").is_err());
}

#[test]
fn a_trained_head_and_its_calibration_travel_together() {
    let fixture = shared_fixture();
    let dir = tempfile::tempdir().unwrap();
    let detector = fixture.detector(DetectorOptions::default());
    let calibration = dir.path().join("calib.json");
    calibration_of(&detector, &calibration);
    let input = BundleInput {
        checkpoint: Some(fixture.run.clone()),
        calibration: Some(calibration.clone()),
        ..BundleInput::default()
    };
    // The tiny backbones are seeded: nothing to pack, and the records say so.
    assert!(bundle::weights_to_pack(&input, &BTreeMap::new())
        .unwrap()
        .is_empty());
    let out = dir.path().join("head.ssvp");
    let manifest = bundle::create(&input, &out).unwrap();
    assert_eq!(manifest.scoring, "head");
    assert_eq!(manifest.backbones.towers, ["clip", "dino"]);
    let run_files: Vec<&str> = manifest
        .members_of(MemberKind::Run)
        .map(|m| m.path.as_str())
        .collect();
    assert_eq!(
        &run_files[..3],
        ["run/config.toml", "run/backbones.json", "run/state.json"]
    );
    assert!(run_files[3].starts_with("run/head-step-"), "{run_files:?}");
    assert_eq!(
        manifest.backbones.backbone_identity().as_ref(),
        Some(fixture.backbones.identity())
    );
    assert!(manifest.weights.iter().all(|w| !w.packed));
    let unpacked = bundle::unpack(&out, &dir.path().join("cache")).unwrap();
    let run =
        ssvp_model::run_dir::TrainedRun::load(unpacked.checkpoint.unwrap(), &Device::Cpu).unwrap();
    assert_eq!(&run.identity, fixture.backbones.identity());

    // Parts that do not belong together are refused before anything is written.
    let refused = |input: &BundleInput| {
        let err = bundle::create(input, &dir.path().join("bad.ssvp")).unwrap_err();
        assert!(!dir.path().join("bad.ssvp").exists());
        err
    };
    let alone = refused(&BundleInput {
        calibration: Some(calibration.clone()),
        ..BundleInput::default()
    });
    assert_eq!(alone.kind(), ErrorKind::Mismatch);
    assert!(alone.to_string().contains("--checkpoint"), "{alone}");
    assert_eq!(
        refused(&BundleInput::default()).kind(),
        ErrorKind::InvalidInput
    );
    let unknown = refused(&BundleInput {
        checkpoint: Some(fixture.run.clone()),
        weights: vec![WeightsInput {
            tower: "dinov9".into(),
            spec: "x".into(),
            files: Vec::new(),
        }],
        ..BundleInput::default()
    });
    assert!(unknown.to_string().contains("unknown tower"), "{unknown}");
    // The bundle would replace one of its parts.
    let own = bundle::create(&input, &calibration).unwrap_err();
    assert!(own.to_string().contains("overwrite its own input"), "{own}");
    Calibration::read(&calibration).unwrap();
    let pickle = dir.path().join("legacy.pth");
    std::fs::write(&pickle, b"\x80\x02}q\x00.").unwrap();
    let legacy = refused(&BundleInput {
        checkpoint: Some(fixture.run.clone()),
        weights: vec![WeightsInput {
            tower: "clip".into(),
            spec: "legacy".into(),
            files: vec![pickle],
        }],
        ..BundleInput::default()
    });
    assert_eq!(legacy.kind(), ErrorKind::Unsupported);
    assert!(legacy.to_string().contains("never packed"), "{legacy}");
}
