//! [`Station`]: the state of an inspection station and the detector it puts in force. Every
//! action an operator takes is a version: a threshold version (Apply), a bank version (a part
//! marked good joins the references; don't-care regions change), and an undo moves back to the
//! previous bank version exactly. The detector in force is always the one the current
//! versions make from the model the station was started with:
//!
//! ```text
//! base model (flags or bundle) ─► its bank replaced by the version's bank file
//!                               ─► the version's don't-care regions
//!                               ─► the version's calibration
//!                               ─► the threshold version's value
//! ```
//!
//! The rule that keeps the threshold a conformal bound after a change: a bank that only grew
//! and regions that only grew can only lower each image's score (every patch distance is a
//! minimum over a superset; a masked patch scores 0), so the calibration's bound still holds
//! on the good parts it was fitted to, conservatively ("carried"). When enough stored good
//! parts are not in the bank (at least what the target false-alarm rate needs), the station
//! re-calibrates on their new scores instead ("recalibrated"), a tighter bound. Regions that
//! shrank cannot be carried: without enough good parts the value is kept but no longer called
//! conformal.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use rusqlite::Connection;
use serde::Serialize;
use ssvp_detect::calibrate::{min_images, NormalScore};
use ssvp_detect::decision::{check_threshold, is_anomalous};
use ssvp_detect::input::{decode_image, DecodeOptions};
use ssvp_detect::memory::{feedback_bank, PatchBank};
use ssvp_detect::{Calibration, Detection, Detector, DontCare, Error, ErrorKind, Result};
use ssvp_eval::postprocess::resize_map;
use ssvp_image::{colorize, encode_png_rgb8};

use crate::files::{io_error, ContentStore};
use crate::store::{
    self, BankVersion, Change, Decided, HistoryEntry, Label, NewPart, NewResult, PartQuery,
    PartRow, ThresholdVersion,
};

/// The longer side of the stored map pictures: the overlay is stretched over the image, and a
/// smooth map loses nothing visible at this size.
pub const MAP_PICTURE_SIDE: usize = 512;

/// How a station re-scores and decides.
#[derive(Clone, Debug)]
pub struct StationOptions {
    /// After a bank change, besides every labelled part and every part flagged before, the
    /// newest this many parts are re-scored.
    pub rescore_window: usize,
    /// Pixel budget and EXIF handling when stored images are decoded again.
    pub decode: DecodeOptions,
}

impl Default for StationOptions {
    fn default() -> Self {
        Self {
            rescore_window: 200,
            decode: DecodeOptions::default(),
        }
    }
}

/// The detector in force and the versions that made it.
#[derive(Clone)]
pub struct InForce {
    /// The detector every new part is scored by.
    pub detector: Arc<Detector>,
    /// Its bank version.
    pub bank_version: i64,
    /// Its threshold version.
    pub threshold: ThresholdVersion,
    /// The parts whose patches are in its bank.
    pub in_bank: Arc<HashSet<i64>>,
}

/// A part as the UI and the API show it: stored facts plus the decision at the threshold in
/// force.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PartView {
    /// Its id.
    pub id: i64,
    /// Its file name.
    pub name: String,
    /// SHA-256 of its bytes.
    pub sha256: String,
    /// When it arrived (UTC).
    pub at: String,
    /// Pixels.
    pub width: usize,
    /// Pixels.
    pub height: usize,
    /// Where it came from: `upload`, `api`, `watch`.
    pub source: String,
    /// Its current raw score.
    pub score: f64,
    /// The calibration's 0–1 score at the threshold in force.
    pub calibrated_score: Option<f64>,
    /// The decision at the threshold in force.
    pub anomalous: Option<bool>,
    /// The operator's label.
    pub feedback: Option<Label>,
    /// Whether its patches are in the bank in force.
    pub in_bank: bool,
    /// The bank version its score comes from.
    pub bank_version: i64,
}

/// What a change (mark good, regions, undo) did.
#[derive(Clone, Debug, Serialize)]
pub struct ChangeReport {
    /// The bank version now in force.
    pub bank_version: i64,
    /// The threshold version now in force.
    pub threshold: ThresholdVersion,
    /// Parts re-scored.
    pub rescored: usize,
    /// The parts whose decision turned, before and after.
    pub changes: Vec<Change>,
}

/// An image to record with the result it got.
pub struct Arrival<'a> {
    /// The file's bytes, as sent.
    pub bytes: &'a [u8],
    /// Its name.
    pub name: &'a str,
    /// `upload`, `api`, `watch`.
    pub source: &'a str,
    /// A label given with it (e.g. known-good parts for calibration).
    pub label: Option<Label>,
}

