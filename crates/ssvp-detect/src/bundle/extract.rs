//! Reading bundles back: [`verify`] re-hashes every member, [`unpack`] extracts them (verified)
//! into a cache folder named by the bundle's digest.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::format::{copy_hashing, first_nonzero, hex, read_head, HEADER_LEN};
use super::manifest::{Manifest, MemberKind, CLIP, DINO};
use super::EXTRACTED_MANIFEST;
use crate::error::{Error, ErrorKind, Result};

/// How one member fared.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum MemberStatus {
    /// Its bytes hash to the manifest's digest.
    Ok,
    /// Its bytes hash to something else.
    Corrupt {
        /// The SHA-256 found.
        sha256: String,
    },
    /// The file ends inside (or before) it.
    Truncated {
        /// How many of its bytes the file holds.
        available: u64,
    },
}

/// One member's check.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MemberCheck {
    /// Its path in the bundle.
    pub path: String,
    /// What it is.
    pub kind: MemberKind,
    /// Its tower, for weights.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tower: Option<String>,
    /// Its length in bytes.
    pub length: u64,
    /// The digest the manifest records.
    pub expected: String,
    /// What was found.
    #[serde(flatten)]
    pub status: MemberStatus,
}

impl MemberCheck {
    /// The problem in words, if there is one.
    pub fn problem(&self) -> Option<String> {
        let what = match &self.tower {
            Some(t) => format!("`{}` ({} {t})", self.path, self.kind.as_str()),
            None => format!("`{}` ({})", self.path, self.kind.as_str()),
        };
        match &self.status {
            MemberStatus::Ok => None,
            MemberStatus::Corrupt { sha256 } => Some(format!(
                "member {what} is corrupt: its sha256 is {sha256}, the manifest records {}",
                self.expected
            )),
            MemberStatus::Truncated { available } => Some(format!(
                "member {what} is truncated: {available} of its {} bytes are in the file",
                self.length
            )),
        }
    }
}

/// What [`verify`] found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// The bundle.
    pub path: PathBuf,
    /// The bundle's id (the manifest's SHA-256).
    pub id: String,
    /// The file's length.
    pub file_len: u64,
    /// The length the header and manifest give.
    pub expected_len: u64,
    /// Every member, in file order.
    pub members: Vec<MemberCheck>,
    /// Problems of the file outside the members (truncation, trailing bytes, non-zero padding).
    pub problems: Vec<String>,
}

impl VerifyReport {
    /// Whether every digest holds and the file is exactly what the manifest describes.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty() && self.broken().next().is_none()
    }

    /// The members whose bytes do not hold.
    pub fn broken(&self) -> impl Iterator<Item = &MemberCheck> {
        self.members.iter().filter(|m| m.status != MemberStatus::Ok)
    }

    /// Every problem in words: the broken members first, then the file's.
    pub fn problem_messages(&self) -> Vec<String> {
        self.members
            .iter()
            .filter_map(MemberCheck::problem)
            .chain(self.problems.iter().cloned())
            .collect()
    }

    /// `Ok` when [`VerifyReport::is_ok`], else an [`ErrorKind::InvalidInput`] error naming
    /// every broken member and problem.
    pub fn ensure_ok(&self) -> Result<()> {
        if self.is_ok() {
            return Ok(());
        }
        Err(Error::invalid(format!(
            "the bundle {} is damaged: {}",
            self.path.display(),
            self.problem_messages().join("; ")
        )))
    }
}

/// Re-hashes every member of the bundle at `path`. A file that is not a bundle, of a newer
/// version, or whose header or manifest is damaged is an error; damaged members, truncation
/// and stray bytes are reported ([`VerifyReport::is_ok`], [`VerifyReport::ensure_ok`]).
pub fn verify(path: &Path) -> Result<VerifyReport> {
    let (header, manifest, file_len) = Manifest::read_with_header(path)?;
    let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
    let io = |e: std::io::Error| Error::io(path, e);
    let expected_len = header.file_len();
    let mut problems = Vec::new();
    if file_len < expected_len {
        problems.push(format!(
            "the file is truncated: {file_len} of its {expected_len} bytes"
        ));
    } else if file_len > expected_len {
        problems.push(format!(
            "{} bytes follow the last member (the file should end at byte {expected_len})",
            file_len - expected_len
        ));
    }
    // Padding: after the manifest, and between members.
    let manifest_end = HEADER_LEN + header.manifest_len;
    let mut gaps = vec![("the manifest".to_string(), manifest_end, header.data_offset)];
    for pair in manifest.members.windows(2) {
        let end = pair[0].offset + pair[0].length;
        gaps.push((format!("member `{}`", pair[0].path), end, pair[1].offset));
    }
    for (after, start, end) in gaps {
        if let Some(at) = first_nonzero(&mut file, start, end - start).map_err(io)? {
            problems.push(format!(
                "a non-zero byte at offset {at} in the padding after {after}"
            ));
        }
    }
    let mut members = Vec::with_capacity(manifest.members.len());
    for m in &manifest.members {
        file.seek(SeekFrom::Start(m.offset)).map_err(io)?;
        let (digest, n) = if m.offset >= file_len {
            ([0; 32], 0)
        } else {
            copy_hashing(&mut file, None, m.length).map_err(io)?
        };
        let status = if n < m.length {
            MemberStatus::Truncated { available: n }
        } else if hex(&digest) != m.sha256 {
            MemberStatus::Corrupt {
                sha256: hex(&digest),
            }
        } else {
            MemberStatus::Ok
        };
        members.push(MemberCheck {
            path: m.path.clone(),
            kind: m.kind,
            tower: m.tower.clone(),
            length: m.length,
            expected: m.sha256.clone(),
            status,
        });
    }
    Ok(VerifyReport {
        path: path.to_path_buf(),
        id: header.id(),
        file_len,
        expected_len,
        members,
        problems,
    })
}

