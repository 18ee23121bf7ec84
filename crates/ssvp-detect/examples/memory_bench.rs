//! Per-image cost of the training-free scorers at the paper's sizes (37 x 37 patches of 1024
//! dims), besides the backbones:
//! - references: one image's exact kNN against a bank of 16 references (21904 vectors), and the
//!   bank's build (stacking, the leave-one-out normal scale);
//! - mutual: a set of B images with 4 layers and degrees 1, 3, 5 (MuSc), per image.
//!
//! Features are random unit vectors of the right shapes (the cost does not depend on them).
//! With `--detect` it also runs one 1600 x 1200 image end to end through a headless detector on
//! seeded ViT-L backbones with such a bank (about half a minute on 2 cores).
//!
//! `cargo run --release -p ssvp-detect --example memory_bench [-- RUNS [--set B] [--detect]]`

use std::sync::Arc;
use std::time::Instant;

use candle_core::{Device, Tensor};
use ssvp_detect::memory::{references_memory, ReferenceScoring};
use ssvp_detect::{Detector, DetectorOptions, InputImage};
use ssvp_features::{Backbones, FeatureSource};
use ssvp_memory::mutual::{mutual_scores, MutualOptions};
use ssvp_memory::{BankMeta, PatchBank};
use ssvp_model::SsvpConfig;

const N: usize = 37 * 37;
const D: usize = 1024;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn random(seed: u64) -> anyhow::Result<Tensor> {
    let t = Tensor::randn(0f32, 1.0, (N, D), &Device::Cpu)?;
    // candle's CPU RNG is not seedable per call; mix the seed in so images differ.
    Ok((t + seed as f64 * 1e-3)?)
}

fn main() -> anyhow::Result<()> {
    ssvp_backbones::runtime::keep_freed_memory();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs: usize = args
        .first()
        .and_then(|a| a.parse().ok())
        .unwrap_or(3)
        .max(1);
    let set: usize = args
        .iter()
        .position(|a| a == "--set")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);

    // References: a bank of 16 images.
    let refs: Vec<Vec<Tensor>> = (0..16)
        .map(|i| random(i).map(|t| vec![t]))
        .collect::<anyhow::Result<_>>()?;
    let cfg = SsvpConfig::default();
    let meta = |backbones: &str, tap: String| BankMeta {
        format: ssvp_memory::bank::BANK_FORMAT,
        backbones: backbones.into(),
        backbone_names: "seeded ViT-L".into(),
        taps: vec![tap],
        grid: (37, 37),
        references: (0..16).map(|i| format!("ref{i}")).collect(),
        rotations: 1,
        coreset: None,
        normal_scale: None,
        made_with: None,
    };
    let t0 = Instant::now();
    let bank = PatchBank::build(&refs, meta("none", "dino.24".into()), None)?;
    let build = t0.elapsed().as_secs_f64();
    let query = random(99)?;
    let mut knn = Vec::new();
    for _ in 0..=runs {
        let t0 = Instant::now();
        let d = bank.distances(std::slice::from_ref(&query))?;
        knn.push(t0.elapsed().as_secs_f64());
        assert_eq!(d.len(), N);
    }
    knn.remove(0);
    let flop = 2.0 * N as f64 * (16 * N) as f64 * D as f64;
    println!(
        "references: kNN of one image against 16 references ({} vectors x {D}): median {:.0} ms \
         over {runs} ({:.1} GFLOP/s); bank build incl. leave-one-out scale {:.1} s",
        16 * N,
        1e3 * median(knn.clone()),
        flop / median(knn) / 1e9,
        build
    );

    // The bank file: write, then load (what `ssvp detect --bank` does at start).
    let dir = std::env::temp_dir().join(format!("ssvp-memory-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("bank.safetensors");
    let t0 = Instant::now();
    bank.save(&path)?;
    let save = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let loaded = PatchBank::load(&path, &Device::Cpu)?;
    let load = t0.elapsed().as_secs_f64();
    assert_eq!(loaded.len(), bank.len());
    println!(
        "bank file of {:.0} MB: save {:.0} ms, load {:.0} ms",
        std::fs::metadata(&path)?.len() as f64 / 1e6,
        1e3 * save,
        1e3 * load
    );
    std::fs::remove_dir_all(&dir)?;

    // A 10 % coreset of the 16-image bank.
    let t0 = Instant::now();
    let picked = ssvp_memory::coreset::greedy_coreset(
        &bank.keys()[0],
        &ssvp_memory::CoresetOptions::default(),
    )?;
    println!(
        "coreset: {} of {} vectors (10 %) in {:.1} s",
        picked.len(),
        bank.len(),
        t0.elapsed().as_secs_f64()
    );

    // Mutual: a set of `set` images, 4 layers, degrees 1, 3, 5.
    let layers: Vec<Vec<Tensor>> = (0..4)
        .map(|l| (0..set).map(|b| random(100 * l + b as u64)).collect())
        .collect::<anyhow::Result<_>>()?;
    let t0 = Instant::now();
    let scores = mutual_scores(&layers, (37, 37), &MutualOptions::default())?;
    let secs = t0.elapsed().as_secs_f64();
    assert_eq!(scores.len(), set);
    let products = (set * (set - 1) / 2 * 4 * 3) as f64;
    let flop = products * 2.0 * (N * N * D) as f64;
    println!(
        "mutual: a set of {set} images (4 layers x 3 degrees, {products} pair products): {:.1} s, \
         {:.2} s per image ({:.1} GFLOP/s); per image the work grows as (B - 1): at B = 32 \
         expect {:.1} s per image",
        secs,
        secs / set as f64,
        flop / secs / 1e9,
        secs / set as f64 * 31.0 / (set - 1) as f64
    );

    if args.iter().any(|a| a == "--detect") {
        let backbones = Arc::new(Backbones::seeded_vitl(
            &cfg.backbones,
            &cfg.model.taps(),
            &Device::Cpu,
        )?);
        let id = backbones.identity();
        let last = format!("dino.{}", id.dino_layers[id.dino_layers.len() - 1]);
        let bank = PatchBank::build(&refs, meta(&id.digest(), last), None)?;
        let memory = references_memory(bank, backbones.identity(), ReferenceScoring::default())?;
        let detector = Detector::without_head(
            Arc::clone(&backbones),
            cfg.postprocess.clone(),
            DetectorOptions {
                batch_size: 1,
                ..DetectorOptions::default()
            },
        )?
        .with_memory(memory)?;
        let image = ssvp_image::RgbImage8 {
            width: 1600,
            height: 1200,
            data: (0..1600 * 1200 * 3).map(|i| (i * 7 % 251) as u8).collect(),
        };
        let input = InputImage::from_rgb("photo", image);
        for run in 0..2 {
            let t0 = Instant::now();
            let d = detector.detect(std::slice::from_ref(&input))?.remove(0);
            let t = &d.timings;
            println!(
                "references detect, 1600x1200 at the paper's sizes{}: {:.1} s (preprocess {:.0} \
                 ms, backbones {:.0}, bank search {:.0}, postprocess {:.0})",
                if run == 0 { " (warm-up)" } else { "" },
                t0.elapsed().as_secs_f64(),
                t.preprocess_ms,
                t.backbones_ms,
                t.memory_ms,
                t.postprocess_ms
            );
        }
        // Baseline in the same process: both towers, as a head (or evaluation) needs them.
        let t0 = Instant::now();
        backbones.features_of_images(std::slice::from_ref(&input.image))?;
        println!(
            "baseline: both towers on the same image {:.1} s",
            t0.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
