//! Inputs as they come from cameras, and bad ones: every kind is scored or becomes a clear error
//! record, nothing panics, the batch goes on, and an interrupted run resumes to the same result.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use image::{ExtendedColorType, ImageEncoder};
use ssvp_detect::inputs::collect;
use ssvp_detect::job::{run_detect, DetectJob};
use ssvp_detect::output::files::FileOptions;
use ssvp_detect::output::records::{read_records, Record, Status};
use ssvp_detect::output::JSONL_FILE;
use ssvp_detect::{DetectorOptions, ErrorKind};
use ssvp_eval::synth::{render, Defect, Kind};
use ssvp_image::samples::{cmyk_jpeg, png_header_only, with_exif_orientation};

use crate::common::shared_fixture;

fn png(buf: &[u8], w: u32, h: u32, color: ExtendedColorType) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(buf, w, h, color)
        .unwrap();
    out
}

fn jpeg(buf: &[u8], w: u32, h: u32) -> Vec<u8> {
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .write_image(buf, w, h, ExtendedColorType::Rgb8)
        .unwrap();
    out
}

/// A woven render as interleaved RGB.
fn woven(size: u32, seed: u64) -> Vec<u8> {
    render(Kind::Woven, Some(Defect::Stain), size, seed)
        .image
        .into_raw()
}

/// Writes every kind of good input and every kind of bad one into `dir`; returns the expected
/// outcome per file name (`None` = scored, `Some(kind)` = that error).
fn write_inputs(dir: &Path) -> BTreeMap<String, Option<ErrorKind>> {
    let mut expect = BTreeMap::new();
    let mut put = |name: &str, bytes: Vec<u8>, outcome: Option<ErrorKind>| {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
        expect.insert(name.to_string(), outcome);
    };
    let rgb = woven(96, 1);
    let gray: Vec<u8> = rgb.chunks(3).map(|p| p[1]).collect();
    // Good inputs of every kind.
    put(
        "good/rgb8.png",
        png(&rgb, 96, 96, ExtendedColorType::Rgb8),
        None,
    );
    let rgba: Vec<u8> = rgb
        .chunks(3)
        .flat_map(|p| [p[0], p[1], p[2], 128])
        .collect();
    put(
        "good/rgba8.png",
        png(&rgba, 96, 96, ExtendedColorType::Rgba8),
        None,
    );
    put(
        "good/gray8.png",
        png(&gray, 96, 96, ExtendedColorType::L8),
        None,
    );
    let gray16: Vec<u8> = gray
        .iter()
        .flat_map(|&v| (v as u16 * 257).to_ne_bytes())
        .collect();
    put(
        "good/gray16.png",
        png(&gray16, 96, 96, ExtendedColorType::L16),
        None,
    );
    let rgb16: Vec<u8> = rgb
        .iter()
        .flat_map(|&v| (v as u16 * 257).to_ne_bytes())
        .collect();
    put(
        "good/rgb16.png",
        png(&rgb16, 96, 96, ExtendedColorType::Rgb16),
        None,
    );
    put("good/palette.png", palette_png(), None);
    put("good/photo.jpg", jpeg(&rgb, 96, 96), None);
    put(
        "good/rotated.jpg",
        with_exif_orientation(&jpeg(&woven_rect(), 96, 64), 6),
        None,
    );
    put("good/cmyk.jpg", cmyk_jpeg([0, 255, 255, 255]), None);
    let mut bmp = Vec::new();
    image::codecs::bmp::BmpEncoder::new(&mut bmp)
        .write_image(&rgb, 96, 96, ExtendedColorType::Rgb8)
        .unwrap();
    put("good/frame.bmp", bmp, None);
    let mut tiff = std::io::Cursor::new(Vec::new());
    image::codecs::tiff::TiffEncoder::new(&mut tiff)
        .write_image(&rgb16, 96, 96, ExtendedColorType::Rgb16)
        .unwrap();
    put("good/scan16.tiff", tiff.into_inner(), None);
    put(
        "good/one_pixel.png",
        png(&[200, 10, 10], 1, 1, ExtendedColorType::Rgb8),
        None,
    );
    // Bad inputs.
    put("bad/empty.png", Vec::new(), Some(ErrorKind::InvalidInput));
    put(
        "bad/notes.png",
        b"this is a text file, not an image\n".to_vec(),
        Some(ErrorKind::Unsupported),
    );
    let full = png(&rgb, 96, 96, ExtendedColorType::Rgb8);
    put(
        "bad/truncated.png",
        full[..full.len() / 2].to_vec(),
        Some(ErrorKind::InvalidInput),
    );
    put(
        "bad/truncated.jpg",
        jpeg(&rgb, 96, 96)[..100].to_vec(),
        Some(ErrorKind::InvalidInput),
    );
    put(
        "bad/bomb.png",
        png_header_only(60000, 60000),
        Some(ErrorKind::TooLarge),
    );
    expect
}

