//! Packing: reads what the parts of a model record about each other (the backbones, the head
//! and bank a calibration was made for, the towers they read), refuses parts that do not
//! belong together, and writes the bundle through a temporary file.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use ssvp_features::BackboneIdentity;

use super::format::{align, copy_hashing, hex, Header, CONTAINER_VERSION, HEADER_LEN};
use super::manifest::{
    BundleBackbones, Manifest, Member, MemberKind, WeightsRecord, CLIP, DINO, MANIFEST_FORMAT,
    TOWERS,
};
use super::weights::{check_tower, nothing_to_pack, plan_weights, resolve_weights, WeightsInput};
use super::{
    created_now, same_file, BundleInput, Planned, BANK_MEMBER, CALIBRATION_MEMBER, CONFIG_MEMBER,
};
use crate::calibrate::Calibration;
use crate::error::{Error, ErrorKind, Result};
use crate::memory::load_bank;
use crate::settings::{DetectorSettings, ModelIdentity};

/// What the parts of a model say, read once.
struct Sources {
    members: Vec<Planned>,
    backbones: BundleBackbones,
    scoring: String,
    settings: Option<DetectorSettings>,
    model: Option<ModelIdentity>,
    /// The whole identity, where one is recorded (a run, or backbones at hand).
    identity: Option<BackboneIdentity>,
}

/// The run's files to pack and its backbones' identity (whole and as JSON).
#[cfg(feature = "head")]
fn run_files(dir: &Path) -> Result<(Vec<Planned>, BackboneIdentity, serde_json::Value)> {
    use ssvp_model::run_dir::{RunDir, CONFIG_FILE, IDENTITY_FILE, STATE_FILE};
    let context = |e: ssvp_model::Error| {
        Error::from(e).context(format!("packing the checkpoint {}", dir.display()))
    };
    let run = RunDir::open(dir).map_err(context)?;
    let state = run.read_state().map_err(context)?;
    let identity: BackboneIdentity = run.read_identity().map_err(context)?;
    let value = run.read_identity_value().map_err(context)?;
    let mut members = Vec::new();
    for name in [
        CONFIG_FILE,
        IDENTITY_FILE,
        STATE_FILE,
        state.head_file.as_str(),
    ] {
        super::format::check_member_path(name)?;
        let source = run.file(name);
        if !source.is_file() {
            return Err(Error::new(
                ErrorKind::NotFound,
                format!(
                    "the checkpoint {} has no {name} (its state.json names it)",
                    dir.display()
                ),
            ));
        }
        members.push(Planned {
            path: format!("{}/{name}", super::RUN_DIR),
            kind: MemberKind::Run,
            tower: None,
            source,
        });
    }
    Ok((members, identity, value))
}

#[cfg(not(feature = "head"))]
fn run_files(_: &Path) -> Result<(Vec<Planned>, BackboneIdentity, serde_json::Value)> {
    Err(Error::new(
        ErrorKind::Unsupported,
        "this build has no trained head (built without the `head` feature): it cannot pack a \
         checkpoint",
    ))
}

/// `clip / dino` as banks and calibrations name their backbones.
fn split_names(names: &str) -> Option<(String, String)> {
    names
        .split_once(" / ")
        .map(|(c, d)| (c.trim().to_string(), d.trim().to_string()))
}

/// The towers named by feature taps (`dino.12`, `clip.24`).
fn towers_of_taps<'a>(taps: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
    taps.into_iter()
        .filter_map(|t| t.split('.').next())
        .filter(|t| TOWERS.contains(t))
        .map(str::to_string)
        .collect()
}

/// The towers a training-free scorer's settings (as a calibration records them) read; `None`
/// for a scorer these rules do not know.
fn towers_of_settings(settings: &serde_json::Value) -> Option<BTreeSet<String>> {
    match settings.get("mode")?.as_str()? {
        "references" => {
            let taps = settings.get("taps")?.as_array()?;
            Some(towers_of_taps(taps.iter().filter_map(|t| t.as_str())))
        }
        "mutual" => match settings.get("taps")?.get("towers")?.as_str()? {
            "both" => Some(TOWERS.iter().map(|t| t.to_string()).collect()),
            one if TOWERS.contains(&one) => Some(BTreeSet::from([one.to_string()])),
            _ => None,
        },
        _ => None,
    }
}