/// The station: its database, its stores and the detector in force. Every method is safe to
/// call from several threads; changes are serialised.
pub struct Station {
    dir: PathBuf,
    db: Mutex<Connection>,
    images: ContentStore,
    banks: ContentStore,
    base: Arc<Detector>,
    in_force: RwLock<InForce>,
    /// Held by every change, so two operators' actions never interleave.
    changing: Mutex<()>,
    options: StationOptions,
}

fn lock<T>(m: &Mutex<T>) -> Result<MutexGuard<'_, T>> {
    m.lock()
        .map_err(|_| Error::new(ErrorKind::Model, "a station lock was poisoned"))
}

fn json<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(|e| Error::new(ErrorKind::Model, e.to_string()))
}

/// The name a part's patches carry in the bank's reference list.
fn bank_name(id: i64, sha: &str) -> String {
    format!("station-part:{id}:{sha}")
}

/// The parts whose patches a bank holds (from its reference names).
fn parts_in(bank: Option<&PatchBank>) -> HashSet<i64> {
    bank.map(|b| {
        b.meta()
            .references
            .iter()
            .filter_map(|r| {
                r.strip_prefix("station-part:")?
                    .split(':')
                    .next()?
                    .parse()
                    .ok()
            })
            .collect()
    })
    .unwrap_or_default()
}

fn media_type(bytes: &[u8]) -> &'static str {
    match bytes {
        [0x89, b'P', b'N', b'G', ..] => "image/png",
        [0xff, 0xd8, ..] => "image/jpeg",
        [b'B', b'M', ..] => "image/bmp",
        [b'I', b'I', 42, 0, ..] | [b'M', b'M', 0, 42, ..] => "image/tiff",
        _ => "application/octet-stream",
    }
}

/// Who and why of an action: both required, short.
pub fn check_who_why(who: &str, why: &str) -> Result<()> {
    if who.trim().is_empty() {
        return Err(Error::invalid("say who you are (`who`)"));
    }
    if who.len() > 100 || why.len() > 1000 {
        return Err(Error::invalid(
            "`who` is at most 100 and `why` at most 1000 bytes",
        ));
    }
    Ok(())
}

impl Station {
    /// Opens the station in `dir` over `base`, the model loaded from the flags or a bundle.
    /// The first start records the base model's bank, regions and threshold as version 1; a
    /// later start puts the stored versions back in force, refusing a base model other than
    /// the one the station was started with.
    pub fn open(dir: &Path, base: Detector, options: StationOptions) -> Result<Self> {
        std::fs::create_dir_all(dir).map_err(|e| io_error("creating", dir, e))?;
        let images = ContentStore::open(dir.join("images"), "")?;
        let banks = ContentStore::open(dir.join("banks"), ".bank")?;
        let mut conn = store::open(&dir.join("station.sqlite"))?;
        let base = Arc::new(base);
        let identity = base.identity();
        // The backbones, the head and the bank version 1 was made of: another model would
        // score the stored parts differently from their results.
        let model_key = format!("{} {} {}", identity.backbones, identity.head, identity.bank);
        let first = store::current(&conn)?.is_none();
        if first {
            let bank_sha = match base.scorer()?.bank() {
                Some(bank) => Some(Self::store_bank(dir, &banks, bank)?),
                None => None,
            };
            let threshold = base.image_threshold();
            let calibration = base.calibration();
            let from_calibration =
                calibration.is_some() && base.options().image_threshold.is_none();
            let regions = json(&base.dont_care().cloned().unwrap_or_default())?;
            store::in_transaction(&mut conn, |tx| {
                store::set_meta(tx, "model", &model_key)?;
                store::set_meta(tx, "base_bank", bank_sha.as_deref().unwrap_or(""))?;
                let refs = base
                    .scorer()?
                    .bank()
                    .map_or(0, |b| b.meta().references.len());
                let version = store::insert_bank_version(
                    tx,
                    &BankVersion {
                        version: 0,
                        parent: None,
                        bank_sha256: bank_sha.clone(),
                        regions: regions.clone(),
                        refs,
                        event: "start".into(),
                        threshold_version: None,
                        calibration: calibration.map(json).transpose()?,
                        at: String::new(),
                        who: "ssvp".into(),
                        why: "the model the station was started with".into(),
                    },
                )?;
                let t = store::insert_threshold(
                    tx,
                    &ThresholdVersion {
                        version: 0,
                        value: threshold,
                        source: if from_calibration {
                            "calibration"
                        } else {
                            "operator"
                        }
                        .into(),
                        conformal: from_calibration,
                        rests_on: calibration.map_or(0, |c| c.calibration_images),
                        target_fpr: calibration.map(|c| c.target_fpr),
                        bank_version: version,
                        at: String::new(),
                        who: "ssvp".into(),
                        why: if from_calibration {
                            "the calibration's conformal threshold".into()
                        } else {
                            "the threshold the station was started with".into()
                        },
                    },
                )?;
                store::set_bank_threshold(tx, version, t)?;
                store::set_current(tx, version, t)?;
                store::audit(
                    tx,
                    "ssvp",
                    "start",
                    &format!(
                        "station started: {} scoring, threshold {}",
                        base.mode(),
                        threshold.map_or("none".into(), |t| format!("{t:.6}"))
                    ),
                )?;
                Ok(())
            })?;
        } else {
            let recorded = store::meta(&conn, "model")?.unwrap_or_default();
            if recorded != model_key {
                return Err(Error::new(
                    ErrorKind::Mismatch,
                    format!(
                        "the station in {} was started with another model (backbones, head and bank \
                         digests `{recorded}`, this one `{model_key}`); start it with the same \
                         model, or give a new station directory",
                        dir.display()
                    ),
                ));
            }
        }
        let (bank_version, threshold_version) = store::current(&conn)?.ok_or_else(|| {
            Error::new(
                ErrorKind::Io,
                "the station database has no versions in force",
            )
        })?;
        let bv = store::bank_version(&conn, bank_version)?;
        let threshold = store::threshold(&conn, threshold_version)?;
        let station = Self {
            dir: dir.to_path_buf(),
            db: Mutex::new(conn),
            images,
            banks,
            in_force: RwLock::new(InForce {
                detector: Arc::clone(&base),
                bank_version,
                threshold: threshold.clone(),
                in_bank: Arc::new(HashSet::new()),
            }),
            base,
            changing: Mutex::new(()),
            options,
        };
        let detector = station.detector_of(&bv, threshold.value)?;
        let in_bank = parts_in(detector.scorer()?.bank());
        *station.write_in_force()? = InForce {
            detector: Arc::new(detector),
            bank_version,
            threshold,
            in_bank: Arc::new(in_bank),
        };
        Ok(station)
    }

