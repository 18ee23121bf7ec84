//! `ssvp fetch`: a backbones preset's weights downloaded into the Hugging Face cache, so that a
//! line PC runs offline afterwards (library: `ssvp_backbones::weights::fetch`).

use std::io::IsTerminal;

use anyhow::bail;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use ssvp_backbones::weights::fetch::{
    fetch_repo, human_bytes, known_gated, split_revision, tower_files, FetchProgress, FetchedFile,
    FileOutcome, Verify,
};
use ssvp_backbones::weights::HubSettings;
use ssvp_backbones::ErrorKind;
use ssvp_features::presets::{self, NAMES};
use ssvp_features::TINY;

const FETCH_HELP: &str = "\
Downloads, for each tower of the preset, the files its loader reads (model.safetensors, or a
sharded index and its shards, and config.json) into the Hugging Face cache: HF_HUB_CACHE, else
HF_HOME/hub, else ~/.cache/huggingface/hub. Every ssvp command then finds them there, also with
HF_HUB_OFFLINE=1; so does Python's huggingface_hub.

A download that breaks off resumes where it stopped when the command is run again. Each weights
file's SHA-256 is checked against the hub's before it is kept. The DINOv3 presets (paper,
dinov3-s, dinov3-b) are gated: accept the licence on the repository's hub page with your
account, then `export HF_TOKEN=hf_...` (a read token). HF_ENDPOINT points at a mirror.

Exit status: 0 when every file is in the cache, 2 otherwise (offline, gated, no network, a
digest mismatch, a full disk), with the reason. `ssvp doctor` then checks that the preset runs.";

#[derive(clap::Args)]
#[command(after_help = FETCH_HELP)]
pub struct FetchArgs {
    /// Presets whose weights to download: paper, anomalydino, dinov2-b, dinov3-s, dinov3-b
    /// (tiny needs none).
    #[arg(value_name = "PRESET", value_parser = clap::builder::PossibleValuesParser::new(NAMES))]
    pub presets: Vec<String>,
    /// Every preset with weights.
    #[arg(long, conflicts_with = "presets")]
    pub all: bool,
    /// Re-hash the files already in the cache against the hub's SHA-256 and download those that
    /// differ again (reads every byte; for a cache copied from elsewhere or a failing smoke
    /// run).
    #[arg(long)]
    pub verify: bool,
}

pub fn run(args: FetchArgs) -> anyhow::Result<()> {
    let names: Vec<String> = if args.all {
        NAMES.iter().map(|n| n.to_string()).collect()
    } else if args.presets.is_empty() {
        let list: Vec<String> = presets::all()
            .iter()
            .map(|p| format!("  {:<12} {}", p.name, p.summary))
            .collect();
        bail!(
            "name the preset(s) to fetch, or --all:\n{}",
            list.join("\n")
        );
    } else {
        let mut names: Vec<String> = Vec::new();
        for name in &args.presets {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        names
    };
    let settings = HubSettings::from_env();
    let verify = if args.verify {
        Verify::Digests
    } else {
        Verify::Sizes
    };

    // Each repository once, in the order the presets name them.
    let mut repos: Vec<(String, &'static str, Vec<String>)> = Vec::new();
    for name in &names {
        let preset = presets::preset(name)?;
        let hub = preset.hub_repos();
        if hub.is_empty() {
            println!(
                "{name}: nothing to fetch: its towers are built from seeds, with no weights files"
            );
            continue;
        }
        for (tower, spec) in hub {
            match repos.iter_mut().find(|(r, _, _)| *r == spec) {
                Some((_, _, users)) => users.push(name.clone()),
                None => repos.push((spec, tower, vec![name.clone()])),
            }
        }
    }
    if repos.is_empty() {
        return Ok(());
    }
    println!("cache: {}", settings.cache_dir.display());

    let mut failures = Vec::new();
    for (spec, tower, users) in &repos {
        let (repo, revision) = split_revision(spec);
        let gated = if known_gated(repo) { ", gated" } else { "" };
        println!("{spec} ({tower} of {}{gated})", users.join(", "));
        let mut progress = Bars::new();
        match fetch_repo(
            repo,
            revision,
            tower_files(tower),
            &settings,
            verify,
            &mut progress,
        ) {
            Ok(done) => {
                let got = done.downloaded_bytes();
                println!(
                    "  done: {} in {} files, {} downloaded, commit {}",
                    human_bytes(done.total_bytes()),
                    done.files.len(),
                    human_bytes(got),
                    &done.commit[..done.commit.len().min(12)]
                );
            }
            Err(err) => {
                progress.abandon();
                let text = ssvp_util::error::message_chain(&err);
                // Offline or without a network, the other repositories fail the same way.
                if matches!(err.kind(), ErrorKind::Offline | ErrorKind::Network) {
                    bail!("{text}");
                }
                if repos.len() > 1 {
                    println!("  failed: {text}");
                }
                failures.push((spec.clone(), text));
            }
        }
    }
    match failures.len() {
        0 => {
            let with: Vec<&str> = names
                .iter()
                .filter(|n| n.as_str() != TINY && !args.all)
                .map(String::as_str)
                .collect();
            println!(
                "all weights are in the cache; check them with `ssvp doctor{}{}`",
                if with.is_empty() { "" } else { " " },
                with.join(" ")
            );
            Ok(())
        }
        1 if repos.len() == 1 => bail!("{}", failures.remove(0).1),
        n => bail!(
            "{n} of {} repositories could not be fetched (reasons above): {}",
            repos.len(),
            failures
                .iter()
                .map(|(repo, _)| repo.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// One progress bar per file on a terminal; one line per file otherwise.
struct Bars {
    bar: Option<ProgressBar>,
    terminal: bool,
}

impl Bars {
    fn new() -> Self {
        Self {
            bar: None,
            terminal: std::io::stderr().is_terminal(),
        }
    }

    fn abandon(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.abandon();
        }
    }
}

impl FetchProgress for Bars {
    fn start(&mut self, _repo: &str, file: &str, total: u64, done: u64) {
        self.abandon();
        if !self.terminal {
            if done > 0 {
                eprintln!(
                    "  {file}: resuming at {} of {}",
                    human_bytes(done),
                    human_bytes(total)
                );
            }
            return;
        }
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        bar.set_style(
            ProgressStyle::with_template(
                "  {msg:<28} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_message(file.to_string());
        bar.set_position(done);
        bar.reset_eta();
        self.bar = Some(bar);
    }

    fn advance(&mut self, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        }
    }

    fn finish(&mut self, _repo: &str, file: &FetchedFile) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        let how = match file.outcome {
            FileOutcome::Cached => "already cached".to_string(),
            FileOutcome::Downloaded { resumed_from: 0 } => "downloaded".to_string(),
            FileOutcome::Downloaded { resumed_from } => {
                format!("downloaded (resumed at {})", human_bytes(resumed_from))
            }
        };
        let digest = match (&file.sha256, &file.outcome) {
            (Some(_), FileOutcome::Downloaded { .. }) => ", sha256 ok",
            _ => "",
        };
        println!(
            "  {:<34} {:>10}  {how}{digest}",
            file.name,
            human_bytes(file.size)
        );
    }
}
