//! `ssvp demo`: the main job of the product end to end, offline, in seconds: synthetic parts of
//! one product ([`ssvp_eval::synth`]), a reference bank with rotations built from good parts
//! ([`crate::memory::build_bank`], as `ssvp bank build`), a conformal calibration on held-out
//! good parts ([`crate::job::calibrate_files`], as `ssvp calibrate`), and a scored folder with
//! its records, maps, overlays and HTML report ([`crate::job::run_detect`], as `ssvp detect`).
//!
//! The backbones are the seeded `tiny` towers (random weights: the only ones available without
//! a download), so the demo shows the workflow and its files, not the accuracy of real models.
//! With the [`DemoPlan::standard`] sizes the defects of the synthetic parts still stand out: the
//! bank and calibration flag most defective parts, and the threshold is the largest score of 64
//! held-out good parts, so a good part of the day is flagged with probability about 1/65.
//!
//! What a run leaves in its output folder:
//!
//! ```text
//! <out>/demo.json               the plan and the results (also what marks the folder as a demo's)
//! <out>/parts/good-refs/        good parts the bank is built from
//! <out>/parts/good-holdout/     other good parts, for the calibration
//! <out>/parts/today/good/, today/<defect>/   the parts to inspect
//! <out>/bank.safetensors        the bank (`ssvp bank build`)
//! <out>/calibration.json        the calibration (`ssvp calibrate`)
//! <out>/inspect/                the outputs of `ssvp detect`: detections.jsonl/.csv, report.html,
//!                               maps/, overlays/, thumbs/, run.json
//! ```

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use ssvp_eval::synth::{self, Kind, Part, Sample};

use crate::calibrate::Calibration;
use crate::detector::Detector;
use crate::error::{Error, ErrorKind, Result};
use crate::input::DecodeOptions;
use crate::inputs::{collect, InputFile};
use crate::job::{calibrate_files, run_detect, CalibrateJob, DetectJob, JobSummary};
use crate::load::load_backbones;
use crate::memory::{build_bank, BankOptions, MemorySpec, ReferenceScoring};
use crate::output::files::FileOptions;
use crate::output::records::{read_records, Status};
use crate::output::{HTML_FILE, JSONL_FILE};
use crate::settings::{DetectorOptions, DEFAULT_BATCH_SIZE, DEFAULT_MAP_SIZE};

/// The file that holds a demo's plan and results, and marks its folder as a demo's.
pub const DEMO_FILE: &str = "demo.json";
/// The bank's file name in the demo folder.
pub const BANK_FILE: &str = "bank.safetensors";
/// The calibration's file name in the demo folder.
pub const CALIBRATION_FILE: &str = "calibration.json";
/// The folder of the synthetic parts.
pub const PARTS_DIR: &str = "parts";
/// The folder of the detection outputs.
pub const INSPECT_DIR: &str = "inspect";
/// The folders of the parts, below [`PARTS_DIR`]: references, held-out good parts, the day's.
pub const REFERENCES_DIR: &str = "good-refs";
/// See [`REFERENCES_DIR`].
pub const HOLDOUT_DIR: &str = "good-holdout";
/// See [`REFERENCES_DIR`].
pub const TODAY_DIR: &str = "today";

/// What the demo makes and how it scores it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DemoPlan {
    /// The product (a synthetic category).
    pub kind: Kind,
    /// The seed of the synthetic parts (the same seed writes the same images as `ssvp synth`).
    pub seed: u64,
    /// Image side in pixels.
    pub size: u32,
    /// Good parts in the bank.
    pub references: usize,
    /// Rotated copies of each reference in the bank (`--rotations`).
    pub rotations: usize,
    /// Held-out good parts the calibration is fitted on.
    pub calibration: usize,
    /// The calibration's target false-alarm rate.
    pub target_fpr: f64,
    /// Good parts among the day's parts.
    pub good: usize,
    /// Defective parts among the day's parts (round-robin over the kind's defect types).
    pub defective: usize,
    /// Side of the map grid (`--map-size`).
    pub map_size: usize,
    /// Images per backbone pass.
    pub batch_size: usize,
}

