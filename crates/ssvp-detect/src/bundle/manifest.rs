//! The manifest: what a bundle holds, where each member lies and its digest, the backbones
//! and settings the model was made with. JSON, right after the header (docs/formats.md,
//! "Bundle (.ssvp)").

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use serde::{Deserialize, Serialize};
use ssvp_features::BackboneIdentity;

use super::format::{align, check_member_path, read_head, Header};
use crate::error::{Error, ErrorKind, Result};
use crate::settings::{DetectorSettings, ModelIdentity};

/// Version of the manifest's fields. Fields may be added without a new version (readers ignore
/// what they do not know); a field that changes meaning or goes away bumps it, and a reader
/// refuses a manifest newer than it knows.
pub const MANIFEST_FORMAT: u32 = 1;

/// The CLIP tower's name in members and weights records.
pub const CLIP: &str = "clip";
/// The DINO tower's name.
pub const DINO: &str = "dino";
/// Every tower a bundle may carry weights for, in manifest order.
pub const TOWERS: [&str; 2] = [CLIP, DINO];

/// What a member is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberKind {
    /// A file of a run directory of `ssvp train` (under `run/`: config, backbone identity,
    /// state, the head's tensors).
    Run,
    /// A reference bank of `ssvp bank build` (safetensors).
    Bank,
    /// A calibration of `ssvp calibrate` (JSON).
    Calibration,
    /// An SSVP config file (TOML): the backbones' sizes and post-processing.
    Config,
    /// A file of a tower's weights (under `weights/<tower>/`: safetensors, an index, config.json).
    Weights,
}

impl MemberKind {
    /// The name used in the manifest.
    pub fn as_str(self) -> &'static str {
        match self {
            MemberKind::Run => "run",
            MemberKind::Bank => "bank",
            MemberKind::Calibration => "calibration",
            MemberKind::Config => "config",
            MemberKind::Weights => "weights",
        }
    }
}

/// One file inside the bundle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Its path inside the bundle (and under the extraction folder), `/`-separated.
    pub path: String,
    /// What it is.
    pub kind: MemberKind,
    /// The tower of a weights member (`clip`, `dino`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tower: Option<String>,
    /// Absolute byte offset in the bundle (a multiple of 64).
    pub offset: u64,
    /// Length in bytes.
    pub length: u64,
    /// SHA-256 of its bytes, lowercase hex.
    pub sha256: String,
}

/// The backbones the model was made with, as the run, the bank and the calibration record
/// them (they must agree).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BundleBackbones {
    /// The CLIP weights as named when the model was made (a path, a hub id or `tiny`).
    pub clip: String,
    /// The DINO weights as named.
    pub dino: String,
    /// The backbones' identity digest as each artifact records it (`checkpoint`: the run's
    /// `BackboneIdentity::digest`; `bank`: the digest of the towers the bank reads;
    /// `calibration`: the detector's), keyed by artifact.
    pub digests: BTreeMap<String, String>,
    /// The towers the model reads (`clip`, `dino`): the head reads both, a bank its taps'.
    pub towers: Vec<String>,
    /// The backbones preset named when packing (`tiny`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preset: Option<String>,
    /// The whole `BackboneIdentity` where one is recorded (a run's `backbones.json`, or the
    /// backbones a bank was built with while packing), as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<serde_json::Value>,
    /// The backbone settings (preset, weights, sizes, taps) the bank or calibration recorded
    /// to rebuild the same towers (`ssvp_features::BackbonesRecord`), as JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub made_with: Option<serde_json::Value>,
    /// What named the weights specs above: `backbones` (built while packing), `checkpoint`,
    /// `bank`, `calibration`, `config` or `preset`.
    pub named_by: String,
}

impl BundleBackbones {
    /// The recorded identity, typed (`None` without one or when it no longer parses).
    pub fn backbone_identity(&self) -> Option<BackboneIdentity> {
        self.identity
            .as_ref()
            .and_then(|v| serde_json::from_value(v.clone()).ok())
    }

    /// The weights spec recorded for `tower`.
    pub fn spec(&self, tower: &str) -> Option<&str> {
        match tower {
            CLIP => Some(&self.clip),
            DINO => Some(&self.dino),
            _ => None,
        }
    }

    /// Whether the model reads `tower`.
    pub fn reads(&self, tower: &str) -> bool {
        self.towers.iter().any(|t| t == tower)
    }
}

/// One tower's weights: packed, or why not.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightsRecord {
    /// `clip` or `dino`.
    pub tower: String,
    /// The weights as named (a path, a hub id, `tiny`).
    pub spec: String,
    /// Whether the bundle carries them.
    pub packed: bool,
    /// The folder a loader is pointed at (`weights/<tower>`), when packed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<String>,
    /// The member paths of these weights.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
    /// `ssvp_features::identity::weights_fingerprint` of the weights file as resolved when
    /// packing: what a `BackboneIdentity` made from them records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fingerprint: Option<String>,
    /// The fingerprint of the packed weights file where it differs from `fingerprint` (a
    /// converted `.pth`): a loader of the bundle maps it back to `fingerprint`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub packed_fingerprint: Option<String>,
    /// The file name of a PyTorch checkpoint that was converted to safetensors (same tensor
    /// names) when packing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub converted_from: Option<String>,
    /// Why nothing is packed, or what to know about what is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The manifest of a bundle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_FORMAT`] of the writer.
    pub format: u32,
    /// The ssvp version that wrote it.
    pub ssvp_version: String,
    /// When it was written, RFC 3339 UTC (`SOURCE_DATE_EPOCH` when set, for reproducible
    /// bundles).
    pub created: String,
    /// How the model scores: `head`, `references`, `fused`, `mutual`, or `none` (backbones and
    /// settings only).
    pub scoring: String,
    /// Every member, in file order.
    pub members: Vec<Member>,
    /// The backbones the model was made with.
    pub backbones: BundleBackbones,
    /// Each tower's weights, packed or not.
    pub weights: Vec<WeightsRecord>,
    /// The settings the calibration holds for (class name, map size, post-processing, tiling,
    /// the scorer's own), when a calibration is packed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings: Option<DetectorSettings>,
    /// The model the calibration was made for (head, bank and backbones digests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelIdentity>,
}

