//! `ssvp doctor`: whether this machine can run ssvp, and what to do where it cannot.
//!
//! [`run_doctor`] checks, without the network:
//! - the machine: CPU model and extensions, threads, memory, and the GPU where the build has
//!   CUDA (`ssvp_backbones::runtime`);
//! - the Hugging Face cache: where it is, whether it can be written, free space, offline mode
//!   and whether a token is set (for the gated presets);
//! - each backbones preset ([`ssvp_features::presets`]): whether the cache holds its weights
//!   complete ([`ssvp_backbones::weights::fetch::cache_status`]), and for each that is usable
//!   (cached, or `tiny`, which needs none) a smoke run: the towers loaded and one synthetic
//!   image run through them, timed.
//!
//! Every problem comes with the commands that fix it (`ssvp fetch anomalydino`, `export
//! HF_TOKEN=...`). The report passes ([`DoctorReport::passed`]) when no check failed: with the
//! presets left to the default (all of them), a machine where no preset with real weights is
//! usable fails, and the fix says what to fetch; with presets named, each named one must be
//! usable.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::Device;
use serde::Serialize;
use ssvp_backbones::runtime::{self, CpuInfo, MemoryInfo};
use ssvp_backbones::weights::fetch::{
    self, cache_status, known_gated, repo_page, split_revision, tower_files, CacheState, Verify,
};
use ssvp_backbones::weights::HubSettings;
use ssvp_features::presets::{self, Preset, ANOMALYDINO, PAPER};
use ssvp_features::{Backbones, FeatureSource, TINY};
use ssvp_image::RgbImage8;

/// What to check.
#[derive(Clone, Debug)]
pub struct DoctorOptions {
    /// Presets to check; empty: all of them (and then at least one with real weights must be
    /// usable).
    pub presets: Vec<String>,
    /// The hub cache and settings (`HubSettings::from_env()`).
    pub hub: HubSettings,
    /// How cached files are checked (`Digests` hashes every weights file).
    pub verify: Verify,
    /// Whether usable presets are loaded and run on one image.
    pub smoke: bool,
    /// Where the smoke runs run.
    pub device: Device,
}

/// How bad a problem is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// The check failed: doctor exits non-zero.
    Fail,
    /// Works, but not as well as it could.
    Warn,
    /// Worth knowing.
    Note,
}

/// One problem and its fix.
#[derive(Clone, Debug, Serialize)]
pub struct Problem {
    /// How bad.
    pub severity: Severity,
    /// The preset it is about, if one.
    pub preset: Option<String>,
    /// What is wrong.
    pub message: String,
    /// Commands (or steps) that fix it, in order.
    pub fix: Vec<String>,
}

/// The GPU side.
#[derive(Clone, Debug, Serialize)]
pub struct GpuCheck {
    /// Whether this binary was built with `--features cuda`.
    pub cuda_built: bool,
    /// The NVIDIA driver's version line (`/proc/driver/nvidia/version`), when one is loaded.
    pub nvidia_driver: Option<String>,
    /// `cuda:0` when the first GPU opened (CUDA builds only).
    pub cuda_device: Option<String>,
    /// Why it did not open.
    pub error: Option<String>,
}

/// The Hugging Face cache.
#[derive(Clone, Debug, Serialize)]
pub struct CacheCheck {
    /// The hub cache directory.
    pub dir: PathBuf,
    /// Whether it exists yet.
    pub exists: bool,
    /// Whether a file can be created in it (or, while it does not exist, in the nearest
    /// existing folder above it).
    pub writable: bool,
    /// Free bytes on its file system.
    pub free_bytes: Option<u64>,
    /// `HF_HUB_OFFLINE`.
    pub offline: bool,
    /// Whether a token is set (`HF_TOKEN` or the token file).
    pub token: bool,
    /// The hub endpoint.
    pub endpoint: String,
}

/// The weights of a preset in the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightsState {
    /// `tiny`: seeded towers, no files.
    NoneNeeded,
    /// Every file of every tower.
    Complete,
    /// Something, not all, or inconsistent.
    Partial,
    /// Nothing.
    Missing,
}

