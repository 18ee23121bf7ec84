//! Batch runs over files: `ssvp detect` ([`run_detect`]), `ssvp calibrate`
//! ([`calibrate_files`]) and `ssvp report` ([`merge_runs`]).
//!
//! Decoding and preprocessing overlap inference: a second thread reads, decodes and preprocesses
//! the next batches (up to two ahead, so memory stays bounded) while the backbones run on the
//! current one. A file
//! that cannot be read or decoded becomes an error record and the run goes on; if the model
//! fails on a batch, its images are retried one by one so that one odd image costs only itself.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc::sync_channel;
use std::time::{Duration, Instant};

use crate::calibrate::{check_plan, Calibration, NormalScore};
use crate::detection::Detection;
use crate::detector::{Detector, PreparedBatch};
use crate::error::{Error, ErrorKind, Result};
use crate::input::{read_image, DecodeOptions, InputImage};
use crate::inputs::{InputFile, Shard};
use crate::output::csv::records_csv;
use crate::output::files::{stems, write_image_files, FileOptions};
use crate::output::html;
use crate::output::records::{read_records, JsonlWriter, Record, SourceRecord, Status};
use crate::output::{RunInfo, CSV_FILE, HTML_FILE, JSONL_FILE, RUN_FILE};

/// Progress of a batch run.
#[derive(Clone, Debug)]
pub struct JobProgress {
    /// Images finished in this run (scored or failed).
    pub done: usize,
    /// Images this run has to do.
    pub total: usize,
    /// Images that could not be scored.
    pub failed: usize,
    /// Images judged anomalous.
    pub flagged: usize,
    /// Wall time since the run started.
    pub elapsed: Duration,
}

/// What [`scan`] hands over per input: the decoded image and its detection, or why not.
type Outcome = Result<(InputImage, Detection)>;
/// The consumer of [`scan`]'s outcomes; its error stops the scan.
type OnItem<'a> = dyn FnMut(&InputFile, Outcome) -> Result<()> + 'a;

