//! The station's rules on a tiny seeded references model: parts recorded and listed, a false
//! alarm marked good re-scores below the threshold as a new bank version and undo restores the
//! version before, the threshold stays conformal (carried, or re-calibrated on enough good
//! parts), regions, a restart resumes the same state, another model is refused, and the
//! learning test: marking some parts of a shifted good batch good lowers the false alarms on
//! the rest of that batch while the defects stay flagged.

use std::sync::{Arc, OnceLock};

use ssvp_detect::calibrate::NormalScore;
use ssvp_detect::memory::{bank_of_images, references_memory, BankOptions, ReferenceScoring};
use ssvp_detect::{Calibration, Detector, DetectorOptions, DontCare, ErrorKind, InputImage};
use ssvp_eval::postprocess::PostprocessConfig;
use ssvp_eval::synth::{render, Defect, Kind};
use ssvp_features::Backbones;
use ssvp_image::RgbImage8;
use ssvp_model::SsvpConfig;
use ssvp_station::{Arrival, Label, PartQuery, Station, StationOptions};

const SIZE: u32 = 96;
const KIND: Kind = Kind::Speckle;

fn tiny() -> &'static Arc<Backbones> {
    static BACKBONES: OnceLock<Arc<Backbones>> = OnceLock::new();
    BACKBONES.get_or_init(|| {
        let cfg = SsvpConfig::tiny();
        Arc::new(
            ssvp_model::load_backbones(&cfg.backbones, &cfg.model, &candle_core::Device::Cpu)
                .unwrap(),
        )
    })
}

fn rgb8(image: image::RgbImage) -> RgbImage8 {
    let (w, h) = image.dimensions();
    RgbImage8::from_raw(w as usize, h as usize, image.into_raw()).unwrap()
}

fn good(seed: u64) -> RgbImage8 {
    rgb8(render(KIND, None, SIZE, seed).image)
}

fn defective(seed: u64) -> RgbImage8 {
    let defects = [Defect::Hole, Defect::Stain, Defect::Crack, Defect::Scratch];
    rgb8(render(KIND, Some(defects[seed as usize % 4]), SIZE, seed).image)
}

/// The same part under another lamp: a warm colour cast (red up 40 %, blue down 40 %).
fn warm_light(image: &RgbImage8) -> RgbImage8 {
    let data = image
        .data
        .iter()
        .enumerate()
        .map(|(i, &v)| (f32::from(v) * [1.4, 1.0, 0.6][i % 3]).clamp(0.0, 255.0) as u8)
        .collect();
    RgbImage8::from_raw(image.width, image.height, data).unwrap()
}

fn png(image: &RgbImage8) -> Vec<u8> {
    ssvp_image::encode_png_rgb8(image).unwrap()
}

/// A references detector over `refs` good parts (seeds from `seed`), calibrated at a 10 %
/// false-alarm rate on 20 other good parts.
fn model(seed: u64, refs: u64) -> Detector {
    let images: Vec<RgbImage8> = (seed..seed + refs).map(good).collect();
    let names = (0..refs).map(|i| format!("ref{i}")).collect();
    let bank = bank_of_images(tiny().as_ref(), &images, names, &BankOptions::default()).unwrap();
    let memory = references_memory(bank, tiny().identity(), ReferenceScoring::default()).unwrap();
    let detector = Detector::without_head(
        Arc::clone(tiny()),
        PostprocessConfig::default(),
        DetectorOptions::default(),
    )
    .unwrap()
    .with_memory(memory)
    .unwrap();
    calibrated(detector, seed + 100)
}

/// `detector` calibrated at a 10 % false-alarm rate on the 20 good parts from `seed`.
fn calibrated(detector: Detector, seed: u64) -> Detector {
    let normal: Vec<InputImage> = (seed..seed + 20)
        .map(|s| InputImage::from_rgb(format!("n{s}"), good(s)))
        .collect();
    let scores: Vec<NormalScore> = detector
        .detect(&normal)
        .unwrap()
        .iter()
        .map(NormalScore::of)
        .collect();
    let calibration = Calibration::fit(
        &scores,
        0.1,
        0.0,
        0,
        detector.identity().clone(),
        detector.settings(),
    )
    .unwrap();
    detector.with_calibration(calibration).unwrap()
}

