//! Downloading a hub repository's weights into the Hugging Face cache ahead of time (`ssvp
//! fetch`), and checking what the cache holds (`ssvp doctor`).
//!
//! The files land where [`ModelSource::resolve`](super::ModelSource::resolve) and the Python
//! `huggingface_hub` look for them, so the loaders find them later with `HF_HUB_OFFLINE=1`:
//!
//! ```text
//! <cache>/models--<org>--<name>/
//!     refs/<revision>                       the commit the revision pointed to
//!     blobs/<etag>                          one file per content: the sha256 of an LFS file,
//!                                           the git blob id of a small one
//!     blobs/<etag>.incomplete               a download in progress (resumed by the next fetch)
//!     snapshots/<commit>/<file>  ->  ../../blobs/<etag>
//! ```
//!
//! Each file is asked for with a `HEAD` on `<endpoint>/<repo>/resolve/<revision>/<file>`, as
//! `huggingface_hub` does: the answer's `X-Repo-Commit` names the commit, `X-Linked-Etag` (LFS
//! files) or `ETag` the blob, `X-Linked-Size` or `Content-Length` its size. The body then comes
//! with a `GET` (following the redirect to the CDN) into `blobs/<etag>.incomplete`, appended to
//! with an HTTP `Range` when a previous download was cut; an LFS file's SHA-256 is computed on
//! the way (the bytes already on disk first) and must equal its etag before the file is renamed
//! into place, so a corrupt or truncated download never becomes a blob. 401/403 become
//! [`Error::Gated`] (with the page where the licence is accepted and the `HF_TOKEN` to set),
//! `HF_HUB_OFFLINE` becomes [`Error::Offline`], an unreachable hub [`Error::Hub`].
//!
//! [`cache_status`] reads the same layout back without the network: whether the weights the
//! loaders would pick (and, for a sharded checkpoint, every shard of its index) and the config
//! are there, whether each safetensors file is as long as its header says, which downloads are
//! unfinished, and with [`Verify::Digests`] whether every LFS blob still hashes to its name.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hf_hub::Cache;
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::checkpoint::{safe_relative, shard_names};
use super::source::{HubSettings, WantedFiles};
use crate::{Error, Result};

/// The hub's public address, used when `HF_ENDPOINT` is not set.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// Weights and config files of the DINO loaders (`dinov2::resolve`, `dinov3::resolve`) in a
/// Hugging Face repository, most preferred first.
pub const DINO_FILES: WantedFiles<'static> = WantedFiles {
    weights: &["model.safetensors", "model.safetensors.index.json"],
    config: Some("config.json"),
};

/// Weights and config files of the CLIP loader (`clip::WEIGHTS_FILES`), most preferred first.
pub const CLIP_FILES: WantedFiles<'static> = WantedFiles {
    weights: crate::clip::WEIGHTS_FILES,
    config: Some("config.json"),
};

/// The files the loader of `tower` (`clip`, or a DINO tower) reads from a hub repository.
pub fn tower_files(tower: &str) -> WantedFiles<'static> {
    if tower == "clip" {
        CLIP_FILES
    } else {
        DINO_FILES
    }
}

/// Whether a repository is known to be gated (a licence to accept on the hub, then a token):
/// Meta's DINOv3 repositories.
pub fn known_gated(repo: &str) -> bool {
    repo.starts_with("facebook/dinov3-")
}

/// A hub id with an optional revision (`org/name@rev`) split into the id and the revision
/// (`main` when none is given).
pub fn split_revision(spec: &str) -> (&str, &str) {
    match spec.split_once('@') {
        Some((repo, rev)) if !rev.is_empty() => (repo, rev),
        _ => (spec.trim_end_matches('@'), "main"),
    }
}

/// The hub page of `repo` (where a gated repository's licence is accepted).
pub fn repo_page(settings: &HubSettings, repo: &str) -> String {
    format!("{}/{repo}", endpoint(settings))
}

fn endpoint(settings: &HubSettings) -> &str {
    settings.endpoint.as_deref().unwrap_or(DEFAULT_ENDPOINT)
}

/// Whether a hub token will be sent: `HF_TOKEN`, or the token file next to the cache
/// (`HF_HOME/token`, written by `hf auth login`).
pub fn token_available(settings: &HubSettings) -> bool {
    settings.token.is_some() || Cache::new(settings.cache_dir.clone()).token().is_some()
}

/// The cache folder of a model repository: `models--org--name`.
pub fn repo_folder(cache_dir: &Path, repo: &str) -> PathBuf {
    cache_dir.join(format!("models--{}", repo.replace('/', "--")))
}

/// How thoroughly [`cache_status`] (and a fetch of files already cached) checks file contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verify {
    /// Presence, and each safetensors file as long as its header says (reads the headers only).
    #[default]
    Sizes,
    /// As `Sizes`, and every LFS blob's SHA-256 equal to its name (reads every byte).
    Digests,
}

/// Reports a fetch's progress (a progress bar in the CLI). Every method has a do-nothing
/// default; `()` reports nothing.
pub trait FetchProgress {
    /// A file is about to be downloaded: `total` bytes, of which `done` are already on disk
    /// from an interrupted download.
    fn start(&mut self, _repo: &str, _file: &str, _total: u64, _done: u64) {}
    /// `bytes` more bytes were written.
    fn advance(&mut self, _bytes: u64) {}
    /// A file is in the cache (downloaded now, or found there).
    fn finish(&mut self, _repo: &str, _file: &FetchedFile) {}
}

impl FetchProgress for () {}

/// How a file came to be in the cache.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "how")]
pub enum FileOutcome {
    /// It was there already (its blob of the expected size; with [`Verify::Digests`] also of the
    /// expected digest).
    Cached,
    /// Downloaded now; `resumed_from` bytes came from an earlier, interrupted download.
    Downloaded {
        /// Bytes that were already on disk.
        resumed_from: u64,
    },
}

