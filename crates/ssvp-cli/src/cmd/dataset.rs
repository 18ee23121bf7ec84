//! `ssvp dataset` (being written in this session).

#[derive(clap::Args)]
pub struct DatasetArgs {}

pub fn run(_args: DatasetArgs) -> anyhow::Result<()> {
    anyhow::bail!("`ssvp dataset` is not built yet")
}