impl DemoPlan {
    /// The demo `ssvp demo` runs: speckled-stone parts of 128 px, a bank of 8 good parts x 8
    /// rotations, a calibration on 64 held-out good parts (the threshold is their largest
    /// score: target false-alarm rate 2 %), and 8 good and 8 defective parts to inspect.
    /// Measured over the seeds 0 to 31: 5 to 8 of the 8 defective parts flagged (7.3 on
    /// average), and a false alarm in 4 of the 32 runs (one each; 8/65 = 0.12 per run is what
    /// the calibration promises). About 3 s on 2 cores, in a debug build too. Objects (disc,
    /// screw, board) are harder for the random-weight towers than textures: fewer flags.
    pub fn standard() -> Self {
        Self {
            kind: Kind::Speckle,
            seed: 0,
            size: 128,
            references: 8,
            rotations: 8,
            calibration: 64,
            target_fpr: 0.02,
            good: 8,
            defective: 8,
            map_size: DEFAULT_MAP_SIZE,
            batch_size: DEFAULT_BATCH_SIZE,
        }
    }

    /// Checks the counts before anything is written.
    pub fn validate(&self) -> Result<()> {
        if self.references == 0 || self.rotations == 0 || self.good + self.defective == 0 {
            return Err(Error::invalid(
                "the demo needs references, rotations and parts to inspect",
            ));
        }
        crate::calibrate::check_plan(self.calibration, self.target_fpr, 0.0)
    }
}

/// One inspected part and what the detector said.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DemoImage {
    /// Its path below the day's folder (`good/003.png`, `crack/000.png`).
    pub name: String,
    /// The defect type painted on it (`None` for a good part): the truth the demo knows.
    pub defect: Option<String>,
    /// The raw anomaly score (`None` when the image failed).
    pub score: Option<f64>,
    /// The calibrated score in [0, 1] (0.5 at the threshold).
    pub calibrated_score: Option<f64>,
    /// The decision: flagged as anomalous (`None` when the image failed).
    pub anomalous: Option<bool>,
    /// Defect regions found on its map.
    pub regions: usize,
}

/// Seconds each step took.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DemoTimes {
    /// Writing the synthetic parts.
    pub parts: f64,
    /// Loading the backbones and building the bank.
    pub bank: f64,
    /// Scoring the held-out good parts and fitting the calibration.
    pub calibration: f64,
    /// Scoring the day's parts and writing the outputs.
    pub detection: f64,
}

/// What a demo made.
#[derive(Clone, Debug)]
pub struct DemoOutcome {
    /// The plan it ran.
    pub plan: DemoPlan,
    /// The output folder.
    pub out: PathBuf,
    /// The folders of the parts (references, held-out good parts, the day's parts).
    pub references_dir: PathBuf,
    /// See `references_dir`.
    pub holdout_dir: PathBuf,
    /// See `references_dir`.
    pub today_dir: PathBuf,
    /// The bank file.
    pub bank: PathBuf,
    /// Patch vectors per tap in the bank.
    pub bank_vectors: usize,
    /// The calibration file.
    pub calibration_file: PathBuf,
    /// The calibration.
    pub calibration: Calibration,
    /// The folder of the detection outputs.
    pub inspect_dir: PathBuf,
    /// The HTML report.
    pub report: PathBuf,
    /// The detection run.
    pub summary: JobSummary,
    /// Every inspected part, sorted by name.
    pub images: Vec<DemoImage>,
    /// Seconds per step.
    pub times: DemoTimes,
}

impl DemoOutcome {
    /// Defective parts flagged, of all defective parts.
    pub fn defects_flagged(&self) -> (usize, usize) {
        let defective: Vec<&DemoImage> =
            self.images.iter().filter(|i| i.defect.is_some()).collect();
        let flagged = defective
            .iter()
            .filter(|i| i.anomalous == Some(true))
            .count();
        (flagged, defective.len())
    }

    /// Good parts flagged (false alarms), of all good parts.
    pub fn false_alarms(&self) -> (usize, usize) {
        let good: Vec<&DemoImage> = self.images.iter().filter(|i| i.defect.is_none()).collect();
        let flagged = good.iter().filter(|i| i.anomalous == Some(true)).count();
        (flagged, good.len())
    }
}

/// The step a demo is about to run (for a front's progress lines).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DemoStep {
    /// Writing the synthetic parts.
    Parts,
    /// Building the bank.
    Bank,
    /// Calibrating.
    Calibration,
    /// Scoring the day's parts.
    Detection,
}

/// What `demo.json` holds.
#[derive(Serialize, Deserialize)]
struct DemoFile {
    ssvp_demo: u32,
    plan: DemoPlan,
    #[serde(default)]
    images: Vec<DemoImage>,
    #[serde(default)]
    times: Option<DemoTimes>,
}

/// The entries of a demo folder that a new demo replaces.
const DEMO_ENTRIES: [&str; 5] = [
    PARTS_DIR,
    INSPECT_DIR,
    BANK_FILE,
    CALIBRATION_FILE,
    DEMO_FILE,
];

