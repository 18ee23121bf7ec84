//! Bundles: one file (`line3.ssvp`) that carries a model to an offline line PC: the trained
//! head's run files, a reference bank, a calibration, a config and the backbones' weights, with
//! a manifest that records every member's SHA-256, the backbones the model was made with and
//! the settings its calibration holds for.
//!
//! - [`create`] packs a [`BundleInput`] (atomically; the file is `0644`);
//! - [`Manifest::read`] reads the header and manifest only (fast: `ssvp bundle info`);
//! - [`verify`] re-hashes every member and names the broken ones ([`VerifyReport`]);
//! - [`unpack`] verifies and extracts into a cache folder named by the bundle's digest, once
//!   ([`Unpacked`]: the folders and files a loader is pointed at).
//!
//! Members are safetensors, JSON or TOML only: nothing in a bundle is ever unpickled. The byte
//! layout is in [`format`], the fields in [`manifest`]; docs/formats.md ("Bundle (.ssvp)")
//! describes both.

pub mod format;
pub mod manifest;
pub mod weights;

mod create;
mod extract;

use std::path::{Path, PathBuf};

pub use create::{create, recorded_backbones, weights_to_pack};
pub use extract::{
    default_cache_root, unpack, verify, MemberCheck, MemberStatus, Unpacked, VerifyReport,
};
pub use format::{Header, ALIGN, CONTAINER_VERSION, HEADER_LEN, MAGIC};
pub use manifest::{
    BundleBackbones, Manifest, Member, MemberKind, WeightsRecord, CLIP, DINO, MANIFEST_FORMAT,
    TOWERS,
};
pub use weights::{convert_to_safetensors, nothing_to_pack, resolve_weights, WeightsInput};

use ssvp_features::BackboneIdentity;

/// The file an extraction folder holds beside the members: the manifest's exact bytes.
pub const EXTRACTED_MANIFEST: &str = "manifest.json";
/// The file name of a packed bank.
pub const BANK_MEMBER: &str = "bank.safetensors";
/// The file name of a packed calibration.
pub const CALIBRATION_MEMBER: &str = "calibration.json";
/// The file name of a packed config.
pub const CONFIG_MEMBER: &str = "config.toml";
/// The folder of a packed run directory.
pub const RUN_DIR: &str = "run";

/// What to pack. At least one of the model's parts must be given.
#[derive(Clone, Debug, Default)]
pub struct BundleInput {
    /// A run directory of `ssvp train`: its config, backbone identity, state and the head's
    /// tensors are packed (not the optimiser state or the training log).
    pub checkpoint: Option<PathBuf>,
    /// A bank of `ssvp bank build`.
    pub bank: Option<PathBuf>,
    /// A calibration of `ssvp calibrate`.
    pub calibration: Option<PathBuf>,
    /// An SSVP config file (TOML).
    pub config: Option<PathBuf>,
    /// Backbone weights to carry, one entry per tower ([`resolve_weights`] finds the files;
    /// [`weights_to_pack`] those of the towers the model reads).
    pub weights: Vec<WeightsInput>,
    /// The backbones preset named when packing (`--backbones`), recorded.
    pub backbones_preset: Option<String>,
    /// The identity of the backbones at hand (a bank built while packing), recorded whole.
    pub identity: Option<BackboneIdentity>,
}

/// A member to be written: where its bytes come from.
#[derive(Clone, Debug)]
pub(crate) struct Planned {
    pub path: String,
    pub kind: MemberKind,
    pub tower: Option<String>,
    pub source: PathBuf,
}

/// The bundle's creation time: `SOURCE_DATE_EPOCH` when set (reproducible bundles), else now,
/// as RFC 3339 UTC.
pub(crate) fn created_now() -> String {
    let secs = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        });
    rfc3339(secs)
}

/// Seconds since 1970 as `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian calendar).
pub(crate) fn rfc3339(secs: u64) -> String {
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Whether two paths name the same existing file.
pub(crate) fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
    }
}
