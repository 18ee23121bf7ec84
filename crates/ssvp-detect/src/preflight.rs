//! Checks of a [`LoadSpec`] that run no model: the options are valid, a backbones preset is
//! known, and every file the spec names exists and reads (the run directory, the config, the
//! bank's header, the reference images, the calibration). `ssvp serve` runs them before it
//! opens its port, so a mistyped flag fails at once, not after the port is open and the model
//! is loading in the background. What needs the model (its weights, and whether a bank or a
//! calibration was made for it) is checked when it loads ([`crate::Detector::load`]).

use std::path::Path;

use crate::calibrate::Calibration;
use crate::error::{Error, ErrorKind, Result};
use crate::load::{scoring_backbones, scoring_config, LoadSpec, Recorded};
use crate::memory::{read_bank_meta, MemorySpec};

/// Checks `spec` as far as can be done without loading a model (see the module docs).
pub fn check(spec: &LoadSpec) -> Result<()> {
    spec.options.validate()?;
    if spec.checkpoint.is_none() && spec.memory.is_none() {
        return Err(Error::invalid(
            "nothing to score with: give a trained run (--checkpoint), good reference images \
             (--normal) or a bank (--bank)",
        ));
    }
    if let Some(dir) = &spec.checkpoint {
        check_run_dir(dir)?;
    }
    if let Some(config) = &spec.config {
        scoring_config(Some(config), None)?;
    }
    if let Some(name) = &spec.backbones.preset {
        ssvp_features::presets::preset(name)
            .map_err(|e| Error::from(e).context("the backbones flags"))?;
    }
    match &spec.memory {
        Some(MemorySpec::Bank { path, scoring }) => {
            scoring.validate()?;
            read_bank_meta(path)?;
        }
        Some(MemorySpec::References { paths, scoring, .. }) => {
            scoring.validate()?;
            if let Some(missing) = paths.iter().find(|p| !p.is_file()) {
                return Err(Error::new(
                    ErrorKind::NotFound,
                    format!("the reference image {} does not exist", missing.display()),
                ));
            }
        }
        Some(MemorySpec::Mutual(config)) => config.validate()?,
        None => {}
    }
    if let Some(path) = &spec.calibration {
        Calibration::read(path)?;
    }
    // Without a head, the backbones the flags and the artifacts name must agree (a preset that
    // conflicts with the bank's is refused here, before the port opens).
    if spec.checkpoint.is_none() {
        let needs_clip = match &spec.memory {
            Some(memory) => memory.reads_clip()?,
            None => false,
        };
        let recorded = Recorded::of_spec(spec)?;
        scoring_backbones(
            spec.config.as_deref(),
            &spec.backbones,
            recorded.as_ref(),
            needs_clip,
        )?;
    }
    Ok(())
}

#[cfg(feature = "head")]
fn check_run_dir(dir: &Path) -> Result<()> {
    ssvp_model::run_dir::RunDir::open(dir)
        .map(|_| ())
        .map_err(|e| Error::from(e).context(format!("the checkpoint {}", dir.display())))
}

#[cfg(not(feature = "head"))]
fn check_run_dir(_dir: &Path) -> Result<()> {
    Err(Error::new(
        ErrorKind::Unsupported,
        "this build scores without a trained head (built without the `head` feature); drop \
         --checkpoint",
    ))
}
