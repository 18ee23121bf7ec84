//! The result files that `ssvp metrics` and `ssvp eval` both write, and how text files are
//! written: through a temporary file and a rename, so an interrupted run never leaves a
//! half-written report in place of a good one.

use std::path::{Path, PathBuf};

use anyhow::Context;
use ssvp_eval::report::EvaluationReport;

/// Where to write an evaluation report besides the terminal table.
#[derive(clap::Args)]
pub struct ReportFiles {
    /// Write the results as JSON (fractions; schema {"categories": {...}, "mean": {...}}).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Write a Markdown table (x100, one decimal).
    #[arg(long)]
    pub markdown: Option<PathBuf>,
    /// Write a CSV table (fractions).
    #[arg(long)]
    pub csv: Option<PathBuf>,
}

impl ReportFiles {
    /// The requested files with their contents.
    pub fn render(&self, report: &EvaluationReport) -> Vec<(PathBuf, String)> {
        [
            (&self.out, report.to_json()),
            (&self.markdown, report.to_markdown()),
            (&self.csv, report.to_csv()),
        ]
        .into_iter()
        .filter_map(|(path, text)| path.clone().map(|p| (p, text)))
        .collect()
    }
}

/// Writes each file (creating missing parent folders) and says so on stderr.
pub fn write_text_files(files: &[(PathBuf, String)]) -> anyhow::Result<()> {
    for (path, text) in files {
        write_text_atomically(path, text)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

fn write_text_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    ssvp_util::fs::write_atomic(path, text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}
