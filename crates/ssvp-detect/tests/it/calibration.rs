//! Calibration from normal images only, on fresh synthetic draws of the kinds the shared head
//! was trained on: the false-alarm rate measured on unseen normal images stays within what the
//! split-conformal threshold guarantees, and flagged images are anomalous more often than not.

use ssvp_detect::calibrate::Calibration;
use ssvp_detect::inputs::collect;
use ssvp_detect::job::{calibrate_files, CalibrateJob};
use ssvp_detect::{DetectorOptions, ErrorKind};
use ssvp_eval::synth::Kind;

use crate::common::{shared_fixture, synth};

/// `ln Γ(x)` for positive integers and half-integers is not needed: the beta-binomial below
/// only takes integer arguments, so `ln (n!)` by summation is exact enough.
fn ln_factorial(n: usize) -> f64 {
    (2..=n).map(|k| (k as f64).ln()).sum()
}

fn ln_beta(a: usize, b: usize) -> f64 {
    ln_factorial(a - 1) + ln_factorial(b - 1) - ln_factorial(a + b - 1)
}

/// The smallest `c` with `P(false alarms <= c) >= 1 - tail` among `m` unseen normal images, when
/// the threshold is the `k`-th of `n` calibration scores: the exceedance probability of a
/// conformal threshold is Beta(n + 1 - k, k), so the count is beta-binomial.
fn conformal_upper_count(n: usize, k: usize, m: usize, tail: f64) -> usize {
    let (a, b) = (n + 1 - k, k);
    let mut cdf = 0.0;
    for c in 0..=m {
        let ln_choose = ln_factorial(m) - ln_factorial(c) - ln_factorial(m - c);
        cdf += (ln_choose + ln_beta(c + a, m - c + b) - ln_beta(a, b)).exp();
        if cdf >= 1.0 - tail {
            return c;
        }
    }
    m
}

#[test]
fn beta_binomial_bound_is_sane() {
    // n = 39, k = 36: exceedance ~ Beta(4, 36), mean 0.1; for m = 40 the mean count is 4.
    let c = conformal_upper_count(39, 36, 40, 0.001);
    assert!((10..=20).contains(&c), "{c}");
    assert_eq!(conformal_upper_count(39, 36, 40, 0.9999999), 0);
}

#[test]
fn false_alarms_stay_within_the_conformal_bound_and_flags_are_mostly_defects() {
    let fixture = shared_fixture();
    let alpha = 0.1;
    let mut measured = Vec::new();
    let (mut flagged_total, mut defects_total) = (0, 0);
    // One fresh draw per kind the head was trained on, none of whose images it has seen.
    for (kind, seed) in [(Kind::Woven, 21), (Kind::Disc, 22), (Kind::Board, 23)] {
        let dir = tempfile::tempdir().unwrap();
        synth(dir.path(), &[kind], 40, 128, seed);
        let cat = dir.path().join(kind.name());
        let detector = fixture.detector(DetectorOptions {
            class_name: kind.name().to_string(),
            map_size: 128,
            batch_size: 8,
            ..DetectorOptions::default()
        });
        let normals = collect(&[cat.join("train/good")], None).unwrap();
        let job = CalibrateJob {
            decode: Default::default(),
            target_fpr: alpha,
            holdout: 0.0,
            seed: 0,
        };
        let (cal, skipped) = calibrate_files(&detector, &normals, &job, &mut |_| {}).unwrap();
        assert!(skipped.is_empty());
        assert_eq!(cal.calibration_images, 40);
        assert_eq!(cal.image.rank, 37); // ceil(41 * 0.9)
        let detector = detector.with_calibration(cal.clone()).unwrap();

        let score_all = |dir: &std::path::Path| -> Vec<ssvp_detect::Detection> {
            let files = collect(&[dir.to_path_buf()], None).unwrap();
            let images: Vec<_> = files
                .iter()
                .map(|f| ssvp_detect::input::read_image(&f.path, &Default::default()).unwrap())
                .collect();
            images
                .chunks(8)
                .flat_map(|c| detector.detect(c).unwrap())
                .collect()
        };
        let good = score_all(&cat.join("test/good"));
        let all_test: Vec<_> = score_all(&cat.join("test"));
        let false_alarms = good.iter().filter(|d| d.anomalous == Some(true)).count();
        let flagged = all_test
            .iter()
            .filter(|d| d.anomalous == Some(true))
            .count();
        let flagged_normal = false_alarms; // test/good is part of test/
        let flagged_defects = flagged - flagged_normal;
        let bound = conformal_upper_count(40, cal.image.rank, good.len(), 0.001);
        println!(
            "{}: threshold {:.5}, unseen good {}: {false_alarms} false alarms (FPR {:.3}, 99.9% \
             bound {bound}); test set: {flagged} flagged, {flagged_defects} of them defective",
            kind.name(),
            cal.image.threshold,
            good.len(),
            false_alarms as f64 / good.len() as f64
        );
        assert_eq!(good.len(), 40);
        assert!(false_alarms <= bound, "{false_alarms} > {bound}");
        flagged_total += flagged;
        defects_total += flagged_defects;
        // Decisions, calibrated scores and p-values agree on every image.
        for d in &all_test {
            let c = d.calibrated_score.unwrap();
            assert_eq!(d.anomalous, Some(c > 0.5));
            if d.anomalous == Some(true) {
                assert!(d.p_value.unwrap() <= alpha);
            }
        }
        measured.push(false_alarms as f64 / good.len() as f64);
    }
    // Pooled over the three draws (the tiny head separates some kinds better than others).
    assert!(
        defects_total * 2 > flagged_total,
        "of {flagged_total} flagged images only {defects_total} are defective"
    );
    // Over the three draws the mean false-alarm rate is near the target (expected <= 0.1; the
    // standard deviation of the mean of three is about 0.035).
    let mean = measured.iter().sum::<f64>() / measured.len() as f64;
    assert!(mean <= alpha + 0.12, "mean FPR {mean}");
}

