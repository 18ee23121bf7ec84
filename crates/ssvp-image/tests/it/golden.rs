//! Golden tests against Pillow / torchvision / transformers outputs made by
//! `reference/gen_image.py` (fixtures in tests/fixtures/image, described by manifest.json).

use std::path::PathBuf;

use serde_json::Value;
use ssvp_image::{load_rgb8, resize_u8, Filter};

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/image")
}

fn manifest() -> Value {
    let text = std::fs::read_to_string(fixture_dir().join("manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixture_dir().join(name)).unwrap()
}

fn floats(name: &str) -> Vec<f32> {
    bytes(name)
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn max_abs_diff_u8(a: &[u8], b: &[u8]) -> u8 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(&x, &y)| x.abs_diff(y))
        .max()
        .unwrap_or(0)
}

fn usize_of(v: &Value, key: &str) -> usize {
    v[key].as_u64().unwrap() as usize
}

#[test]
fn decodes_every_format_to_rgb8() {
    let m = manifest();
    let cases = m["decode"].as_array().unwrap();
    assert!(cases.len() >= 15);
    for case in cases {
        let file = case["file"].as_str().unwrap();
        let img = load_rgb8(fixture_dir().join(file)).unwrap();
        assert_eq!(
            (img.width, img.height),
            (usize_of(case, "width"), usize_of(case, "height")),
            "{file}"
        );
        let expected = bytes(case["expected_rgb8"].as_str().unwrap());
        let diff = max_abs_diff_u8(&img.data, &expected);
        let tolerance = case["tolerance"].as_u64().unwrap() as u8;
        assert!(
            diff <= tolerance,
            "{file}: max abs diff {diff} > {tolerance}"
        );
    }
}

/// Pillow's bilinear and bicubic resizes, up and down, one axis or both, 1 and 3 channels.
/// Tolerance: 1 LSB (the implementation is in fact expected to be bit exact).
#[test]
fn resize_matches_pillow() {
    let m = manifest();
    let mut worst = 0;
    let mut exact = 0;
    let cases = m["resize"].as_array().unwrap();
    for case in cases {
        let source = case["source"].as_str().unwrap();
        let channels = usize_of(case, "channels");
        let (data, w, h) = if channels == 1 {
            let g = ssvp_image::load_gray8(fixture_dir().join(source)).unwrap();
            (g.data, g.width, g.height)
        } else {
            let img = load_rgb8(fixture_dir().join(source)).unwrap();
            (img.data, img.width, img.height)
        };
        let filter = match case["filter"].as_str().unwrap() {
            "bilinear" => Filter::PillowBilinear,
            "bicubic" => Filter::PillowBicubic,
            other => panic!("unknown filter {other}"),
        };
        let (ow, oh) = (usize_of(case, "out_width"), usize_of(case, "out_height"));
        let out = resize_u8(&data, w, h, channels, ow, oh, filter).unwrap();
        let expected = bytes(case["expected"].as_str().unwrap());
        let diff = max_abs_diff_u8(&out, &expected);
        assert!(
            diff <= 1,
            "{source} -> {ow}x{oh} {filter:?}: max abs diff {diff}"
        );
        worst = worst.max(diff);
        exact += (diff == 0) as usize;
    }
    eprintln!(
        "resize: {exact}/{} cases bit exact, worst {worst} LSB",
        cases.len()
    );
}

/// Full normalised preprocessing against torchvision (CLIP, on PIL images) and transformers'
/// `DINOv3ViTImageProcessor`. Tolerance: max abs difference 1e-5 on normalised values (the 8-bit
/// CLIP path is bit exact before the float scaling; the float DINOv3 path differs from torch only
/// by summation order / weight precision).
#[test]
fn preprocessing_matches_reference_pipelines() {
    use ssvp_image::Preprocess;
    let m = manifest();
    let cases = m["preprocess"].as_array().unwrap();
    assert!(cases.len() >= 9);
    for case in cases {
        let source = case["source"].as_str().unwrap();
        let img = load_rgb8(fixture_dir().join(source)).unwrap();
        let (w, h) = (usize_of(case, "width"), usize_of(case, "height"));
        let p = match (
            case["kind"].as_str().unwrap(),
            case["mode"].as_str().unwrap(),
        ) {
            ("clip", "squash") => Preprocess::clip(w),
            ("clip", "crop") => Preprocess::clip_center_crop(w),
            ("dinov3", _) => Preprocess::dinov3(w).with_size(w, h),
            ("dinov3_sat", _) => Preprocess::dinov3_sat(w).with_size(w, h),
            other => panic!("unknown case {other:?}"),
        };
        let out = p.apply(&img).unwrap();
        assert_eq!((out.channels, out.height, out.width), (3, h, w));
        let expected = floats(case["expected"].as_str().unwrap());
        let diff = out
            .data
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        eprintln!("{source} {:?}: max abs diff {diff:e}", case["expected"]);
        assert!(diff < 1e-5, "{source} {case}: max abs diff {diff}");
    }
}
