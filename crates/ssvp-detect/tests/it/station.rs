//! What an inspection station changes on a running detector, with the tiny seeded backbones:
//! a references bank grown by a part an operator marked good (its score falls to ~0, no other
//! score rises, the old detector keeps serving, the calibration carries over), and don't-care
//! regions (masked tokens score 0 before the image score, the map is 0 there, empty regions
//! change nothing).

use std::sync::{Arc, OnceLock};

use ssvp_detect::memory::{
    bank_of_images, references_memory, BankOptions, MutualConfig, ReferenceScoring,
};
use ssvp_detect::{
    Calibration, Detection, Detector, DetectorOptions, DontCare, ErrorKind, InputImage, Memory,
    Tiling,
};
use ssvp_eval::postprocess::PostprocessConfig;
use ssvp_eval::synth::{render, Defect, Kind};
use ssvp_features::Backbones;
use ssvp_image::RgbImage8;
use ssvp_model::SsvpConfig;

use crate::common::{backbones, shared_fixture};

const SIZE: u32 = 96;

fn tiny() -> &'static Arc<Backbones> {
    static BACKBONES: OnceLock<Arc<Backbones>> = OnceLock::new();
    BACKBONES.get_or_init(|| backbones(&SsvpConfig::tiny()))
}

fn rgb8(image: image::RgbImage) -> RgbImage8 {
    let (w, h) = image.dimensions();
    RgbImage8::from_raw(w as usize, h as usize, image.into_raw()).unwrap()
}

/// Good discs rendered in memory.
fn good(seeds: std::ops::Range<u64>) -> Vec<RgbImage8> {
    seeds
        .map(|s| rgb8(render(Kind::Disc, None, SIZE, s).image))
        .collect()
}

/// A disc with a colour spot, and the spot's bounding box (normalised, `x0, y0, x1, y1`).
fn defective(seed: u64) -> (RgbImage8, [f64; 4]) {
    let r = render(Kind::Disc, Some(Defect::ColorSpot), SIZE, seed);
    let mask = r.mask.unwrap();
    let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0, 0);
    for (x, y, p) in mask.enumerate_pixels() {
        if p.0[0] != 0 {
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x + 1), y1.max(y + 1));
        }
    }
    let n = f64::from(SIZE);
    (
        rgb8(r.image),
        [
            f64::from(x0) / n,
            f64::from(y0) / n,
            f64::from(x1) / n,
            f64::from(y1) / n,
        ],
    )
}

fn headless(options: DetectorOptions) -> Detector {
    Detector::without_head(Arc::clone(tiny()), PostprocessConfig::default(), options).unwrap()
}

/// A references detector over a bank of 4 good discs.
fn references_detector(options: DetectorOptions) -> Detector {
    let refs = good(0..4);
    let names = (0..4).map(|i| format!("ref{i}")).collect();
    let bank = bank_of_images(tiny().as_ref(), &refs, names, &BankOptions::default()).unwrap();
    let memory = references_memory(bank, tiny().identity(), ReferenceScoring::default()).unwrap();
    headless(options).with_memory(memory).unwrap()
}

fn inputs(images: &[RgbImage8]) -> Vec<InputImage> {
    images
        .iter()
        .enumerate()
        .map(|(i, img)| InputImage::from_rgb(format!("img{i}"), img.clone()))
        .collect()
}

fn detect(detector: &Detector, images: &[RgbImage8]) -> Vec<Detection> {
    detector.detect(&inputs(images)).unwrap()
}

/// A calibration of `detector` fitted on made-up normal scores.
fn calibration(detector: &Detector) -> Calibration {
    crate::common::made_up_calibration(detector)
}

