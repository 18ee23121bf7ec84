//! `ssvp metrics` (being written in this session).

#[derive(clap::Args)]
pub struct MetricsArgs {}

pub fn run(_args: MetricsArgs) -> anyhow::Result<()> {
    anyhow::bail!("`ssvp metrics` is not built yet")
}