/// One file of a fetched repository.
#[derive(Clone, Debug, Serialize)]
pub struct FetchedFile {
    /// The file's name in the repository.
    pub name: String,
    /// Its path in the snapshot (a link to the blob).
    pub path: PathBuf,
    /// Bytes.
    pub size: u64,
    /// The SHA-256 it was checked against (LFS files; `None` for small git files, checked by
    /// size).
    pub sha256: Option<String>,
    /// Downloaded or found.
    pub outcome: FileOutcome,
}

/// A repository whose files are all in the cache.
#[derive(Clone, Debug, Serialize)]
pub struct FetchedRepo {
    /// `org/name`.
    pub repo: String,
    /// The revision asked for.
    pub revision: String,
    /// The commit it resolved to.
    pub commit: String,
    /// The files, weights first.
    pub files: Vec<FetchedFile>,
}

impl FetchedRepo {
    /// Bytes downloaded now (not those found in the cache or resumed).
    pub fn downloaded_bytes(&self) -> u64 {
        self.files
            .iter()
            .map(|f| match f.outcome {
                FileOutcome::Cached => 0,
                FileOutcome::Downloaded { resumed_from } => f.size - resumed_from,
            })
            .sum()
    }

    /// Bytes of all the files.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// Downloads the files the loaders read from `repo` at `revision` into the cache of
/// `settings`: the first of `wanted.weights` the repository has (every shard, for a sharded
/// index) and the config when it has one. Files already cached are kept (re-hashed with
/// [`Verify::Digests`], and downloaded again if they do not match); an interrupted download
/// resumes where it stopped.
///
/// Offline (`settings.offline`) it succeeds only when the cache already holds the repository
/// complete ([`cache_status`]), and is [`Error::Offline`] otherwise.
pub fn fetch_repo(
    repo: &str,
    revision: &str,
    wanted: WantedFiles<'_>,
    settings: &HubSettings,
    verify: Verify,
    progress: &mut dyn FetchProgress,
) -> Result<FetchedRepo> {
    if settings.offline {
        let status = cache_status(&settings.cache_dir, repo, revision, wanted, verify);
        if status.state == CacheState::Complete {
            let files = status
                .files
                .iter()
                .map(|f| FetchedFile {
                    name: f.name.clone(),
                    path: f.path.clone(),
                    size: f.size,
                    sha256: f.sha256.clone(),
                    outcome: FileOutcome::Cached,
                })
                .collect();
            return Ok(FetchedRepo {
                repo: repo.into(),
                revision: revision.into(),
                commit: status.commit.unwrap_or_default(),
                files,
            });
        }
        return Err(Error::Offline {
            message: format!(
                "HF_HUB_OFFLINE is set: nothing can be fetched, and the cache {} does not hold \
                 {repo}@{revision} complete. Unset HF_HUB_OFFLINE on a machine that reaches the \
                 hub, or copy the cache folder {} from a machine that has it",
                settings.cache_dir.display(),
                repo_folder(&settings.cache_dir, repo).display()
            ),
            repo: repo.into(),
            cache: settings.cache_dir.clone(),
        });
    }
    let client = Client::new(settings)?;
    let mut files = Vec::new();
    let mut commit: Option<String> = None;
    let mut weights = None;
    for name in wanted.weights {
        match client.metadata(repo, commit.as_deref().unwrap_or(revision), name)? {
            Some(meta) => {
                commit.get_or_insert_with(|| meta.commit.clone());
                weights = Some(client.fetch_file(repo, revision, name, &meta, verify, progress)?);
                break;
            }
            None => continue,
        }
    }
    let weights = weights.ok_or_else(|| Error::NotFound {
        message: format!(
            "hub repo {repo}@{revision} has none of the weights files the loader reads ({})",
            wanted.weights.join(", ")
        ),
        path: None,
        source: None,
    })?;
    let commit = commit.expect("set with the weights");
    let shards = if weights.name.ends_with(".index.json") {
        shard_names(&weights.path)?
    } else {
        Vec::new()
    };
    files.push(weights);
    for shard in shards {
        let meta = client
            .metadata(repo, &commit, &shard)?
            .ok_or_else(|| Error::NotFound {
                message: format!(
                    "hub repo {repo}@{commit} lacks the shard {shard} that {} lists",
                    files[0].name
                ),
                path: None,
                source: None,
            })?;
        files.push(client.fetch_file(repo, revision, &shard, &meta, verify, progress)?);
    }
    if let Some(config) = wanted.config {
        if let Some(meta) = client.metadata(repo, &commit, config)? {
            files.push(client.fetch_file(repo, revision, config, &meta, verify, progress)?);
        }
    }
    Ok(FetchedRepo {
        repo: repo.into(),
        revision: revision.into(),
        commit,
        files,
    })
}

/// What the hub says about one file.
#[derive(Clone, Debug, PartialEq, Eq)]
struct FileMeta {
    commit: String,
    /// The blob name: an LFS file's SHA-256, else the git blob id.
    etag: String,
    size: u64,
    /// Where the bytes are (the CDN's address after a redirect, or the resolve URL).
    url: String,
}

impl FileMeta {
    /// The SHA-256 to check: LFS etags are one (64 hex digits); git blob ids (40) are not.
    fn sha256(&self) -> Option<&str> {
        is_sha256(&self.etag).then_some(self.etag.as_str())
    }
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The HTTP side of a fetch: one agent that does not follow redirects (to read the hub's own
/// headers) and one that does (for the bytes), with the token sent to the hub's host only.
struct Client {
    endpoint: String,
    token: Option<String>,
    cache_dir: PathBuf,
    settings: HubSettings,
    head: ureq::Agent,
    get: ureq::Agent,
}

impl Client {
    fn new(settings: &HubSettings) -> Result<Self> {
        let token = settings
            .token
            .clone()
            .or_else(|| Cache::new(settings.cache_dir.clone()).token());
        let builder = || {
            ureq::AgentBuilder::new()
                .try_proxy_from_env(true)
                .timeout_connect(Duration::from_secs(15))
                .timeout_read(Duration::from_secs(60))
                .user_agent(concat!("ssvp/", env!("CARGO_PKG_VERSION")))
        };
        Ok(Self {
            endpoint: endpoint(settings).to_string(),
            token,
            cache_dir: settings.cache_dir.clone(),
            settings: settings.clone(),
            head: builder().redirects(0).build(),
            get: builder()
                .redirects(8)
                .redirect_auth_headers(ureq::RedirectAuthHeaders::SameHost)
                .build(),
        })
    }

    fn with_token(&self, req: ureq::Request, url: &str) -> ureq::Request {
        match &self.token {
            Some(token) if origin_of(url) == origin_of(&self.endpoint) => {
                req.set("Authorization", &format!("Bearer {token}"))
            }
            _ => req,
        }
    }

    /// `HEAD` of the file's resolve URL, following relative redirects (a renamed repository)
    /// only; `None` when the repository has no such file.
    fn metadata(&self, repo: &str, revision: &str, file: &str) -> Result<Option<FileMeta>> {
        let mut url = format!(
            "{}/{repo}/resolve/{}/{}",
            self.endpoint,
            url_path(revision),
            url_path(file)
        );
        for _ in 0..8 {
            let req = self.with_token(self.head.head(&url), &url);
            let resp = match req.call() {
                Ok(resp) => resp,
                Err(err) => return self.refused(repo, revision, file, err).map(|()| None),
            };
            let status = resp.status();
            let location = resp.header("Location").map(str::to_string);
            if (300..400).contains(&status) {
                if let Some(loc) = location.as_deref().filter(|l| l.starts_with('/')) {
                    url = format!("{}{loc}", origin_of(&self.endpoint));
                    continue;
                }
            }
            let header = |name: &str| resp.header(name).map(str::to_string);
            let commit = header("X-Repo-Commit").ok_or_else(|| Error::Hub {
                message: format!(
                    "{url} answered without X-Repo-Commit: is {} a Hugging Face hub?",
                    self.endpoint
                ),
            })?;
            let etag = header("X-Linked-Etag")
                .or_else(|| header("ETag"))
                .map(|e| clean_etag(&e))
                .filter(|e| !e.is_empty())
                .ok_or_else(|| Error::Hub {
                    message: format!("{url} answered without an ETag"),
                })?;
            if !etag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return Err(Error::Hub {
                    message: format!("{url} answered with an unusable ETag `{etag}`"),
                });
            }
            let size = header("X-Linked-Size")
                .or_else(|| header("Content-Length"))
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| Error::Hub {
                    message: format!("{url} answered without the file's size"),
                })?;
            let url = match location {
                Some(loc) if (300..400).contains(&status) => loc,
                _ => url,
            };
            return Ok(Some(FileMeta {
                commit,
                etag,
                size,
                url,
            }));
        }
        Err(Error::Hub {
            message: format!("{url}: too many redirects"),
        })
    }

