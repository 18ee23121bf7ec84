//! `ssvp bundle create | info | verify | unpack`: one file that carries a model (head, bank,
//! calibration, config, backbone weights) to an offline line PC (library:
//! `ssvp_detect::bundle`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use ssvp_detect::bundle::{self, BundleInput, Manifest, MemberStatus};
use ssvp_detect::input::DecodeOptions;
use ssvp_detect::memory::{build_bank, DEFAULT_SET_SIZE};
use ssvp_features::Towers;

use super::detector_args::{BankBuildArgs, FeatureArgs, MemoryArgs, ModelSourceArgs, MutualArgs};

const CREATE_HELP: &str = "\
A bundle is one file: a fixed header, a JSON manifest (every member's path, offset, length and
sha256, the backbones the model was made with, the calibration's settings), then the members:
the run files of --checkpoint (config, backbone identity, state, head tensors; not the optimiser
state), the bank, the calibration, the config and, with --include-weights, the weights of the
towers the model reads (safetensors as they are; a PyTorch .pth/.bin is converted to
safetensors, never unpickled). The parts must belong together: a calibration made for a head
needs its --checkpoint, one made with a bank the bank. Seeded (`tiny`) weights need no file.
`ssvp bundle verify` re-hashes every member; `ssvp bundle unpack` extracts them (verified) into
$SSVP_CACHE (default ~/.cache/ssvp/bundles) under the bundle's digest.";

#[derive(clap::Args)]
pub struct BundleArgs {
    #[command(subcommand)]
    pub command: BundleCommand,
}

