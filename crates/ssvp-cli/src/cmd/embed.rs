//! `ssvp embed` (being written in this session).

#[derive(clap::Args)]
pub struct EmbedArgs {}

pub fn run(_args: EmbedArgs) -> anyhow::Result<()> {
    anyhow::bail!("`ssvp embed` is not built yet")
}