    /// `Ok(())` for a missing file (the caller tries the next), the error otherwise.
    fn refused(&self, repo: &str, revision: &str, file: &str, err: ureq::Error) -> Result<()> {
        match err {
            ureq::Error::Status(code, resp) => {
                let code_header = resp.header("X-Error-Code").unwrap_or("").to_string();
                let hub_message = resp.header("X-Error-Message").unwrap_or("").to_string();
                match (code, code_header.as_str()) {
                    (_, "GatedRepo") | (403, _) => Err(gated_error(
                        &self.settings,
                        repo,
                        code,
                        self.token.is_some(),
                    )),
                    (_, "RepoNotFound") => Err(Error::NotFound {
                        message: format!(
                            "the hub has no repository {repo} (HTTP {code}{}); if it is private, \
                             set HF_TOKEN to a token of an account that may read it",
                            if hub_message.is_empty() {
                                String::new()
                            } else {
                                format!(": {hub_message}")
                            }
                        ),
                        path: None,
                        source: None,
                    }),
                    (_, "RevisionNotFound") => Err(Error::NotFound {
                        message: format!("hub repo {repo} has no revision {revision}"),
                        path: None,
                        source: None,
                    }),
                    (401, _) => Err(gated_error(
                        &self.settings,
                        repo,
                        code,
                        self.token.is_some(),
                    )),
                    (404, _) => Ok(()),
                    _ => Err(Error::Hub {
                        message: format!(
                            "the hub answered HTTP {code} for {repo}@{revision}/{file}{}; try \
                             again later",
                            if hub_message.is_empty() {
                                String::new()
                            } else {
                                format!(" ({hub_message})")
                            }
                        ),
                    }),
                }
            }
            ureq::Error::Transport(t) => Err(unreachable_error(&self.endpoint, &t.to_string())),
        }
    }

