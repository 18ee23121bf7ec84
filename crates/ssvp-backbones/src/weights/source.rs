use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};

use crate::{Error, Result};

/// What `--weights` names: a local checkpoint file or directory, or a Hugging Face hub id
/// (`org/name`, optionally `org/name@revision`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A file or directory on local disk.
    Local(PathBuf),
    /// A hub model repository at a revision (a branch, tag or commit; `main` by default).
    Hub {
        /// `org/name`.
        repo: String,
        /// Branch, tag or commit.
        revision: String,
    },
}

/// The files a model wants, in order of preference. The first weights file that exists wins.
#[derive(Debug, Clone, Copy)]
pub struct WantedFiles<'a> {
    /// Weights file names, most preferred first.
    pub weights: &'a [&'a str],
    /// `config.json` for Hugging Face models; optional because OpenAI/open_clip/Meta checkpoints
    /// come without one and the config is then inferred or taken from a named preset.
    pub config: Option<&'a str>,
}

/// Files on local disk, ready to read.
#[derive(Debug, Clone)]
pub struct ResolvedFiles {
    /// The weights file.
    pub weights: PathBuf,
    /// The config file next to it, if there is one.
    pub config: Option<PathBuf>,
    /// A short human description of where they came from (path or `hub:org/name@rev`).
    pub origin: String,
}

impl ResolvedFiles {
    /// The model config: `given` when there is one (e.g. a preset), else the `config.json` next
    /// to the weights read by `parse`, else `None` (the loader infers it from the shapes).
    pub fn config_or<C>(
        &self,
        given: Option<C>,
        parse: impl Fn(&str) -> Result<C>,
    ) -> Result<Option<C>> {
        match (given, &self.config) {
            (Some(c), _) => Ok(Some(c)),
            (None, Some(path)) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::io(format!("cannot read {}", path.display()), path, e))?;
                Ok(Some(parse(&text).map_err(|e| {
                    e.context(format!("in {}", path.display()))
                })?))
            }
            (None, None) => Ok(None),
        }
    }

    /// The first word of the origin or the weights' path that `is_preset` accepts (a hub repo
    /// or Meta file name such as `dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth`): a hint for
    /// inferring what the shapes leave open (the head count).
    pub fn preset_hint(&self, is_preset: impl Fn(&str) -> bool) -> Option<String> {
        format!("{} {}", self.origin, self.weights.display())
            .split_whitespace()
            .find(|s| is_preset(s))
            .map(str::to_owned)
    }
}

/// How hub ids are resolved: the cache, offline mode, token and endpoint. Taken from the
/// environment by [`HubSettings::from_env`] (what [`ModelSource::resolve`] uses); passing them
/// explicitly to [`ModelSource::resolve_with`] keeps tests and embedders off process-wide state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubSettings {
    /// The hub cache root ([`hub_cache_dir`]).
    pub cache_dir: PathBuf,
    /// Never touch the network; use the cache or fail (`HF_HUB_OFFLINE`).
    pub offline: bool,
    /// An access token (`HF_TOKEN`); without one the cache's stored token, if any, is used.
    pub token: Option<String>,
    /// Another hub endpoint (`HF_ENDPOINT`), without a trailing slash.
    pub endpoint: Option<String>,
}

impl HubSettings {
    /// The settings huggingface_hub would use: `HF_HUB_CACHE`/`HF_HOME`/… for the cache,
    /// `HF_HUB_OFFLINE`, `HF_TOKEN` and `HF_ENDPOINT`.
    pub fn from_env() -> Self {
        Self {
            cache_dir: hub_cache_dir(),
            offline: env_truthy("HF_HUB_OFFLINE"),
            token: std::env::var("HF_TOKEN")
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty()),
            endpoint: std::env::var("HF_ENDPOINT")
                .ok()
                .filter(|e| !e.is_empty())
                .map(|e| e.trim_end_matches('/').to_string()),
        }
    }
}