/// Makes `out` ready for a demo: created when missing; an earlier demo's entries are removed;
/// any other non-empty folder is refused (a demo never deletes files it did not make).
pub fn prepare_output(out: &Path) -> Result<()> {
    if out.exists() {
        if !out.is_dir() {
            return Err(Error::invalid(format!(
                "{} exists and is not a directory",
                out.display()
            )));
        }
        let empty = std::fs::read_dir(out)
            .map_err(|e| Error::io(out, e))?
            .next()
            .is_none();
        if !empty {
            let marker = out.join(DEMO_FILE);
            let earlier = std::fs::read_to_string(&marker)
                .ok()
                .and_then(|t| serde_json::from_str::<DemoFile>(&t).ok())
                .is_some();
            if !earlier {
                return Err(Error::new(
                    ErrorKind::Mismatch,
                    format!(
                        "{} is not empty and is not the output of an earlier `ssvp demo` (no \
                         {DEMO_FILE}); give a new or empty folder with --out",
                        out.display()
                    ),
                ));
            }
            for name in DEMO_ENTRIES {
                let path = out.join(name);
                let removed = if path.is_dir() {
                    std::fs::remove_dir_all(&path)
                } else if path.exists() {
                    std::fs::remove_file(&path)
                } else {
                    Ok(())
                };
                removed.map_err(|e| Error::io(&path, e))?;
            }
        }
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))
}

/// The synthetic parts of `plan` below `parts` (the same images `ssvp synth` writes for the
/// same kind, size and seed: train/good for the references and held-out parts, test/good and
/// the test defects for the day's parts).
fn samples(plan: &DemoPlan, parts: &Path) -> Vec<Sample> {
    let png = |i: usize| format!("{i:03}.png");
    let good = |part: Part, index: usize, dir: PathBuf| Sample {
        kind: plan.kind,
        part,
        index,
        image_path: dir.join(png(index)),
        mask_path: None,
    };
    let mut out = Vec::new();
    for i in 0..plan.references {
        out.push(good(Part::Train, i, parts.join(REFERENCES_DIR)));
    }
    for i in plan.references..plan.references + plan.calibration {
        out.push(good(Part::Train, i, parts.join(HOLDOUT_DIR)));
    }
    let today = parts.join(TODAY_DIR);
    for i in 0..plan.good {
        out.push(good(Part::TestGood, i, today.join("good")));
    }
    for (defect, index) in synth::defect_slots(plan.kind, plan.defective) {
        out.push(Sample {
            kind: plan.kind,
            part: Part::TestDefect(defect),
            index,
            image_path: today.join(defect.name()).join(png(index)),
            mask_path: None,
        });
    }
    out
}

fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(Error::model)?;
    ssvp_util::fs::write_atomic(path, text.as_bytes()).map_err(|e| Error::io(path, e))
}

fn files_of(dir: &Path) -> Result<Vec<InputFile>> {
    collect(&[dir.to_path_buf()], None)
}