    /// Puts one file in the cache: found, resumed or downloaded, checked, linked.
    fn fetch_file(
        &self,
        repo: &str,
        revision: &str,
        name: &str,
        meta: &FileMeta,
        verify: Verify,
        progress: &mut dyn FetchProgress,
    ) -> Result<FetchedFile> {
        let rel = safe_relative(name)?;
        let folder = repo_folder(&self.cache_dir, repo);
        let blobs = folder.join("blobs");
        create_dir(&blobs)?;
        let blob = blobs.join(&meta.etag);
        let pointer = folder.join("snapshots").join(&meta.commit).join(&rel);
        let _lock = FileLock::acquire(&blobs.join(format!("{}.lock", meta.etag)))?;

        let mut outcome = None;
        if let Ok(md) = std::fs::metadata(&blob) {
            let good = md.len() == meta.size
                && match (verify, meta.sha256()) {
                    (Verify::Digests, Some(expected)) => sha256_of(&blob, None)? == expected,
                    _ => true,
                };
            if good {
                outcome = Some(FileOutcome::Cached);
            } else {
                std::fs::remove_file(&blob).map_err(|e| {
                    Error::io(format!("cannot replace {}", blob.display()), &blob, e)
                })?;
            }
        }
        let outcome = match outcome {
            Some(o) => o,
            None => {
                let resumed_from = self.download(repo, name, meta, &blob, progress)?;
                FileOutcome::Downloaded { resumed_from }
            }
        };
        link_pointer(&pointer, &blob, &rel)?;
        write_ref(&folder, revision, &meta.commit)?;
        let fetched = FetchedFile {
            name: name.to_string(),
            path: pointer,
            size: meta.size,
            sha256: meta.sha256().map(str::to_string),
            outcome,
        };
        progress.finish(repo, &fetched);
        Ok(fetched)
    }

    /// Downloads into `blob.incomplete` from where an earlier download stopped, checks size
    /// and digest, and renames it to `blob`. Returns the bytes that were already there.
    fn download(
        &self,
        repo: &str,
        name: &str,
        meta: &FileMeta,
        blob: &Path,
        progress: &mut dyn FetchProgress,
    ) -> Result<u64> {
        let incomplete = with_suffix(blob, "incomplete");
        // hf-hub (the loaders' client) leaves `.part` files: continue those too.
        let part = with_suffix(blob, "part");
        if !incomplete.exists() && part.exists() {
            let _ = std::fs::rename(&part, &incomplete);
        }
        if let Some(free) = free_bytes(blob.parent().unwrap_or(blob)) {
            let have = std::fs::metadata(&incomplete).map(|m| m.len()).unwrap_or(0);
            let need = meta.size.saturating_sub(have);
            if free < need {
                return Err(Error::Io {
                    message: format!(
                        "{repo}/{name} needs {} more on {}, which has {} free",
                        human_bytes(need),
                        blob.parent().unwrap_or(blob).display(),
                        human_bytes(free)
                    ),
                    path: blob.to_path_buf(),
                    source: std::io::Error::from(std::io::ErrorKind::StorageFull),
                });
            }
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&incomplete)
            .map_err(|e| {
                Error::io(
                    format!("cannot write {}", incomplete.display()),
                    &incomplete,
                    e,
                )
            })?;
        let io_err = |what: &str, e: std::io::Error| {
            Error::io(format!("{what} {}", incomplete.display()), &incomplete, e)
        };
        let mut start = file.metadata().map_err(|e| io_err("cannot stat", e))?.len();
        if start > meta.size {
            file.set_len(0).map_err(|e| io_err("cannot truncate", e))?;
            start = 0;
        }
        let mut hasher = meta.sha256().map(|_| Sha256::new());
        if let Some(h) = hasher.as_mut() {
            if start > 0 {
                file.seek(SeekFrom::Start(0))
                    .map_err(|e| io_err("cannot read", e))?;
                hash_into(h, (&mut file).take(start)).map_err(|e| io_err("cannot read", e))?;
            }
        }
        progress.start(repo, name, meta.size, start);
        if start < meta.size {
            let mut req = self.get.get(&meta.url);
            if start > 0 {
                req = req.set("Range", &format!("bytes={start}-"));
            }
            let resp = match self.with_token(req, &meta.url).call() {
                Ok(resp) => resp,
                Err(ureq::Error::Status(code, _))
                    if origin_of(&meta.url) != origin_of(&self.endpoint) =>
                {
                    return Err(Error::Hub {
                        message: format!(
                            "the download server of {repo}/{name} answered HTTP {code}; run the \
                             same command again"
                        ),
                    });
                }
                Err(err) => {
                    self.refused(repo, &meta.commit, name, err)?;
                    return Err(Error::NotFound {
                        message: format!("{repo}/{name} vanished from the hub while fetching it"),
                        path: None,
                        source: None,
                    });
                }
            };
            if start > 0 && resp.status() != 206 {
                // The server sent the whole file: start over.
                start = 0;
                file.set_len(0).map_err(|e| io_err("cannot truncate", e))?;
                hasher = meta.sha256().map(|_| Sha256::new());
                progress.start(repo, name, meta.size, 0);
            }
            file.seek(SeekFrom::Start(start))
                .map_err(|e| io_err("cannot write", e))?;
            let mut reader = resp.into_reader();
            let mut buf = vec![0u8; 1 << 20];
            let mut written = start;
            loop {
                let n = match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        let _ = file.flush();
                        return Err(Error::Hub {
                            message: format!(
                                "the download of {repo}/{name} broke off at {} of {} ({e}); run \
                                 the same command again to resume it",
                                human_bytes(written),
                                human_bytes(meta.size)
                            ),
                        });
                    }
                };
                let n = n.min((meta.size - written) as usize);
                if n == 0 {
                    break;
                }
                file.write_all(&buf[..n])
                    .map_err(|e| io_err("cannot write", e))?;
                if let Some(h) = hasher.as_mut() {
                    h.update(&buf[..n]);
                }
                written += n as u64;
                progress.advance(n as u64);
            }
            if written < meta.size {
                let _ = file.flush();
                return Err(Error::Hub {
                    message: format!(
                        "the download of {repo}/{name} ended at {} of {}; run the same command \
                         again to resume it",
                        human_bytes(written),
                        human_bytes(meta.size)
                    ),
                });
            }
        }
        file.sync_all().map_err(|e| io_err("cannot write", e))?;
        drop(file);
        if let (Some(h), Some(expected)) = (hasher, meta.sha256()) {
            let actual = hex(&h.finalize());
            if actual != expected {
                let _ = std::fs::remove_file(&incomplete);
                return Err(Error::Format {
                    message: format!(
                        "{repo}/{name} downloaded with SHA-256 {actual}, but the hub says \
                         {expected}; the download was deleted, run the same command again"
                    ),
                    source: None,
                });
            }
        }
        std::fs::rename(&incomplete, blob).map_err(|e| {
            Error::io(
                format!("cannot move {} into place", incomplete.display()),
                blob,
                e,
            )
        })?;
        Ok(start)
    }
}