/// Scores `image` with the detector in force and records it.
fn record(station: &Station, name: &str, image: &RgbImage8, label: Option<Label>) -> i64 {
    let now = station.in_force();
    let bytes = png(image);
    let detection = now
        .detector
        .detect(&[InputImage::from_rgb(name.to_string(), image.clone())])
        .unwrap()
        .pop()
        .unwrap();
    station
        .record(
            &Arrival {
                bytes: &bytes,
                name,
                source: "test",
                label,
            },
            detection,
            &now.detector,
        )
        .unwrap()
        .id
}

#[test]
fn a_false_alarm_marked_good_rescores_below_the_threshold_and_undo_restores_the_version() {
    let dir = tempfile::tempdir().unwrap();
    let station = Station::open(dir.path(), model(0, 4), StationOptions::default()).unwrap();
    let start = station.in_force();
    assert_eq!(start.bank_version, 1);
    assert_eq!(start.threshold.source, "calibration");
    assert!(start.threshold.conformal);
    let original_bank = station.bank_version().unwrap().bank_sha256;

    let ids: Vec<i64> = (200..206)
        .map(|s| record(&station, &format!("g{s}.png"), &good(s), None))
        .collect();
    let defect = record(&station, "d.png", &defective(7), None);
    // The highest-scoring good part becomes a false alarm at an operator's threshold just
    // below it.
    let (mut worst, mut worst_score) = (ids[0], f64::MIN);
    for &id in &ids {
        let p = station.part(id).unwrap();
        if p.score > worst_score {
            (worst, worst_score) = (id, p.score);
        }
    }
    let t = station
        .set_threshold(worst_score - 1e-6, "ana", "tighter")
        .unwrap();
    assert_eq!(
        (t.version, t.source.as_str(), t.conformal),
        (2, "operator", false)
    );
    assert_eq!(station.part(worst).unwrap().anomalous, Some(true));
    let defect_before = station.part(defect).unwrap();

    let report = station
        .mark(worst, Label::Good, "ana", "false alarm")
        .unwrap();
    assert_eq!(report.bank_version, 2);
    let after = station.part(worst).unwrap();
    assert!(after.score < 1e-3, "{}", after.score);
    assert_eq!(after.anomalous, Some(false));
    assert!(after.in_bank);
    assert_eq!(after.feedback, Some(Label::Good));
    assert!(report
        .changes
        .iter()
        .any(|c| c.id == worst && c.before.anomalous && !c.after.anomalous));
    // The operator's value stays; the defect's score can only have fallen.
    assert_eq!(report.threshold.value, t.value);
    assert!(station.part(defect).unwrap().score <= defect_before.score + 1e-6);
    assert_eq!(station.changes(2).unwrap(), report.changes);
    // Marking it again is refused: it is in the bank.
    let again = station
        .mark(worst, Label::Good, "ana", "again")
        .unwrap_err();
    assert_eq!(again.kind(), ErrorKind::Mismatch);

    let undone = station.undo("bo", "wrong part").unwrap();
    assert_eq!(undone.bank_version, 1);
    assert_eq!(
        undone.threshold.version, 2,
        "the threshold in force before the undone change: the operator's"
    );
    assert_eq!(station.bank_version().unwrap().bank_sha256, original_bank);
    let restored = station.part(worst).unwrap();
    assert!(!restored.in_bank);
    assert_eq!(restored.feedback, None);
    assert!((restored.score - worst_score).abs() < 1e-5);
    let history = station.part_detail(worst).unwrap().2;
    assert!(history.iter().any(|h| h.event == "marked good (undone)"));
    // Nothing before the start to undo.
    assert_eq!(
        station.undo("bo", "again").unwrap_err().kind(),
        ErrorKind::NotEnoughData
    );
    let audit: Vec<String> = station
        .audit_log(10)
        .unwrap()
        .into_iter()
        .map(|a| a.action)
        .collect();
    assert_eq!(audit, ["undo", "marked good", "threshold", "start"]);
}