impl ModelSource {
    /// An existing path is always local. Otherwise a string shaped like `org/name[@rev]` is a
    /// hub id; anything else is an error, so that a mistyped path is not sent to the network.
    pub fn parse(spec: &str) -> Result<Self> {
        let path = Path::new(spec);
        let missing = match std::fs::metadata(path) {
            Ok(_) => return Ok(Self::Local(path.to_path_buf())),
            Err(e) => e,
        };
        let (repo, revision) = match spec.split_once('@') {
            Some((repo, rev)) if !rev.is_empty() => (repo, rev),
            _ => (spec, "main"),
        };
        let looks_like_hub_id = {
            let parts: Vec<&str> = repo.split('/').collect();
            parts.len() == 2
                && parts.iter().all(|p| {
                    !p.is_empty()
                        && !p.starts_with('.')
                        && p.chars()
                            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
                })
        };
        if looks_like_hub_id && !spec.starts_with('.') && !spec.starts_with('/') {
            Ok(Self::Hub {
                repo: repo.to_string(),
                revision: revision.to_string(),
            })
        } else if missing.kind() == std::io::ErrorKind::NotFound {
            Err(Error::io(
                format!(
                    "weights `{spec}`: no such file or directory, and not a hub id of the form \
                     org/name"
                ),
                path,
                missing,
            ))
        } else {
            Err(Error::io(
                format!(
                    "weights `{spec}`: cannot be accessed, and not a hub id of the form org/name"
                ),
                path,
                missing,
            ))
        }
    }

    /// Finds (or downloads) the wanted files, with the hub settings of the environment.
    pub fn resolve(&self, wanted: WantedFiles<'_>) -> Result<ResolvedFiles> {
        match self {
            Self::Local(path) => resolve_local(path, wanted),
            Self::Hub { .. } => self.resolve_with(wanted, &HubSettings::from_env()),
        }
    }

    /// As [`Self::resolve`], with the hub settings given rather than read from the environment.
    pub fn resolve_with(
        &self,
        wanted: WantedFiles<'_>,
        settings: &HubSettings,
    ) -> Result<ResolvedFiles> {
        match self {
            Self::Local(path) => resolve_local(path, wanted),
            Self::Hub { repo, revision } => resolve_hub(repo, revision, wanted, settings),
        }
    }
}

fn resolve_local(path: &Path, wanted: WantedFiles<'_>) -> Result<ResolvedFiles> {
    let origin = path.display().to_string();
    if path.is_file() {
        let config = wanted
            .config
            .and_then(|c| path.parent().map(|dir| dir.join(c)))
            .filter(|c| c.is_file());
        return Ok(ResolvedFiles {
            weights: path.to_path_buf(),
            config,
            origin,
        });
    }
    let weights = wanted
        .weights
        .iter()
        .map(|name| path.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| Error::NotFound {
            message: format!(
                "directory {origin} has none of the weights files {}",
                wanted.weights.join(", ")
            ),
            path: Some(path.to_path_buf()),
            source: None,
        })?;
    let config = wanted.config.map(|c| path.join(c)).filter(|c| c.is_file());
    Ok(ResolvedFiles {
        weights,
        config,
        origin,
    })
}

/// The hub cache root, as huggingface_hub computes it: `HF_HUB_CACHE`, else
/// `HUGGINGFACE_HUB_CACHE`, else `HF_HOME/hub`, else `XDG_CACHE_HOME/huggingface/hub`, else
/// `~/.cache/huggingface/hub`.
pub fn hub_cache_dir() -> PathBuf {
    let var = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = var("HF_HUB_CACHE").or_else(|| var("HUGGINGFACE_HUB_CACHE")) {
        return dir;
    }
    if let Some(home) = var("HF_HOME") {
        return home.join("hub");
    }
    if let Some(xdg) = var("XDG_CACHE_HOME") {
        return xdg.join("huggingface").join("hub");
    }
    let home = var("HOME").unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("huggingface").join("hub")
}

fn env_truthy(key: &str) -> bool {
    std::env::var(key)
        .map(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            )
        })
        .unwrap_or(false)
}