#[derive(clap::Subcommand)]
pub enum BundleCommand {
    /// Pack a model into one file.
    #[command(after_help = CREATE_HELP)]
    Create(Box<CreateArgs>),
    /// Print what a bundle holds: members and sizes, backbones, weights, settings.
    Info {
        /// The bundle.
        bundle: PathBuf,
        /// Print the header and manifest as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Re-hash every member: exit 0 when every digest holds, 2 naming the broken members.
    Verify {
        /// The bundle.
        bundle: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Extract a bundle (verified) into the bundle cache and print where its parts lie.
    Unpack {
        /// The bundle.
        bundle: PathBuf,
        /// The cache folder (default: $SSVP_CACHE, else $XDG_CACHE_HOME/ssvp/bundles, else
        /// ~/.cache/ssvp/bundles).
        #[arg(long)]
        cache: Option<PathBuf>,
        /// Print the paths as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
pub struct CreateArgs {
    /// Where to write the bundle (e.g. line3.ssvp).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub source: ModelSourceArgs,
    /// A bank file of `ssvp bank build`.
    #[arg(long, conflicts_with = "normal")]
    pub bank: Option<PathBuf>,
    /// Good reference images (files or directories, repeatable): build a bank from them, as
    /// `ssvp bank build` does, and pack it.
    #[arg(long, value_name = "PATH")]
    pub normal: Vec<PathBuf>,
    /// Use only the first K references (sorted by path).
    #[arg(long, value_name = "K", requires = "normal")]
    pub shots: Option<usize>,
    #[command(flatten)]
    pub features: FeatureArgs,
    #[command(flatten)]
    pub bank_build: BankBuildArgs,
    /// A calibration file of `ssvp calibrate`.
    #[arg(long)]
    pub calibration: Option<PathBuf>,
    /// Pack the backbone weights of the towers the model reads: those its parts record (hub
    /// ids from the Hugging Face cache, local files), or --clip-weights / --dino-weights.
    #[arg(long)]
    pub include_weights: bool,
}

pub fn run(args: BundleArgs) -> anyhow::Result<()> {
    match args.command {
        BundleCommand::Create(args) => create(*args),
        BundleCommand::Info { bundle, json } => info(&bundle, json),
        BundleCommand::Verify { bundle, json } => verify(&bundle, json),
        BundleCommand::Unpack {
            bundle,
            cache,
            json,
        } => unpack(&bundle, cache, json),
    }
}

/// Removes a file when dropped (the bank built for the bundle).
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn create(args: CreateArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.source.bundle.is_none(),
        "bundle create packs files (--checkpoint, --bank, --calibration), not another bundle"
    );
    anyhow::ensure!(
        args.bank_build.mask_background.is_none(),
        "--mask-background is how a bank is scored, not what it holds: calibrate with it (the \
         calibration records it) and pack the calibration"
    );
    let mut input = BundleInput {
        checkpoint: args.source.checkpoint.clone(),
        bank: args.bank.clone(),
        calibration: args.calibration.clone(),
        config: args.source.config.clone(),
        backbones_preset: args.source.backbones.clone(),
        ..BundleInput::default()
    };
    let _scratch = if args.normal.is_empty() {
        None
    } else {
        let scratch = Scratch(ssvp_util::fs::temp_sibling(&args.out)?);
        let identity = build_references(&args, &scratch.0)?;
        input.bank = Some(scratch.0.clone());
        input.identity = Some(identity);
        Some(scratch)
    };
    if args.include_weights {
        let overrides: BTreeMap<String, String> = [
            (bundle::CLIP, &args.source.clip_weights),
            (bundle::DINO, &args.source.dino_weights),
        ]
        .into_iter()
        .filter_map(|(tower, spec)| spec.clone().map(|s| (tower.to_string(), s)))
        .collect();
        input.weights = bundle::weights_to_pack(&input, &overrides)?;
    }
    let manifest = bundle::create(&input, &args.out)?;
    let size = std::fs::metadata(&args.out)?.len();
    let parts: Vec<String> = manifest
        .members
        .iter()
        .map(|m| match &m.tower {
            Some(t) => format!("{} {t}", m.kind.as_str()),
            None => m.kind.as_str().to_string(),
        })
        .fold(Vec::new(), |mut acc, p| {
            if !acc.contains(&p) {
                acc.push(p);
            }
            acc
        });
    eprintln!(
        "{}: {} members ({}), {}, scoring {}",
        args.out.display(),
        manifest.members.len(),
        parts.join(", "),
        human(size),
        manifest.scoring
    );
    for w in manifest.weights.iter().filter(|w| !w.packed) {
        if manifest.backbones.reads(&w.tower) {
            eprintln!(
                "note: {} weights: {}",
                w.tower,
                w.note.as_deref().unwrap_or("not packed")
            );
        }
    }
    Ok(())
}

/// Builds the bank of `--normal` into `out` as `ssvp bank build` does (on the checkpoint's
/// backbones when one is packed), returning the backbones' identity.
fn build_references(
    args: &CreateArgs,
    out: &Path,
) -> anyhow::Result<ssvp_features::BackboneIdentity> {
    let memory = MemoryArgs {
        normal: args.normal.clone(),
        shots: args.shots,
        bank: None,
        mutual: false,
        mutual_options: MutualArgs {
            set_size: DEFAULT_SET_SIZE,
            rscin: None,
        },
        features: args.features.clone(),
        bank_build: args.bank_build.clone(),
    };
    let references = memory.reference_files()?;
    let device = args.source.device.open()?;
    let backbones = match &args.source.checkpoint {
        Some(checkpoint) => {
            ssvp_detect::load::load_run(
                checkpoint,
                args.source.config.as_deref(),
                &args.source.choice(),
                &device,
            )?
            .backbones
        }
        None => {
            let taps = memory.features.taps(false)?;
            ssvp_detect::load::load_backbones(
                args.source.config.as_deref(),
                &args.source.choice(),
                None,
                matches!(taps.towers, Towers::Clip | Towers::Both),
                &device,
            )?
            .0
        }
    };
    let built = build_bank(
        &backbones,
        &references,
        &memory.bank_options(args.source.batch_size, DecodeOptions::default())?,
    )?;
    for (path, err) in &built.skipped {
        eprintln!("warning: reference {} left out: {err}", path.display());
    }
    built
        .bank
        .save(out)
        .with_context(|| format!("writing the bank to {}", out.display()))?;
    Ok(backbones.identity().clone())
}

/// `1.5 MiB`.
fn human(bytes: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < units.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

fn info(path: &Path, json: bool) -> anyhow::Result<()> {
    let (header, manifest, file_len) = Manifest::read_with_header(path)?;
    if json {
        let out = serde_json::json!({
            "path": path,
            "id": header.id(),
            "container_version": header.version,
            "file_len": file_len,
            "expected_len": header.file_len(),
            "manifest": manifest,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let b = &manifest.backbones;
    println!(
        "{}: ssvp bundle, container v{} / manifest v{}, {}, id {}",
        path.display(),
        header.version,
        manifest.format,
        human(file_len),
        header.id()
    );
    if file_len != header.file_len() {
        println!(
            "  warning: the file has {file_len} bytes, its header says {} (ssvp bundle verify)",
            header.file_len()
        );
    }
    println!(
        "written by ssvp {} at {}",
        manifest.ssvp_version, manifest.created
    );
    println!("scoring:    {}", manifest.scoring);
    let named_by = match b.named_by.as_str() {
        "backbones" => "the backbones the bank was built on",
        "checkpoint" => "the checkpoint's identity",
        "made_with" => "the recorded backbone settings",
        "bank" => "the bank",
        "calibration" => "the calibration",
        "config" => "the config",
        "preset" => "the preset",
        other => other,
    };
    println!(
        "backbones:  clip `{}`, dino `{}` (named by {named_by}); the model reads {}",
        b.clip,
        b.dino,
        if b.towers.is_empty() {
            "no tower".to_string()
        } else {
            b.towers.join(" and ")
        }
    );
    if let Some(preset) = &b.preset {
        println!("            preset `{preset}`");
    }
    for (by, digest) in &b.digests {
        println!("            identity {} ({by})", short(digest));
    }
    if let Some(s) = &manifest.settings {
        println!(
            "settings:   class `{}`, map {} px, {}, post-processing {}",
            s.class_name,
            s.map_size,
            match &s.tiling {
                Some(t) => format!("tiles of {} px overlapping {} px", t.size, t.overlap),
                None => "no tiling".to_string(),
            },
            serde_json::to_string(&s.postprocess)?
        );
        if let Some(scorer) = &s.memory {
            println!("            scorer {}", scorer.as_json());
        }
    }
    if let Some(m) = &manifest.model {
        let part = |label: &str, digest: &str| {
            (!digest.is_empty()).then(|| format!("{label} {}", short(digest)))
        };
        let parts: Vec<String> = [part("head", &m.head), part("bank", &m.bank)]
            .into_iter()
            .flatten()
            .collect();
        if !parts.is_empty() {
            println!("calibrated: for {}", parts.join(", "));
        }
    }
    println!("members:");
    let width = manifest
        .members
        .iter()
        .map(|m| m.path.len())
        .max()
        .unwrap_or(0);
    for m in &manifest.members {
        println!(
            "  {:<width$}  {:<11}  {:<4}  {:>10}  sha256 {}",
            m.path,
            m.kind.as_str(),
            m.tower.as_deref().unwrap_or("-"),
            human(m.length),
            short(&m.sha256),
        );
    }
    println!("weights:");
    for w in &manifest.weights {
        let what = if w.packed {
            let mut s = format!(
                "packed in {} (from `{}`)",
                w.dir.as_deref().unwrap_or("?"),
                w.spec
            );
            if let Some(from) = &w.converted_from {
                s.push_str(&format!(", converted from {from} to safetensors"));
            }
            s
        } else {
            format!("`{}` not packed", w.spec)
        };
        match &w.note {
            Some(note) => println!("  {:<4}  {what}: {note}", w.tower),
            None => println!("  {:<4}  {what}", w.tower),
        }
    }
    Ok(())
}

/// The first 12 hex digits of a digest.
fn short(digest: &str) -> &str {
    &digest[..digest.len().min(12)]
}

fn verify(path: &Path, json: bool) -> anyhow::Result<()> {
    let report = bundle::verify(path)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for m in &report.members {
            let status = match &m.status {
                MemberStatus::Ok => "ok",
                MemberStatus::Corrupt { .. } => "CORRUPT",
                MemberStatus::Truncated { .. } => "TRUNCATED",
            };
            println!("{status:<9}  {:>10}  {}", human(m.length), m.path);
        }
        for p in &report.problems {
            println!("PROBLEM    {p}");
        }
    }
    report.ensure_ok()?;
    if !json {
        println!(
            "{}: every digest holds ({} members, id {})",
            path.display(),
            report.members.len(),
            report.id
        );
    }
    Ok(())
}

fn unpack(path: &Path, cache: Option<PathBuf>, json: bool) -> anyhow::Result<()> {
    let root = match cache {
        Some(dir) => dir,
        None => bundle::default_cache_root()?,
    };
    let u = bundle::unpack(path, &root)?;
    let parts = [
        ("checkpoint", &u.checkpoint),
        ("bank", &u.bank),
        ("calibration", &u.calibration),
        ("config", &u.config),
        ("clip_weights", &u.clip_weights),
        ("dino_weights", &u.dino_weights),
    ];
    if json {
        let mut out = serde_json::Map::new();
        out.insert("dir".into(), serde_json::json!(u.dir));
        out.insert("id".into(), serde_json::json!(u.id));
        out.insert("reused".into(), serde_json::json!(u.reused));
        for (name, p) in parts {
            out.insert(name.into(), serde_json::json!(p));
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "{} ({})",
            u.dir.display(),
            if u.reused {
                "already unpacked, digests checked"
            } else {
                "unpacked, digests checked"
            }
        );
        for (name, p) in parts {
            if let Some(p) = p {
                println!("  {name:<12}  {}", p.display());
            }
        }
    }
    Ok(())
}
