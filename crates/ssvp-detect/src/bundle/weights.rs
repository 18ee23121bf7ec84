//! Backbone weights in a bundle: finding the files a spec names ([`resolve_weights`]) and
//! planning them as members: safetensors, their index and `config.json` are packed as they
//! are; a PyTorch zip checkpoint (`.pth`, `.bin`, `.pt`) is read without running pickle code
//! and written as safetensors with the same tensor names (the loaders detect the naming
//! scheme from the names).

use std::collections::BTreeSet;
use std::io::Read;
use std::path::{Path, PathBuf};

use ssvp_backbones::clip;
use ssvp_backbones::dinov3;
use ssvp_backbones::weights::{Checkpoint, ModelSource, WantedFiles};
use ssvp_features::identity::weights_fingerprint;

use super::format::check_member_path;
use super::manifest::{MemberKind, WeightsRecord, CLIP, TOWERS};
use super::Planned;
use crate::error::{Error, ErrorKind, Result};

/// One tower's weights to pack: the files a spec resolved to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WeightsInput {
    /// `clip` or `dino`.
    pub tower: String,
    /// What the user (or the model's records) named: a hub id, a directory, a file.
    pub spec: String,
    /// The resolved files: the weights (a safetensors file, a PyTorch zip to convert, or a
    /// `*.safetensors.index.json` with its shards) and the `config.json` beside them, if any.
    pub files: Vec<PathBuf>,
}

/// Why a spec has nothing to pack (`tiny`: seeded weights; `none`: no such tower), if so.
pub fn nothing_to_pack(spec: &str) -> Option<&'static str> {
    match spec.trim() {
        ssvp_features::TINY => {
            Some("seeded weights (`tiny`): nothing to pack, they are rebuilt from the seed")
        }
        ssvp_features::NO_TOWER => Some("no such tower in these backbones"),
        _ => None,
    }
}

/// Finds the files of `tower`'s weights named `spec` with the loaders' own resolvers (a local
/// file or directory, or a hub id through the Hugging Face cache: `HF_HUB_OFFLINE=1` uses the
/// cache only, and a spec that is not there is an [`ErrorKind::Offline`] error). `None` for a
/// spec with nothing to pack ([`nothing_to_pack`]). The place to teach bundles another tower
/// or architecture.
pub fn resolve_weights(tower: &str, spec: &str) -> Result<Option<WeightsInput>> {
    check_tower(tower)?;
    if nothing_to_pack(spec).is_some() {
        return Ok(None);
    }
    let failed = |e: ssvp_backbones::Error| {
        Error::from(ssvp_features::Error::backbone(
            format!("finding the {tower} weights `{spec}` to pack"),
            e,
        ))
    };
    let files = match tower {
        CLIP => ModelSource::parse(spec)
            .and_then(|source| {
                source.resolve(WantedFiles {
                    weights: clip::WEIGHTS_FILES,
                    config: Some("config.json"),
                })
            })
            .map_err(failed)?,
        // DINOv3's resolver finds DINOv2 weights as well (the same file names, or one Meta
        // `.pth` in a directory); `ssvp_backbones::dinov2::resolve` is the alternative should
        // the two ever differ.
        _ => dinov3::resolve(spec).map_err(failed)?,
    };
    let mut out = vec![files.weights.clone()];
    if is_index(&files.weights) {
        out.extend(shards_of(&files.weights)?);
    }
    out.extend(files.config);
    Ok(Some(WeightsInput {
        tower: tower.to_string(),
        spec: spec.to_string(),
        files: out,
    }))
}

/// Refuses a tower name a bundle has no place for.
pub(crate) fn check_tower(tower: &str) -> Result<()> {
    if TOWERS.contains(&tower) {
        Ok(())
    } else {
        Err(Error::invalid(format!(
            "unknown tower `{tower}` for bundle weights: use {}",
            TOWERS.join(" or ")
        )))
    }
}

fn is_index(path: &Path) -> bool {
    file_name(path)
        .to_ascii_lowercase()
        .ends_with(".index.json")
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The shard files a safetensors index names, beside it; each must exist.
fn shards_of(index: &Path) -> Result<Vec<PathBuf>> {
    let names = shard_names(index)?;
    let dir = index.parent().unwrap_or(Path::new("."));
    names
        .into_iter()
        .map(|name| {
            let path = dir.join(&name);
            if path.is_file() {
                Ok(path)
            } else {
                Err(Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "the shard {name} of {} is not on disk beside it (load the model once so \
                         that every shard is in the cache)",
                        index.display()
                    ),
                ))
            }
        })
        .collect()
}

/// The distinct shard file names of a safetensors index, sorted.
fn shard_names(index: &Path) -> Result<BTreeSet<String>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::invalid(format!("{}: not JSON: {e}", index.display())))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| {
            Error::invalid(format!(
                "{}: a safetensors index without a `weight_map`",
                index.display()
            ))
        })?;
    map.values()
        .map(|v| {
            v.as_str().map(str::to_string).ok_or_else(|| {
                Error::invalid(format!(
                    "{}: a `weight_map` entry is not a file name",
                    index.display()
                ))
            })
        })
        .collect()
}

/// What a weights file is, by its content and name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// A safetensors file (the weights, or a shard of an index).
    Safetensors,
    /// A PyTorch zip checkpoint: converted to safetensors.
    Torch,
    /// `*.safetensors.index.json`.
    Index,
    /// `config.json` (any other JSON file).
    Config,
}