/// What the decoding thread hands to the scoring loop, in input order.
enum Decoded {
    /// An input that could not be read.
    Failed(usize, Error),
    /// A batch of decoded images (their input indices), cut and preprocessed for the backbones.
    Batch(Vec<usize>, PreparedBatch<'static>),
}

/// Decodes and preprocesses `inputs` on a second thread (up to two batches ahead, so memory
/// stays bounded), scores them in batches of the detector's batch size (with mutual scoring:
/// in sets of about its set size, [`set_sizes`]), and hands every outcome to `on_item`.
fn scan(
    detector: &Detector,
    inputs: &[&InputFile],
    decode: &DecodeOptions,
    on_item: &mut OnItem<'_>,
) -> Result<()> {
    // Inputs per scoring call, in order: one set after another for mutual scoring.
    let batches = detector.call_sizes(inputs.len());
    let batch_size = batches.first().copied().unwrap_or(1);
    std::thread::scope(|scope| {
        let (tx, rx) = sync_channel::<Decoded>(2);
        scope.spawn(move || {
            let mut pending: Vec<(usize, InputImage)> = Vec::with_capacity(batch_size);
            let send_batch = |pending: &mut Vec<(usize, InputImage)>| {
                let (idx, images): (Vec<usize>, Vec<InputImage>) =
                    std::mem::take(pending).into_iter().unzip();
                let prepared = detector.prepare(Cow::Owned(images));
                tx.send(Decoded::Batch(idx, prepared)).is_ok()
            };
            let mut ends = batches.iter().scan(0, |end, n| {
                *end += n;
                Some(*end)
            });
            let mut end = ends.next().unwrap_or(0);
            for (i, input) in inputs.iter().enumerate() {
                match read_image(&input.path, decode) {
                    Ok(img) => pending.push((i, img)),
                    Err(e) => {
                        if tx.send(Decoded::Failed(i, e)).is_err() {
                            return;
                        }
                    }
                }
                if i + 1 == end {
                    end = ends.next().unwrap_or(inputs.len());
                    if !pending.is_empty() && !send_batch(&mut pending) {
                        return; // the scoring loop stopped (an I/O error on its side)
                    }
                }
            }
            if !pending.is_empty() {
                send_batch(&mut pending);
            }
        });
        for message in rx {
            match message {
                Decoded::Failed(i, e) => on_item(inputs[i], Err(e))?,
                Decoded::Batch(idx, prepared) => {
                    score_batch(detector, inputs, &idx, prepared, on_item)?
                }
            }
        }
        Ok(())
    })
}

/// Scores one prepared batch and reports each outcome.
fn score_batch(
    detector: &Detector,
    inputs: &[&InputFile],
    idx: &[usize],
    prepared: PreparedBatch<'static>,
    on_item: &mut OnItem<'_>,
) -> Result<()> {
    let class = detector.options().class_name.clone();
    match detector.detect_prepared(&prepared, &class) {
        Ok(detections) => {
            let images = prepared.into_images();
            for ((i, img), det) in idx.iter().zip(images).zip(detections) {
                on_item(inputs[*i], Ok((img, det)))?;
            }
            Ok(())
        }
        Err(e) => retry_one_by_one(detector, inputs, idx, prepared.into_images(), e, on_item),
    }
}

/// After a batch failed: each image alone, so that one odd image costs only itself.
fn retry_one_by_one(
    detector: &Detector,
    inputs: &[&InputFile],
    idx: &[usize],
    images: Vec<InputImage>,
    err: Error,
    on_item: &mut OnItem<'_>,
) -> Result<()> {
    if images.len() == 1 {
        return on_item(inputs[idx[0]], Err(err));
    }
    if detector.set_size().is_some() {
        // A mutual set fails as a whole: alone, an image has nothing to be compared with.
        for i in idx {
            on_item(inputs[*i], Err(Error::new(err.kind(), err.to_string())))?;
        }
        return Ok(());
    }
    for (i, img) in idx.iter().zip(images) {
        let one = detector.detect(std::slice::from_ref(&img));
        on_item(inputs[*i], one.map(|mut d| (img, d.remove(0))))?;
    }
    Ok(())
}

/// Options of [`run_detect`].
#[derive(Clone, Debug)]
pub struct DetectJob {
    /// The output directory (created if missing).
    pub out_dir: PathBuf,
    /// Which per-image files to write.
    pub files: FileOptions,
    /// Pixel budget and EXIF handling.
    pub decode: DecodeOptions,
    /// Continue a run: skip the inputs already in `detections.jsonl`.
    pub resume: bool,
    /// Start over in an output directory that holds results.
    pub force: bool,
    /// The report's title.
    pub title: String,
    /// The shard this run is, when it is one of several.
    pub shard: Option<Shard>,
}

/// What a batch run did, over every record of its output (earlier ones included on resume).
#[derive(Clone, Debug, PartialEq)]
pub struct JobSummary {
    /// Records in `detections.jsonl`.
    pub records: usize,
    /// Images scored in this run.
    pub scored_now: usize,
    /// Inputs skipped because an earlier run had done them.
    pub resumed: usize,
    /// Records of images that failed.
    pub failed: usize,
    /// Records judged anomalous.
    pub anomalous: usize,
    /// Records scored but not decided (no threshold: neither a calibration nor `--threshold`).
    pub undecided: usize,
    /// The first few failed records ([`FAILURES_LISTED`] at most), as `(path, why)`.
    pub failures: Vec<(String, String)>,
    /// Wall time of this run.
    pub seconds: f64,
}

/// How many failed images a [`JobSummary`] names.
pub const FAILURES_LISTED: usize = 3;

impl JobSummary {
    /// The counts of `records` (all of a run's records, earlier ones included on resume).
    fn of_records(records: &[Record], scored_now: usize, resumed: usize, seconds: f64) -> Self {
        let failed: Vec<&Record> = records
            .iter()
            .filter(|r| r.status == Status::Error)
            .collect();
        Self {
            records: records.len(),
            scored_now,
            resumed,
            failed: failed.len(),
            anomalous: records
                .iter()
                .filter(|r| r.anomalous() == Some(true))
                .count(),
            undecided: records
                .iter()
                .filter(|r| r.status == Status::Ok && r.anomalous().is_none())
                .count(),
            failures: failed
                .iter()
                .take(FAILURES_LISTED)
                .map(|r| {
                    let why = r.error.as_ref().map_or_else(
                        || "no error message was recorded".to_string(),
                        |e| e.message.clone(),
                    );
                    (r.path.clone(), why)
                })
                .collect(),
            seconds,
        }
    }
}

/// The description of a run with `detector`.
pub fn run_info(detector: &Detector, shard: Option<&Shard>) -> RunInfo {
    let cal = detector.calibration();
    let scale = detector.map_scale();
    RunInfo {
        ssvp_version: env!("CARGO_PKG_VERSION").to_string(),
        model: detector.identity().clone(),
        settings: detector.settings(),
        threshold: detector.image_threshold(),
        threshold_source: if detector.options().image_threshold.is_some() {
            "--threshold".into()
        } else if cal.is_some() {
            "calibration".into()
        } else {
            "none".into()
        },
        pixel_threshold: detector.pixel_threshold(),
        map_scale: [scale.lo, scale.hi],
        target_fpr: cal.map(|c| c.target_fpr),
        calibration_images: cal.map(|c| c.calibration_images),
        holdout_fpr: cal.and_then(|c| c.holdout.as_ref().map(|h| h.fpr)),
        shard: shard.map(|s| format!("{}/{}", s.index, s.count)),
    }
}

fn write_text(path: &Path, text: &str) -> Result<()> {
    ssvp_util::fs::write_atomic(path, text.as_bytes()).map_err(|e| Error::io(path, e))
}

fn read_run_info(path: &Path) -> Result<RunInfo> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text)
        .map_err(|e| Error::invalid(format!("{} is not a run description: {e}", path.display())))
}