/// Runs the demo into `out` (see the module docs); `on_step` hears of each step as it starts.
pub fn run_demo(
    out: &Path,
    plan: &DemoPlan,
    on_step: &mut dyn FnMut(DemoStep),
) -> Result<DemoOutcome> {
    plan.validate()?;
    prepare_output(out)?;
    let marker = out.join(DEMO_FILE);
    let mut record = DemoFile {
        ssvp_demo: 1,
        plan: plan.clone(),
        images: Vec::new(),
        times: None,
    };
    write_json(&marker, &record)?;
    let mut times = DemoTimes::default();

    on_step(DemoStep::Parts);
    let started = Instant::now();
    let parts = out.join(PARTS_DIR);
    synth::write_samples(&samples(plan, &parts), plan.size, plan.seed)
        .map_err(|e| Error::new(ErrorKind::Io, e.to_string()))?;
    let (references_dir, holdout_dir, today_dir) = (
        parts.join(REFERENCES_DIR),
        parts.join(HOLDOUT_DIR),
        parts.join(TODAY_DIR),
    );
    times.parts = started.elapsed().as_secs_f64();

    // `ssvp bank build --backbones tiny --normal good-refs --rotations N`.
    on_step(DemoStep::Bank);
    let started = Instant::now();
    let device = candle_core::Device::Cpu;
    // The bank reads DINO features alone: no CLIP tower is loaded.
    let (backbones, postprocess) = load_backbones(
        None,
        &ssvp_features::BackboneChoice::preset(ssvp_features::TINY),
        None,
        false,
        &device,
    )?;
    let references: Vec<PathBuf> = files_of(&references_dir)?
        .into_iter()
        .map(|f| f.path)
        .collect();
    let decode = DecodeOptions::default();
    let built = build_bank(
        &backbones,
        &references,
        &BankOptions {
            rotations: plan.rotations,
            batch_size: plan.batch_size,
            decode,
            ..BankOptions::default()
        },
    )?;
    if let Some((path, err)) = built.skipped.first() {
        return Err(err_with_path(path, err));
    }
    let bank = out.join(BANK_FILE);
    built.bank.save(&bank).map_err(Error::from)?;
    let bank_vectors = built.bank.len();
    drop(built);
    times.bank = started.elapsed().as_secs_f64();

    // `ssvp calibrate --bank bank.safetensors --normal good-holdout --target-fpr A --holdout 0`:
    // the detector reads the bank file back, as `--bank` does.
    on_step(DemoStep::Calibration);
    let started = Instant::now();
    let options = DetectorOptions {
        map_size: plan.map_size,
        batch_size: plan.batch_size,
        ..DetectorOptions::default()
    };
    let (memory, _) = MemorySpec::Bank {
        path: bank.clone(),
        scoring: ReferenceScoring::default(),
    }
    .load(&backbones, &device)?;
    let detector = Detector::without_head(backbones, postprocess, options)?.with_memory(memory)?;
    let job = CalibrateJob {
        decode,
        target_fpr: plan.target_fpr,
        holdout: 0.0,
        seed: 0,
    };
    let (calibration, skipped) =
        calibrate_files(&detector, &files_of(&holdout_dir)?, &job, &mut |_| {})?;
    if let Some((path, err)) = skipped.first() {
        return Err(err_with_path(Path::new(path), err));
    }
    let calibration_file = out.join(CALIBRATION_FILE);
    calibration.write(&calibration_file)?;
    times.calibration = started.elapsed().as_secs_f64();

    // `ssvp detect --bank bank.safetensors --calibration calibration.json --out inspect today`.
    on_step(DemoStep::Detection);
    let started = Instant::now();
    let detector = detector.with_calibration(Calibration::read(&calibration_file)?)?;
    let inspect_dir = out.join(INSPECT_DIR);
    let job = DetectJob {
        out_dir: inspect_dir.clone(),
        files: FileOptions::default(),
        decode,
        resume: false,
        force: false,
        title: format!(
            "ssvp demo: synthetic {} parts, tiny random-weight backbones",
            plan.kind.name()
        ),
        shard: None,
    };
    let summary = run_detect(&detector, &files_of(&today_dir)?, &job, &mut |_| {})?;
    times.detection = started.elapsed().as_secs_f64();

    let today_abs = std::path::absolute(&today_dir).map_err(|e| Error::io(&today_dir, e))?;
    let mut images: Vec<DemoImage> = read_records(&inspect_dir.join(JSONL_FILE), false)?
        .into_iter()
        .map(|r| {
            let path = PathBuf::from(&r.path);
            let abs = std::path::absolute(&path).unwrap_or(path);
            let rel = abs.strip_prefix(&today_abs).unwrap_or(&abs);
            let name = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
                .join("/");
            let folder = name.split('/').next().unwrap_or_default().to_string();
            let det = r.detection.as_ref().filter(|_| r.status == Status::Ok);
            DemoImage {
                defect: (folder != "good").then_some(folder),
                score: det.map(|d| d.score),
                calibrated_score: det.and_then(|d| d.calibrated_score),
                anomalous: det.and_then(|d| d.anomalous),
                regions: det.map_or(0, |d| d.regions.len()),
                name,
            }
        })
        .collect();
    images.sort_by(|a, b| a.name.cmp(&b.name));
    record.images = images.clone();
    record.times = Some(times.clone());
    write_json(&marker, &record)?;
    Ok(DemoOutcome {
        plan: plan.clone(),
        out: out.to_path_buf(),
        references_dir,
        holdout_dir,
        today_dir,
        bank,
        bank_vectors,
        calibration_file,
        calibration,
        report: inspect_dir.join(HTML_FILE),
        inspect_dir,
        summary,
        images,
        times,
    })
}

/// A synthetic part the demo itself wrote could not be read: a broken disk, not an input.
fn err_with_path(path: &Path, err: &Error) -> Error {
    Error::new(
        ErrorKind::Io,
        format!(
            "the demo's own part {} could not be read: {err}",
            path.display()
        ),
    )
}