/// The `[backbones]` weights a config file names, if it names them.
fn config_specs(path: &Path) -> Result<Option<(String, String)>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let value: toml::Table = toml::from_str(&text)
        .map_err(|e| Error::invalid(format!("{}: not a TOML config: {e}", path.display())))?;
    let backbones = value.get("backbones").and_then(|b| b.as_table());
    let spec = |tower: &str| {
        backbones
            .and_then(|b| b.get(tower))
            .and_then(|v| v.as_str())
            .map(str::to_string)
    };
    Ok(spec(CLIP).zip(spec(DINO)))
}

/// Whether a JSON field is present and not null.
fn present(value: &serde_json::Value, key: &str) -> Option<serde_json::Value> {
    value.get(key).filter(|v| !v.is_null()).cloned()
}

fn read_sources(input: &BundleInput) -> Result<Sources> {
    if input.checkpoint.is_none()
        && input.bank.is_none()
        && input.calibration.is_none()
        && input.config.is_none()
        && input.weights.is_empty()
    {
        return Err(Error::invalid(
            "nothing to pack: give a checkpoint, a bank, a calibration, a config or weights",
        ));
    }
    let mut members = Vec::new();
    let mut digests = BTreeMap::new();
    let mut towers: BTreeSet<String> = BTreeSet::new();
    let mut towers_known = false;
    // Weights specs, by priority: backbones at hand, the run, what a bank or calibration
    // recorded, a config, a preset.
    let mut specs: Vec<((String, String), &str)> = Vec::new();
    let mut identity_value = None;
    let mut identity = None;
    let mut made_with = None;

    if let Some(live) = &input.identity {
        digests.insert("backbones".to_string(), live.digest());
        specs.push(((live.clip.clone(), live.dino.clone()), "backbones"));
        identity_value = Some(serde_json::to_value(live).map_err(Error::model)?);
        identity = Some(live.clone());
    }

    if let Some(dir) = &input.checkpoint {
        let (files, run_identity, value) = run_files(dir)?;
        members.extend(files);
        digests.insert("checkpoint".to_string(), run_identity.digest());
        specs.push((
            (run_identity.clip.clone(), run_identity.dino.clone()),
            "checkpoint",
        ));
        if let Some(live) = &identity {
            live.check_matches(&run_identity).map_err(|e| {
                Error::from(e).context(format!(
                    "the backbones at hand are not those the checkpoint {} was trained with",
                    dir.display()
                ))
            })?;
        } else {
            identity_value = Some(value);
            identity = Some(run_identity);
        }
        // The head reads both towers, whole.
        towers.extend(TOWERS.iter().map(|t| t.to_string()));
        towers_known = true;
    }

    if let Some(path) = &input.config {
        config_specs(path)?
            .into_iter()
            .for_each(|s| specs.push((s, "config")));
        members.push(Planned {
            path: CONFIG_MEMBER.into(),
            kind: MemberKind::Config,
            tower: None,
            source: path.clone(),
        });
    }

    if let Some(path) = &input.bank {
        let bank = load_bank(path, &candle_core::Device::Cpu)
            .map_err(|e| e.context(format!("packing the bank {}", path.display())))?;
        if let Some(id) = &identity {
            crate::memory::taps_of_bank(&bank, id).map_err(|e| {
                e.context(format!(
                    "the bank {} does not fit the backbones of the model",
                    path.display()
                ))
            })?;
        }
        let meta = serde_json::to_value(bank.meta()).map_err(Error::model)?;
        digests.insert("bank".to_string(), bank.meta().backbones.clone());
        if let Some(found) = present(&meta, "made_with") {
            made_with = Some(found);
        }
        if let Some(names) = split_names(&bank.meta().backbone_names) {
            specs.push((names, "bank"));
        }
        towers.extend(towers_of_taps(bank.meta().taps.iter().map(String::as_str)));
        towers_known = true;
        members.push(Planned {
            path: BANK_MEMBER.into(),
            kind: MemberKind::Bank,
            tower: None,
            source: path.clone(),
        });
    }

    let mut calibration = None;
    if let Some(path) = &input.calibration {
        let cal = Calibration::read(path)?;
        let value = serde_json::to_value(&cal).map_err(Error::model)?;
        let what = format!("the calibration {}", path.display());
        if !cal.model.head.is_empty() && input.checkpoint.is_none() {
            return Err(Error::new(
                ErrorKind::Mismatch,
                format!(
                    "{what} was made for a trained head ({}): pack its run directory too \
                     (--checkpoint)",
                    cal.model.checkpoint
                ),
            ));
        }
        if cal.model.head.is_empty() && input.checkpoint.is_some() {
            return Err(Error::new(
                ErrorKind::Mismatch,
                format!("{what} was made without a trained head: a detector with this checkpoint refuses it"),
            ));
        }
        if !cal.model.bank.is_empty() && input.bank.is_none() {
            return Err(Error::new(
                ErrorKind::Mismatch,
                format!("{what} was made with a reference bank: pack the bank too (--bank)"),
            ));
        }
        if cal.model.bank.is_empty() && input.bank.is_some() {
            return Err(Error::new(
                ErrorKind::Mismatch,
                format!("{what} was made without a reference bank: a detector with this bank refuses it"),
            ));
        }
        if let (Some(dir), Some(run)) = (&input.checkpoint, digests.get("checkpoint")) {
            if &cal.model.backbones != run {
                return Err(Error::new(
                    ErrorKind::Mismatch,
                    format!(
                        "{what} was made with other backbones ({}) than the checkpoint {}",
                        cal.model.backbone_names,
                        dir.display()
                    ),
                ));
            }
        }
        digests.insert("calibration".to_string(), cal.model.backbones.clone());
        if let Some(found) = value.get("model").and_then(|m| present(m, "made_with")) {
            made_with = Some(found);
        }
        if let Some(names) = split_names(&cal.model.backbone_names) {
            specs.push((names, "calibration"));
        }
        if !cal.model.head.is_empty() {
            towers.extend(TOWERS.iter().map(|t| t.to_string()));
            towers_known = true;
        }
        if let Some(settings) = &cal.settings.memory {
            let json: serde_json::Value =
                serde_json::from_str(settings.as_json()).map_err(Error::model)?;
            match towers_of_settings(&json) {
                Some(read) => towers.extend(read),
                None => towers.extend(TOWERS.iter().map(|t| t.to_string())),
            }
            towers_known = true;
        }
        calibration = Some(cal);
        members.push(Planned {
            path: CALIBRATION_MEMBER.into(),
            kind: MemberKind::Calibration,
            tower: None,
            source: path.clone(),
        });
    }

    if let Some(found) = &made_with {
        let backbones = found.get("backbones");
        let spec = |t: &str| backbones.and_then(|b| b.get(t)).and_then(|v| v.as_str());
        if let (Some(c), Some(d)) = (spec(CLIP), spec(DINO)) {
            // Before the names a bank or calibration spells for messages.
            let at = specs
                .iter()
                .position(|(_, by)| *by == "bank" || *by == "calibration" || *by == "config")
                .unwrap_or(specs.len());
            specs.insert(at, ((c.to_string(), d.to_string()), "made_with"));
        }
    }
    if let Some(name) = &input.backbones_preset {
        if let Ok(preset) = ssvp_features::presets::preset(name) {
            specs.push(((preset.config.clip, preset.config.dino), "preset"));
        }
    }
    let ((clip, dino), named_by) = specs.first().cloned().unwrap_or((
        (String::new(), String::new()),
        "nothing: no part of the bundle names its backbones",
    ));
    if !towers_known {
        // Backbones and settings only: every tower they name.
        for (tower, spec) in [(CLIP, &clip), (DINO, &dino)] {
            if !spec.is_empty() && spec.trim() != ssvp_features::NO_TOWER {
                towers.insert(tower.to_string());
            }
        }
    }
    let mode_of_settings = calibration
        .as_ref()
        .and_then(|c| c.settings.memory.as_ref())
        .and_then(|s| serde_json::from_str::<serde_json::Value>(s.as_json()).ok())
        .and_then(|v| v.get("mode").and_then(|m| m.as_str()).map(str::to_string));
    let mutual = mode_of_settings.as_deref() == Some("mutual");
    let scoring = match (input.checkpoint.is_some(), input.bank.is_some() || mutual) {
        (true, true) => "fused",
        (true, false) => "head",
        (false, true) if mutual => "mutual",
        (false, true) => "references",
        (false, false) => "none",
    }
    .to_string();
    Ok(Sources {
        members,
        backbones: BundleBackbones {
            clip,
            dino,
            digests,
            towers: TOWERS
                .iter()
                .filter(|t| towers.contains(**t))
                .map(|t| t.to_string())
                .collect(),
            preset: input.backbones_preset.clone(),
            identity: identity_value,
            made_with,
            named_by: named_by.to_string(),
        },
        scoring,
        settings: calibration.as_ref().map(|c| c.settings.clone()),
        model: calibration.map(|c| c.model),
        identity,
    })
}