#[test]
fn a_part_marked_good_joins_the_bank_and_no_score_rises() {
    let calibration_of_old = {
        let d = references_detector(DetectorOptions::default());
        calibration(&d)
    };
    let old = references_detector(DetectorOptions::default())
        .with_calibration(calibration_of_old.clone())
        .unwrap();
    let (false_alarm, _) = defective(50);
    let mut others: Vec<RgbImage8> = good(10..13);
    others.push(defective(51).0);
    let mut all = vec![false_alarm.clone()];
    all.extend(others.iter().cloned());
    let before = detect(&old, &all);
    assert!(before[0].score > 0.01, "{}", before[0].score);

    let grown = old
        .grow_bank(std::slice::from_ref(&false_alarm), vec!["marked".into()])
        .unwrap();
    let bank = old.scorer().unwrap().bank().unwrap();
    assert_eq!(grown.len(), bank.len() + 64, "one image of 8 x 8 patches");
    assert_eq!(grown.meta().references.last().unwrap(), "marked");
    assert_eq!(grown.meta().normal_scale, bank.meta().normal_scale);
    assert_eq!(grown.meta().made_with, bank.meta().made_with);

    let memory = references_memory(grown, tiny().identity(), ReferenceScoring::default()).unwrap();
    let new = old.with_replaced_memory(memory.clone()).unwrap();
    assert!(
        new.calibration().is_none(),
        "the calibration names the old bank"
    );
    assert_ne!(new.identity().bank, old.identity().bank);
    assert_eq!(new.identity().backbones, old.identity().backbones);
    // As it is, the old calibration is refused; carried to the new model, it applies.
    let err = new
        .with_calibration(calibration_of_old.clone())
        .map(|_| ())
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Mismatch);
    let new = old.with_replaced_memory(memory).unwrap();
    let carried = calibration_of_old.carried_to(new.identity());
    assert_eq!(carried.image, calibration_of_old.image);
    let new = new.with_calibration(carried).unwrap();

    let after = detect(&new, &all);
    assert!(after[0].score < 1e-4, "the marked part: {}", after[0].score);
    assert!(after[0].map_stats.max < 0.05, "{:?}", after[0].map_stats);
    for (b, a) in before.iter().zip(&after).skip(1) {
        assert!(a.score <= b.score + 1e-6, "{} rose to {}", b.score, a.score);
    }
    assert_eq!(after[0].threshold, before[0].threshold);
    // The old detector serves on, unchanged.
    let again = detect(&old, &all);
    for (b, a) in before.iter().zip(&again) {
        assert_eq!(a.score, b.score);
    }

    // Nothing to grow without a bank; no image, or names that do not match, are refused.
    let mutual = headless(DetectorOptions::default())
        .with_memory(Memory::Mutual(MutualConfig::default()))
        .unwrap();
    let err = mutual.grow_bank(&all[..1], vec!["x".into()]).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput);
    assert!(err.to_string().contains("no bank"), "{err}");
    assert_eq!(
        old.grow_bank(&[], vec![]).unwrap_err().kind(),
        ErrorKind::NotEnoughData
    );
    assert_eq!(
        old.grow_bank(&all[..1], vec![]).unwrap_err().kind(),
        ErrorKind::InvalidInput
    );
}

/// Whether every pixel whose centre `regions` covers is 0 in the map.
fn zero_inside(regions: &DontCare, d: &Detection) -> bool {
    let (w, h) = (d.map.width, d.map.height);
    let mask = regions.pixel_mask(w, h);
    assert!(mask.contains(&true));
    mask.iter().zip(&d.map.data).all(|(m, v)| !m || *v == 0.0)
}

/// The highest map value inside the normalised box `b`.
fn max_inside(d: &Detection, b: [f64; 4]) -> f32 {
    let (w, h) = (d.map.width, d.map.height);
    let mut best = f32::NEG_INFINITY;
    for y in 0..h {
        for x in 0..w {
            let (fx, fy) = ((x as f64 + 0.5) / w as f64, (y as f64 + 0.5) / h as f64);
            if fx >= b[0] && fx < b[2] && fy >= b[1] && fy < b[3] {
                best = best.max(d.map.data[y * w + x]);
            }
        }
    }
    best
}

#[test]
fn dont_care_regions_mask_tokens_before_the_score_and_zero_the_map() {
    let plain = references_detector(DetectorOptions::default());
    let (image, spot) = defective(60);
    let good_image = good(20..21).remove(0);
    let images = [image.clone(), good_image.clone()];
    let base = detect(&plain, &images);
    assert!(
        base[0].score > 1.5 * base[1].score,
        "the defect stands out: {} against a good part's {}",
        base[0].score,
        base[1].score
    );

    // A rectangle over the spot, grown by one 12 px token on each side.
    let pad = 1.0 / 8.0;
    let over = DontCare::rectangle(
        (spot[0] - pad).max(0.0),
        (spot[1] - pad).max(0.0),
        (spot[2] + pad).min(1.0),
        (spot[3] + pad).min(1.0),
    )
    .unwrap();
    let masked = plain.with_replaced_memory(memory_of(&plain)).unwrap();
    let masked = masked.with_dont_care(Some(over.clone()));
    assert_eq!(masked.dont_care(), Some(&over));
    let out = detect(&masked, &images).remove(0);
    assert!(
        out.score < 0.75 * base[0].score,
        "masking the spot lowers the score: {} from {}",
        out.score,
        base[0].score
    );
    assert!(out.score <= base[0].score);
    assert!(zero_inside(&over, &out));

    // A rectangle away from the spot leaves the spot's score and map high.
    let far_x = if spot[0] > 0.5 { 0.0 } else { 0.75 };
    let far_y = if spot[1] > 0.5 { 0.0 } else { 0.75 };
    let far = DontCare::rectangle(far_x, far_y, far_x + 0.25, far_y + 0.25).unwrap();
    let elsewhere = plain
        .with_replaced_memory(memory_of(&plain))
        .unwrap()
        .with_dont_care(Some(far.clone()));
    let out = detect(&elsewhere, &images).remove(0);
    assert!(
        out.score > 0.95 * base[0].score && out.score <= base[0].score,
        "{} against {}",
        out.score,
        base[0].score
    );
    assert!(max_inside(&out, spot) > 0.9 * max_inside(&base[0], spot));
    assert!(zero_inside(&far, &out));

    // Empty regions, and regions that cover no token or pixel centre, change nothing at all.
    let sliver = DontCare::rectangle(0.0, 0.0, 0.002, 0.002).unwrap();
    for regions in [Some(DontCare::default()), Some(sliver), None] {
        let d = plain
            .with_replaced_memory(memory_of(&plain))
            .unwrap()
            .with_dont_care(regions);
        let out = detect(&d, &images);
        for (a, b) in out.iter().zip(&base) {
            assert_eq!(a.score.to_bits(), b.score.to_bits());
            assert_eq!(a.map.data, b.map.data);
        }
    }
    assert!(plain
        .with_replaced_memory(memory_of(&plain))
        .unwrap()
        .with_dont_care(Some(DontCare::default()))
        .dont_care()
        .is_none());
}

