//! The run directory of `ssvp train`: everything needed to resume training or to evaluate the
//! trained head, and nothing of the frozen backbones but their identity.
//!
//! ```text
//! <run>/config.toml                   the full SsvpConfig the run trains with
//! <run>/backbones.json                identity of the frozen backbones the features came from
//! <run>/state.json                    progress; names the checkpoint files below (commit point)
//! <run>/head-step-NNNNNNN.safetensors the head's trainable tensors after step N
//! <run>/optim-step-NNNNNNN.safetensors Adam moments and step counters after step N
//! <run>/train_log.jsonl               one JSON object per optimiser step: every loss term, lrs
//! ```
//!
//! Every file is written to `<name>.tmp` and renamed into place, so a crash leaves either the
//! old or the new file. `state.json` is renamed last: it only ever names checkpoint files that
//! are complete, and the files of older steps are deleted after it moved on.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::SsvpConfig;
use crate::error::{Error, Result};

/// The full [`SsvpConfig`] the run trains with.
pub const CONFIG_FILE: &str = "config.toml";
/// The identity of the frozen backbones the features came from.
pub const IDENTITY_FILE: &str = "backbones.json";
/// The run's progress ([`RunState`]); the commit point of a checkpoint.
pub const STATE_FILE: &str = "state.json";
/// One JSON object per optimiser step (`crate::train::StepRecord`).
pub const LOG_FILE: &str = "train_log.jsonl";

/// Version of the run-directory layout written by this crate.
pub const RUN_FORMAT_VERSION: u32 = 1;

/// What the run trained on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrainingData {
    /// Dataset root as given.
    pub root: PathBuf,
    /// Layout name (`ssvp_eval::datasets::Layout::name`).
    pub layout: String,
    /// The split trained on (`test` under the zero-shot protocol).
    pub split: String,
    /// The categories trained on (on-disk names).
    pub categories: Vec<String>,
    /// Images trained on.
    pub samples: usize,
    /// Of which anomalous.
    pub anomalous: usize,
    /// Whether unreadable samples were skipped (`--skip-bad`); a resumed run skips them too.
    #[serde(default)]
    pub skip_bad: bool,
}

/// Progress of a run; the commit point of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// Version of the run-directory layout ([`RUN_FORMAT_VERSION`] when written by this build).
    pub format_version: u32,
    /// What the run trains on.
    pub data: TrainingData,
    /// Epochs of the whole run.
    pub epochs: usize,
    /// Images per optimiser step.
    pub batch_size: usize,
    /// Optimiser steps per epoch (the last batch of an epoch may be partial).
    pub steps_per_epoch: usize,
    /// Optimiser steps of the whole run.
    pub total_steps: usize,
    /// Optimiser steps done (the next step to run).
    pub step: usize,
    /// Whether all `total_steps` are done.
    pub complete: bool,
    /// File (in the run directory) with the head's trainable tensors after `step` steps.
    pub head_file: String,
    /// File with the optimiser state after `step` steps.
    pub optimizer_file: String,
    /// Side of the square masks the segmentation loss used.
    pub mask_size: usize,
}

impl RunState {
    /// Completed epochs.
    pub fn epoch(&self) -> usize {
        self.step / self.steps_per_epoch.max(1)
    }
}