/// Writes the CSV and the HTML report of `records` (sorted by path) into `out_dir`.
fn write_summaries(
    out_dir: &Path,
    records: &mut [Record],
    info: &RunInfo,
    title: &str,
) -> Result<()> {
    records.sort_by(|a, b| a.path.cmp(&b.path));
    write_text(&out_dir.join(CSV_FILE), &records_csv(records))?;
    write_text(
        &out_dir.join(HTML_FILE),
        &html::render(records, info, title),
    )
}

/// Scores `inputs` into `job.out_dir` (see [`crate::output`] for the files).
pub fn run_detect(
    detector: &Detector,
    inputs: &[InputFile],
    job: &DetectJob,
    on_progress: &mut dyn FnMut(&JobProgress),
) -> Result<JobSummary> {
    let started = Instant::now();
    let out = &job.out_dir;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let jsonl = out.join(JSONL_FILE);
    let info = run_info(detector, job.shard.as_ref());
    let has_results = std::fs::metadata(&jsonl).is_ok_and(|m| m.len() > 0);
    if has_results && !job.resume && !job.force {
        return Err(Error::new(
            ErrorKind::Mismatch,
            format!(
                "{} already holds detections; --resume continues that run, --force starts over \
                 (its records are then lost)",
                out.display()
            ),
        ));
    }
    if job.force && !job.resume {
        for name in [JSONL_FILE, CSV_FILE, HTML_FILE, RUN_FILE] {
            let p = out.join(name);
            if p.exists() {
                std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
            }
        }
    }
    let earlier = if job.resume {
        let run_file = out.join(RUN_FILE);
        if run_file.exists() {
            let stored = read_run_info(&run_file)?;
            if stored != info {
                return Err(Error::new(
                    ErrorKind::Mismatch,
                    format!(
                        "--resume: {} was made with another model, settings or thresholds \
                         ({}); resume with the same options or start over with --force",
                        out.display(),
                        run_file.display()
                    ),
                ));
            }
        }
        read_records(&jsonl, true)?
    } else {
        Vec::new()
    };
    write_text(
        &out.join(RUN_FILE),
        &serde_json::to_string_pretty(&info).map_err(Error::model)?,
    )?;
    let done: HashSet<&str> = earlier.iter().map(|r| r.path.as_str()).collect();
    let names = stems(&inputs.iter().map(|i| i.rel.clone()).collect::<Vec<_>>());
    let name_of: HashMap<String, usize> = inputs
        .iter()
        .enumerate()
        .map(|(i, f)| (f.key(), i))
        .collect();
    let pending: Vec<&InputFile> = inputs
        .iter()
        .filter(|f| !done.contains(f.key().as_str()))
        .collect();
    let resumed = inputs.len() - pending.len();
    let mut writer = JsonlWriter::append(&jsonl)?;
    let scale = detector.map_scale();
    let min_area = detector.options().min_region_area;
    let mut progress = JobProgress {
        done: 0,
        total: pending.len(),
        failed: 0,
        flagged: 0,
        elapsed: Duration::ZERO,
    };
    let mut scored_now = 0;
    scan(detector, &pending, &job.decode, &mut |input, outcome| {
        let record = match outcome {
            Ok((image, detection)) => {
                let names = &names[name_of[&input.key()]];
                let files = write_image_files(
                    out,
                    names,
                    &image.image,
                    &detection,
                    scale,
                    min_area,
                    &job.files,
                )?;
                scored_now += 1;
                if detection.anomalous == Some(true) {
                    progress.flagged += 1;
                }
                Record {
                    path: input.key(),
                    status: Status::Ok,
                    error: None,
                    source: image.info.as_ref().map(SourceRecord::from),
                    detection: Some(detection),
                    files,
                    map_scale: Some([scale.lo, scale.hi]),
                }
            }
            Err(e) => {
                progress.failed += 1;
                Record::failed(input.key(), &e)
            }
        };
        writer.write(&record)?;
        progress.done += 1;
        progress.elapsed = started.elapsed();
        on_progress(&progress);
        Ok(())
    })?;
    drop(writer);
    let mut records = read_records(&jsonl, false)?;
    write_summaries(out, &mut records, &info, &job.title)?;
    Ok(JobSummary::of_records(
        &records,
        scored_now,
        resumed,
        started.elapsed().as_secs_f64(),
    ))
}