/// One repository of a preset.
#[derive(Clone, Debug, Serialize)]
pub struct RepoCheck {
    /// `clip` or `dino`.
    pub tower: String,
    /// The hub id.
    pub repo: String,
    /// What the cache holds of it.
    pub state: CacheState,
    /// Bytes of its files in the cache.
    pub size_bytes: u64,
    /// Whether it is gated on the hub.
    pub gated: bool,
    /// Whether every weights file's SHA-256 was recomputed and matched (`Verify::Digests`).
    pub verified: bool,
    /// What is wrong with the cached copy.
    pub problems: Vec<String>,
}

/// The one-image run of a preset.
#[derive(Clone, Debug, Serialize)]
pub struct SmokeCheck {
    /// Whether the towers loaded and gave finite features of the expected shapes.
    pub ok: bool,
    /// Milliseconds to load (or build) the towers.
    pub load_ms: f64,
    /// Milliseconds of one image: preprocessing and both towers.
    pub image_ms: f64,
    /// The device it ran on.
    pub device: String,
    /// The patch grid of the features.
    pub grid: Option<(usize, usize)>,
    /// Why it failed.
    pub error: Option<String>,
}

/// One preset.
#[derive(Clone, Debug, Serialize)]
pub struct PresetCheck {
    /// The `--backbones` name.
    pub name: String,
    /// One line about it.
    pub summary: String,
    /// Whether a repository of it is gated.
    pub gated: bool,
    /// Its weights in the cache.
    pub weights: WeightsState,
    /// Bytes of its weights in the cache.
    pub size_bytes: u64,
    /// Per repository.
    pub repos: Vec<RepoCheck>,
    /// The smoke run, when it was run.
    pub smoke: Option<SmokeCheck>,
    /// Whether it can be used now: weights complete (or none needed) and the smoke run (when
    /// run) passed.
    pub usable: bool,
    /// The commands that make it usable, when it is not.
    pub fix: Vec<String>,
}

/// Everything `ssvp doctor` found.
#[derive(Clone, Debug, Serialize)]
pub struct DoctorReport {
    /// The ssvp version.
    pub version: &'static str,
    /// The CPU.
    pub cpu: CpuInfo,
    /// The memory.
    pub memory: Option<MemoryInfo>,
    /// The GPU.
    pub gpu: GpuCheck,
    /// The hub cache.
    pub cache: CacheCheck,
    /// Whether every preset was checked (no names given).
    pub all_presets: bool,
    /// The presets checked.
    pub presets: Vec<PresetCheck>,
    /// What is wrong, worst first.
    pub problems: Vec<Problem>,
    /// Whether no check failed.
    pub passed: bool,
}

/// Runs every check; `step` is told what is being done before each slow part (loading and
/// running a preset), for a front that shows progress. An unknown preset name is an error.
pub fn run_doctor(
    options: &DoctorOptions,
    step: &mut dyn FnMut(&str),
) -> crate::Result<DoctorReport> {
    let chosen: Vec<Preset> = if options.presets.is_empty() {
        presets::all()
    } else {
        options
            .presets
            .iter()
            .map(|n| presets::preset(n))
            .collect::<ssvp_features::Result<_>>()
            .map_err(crate::Error::from)?
    };
    let all_presets = options.presets.is_empty();
    let mut problems = Vec::new();

    let cpu = runtime::cpu_info();
    if cpu.arch == "x86_64" && !cpu.features.avx2 {
        problems.push(Problem {
            severity: Severity::Warn,
            preset: None,
            message: "the CPU has no AVX2: the tensor kernels fall back to slow generic code"
                .into(),
            fix: vec!["run on a CPU with AVX2 (any x86 server since 2013)".into()],
        });
    }
    let memory = runtime::memory_info();
    let gpu = gpu_check(&mut problems);
    let cache = cache_check(&options.hub);
    if !cache.writable {
        problems.push(Problem {
            severity: Severity::Warn,
            preset: None,
            message: format!(
                "the Hugging Face cache {} cannot be written: `ssvp fetch` cannot store weights",
                cache.dir.display()
            ),
            fix: vec![commented(
                "export HF_HOME=/a/writable/folder",
                "or make it writable",
            )],
        });
    }

    let mut checks = Vec::new();
    for preset in &chosen {
        let check = preset_check(preset, options, &cache, step);
        checks.push(check);
    }
    for check in &checks {
        preset_problems(check, all_presets, &cache, &mut problems);
    }
    if all_presets && !checks.iter().any(|c| c.usable && c.name != TINY) {
        let mut fix = Vec::new();
        if cache.offline {
            fix.push("unset HF_HUB_OFFLINE".to_string());
        }
        fix.push(commented(
            &format!("ssvp fetch {ANOMALYDINO}"),
            "DINOv2 ViT-S/14, ungated: references, banks, mutual",
        ));
        if !cache.token {
            fix.push(commented(
                "export HF_TOKEN=hf_...",
                "for the gated paper preset (DINOv3)",
            ));
        }
        fix.push(commented(
            &format!("ssvp fetch {PAPER}"),
            "CLIP ViT-L/14@336 + DINOv3 ViT-L/16: the SSVP head",
        ));
        problems.push(Problem {
            severity: Severity::Fail,
            preset: None,
            message: "no preset with real weights is in the cache: only `tiny` (random weights, \
                      for tests) can run"
                .into(),
            fix,
        });
    }
    problems.sort_by_key(|p| match p.severity {
        Severity::Fail => 0,
        Severity::Warn => 1,
        Severity::Note => 2,
    });
    let passed = !problems.iter().any(|p| p.severity == Severity::Fail);
    Ok(DoctorReport {
        version: env!("CARGO_PKG_VERSION"),
        cpu,
        memory,
        gpu,
        cache,
        all_presets,
        presets: checks,
        problems,
        passed,
    })
}