/// A 96 x 64 render (wider than high), to see EXIF rotation in the output size.
fn woven_rect() -> Vec<u8> {
    let square = woven(96, 2);
    square[..96 * 64 * 3].to_vec()
}

fn palette_png() -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, 32, 32);
        enc.set_color(png::ColorType::Indexed);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_palette(vec![200, 180, 140, 90, 60, 30, 250, 0, 0, 10, 10, 10]);
        let mut w = enc.write_header().unwrap();
        let idx: Vec<u8> = (0..32 * 32).map(|i| ((i / 7) % 4) as u8).collect();
        w.write_image_data(&idx).unwrap();
    }
    out
}

fn job(out: &Path) -> DetectJob {
    DetectJob {
        out_dir: out.to_path_buf(),
        files: FileOptions::default(),
        decode: Default::default(),
        resume: false,
        force: false,
        title: "test".into(),
        shard: None,
    }
}

fn options() -> DetectorOptions {
    DetectorOptions {
        class_name: "woven".into(),
        map_size: 64,
        batch_size: 3,
        pixel_threshold: Some(0.3),
        image_threshold: Some(0.3),
        ..DetectorOptions::default()
    }
}

fn by_name(records: &[Record], root: &Path) -> BTreeMap<String, Record> {
    records
        .iter()
        .map(|r| {
            let rel = Path::new(&r.path).strip_prefix(root).unwrap();
            (rel.display().to_string(), r.clone())
        })
        .collect()
}

#[test]
fn every_input_kind_is_scored_and_every_bad_input_is_a_record() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("in");
    let expect = write_inputs(&root);
    let detector = shared_fixture().detector(options());
    let inputs = collect(std::slice::from_ref(&root), None).unwrap();
    assert_eq!(inputs.len(), expect.len());
    let out = dir.path().join("out");
    let summary = run_detect(&detector, &inputs, &job(&out), &mut |_| {}).unwrap();
    assert_eq!(summary.records, expect.len());
    assert_eq!(summary.failed, 5);
    let records = by_name(&read_records(&out.join(JSONL_FILE), false).unwrap(), &root);
    for (name, outcome) in &expect {
        let r = &records[name];
        match outcome {
            None => {
                assert_eq!(r.status, Status::Ok, "{name}: {:?}", r.error);
                let d = r.detection.as_ref().unwrap();
                for f in [&r.files.map, &r.files.overlay, &r.files.thumbnail] {
                    assert!(out.join(f.as_ref().unwrap()).is_file(), "{name}: {f:?}");
                }
                assert_eq!(d.map.data.len(), 0, "maps are not in the JSON");
                let src = r.source.as_ref().unwrap();
                assert!(d.score.is_finite());
                if name.ends_with("rotated.jpg") {
                    // Stored 96 x 64 with orientation 6: scored as displayed, 64 x 96.
                    assert_eq!((src.width, src.height, src.exif_orientation), (96, 64, 6));
                    assert_eq!((d.width, d.height), (64, 96));
                } else {
                    assert_eq!((d.width, d.height), (src.width, src.height), "{name}");
                }
            }
            Some(kind) => {
                assert_eq!(r.status, Status::Error, "{name}");
                let e = r.error.as_ref().unwrap();
                assert_eq!(e.kind, *kind, "{name}: {}", e.message);
                assert!(
                    e.message.contains(name.rsplit('/').next().unwrap()),
                    "{}",
                    e.message
                );
            }
        }
    }
    let source = |n: &str| records[n].source.clone().unwrap();
    assert_eq!(source("good/gray16.png").color, "l16");
    assert_eq!(source("good/cmyk.jpg").color, "cmyk8");
    assert_eq!(source("good/palette.png").format, "png");
    assert!(records["bad/bomb.png"]
        .error
        .as_ref()
        .unwrap()
        .message
        .contains("60000x60000"));
    // Maps mirror the input tree.
    assert_eq!(
        records["good/frame.bmp"].files.map.as_deref(),
        Some("maps/good/frame.png")
    );
    // A second run into the same folder without --resume or --force changes nothing.
    let before = std::fs::read(out.join(JSONL_FILE)).unwrap();
    let err = run_detect(&detector, &inputs, &job(&out), &mut |_| {}).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Mismatch);
    assert_eq!(std::fs::read(out.join(JSONL_FILE)).unwrap(), before);
}