#[test]
fn the_bound_is_carried_or_recalibrated_and_shrinking_regions_are_not_conformal() {
    let dir = tempfile::tempdir().unwrap();
    let station = Station::open(dir.path(), model(10, 4), StationOptions::default()).unwrap();
    let calibrated = station.in_force().threshold;
    let first = record(&station, "a.png", &warm_light(&good(300)), None);
    // Too few good parts outside the bank: the calibration's bound is carried.
    let carried = station.mark(first, Label::Good, "ana", "light").unwrap();
    assert_eq!(carried.threshold.source, "carried");
    assert!(carried.threshold.conformal);
    assert_eq!(carried.threshold.value, calibrated.value);
    assert_eq!(carried.threshold.rests_on, calibrated.rests_on);

    // Regions that grow carry the bound too; regions that shrink cannot.
    let grown = station
        .set_regions(
            DontCare::rectangle(0.0, 0.0, 0.2, 0.2).unwrap(),
            "bo",
            "label",
        )
        .unwrap();
    assert_eq!(grown.threshold.source, "carried");
    let shrunk = station
        .set_regions(DontCare::default(), "bo", "label gone")
        .unwrap();
    assert_eq!(shrunk.threshold.source, "kept");
    assert!(!shrunk.threshold.conformal);

    // With enough good parts outside the bank (9 for a 10 % rate), the next change
    // re-calibrates on them.
    for s in 400..410 {
        record(&station, &format!("k{s}.png"), &good(s), Some(Label::Good));
    }
    station.undo("bo", "back to the carried bound").unwrap();
    assert!(station.in_force().threshold.conformal);
    let second = record(&station, "b.png", &warm_light(&good(301)), None);
    let refit = station.mark(second, Label::Good, "ana", "light").unwrap();
    assert_eq!(refit.threshold.source, "recalibrated");
    assert!(refit.threshold.conformal);
    assert_eq!(refit.threshold.rests_on, 10);
    let fit = station.in_force();
    assert_eq!(
        fit.detector.calibration().unwrap().calibration_images,
        10,
        "the calibration in force is the refit"
    );
}

#[test]
fn a_restart_resumes_the_same_state_and_another_model_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (part, threshold, bank) = {
        let station = Station::open(dir.path(), model(20, 4), StationOptions::default()).unwrap();
        let id = record(&station, "x.png", &good(500), None);
        record(&station, "y.png", &defective(3), Some(Label::Defective));
        station.set_threshold(0.05, "ana", "strict").unwrap();
        station.mark(id, Label::Good, "ana", "fine").unwrap();
        station
            .set_regions(
                DontCare::rectangle(0.5, 0.5, 1.0, 1.0).unwrap(),
                "bo",
                "fixture",
            )
            .unwrap();
        (
            station.part(id).unwrap(),
            station.in_force().threshold,
            station.bank_version().unwrap(),
        )
    };
    let station = Station::open(dir.path(), model(20, 4), StationOptions::default()).unwrap();
    let now = station.in_force();
    assert_eq!(now.threshold, threshold);
    assert_eq!(now.bank_version, bank.version);
    assert_eq!(station.bank_version().unwrap(), bank);
    assert!(now.detector.dont_care().is_some());
    let again = station.part(part.id).unwrap();
    assert_eq!(again, part);
    let (total, _) = station.parts(&PartQuery::default()).unwrap();
    assert_eq!(total, 2);
    // Scoring the same image again gives the score stored for it.
    let d = now
        .detector
        .detect(&[InputImage::from_rgb("x", good(500))])
        .unwrap();
    assert!((d[0].score - part.score).abs() < 1e-5);
    drop(station);

    let other = Station::open(dir.path(), model(40, 3), StationOptions::default());
    let err = other.err().expect("another bank is another model");
    assert_eq!(err.kind(), ErrorKind::Mismatch);
    assert!(err.to_string().contains("another model"), "{err}");
}