/// The gated-repository error: where to accept the licence and which token to set.
fn gated_error(settings: &HubSettings, repo: &str, status: u16, token_given: bool) -> Error {
    let page = repo_page(settings, repo);
    let message = if token_given {
        format!(
            "the hub refused access to {repo} (HTTP {status}) with the token given: the repo is \
             gated. Accept its licence at {page} with the account the token belongs to (approval \
             can take a while), then run the same command again"
        )
    } else {
        format!(
            "the hub refused access to {repo} (HTTP {status}): the repo is gated. Accept its \
             licence at {page} with your account, create a read token at \
             {}/settings/tokens and set it: `export HF_TOKEN=hf_...`",
            endpoint(settings)
        )
    };
    Error::Gated {
        message,
        repo: repo.into(),
        status,
    }
}

fn unreachable_error(endpoint: &str, detail: &str) -> Error {
    Error::Hub {
        message: format!(
            "cannot reach the hub at {endpoint} ({detail}). No network? Check the connection \
             or the proxy (HTTPS_PROXY); a line PC without internet can take a copy of the cache \
             folder (HF_HOME/hub) from a machine that fetched the weights"
        ),
    }
}

/// The scheme and host of a URL (`https://huggingface.co` of `https://huggingface.co/x`).
fn origin_of(url: &str) -> &str {
    let after_scheme = url.find("://").map(|i| i + 3).unwrap_or(0);
    match url[after_scheme..].find('/') {
        Some(i) => &url[..after_scheme + i],
        None => url,
    }
}

/// Percent-encodes what a path segment cannot hold, keeping `/` between segments.
fn url_path(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// An ETag without quotes and without a weak marker.
fn clean_etag(etag: &str) -> String {
    etag.trim()
        .trim_start_matches("W/")
        .trim_matches('"')
        .to_string()
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".");
    s.push(suffix);
    PathBuf::from(s)
}

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), dir, e))
}

/// Points `snapshots/<commit>/<rel>` at the blob with a relative link (a copy where links are
/// not allowed).
fn link_pointer(pointer: &Path, blob: &Path, rel: &Path) -> Result<()> {
    if let Some(parent) = pointer.parent() {
        create_dir(parent)?;
    }
    if pointer.exists() {
        return Ok(());
    }
    // A dangling link left by a removed blob.
    let _ = std::fs::remove_file(pointer);
    let blob_name = blob.file_name().unwrap_or_default();
    let mut target = PathBuf::new();
    for _ in 0..rel.components().count() + 1 {
        target.push("..");
    }
    target.push("blobs");
    target.push(blob_name);
    #[cfg(unix)]
    let linked = std::os::unix::fs::symlink(&target, pointer);
    #[cfg(not(unix))]
    let linked: std::io::Result<()> = Err(std::io::Error::from(std::io::ErrorKind::Unsupported));
    if linked.is_err() {
        std::fs::copy(blob, pointer)
            .map_err(|e| Error::io(format!("cannot write {}", pointer.display()), pointer, e))?;
    }
    Ok(())
}

fn write_ref(folder: &Path, revision: &str, commit: &str) -> Result<()> {
    let path = folder.join("refs").join(safe_relative(revision)?);
    if std::fs::read_to_string(&path).is_ok_and(|c| c.trim() == commit) {
        return Ok(());
    }
    if let Some(parent) = path.parent() {
        create_dir(parent)?;
    }
    std::fs::write(&path, commit)
        .map_err(|e| Error::io(format!("cannot write {}", path.display()), &path, e))
}

/// An exclusive lock on a file next to the blob (the one hf-hub takes), so that two fetches, or
/// a fetch and a loader, never write the same blob at once.
struct FileLock {
    #[allow(dead_code)]
    file: std::fs::File,
}

impl FileLock {
    fn acquire(path: &Path) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| Error::io(format!("cannot create {}", path.display()), path, e))?;
        #[cfg(unix)]
        {
            use std::os::fd::AsRawFd;
            // SAFETY: flock on a descriptor this struct owns; released when it is closed.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc != 0 {
                return Err(Error::Io {
                    message: format!(
                        "{} is locked: another download of the same file is running; wait for it \
                         or stop it",
                        path.display()
                    ),
                    path: path.to_path_buf(),
                    source: std::io::Error::last_os_error(),
                });
            }
        }
        Ok(Self { file })
    }
}

/// Free bytes on the file system holding `path` (`None` where it cannot be asked).
pub fn free_bytes(path: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let mut existing = path;
        while !existing.exists() {
            existing = existing.parent()?;
        }
        let c = std::ffi::CString::new(existing.as_os_str().as_bytes()).ok()?;
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: a valid NUL-terminated path and a zeroed out-struct.
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return None;
        }
        Some(st.f_bavail as u64 * st.f_frsize as u64)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

