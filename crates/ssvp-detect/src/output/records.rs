//! `detections.jsonl`: one [`Record`] per image, written as soon as the image is finished.
//!
//! The file is only ever appended to, one whole line per `write` call, so killing the process
//! at any moment leaves every complete line a finished image; at most the last line is cut
//! short, and [`read_records`] (used by `--resume` and the reports) drops it and truncates the
//! file back to its last complete line.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::detection::Detection;
use crate::error::{Error, ErrorKind, Result};

/// Whether an image was scored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Scored: the record has a detection.
    Ok,
    /// Not scored: the record has an error.
    Error,
}

/// Why an image could not be scored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecordError {
    /// Whose fault, as in the library's errors.
    pub kind: ErrorKind,
    /// What happened, naming the file.
    pub message: String,
}

/// What the input file was.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SourceRecord {
    /// `png`, `jpeg`, `bmp` or `tiff`.
    pub format: String,
    /// Stored size, before EXIF orientation.
    pub width: usize,
    /// Stored height.
    pub height: usize,
    /// Stored colour type (`rgb8`, `l16`, `rgba8`, ...).
    pub color: String,
    /// EXIF orientation tag (1 = as stored).
    pub exif_orientation: u8,
}

impl From<&ssvp_image::SourceInfo> for SourceRecord {
    fn from(info: &ssvp_image::SourceInfo) -> Self {
        Self {
            format: info.format.to_string(),
            width: info.width,
            height: info.height,
            color: info.color.clone(),
            exif_orientation: info.exif_orientation,
        }
    }
}

/// The files written for an image, relative to the output directory.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OutputFiles {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    /// The anomaly map file.
    pub map: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    /// The full-size overlay.
    pub overlay: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    /// A small copy of the image, for the report.
    pub thumbnail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    /// A small copy of the overlay, for the report.
    pub overlay_thumbnail: Option<String>,
}

/// One line of `detections.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The input path as given: the key `--resume` skips by.
    pub path: String,
    /// Scored or failed.
    pub status: Status,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    /// Why it failed (`status = error`).
    pub error: Option<RecordError>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    /// The input file's format and stored size.
    pub source: Option<SourceRecord>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    /// The detector's answer (`status = ok`).
    pub detection: Option<Detection>,
    #[serde(default)]
    /// The files written for it.
    pub files: OutputFiles,
    /// The value range `[lo, hi]` of the map PNG and overlay colours:
    /// `level = round(clamp((v - lo) / (hi - lo), 0, 1) · 65535)`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub map_scale: Option<[f32; 2]>,
}

impl Record {
    /// A record for an image that could not be scored.
    pub fn failed(path: String, err: &Error) -> Self {
        Self {
            path,
            status: Status::Error,
            error: Some(RecordError {
                kind: err.kind(),
                message: err.to_string(),
            }),
            source: None,
            detection: None,
            files: OutputFiles::default(),
            map_scale: None,
        }
    }

    /// The decision, when the image was scored and a threshold was known.
    pub fn anomalous(&self) -> Option<bool> {
        self.detection.as_ref().and_then(|d| d.anomalous)
    }
}

/// Appends records to `detections.jsonl`, one flushed line each.
pub struct JsonlWriter {
    path: PathBuf,
    file: File,
}

impl JsonlWriter {
    /// Opens (creating) `path` for appending.
    pub fn append(path: &Path) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        Ok(Self {
            path: path.to_path_buf(),
            file,
        })
    }

    /// Writes one record as one line in a single `write` (with `O_APPEND` the line lands whole
    /// at the end even if another writer appends too) and flushes it to the OS.
    pub fn write(&mut self, record: &Record) -> Result<()> {
        let mut line = serde_json::to_string(record).map_err(Error::model)?;
        line.push('\n');
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.flush())
            .map_err(|e| Error::io(&self.path, e))
    }
}

/// The complete records of a JSONL file. A last line without its newline (an interrupted
/// write) is dropped and, with `repair`, cut off the file so that appending continues cleanly.
/// A complete line that is not a record is an error naming its line number.
pub fn read_records(path: &Path, repair: bool) -> Result<Vec<Record>> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(path, e)),
    };
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if complete < bytes.len() && repair {
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| Error::io(path, e))?;
        f.set_len(complete as u64).map_err(|e| Error::io(path, e))?;
    }
    let text = std::str::from_utf8(&bytes[..complete])
        .map_err(|_| Error::invalid(format!("{} is not UTF-8 text", path.display())))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| {
                Error::invalid(format!(
                    "{}:{}: not a detection record: {e}",
                    path.display(),
                    i + 1
                ))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_last_line_is_dropped_and_repaired() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(super::super::JSONL_FILE);
        let mut w = JsonlWriter::append(&path).unwrap();
        let err = Error::invalid("bad");
        w.write(&Record::failed("a.png".into(), &err)).unwrap();
        w.write(&Record::failed("b.png".into(), &err)).unwrap();
        drop(w);
        let full = std::fs::read(&path).unwrap();
        // Simulate a kill in the middle of the third line.
        let mut cut = full.clone();
        cut.extend_from_slice(b"{\"path\":\"c.png\",\"sta");
        std::fs::write(&path, &cut).unwrap();
        assert_eq!(read_records(&path, false).unwrap().len(), 2);
        assert_eq!(std::fs::read(&path).unwrap(), cut);
        let recs = read_records(&path, true).unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[1].path, "b.png");
        assert_eq!(std::fs::read(&path).unwrap(), full);
        // A garbled complete line is an error with its line number.
        std::fs::write(&path, b"{\"path\":1}\n").unwrap();
        let e = read_records(&path, true).unwrap_err();
        assert!(e.to_string().contains(":1:"), "{e}");
        assert!(read_records(&dir.path().join("none.jsonl"), true)
            .unwrap()
            .is_empty());
    }
}