#[test]
fn too_few_normal_images_are_refused_with_the_number_needed() {
    let fixture = shared_fixture();
    let dir = tempfile::tempdir().unwrap();
    synth(dir.path(), &[Kind::Woven], 5, 64, 31);
    let detector = fixture.detector(DetectorOptions::default());
    let normals = collect(&[dir.path().join("woven/train/good")], None).unwrap();
    let job = CalibrateJob {
        decode: Default::default(),
        target_fpr: 0.01,
        holdout: 0.0,
        seed: 0,
    };
    let err = calibrate_files(&detector, &normals, &job, &mut |_| {}).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotEnoughData);
    assert!(err.to_string().contains("at least 99"), "{err}");
}

#[test]
fn a_calibration_of_another_model_is_refused() {
    let fixture = shared_fixture();
    let dir = tempfile::tempdir().unwrap();
    synth(dir.path(), &[Kind::Woven], 10, 64, 32);
    let detector = fixture.detector(DetectorOptions::default());
    let normals = collect(&[dir.path().join("woven/train/good")], None).unwrap();
    let job = CalibrateJob {
        decode: Default::default(),
        target_fpr: 0.1,
        holdout: 0.0,
        seed: 0,
    };
    let (cal, _) = calibrate_files(&detector, &normals, &job, &mut |_| {}).unwrap();
    let path = dir.path().join("calib.json");
    cal.write(&path).unwrap();
    let cal = Calibration::read(&path).unwrap();
    // The same model takes it; an untrained head of the same architecture does not.
    let same = fixture.detector(DetectorOptions::default());
    same.with_calibration(cal.clone()).unwrap();
    let other = ssvp_detect::Detector::new(
        ssvp_model::SsvpHead::new(&fixture.config, &candle_core::Device::Cpu).unwrap(),
        fixture.backbones.clone(),
        DetectorOptions::default(),
    )
    .unwrap();
    let err = other.with_calibration(cal.clone()).err().unwrap();
    assert_eq!(err.kind(), ErrorKind::Mismatch);
    assert!(err.to_string().contains("the head differs"), "{err}");
    // Other settings (a map size) are refused too.
    let resized = fixture.detector(DetectorOptions {
        map_size: 100,
        ..DetectorOptions::default()
    });
    let err = resized.with_calibration(cal).err().unwrap();
    assert!(err.to_string().contains("map size"), "{err}");
}
