use super::Globals;

#[derive(Debug, clap::Args)]
pub struct TrainArgs {}

#[derive(Debug, clap::Args)]
pub struct AutoencoderArgs {}

pub fn run_train(_args: TrainArgs, _g: Globals) -> anyhow::Result<()> {
    anyhow::bail!("`train` is not implemented yet")
}

pub fn run_autoencoder(_args: AutoencoderArgs, _g: Globals) -> anyhow::Result<()> {
    anyhow::bail!("`train-autoencoder` is not implemented yet")
}
