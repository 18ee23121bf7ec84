//! `ssvp bench`: the real pipeline ([`Detector::detect`]) timed stage by stage on synthetic
//! images, with the work of each backbone and its share of the machine's measured FMA peak.
//!
//! Why through the detector and not stage functions called one by one: what is timed is then
//! what `ssvp detect`, `eval` and the server run, batching, early stops and copies included.
//! The stage split comes from the [`Timings`] every detection carries.

use std::time::{Duration, Instant};

use serde::Serialize;
use ssvp_backbones::runtime::{device_name, measure_fma_peak, peak_resident_mib, FmaPeak};
use ssvp_features::FeatureSource;

use crate::detection::Timings;
use crate::detector::Detector;
use crate::error::{Error, Result};
use crate::input::{decode_image, DecodeOptions};

/// How a benchmark runs.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Images timed (after the warm-up).
    pub images: usize,
    /// Calls of the detector run first and not timed (first-call allocations, caches).
    pub warmup: usize,
    /// Width of the synthetic images, in pixels.
    pub width: u32,
    /// Their height.
    pub height: u32,
    /// Measure the CPU's FMA peak (about a second) for the share-of-peak column.
    pub fma_probe: bool,
}

impl Default for BenchOptions {
    fn default() -> Self {
        Self {
            images: 4,
            warmup: 1,
            width: 1600,
            height: 1200,
            fma_probe: true,
        }
    }
}

/// One stage of the pipeline, per image.
#[derive(Clone, Debug, Serialize)]
pub struct StageReport {
    /// `decode`, `preprocess`, `clip`, `dino`, `head`, `memory` or `postprocess` (regions
    /// included).
    pub stage: &'static str,
    /// Mean wall-clock time per image.
    pub ms: f64,
    /// Multiply-add work per image in GFLOP (two per multiply-add), where it is counted: the
    /// backbones (see `ClipVisionTransformer::flops`).
    pub gflop: Option<f64>,
    /// `gflop / ms`, in GFLOP/s.
    pub gflops: Option<f64>,
    /// `gflops` over the measured FMA peak of the threads that ran it.
    pub peak_share: Option<f64>,
}

/// What `ssvp bench` prints.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    /// The setting's name (`paper`, `tiny`, `real`).
    pub setting: String,
    /// What scores: `head`, `references`, `mutual`, `head+references`...
    pub mode: String,
    /// The CLIP and DINOv3 towers.
    pub backbones: String,
    /// Where the tensors live (`cpu`, `cuda:0`).
    pub device: String,
    /// Threads of the CPU work (rayon's pool).
    pub threads: usize,
    /// Images timed.
    pub images: usize,
    /// Their size in pixels.
    pub image_size: (u32, u32),
    /// Images per call of the detector (its batch size, or its set size for mutual scoring).
    pub batch_size: usize,
    /// Tiles per image (1: resized whole).
    pub tiles: usize,
    /// Per stage, per image: decode, preprocess, clip, dino, head, memory, postprocess.
    pub stages: Vec<StageReport>,
    /// Wall-clock time per image over the timed images (decode to regions).
    pub ms_per_image: f64,
    /// Its inverse.
    pub images_per_s: f64,
    /// Backbone work per image, in GFLOP.
    pub gflop_per_image: f64,
    /// The process's peak resident memory (VmHWM), in MiB.
    pub peak_rss_mib: Option<f64>,
    /// The CPU's measured f32 FMA peak, when probed.
    pub fma_peak: Option<FmaPeak>,
}

/// A PNG of a smooth gradient with noise: a realistic decode cost and deterministic content.
pub fn synthetic_png(width: u32, height: u32, seed: u32) -> Result<Vec<u8>> {
    let (w, h) = (width as usize, height as usize);
    let mut s = seed;
    let mut data = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let n = (s >> 28) as u8;
            data.extend_from_slice(&[
                (x * 255 / w.max(1)) as u8 ^ n,
                (y * 255 / h.max(1)) as u8,
                128u8.wrapping_add(n),
            ]);
        }
    }
    let img = ssvp_image::RgbImage8::from_raw(w, h, data).map_err(Error::from)?;
    ssvp_image::encode::encode_png_rgb8(&img).map_err(Error::from)
}