impl Manifest {
    /// Reads the header and manifest of the bundle at `path` (the members are not read: see
    /// `bundle::verify`). Refuses a file that is not a bundle, a newer container or manifest
    /// format, a manifest whose digest does not match the header, and a member table whose
    /// layout is not the canonical one.
    pub fn read(path: &Path) -> Result<Self> {
        Ok(Self::read_with_header(path)?.1)
    }

    /// [`Manifest::read`], also returning the header and the file's length.
    pub fn read_with_header(path: &Path) -> Result<(Header, Self, u64)> {
        let (header, bytes, file_len) = read_head(path)?;
        Ok((
            header.clone(),
            Self::from_bytes(&header, &bytes, path)?,
            file_len,
        ))
    }

    /// The manifest of `bytes` (read after `header` from the bundle at `path`), checked.
    pub(crate) fn from_bytes(header: &Header, bytes: &[u8], path: &Path) -> Result<Self> {
        let manifest = Self::parse(bytes, path)?;
        manifest.check_layout(header, path)?;
        Ok(manifest)
    }

    /// Parses manifest bytes, refusing a newer format (read first, on its own: the other
    /// fields may have changed with it). Parsed straight from the bytes, so that values kept as
    /// JSON text (a scorer's settings) keep their key order.
    fn parse(bytes: &[u8], path: &Path) -> Result<Self> {
        #[derive(Deserialize)]
        struct Format {
            format: Option<u64>,
        }
        let not_json = |e: serde_json::Error| {
            Error::invalid(format!(
                "{}: the bundle manifest is not valid: {e}",
                path.display()
            ))
        };
        match serde_json::from_slice::<Format>(bytes)
            .map_err(not_json)?
            .format
        {
            Some(f) if f == u64::from(MANIFEST_FORMAT) => {}
            Some(f) => {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "{}: bundle manifest format {f}, this build reads format \
                         {MANIFEST_FORMAT}",
                        path.display()
                    ),
                ))
            }
            None => {
                return Err(Error::invalid(format!(
                    "{}: the bundle manifest has no `format`",
                    path.display()
                )))
            }
        }
        serde_json::from_slice(bytes).map_err(not_json)
    }

    /// Checks the member table against the header: safe, unique paths; each member at the
    /// aligned end of the one before; the data ending with the last member.
    fn check_layout(&self, header: &Header, path: &Path) -> Result<()> {
        let bad = |why: String| {
            Error::invalid(format!(
                "{}: inconsistent bundle manifest: {why}",
                path.display()
            ))
        };
        if self.members.is_empty() {
            return Err(bad("it lists no member".into()));
        }
        let mut seen = BTreeSet::new();
        let mut next = header.data_offset;
        for m in &self.members {
            check_member_path(&m.path)?;
            if !seen.insert(m.path.as_str()) || m.path == super::EXTRACTED_MANIFEST {
                return Err(bad(format!(
                    "the member path `{}` is reserved or repeated",
                    m.path
                )));
            }
            if m.offset != next {
                return Err(bad(format!(
                    "member `{}` at offset {}, expected {next}",
                    m.path, m.offset
                )));
            }
            if m.sha256.len() != 64 || !m.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(format!("member `{}` has no sha256", m.path)));
            }
            let end = m
                .offset
                .checked_add(m.length)
                .ok_or_else(|| bad(format!("member `{}` has length {}", m.path, m.length)))?;
            next = align(end);
            if m.kind == MemberKind::Weights && m.tower.is_none() {
                return Err(bad(format!("weights member `{}` names no tower", m.path)));
            }
        }
        let last = self.members.last().expect("not empty");
        let end = last.offset + last.length;
        if end != header.file_len() {
            return Err(bad(format!(
                "the members end at byte {end}, the header puts the end of the data at {}",
                header.file_len()
            )));
        }
        Ok(())
    }

    /// The members of `kind`.
    pub fn members_of(&self, kind: MemberKind) -> impl Iterator<Item = &Member> {
        self.members.iter().filter(move |m| m.kind == kind)
    }

    /// The member at `path`.
    pub fn member(&self, path: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.path == path)
    }

    /// The weights record of `tower`.
    pub fn weights_of(&self, tower: &str) -> Option<&WeightsRecord> {
        self.weights.iter().find(|w| w.tower == tower)
    }

    /// Total bytes of the members.
    pub fn members_len(&self) -> u64 {
        self.members.iter().map(|m| m.length).sum()
    }
}