/// A run directory on disk.
#[derive(Debug, Clone)]
pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
    /// A new run in `path`: creates the folder; refuses an existing non-empty folder unless
    /// `force` (then the run files of an earlier run are removed first).
    pub fn create(path: impl AsRef<Path>, force: bool) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if path.exists() {
            if !path.is_dir() {
                return Err(Error::RunDir(format!(
                    "{} exists and is not a directory",
                    path.display()
                )));
            }
            let non_empty = fs::read_dir(&path)
                .map_err(|e| io_err(&path, e))?
                .next()
                .is_some();
            if non_empty && !force {
                return Err(Error::RunDir(format!(
                    "run directory {} is not empty: pass --resume to continue its training or \
                     --force to start over",
                    path.display()
                )));
            }
            if non_empty {
                let run = Self { path: path.clone() };
                run.remove_run_files()?;
            }
        }
        fs::create_dir_all(&path).map_err(|e| io_err(&path, e))?;
        Ok(Self { path })
    }

    /// An existing run (it must hold `state.json`, `config.toml` and `backbones.json`). A path
    /// that does not exist is [`Error::NotFound`], one that cannot be read [`Error::Io`].
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let meta = fs::metadata(&path).map_err(|e| io_err(&path, e))?;
        if !meta.is_dir() {
            return Err(Error::RunDir(format!(
                "{} is not a run directory (not a directory)",
                path.display()
            )));
        }
        for name in [STATE_FILE, CONFIG_FILE, IDENTITY_FILE] {
            if !path.join(name).is_file() {
                return Err(Error::RunDir(format!(
                    "{} is not a run directory of `ssvp train`: {name} is missing",
                    path.display()
                )));
            }
        }
        Ok(Self { path })
    }

    /// The run directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of the run file `name`.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Writes `bytes` to `name` through a temporary file and a rename.
    pub fn write_atomic(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let fin = self.file(name);
        ssvp_util::fs::write_atomic(&fin, bytes).map_err(|e| io_err(&fin, e))
    }

    /// Runs `write(tmp_path)` then renames the temporary file to `name`.
    pub fn write_atomic_with(
        &self,
        name: &str,
        write: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<()> {
        let fin = self.file(name);
        let mut failed = None;
        ssvp_util::fs::write_atomic_with(&fin, |tmp| {
            write(tmp).map_err(|e| {
                failed = Some(e);
                std::io::Error::other("the writer failed")
            })
        })
        .map_err(|e| failed.take().unwrap_or_else(|| io_err(&fin, e)))
    }

    /// Writes the run's [`CONFIG_FILE`].
    pub fn write_config(&self, cfg: &SsvpConfig) -> Result<()> {
        self.write_atomic(CONFIG_FILE, cfg.to_toml_string()?.as_bytes())
    }

    /// Reads the run's [`CONFIG_FILE`].
    pub fn read_config(&self) -> Result<SsvpConfig> {
        SsvpConfig::from_toml_file(self.file(CONFIG_FILE))
    }

    /// Writes the backbones' identity (any serde value) as pretty JSON.
    pub fn write_identity<T: Serialize>(&self, identity: &T) -> Result<()> {
        let text = serde_json::to_string_pretty(identity).map_err(|e| {
            Error::Serialize(format!("cannot serialise the backbone identity: {e}"))
        })?;
        self.write_atomic(IDENTITY_FILE, text.as_bytes())
    }

    /// The stored identity as a JSON value (compare it with `serde_json::to_value` of the
    /// identity of the backbones at hand).
    pub fn read_identity_value(&self) -> Result<serde_json::Value> {
        read_json(&self.file(IDENTITY_FILE))
    }

    /// Reads the stored identity as `T` (`ssvp_features::BackboneIdentity`).
    pub fn read_identity<T: for<'de> Deserialize<'de>>(&self) -> Result<T> {
        read_json(&self.file(IDENTITY_FILE))
    }

    /// Reads the run's progress. A state of another format version is [`Error::Version`]
    /// (checked before the rest is parsed, whose fields may have changed with the version); a
    /// state that does not parse is [`Error::Checkpoint`].
    pub fn read_state(&self) -> Result<RunState> {
        let path = self.file(STATE_FILE);
        let value: serde_json::Value = read_json(&path)?;
        let found = value.get("format_version").and_then(|v| v.as_u64());
        if let Some(found) = found.filter(|&v| v != u64::from(RUN_FORMAT_VERSION)) {
            return Err(Error::Version {
                path,
                found: u32::try_from(found).unwrap_or(u32::MAX),
                supported: RUN_FORMAT_VERSION,
            });
        }
        serde_json::from_value(value)
            .map_err(|e| Error::Checkpoint(format!("{}: {e}", path.display())))
    }

    /// Commits `state` (whose checkpoint files must already be written) and deletes the
    /// checkpoint files of other steps.
    pub fn commit_state(&self, state: &RunState) -> Result<()> {
        let text = serde_json::to_string_pretty(state)
            .map_err(|e| Error::Serialize(format!("cannot serialise the run state: {e}")))?;
        self.write_atomic(STATE_FILE, text.as_bytes())?;
        for entry in fs::read_dir(&self.path).map_err(|e| io_err(&self.path, e))? {
            let name = entry
                .map_err(|e| io_err(&self.path, e))?
                .file_name()
                .to_string_lossy()
                .into_owned();
            let is_checkpoint = (name.starts_with("head-step-") || name.starts_with("optim-step-"))
                && name.ends_with(".safetensors");
            if is_checkpoint && name != state.head_file && name != state.optimizer_file {
                let _ = fs::remove_file(self.file(&name));
            }
        }
        Ok(())
    }

    /// Removes the files a run writes (used by `--force`); other files are left alone.
    fn remove_run_files(&self) -> Result<()> {
        for entry in fs::read_dir(&self.path).map_err(|e| io_err(&self.path, e))? {
            let entry = entry.map_err(|e| io_err(&self.path, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let ours = [CONFIG_FILE, IDENTITY_FILE, STATE_FILE, LOG_FILE].contains(&name.as_str())
                || name.starts_with("head-step-")
                || name.starts_with("optim-step-")
                || name.ends_with(".tmp");
            if ours && entry.path().is_file() {
                fs::remove_file(entry.path()).map_err(|e| io_err(&entry.path(), e))?;
            }
        }
        Ok(())
    }

    /// Appends lines to the training log.
    pub fn append_log(&self, lines: &[String]) -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let path = self.file(LOG_FILE);
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io_err(&path, e))?;
        let mut text = lines.join("\n");
        text.push('\n');
        f.write_all(text.as_bytes()).map_err(|e| io_err(&path, e))
    }

    /// Drops log lines of steps at or after `step` (they were logged after the checkpoint a
    /// resumed run restarts from, and will be logged again).
    pub fn truncate_log(&self, step: usize) -> Result<()> {
        let path = self.file(LOG_FILE);
        if !path.exists() {
            return Ok(());
        }
        let text = fs::read_to_string(&path).map_err(|e| io_err(&path, e))?;
        let kept: Vec<&str> = text
            .lines()
            .filter(|line| {
                serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                    .is_some_and(|s| (s as usize) < step)
            })
            .collect();
        let mut out = kept.join("\n");
        if !out.is_empty() {
            out.push('\n');
        }
        self.write_atomic(LOG_FILE, out.as_bytes())
    }
}