fn role_of(path: &Path) -> Result<Role> {
    let mut magic = [0u8; 9];
    let n = {
        let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let mut n = 0;
        while n < magic.len() {
            match f.read(&mut magic[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io(path, e)),
            }
        }
        n
    };
    let name = file_name(path).to_ascii_lowercase();
    if n >= 4 && magic[..4] == *b"PK\x03\x04" {
        return Ok(Role::Torch);
    }
    if name.ends_with(".index.json") {
        return Ok(Role::Index);
    }
    if name.ends_with(".json") {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_str::<serde_json::Value>(&text)
            .map_err(|e| Error::invalid(format!("{}: not JSON: {e}", path.display())))?;
        return Ok(Role::Config);
    }
    if name.ends_with(".safetensors") {
        // An 8-byte header length, then the JSON header.
        if n < 9 || magic[8] != b'{' {
            return Err(Error::invalid(format!(
                "{} is not a safetensors file",
                path.display()
            )));
        }
        return Ok(Role::Safetensors);
    }
    if [".pth", ".pt", ".bin"].iter().any(|e| name.ends_with(e)) {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!(
                "{} is a PyTorch file but not a zip archive (a legacy pickle): it is never packed; \
                 re-save it with torch.save or convert it to safetensors",
                path.display()
            ),
        ));
    }
    Err(Error::new(
        ErrorKind::Unsupported,
        format!(
            "{}: a bundle packs only safetensors, JSON and TOML files (and converts PyTorch zip \
             checkpoints)",
            path.display()
        ),
    ))
}

/// The members of one tower's weights and their record; a PyTorch checkpoint is converted into
/// `staging` first.
pub(crate) fn plan_weights(
    input: &WeightsInput,
    staging: &Path,
) -> Result<(WeightsRecord, Vec<Planned>)> {
    check_tower(&input.tower)?;
    let tower = input.tower.as_str();
    let dir = format!("weights/{tower}");
    let context = |e: Error| e.context(format!("the {tower} weights `{}`", input.spec));
    let mut roles = Vec::with_capacity(input.files.len());
    for path in &input.files {
        roles.push((path, role_of(path).map_err(context)?));
    }
    let of = |role: Role| -> Vec<&PathBuf> {
        roles
            .iter()
            .filter(|(_, r)| *r == role)
            .map(|(p, _)| *p)
            .collect()
    };
    let (indexes, tensors, torch, configs) = (
        of(Role::Index),
        of(Role::Safetensors),
        of(Role::Torch),
        of(Role::Config),
    );
    let refuse = |why: String| Err(context(Error::invalid(why)));
    if configs.len() > 1 {
        return refuse(format!(
            "several config files ({}); give one config.json",
            names(&configs)
        ));
    }
    let member = |path: &Path, name: &str| Planned {
        path: format!("{dir}/{name}"),
        kind: MemberKind::Weights,
        tower: Some(tower.to_string()),
        source: path.to_path_buf(),
    };
    let mut members = Vec::new();
    let mut record = WeightsRecord {
        tower: tower.to_string(),
        spec: input.spec.clone(),
        packed: true,
        dir: Some(dir.clone()),
        files: Vec::new(),
        fingerprint: None,
        packed_fingerprint: None,
        converted_from: None,
        note: None,
    };
    let primary: &Path = match (indexes.as_slice(), tensors.as_slice(), torch.as_slice()) {
        ([index], shards, []) => {
            let wanted = shard_names(index).map_err(context)?;
            let given: BTreeSet<String> = shards.iter().map(|p| file_name(p)).collect();
            if wanted != given {
                return refuse(format!(
                    "the index {} names the shards {:?}, the files given are {:?}",
                    index.display(),
                    wanted,
                    given
                ));
            }
            members.push(member(index, "model.safetensors.index.json"));
            for shard in shards {
                let name = file_name(shard);
                check_member_path(&name)?;
                members.push(member(shard, &name));
            }
            index
        }
        ([], [single], []) => {
            members.push(member(single, "model.safetensors"));
            single
        }
        ([], [], [pth]) => {
            let converted = staging.join(tower).join("model.safetensors");
            convert_to_safetensors(pth, &converted).map_err(context)?;
            record.converted_from = Some(file_name(pth));
            record.packed_fingerprint = Some(weights_fingerprint(&converted).map_err(Error::from)?);
            members.push(member(&converted, "model.safetensors"));
            pth
        }
        _ => {
            return refuse(format!(
                "give one weights file (safetensors or a PyTorch zip) or one safetensors index \
                 with its shards, not {}",
                names(&input.files.iter().collect::<Vec<_>>())
            ))
        }
    };
    record.fingerprint = Some(weights_fingerprint(primary).map_err(Error::from)?);
    if let Some(config) = configs.first() {
        members.push(member(config, "config.json"));
    }
    record.files = members.iter().map(|m| m.path.clone()).collect();
    Ok((record, members))
}

fn names(paths: &[&PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Reads a PyTorch zip checkpoint (no pickle code runs) and writes its tensors, under the
/// same names, as a safetensors file.
pub fn convert_to_safetensors(pth: &Path, out: &Path) -> Result<()> {
    let checkpoint = Checkpoint::load(pth, &candle_core::Device::Cpu).map_err(|e| {
        Error::from(ssvp_features::Error::backbone(
            format!("reading {} to convert it to safetensors", pth.display()),
            e,
        ))
    })?;
    let tensors = checkpoint.into_tensors();
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    candle_core::safetensors::save(&tensors, out).map_err(|e| {
        Error::from(e).context(format!(
            "writing {} as safetensors to {}",
            pth.display(),
            out.display()
        ))
    })
}
