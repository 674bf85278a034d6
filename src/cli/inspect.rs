use super::Globals;

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args, _g: Globals) -> anyhow::Result<()> {
    anyhow::bail!("`inspect` is not implemented yet")
}