/// What the parts of `input` record about their backbones (weights specs, the towers the model
/// reads, digests), checking that they belong together: what [`create`] writes into the
/// manifest.
pub fn recorded_backbones(input: &BundleInput) -> Result<BundleBackbones> {
    Ok(read_sources(input)?.backbones)
}

/// The weights of the towers the model of `input` reads, resolved to files
/// ([`resolve_weights`]): the specs its parts record, or `overrides` (tower -> spec, e.g. a
/// local copy of the same weights). Towers with seeded (`tiny`) or no weights are left out.
pub fn weights_to_pack(
    input: &BundleInput,
    overrides: &BTreeMap<String, String>,
) -> Result<Vec<WeightsInput>> {
    for tower in overrides.keys() {
        check_tower(tower)?;
    }
    let record = recorded_backbones(input)?;
    let mut out = Vec::new();
    for tower in &record.towers {
        let spec = match overrides.get(tower) {
            Some(spec) => spec.as_str(),
            None => record.spec(tower).unwrap_or_default(),
        };
        if spec.is_empty() {
            return Err(Error::invalid(format!(
                "the model reads the {tower} tower, but no part of the bundle names its weights; \
                 name them (--{tower}-weights) or pack a config"
            )));
        }
        if let Some(found) = resolve_weights(tower, spec)? {
            out.push(found);
        }
    }
    Ok(out)
}