/// A command and a comment after it, the comments of consecutive lines aligned.
fn commented(command: &str, comment: &str) -> String {
    format!("{command:<24} # {comment}")
}

fn gpu_check(problems: &mut Vec<Problem>) -> GpuCheck {
    let nvidia_driver = std::fs::read_to_string("/proc/driver/nvidia/version")
        .ok()
        .and_then(|t| {
            t.lines()
                .next()
                .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        });
    let mut check = GpuCheck {
        cuda_built: runtime::CUDA_BUILT,
        nvidia_driver,
        cuda_device: None,
        error: None,
    };
    if runtime::CUDA_BUILT {
        match runtime::parse_device("cuda") {
            Ok(device) => check.cuda_device = Some(runtime::device_name(&device)),
            Err(e) => {
                check.error = Some(e.to_string());
                problems.push(Problem {
                    severity: Severity::Warn,
                    preset: None,
                    message: format!("built with CUDA but no GPU opened: {e}"),
                    fix: vec![commented(
                        "nvidia-smi",
                        "is the driver loaded and a GPU visible?",
                    )],
                });
            }
        }
    } else if check.nvidia_driver.is_some() {
        problems.push(Problem {
            severity: Severity::Note,
            preset: None,
            message: "an NVIDIA driver is loaded but this ssvp was built without CUDA".into(),
            fix: vec![commented(
                "cargo build --release --features cuda",
                "README \"GPU build\"",
            )],
        });
    }
    check
}

fn cache_check(hub: &HubSettings) -> CacheCheck {
    CacheCheck {
        dir: hub.cache_dir.clone(),
        exists: hub.cache_dir.is_dir(),
        writable: writable(&hub.cache_dir),
        free_bytes: fetch::free_bytes(&hub.cache_dir),
        offline: hub.offline,
        token: fetch::token_available(hub),
        endpoint: hub
            .endpoint
            .clone()
            .unwrap_or_else(|| fetch::DEFAULT_ENDPOINT.to_string()),
    }
}