/// `1.2 GB`, `88.3 MB`, `512 B` (decimal units, as the hub shows sizes).
pub fn human_bytes(bytes: u64) -> String {
    let b = bytes as f64;
    if b >= 1e9 {
        format!("{:.2} GB", b / 1e9)
    } else if b >= 1e6 {
        format!("{:.1} MB", b / 1e6)
    } else if b >= 1e3 {
        format!("{:.1} kB", b / 1e3)
    } else {
        format!("{bytes} B")
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hash_into(hasher: &mut Sha256, mut reader: impl Read) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// SHA-256 of a file as lowercase hex; `limit` hashes only the first bytes.
fn sha256_of(path: &Path, limit: Option<u64>) -> Result<String> {
    let file = std::fs::File::open(path)
        .map_err(|e| Error::io(format!("cannot read {}", path.display()), path, e))?;
    let mut h = Sha256::new();
    let res = match limit {
        Some(n) => hash_into(&mut h, file.take(n)),
        None => hash_into(&mut h, file),
    };
    res.map_err(|e| Error::io(format!("cannot read {}", path.display()), path, e))?;
    Ok(hex(&h.finalize()))
}

// ---------------------------------------------------------------------------------------------
// What the cache holds.

/// How much of a repository the cache holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheState {
    /// Every file the loader reads, each consistent.
    Complete,
    /// Something is there, but a file is missing, unfinished or inconsistent (`problems`).
    Partial,
    /// Nothing of it.
    Missing,
}

/// One file of a cached repository.
#[derive(Clone, Debug, Serialize)]
pub struct CachedFile {
    /// The name in the repository.
    pub name: String,
    /// The snapshot path.
    pub path: PathBuf,
    /// Bytes (of the blob it links to).
    pub size: u64,
    /// The blob's name when it is a SHA-256 (LFS files).
    pub sha256: Option<String>,
    /// Whether that SHA-256 was recomputed and matched (only with [`Verify::Digests`]).
    pub digest_checked: bool,
}

/// What the cache holds of one repository at one revision ([`cache_status`]).
#[derive(Clone, Debug, Serialize)]
pub struct RepoCacheStatus {
    /// `org/name`.
    pub repo: String,
    /// The revision looked up.
    pub revision: String,
    /// The commit `refs/<revision>` names, when it exists.
    pub commit: Option<String>,
    /// Complete, partial or missing.
    pub state: CacheState,
    /// The files found, weights (and shards) first.
    pub files: Vec<CachedFile>,
    /// Unfinished downloads (`blobs/*.incomplete`, `*.part`) and their bytes so far.
    pub unfinished: Vec<(PathBuf, u64)>,
    /// What is wrong, one sentence each.
    pub problems: Vec<String>,
}

impl RepoCacheStatus {
    /// Bytes of the files found.
    pub fn size_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}

/// What the cache at `cache_dir` holds of `repo` at `revision`, read from disk alone: the
/// weights file the loader would pick (the first of `wanted.weights` in the snapshot), every
/// shard of a sharded index, the config, each safetensors file as long as its header says,
/// with [`Verify::Digests`] every LFS blob's SHA-256; and unfinished downloads.
pub fn cache_status(
    cache_dir: &Path,
    repo: &str,
    revision: &str,
    wanted: WantedFiles<'_>,
    verify: Verify,
) -> RepoCacheStatus {
    let folder = repo_folder(cache_dir, repo);
    let mut status = RepoCacheStatus {
        repo: repo.into(),
        revision: revision.into(),
        commit: None,
        state: CacheState::Missing,
        files: Vec::new(),
        unfinished: unfinished_downloads(&folder.join("blobs")),
        problems: Vec::new(),
    };
    for (path, bytes) in &status.unfinished {
        status.problems.push(format!(
            "an unfinished download ({} so far): {}",
            human_bytes(*bytes),
            path.display()
        ));
    }
    let commit = std::fs::read_to_string(folder.join("refs").join(revision))
        .ok()
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty())
        .or_else(|| {
            // A revision that is itself a commit may have a snapshot and no ref.
            folder
                .join("snapshots")
                .join(revision)
                .is_dir()
                .then(|| revision.to_string())
        });
    let Some(commit) = commit else {
        if folder.join("snapshots").is_dir() || !status.unfinished.is_empty() {
            status.state = CacheState::Partial;
            if folder.join("snapshots").is_dir() {
                status.problems.push(format!(
                    "no refs/{revision} in {}: the cache holds another revision only",
                    folder.display()
                ));
            }
        }
        return status;
    };
    status.commit = Some(commit.clone());
    status.state = CacheState::Partial;
    let snapshot = folder.join("snapshots").join(&commit);

    let weights = wanted
        .weights
        .iter()
        .find(|w| snapshot.join(w).symlink_metadata().is_ok());
    let Some(weights) = weights else {
        status.problems.push(format!(
            "no weights file ({}) in {}",
            wanted.weights.join(", "),
            snapshot.display()
        ));
        return status;
    };
    let mut names = vec![weights.to_string()];
    if weights.ends_with(".index.json") {
        match shard_names(&snapshot.join(weights)) {
            Ok(shards) => names.extend(shards),
            Err(e) => status.problems.push(e.to_string()),
        }
    }
    names.extend(wanted.config.map(str::to_string));
    for name in names {
        match check_file(&snapshot, &name, verify) {
            Ok(file) => status.files.push(file),
            Err(problem) => status.problems.push(problem),
        }
    }
    if status.problems.is_empty() {
        status.state = CacheState::Complete;
    }
    status
}

fn unfinished_downloads(blobs: &Path) -> Vec<(PathBuf, u64)> {
    let Ok(entries) = std::fs::read_dir(blobs) else {
        return Vec::new();
    };
    let mut found: Vec<(PathBuf, u64)> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .is_some_and(|x| x == "incomplete" || x == "part")
        })
        .map(|p| {
            let len = std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
            (p, len)
        })
        .collect();
    found.sort();
    found
}

