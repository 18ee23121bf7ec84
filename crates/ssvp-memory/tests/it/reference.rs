//! Parity of the training-free scorers with the independent numpy implementation in
//! reference/gen_memory.py (fixture `tests/fixtures/memory.safetensors`): exact kNN and
//! `mutual_max`, row normalisation, top-fraction means and quantiles, the patch bank's distances
//! and normal scale, the greedy coreset, MuSc mutual scores and RsCIN, and the PCA foreground
//! mask (identical masks).
//!
//! Tolerance: every score element `a` against the reference `b` must satisfy
//! `|a - b| <= 1e-6 + 1e-5 |b|` (the reference is float64 from the same float32 inputs,
//! rounded once; the crate computes in float32 with float64 sums). Indices (kNN, coreset) must
//! be identical: the generator checks that no winner is near a tie (kNN: a gap of 1e-4 in cosine,
//! bank 1e-5, coreset 2e-4 relative, RsCIN weights 1e-4 relative) other than the planted ties,
//! which test the lowest-index rule. Measured errors print with `--nocapture`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::{Device, Tensor};
use ssvp_memory::bank::{BankMeta, PatchBank};
use ssvp_memory::coreset::{greedy_coreset, CoresetOptions};
use ssvp_memory::foreground::{foreground_mask, ForegroundOptions};
use ssvp_memory::knn::{l2_normalize_rows, mutual_max, nearest, DEFAULT_TILE_ROWS};
use ssvp_memory::mutual::{mutual_scores, rscin, MutualOptions};
use ssvp_memory::score::{quantile, top_fraction_mean};

const ABS: f64 = 1e-6;
const REL: f64 = 1e-5;

fn fixture() -> &'static HashMap<String, Tensor> {
    static F: OnceLock<HashMap<String, Tensor>> = OnceLock::new();
    F.get_or_init(|| {
        let path =
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/memory.safetensors");
        candle_core::safetensors::load(&path, &Device::Cpu).expect("fixture readable")
    })
}

fn t(name: &str) -> Tensor {
    fixture()
        .get(name)
        .unwrap_or_else(|| panic!("fixture tensor `{name}` missing"))
        .clone()
}