/// Whether a file can be created in `dir`, or in the nearest existing folder above it.
fn writable(dir: &Path) -> bool {
    let mut existing = dir;
    while !existing.is_dir() {
        match existing.parent() {
            Some(p) if !p.as_os_str().is_empty() => existing = p,
            _ => return false,
        }
    }
    let probe = existing.join(format!(".ssvp-doctor-{}", std::process::id()));
    let ok = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

fn preset_check(
    preset: &Preset,
    options: &DoctorOptions,
    cache: &CacheCheck,
    step: &mut dyn FnMut(&str),
) -> PresetCheck {
    let repos: Vec<RepoCheck> = preset
        .hub_repos()
        .into_iter()
        .map(|(tower, spec)| {
            let (repo, revision) = split_revision(&spec);
            let repo = repo.to_string();
            let st = cache_status(
                &options.hub.cache_dir,
                &repo,
                revision,
                tower_files(tower),
                options.verify,
            );
            let verified = st.state == CacheState::Complete
                && st
                    .files
                    .iter()
                    .filter(|f| f.sha256.is_some())
                    .all(|f| f.digest_checked)
                && options.verify == Verify::Digests;
            RepoCheck {
                tower: tower.to_string(),
                gated: known_gated(&repo),
                verified,
                size_bytes: st.size_bytes(),
                state: st.state,
                problems: st.problems,
                repo,
            }
        })
        .collect();
    let weights = if repos.is_empty() {
        WeightsState::NoneNeeded
    } else if repos.iter().all(|r| r.state == CacheState::Complete) {
        WeightsState::Complete
    } else if repos.iter().all(|r| r.state == CacheState::Missing) {
        WeightsState::Missing
    } else {
        WeightsState::Partial
    };
    let gated = repos.iter().any(|r| r.gated);
    let loadable = matches!(weights, WeightsState::NoneNeeded | WeightsState::Complete);
    let smoke = (loadable && options.smoke).then(|| {
        step(&format!("loading {} and running one image", preset.name));
        smoke_run(preset, &options.device)
    });
    let usable = loadable && smoke.as_ref().is_none_or(|s| s.ok);
    let mut fix = Vec::new();
    if !usable {
        if cache.offline && !loadable {
            fix.push("unset HF_HUB_OFFLINE".to_string());
        }
        if gated && !cache.token && !loadable {
            let repo = repos.iter().find(|r| r.gated).map(|r| r.repo.as_str());
            fix.push(commented(
                "export HF_TOKEN=hf_...",
                &format!(
                    "after accepting the licence at {}",
                    repo.map(|r| repo_page(&options.hub, r)).unwrap_or_default()
                ),
            ));
        }
        let verify = if weights == WeightsState::Complete {
            // Complete by size but failing to load: re-hash and re-download what is corrupt.
            " --verify"
        } else {
            ""
        };
        fix.push(format!("ssvp fetch {}{verify}", preset.name));
    }
    PresetCheck {
        name: preset.name.to_string(),
        summary: preset.summary.to_string(),
        gated,
        weights,
        size_bytes: repos.iter().map(|r| r.size_bytes).sum(),
        repos,
        smoke,
        usable,
        fix,
    }
}

fn preset_problems(
    check: &PresetCheck,
    all_presets: bool,
    cache: &CacheCheck,
    problems: &mut Vec<Problem>,
) {
    let preset = Some(check.name.clone());
    match check.weights {
        WeightsState::Partial => {
            let details: Vec<String> = check
                .repos
                .iter()
                .flat_map(|r| r.problems.iter().map(move |p| format!("{}: {p}", r.repo)))
                .collect();
            problems.push(Problem {
                severity: Severity::Fail,
                preset: preset.clone(),
                message: format!(
                    "the weights of `{}` are in the cache only in part: {}",
                    check.name,
                    if details.is_empty() {
                        "a repository is missing".to_string()
                    } else {
                        details.join("; ")
                    }
                ),
                fix: check.fix.clone(),
            });
        }
        WeightsState::Missing if !all_presets => problems.push(Problem {
            severity: Severity::Fail,
            preset: preset.clone(),
            message: format!(
                "the weights of `{}` are not in the cache {}",
                check.name,
                cache.dir.display()
            ),
            fix: check.fix.clone(),
        }),
        _ => {}
    }
    if let Some(smoke) = check.smoke.as_ref().filter(|s| !s.ok) {
        problems.push(Problem {
            severity: Severity::Fail,
            preset,
            message: format!(
                "`{}` did not run on one image: {}",
                check.name,
                smoke.error.as_deref().unwrap_or("unknown error")
            ),
            fix: check.fix.clone(),
        });
    }
}

/// A photo-like synthetic image: smooth gradients, a grid of parts and some texture.
fn synthetic_image(width: usize, height: usize) -> RgbImage8 {
    let mut data = Vec::with_capacity(width * height * 3);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for y in 0..height {
        for x in 0..width {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let noise = ((state >> 59) as i32) - 16;
            let part = ((x / 40) + (y / 40)) % 2 == 0;
            let base = [
                (x * 200 / width) as i32 + 30,
                (y * 200 / height) as i32 + 20,
                if part { 170 } else { 90 },
            ];
            for c in base {
                data.push((c + noise).clamp(0, 255) as u8);
            }
        }
    }
    RgbImage8 {
        width,
        height,
        data,
    }
}

/// Loads the towers of `preset` and runs one synthetic image through them.
pub fn smoke_run(preset: &Preset, device: &Device) -> SmokeCheck {
    let mut check = SmokeCheck {
        ok: false,
        load_ms: 0.0,
        image_ms: 0.0,
        device: runtime::device_name(device),
        grid: None,
        error: None,
    };
    let t0 = Instant::now();
    let backbones = match Backbones::load(&preset.config, &preset.taps, device) {
        Ok(b) => b,
        Err(e) => {
            check.load_ms = t0.elapsed().as_secs_f64() * 1e3;
            check.error = Some(ssvp_util::error::message_chain(&e));
            return check;
        }
    };
    check.load_ms = t0.elapsed().as_secs_f64() * 1e3;
    let image = synthetic_image(640, 480);
    let t1 = Instant::now();
    let result = backbones
        .features_of_images(std::slice::from_ref(&image))
        .and_then(|mut f| {
            let f = f.remove(0);
            f.check(backbones.identity())?;
            Ok(f)
        });
    check.image_ms = t1.elapsed().as_secs_f64() * 1e3;
    match result {
        Ok(features) => {
            check.grid = Some(features.grid);
            let finite = features
                .dino_local
                .iter()
                .chain(&features.clip_local)
                .all(|t| {
                    t.sqr()
                        .and_then(|t| t.sum_all())
                        .and_then(|t| t.to_dtype(candle_core::DType::F32))
                        .and_then(|t| t.to_scalar::<f32>())
                        .is_ok_and(f32::is_finite)
                });
            if finite {
                check.ok = true;
            } else {
                check.error = Some("the features are not finite numbers".into());
            }
        }
        Err(e) => check.error = Some(ssvp_util::error::message_chain(&e)),
    }
    check
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(dir: &Path, presets: &[&str]) -> DoctorOptions {
        DoctorOptions {
            presets: presets.iter().map(|s| s.to_string()).collect(),
            hub: HubSettings {
                cache_dir: dir.join("hub"),
                offline: true,
                token: None,
                endpoint: None,
            },
            verify: Verify::Sizes,
            smoke: true,
            device: Device::Cpu,
        }
    }

    #[test]
    fn an_empty_cache_fails_and_names_what_to_fetch() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = options(dir.path(), &[]);
        opts.smoke = false;
        let report = run_doctor(&opts, &mut |_| {}).unwrap();
        assert!(!report.passed);
        assert!(report.cache.writable && !report.cache.exists);
        let fail = &report.problems[0];
        assert_eq!(fail.severity, Severity::Fail);
        assert!(
            fail.fix
                .iter()
                .any(|f| f.starts_with("ssvp fetch anomalydino")),
            "{fail:?}"
        );
        assert!(
            fail.fix.iter().any(|f| f == "unset HF_HUB_OFFLINE"),
            "{fail:?}"
        );
        let paper = report.presets.iter().find(|p| p.name == PAPER).unwrap();
        assert_eq!(paper.weights, WeightsState::Missing);
        assert!(paper.gated);
        assert!(
            paper.fix.iter().any(|f| f.contains("HF_TOKEN")),
            "{:?}",
            paper.fix
        );
        let tiny = report.presets.iter().find(|p| p.name == TINY).unwrap();
        assert!(tiny.usable && tiny.weights == WeightsState::NoneNeeded);
        // Nothing was created in the cache.
        assert!(!dir.path().join("hub").exists());
    }

    #[test]
    fn tiny_alone_passes_with_a_timed_smoke_run() {
        let dir = tempfile::tempdir().unwrap();
        let report = run_doctor(&options(dir.path(), &[TINY]), &mut |_| {}).unwrap();
        assert!(report.passed, "{:?}", report.problems);
        let smoke = report.presets[0].smoke.as_ref().unwrap();
        assert!(smoke.ok && smoke.image_ms > 0.0, "{smoke:?}");
        assert_eq!(smoke.grid, Some((8, 8)));
    }

    #[test]
    fn a_named_preset_that_is_missing_fails() {
        let dir = tempfile::tempdir().unwrap();
        let report = run_doctor(&options(dir.path(), &["dinov3-s"]), &mut |_| {}).unwrap();
        assert!(!report.passed);
        assert!(report.problems[0].message.contains("not in the cache"));
        let err = run_doctor(&options(dir.path(), &["nope"]), &mut |_| {}).unwrap_err();
        assert!(err.to_string().contains("anomalydino"), "{err}");
    }
}
