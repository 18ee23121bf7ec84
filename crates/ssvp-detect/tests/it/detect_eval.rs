//! `detect` and `eval` are one code path: on a benchmark's images, the scores and maps that
//! `Detector::detect` returns equal those `evaluate` measures (bit for bit), and the map at the
//! image's resolution is the evaluation map resized.

use std::sync::Arc;

use candle_core::Device;
use ssvp_detect::evaluate::{evaluate, EvalOptions};
use ssvp_detect::input::{read_image, DecodeOptions};
use ssvp_detect::{Detector, DetectorOptions};
use ssvp_eval::maps::io::read_map;
use ssvp_eval::postprocess::resize_map;
use ssvp_eval::synth::Kind;
use ssvp_model::SsvpHead;

use crate::common::{backbones, synth, test_split, tiny_config};

fn check(map_size: usize) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    synth(&data, &[Kind::Speckle, Kind::Screw], 4, 64, 9);
    let cfg = tiny_config(3);
    let backbones = backbones(&cfg);
    let head = SsvpHead::new(&cfg, &Device::Cpu).unwrap();
    let options = DetectorOptions {
        map_size,
        batch_size: 3,
        ..DetectorOptions::default()
    };
    let detector = Detector::new(head, Arc::clone(&backbones), options).unwrap();
    let dataset = test_split(&data, &["speckle", "screw"]);
    let maps = dir.path().join("maps");
    let evaluation = evaluate(
        &detector,
        backbones.as_ref(),
        &dataset,
        &EvalOptions {
            save_maps: Some(maps.clone()),
            ..EvalOptions::default()
        },
        &mut |_| {},
    )
    .unwrap();
    let mut compared = 0;
    for cat in &dataset.categories {
        // The same batches as the evaluation, so that even the summation order is the same.
        for chunk in cat.samples.chunks(3) {
            let inputs: Vec<_> = chunk
                .iter()
                .map(|s| read_image(&s.image_path, &DecodeOptions::default()).unwrap())
                .collect();
            let detections = detector.detect_as(&inputs, &cat.prompt_name).unwrap();
            for (sample, det) in chunk.iter().zip(detections) {
                let scored = evaluation
                    .scores
                    .iter()
                    .find(|s| s.path == sample.rel_path)
                    .unwrap();
                assert_eq!(det.score, scored.score, "{}", sample.rel_path);
                let eval_map = read_map(
                    &maps.join(std::path::Path::new(&sample.rel_path).with_extension("npy")),
                )
                .unwrap();
                assert_eq!((eval_map.width, eval_map.height), (map_size, map_size));
                assert_eq!((det.width, det.height), (64, 64));
                let expected = resize_map(&eval_map, 64, 64).unwrap();
                assert_eq!(det.map.data, expected.data, "{}", sample.rel_path);
                if map_size == 64 {
                    assert_eq!(det.map.data, eval_map.data);
                }
                compared += 1;
            }
        }
    }
    assert_eq!(compared, evaluation.scores.len());
    assert_eq!(compared, 2 * 8);
}

#[test]
fn detect_equals_eval_at_the_image_size() {
    check(64);
}

#[test]
fn detect_map_is_the_eval_map_resized() {
    check(96);
}