/// The references memory of a references detector, again.
fn memory_of(detector: &Detector) -> Memory {
    let bank = detector.scorer().unwrap().bank().unwrap().clone();
    references_memory(bank, tiny().identity(), ReferenceScoring::default()).unwrap()
}

#[test]
fn dont_care_regions_hold_for_tiles_and_the_other_scorers() {
    // Tiles: a 160 x 96 image in 96 px tiles; the regions are placed in image coordinates.
    let (image, _) = defective(61);
    let wide = {
        let mut data = Vec::with_capacity(160 * 96 * 3);
        for y in 0..96 {
            for x in 0..160 {
                let i = (y * 96 + x.min(95)) * 3;
                data.extend_from_slice(&image.data[i..i + 3]);
            }
        }
        RgbImage8::from_raw(160, 96, data).unwrap()
    };
    let tiled = references_detector(DetectorOptions {
        tiling: Some(Tiling {
            size: 96,
            overlap: 16,
        }),
        ..DetectorOptions::default()
    });
    let base = detect(&tiled, std::slice::from_ref(&wide)).remove(0);
    assert!(base.tiles > 1);
    let regions =
        DontCare::new(vec![vec![(0.3, 0.0), (1.0, 0.0), (1.0, 1.0), (0.5, 1.0)]]).unwrap();
    let masked = tiled
        .with_replaced_memory(memory_of(&tiled))
        .unwrap()
        .with_dont_care(Some(regions.clone()));
    let out = detect(&masked, std::slice::from_ref(&wide)).remove(0);
    assert!(out.score <= base.score);
    assert!(zero_inside(&regions, &out));

    // Mutual scoring: a masked image's map is 0 there and its score cannot rise.
    let set: Vec<RgbImage8> = {
        let mut s = good(30..35);
        s.push(image.clone());
        s
    };
    let mutual = headless(DetectorOptions::default())
        .with_memory(Memory::Mutual(MutualConfig::default()))
        .unwrap();
    let base = detect(&mutual, &set);
    let half = DontCare::rectangle(0.0, 0.0, 1.0, 0.5).unwrap();
    let masked = mutual
        .with_replaced_memory(Memory::Mutual(MutualConfig::default()))
        .unwrap()
        .with_dont_care(Some(half.clone()));
    let out = detect(&masked, &set);
    for (a, b) in out.iter().zip(&base) {
        assert!(a.score <= b.score, "{} > {}", a.score, b.score);
        assert!(zero_inside(&half, a));
    }

    // The head: S_local and S_final are read again from the masked map; S_global is kept.
    let fixture = shared_fixture();
    let head = fixture.detector(DetectorOptions::default());
    let base = head
        .detect(&inputs(std::slice::from_ref(&image)))
        .unwrap()
        .remove(0);
    let masked = fixture
        .detector(DetectorOptions::default())
        .with_dont_care(Some(half.clone()));
    let out = masked
        .detect(&inputs(std::slice::from_ref(&image)))
        .unwrap()
        .remove(0);
    let gamma = fixture.config.model.gamma;
    assert_eq!(out.score_global, base.score_global);
    let (g, l) = (out.score_global.unwrap(), out.score_local.unwrap());
    assert!(l <= base.score_local.unwrap() + 1e-6);
    assert!((out.score - ((1.0 - gamma) * g + gamma * l)).abs() < 1e-9);
    assert!(zero_inside(&half, &out));
}