    /// The station's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn write_in_force(&self) -> Result<std::sync::RwLockWriteGuard<'_, InForce>> {
        self.in_force
            .write()
            .map_err(|_| Error::new(ErrorKind::Model, "a station lock was poisoned"))
    }

    /// The detector in force and its versions.
    pub fn in_force(&self) -> InForce {
        self.in_force
            .read()
            .map(|g| g.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Saves `bank` into the bank store; answers its SHA-256.
    fn store_bank(dir: &Path, banks: &ContentStore, bank: &PatchBank) -> Result<String> {
        let tmp_dir = dir.join("tmp");
        std::fs::create_dir_all(&tmp_dir).map_err(|e| io_error("creating", &tmp_dir, e))?;
        let tmp = tmp_dir.join(format!("bank-{}.tmp", std::process::id()));
        bank.save(&tmp)?;
        let bytes = std::fs::read(&tmp).map_err(|e| io_error("reading", &tmp, e))?;
        let _ = std::fs::remove_file(&tmp);
        banks.put(&bytes)
    }

    /// The detector a bank version and a threshold make from the base model.
    fn detector_of(&self, bv: &BankVersion, threshold: Option<f64>) -> Result<Detector> {
        let regions: DontCare = serde_json::from_str(&bv.regions).map_err(|e| {
            Error::new(
                ErrorKind::Model,
                format!("bank version {}'s regions: {e}", bv.version),
            )
        })?;
        let base_bank = self.base.scorer()?.bank();
        let mut detector = match &bv.bank_sha256 {
            Some(sha) => {
                self.banks.get(sha)?;
                let bank = ssvp_detect::memory::load_bank(
                    &self.banks.path_of(sha)?,
                    self.base.backbones().device(),
                )?;
                // A model without a bank of its own gets the parts marked good as feedback.
                match base_bank {
                    Some(_) => self.base.with_bank(bank)?,
                    None => self.base.with_feedback(bank)?,
                }
            }
            None => Detector::clone(&self.base),
        };
        detector = detector.with_dont_care((!regions.is_empty()).then_some(regions));
        if let Some(c) = &bv.calibration {
            let calibration: Calibration = serde_json::from_str(c).map_err(|e| {
                Error::new(
                    ErrorKind::Model,
                    format!("bank version {}'s calibration: {e}", bv.version),
                )
            })?;
            detector = detector.with_calibration(calibration)?;
        }
        detector.with_image_threshold(threshold)
    }

    /// Records a part and the result the detector in force gave it (`detection`, scored by
    /// `scored_by`). A result of a detector no longer in force is scored again first, so no
    /// part is stored under a version that is gone. Answers the part.
    pub fn record(
        &self,
        arrival: &Arrival<'_>,
        detection: Detection,
        scored_by: &Arc<Detector>,
    ) -> Result<PartView> {
        let now = self.in_force();
        let detection = if Arc::ptr_eq(scored_by, &now.detector) {
            detection
        } else {
            let input = decode_image(arrival.bytes, arrival.name, &self.options.decode)?;
            now.detector
                .detect(std::slice::from_ref(&input))?
                .pop()
                .ok_or_else(|| Error::new(ErrorKind::Model, "the detector answered nothing"))?
        };
        let sha = self.images.put(arrival.bytes)?;
        let map_png = map_picture(&now.detector, &detection)?;
        let detection_json = json(&detection)?;
        let mut db = lock(&self.db)?;
        let id = store::in_transaction(&mut db, |tx| {
            let id = store::insert_part(
                tx,
                &NewPart {
                    name: arrival.name,
                    sha256: &sha,
                    content_type: media_type(arrival.bytes),
                    width: detection.width,
                    height: detection.height,
                    source: arrival.source,
                },
            )?;
            store::add_result(
                tx,
                id,
                &NewResult {
                    event: "scored",
                    bank_version: now.bank_version,
                    threshold: detection.threshold,
                    score: detection.score,
                    anomalous: detection.anomalous,
                    detection: &detection_json,
                    map_png: &map_png,
                    who: None,
                    why: None,
                },
            )?;
            if let Some(label) = arrival.label {
                store::add_feedback(
                    tx,
                    id,
                    label,
                    arrival.source,
                    "labelled when it was sent",
                    None,
                )?;
            }
            Ok(id)
        })?;
        let row = store::part(&db, id)?;
        drop(db);
        Ok(self.view(&row, &now))
    }

    /// A stored part as shown, decided at the threshold in force.
    fn view(&self, row: &PartRow, now: &InForce) -> PartView {
        let t = now.threshold.value;
        PartView {
            id: row.id,
            name: row.name.clone(),
            sha256: row.sha256.clone(),
            at: row.at.clone(),
            width: row.width,
            height: row.height,
            source: row.source.clone(),
            score: row.score,
            calibrated_score: now
                .detector
                .calibration()
                .zip(t)
                .map(|(c, t)| c.calibrated_score(row.score, t)),
            anomalous: t.map(|t| is_anomalous(row.score, t)),
            feedback: row.feedback,
            in_bank: now.in_bank.contains(&row.id),
            bank_version: row.bank_version,
        }
    }

    /// A page of parts and how many match.
    pub fn parts(&self, query: &PartQuery) -> Result<(usize, Vec<PartView>)> {
        let now = self.in_force();
        let (total, rows) = store::parts(&*lock(&self.db)?, query, now.threshold.value)?;
        Ok((total, rows.iter().map(|r| self.view(r, &now)).collect()))
    }

    /// One part.
    pub fn part(&self, id: i64) -> Result<PartView> {
        let now = self.in_force();
        let row = store::part(&*lock(&self.db)?, id)?;
        Ok(self.view(&row, &now))
    }

    /// One part's current detection (its map left out) and history.
    pub fn part_detail(&self, id: i64) -> Result<(PartView, Detection, Vec<HistoryEntry>)> {
        let now = self.in_force();
        let db = lock(&self.db)?;
        let row = store::part(&db, id)?;
        let (detection, _) = store::current_result(&db, id)?;
        let history = store::history(&db, id)?;
        drop(db);
        let detection: Detection = serde_json::from_str(&detection)
            .map_err(|e| Error::new(ErrorKind::Model, format!("part {id}'s result: {e}")))?;
        Ok((self.view(&row, &now), detection, history))
    }

    /// Whether the station already holds a part with these bytes.
    pub fn holds_image(&self, bytes: &[u8]) -> Result<bool> {
        store::has_image(&*lock(&self.db)?, &crate::files::sha256_hex(bytes))
    }

    /// A part's image bytes and media type.
    pub fn image(&self, id: i64) -> Result<(Vec<u8>, String)> {
        let row = store::part(&*lock(&self.db)?, id)?;
        Ok((self.images.get(&row.sha256)?, row.content_type))
    }

    /// A part's current map picture (PNG).
    pub fn map_png(&self, id: i64) -> Result<Vec<u8>> {
        Ok(store::current_result(&*lock(&self.db)?, id)?.1)
    }

    /// Every part's id, score and label, oldest first.
    pub fn scores(&self) -> Result<Vec<(i64, f64, Option<Label>)>> {
        store::all_scores(&*lock(&self.db)?)
    }

    /// The bank version in force.
    pub fn bank_version(&self) -> Result<BankVersion> {
        let v = self.in_force().bank_version;
        store::bank_version(&*lock(&self.db)?, v)
    }

    /// The changes bank version `version` made.
    pub fn changes(&self, version: i64) -> Result<Vec<Change>> {
        let db = lock(&self.db)?;
        store::bank_version(&db, version)?;
        store::changes(&db, version)
    }

    /// The newest `limit` audit entries.
    pub fn audit_log(&self, limit: usize) -> Result<Vec<store::AuditEntry>> {
        store::audit_log(&*lock(&self.db)?, limit)
    }

    /// Counts for the UI: parts, flagged at the threshold in force, labelled good, defective.
    pub fn counts(&self) -> Result<Counts> {
        let now = self.in_force();
        let scores = self.scores()?;
        Ok(Counts {
            parts: scores.len(),
            anomalous: now.threshold.value.map_or(0, |t| {
                scores
                    .iter()
                    .filter(|(_, s, _)| is_anomalous(*s, t))
                    .count()
            }),
            marked_good: scores
                .iter()
                .filter(|(_, _, l)| *l == Some(Label::Good))
                .count(),
            marked_defective: scores
                .iter()
                .filter(|(_, _, l)| *l == Some(Label::Defective))
                .count(),
        })
    }

    /// Streams every part with its current detection JSON, oldest first.
    pub fn export(&self, each: impl FnMut(&PartView, &str) -> Result<()>) -> Result<()> {
        let now = self.in_force();
        let mut each = each;
        store::for_each_export(&*lock(&self.db)?, |row, detection| {
            each(&self.view(row, &now), detection)
        })
    }

    /// Apply: a new threshold version set by an operator.
    pub fn set_threshold(&self, value: f64, who: &str, why: &str) -> Result<ThresholdVersion> {
        check_threshold(value)?;
        check_who_why(who, why)?;
        let _changing = lock(&self.changing)?;
        let now = self.in_force();
        let detector = Arc::new(self.rebuild_threshold(&now.detector, Some(value))?);
        let mut db = lock(&self.db)?;
        let threshold = store::in_transaction(&mut db, |tx| {
            let version = store::insert_threshold(
                tx,
                &ThresholdVersion {
                    version: 0,
                    value: Some(value),
                    source: "operator".into(),
                    conformal: false,
                    rests_on: now.threshold.rests_on,
                    target_fpr: now.threshold.target_fpr,
                    bank_version: now.bank_version,
                    at: String::new(),
                    who: who.into(),
                    why: why.into(),
                },
            )?;
            store::set_current(tx, now.bank_version, version)?;
            // An undo back to this bank version restores the threshold last applied with it.
            store::set_bank_threshold(tx, now.bank_version, version)?;
            store::audit(
                tx,
                who,
                "threshold",
                &format!(
                    "threshold version {version}: {value:.6} (was {}); {why}",
                    now.threshold
                        .value
                        .map_or("none".into(), |t| format!("{t:.6}"))
                ),
            )?;
            store::threshold(tx, version)
        })?;
        drop(db);
        *self.write_in_force()? = InForce {
            detector,
            threshold: threshold.clone(),
            ..now
        };
        Ok(threshold)
    }

    /// The same detector deciding at another threshold.
    fn rebuild_threshold(&self, detector: &Detector, value: Option<f64>) -> Result<Detector> {
        detector.clone().with_image_threshold(value)
    }

    /// Labels a part. `good` puts its patches into the bank as a new bank version, re-scores
    /// history and re-derives the threshold (module docs); `defective` stores the label only.
    pub fn mark(&self, id: i64, label: Label, who: &str, why: &str) -> Result<ChangeReport> {
        check_who_why(who, why)?;
        let _changing = lock(&self.changing)?;
        let now = self.in_force();
        let row = store::part(&*lock(&self.db)?, id)?;
        if label == Label::Defective {
            let mut db = lock(&self.db)?;
            store::in_transaction(&mut db, |tx| {
                store::add_feedback(tx, id, label, who, why, None)?;
                store::audit(
                    tx,
                    who,
                    "marked defective",
                    &format!("part {id} ({}): {why}", row.name),
                )
            })?;
            return Ok(ChangeReport {
                bank_version: now.bank_version,
                threshold: now.threshold,
                rescored: 0,
                changes: Vec::new(),
            });
        }
        let has_bank = now.detector.scorer()?.bank().is_some();
        if now.in_bank.contains(&id) {
            return Err(Error::new(
                ErrorKind::Mismatch,
                format!("part {id} is already in the bank"),
            ));
        }
        let bytes = self.images.get(&row.sha256)?;
        let input = decode_image(&bytes, &row.name, &self.options.decode)?;
        let name = bank_name(id, &row.sha256);
        // Into the model's bank; a model without one (the trained head) starts a feedback
        // bank with this part (ssvp_detect::scorer::feedback has the rule).
        let grown = if has_bank {
            now.detector
                .grow_bank(std::slice::from_ref(&input.image), vec![name])?
        } else {
            feedback_bank(now.detector.backbones(), &input.image, name)?
        };
        let bank_sha = Self::store_bank(&self.dir, &self.banks, &grown)?;
        let refs = grown.meta().references.len();
        let detector = if has_bank {
            now.detector.with_bank(grown)?
        } else {
            now.detector.with_feedback(grown)?
        };
        let regions = json(&detector.dont_care().cloned().unwrap_or_default())?;
        self.apply_change(
            &now,
            detector,
            Pending {
                bank_sha: Some(bank_sha),
                regions,
                refs,
                event: "marked good",
                carried: true,
                feedback: Some(id),
                who,
                why,
                detail: format!(
                    "part {id} ({}) marked good, its patches added to the bank",
                    row.name
                ),
            },
        )
    }

    /// New don't-care regions (all of them), as a new bank version.
    pub fn set_regions(&self, regions: DontCare, who: &str, why: &str) -> Result<ChangeReport> {
        check_who_why(who, why)?;
        let _changing = lock(&self.changing)?;
        let now = self.in_force();
        let old = now.detector.dont_care().cloned().unwrap_or_default();
        // Regions that only grew can only lower scores (a masked patch scores 0).
        let carried = old
            .polygons()
            .iter()
            .all(|p| regions.polygons().contains(p));
        let bv = self.bank_version()?;
        let detector = Detector::clone(&now.detector)
            .with_dont_care((!regions.is_empty()).then(|| regions.clone()));
        let n = regions.polygons().len();
        self.apply_change(
            &now,
            detector,
            Pending {
                bank_sha: bv.bank_sha256.clone(),
                regions: json(&regions)?,
                refs: bv.refs,
                event: "regions",
                carried,
                feedback: None,
                who,
                why,
                detail: format!("{n} don't-care region(s)"),
            },
        )
    }

    /// Back to the bank version before the one in force, exactly: its bank, regions and
    /// calibration, and the threshold last in force with it (the one applied before the
    /// undone change); the labels the undone version made are marked undone and the
    /// parts it touched are re-scored.
    pub fn undo(&self, who: &str, why: &str) -> Result<ChangeReport> {
        check_who_why(who, why)?;
        let _changing = lock(&self.changing)?;
        let now = self.in_force();
        let (current, parent) = {
            let db = lock(&self.db)?;
            let current = store::bank_version(&db, now.bank_version)?;
            let Some(parent) = current.parent else {
                return Err(Error::new(
                    ErrorKind::NotEnoughData,
                    "there is nothing to undo: this is the bank the station started with",
                ));
            };
            (current, store::bank_version(&db, parent)?)
        };
        let threshold_version = parent
            .threshold_version
            .ok_or_else(|| Error::new(ErrorKind::Model, "a bank version has no threshold"))?;
        let threshold = store::threshold(&*lock(&self.db)?, threshold_version)?;
        let detector = self.detector_of(&parent, threshold.value)?;
        let (rescored, changes, results) = self.rescore(&now, &detector, threshold.value)?;
        let mut db = lock(&self.db)?;
        store::in_transaction(&mut db, |tx| {
            store::undo_feedback_of(tx, current.version)?;
            self.write_results(tx, &results, parent.version, "rescored (undo)", who, why)?;
            store::set_current(tx, parent.version, threshold_version)?;
            store::audit(
                tx,
                who,
                "undo",
                &format!(
                    "bank version {} ({}) undone: version {} and threshold version {} in force \
                     again; {why}",
                    current.version, current.event, parent.version, threshold_version
                ),
            )
        })?;
        drop(db);
        let in_bank = parts_in(detector.scorer()?.bank());
        *self.write_in_force()? = InForce {
            detector: Arc::new(detector),
            bank_version: parent.version,
            threshold: threshold.clone(),
            in_bank: Arc::new(in_bank),
        };
        Ok(ChangeReport {
            bank_version: parent.version,
            threshold,
            rescored,
            changes,
        })
    }

    /// Re-scores the parts worth it with `detector`, deciding at `threshold`: answers how many,
    /// the decisions that turned, and the new results.
    #[allow(clippy::type_complexity)]
    fn rescore(
        &self,
        now: &InForce,
        detector: &Detector,
        threshold: Option<f64>,
    ) -> Result<(usize, Vec<Change>, Vec<(i64, Detection, Vec<u8>)>)> {
        let ids = store::parts_to_rescore(
            &*lock(&self.db)?,
            now.threshold.value,
            self.options.rescore_window,
        )?;
        let mut changes = Vec::new();
        let mut results = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(detector.options().batch_size.max(1)) {
            let mut rows = Vec::with_capacity(chunk.len());
            let mut inputs = Vec::with_capacity(chunk.len());
            for &id in chunk {
                let row = store::part(&*lock(&self.db)?, id)?;
                let bytes = self.images.get(&row.sha256)?;
                inputs.push(decode_image(&bytes, &row.name, &self.options.decode)?);
                rows.push(row);
            }
            for (row, mut d) in rows.into_iter().zip(detector.detect(&inputs)?) {
                if let Some(t) = threshold {
                    detector.decide_at(&mut d, t)?;
                }
                let before = now.threshold.value.map(|t| is_anomalous(row.score, t));
                let after = d.anomalous;
                if let (Some(b), Some(a)) = (before, after) {
                    if a != b {
                        changes.push(Change {
                            id: row.id,
                            name: row.name.clone(),
                            before: Decided {
                                score: row.score,
                                anomalous: b,
                            },
                            after: Decided {
                                score: d.score,
                                anomalous: a,
                            },
                        });
                    }
                }
                let png = map_picture(detector, &d)?;
                results.push((row.id, d, png));
            }
        }
        Ok((ids.len(), changes, results))
    }

    fn write_results(
        &self,
        tx: &Connection,
        results: &[(i64, Detection, Vec<u8>)],
        bank_version: i64,
        event: &str,
        who: &str,
        why: &str,
    ) -> Result<()> {
        for (id, d, png) in results {
            store::add_result(
                tx,
                *id,
                &NewResult {
                    event,
                    bank_version,
                    threshold: d.threshold,
                    score: d.score,
                    anomalous: d.anomalous,
                    detection: &json(d)?,
                    map_png: png,
                    who: Some(who),
                    why: Some(why),
                },
            )?;
        }
        Ok(())
    }

    /// Puts a changed model in force as a new bank version: re-derives the threshold (module
    /// docs), re-scores history, commits it all in one transaction, then swaps the detector.
    fn apply_change(
        &self,
        now: &InForce,
        detector: Detector,
        change: Pending<'_>,
    ) -> Result<ChangeReport> {
        let (detector, threshold_plan) = self.rederive_threshold(now, detector, &change)?;
        let threshold_value = threshold_plan.value;
        let (rescored, changes, results) = self.rescore(now, &detector, threshold_value)?;
        let calibration = detector.calibration().map(json).transpose()?;
        let mut db = lock(&self.db)?;
        let (version, threshold) = store::in_transaction(&mut db, |tx| {
            let version = store::insert_bank_version(
                tx,
                &BankVersion {
                    version: 0,
                    parent: Some(now.bank_version),
                    bank_sha256: change.bank_sha.clone(),
                    regions: change.regions.clone(),
                    refs: change.refs,
                    event: change.event.into(),
                    threshold_version: None,
                    calibration: calibration.clone(),
                    at: String::new(),
                    who: change.who.into(),
                    why: change.why.into(),
                },
            )?;
            let t = store::insert_threshold(
                tx,
                &ThresholdVersion {
                    bank_version: version,
                    who: change.who.into(),
                    ..threshold_plan.clone()
                },
            )?;
            store::set_bank_threshold(tx, version, t)?;
            if let Some(id) = change.feedback {
                store::add_feedback(tx, id, Label::Good, change.who, change.why, Some(version))?;
            }
            self.write_results(tx, &results, version, "rescored", change.who, change.why)?;
            store::insert_changes(tx, version, &changes)?;
            store::set_current(tx, version, t)?;
            store::audit(
                tx,
                change.who,
                change.event,
                &format!(
                    "bank version {version}: {}; threshold version {t}: {} ({}); {} part(s) \
                     re-scored, {} changed decision; {}",
                    change.detail,
                    threshold_value.map_or("none".into(), |v| format!("{v:.6}")),
                    threshold_plan.source,
                    rescored,
                    changes.len(),
                    change.why
                ),
            )?;
            Ok((version, store::threshold(tx, t)?))
        })?;
        drop(db);
        let in_bank = parts_in(detector.scorer()?.bank());
        *self.write_in_force()? = InForce {
            detector: Arc::new(detector),
            bank_version: version,
            threshold: threshold.clone(),
            in_bank: Arc::new(in_bank),
        };
        Ok(ChangeReport {
            bank_version: version,
            threshold,
            rescored,
            changes,
        })
    }

    /// The threshold (and calibration) a changed model gets: re-calibrated on the stored good
    /// parts outside its bank when there are enough, else the old bound carried (valid when
    /// scores can only have fallen), else the old value, no longer called conformal.
    fn rederive_threshold(
        &self,
        now: &InForce,
        detector: Detector,
        change: &Pending<'_>,
    ) -> Result<(Detector, ThresholdVersion)> {
        let old = &now.threshold;
        let base = ThresholdVersion {
            version: 0,
            value: old.value,
            source: old.source.clone(),
            conformal: old.conformal,
            rests_on: old.rests_on,
            target_fpr: old.target_fpr,
            bank_version: 0,
            at: String::new(),
            who: String::new(),
            why: String::new(),
        };
        let calibration = now.detector.calibration().cloned();
        let in_bank = parts_in(detector.scorer()?.bank());
        let pool: Vec<i64> = store::parts_labelled(&*lock(&self.db)?, Label::Good)?
            .into_iter()
            .filter(|id| !in_bank.contains(id))
            .collect();
        let operator = !old.conformal;
        if let (Some(cal), false) = (&calibration, operator) {
            if pool.len() >= min_images(cal.target_fpr) {
                let mut normal = Vec::with_capacity(pool.len());
                for chunk in pool.chunks(detector.options().batch_size.max(1)) {
                    let mut inputs = Vec::with_capacity(chunk.len());
                    for &id in chunk {
                        let row = store::part(&*lock(&self.db)?, id)?;
                        let bytes = self.images.get(&row.sha256)?;
                        inputs.push(decode_image(&bytes, &row.name, &self.options.decode)?);
                    }
                    normal.extend(detector.detect(&inputs)?.iter().map(NormalScore::of));
                }
                let refit = Calibration::fit(
                    &normal,
                    cal.target_fpr,
                    0.0,
                    0,
                    detector.identity().clone(),
                    detector.settings(),
                )?;
                let value = refit.image.threshold;
                let detector = detector
                    .with_calibration(refit)?
                    .with_image_threshold(Some(value))?;
                return Ok((
                    detector,
                    ThresholdVersion {
                        value: Some(value),
                        source: "recalibrated".into(),
                        conformal: true,
                        rests_on: pool.len(),
                        target_fpr: Some(cal.target_fpr),
                        why: format!(
                            "re-calibrated on {} good part(s) outside the bank",
                            pool.len()
                        ),
                        ..base
                    },
                ));
            }
        }
        let detector = match &calibration {
            Some(cal) => {
                let carried = cal.carried_to(detector.identity());
                detector.with_calibration(carried)?
            }
            None => detector,
        };
        let detector = detector.with_image_threshold(old.value)?;
        let (source, conformal, why) = if operator {
            (
                old.source.clone(),
                false,
                "the operator's threshold is kept".to_string(),
            )
        } else if change.carried {
            (
                "carried".to_string(),
                true,
                format!(
                    "the bound is carried: scores can only have fallen; {} good part(s) \
                     outside the bank, too few to re-calibrate",
                    pool.len()
                ),
            )
        } else {
            (
                "kept".to_string(),
                false,
                "regions were removed, so scores may have risen: the value is kept but is no \
                 longer a conformal bound until enough good parts are marked"
                    .to_string(),
            )
        };
        Ok((
            detector,
            ThresholdVersion {
                source,
                conformal,
                why,
                ..base
            },
        ))
    }
}

/// A change on its way in.
struct Pending<'a> {
    bank_sha: Option<String>,
    regions: String,
    refs: usize,
    event: &'a str,
    /// Whether the change can only lower scores (a grown bank or grown regions).
    carried: bool,
    /// The part marked good, if that is the change.
    feedback: Option<i64>,
    who: &'a str,
    why: &'a str,
    detail: String,
}

/// Counts shown by the UI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Parts stored.
    pub parts: usize,
    /// Flagged at the threshold in force.
    pub anomalous: usize,
    /// Labelled good.
    pub marked_good: usize,
    /// Labelled defective.
    pub marked_defective: usize,
}

/// A detection's map as a colour picture at most [`MAP_PICTURE_SIDE`] on its longer side, on
/// the detector's fixed colour scale.
pub fn map_picture(detector: &Detector, detection: &Detection) -> Result<Vec<u8>> {
    let map = &detection.map;
    let longer = map.width.max(map.height).max(1);
    let scale = MAP_PICTURE_SIDE as f64 / longer as f64;
    let small = if scale < 1.0 {
        let w = ((map.width as f64 * scale).round() as usize).max(1);
        let h = ((map.height as f64 * scale).round() as usize).max(1);
        resize_map(map, w, h).map_err(|e| Error::new(ErrorKind::Model, e.to_string()))?
    } else {
        map.clone()
    };
    let heat = colorize(&small.data, small.width, small.height, detector.map_scale())?;
    Ok(encode_png_rgb8(&heat)?)
}