#[test]
fn parts_are_paged_sorted_and_filtered() {
    let dir = tempfile::tempdir().unwrap();
    let station = Station::open(dir.path(), model(30, 4), StationOptions::default()).unwrap();
    for s in 0..5 {
        record(&station, &format!("good-{s}.png"), &good(600 + s), None);
    }
    for s in 0..3 {
        record(&station, &format!("bad-{s}.png"), &defective(s), None);
    }
    let page = |q: PartQuery| station.parts(&q).unwrap();
    let (total, first) = page(PartQuery {
        limit: 3,
        ..Default::default()
    });
    assert_eq!((total, first.len()), (8, 3));
    assert_eq!(first[0].name, "bad-2.png", "newest first");
    let (_, by_score) = page(PartQuery {
        sort: Some("score".into()),
        order: Some("asc".into()),
        limit: 8,
        ..Default::default()
    });
    assert!(by_score.windows(2).all(|w| w[0].score <= w[1].score));
    station
        .mark(by_score[0].id, Label::Defective, "ana", "seen")
        .unwrap();
    let (_, by_label) = page(PartQuery {
        sort: Some("feedback".into()),
        ..Default::default()
    });
    assert_eq!(
        by_label[0].id, by_score[0].id,
        "the only label leads, descending"
    );
    let (flagged, rows) = page(PartQuery {
        decision: Some("anomalous".into()),
        ..Default::default()
    });
    assert!(rows.iter().all(|p| p.anomalous == Some(true)));
    let (passed, _) = page(PartQuery {
        decision: Some("good".into()),
        ..Default::default()
    });
    assert_eq!(flagged + passed, 8);
    let (named, _) = page(PartQuery {
        q: Some("BAD".into()),
        ..Default::default()
    });
    assert_eq!(named, 3);
    for bad in [
        PartQuery {
            sort: Some("id; DROP TABLE parts".into()),
            ..Default::default()
        },
        PartQuery {
            limit: 10_000,
            ..Default::default()
        },
        PartQuery {
            feedback: Some("maybe".into()),
            ..Default::default()
        },
    ] {
        assert_eq!(
            station.parts(&bad).unwrap_err().kind(),
            ErrorKind::InvalidInput
        );
    }
    assert_eq!(station.part(999).unwrap_err().kind(), ErrorKind::NotFound);
}

/// A model with no bank (the untrained tiny head) calibrated like [`model`].
fn head_model() -> Detector {
    let head = ssvp_model::SsvpHead::new(&SsvpConfig::tiny(), &candle_core::Device::Cpu).unwrap();
    let detector = Detector::new(head, Arc::clone(tiny()), DetectorOptions::default()).unwrap();
    calibrated(detector, 900)
}