/// A bundle extracted into its cache folder.
#[derive(Clone, Debug)]
pub struct Unpacked {
    /// The folder: `<cache root>/<id>`.
    pub dir: PathBuf,
    /// The bundle's id (the manifest's SHA-256).
    pub id: String,
    /// The manifest.
    pub manifest: Manifest,
    /// Whether an earlier extraction was reused (after its digests were checked).
    pub reused: bool,
    /// The run directory (`run/`), when a checkpoint is packed.
    pub checkpoint: Option<PathBuf>,
    /// The bank file.
    pub bank: Option<PathBuf>,
    /// The calibration file.
    pub calibration: Option<PathBuf>,
    /// The config file.
    pub config: Option<PathBuf>,
    /// The CLIP weights folder (`model.safetensors` and `config.json`, or an index and its
    /// shards): what `--clip-weights` is pointed at.
    pub clip_weights: Option<PathBuf>,
    /// The DINO weights folder.
    pub dino_weights: Option<PathBuf>,
}

/// The bundle cache when none is given: `$SSVP_CACHE`, else `$XDG_CACHE_HOME/ssvp/bundles`,
/// else `~/.cache/ssvp/bundles`. Nothing of the Hugging Face settings is read.
pub fn default_cache_root() -> Result<PathBuf> {
    cache_root_from(|key| std::env::var_os(key))
}

/// [`default_cache_root`] with the environment given.
pub(crate) fn cache_root_from(var: impl Fn(&str) -> Option<std::ffi::OsString>) -> Result<PathBuf> {
    let var = |key: &str| var(key).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = var("SSVP_CACHE") {
        return Ok(dir);
    }
    if let Some(xdg) = var("XDG_CACHE_HOME") {
        return Ok(xdg.join("ssvp").join("bundles"));
    }
    if let Some(home) = var("HOME") {
        return Ok(home.join(".cache").join("ssvp").join("bundles"));
    }
    Err(Error::invalid(
        "no folder to unpack bundles into: set SSVP_CACHE (or XDG_CACHE_HOME or HOME)",
    ))
}

/// Extracts the bundle at `path` into `cache_root/<id>` (`id`: the manifest's SHA-256) and
/// returns where each part lies. Every member is hashed as it is extracted; a damaged member
/// is an error naming it, and nothing is left behind. An existing extraction is reused after
/// its files are hashed again (a damaged one is replaced). Members are written into a
/// temporary folder renamed into place at the end, so a killed unpack never leaves a partial
/// folder under the final name.
pub fn unpack(path: &Path, cache_root: &Path) -> Result<Unpacked> {
    let (header, manifest_bytes, file_len) = read_head(path)?;
    let manifest = Manifest::from_bytes(&header, &manifest_bytes, path)?;
    let id = header.id();
    let dir = cache_root.join(&id);
    if file_len < header.file_len() {
        return Err(Error::invalid(format!(
            "{} is truncated: {file_len} of its {} bytes",
            path.display(),
            header.file_len()
        )));
    }
    if dir.exists() {
        if extraction_holds(&dir, &manifest, &manifest_bytes)? {
            return Ok(unpacked(dir, id, manifest, true));
        }
        discard(&dir, cache_root)?;
    }
    std::fs::create_dir_all(cache_root).map_err(|e| Error::io(cache_root, e))?;
    let tmp = ssvp_util::fs::temp_sibling(&dir).map_err(|e| Error::io(&dir, e))?;
    let extracted = extract_into(path, &tmp, &manifest, &manifest_bytes);
    if let Err(e) = extracted {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    match std::fs::rename(&tmp, &dir) {
        Ok(()) => Ok(unpacked(dir, id, manifest, false)),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            // Another process got there first: use its extraction if it holds.
            if dir.exists() && extraction_holds(&dir, &manifest, &manifest_bytes)? {
                Ok(unpacked(dir, id, manifest, true))
            } else {
                Err(Error::io(&dir, e))
            }
        }
    }
}

