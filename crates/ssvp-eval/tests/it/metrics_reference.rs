//! Image and pixel metrics against sklearn, an independent numpy implementation of anomalib's
//! exact AUPRO and AnomalyCLIP's cflow formula (fixtures from `reference/gen_metrics.py`).
//! Tolerance: 1e-9 absolute on every metric; undefined cases must be undefined (not 0).

use std::path::PathBuf;

use serde_json::Value;
use ssvp_eval::maps::io::parse_npy;
use ssvp_eval::metrics::{
    binary_metrics, cflow_thresholds, PixelAccumulator, PixelMetrics, Undefined,
};

const TOL: f64 = 1e-9;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/metrics")
        .join(name)
}

fn json(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(name)).unwrap()).unwrap()
}

fn check(case: &str, metric: &str, got: &Result<f64, Undefined>, want: &Value) {
    match (got, want.as_f64()) {
        (Ok(g), Some(w)) => assert!(
            (g - w).abs() < TOL,
            "{case} {metric}: got {g}, sklearn/numpy {w}"
        ),
        (Err(_), None) => {}
        (g, w) => panic!("{case} {metric}: got {g:?}, reference {w:?}"),
    }
}

#[test]
fn image_metrics_equal_sklearn() {
    let cases = json("image_cases.json");
    for case in cases.as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let scores: Vec<f64> = case["scores_bits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| f64::from_bits(v.as_u64().unwrap()))
            .collect();
        let labels: Vec<bool> = case["labels"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64() == Some(1))
            .collect();
        let m = binary_metrics(&scores, &labels).unwrap();
        let e = &case["expected"];
        check(name, "auroc", &m.auroc, &e["auroc"]);
        check(name, "ap", &m.average_precision, &e["ap"]);
        check(name, "f1_max", &m.f1_max, &e["f1_max"]);
    }
}

fn load_case(case: &Value) -> (Vec<f32>, Vec<bool>, usize, usize, usize) {
    let (n, h, w) = (
        case["images"].as_u64().unwrap() as usize,
        case["height"].as_u64().unwrap() as usize,
        case["width"].as_u64().unwrap() as usize,
    );
    let maps = parse_npy(&std::fs::read(fixture(case["maps"].as_str().unwrap())).unwrap()).unwrap();
    assert_eq!((maps.width, maps.height), (w, n * h));
    let masks: Vec<bool> = match case["masks"].as_str().unwrap() {
        "zeros" => vec![false; n * h * w],
        "ones" => vec![true; n * h * w],
        file => parse_npy(&std::fs::read(fixture(file)).unwrap())
            .unwrap()
            .data
            .iter()
            .map(|&v| v > 0.5)
            .collect(),
    };
    (maps.data, masks, n, h, w)
}

fn accumulate(maps: &[f32], masks: &[bool], n: usize, h: usize, w: usize) -> PixelAccumulator {
    let mut acc = PixelAccumulator::new();
    for i in 0..n {
        let r = i * h * w..(i + 1) * h * w;
        acc.push(&maps[r.clone()], &masks[r], w, h).unwrap();
    }
    acc
}

fn check_pixel(name: &str, m: &PixelMetrics, e: &Value) {
    check(name, "pixel auroc", &m.auroc, &e["auroc"]);
    check(name, "pixel ap", &m.average_precision, &e["ap"]);
    check(name, "pixel f1_max", &m.f1_max, &e["f1_max"]);
    check(name, "exact aupro", &m.aupro, &e["aupro"]);
    check(name, "cflow aupro", &m.aupro_cflow, &e["aupro_cflow"]);
    assert_eq!(
        m.counts.regions,
        e["regions"].as_u64().unwrap(),
        "{name} regions"
    );
}

#[test]
fn pixel_metrics_equal_sklearn_and_aupro_references() {
    let all = json("pixel_cases.json");
    for case in all["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let (maps, masks, n, h, w) = load_case(case);
        let streaming = accumulate(&maps, &masks, n, h, w).finish();
        check_pixel(name, &streaming, &case["expected"]);
        let sorted = accumulate(&maps, &masks, n, h, w).finish_sorted();
        check_pixel(&format!("{name} (sorted path)"), &sorted, &case["expected"]);
        if let Some(t) = case["expected"]["cflow_thresholds"].as_u64() {
            let lo = maps.iter().cloned().fold(f32::INFINITY, f32::min);
            let hi = maps.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
            assert_eq!(
                cflow_thresholds(lo, hi).len() as u64,
                t,
                "{name} threshold count"
            );
        }
    }
}

#[test]
fn long_tailed_maps_show_the_cflow_gap() {
    // Documented behaviour (docs/formats.md §5.4): exact AUPRO is invariant to the monotone exp(),
    // the cflow-style number is not.
    let all = json("pixel_cases.json");
    let get = |name: &str| {
        let case = all["cases"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap();
        let (maps, masks, n, h, w) = load_case(case);
        accumulate(&maps, &masks, n, h, w).finish()
    };
    let (plain, tailed) = (get("blobs"), get("long_tailed"));
    assert!((plain.aupro.clone().unwrap() - tailed.aupro.clone().unwrap()).abs() < 1e-6);
    assert!(tailed.aupro_cflow.unwrap() < plain.aupro_cflow.unwrap() - 0.3);
}

#[test]
fn cflow_thresholds_equal_numpy_arange_bit_for_bit() {
    let all = json("pixel_cases.json");
    for case in all["cflow_thresholds"].as_array().unwrap() {
        let lo = case["min"].as_f64().unwrap() as f32;
        let hi = case["max"].as_f64().unwrap() as f32;
        // Compared as bit patterns (serde_json's float parsing may be off by one ulp).
        let want: Vec<f64> = case["thresholds_bits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| f64::from_bits(v.as_u64().unwrap()))
            .collect();
        assert_eq!(
            cflow_thresholds(lo, hi),
            want,
            "thresholds for [{lo}, {hi}]"
        );
    }
}

#[test]
fn nan_scores_are_errors() {
    let mut acc = PixelAccumulator::new();
    let err = acc
        .push(
            &[0.5, f32::NAN, 0.1, 0.2],
            &[false, true, false, false],
            2,
            2,
        )
        .unwrap_err();
    assert!(err.to_string().contains("map pixel 1 is NaN"), "{err}");
    assert!(binary_metrics(&[0.5, f64::NEG_INFINITY], &[true, false]).is_err());
}