fn f32s(name: &str) -> Vec<f32> {
    t(name).flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

fn f64s(name: &str) -> Vec<f64> {
    t(name).flatten_all().unwrap().to_vec1::<f64>().unwrap()
}

fn i64s(name: &str) -> Vec<i64> {
    t(name).flatten_all().unwrap().to_vec1::<i64>().unwrap()
}

/// Asserts `|a - b| <= ABS + REL |b|` element-wise; returns the largest `|a - b| / |b|` over
/// the reference values not near 0 (`|b| >= ABS / REL`; below that ABS is what counts).
fn check(what: &str, actual: &[f64], expected: &[f64]) -> f64 {
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    assert!(
        expected.iter().any(|v| *v != 0.0),
        "{what}: the reference is all zeros, the comparison would prove nothing"
    );
    let (mut worst_abs, mut worst_rel) = (0f64, 0f64);
    for (i, (a, b)) in actual.iter().zip(expected).enumerate() {
        let diff = (a - b).abs();
        assert!(
            diff <= ABS + REL * b.abs(),
            "{what}[{i}]: {a} vs reference {b} (|diff| {diff:e})"
        );
        worst_abs = worst_abs.max(diff);
        if b.abs() >= ABS / REL {
            worst_rel = worst_rel.max(diff / b.abs());
        }
    }
    eprintln!("{what}: max abs error {worst_abs:.2e}, max relative error {worst_rel:.2e}");
    worst_rel
}

fn check32(what: &str, actual: &[f32], expected: &[f32]) -> f64 {
    let a: Vec<f64> = actual.iter().map(|&v| f64::from(v)).collect();
    let b: Vec<f64> = expected.iter().map(|&v| f64::from(v)).collect();
    check(what, &a, &b)
}

fn as_u32(v: &[i64]) -> Vec<u32> {
    v.iter().map(|&i| u32::try_from(i).unwrap()).collect()
}

#[test]
fn nearest_matches_numpy_at_every_tile_size_and_the_tie_takes_the_first_key() {
    let (query, keys) = (t("knn.query"), t("knn.keys"));
    let want_sim = f32s("knn.similarity");
    let want_idx = as_u32(&i64s("knn.index"));
    // Query row 0 equals key rows 100 and 650.
    assert_eq!(want_idx[0], 100);
    // 1 and 64 put keys 100 and 650 in different tiles; 700 and more is one product.
    for tile in [1, 64, 100, 256, 650, 651, DEFAULT_TILE_ROWS, 700, 5000] {
        let nn = nearest(&query, &keys, tile).unwrap();
        assert_eq!(nn.index, want_idx, "tile {tile}: nearest key indices");
        check32(
            &format!("knn similarity, tile {tile}"),
            &nn.similarity,
            &want_sim,
        );
        let dist: Vec<f64> = want_sim.iter().map(|&s| 1.0 - f64::from(s)).collect();
        let got: Vec<f64> = nn
            .cosine_distances()
            .iter()
            .map(|&d| f64::from(d))
            .collect();
        // Cosine distances near 0 (row 0) are compared in absolute terms by ABS.
        check(&format!("knn cosine distance, tile {tile}"), &got, &dist);
    }
}

#[test]
fn mutual_max_gives_both_directions_of_one_product() {
    let (rows, cols) = mutual_max(&t("mutual_max.a"), &t("mutual_max.b")).unwrap();
    check32("mutual_max rows", &rows, &f32s("mutual_max.rows"));
    check32("mutual_max cols", &cols, &f32s("mutual_max.cols"));
    // The other way round swaps them.
    let (rows_ba, cols_ba) = mutual_max(&t("mutual_max.b"), &t("mutual_max.a")).unwrap();
    check32("mutual_max b-a rows", &rows_ba, &f32s("mutual_max.cols"));
    check32("mutual_max b-a cols", &cols_ba, &f32s("mutual_max.rows"));
}

#[test]
fn l2_normalize_rows_matches_numpy() {
    let got = l2_normalize_rows(&t("bank.ref0.tap0")).unwrap();
    let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    check32("l2_normalize_rows", &got, &f32s("bank.ref0.tap0.unit"));
}

#[test]
fn top_fraction_mean_and_quantile_match_numpy() {
    let values = f32s("top.values");
    let got: Vec<f32> = f64s("top.q")
        .iter()
        .map(|&q| top_fraction_mean(&values, q))
        .collect();
    check32("top_fraction_mean", &got, &f32s("top.expected"));
    let got: Vec<f32> = f64s("quantile.q")
        .iter()
        .map(|&q| quantile(&values, q))
        .collect();
    check32("quantile", &got, &f32s("quantile.expected"));
    // 36 bank distances: floor(0.36) = 0 (the maximum) and floor(3.6) = 3 values.
    let d = f32s("bank.distances");
    let got: Vec<f32> = f64s("bank.top.q")
        .iter()
        .map(|&q| top_fraction_mean(&d, q))
        .collect();
    check32(
        "top_fraction_mean of bank distances",
        &got,
        &f32s("bank.top.expected"),
    );
}

fn bank_meta() -> BankMeta {
    BankMeta {
        format: ssvp_memory::bank::BANK_FORMAT,
        backbones: "fixture".into(),
        backbone_names: "random / random".into(),
        taps: vec!["tap0".into(), "tap1".into()],
        grid: (6, 6),
        references: (0..3).map(|r| format!("ref{r}")).collect(),
        rotations: 1,
        coreset: None,
        normal_scale: None,
        made_with: None,
    }
}

#[test]
fn bank_distances_and_normal_scale_match_numpy() {
    let images: Vec<Vec<Tensor>> = (0..3)
        .map(|r| (0..2).map(|k| t(&format!("bank.ref{r}.tap{k}"))).collect())
        .collect();
    let bank = PatchBank::build(&images, bank_meta(), None).unwrap();
    assert_eq!(bank.len(), 3 * 36);
    let test: Vec<Tensor> = (0..2).map(|k| t(&format!("bank.test.tap{k}"))).collect();
    let d = bank.distances(&test).unwrap();
    check32("bank distances", &d, &f32s("bank.distances"));
    let scale = bank
        .meta()
        .normal_scale
        .expect("three references give a scale");
    check32("bank normal scale", &[scale], &f32s("bank.normal_scale"));
    let got = top_fraction_mean(&d, 0.1);
    check32(
        "image score of the bank distances",
        &[got],
        &f32s("bank.top.expected")[1..],
    );
}

#[test]
fn greedy_coreset_selects_the_same_indices_as_numpy() {
    for case in ["a", "b"] {
        let p = |k: &str| format!("coreset.{case}.{k}");
        let opts = CoresetOptions {
            fraction: f64s(&p("fraction"))[0],
            projection_dim: i64s(&p("projection_dim"))[0] as usize,
            starts: i64s(&p("starts"))[0] as usize,
            seed: i64s(&p("seed"))[0] as u64,
        };
        let want: Vec<usize> = i64s(&p("index")).iter().map(|&i| i as usize).collect();
        let got = greedy_coreset(&t(&p("x")), &opts).unwrap();
        assert_eq!(got, want, "coreset {case} ({opts:?})");
        eprintln!("coreset {case}: {} indices identical", got.len());
    }
}

fn mutual_layers() -> Vec<Vec<Tensor>> {
    (0..2)
        .map(|k| {
            (0..7)
                .map(|b| t(&format!("mutual.layer{k}.image{b}")))
                .collect()
        })
        .collect()
}

#[test]
fn mutual_scores_match_numpy() {
    let layers = mutual_layers();
    let opts = MutualOptions::default();
    assert_eq!((opts.degrees.clone(), opts.fraction), (vec![1, 3, 5], 0.3));
    let scores = mutual_scores(&layers, (5, 6), &opts).unwrap();
    assert_eq!(scores.len(), 7);
    let flat: Vec<f32> = scores.iter().flatten().copied().collect();
    check32("mutual patch scores", &flat, &f32s("mutual.patch_scores"));
    let image: Vec<f32> = scores
        .iter()
        .map(|s| s.iter().copied().fold(f32::NEG_INFINITY, f32::max))
        .collect();
    check32("mutual image scores", &image, &f32s("mutual.image_scores"));

    let half = MutualOptions {
        fraction: 0.5,
        ..MutualOptions::default()
    };
    let scores = mutual_scores(&layers, (5, 6), &half).unwrap();
    let flat: Vec<f32> = scores.iter().flatten().copied().collect();
    check32(
        "mutual patch scores, fraction 0.5",
        &flat,
        &f32s("mutual.f05.patch_scores"),
    );
}

#[test]
fn rscin_matches_numpy() {
    let windows: Vec<usize> = i64s("rscin.windows").iter().map(|&w| w as usize).collect();
    assert_eq!(windows, vec![1, 2, 3]);
    // Case a re-scores the mutual image scores.
    let a: Vec<f64> = f32s("mutual.image_scores")
        .iter()
        .map(|&v| f64::from(v))
        .collect();
    assert_eq!(a, f64s("rscin.a.scores"));
    for case in ["a", "b", "c"] {
        let p = |k: &str| format!("rscin.{case}.{k}");
        let got = rscin(&f64s(&p("scores")), &t(&p("globals")), &windows).unwrap();
        let want = f64s(&p("expected"));
        if case == "c" {
            // Equal scores all scale to 0.
            assert_eq!(want, vec![0.0; 7]);
            assert_eq!(got, want, "rscin c");
        } else {
            check(&format!("rscin {case}"), &got, &want);
        }
    }
}

#[test]
fn foreground_mask_matches_numpy_for_both_signs() {
    let grid = i64s("foreground.grid");
    let grid = (grid[0] as usize, grid[1] as usize);
    let opts = ForegroundOptions {
        threshold: f32s("foreground.threshold")[0],
        ..ForegroundOptions::default()
    };
    for case in ["a", "b"] {
        let mask = foreground_mask(&t(&format!("foreground.{case}.tokens")), grid, &opts).unwrap();
        let expected: Vec<bool> = i64s(&format!("foreground.{case}.mask"))
            .iter()
            .map(|v| *v == 1)
            .collect();
        assert_eq!(mask, expected, "case {case}");
        assert!(mask.iter().any(|m| *m) && !mask.iter().all(|m| *m));
    }
}
