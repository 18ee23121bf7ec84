//! Per-image cost of `Detector::detect`, stage by stage, at the paper's sizes with seeded random
//! ViT-L weights (no files): CLIP ViT-L/14@336 at 518 px and DINOv3 ViT-L/16 at 592 px, the
//! default head, a 1600 x 1200 photo-sized RGB image (decoded from an in-memory PNG, so decode
//! is timed too) resized whole, or cut into tiles with `--tile`. Prints the median over RUNS
//! images after one warm-up and the peak resident memory (VmHWM).
//!
//! `cargo run --release -p ssvp-detect --example detect_bench [-- RUNS [--tile SIZE]]`
//! `cargo run --release -p ssvp-detect --example detect_bench -- RUNS --tiny` times the tiny
//! backbones instead (images/s of batches of 8 images of 128 px).

use std::sync::Arc;
use std::time::Instant;

use candle_core::Device;
use ssvp_detect::input::{decode_image, DecodeOptions};
use ssvp_detect::{Detection, Detector, DetectorOptions, Tiling};
use ssvp_model::{Backbones, SsvpConfig, SsvpHead};

fn vm_hwm_mib() -> f64 {
    ssvp_backbones::runtime::peak_resident_mib().unwrap_or(f64::NAN)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// A PNG of a smooth gradient with noise: realistic decode cost, deterministic content.
fn photo_png(width: u32, height: u32, seed: u32) -> Vec<u8> {
    let mut s = seed;
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let n = (s >> 28) as u8;
        image::Rgb([
            (x * 255 / width) as u8 ^ n,
            (y * 255 / height) as u8,
            128u8.wrapping_add(n),
        ])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn paper_detector(tiling: Option<Tiling>) -> anyhow::Result<Detector> {
    let dev = Device::Cpu;
    let cfg = SsvpConfig::default();
    let backbones = Backbones::seeded_vitl(&cfg.backbones, &cfg.model, &dev)?;
    let head = SsvpHead::new(&cfg, &dev)?;
    Ok(Detector::new(
        head,
        Arc::new(backbones),
        DetectorOptions {
            batch_size: 1,
            tiling,
            pixel_threshold: Some(0.5),
            ..DetectorOptions::default()
        },
    )?)
}

fn main() -> anyhow::Result<()> {
    ssvp_backbones::runtime::keep_freed_memory();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs: usize = args
        .first()
        .and_then(|a| a.parse().ok())
        .unwrap_or(3)
        .max(1);
    let tile = args
        .iter()
        .position(|a| a == "--tile")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse::<usize>())
        .transpose()?;
    if args.iter().any(|a| a == "--tiny") {
        return tiny(runs);
    }
    let detector = paper_detector(tile.map(|size| Tiling { size, overlap: 64 }))?;
    let opts = DecodeOptions::default();
    let mut per_stage: Vec<Vec<f64>> = vec![Vec::new(); 7];
    let mut walls = Vec::new();
    let mut tiles = 0;
    for run in 0..=runs {
        let png = photo_png(1600, 1200, run as u32);
        let t0 = Instant::now();
        let input = decode_image(&png, "photo.png", &opts)?;
        let d: Detection = detector.detect(std::slice::from_ref(&input))?.remove(0);
        let wall = t0.elapsed().as_secs_f64();
        let t = &d.timings;
        let stages = [
            t.decode_ms,
            t.preprocess_ms,
            t.backbones_ms,
            t.head_ms,
            t.postprocess_ms,
            t.regions_ms,
            t.total_ms(),
        ];
        eprintln!(
            "run {run}{}: {wall:.2} s (decode {:.0} ms, preprocess {:.0}, backbones {:.0}, head \
             {:.0}, postprocess {:.0}, regions {:.1}); {} tile(s)",
            if run == 0 { " (warm-up)" } else { "" },
            stages[0],
            stages[1],
            stages[2],
            stages[3],
            stages[4],
            stages[5],
            d.tiles
        );
        tiles = d.tiles;
        if run > 0 {
            for (acc, v) in per_stage.iter_mut().zip(stages) {
                acc.push(v);
            }
            walls.push(wall);
        }
    }
    let m: Vec<f64> = per_stage.into_iter().map(median).collect();
    println!(
        "detect per 1600x1200 image at the paper's sizes ({tiles} tile(s)): median {:.2} s wall \
         over {runs}; decode {:.0} ms, preprocess {:.0}, backbones {:.0}, head {:.0}, \
         postprocess {:.0}, regions {:.1}; VmHWM {:.0} MiB",
        median(walls),
        m[0],
        m[1],
        m[2],
        m[3],
        m[4],
        m[5],
        vm_hwm_mib()
    );
    Ok(())
}

/// Images/s of the tiny backbones on batches of eight 128 px images.
fn tiny(runs: usize) -> anyhow::Result<()> {
    let cfg = SsvpConfig::tiny();
    let dev = Device::Cpu;
    let backbones = Arc::new(Backbones::load(&cfg.backbones, &cfg.model, &dev)?);
    let detector = Detector::new(
        SsvpHead::new(&cfg, &dev)?,
        backbones,
        DetectorOptions {
            batch_size: 8,
            map_size: 128,
            pixel_threshold: Some(0.5),
            ..DetectorOptions::default()
        },
    )?;
    let opts = DecodeOptions::default();
    let pngs: Vec<Vec<u8>> = (0..8).map(|i| photo_png(128, 128, i)).collect();
    let mut rates = Vec::new();
    for run in 0..=runs {
        let t0 = Instant::now();
        let inputs = pngs
            .iter()
            .map(|p| decode_image(p, "tile.png", &opts))
            .collect::<Result<Vec<_>, _>>()?;
        detector.detect(&inputs)?;
        let rate = 8.0 / t0.elapsed().as_secs_f64();
        if run > 0 {
            rates.push(rate);
        }
    }
    println!(
        "detect with the tiny backbones, batches of 8 images of 128 px: median {:.1} images/s \
         over {runs} batches",
        median(rates)
    );
    Ok(())
}
