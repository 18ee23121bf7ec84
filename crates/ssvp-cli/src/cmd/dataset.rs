//! `ssvp dataset`: list and check a dataset tree, write its meta.json index
//! (library: `ssvp_eval::datasets`).

use std::path::PathBuf;

use anyhow::Context;
use ssvp_eval::datasets::{self, CheckLevel, Layout, LoadOptions, OnProblem, Split};

const DATASET_HELP: &str = "\
Without --check only the files' headers are read: every listed image and mask exists, its
header parses (format and size) and each mask has its image's size. The pixels are not decoded,
so a file cut short or corrupt after its header passes; --check decodes every image and mask
(slower: a full read of the dataset) and also requires each anomalous sample's mask to mark at
least one pixel.";

#[derive(clap::Args)]
#[command(after_help = DATASET_HELP)]
pub struct DatasetArgs {
    /// Dataset root (for a meta.json index: its folder or the file itself).
    #[arg(long)]
    pub root: PathBuf,
    /// Layout: auto, mvtec, visa, btad, mpdd, ksdd2, rsdd, dagm-raw, dagm, sdd, dtd-synthetic,
    /// meta-json, folder.
    #[arg(long, default_value = "auto")]
    pub layout: String,
    /// Split to list: test (normal and anomalous) or train (normal training images).
    #[arg(long, default_value = "test")]
    pub split: String,
    /// Only these categories (comma-separated folder names).
    #[arg(long, value_delimiter = ',')]
    pub categories: Vec<String>,
    /// Decode every image and mask fully and require non-empty anomaly masks. Without it only
    /// headers are read (existence, format, sizes): truncated pixel data is not found.
    #[arg(long)]
    pub check: bool,
    /// Drop problematic samples (listed as warnings) instead of failing.
    #[arg(long)]
    pub skip_bad: bool,
    /// Write the meta.json index (train and test splits, paths relative to the root) here.
    #[arg(long)]
    pub write_meta_json: Option<PathBuf>,
}

pub fn run(args: DatasetArgs) -> anyhow::Result<()> {
    let layout = match args.layout.to_ascii_lowercase().as_str() {
        "auto" => None,
        other => Some(other.parse::<Layout>().map_err(anyhow::Error::msg)?),
    };
    let split: Split = args.split.parse().map_err(anyhow::Error::msg)?;
    let opts = LoadOptions {
        layout,
        split: Some(split),
        categories: args.categories.clone(),
        on_problem: if args.skip_bad {
            OnProblem::Skip
        } else {
            OnProblem::Fail
        },
        check: if args.check {
            CheckLevel::Full
        } else {
            CheckLevel::Headers
        },
    };
    let loaded = datasets::load(&args.root, &opts)
        .with_context(|| format!("reading dataset {}", args.root.display()))?;
    let ds = &loaded.dataset;
    println!(
        "{} ({} layout, {} split)",
        ds.root.display(),
        ds.layout,
        ds.split.as_str()
    );
    println!(
        "{:<24} {:<24} {:>7} {:>9}",
        "category", "prompt name", "normal", "anomalous"
    );
    for cat in &ds.categories {
        let c = cat.counts();
        println!(
            "{:<24} {:<24} {:>7} {:>9}",
            cat.name, cat.prompt_name, c.normal, c.anomalous
        );
    }
    let total = ds.counts();
    println!(
        "{:<24} {:<24} {:>7} {:>9}",
        "total", "", total.normal, total.anomalous
    );
    if !args.check {
        eprintln!(
            "checked the headers only (files exist, formats and sizes); --check decodes every \
             image and mask"
        );
    }
    if !loaded.skipped.is_empty() {
        eprintln!("warning: skipped {} problem(s):", loaded.skipped.len());
        for p in &loaded.skipped {
            eprintln!("  {p}");
        }
    }

    if let Some(path) = &args.write_meta_json {
        // The index holds both splits: read the other one with the same options.
        let other_split = match split {
            Split::Test => Split::Train,
            Split::Train => Split::Test,
        };
        let other_opts = LoadOptions {
            layout: Some(ds.layout),
            split: Some(other_split),
            ..opts.clone()
        };
        let other = match datasets::load(&args.root, &other_opts) {
            Ok(l) => {
                for p in &l.skipped {
                    eprintln!("warning: {} split: skipped {p}", other_split.as_str());
                }
                Some(l.dataset)
            }
            // A tree without training images still gets an index of its test split.
            Err(e) if other_split == Split::Train && no_train_images(&e) => {
                eprintln!("warning: no train split found; writing an empty train index");
                None
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("reading the {} split for meta.json", other_split.as_str())
                })
            }
        };
        let (train, test) = match split {
            Split::Test => (other.as_ref(), Some(ds)),
            Split::Train => (Some(ds), other.as_ref()),
        };
        datasets::write_meta_json(path, train, test)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// Whether loading failed only because the tree has no training images at all.
fn no_train_images(e: &datasets::DatasetError) -> bool {
    match e {
        datasets::DatasetError::Empty { .. } => true,
        datasets::DatasetError::Problems(list) => list
            .0
            .iter()
            .all(|p| p.kind == datasets::ProblemKind::EmptyCategory),
        _ => false,
    }
}
