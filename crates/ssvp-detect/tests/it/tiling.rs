//! A high-resolution part whose small defect is lost when the image is resized to the
//! backbones' input and found when it is scored tile by tile.
//!
//! The 2048 px image is a 16 x 16 mosaic of 128 px woven renders (the size the shared head was
//! trained at), one of them defective. With 128 px tiles every tile is an image of the training
//! distribution; resized whole, the image shrinks sixteenfold and the defect to a pixel or two.
//! The defective cell is one the head finds at its native size (the tiny random-weight head
//! misses many), so the test measures what tiling does, not how good the head is. The defect's
//! effect is also measured against the same mosaic without it (the renderer gives both).

use image::RgbImage;
use ssvp_detect::{Detection, DetectorOptions, InputImage, Tiling};
use ssvp_eval::synth::{render, Defect, Kind, Rendered};
use ssvp_image::RgbImage8;

use crate::common::shared_fixture;

const CELL: u32 = 128;
const CELLS: u32 = 16;
/// The map level at which the test calls a defect found.
const FOUND: f32 = 0.3;

/// The mosaic: normal woven cells, and `cell` (with its mask) at `at`. Returns the image with
/// the defect, the same image with the cell's normal version, and the defect mask.
fn mosaics(seed: u64, cell: &Rendered, at: (u32, u32)) -> (RgbImage8, RgbImage8, Vec<bool>) {
    let side = CELL * CELLS;
    let mut with = RgbImage::new(side, side);
    let mut without = RgbImage::new(side, side);
    let mut mask = vec![false; (side * side) as usize];
    for cy in 0..CELLS {
        for cx in 0..CELLS {
            let (x0, y0) = (cx * CELL, cy * CELL);
            if (cx, cy) == at {
                for (x, y, p) in cell.image.enumerate_pixels() {
                    with.put_pixel(x0 + x, y0 + y, *p);
                }
                for (x, y, p) in cell.normal.enumerate_pixels() {
                    without.put_pixel(x0 + x, y0 + y, *p);
                }
                for (x, y, p) in cell.mask.as_ref().unwrap().enumerate_pixels() {
                    mask[((y0 + y) * side + x0 + x) as usize] = p.0[0] != 0;
                }
            } else {
                let r = render(
                    Kind::Woven,
                    None,
                    CELL,
                    seed * 1000 + (cy * CELLS + cx) as u64,
                );
                for (x, y, p) in r.image.enumerate_pixels() {
                    with.put_pixel(x0 + x, y0 + y, *p);
                    without.put_pixel(x0 + x, y0 + y, *p);
                }
            }
        }
    }
    let wrap = |img: RgbImage| RgbImage8::from_raw(side as usize, side as usize, img.into_raw());
    (wrap(with).unwrap(), wrap(without).unwrap(), mask)
}

/// The highest map value over the defect's pixels.
fn peak_at_defect(d: &Detection, mask: &[bool]) -> f32 {
    d.map
        .data
        .iter()
        .zip(mask)
        .filter(|(_, &m)| m)
        .map(|(&v, _)| v)
        .fold(f32::NEG_INFINITY, f32::max)
}

/// The first 128 px defective woven render (seeds from `from`) that the shared head finds at
/// its native size: a precondition, so that what is measured below is the tiling alone.
fn detectable_cell(detector: &ssvp_detect::Detector, defect: Defect, from: u64) -> Rendered {
    for seed in from..from + 200 {
        let r = render(Kind::Woven, Some(defect), CELL, seed);
        let img = RgbImage8::from_raw(CELL as usize, CELL as usize, r.image.clone().into_raw());
        let d = detector
            .detect(&[InputImage::from_rgb("cell", img.unwrap())])
            .unwrap()
            .remove(0);
        let mask: Vec<bool> = r
            .mask
            .as_ref()
            .unwrap()
            .pixels()
            .map(|p| p.0[0] != 0)
            .collect();
        if peak_at_defect(&d, &mask) > FOUND {
            return r;
        }
    }
    panic!("the shared head finds no {defect:?} among 200 renders");
}