/// Checkpoint file names of step `step`.
pub fn checkpoint_names(step: usize) -> (String, String) {
    (
        format!("head-step-{step:07}.safetensors"),
        format!("optim-step-{step:07}.safetensors"),
    )
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = fs::read_to_string(path).map_err(|e| io_err(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Checkpoint(format!("{}: {e}", path.display())))
}

fn io_err(path: &Path, e: std::io::Error) -> Error {
    Error::io(path, e)
}

/// A trained head loaded from a run directory, with what it was trained on.
pub struct TrainedRun {
    /// The run directory.
    pub run: RunDir,
    /// The run's config (with the post-processing of [`TrainedRun::set_postprocess`]).
    pub config: SsvpConfig,
    /// The run's progress, naming the checkpoint the head was loaded from.
    pub state: RunState,
    /// The head with the trained tensors.
    pub head: crate::SsvpHead,
    /// The backbones' identity as stored (`backbones.json`).
    pub identity: ssvp_features::BackboneIdentity,
}

impl TrainedRun {
    /// Opens `dir` (a run directory of `ssvp train`) and loads the head of its last checkpoint.
    pub fn load(dir: impl AsRef<Path>, device: &candle_core::Device) -> Result<Self> {
        let run = RunDir::open(dir)?;
        // The state first: a run of another format version is told as such, whatever else
        // changed with the version.
        let state = run.read_state()?;
        let config = run.read_config()?;
        let identity = run.read_identity()?;
        let head = crate::SsvpHead::new(&config, device)?;
        head.load(run.file(&state.head_file))?;
        Ok(Self {
            run,
            config,
            state,
            head,
            identity,
        })
    }

    /// Rebuilds the head with another post-processing (the only part of the config that may
    /// change after training: it acts on the maps, not on the weights).
    pub fn set_postprocess(
        &mut self,
        postprocess: crate::PostprocessConfig,
        device: &candle_core::Device,
    ) -> Result<()> {
        if postprocess == self.config.postprocess {
            return Ok(());
        }
        self.config.postprocess = postprocess;
        let head = crate::SsvpHead::new(&self.config, device)?;
        head.load(self.run.file(&self.state.head_file))?;
        self.head = head;
        Ok(())
    }

    /// Refuses backbones whose identity differs from the one the head was trained on, naming
    /// the fields that differ (the same weights under another path or hub id are accepted).
    /// A differing identity is [`Error::Mismatch`].
    pub fn check_identity(&self, current: &ssvp_features::BackboneIdentity) -> Result<()> {
        self.identity.check_matches(current).map_err(|e| {
            Error::Mismatch(format!(
                "the checkpoint {} ({}) was trained on features of other backbones than the \
                 requested ones ({} / {}); use the backbones it was trained with: {}",
                self.run.path().display(),
                self.run.file(IDENTITY_FILE).display(),
                current.clip,
                current.dino,
                ssvp_util::error::message_chain(&e)
            ))
        })
    }
}