/// Runs `detector` on `opts.warmup` then `opts.images` synthetic images, in calls of its batch
/// size (of its set size for mutual scoring), and reports per stage.
pub fn run(detector: &Detector, setting: &str, opts: &BenchOptions) -> Result<BenchReport> {
    if opts.images == 0 || opts.width == 0 || opts.height == 0 {
        return Err(Error::invalid(
            "a benchmark needs at least one timed image of at least 1 x 1 pixels",
        ));
    }
    let per_call = detector
        .set_size()
        .unwrap_or(detector.options().batch_size)
        .max(1);
    let decode = DecodeOptions::default();
    let mut sum = Timings::default();
    let mut tiles = 0;
    let mut timed = 0;
    let mut wall = Duration::ZERO;
    // The warm-up runs whole calls, so that the timed calls are those a user makes.
    let calls = (0..opts.warmup).map(|_| (false, per_call)).chain(
        (0..opts.images)
            .step_by(per_call)
            .map(|i| (true, per_call.min(opts.images - i))),
    );
    let mut next = 0;
    for (is_timed, n) in calls {
        // Encoded outside the clock: a user's files arrive encoded.
        let files = (next..next + n)
            .map(|i| synthetic_png(opts.width, opts.height, i as u32))
            .collect::<Result<Vec<_>>>()?;
        let started = Instant::now();
        let inputs = files
            .iter()
            .enumerate()
            .map(|(i, f)| decode_image(f, &format!("synthetic-{}.png", next + i), &decode))
            .collect::<Result<Vec<_>>>()?;
        let detections = detector.detect(&inputs)?;
        let elapsed = started.elapsed();
        if is_timed {
            wall += elapsed;
            for d in &detections {
                sum.add(&d.timings);
                tiles = d.tiles;
                timed += 1;
            }
        }
        next += n;
    }
    let backbones = detector.backbones();
    let (clip_flop, dino_flop) = backbones
        .tower_flops(detector.towers())
        .map_err(Error::model)?;
    let (clip_flop, dino_flop) = (clip_flop * tiles as f64, dino_flop * tiles as f64);
    let device = backbones.device();
    let threads = rayon::current_num_threads();
    let fma_peak = (opts.fma_probe && device.is_cpu())
        .then(|| measure_fma_peak(threads, Duration::from_millis(300)));
    let k = 1.0 / timed as f64;
    let stage = |stage: &'static str, ms: f64, flop: Option<f64>| {
        let gflops = flop.filter(|_| ms > 0.0).map(|f| f / 1e9 / (ms / 1e3));
        StageReport {
            stage,
            ms,
            gflop: flop.map(|f| f / 1e9),
            gflops,
            peak_share: gflops.zip(fma_peak).map(|(g, p)| g / p.gflops),
        }
    };
    // Only the stages that ran: a tower left out, no head or no memory has no row.
    let towers = detector.towers();
    let ran = detector.description().map(|d| d.stages).unwrap_or_default();
    let stages = [
        (true, stage("decode", sum.decode_ms * k, None)),
        (true, stage("preprocess", sum.preprocess_ms * k, None)),
        (towers.clip, stage("clip", sum.clip_ms * k, Some(clip_flop))),
        (towers.dino, stage("dino", sum.dino_ms * k, Some(dino_flop))),
        (ran.head, stage("head", sum.head_ms * k, None)),
        (ran.memory, stage("memory", sum.memory_ms * k, None)),
        (
            true,
            stage(
                "postprocess",
                (sum.postprocess_ms + sum.regions_ms) * k,
                None,
            ),
        ),
    ]
    .into_iter()
    .filter_map(|(ran, s)| ran.then_some(s))
    .collect();
    let ms_per_image = wall.as_secs_f64() * 1e3 * k;
    let id = backbones.identity();
    Ok(BenchReport {
        setting: setting.to_string(),
        mode: detector.mode().to_string(),
        backbones: id.names(),
        device: device_name(device),
        threads,
        images: timed,
        image_size: (opts.width, opts.height),
        batch_size: per_call,
        tiles,
        stages,
        ms_per_image,
        images_per_s: 1e3 / ms_per_image,
        gflop_per_image: (clip_flop + dino_flop) / 1e9,
        peak_rss_mib: peak_resident_mib(),
        fma_peak,
    })
}

impl std::fmt::Display for BenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "setting {} ({}), {}, on {} with {} threads: {} images of {}x{} px, {} per call, \
             {} tile(s) each",
            self.setting,
            self.mode,
            self.backbones,
            self.device,
            self.threads,
            self.images,
            self.image_size.0,
            self.image_size.1,
            self.batch_size,
            self.tiles
        )?;
        writeln!(
            f,
            "{:<12} {:>11} {:>9} {:>9} {:>7}",
            "stage", "ms/image", "GFLOP", "GFLOP/s", "peak"
        )?;
        let opt = |v: Option<f64>, digits: usize| {
            v.map(|v| format!("{v:.digits$}"))
                .unwrap_or_else(|| "-".into())
        };
        for s in &self.stages {
            writeln!(
                f,
                "{:<12} {:>11.1} {:>9} {:>9} {:>7}",
                s.stage,
                s.ms,
                opt(s.gflop, 2),
                opt(s.gflops, 1),
                s.peak_share
                    .map(|p| format!("{:.0} %", p * 100.0))
                    .unwrap_or_else(|| "-".into())
            )?;
        }
        writeln!(
            f,
            "whole image  {:>11.1} ms = {:.3} images/s; backbones {:.1} GFLOP/image",
            self.ms_per_image, self.images_per_s, self.gflop_per_image
        )?;
        if let Some(p) = self.fma_peak {
            writeln!(
                f,
                "FMA peak     {:.1} GFLOP/s on {} threads ({})",
                p.gflops, p.threads, p.kernel
            )?;
        }
        if let Some(m) = self.peak_rss_mib {
            writeln!(f, "peak memory  {m:.0} MiB resident")?;
        }
        Ok(())
    }
}