#[test]
fn a_small_defect_lost_when_resized_is_found_when_tiled() {
    let fixture = shared_fixture();
    let base = DetectorOptions {
        class_name: "woven".into(),
        map_size: 128,
        batch_size: 16,
        pixel_threshold: Some(FOUND),
        ..DetectorOptions::default()
    };
    let whole = fixture.detector(base.clone());
    let tiled = fixture.detector(DetectorOptions {
        tiling: Some(Tiling {
            size: CELL as usize,
            overlap: 0,
        }),
        ..base
    });
    let side = (CELL * CELLS) as usize;
    for (seed, defect, at) in [
        (1, Defect::ColorSpot, (5, 2)),
        (2, Defect::Hole, (11, 6)),
        (3, Defect::Scratch, (3, 13)),
    ] {
        let cell = detectable_cell(&whole, defect, seed * 100);
        let (with, without, mask) = mosaics(seed, &cell, at);
        let inputs = [
            InputImage::from_rgb("with", with),
            InputImage::from_rgb("without", without),
        ];
        let w = whole.detect(&inputs).unwrap();
        let t = tiled.detect(&inputs).unwrap();
        assert_eq!((t[0].width, t[0].height, t[0].tiles), (side, side, 256));
        assert_eq!((w[0].width, w[0].tiles), (side, 1));
        let (found_whole, found_tiled) =
            (peak_at_defect(&w[0], &mask), peak_at_defect(&t[0], &mask));
        let rise = |d: &[Detection]| {
            d[0].map
                .data
                .iter()
                .zip(&d[1].map.data)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max)
        };
        let defect_pixels = mask.iter().filter(|&&m| m).count();
        println!(
            "seed {seed} {defect:?} ({defect_pixels} px in a {side} px image): map at the defect \
             resized {found_whole:.4}, tiled {found_tiled:.4}; largest change the defect makes \
             to the map: resized {:.5}, tiled {:.4}",
            rise(&w),
            rise(&t)
        );
        // Tiled, the defect is found: the map exceeds the level at the defect and a region
        // covers it.
        assert!(found_tiled > FOUND);
        let covers = |r: &ssvp_eval::maps::regions::Region| {
            let [x, y, rw, rh] = r.bbox;
            mask.iter().enumerate().any(|(i, &m)| {
                m && (x..x + rw).contains(&(i % side)) && (y..y + rh).contains(&(i / side))
            })
        };
        assert!(
            t[0].regions.iter().any(covers),
            "no tiled region covers the defect"
        );
        // Resized, it is lost: the map stays far below the level there, no region covers it,
        // and the defect changes the map by a tenth of what it does tiled at most.
        assert!(found_whole < FOUND / 3.0, "{found_whole}");
        assert!(!w[0].regions.iter().any(covers));
        assert!(rise(&w) < rise(&t) / 10.0);
    }
}

#[test]
fn an_image_within_one_tile_scores_as_a_whole_image() {
    let fixture = shared_fixture();
    let r = render(Kind::Woven, Some(Defect::Scratch), 100, 77);
    let img = RgbImage8::from_raw(100, 100, r.image.into_raw()).unwrap();
    let input = InputImage::from_rgb("small", img);
    let base = DetectorOptions {
        class_name: "woven".into(),
        map_size: 64,
        ..DetectorOptions::default()
    };
    let whole = fixture
        .detector(base.clone())
        .detect(std::slice::from_ref(&input))
        .unwrap();
    let tiled = fixture
        .detector(DetectorOptions {
            tiling: Some(Tiling {
                size: 128,
                overlap: 32,
            }),
            ..base
        })
        .detect(std::slice::from_ref(&input))
        .unwrap();
    assert_eq!(whole[0].score, tiled[0].score);
    assert_eq!(whole[0].map.data, tiled[0].map.data);
    assert_eq!(tiled[0].tiles, 1);
}