#[test]
fn a_head_without_a_bank_is_corrected_by_a_feedback_bank() {
    let dir = tempfile::tempdir().unwrap();
    let station = Station::open(dir.path(), head_model(), StationOptions::default()).unwrap();
    assert_eq!(station.in_force().detector.mode(), "head");
    let ids: Vec<i64> = (950..956)
        .map(|s| record(&station, &format!("g{s}.png"), &warm_light(&good(s)), None))
        .collect();
    let defects: Vec<i64> = (0..3)
        .map(|i| record(&station, &format!("d{i}.png"), &defective(960 + i), None))
        .collect();
    let score = |id: i64| station.part(id).unwrap().score;
    let before: Vec<f64> = ids.iter().chain(&defects).map(|&id| score(id)).collect();
    let (first, second) = (ids[0], ids[1]);
    station
        .set_threshold(score(first) - 1e-6, "ana", "tight")
        .unwrap();
    assert_eq!(station.part(first).unwrap().anomalous, Some(true));

    let report = station.mark(first, Label::Good, "ana", "fine").unwrap();
    let now = station.in_force();
    assert_eq!(now.detector.mode(), "head+feedback");
    let bank = now.detector.scorer().unwrap().bank().unwrap().clone();
    assert_eq!(bank.meta().references.len(), 1);
    let scale = bank
        .meta()
        .normal_scale
        .expect("a feedback bank has its scale");
    assert!(scale > 0.0);
    assert!(
        score(first) < 1e-3 * before[0],
        "{} vs {}",
        score(first),
        before[0]
    );
    assert_eq!(station.part(first).unwrap().anomalous, Some(false));
    assert!(report.changes.iter().any(|c| c.id == first));
    // No score rises: the factor is at most 1 (up to the rounding of batched arithmetic).
    for (i, &id) in ids.iter().chain(&defects).enumerate() {
        assert!(
            score(id) <= before[i] * (1.0 + 1e-6),
            "part {id}: {} > {}",
            score(id),
            before[i]
        );
    }
    assert_eq!(report.threshold.value, station.in_force().threshold.value);

    // The next mark grows the same bank; its scale stays.
    station
        .mark(second, Label::Good, "ana", "fine too")
        .unwrap();
    let grown = station
        .in_force()
        .detector
        .scorer()
        .unwrap()
        .bank()
        .unwrap()
        .clone();
    assert_eq!(grown.meta().references.len(), 2);
    assert_eq!(grown.meta().normal_scale, Some(scale));

    // A restart rebuilds the corrected head from the stored bank.
    let kept = score(ids[2]);
    drop(station);
    let station = Station::open(dir.path(), head_model(), StationOptions::default()).unwrap();
    assert_eq!(station.in_force().detector.mode(), "head+feedback");
    let again = station
        .in_force()
        .detector
        .detect(&[InputImage::from_rgb("again", warm_light(&good(952)))])
        .unwrap();
    assert!(
        (again[0].score - kept).abs() <= 1e-5 * kept,
        "{} vs {kept}",
        again[0].score
    );

    // Undo twice: the head alone again, with its scores.
    station.undo("bo", "back").unwrap();
    station.undo("bo", "back").unwrap();
    assert_eq!(station.in_force().detector.mode(), "head");
    let restored = station.part(first).unwrap().score;
    assert!((restored - before[0]).abs() < 1e-6 * before[0].abs().max(1.0));
}

/// The learning test. A batch of good parts arrives under a warmer lamp and is flagged;
/// marking `k` of them good must lower the false alarms on the *other* warm-lit parts while
/// the defects stay flagged. Seeds are fresh draws of the references, the batch and the
/// defects (docs/station.md has the numbers).
#[test]
fn marking_some_shifted_good_parts_lowers_false_alarms_on_the_rest() {
    const K: usize = 3;
    for seed in [4000_u64, 5000, 6000] {
        let dir = tempfile::tempdir().unwrap();
        let station = Station::open(dir.path(), model(seed, 6), StationOptions::default()).unwrap();
        let shifted: Vec<i64> = (0..12)
            .map(|i| {
                let img = warm_light(&good(seed + 500 + i));
                record(&station, &format!("warm-{i}.png"), &img, None)
            })
            .collect();
        let defects: Vec<i64> = (0..6)
            .map(|i| {
                record(
                    &station,
                    &format!("defect-{i}.png"),
                    &defective(seed + 700 + i),
                    None,
                )
            })
            .collect();
        let flagged = |ids: &[i64]| {
            ids.iter()
                .filter(|&&id| station.part(id).unwrap().anomalous == Some(true))
                .count()
        };
        let (held_out, marked) = (&shifted[K..], &shifted[..K]);
        let false_alarms_before = flagged(held_out);
        let defects_before = flagged(&defects);
        for &id in marked {
            station.mark(id, Label::Good, "ana", "new lamp").unwrap();
        }
        let false_alarms_after = flagged(held_out);
        let defects_after = flagged(&defects);
        println!(
            "seed {seed}: false alarms on the other {} warm-lit parts {false_alarms_before} -> \
             {false_alarms_after}; defects flagged {defects_before} -> {defects_after} of {}",
            held_out.len(),
            defects.len()
        );
        assert!(
            false_alarms_before >= held_out.len() / 2,
            "seed {seed}: the shift must cause false alarms ({false_alarms_before})"
        );
        assert!(
            false_alarms_after < false_alarms_before,
            "seed {seed}: {false_alarms_before} -> {false_alarms_after}"
        );
        assert!(
            defects_after + 1 >= defects_before,
            "seed {seed}: defects {defects_before} -> {defects_after}"
        );
    }
}