/// One snapshot file: present, its blob there, consistent.
fn check_file(
    snapshot: &Path,
    name: &str,
    verify: Verify,
) -> std::result::Result<CachedFile, String> {
    let rel = safe_relative(name).map_err(|e| e.to_string())?;
    let path = snapshot.join(&rel);
    if path.symlink_metadata().is_err() {
        return Err(format!("{name} is missing ({})", path.display()));
    }
    let md = std::fs::metadata(&path)
        .map_err(|_| format!("{name} links to a blob that is gone ({})", path.display()))?;
    let blob = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
    let sha256 = blob
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| is_sha256(n))
        .map(str::to_string);
    let size = md.len();
    if name.ends_with(".safetensors") {
        let expected = safetensors_len(&path).map_err(|e| format!("{name}: {e}"))?;
        if expected != size {
            return Err(format!(
                "{name} is {} but its header describes {}: truncated or corrupt",
                human_bytes(size),
                human_bytes(expected)
            ));
        }
    } else if name.ends_with(".json") {
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{name}: {e}"))?;
        serde_json::from_str::<serde_json::Value>(&text)
            .map_err(|e| format!("{name} is not valid JSON ({e})"))?;
    }
    let mut digest_checked = false;
    if let (Verify::Digests, Some(expected)) = (verify, &sha256) {
        let actual = sha256_of(&path, None).map_err(|e| e.to_string())?;
        if &actual != expected {
            return Err(format!(
                "{name} hashes to {actual}, not to its blob name {expected}: corrupt"
            ));
        }
        digest_checked = true;
    }
    Ok(CachedFile {
        name: name.into(),
        path,
        size,
        sha256,
        digest_checked,
    })
}