/// Deletes a staging folder (converted weights) when dropped.
struct Staging(PathBuf);

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Packs `input` into a bundle at `out` (written to a temporary file beside it and renamed;
/// mode 0644) and returns its manifest. The parts must belong together: a calibration made
/// for a head needs its checkpoint, one made with a bank the bank, and the bank and the
/// calibration the run's backbones ([`ErrorKind::Mismatch`] otherwise).
pub fn create(input: &BundleInput, out: &Path) -> Result<Manifest> {
    let sources = read_sources(input)?;
    let inputs: Vec<&PathBuf> = input
        .bank
        .iter()
        .chain(&input.calibration)
        .chain(&input.config)
        .chain(input.weights.iter().flat_map(|w| &w.files))
        .collect();
    if let Some(clash) = inputs.iter().find(|p| same_file(p, out)) {
        return Err(Error::invalid(format!(
            "the bundle {} would overwrite its own input {}",
            out.display(),
            clash.display()
        )));
    }
    let staging = Staging(ssvp_util::fs::temp_sibling(out).map_err(|e| Error::io(out, e))?);
    let mut members = sources.members;
    let mut records = Vec::new();
    for w in &input.weights {
        check_tower(&w.tower)?;
    }
    for tower in TOWERS {
        let given: Vec<&WeightsInput> = input.weights.iter().filter(|w| w.tower == tower).collect();
        let spec = sources
            .backbones
            .spec(tower)
            .unwrap_or_default()
            .to_string();
        match given.as_slice() {
            [] => {
                let note = match nothing_to_pack(&spec) {
                    Some(why) => why.to_string(),
                    None if !sources.backbones.reads(tower) => "not read by this model".to_string(),
                    None if spec.is_empty() => "not packed, and not named".to_string(),
                    None => format!(
                        "not packed: the line PC needs `{spec}` (pack them with --include-weights)"
                    ),
                };
                records.push(WeightsRecord {
                    tower: tower.to_string(),
                    spec,
                    packed: false,
                    dir: None,
                    files: Vec::new(),
                    fingerprint: None,
                    packed_fingerprint: None,
                    converted_from: None,
                    note: Some(note),
                });
            }
            [w] => {
                let (mut record, planned) = plan_weights(w, &staging.0)?;
                if let (Some(id), Some(found)) = (&sources.identity, &record.fingerprint) {
                    let recorded = if tower == CLIP {
                        &id.clip_weights
                    } else {
                        &id.dino_weights
                    };
                    if recorded != found && nothing_to_pack(&spec).is_none() {
                        return Err(Error::new(
                            ErrorKind::Mismatch,
                            format!(
                                "the {tower} weights `{}` are not those the model was made with \
                                 (fingerprint {found}, the model records {recorded})",
                                w.spec
                            ),
                        ));
                    }
                }
                // (Weights alone name no model: nothing to say then.)
                if !sources.backbones.towers.is_empty() && !sources.backbones.reads(tower) {
                    record.note = Some("packed, though this model does not read them".into());
                }
                members.extend(planned);
                records.push(record);
            }
            _ => {
                return Err(Error::invalid(format!(
                    "weights for the {tower} tower are given {} times",
                    given.len()
                )))
            }
        }
    }
    let manifest = Manifest {
        format: MANIFEST_FORMAT,
        ssvp_version: env!("CARGO_PKG_VERSION").to_string(),
        created: created_now(),
        scoring: sources.scoring,
        members: Vec::new(),
        backbones: sources.backbones,
        weights: records,
        settings: sources.settings,
        model: sources.model,
    };
    write_bundle(out, manifest, &members)
}

/// The manifest with every member's offset, and its JSON, for members whose digests are still
/// placeholders: the data offset is the fixed point `align(HEADER_LEN + len(json))`.
fn layout(manifest: &mut Manifest) -> Result<Vec<u8>> {
    let mut data_offset = align(HEADER_LEN);
    for _ in 0..64 {
        let mut at = data_offset;
        for m in &mut manifest.members {
            m.offset = at;
            at = align(at + m.length);
        }
        let json = serde_json::to_vec_pretty(manifest).map_err(Error::model)?;
        let needed = align(HEADER_LEN + json.len() as u64);
        if needed == data_offset {
            return Ok(json);
        }
        data_offset = needed;
    }
    Err(Error::model_msg("the bundle layout did not settle"))
}

fn write_bundle(out: &Path, mut manifest: Manifest, planned: &[Planned]) -> Result<Manifest> {
    for p in planned {
        super::format::check_member_path(&p.path)?;
    }
    let mut paths = BTreeSet::new();
    if let Some(p) = planned.iter().find(|p| !paths.insert(p.path.as_str())) {
        return Err(Error::invalid(format!(
            "two members would be packed at {}",
            p.path
        )));
    }
    manifest.members = planned
        .iter()
        .map(|p| {
            let length = std::fs::metadata(&p.source)
                .map_err(|e| Error::io(&p.source, e))?
                .len();
            Ok(Member {
                path: p.path.clone(),
                kind: p.kind,
                tower: p.tower.clone(),
                offset: 0,
                length,
                sha256: "0".repeat(64),
            })
        })
        .collect::<Result<_>>()?;
    let placeholder = layout(&mut manifest)?;
    let tmp = ssvp_util::fs::temp_sibling(out).map_err(|e| Error::io(out, e))?;
    if let Some(dir) = tmp.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let written = write_to(&tmp, &mut manifest, planned, placeholder.len())
        .and_then(|()| std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e)));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.context(format!("writing the bundle {}", out.display())));
    }
    Ok(manifest)
}