/// Scale: 100k parts in the database, then the queries the UI makes. A measurement, not a
/// timed test (run by hand: `cargo test --release -p ssvp-station --test station -- --ignored
/// --nocapture`); docs/station.md has the figures.
#[test]
#[ignore]
fn a_hundred_thousand_parts() {
    use ssvp_station::store::{self, NewPart, NewResult};
    use std::time::Instant;
    let dir = tempfile::tempdir().unwrap();
    let station = Station::open(dir.path(), model(50, 4), StationOptions::default()).unwrap();
    drop(station);
    let mut conn = store::open(&dir.path().join("station.sqlite")).unwrap();
    let started = Instant::now();
    let detection = r#"{"score":0.1,"regions":[]}"#;
    let map = vec![0u8; 2_000];
    store::in_transaction(&mut conn, |tx| {
        for i in 0..100_000_i64 {
            let id = store::insert_part(
                tx,
                &NewPart {
                    name: &format!("cam1-{i:06}.png"),
                    sha256: &format!("{i:064x}"),
                    content_type: "image/png",
                    width: 640,
                    height: 480,
                    source: "watch",
                },
            )?;
            let score = ((i * 7919) % 1000) as f64 / 1000.0;
            store::add_result(
                tx,
                id,
                &NewResult {
                    event: "scored",
                    bank_version: 1,
                    threshold: Some(0.9),
                    score,
                    anomalous: Some(score > 0.9),
                    detection,
                    map_png: &map,
                    who: None,
                    why: None,
                },
            )?;
            if i % 50 == 0 {
                store::add_feedback(tx, id, Label::Good, "ana", "", None)?;
            }
        }
        Ok(())
    })
    .unwrap();
    println!(
        "insert 100k parts: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    drop(conn);
    let station = Station::open(dir.path(), model(50, 4), StationOptions::default()).unwrap();
    let time = |what: &str, f: &dyn Fn()| {
        let mut runs: Vec<f64> = (0..5)
            .map(|_| {
                let t = Instant::now();
                f();
                t.elapsed().as_secs_f64() * 1e3
            })
            .collect();
        runs.sort_by(f64::total_cmp);
        println!("{what}: median {:.1} ms", runs[2]);
    };
    time("first page, newest first", &|| {
        station.parts(&PartQuery::default()).unwrap();
    });
    time("page 1000, by score", &|| {
        station
            .parts(&PartQuery {
                offset: 50_000,
                sort: Some("score".into()),
                ..Default::default()
            })
            .unwrap();
    });
    time("flagged only, by score", &|| {
        station
            .parts(&PartQuery {
                decision: Some("anomalous".into()),
                sort: Some("score".into()),
                ..Default::default()
            })
            .unwrap();
    });
    time("name search", &|| {
        station
            .parts(&PartQuery {
                q: Some("cam1-0999".into()),
                ..Default::default()
            })
            .unwrap();
    });
    time("all scores (Threshold view)", &|| {
        station.scores().unwrap();
    });
    time("counts (state)", &|| {
        station.counts().unwrap();
    });
}