fn resolve_hub(
    repo_id: &str,
    revision: &str,
    wanted: WantedFiles<'_>,
    settings: &HubSettings,
) -> Result<ResolvedFiles> {
    let origin = format!("hub:{repo_id}@{revision}");
    let cache = Cache::new(settings.cache_dir.clone());
    let repo = Repo::with_revision(repo_id.to_string(), RepoType::Model, revision.to_string());
    let cached = cache.repo(repo.clone());

    if settings.offline {
        let weights = wanted
            .weights
            .iter()
            .find_map(|f| cached.get(f))
            .ok_or_else(|| Error::Offline {
                message: format!(
                    "HF_HUB_OFFLINE is set and the cache {} holds no copy of {repo_id}@{revision} \
                     (looked for {}); download it once online, or name a local copy (a directory or file) instead of the hub id",
                    cache.path().display(),
                    wanted.weights.join(", ")
                ),
                repo: repo_id.to_string(),
                cache: cache.path().clone(),
            })?;
        let config = wanted.config.and_then(|c| cached.get(c));
        return Ok(ResolvedFiles {
            weights,
            config,
            origin,
        });
    }

    let token = settings.token.clone().or_else(|| cache.token());
    let mut builder = ApiBuilder::from_cache(cache.clone())
        .with_token(token)
        .with_progress(false);
    if let Some(endpoint) = &settings.endpoint {
        builder = builder.with_endpoint(endpoint.clone());
    }
    let api = builder.build().map_err(|e| Error::Hub {
        message: format!("cannot set up the hub client: {e}"),
    })?;
    let remote = api.repo(repo);

    let mut missing = Vec::new();
    let mut weights = None;
    for file in wanted.weights {
        match remote.get(file) {
            Ok(path) => {
                weights = Some(path);
                break;
            }
            Err(err) => match classify(&err) {
                HubFailure::NotFound => missing.push(*file),
                failure => return Err(failure.into_error(repo_id, revision, file, err)),
            },
        }
    }
    let weights = weights.ok_or_else(|| Error::NotFound {
        message: format!(
            "hub repo {repo_id}@{revision} has none of the weights files {}",
            missing.join(", ")
        ),
        path: None,
        source: None,
    })?;
    // A sharded checkpoint: its index names the shards, which land beside it in the snapshot.
    if weights.to_string_lossy().ends_with(".index.json") {
        for shard in super::checkpoint::shard_names(&weights)? {
            remote.get(&shard).map_err(|err| {
                let failure = classify(&err);
                failure.into_error(repo_id, revision, &shard, err)
            })?;
        }
    }
    let config = match wanted.config {
        Some(file) => match remote.get(file) {
            Ok(path) => Some(path),
            Err(err) => match classify(&err) {
                HubFailure::NotFound => None,
                failure => return Err(failure.into_error(repo_id, revision, file, err)),
            },
        },
        None => None,
    };
    Ok(ResolvedFiles {
        weights,
        config,
        origin,
    })
}

enum HubFailure {
    NotFound,
    Denied(u16),
    Other,
}

fn classify(err: &ApiError) -> HubFailure {
    let mut err = err;
    while let ApiError::TooManyRetries(inner) = err {
        err = inner;
    }
    match err {
        ApiError::RequestError(req) => match req.as_ref() {
            ureq::Error::Status(404, _) => HubFailure::NotFound,
            ureq::Error::Status(code @ (401 | 403), _) => HubFailure::Denied(*code),
            _ => HubFailure::Other,
        },
        _ => HubFailure::Other,
    }
}

impl HubFailure {
    fn into_error(self, repo: &str, revision: &str, file: &str, err: ApiError) -> Error {
        match self {
            HubFailure::Denied(code) => Error::Gated {
                message: format!(
                    "the hub refused access to {repo}@{revision}/{file} (HTTP {code}): the repo is \
                     gated or private. Accept its licence on the hub with your account and set \
                     HF_TOKEN to an access token (or log in so that HF_HOME/token exists)"
                ),
                repo: repo.to_string(),
                status: code,
            },
            _ => Error::Hub {
                message: format!(
                    "could not fetch {repo}@{revision}/{file} from the hub: {err}. Offline? Name a \
                     local copy (a directory or file) instead of the hub id, or set \
                     HF_HUB_OFFLINE=1 to use a cached copy"
                ),
            },
        }
    }
}