/// The length a safetensors file must have: 8 + header + the end of its last tensor.
fn safetensors_len(path: &Path) -> std::result::Result<u64, String> {
    let mut file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len)
        .map_err(|_| "shorter than a safetensors header".to_string())?;
    let n = u64::from_le_bytes(len);
    if n > 100 << 20 {
        return Err(format!("implausible safetensors header length {n}"));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header)
        .map_err(|_| "truncated inside its safetensors header".to_string())?;
    let json: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| format!("unreadable safetensors header ({e})"))?;
    let end = json
        .as_object()
        .ok_or("the safetensors header is not an object")?
        .iter()
        .filter(|(k, _)| k.as_str() != "__metadata__")
        .filter_map(|(_, v)| v.get("data_offsets")?.get(1)?.as_u64())
        .max()
        .unwrap_or(0);
    Ok(8 + n + end)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake HF cache entry: blob named by its sha256 (or a git-like id), linked from the
    /// snapshot, with a ref.
    fn put(cache: &Path, repo: &str, commit: &str, name: &str, bytes: &[u8], lfs: bool) -> PathBuf {
        let folder = repo_folder(cache, repo);
        let etag = if lfs {
            hex(&Sha256::digest(bytes))
        } else {
            format!("{:040x}", bytes.len())
        };
        std::fs::create_dir_all(folder.join("blobs")).unwrap();
        std::fs::write(folder.join("blobs").join(&etag), bytes).unwrap();
        link_pointer(
            &folder.join("snapshots").join(commit).join(name),
            &folder.join("blobs").join(&etag),
            Path::new(name),
        )
        .unwrap();
        write_ref(&folder, "main", commit).unwrap();
        folder.join("blobs").join(etag)
    }

    /// A valid safetensors file with one f32 tensor of `n` values.
    fn safetensors(n: usize) -> Vec<u8> {
        let header = format!(
            r#"{{"w":{{"dtype":"F32","shape":[{n}],"data_offsets":[0,{}]}}}}"#,
            4 * n
        );
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend(header.as_bytes());
        out.extend(vec![0u8; 4 * n]);
        out
    }

    const REPO: &str = "facebook/dinov2-small";
    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn a_complete_repo_is_complete_and_hashes_match() {
        let dir = tempfile::tempdir().unwrap();
        put(
            dir.path(),
            REPO,
            COMMIT,
            "model.safetensors",
            &safetensors(10),
            true,
        );
        put(dir.path(), REPO, COMMIT, "config.json", b"{}", false);
        let st = cache_status(dir.path(), REPO, "main", DINO_FILES, Verify::Digests);
        assert_eq!(st.state, CacheState::Complete, "{:?}", st.problems);
        assert_eq!(st.commit.as_deref(), Some(COMMIT));
        assert_eq!(st.files.len(), 2);
        assert!(st.files[0].digest_checked && st.files[0].sha256.is_some());
        assert_eq!(st.size_bytes(), safetensors(10).len() as u64 + 2);
        // The loaders' client finds the same files offline.
        let cached = Cache::new(dir.path().into()).model(REPO.into());
        assert_eq!(
            std::fs::read(cached.get("config.json").unwrap()).unwrap(),
            b"{}"
        );
    }

    #[test]
    fn missing_partial_truncated_and_corrupt_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let st = cache_status(dir.path(), REPO, "main", DINO_FILES, Verify::Sizes);
        assert_eq!(st.state, CacheState::Missing);

        // Weights without the config.
        put(
            dir.path(),
            REPO,
            COMMIT,
            "model.safetensors",
            &safetensors(10),
            true,
        );
        let st = cache_status(dir.path(), REPO, "main", DINO_FILES, Verify::Sizes);
        assert_eq!(st.state, CacheState::Partial);
        assert!(
            st.problems[0].contains("config.json is missing"),
            "{:?}",
            st.problems
        );

        // Truncated weights: the header describes more than the file holds.
        put(dir.path(), REPO, COMMIT, "config.json", b"{}", false);
        let blob = repo_folder(dir.path(), REPO)
            .join("blobs")
            .join(hex(&Sha256::digest(safetensors(10))));
        let mut bytes = std::fs::read(&blob).unwrap();
        bytes.truncate(bytes.len() - 4);
        std::fs::write(&blob, &bytes).unwrap();
        let st = cache_status(dir.path(), REPO, "main", DINO_FILES, Verify::Sizes);
        assert_eq!(st.state, CacheState::Partial);
        assert!(st.problems[0].contains("truncated"), "{:?}", st.problems);

        // Same length, other bytes: only the digest check sees it.
        bytes.extend([1, 2, 3, 4]);
        std::fs::write(&blob, &bytes).unwrap();
        let st = cache_status(dir.path(), REPO, "main", DINO_FILES, Verify::Sizes);
        assert_eq!(st.state, CacheState::Complete, "{:?}", st.problems);
        let st = cache_status(dir.path(), REPO, "main", DINO_FILES, Verify::Digests);
        assert!(st.problems[0].contains("corrupt"), "{:?}", st.problems);

        // A blob that is gone, and an unfinished download.
        std::fs::remove_file(&blob).unwrap();
        std::fs::write(with_suffix(&blob, "incomplete"), b"abc").unwrap();
        let st = cache_status(dir.path(), REPO, "main", DINO_FILES, Verify::Sizes);
        assert_eq!(st.state, CacheState::Partial);
        assert_eq!(st.unfinished.len(), 1);
        let all = st.problems.join("; ");
        assert!(all.contains("unfinished") && all.contains("gone"), "{all}");
    }

    #[test]
    fn a_sharded_checkpoint_needs_every_shard() {
        let dir = tempfile::tempdir().unwrap();
        let index = r#"{"weight_map":{"a":"model-00001-of-00002.safetensors","b":"model-00002-of-00002.safetensors"}}"#;
        put(
            dir.path(),
            REPO,
            COMMIT,
            "model.safetensors.index.json",
            index.as_bytes(),
            false,
        );
        put(
            dir.path(),
            REPO,
            COMMIT,
            "model-00001-of-00002.safetensors",
            &safetensors(3),
            true,
        );
        put(dir.path(), REPO, COMMIT, "config.json", b"{}", false);
        let st = cache_status(dir.path(), REPO, "main", DINO_FILES, Verify::Sizes);
        assert_eq!(st.state, CacheState::Partial);
        assert!(
            st.problems[0].contains("model-00002-of-00002"),
            "{:?}",
            st.problems
        );
        put(
            dir.path(),
            REPO,
            COMMIT,
            "model-00002-of-00002.safetensors",
            &safetensors(4),
            true,
        );
        let st = cache_status(dir.path(), REPO, "main", DINO_FILES, Verify::Sizes);
        assert_eq!(st.state, CacheState::Complete, "{:?}", st.problems);
        assert_eq!(st.files.len(), 4);
    }

    #[test]
    fn offline_fetch_succeeds_only_from_a_complete_cache() {
        let dir = tempfile::tempdir().unwrap();
        let settings = HubSettings {
            cache_dir: dir.path().into(),
            offline: true,
            token: None,
            endpoint: None,
        };
        let err =
            fetch_repo(REPO, "main", DINO_FILES, &settings, Verify::Sizes, &mut ()).unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::Offline);
        assert!(err.to_string().contains("nothing can be fetched"), "{err}");
        put(
            dir.path(),
            REPO,
            COMMIT,
            "model.safetensors",
            &safetensors(2),
            true,
        );
        put(dir.path(), REPO, COMMIT, "config.json", b"{}", false);
        let done = fetch_repo(REPO, "main", DINO_FILES, &settings, Verify::Sizes, &mut ()).unwrap();
        assert_eq!(done.commit, COMMIT);
        assert_eq!(done.downloaded_bytes(), 0);
        assert!(done.files.iter().all(|f| f.outcome == FileOutcome::Cached));
    }

    #[test]
    fn names_from_the_network_stay_inside_the_cache() {
        assert!(safe_relative("model.safetensors").is_ok());
        assert!(safe_relative("sub/model.safetensors").is_ok());
        for bad in ["../x", "/etc/passwd", "a/../../b", ""] {
            assert!(safe_relative(bad).is_err(), "{bad}");
        }
        assert_eq!(clean_etag("W/\"abc\""), "abc");
        assert_eq!(
            origin_of("https://huggingface.co/a/b"),
            "https://huggingface.co"
        );
        assert_eq!(origin_of("http://127.0.0.1:8080"), "http://127.0.0.1:8080");
        assert_eq!(url_path("a b/c.json"), "a%20b/c.json");
        assert!(known_gated("facebook/dinov3-vitl16-pretrain-lvd1689m"));
        assert_eq!(split_revision("a/b@v1"), ("a/b", "v1"));
        assert_eq!(split_revision("a/b"), ("a/b", "main"));
        assert!(!known_gated("facebook/dinov2-small"));
        assert_eq!(human_bytes(88_300_000), "88.3 MB");
    }

    #[test]
    fn gated_messages_link_the_licence_page_and_name_the_token() {
        let settings = HubSettings {
            cache_dir: PathBuf::from("/tmp"),
            offline: false,
            token: None,
            endpoint: None,
        };
        let err = gated_error(
            &settings,
            "facebook/dinov3-vits16-pretrain-lvd1689m",
            401,
            false,
        );
        let text = err.to_string();
        assert_eq!(err.kind(), crate::ErrorKind::Gated);
        assert!(
            text.contains("https://huggingface.co/facebook/dinov3-vits16-pretrain-lvd1689m")
                && text.contains("HF_TOKEN"),
            "{text}"
        );
        let with = gated_error(&settings, "facebook/x", 403, true).to_string();
        assert!(with.contains("token given"), "{with}");
    }
}
