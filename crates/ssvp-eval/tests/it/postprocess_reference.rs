//! Post-processing against torch `F.interpolate` (bilinear, both `align_corners`), scipy
//! `gaussian_filter` (float32) and PIL bilinear mask resizing (fixtures from
//! `reference/gen_metrics.py`). Tolerances: 1e-6 absolute for float maps in [0, 1] (float32
//! rounding differences only); masks must match exactly.

use std::path::PathBuf;

use serde_json::Value;
use ssvp_eval::maps::io::parse_npy;
use ssvp_eval::postprocess::{
    gaussian_filter, gaussian_filter_truncated, resize_bilinear, resize_mask, AnomalyMap, Grid,
};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/metrics")
        .join(name)
}

fn npy(name: &Value) -> AnomalyMap {
    parse_npy(&std::fs::read(fixture(name.as_str().unwrap())).unwrap()).unwrap()
}

fn max_abs(a: &AnomalyMap, b: &AnomalyMap) -> f32 {
    assert_eq!((a.width, a.height), (b.width, b.height));
    a.data
        .iter()
        .zip(&b.data)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn postprocess_equals_torch_scipy_and_pil() {
    let cases: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("postprocess.json")).unwrap())
            .unwrap();
    let mut counts = [0; 3];
    for case in cases.as_array().unwrap() {
        let src = npy(&case["src"]);
        let want = npy(&case["expected"]);
        let size = |k: &str| case[k].as_u64().unwrap_or(0) as usize;
        match case["op"].as_str().unwrap() {
            "bilinear" => {
                let ac = case["align_corners"].as_bool().unwrap();
                let got = resize_bilinear(&src, size("out_width"), size("out_height"), ac).unwrap();
                let err = max_abs(&got, &want);
                assert!(
                    err < 1e-6,
                    "bilinear {:?} align_corners={ac}: max error {err}",
                    want.data.len()
                );
                counts[0] += 1;
            }
            "gaussian" => {
                let (sigma, truncate) = (
                    case["sigma"].as_f64().unwrap(),
                    case["truncate"].as_f64().unwrap(),
                );
                let got = gaussian_filter_truncated(&src, sigma, truncate).unwrap();
                let err = max_abs(&got, &want);
                assert!(
                    err < 1e-6,
                    "gaussian {}x{} sigma {sigma}: max error {err}",
                    src.width,
                    src.height
                );
                counts[1] += 1;
            }
            "mask" => {
                let mask = Grid::new(
                    src.width,
                    src.height,
                    src.data.iter().map(|&v| v > 0.5).collect(),
                )
                .unwrap();
                let got = resize_mask(&mask, size("out_width"), size("out_height")).unwrap();
                let want: Vec<bool> = want.data.iter().map(|&v| v > 0.5).collect();
                assert_eq!(
                    got.data,
                    want,
                    "mask to {}x{}",
                    size("out_width"),
                    size("out_height")
                );
                counts[2] += 1;
            }
            op => panic!("unknown op {op}"),
        }
    }
    assert_eq!(counts, [8, 4, 4]);
}

#[test]
fn sigma_4_default_matches_the_explicit_truncate() {
    let src = Grid::new(9, 7, (0..63).map(|i| (i % 5) as f32 * 0.2).collect()).unwrap();
    assert_eq!(
        gaussian_filter(&src, 4.0).unwrap(),
        gaussian_filter_truncated(&src, 4.0, 4.0).unwrap()
    );
}