/// Weights files a DINO directory or hub repo is searched for, in order.
pub const HF_WEIGHTS_FILES: [&str; 2] = ["model.safetensors", "model.safetensors.index.json"];

/// Resolves a DINO `--weights` (DINOv2 and DINOv3 ship alike): a Hugging Face directory or hub
/// repo (`model.safetensors` or its index, and `config.json`), a weights file, or a local
/// directory holding exactly one Meta `.pth`. `model` names the family in messages.
pub fn resolve_hf_or_meta(spec: &str, model: &str) -> Result<ResolvedFiles> {
    let source = ModelSource::parse(spec)?;
    let wanted = WantedFiles {
        weights: &HF_WEIGHTS_FILES,
        config: Some("config.json"),
    };
    match &source {
        ModelSource::Local(dir) if dir.is_dir() => match source.resolve(wanted) {
            Ok(files) => Ok(files),
            Err(_) => resolve_meta_dir(dir, model),
        },
        _ => source.resolve(wanted),
    }
}

/// A directory with one Meta checkpoint (`dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth`,
/// `dinov2_vitl14_reg4_pretrain.pth`).
fn resolve_meta_dir(dir: &Path, model: &str) -> Result<ResolvedFiles> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(format!("cannot list {}", dir.display()), dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "pth"))
        .collect();
    found.sort();
    match found.len() {
        0 => Err(Error::NotFound {
            message: format!(
                "directory {} has no {model} weights: looked for {} and *.pth",
                dir.display(),
                HF_WEIGHTS_FILES.join(", ")
            ),
            path: Some(dir.to_path_buf()),
            source: None,
        }),
        1 => {
            let config = Some(dir.join("config.json")).filter(|c| c.is_file());
            Ok(ResolvedFiles {
                weights: found.remove(0),
                config,
                origin: dir.display().to_string(),
            })
        }
        _ => Err(Error::InvalidInput {
            message: format!(
                "directory {} has several .pth files ({}); pass the one to use",
                dir.display(),
                found
                    .iter()
                    .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_tells_paths_from_hub_ids() {
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().to_str().unwrap();
        assert_eq!(
            ModelSource::parse(local).unwrap(),
            ModelSource::Local(dir.path().to_path_buf())
        );
        assert_eq!(
            ModelSource::parse("openai/clip-vit-large-patch14-336").unwrap(),
            ModelSource::Hub {
                repo: "openai/clip-vit-large-patch14-336".into(),
                revision: "main".into()
            }
        );
        assert_eq!(
            ModelSource::parse("facebook/dinov3-vitl16-pretrain-lvd1689m@abc123").unwrap(),
            ModelSource::Hub {
                repo: "facebook/dinov3-vitl16-pretrain-lvd1689m".into(),
                revision: "abc123".into()
            }
        );
        let err = ModelSource::parse("./missing/weights.safetensors").unwrap_err();
        assert!(err.to_string().contains("no such file"), "{err}");
        assert!(ModelSource::parse("just-a-name").is_err());
    }

    #[test]
    fn local_directory_resolution_prefers_the_first_wanted_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pytorch_model.bin"), b"x").unwrap();
        std::fs::write(dir.path().join("config.json"), b"{}").unwrap();
        let wanted = WantedFiles {
            weights: &["model.safetensors", "pytorch_model.bin"],
            config: Some("config.json"),
        };
        let files = ModelSource::Local(dir.path().into())
            .resolve(wanted)
            .unwrap();
        assert_eq!(files.weights, dir.path().join("pytorch_model.bin"));
        assert_eq!(files.config, Some(dir.path().join("config.json")));

        let empty = tempfile::tempdir().unwrap();
        let err = ModelSource::Local(empty.path().into())
            .resolve(wanted)
            .unwrap_err();
        assert!(err.to_string().contains("model.safetensors"), "{err}");
    }
}