/// Options of [`calibrate_files`].
#[derive(Clone, Debug)]
pub struct CalibrateJob {
    /// Pixel budget and EXIF handling.
    pub decode: DecodeOptions,
    /// Target false-alarm rate α.
    pub target_fpr: f64,
    /// Fraction of the normal images kept out of the fit to measure the false-alarm rate.
    pub holdout: f64,
    /// Seed of the held-out draw.
    pub seed: u64,
}

/// A reference scores (nearly) zero against its own bank, so calibrating on references would
/// set the threshold far too low: they are refused, by canonical path.
fn refuse_references(detector: &Detector, inputs: &[InputFile]) -> Result<()> {
    let Some(bank) = detector.scorer()?.bank() else {
        return Ok(());
    };
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let references: HashSet<PathBuf> = bank
        .meta()
        .references
        .iter()
        .map(|r| canon(Path::new(r)))
        .collect();
    let shared: Vec<&InputFile> = inputs
        .iter()
        .filter(|f| references.contains(&canon(&f.path)))
        .collect();
    if let Some(first) = shared.first() {
        return Err(Error::invalid(format!(
            "{} of the calibration images are references of the bank (first: {}); calibrate on \
             other good images, which the bank has not seen",
            shared.len(),
            first.path.display()
        )));
    }
    Ok(())
}

/// Scores normal images and fits a calibration to them. Images that cannot be read are
/// skipped and returned with the reason.
pub fn calibrate_files(
    detector: &Detector,
    inputs: &[InputFile],
    job: &CalibrateJob,
    on_progress: &mut dyn FnMut(&JobProgress),
) -> Result<(Calibration, Vec<(String, Error)>)> {
    if detector.calibration().is_some() {
        return Err(Error::invalid(
            "calibrate with an uncalibrated detector (drop --calibration)",
        ));
    }
    // Before any image is scored, since scoring can take a while.
    check_plan(inputs.len(), job.target_fpr, job.holdout)?;
    refuse_references(detector, inputs)?;
    let started = Instant::now();
    let refs: Vec<&InputFile> = inputs.iter().collect();
    let mut normal = Vec::with_capacity(inputs.len());
    let mut skipped = Vec::new();
    let mut progress = JobProgress {
        done: 0,
        total: inputs.len(),
        failed: 0,
        flagged: 0,
        elapsed: Duration::ZERO,
    };
    scan(detector, &refs, &job.decode, &mut |input, outcome| {
        match outcome {
            Ok((_, d)) => normal.push(NormalScore::of(&d)),
            Err(e) if e.kind().is_client_error() => {
                progress.failed += 1;
                skipped.push((input.key(), e));
            }
            Err(e) => return Err(e),
        }
        progress.done += 1;
        progress.elapsed = started.elapsed();
        on_progress(&progress);
        Ok(())
    })?;
    if normal.is_empty() {
        return Err(Error::new(
            ErrorKind::NotEnoughData,
            "none of the normal images could be read",
        ));
    }
    let cal = Calibration::fit(
        &normal,
        job.target_fpr,
        job.holdout,
        job.seed,
        detector.identity().clone(),
        detector.settings(),
    )?;
    Ok((cal, skipped))
}

/// `target` relative to the directory `base` (both made absolute first), with `..` where
/// needed: how a merged report refers to a shard's files.
fn relative_to(target: &Path, base: &Path) -> Result<PathBuf> {
    let abs = |p: &Path| -> Result<PathBuf> { std::path::absolute(p).map_err(|e| Error::io(p, e)) };
    let (t, b) = (abs(target)?, abs(base)?);
    fn norm(p: &Path) -> Vec<Component<'_>> {
        let mut out: Vec<Component<'_>> = Vec::new();
        for c in p.components() {
            match c {
                Component::CurDir => {}
                Component::ParentDir => {
                    out.pop();
                }
                c => out.push(c),
            }
        }
        out
    }
    let (tc, bc) = (norm(&t), norm(&b));
    let common = tc.iter().zip(&bc).take_while(|(a, b)| a == b).count();
    let mut rel = PathBuf::new();
    for _ in common..bc.len() {
        rel.push("..");
    }
    for c in &tc[common..] {
        rel.push(c.as_os_str());
    }
    Ok(rel)
}

