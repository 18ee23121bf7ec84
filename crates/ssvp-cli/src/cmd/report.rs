//! `ssvp report`: one JSONL/CSV/HTML report from the output directories of several
//! `ssvp detect --shard` runs (library: `ssvp_detect::job::merge_runs`).

use std::path::PathBuf;

use ssvp_detect::job::merge_runs;

#[derive(clap::Args)]
pub struct ReportArgs {
    /// Directory of the merged report (its maps and overlays stay in the shards' directories
    /// and are linked relatively).
    #[arg(long)]
    pub out: PathBuf,
    /// Output directories of `ssvp detect` runs of one model (e.g. the shards of a batch).
    #[arg(required = true)]
    pub runs: Vec<PathBuf>,
    /// Title of the HTML report.
    #[arg(long, default_value = "ssvp inspection report")]
    pub title: String,
}

pub fn run(args: ReportArgs) -> anyhow::Result<()> {
    let s = merge_runs(&args.runs, &args.out, &args.title)?;
    eprintln!(
        "merged {} runs into {}: {} images, {} flagged anomalous, {} failed{}",
        s.shards,
        args.out.display(),
        s.records,
        s.anomalous,
        s.failed,
        if s.duplicates > 0 {
            format!(" ({} duplicate paths kept once)", s.duplicates)
        } else {
            String::new()
        }
    );
    Ok(())
}