/// Writes every member (verified) and the manifest into the new folder `tmp`.
fn extract_into(
    bundle: &Path,
    tmp: &Path,
    manifest: &Manifest,
    manifest_bytes: &[u8],
) -> Result<()> {
    std::fs::create_dir(tmp).map_err(|e| Error::io(tmp, e))?;
    let mut file = File::open(bundle).map_err(|e| Error::io(bundle, e))?;
    for m in &manifest.members {
        let out = tmp.join(&m.path);
        if let Some(parent) = out.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        file.seek(SeekFrom::Start(m.offset))
            .map_err(|e| Error::io(bundle, e))?;
        let target = File::create(&out).map_err(|e| Error::io(&out, e))?;
        let mut w = BufWriter::with_capacity(1 << 20, target);
        let (digest, n) =
            copy_hashing(&mut file, Some(&mut w), m.length).map_err(|e| Error::io(&out, e))?;
        let target = w
            .into_inner()
            .map_err(|e| Error::io(&out, e.into_error()))?;
        if n < m.length || hex(&digest) != m.sha256 {
            let check = MemberCheck {
                path: m.path.clone(),
                kind: m.kind,
                tower: m.tower.clone(),
                length: m.length,
                expected: m.sha256.clone(),
                status: if n < m.length {
                    MemberStatus::Truncated { available: n }
                } else {
                    MemberStatus::Corrupt {
                        sha256: hex(&digest),
                    }
                },
            };
            return Err(Error::invalid(format!(
                "cannot unpack {}: {}",
                bundle.display(),
                check.problem().unwrap_or_default()
            )));
        }
        target.sync_all().map_err(|e| Error::io(&out, e))?;
    }
    let marker = tmp.join(EXTRACTED_MANIFEST);
    let mut f = File::create(&marker).map_err(|e| Error::io(&marker, e))?;
    f.write_all(manifest_bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(&marker, e))
}

/// Whether `dir` holds this manifest and every member with its digest.
fn extraction_holds(dir: &Path, manifest: &Manifest, manifest_bytes: &[u8]) -> Result<bool> {
    match std::fs::read(dir.join(EXTRACTED_MANIFEST)) {
        Ok(found) if found == manifest_bytes => {}
        Ok(_) => return Ok(false),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(Error::io(&dir.join(EXTRACTED_MANIFEST), e)),
    }
    for m in &manifest.members {
        let path = dir.join(&m.path);
        let mut f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(Error::io(&path, e)),
        };
        let len = f.metadata().map_err(|e| Error::io(&path, e))?.len();
        if len != m.length {
            return Ok(false);
        }
        let (digest, _) = copy_hashing(&mut f, None, m.length).map_err(|e| Error::io(&path, e))?;
        if hex(&digest) != m.sha256 {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Moves a damaged extraction out of the way (atomically) and deletes it.
fn discard(dir: &Path, cache_root: &Path) -> Result<()> {
    let aside = ssvp_util::fs::temp_sibling(dir)
        .map_err(|e| Error::io(dir, e))?
        .with_extension("stale");
    match std::fs::rename(dir, &aside) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(Error::new(
                ErrorKind::Io,
                format!(
                    "the extraction {} in {} is damaged and cannot be moved aside: {e}",
                    dir.display(),
                    cache_root.display()
                ),
            ))
        }
    }
    std::fs::remove_dir_all(&aside).map_err(|e| Error::io(&aside, e))
}

fn unpacked(dir: PathBuf, id: String, manifest: Manifest, reused: bool) -> Unpacked {
    let first = |kind: MemberKind| manifest.members_of(kind).next().map(|m| dir.join(&m.path));
    let weights = |tower: &str| {
        manifest
            .weights_of(tower)
            .filter(|w| w.packed)
            .and_then(|w| w.dir.as_ref())
            .map(|d| dir.join(d))
    };
    let has_run = manifest.members_of(MemberKind::Run).next().is_some();
    Unpacked {
        checkpoint: has_run.then(|| dir.join(super::RUN_DIR)),
        bank: first(MemberKind::Bank),
        calibration: first(MemberKind::Calibration),
        config: first(MemberKind::Config),
        clip_weights: weights(CLIP),
        dino_weights: weights(DINO),
        dir,
        id,
        manifest,
        reused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsString;

    #[test]
    fn the_cache_root_comes_from_the_environment_in_order() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(key, _)| *key == k)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        let root = |pairs| cache_root_from(env(pairs)).unwrap();
        assert_eq!(
            root(&[
                ("SSVP_CACHE", "/c"),
                ("XDG_CACHE_HOME", "/x"),
                ("HOME", "/h")
            ]),
            PathBuf::from("/c")
        );
        assert_eq!(
            root(&[("SSVP_CACHE", ""), ("XDG_CACHE_HOME", "/x"), ("HOME", "/h")]),
            PathBuf::from("/x/ssvp/bundles")
        );
        assert_eq!(
            root(&[("HOME", "/h")]),
            PathBuf::from("/h/.cache/ssvp/bundles")
        );
        assert!(cache_root_from(env(&[])).is_err());
    }
}