/// What [`merge_runs`] did.
#[derive(Clone, Debug, PartialEq)]
pub struct MergeSummary {
    /// Output directories merged.
    pub shards: usize,
    /// Records in the merged JSONL.
    pub records: usize,
    /// Paths that appeared in more than one shard (the first shard's record is kept).
    pub duplicates: usize,
    /// Records of images that failed.
    pub failed: usize,
    /// Records judged anomalous.
    pub anomalous: usize,
}

/// Builds one `detections.jsonl`, CSV and HTML report in `out_dir` from the output directories
/// of several shards of one batch. The shards must have run the same model with the same
/// settings and thresholds; their maps and overlays stay where they are and are referred to
/// relatively.
pub fn merge_runs(shard_dirs: &[PathBuf], out_dir: &Path, title: &str) -> Result<MergeSummary> {
    if shard_dirs.is_empty() {
        return Err(Error::invalid(
            "give the output directories of the shards to merge",
        ));
    }
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let mut info: Option<RunInfo> = None;
    let mut seen = HashSet::new();
    let mut merged = Vec::new();
    let mut duplicates = 0;
    for dir in shard_dirs {
        let run_file = dir.join(RUN_FILE);
        if !run_file.exists() {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "{} is not an output directory of `ssvp detect` (no {RUN_FILE})",
                    dir.display()
                ),
            ));
        }
        let mut this = read_run_info(&run_file)?;
        this.shard = None;
        match &info {
            None => info = Some(this),
            Some(first) if *first != this => {
                return Err(Error::new(
                    ErrorKind::Mismatch,
                    format!(
                        "{} was made with another model, settings or thresholds than {}; only \
                         shards of one run can be merged",
                        dir.display(),
                        shard_dirs[0].display()
                    ),
                ))
            }
            Some(_) => {}
        }
        for mut record in read_records(&dir.join(JSONL_FILE), false)? {
            if !seen.insert(record.path.clone()) {
                duplicates += 1;
                continue;
            }
            let relink = |f: &mut Option<String>| -> Result<()> {
                if let Some(rel) = f {
                    let target = dir.join(&*rel);
                    *rel = relative_to(&target, out_dir)?
                        .components()
                        .map(|c| c.as_os_str().to_string_lossy().into_owned())
                        .collect::<Vec<_>>()
                        .join("/");
                }
                Ok(())
            };
            relink(&mut record.files.map)?;
            relink(&mut record.files.overlay)?;
            relink(&mut record.files.thumbnail)?;
            relink(&mut record.files.overlay_thumbnail)?;
            merged.push(record);
        }
    }
    let info = info.expect("at least one shard");
    merged.sort_by(|a, b| a.path.cmp(&b.path));
    let mut jsonl = String::new();
    for r in &merged {
        jsonl.push_str(&serde_json::to_string(r).map_err(Error::model)?);
        jsonl.push('\n');
    }
    write_text(&out_dir.join(JSONL_FILE), &jsonl)?;
    write_text(
        &out_dir.join(RUN_FILE),
        &serde_json::to_string_pretty(&info).map_err(Error::model)?,
    )?;
    write_summaries(out_dir, &mut merged, &info, title)?;
    Ok(MergeSummary {
        shards: shard_dirs.len(),
        records: merged.len(),
        duplicates,
        failed: merged.iter().filter(|r| r.status == Status::Error).count(),
        anomalous: merged
            .iter()
            .filter(|r| r.anomalous() == Some(true))
            .count(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_paths_between_directories() {
        let rel = relative_to(Path::new("/a/b/shard0/maps/x.png"), Path::new("/a/merged")).unwrap();
        assert_eq!(rel, PathBuf::from("../b/shard0/maps/x.png"));
        let rel = relative_to(Path::new("/a/out/maps/x.png"), Path::new("/a/out")).unwrap();
        assert_eq!(rel, PathBuf::from("maps/x.png"));
    }

    #[test]
    fn median_of_a_map() {
        assert_eq!(crate::calibrate::map_median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(crate::calibrate::map_median(&[4.0, 1.0, 3.0, 2.0]), 2.0);
    }
}
