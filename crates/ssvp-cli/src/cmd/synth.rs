//! `ssvp synth` (being written in this session).

#[derive(clap::Args)]
pub struct SynthArgs {}

pub fn run(_args: SynthArgs) -> anyhow::Result<()> {
    anyhow::bail!("`ssvp synth` is not built yet")
}