/// Writes the bundle into `tmp`: the placeholder header and manifest, the members (hashed as
/// they are copied), then the final manifest and header over the placeholders.
fn write_to(
    tmp: &Path,
    manifest: &mut Manifest,
    planned: &[Planned],
    manifest_len: usize,
) -> Result<()> {
    let io = |e: std::io::Error| Error::io(tmp, e);
    let file = File::create(tmp).map_err(io)?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let data_offset = align(HEADER_LEN + manifest_len as u64);
    let mut at = 0u64;
    let zeros = |w: &mut BufWriter<File>, n: u64| -> std::io::Result<()> {
        std::io::copy(&mut std::io::repeat(0).take(n), w).map(|_| ())
    };
    zeros(&mut w, data_offset).map_err(io)?;
    at += data_offset;
    for (m, p) in manifest.members.iter_mut().zip(planned) {
        zeros(&mut w, m.offset - at).map_err(io)?;
        let mut src = File::open(&p.source).map_err(|e| Error::io(&p.source, e))?;
        let (digest, n) =
            copy_hashing(&mut src, Some(&mut w), m.length).map_err(|e| Error::io(&p.source, e))?;
        let mut more = [0u8; 1];
        let grew = src.read(&mut more).map_err(|e| Error::io(&p.source, e))? > 0;
        if n != m.length || grew {
            return Err(Error::new(
                ErrorKind::Io,
                format!(
                    "{} changed while it was packed ({} bytes, then {})",
                    p.source.display(),
                    m.length,
                    if grew {
                        "more".to_string()
                    } else {
                        n.to_string()
                    }
                ),
            ));
        }
        m.sha256 = hex(&digest);
        at = m.offset + m.length;
    }
    let json = serde_json::to_vec_pretty(&*manifest).map_err(Error::model)?;
    if json.len() != manifest_len {
        return Err(Error::model_msg(
            "the manifest changed length when its digests were filled in",
        ));
    }
    let last = manifest
        .members
        .last()
        .map_or(data_offset, |m| m.offset + m.length);
    let header = Header {
        version: CONTAINER_VERSION,
        manifest_len: manifest_len as u64,
        data_offset,
        data_len: last - data_offset,
        manifest_sha256: Sha256::digest(&json).into(),
    };
    let mut file = w.into_inner().map_err(|e| io(e.into_error()))?;
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    file.write_all(&header.encode()).map_err(io)?;
    file.write_all(&json).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(io)?;
    }
    file.sync_all().map_err(io)
}