#[test]
fn an_interrupted_run_resumes_to_the_uninterrupted_result() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("in");
    for i in 0..7u64 {
        let p = root.join(format!("part{i}.png"));
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(&p, png(&woven(64, 10 + i), 64, 64, ExtendedColorType::Rgb8)).unwrap();
    }
    let detector = shared_fixture().detector(options());
    let inputs = collect(std::slice::from_ref(&root), None).unwrap();

    let whole = dir.path().join("whole");
    run_detect(&detector, &inputs, &job(&whole), &mut |_| {}).unwrap();

    // "Killed" after four images, in the middle of writing the fifth line.
    let cut = dir.path().join("cut");
    run_detect(&detector, &inputs[..4], &job(&cut), &mut |_| {}).unwrap();
    let jsonl = cut.join(JSONL_FILE);
    let mut bytes = std::fs::read(&jsonl).unwrap();
    bytes.extend_from_slice(b"{\"path\":\"half a li");
    std::fs::write(&jsonl, bytes).unwrap();
    let mut resume = job(&cut);
    resume.resume = true;
    let mut seen = 0;
    let summary = run_detect(&detector, &inputs, &resume, &mut |p| seen = p.total).unwrap();
    assert_eq!(seen, 3, "only the three missing images are scored again");
    assert_eq!(summary.resumed, 4);
    assert_eq!(summary.records, 7);

    // The same records, up to the timings and float32 rounding: the resumed run batches the
    // images differently ([0, 1, 2], [3] then [4, 5, 6] instead of [0, 1, 2], [3, 4, 5], [6]),
    // and a batch's matrix products may sum in another order.
    let a = read_records(&whole.join(JSONL_FILE), false).unwrap();
    let mut b = read_records(&jsonl, false).unwrap();
    b.sort_by(|x, y| x.path.cmp(&y.path));
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(
            (&x.path, x.status, &x.files, &x.source),
            (&y.path, y.status, &y.files, &y.source)
        );
        let (dx, dy) = (x.detection.as_ref().unwrap(), y.detection.as_ref().unwrap());
        assert!(
            (dx.score - dy.score).abs() < 1e-6,
            "{}: {} vs {}",
            x.path,
            dx.score,
            dy.score
        );
        assert_eq!(dx.anomalous, dy.anomalous);
        assert_eq!(dx.regions.len(), dy.regions.len());
        for (rx, ry) in dx.regions.iter().zip(&dy.regions) {
            assert_eq!((rx.bbox, rx.area), (ry.bbox, ry.area));
        }
    }
    let paths = |d: &PathBuf| {
        std::fs::read_to_string(d.join("detections.csv"))
            .unwrap()
            .lines()
            .map(|l| l.split(',').next().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        paths(&whole),
        paths(&cut),
        "the CSV lists every image once, sorted"
    );
    // Resuming with other settings is refused.
    let other = shared_fixture().detector(DetectorOptions {
        map_size: 32,
        ..options()
    });
    let err = run_detect(&other, &inputs, &resume, &mut |_| {}).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Mismatch);
}
