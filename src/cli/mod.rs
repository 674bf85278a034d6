//! Command-line surface: one clap `Args` struct per subcommand (in its own file), each turned
//! into validated library options before any work starts.

use clap::{Parser, Subcommand};

use crate::io::ReadOptions;

pub mod bench;
pub mod convert;
pub mod eval;
pub mod import;
pub mod inspect;
pub mod phantom;
pub mod reproduce;
pub mod review;
pub mod run;
pub mod slurm;
pub mod stability;
pub mod trace;
pub mod train;

/// Segment CT volumes with SDSeg (Stable Diffusion Segmentation) in one reverse step.
///
/// Exit codes: 0 success, 1 internal error, 2 bad usage or bad input,
/// 3 a batch finished with some cases failed.
#[derive(Debug, Parser)]
#[command(name = "sdseg-volume", version, about, long_about = None)]
pub struct Cli {
    /// Only errors on stderr; no progress bars.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Segment volumes (DICOM series folders or NIfTI files) into NIfTI label volumes.
    Run(Box<run::Args>),
    /// Show what would be read from an input, which series is chosen and why.
    Inspect(inspect::Args),
    /// Write the HU volume exactly as the pipeline sees it, as NIfTI.
    Import(import::Args),
    /// Score predicted label volumes against ground truth (Dice, IoU, HD95, ASSD, NSD).
    Eval(eval::Args),
    /// Reproduce the paper's BTCV / STS-3D tables from a dataset folder.
    Reproduce(reproduce::Args),
    /// Write the review page of a finished run: one self-contained HTML file with the cases'
    /// table and an interactive viewer per case.
    Review(review::Args),
    /// Stability over seeds (the paper's Table 5): PSNR, SSIM, MS-SSIM of soft maps.
    Stability(stability::Args),
    /// Developer parity harness: write every intermediate of single-step inference.
    Trace(trace::Args),
    /// Convert an official Lightning .ckpt to a lean inference .safetensors.
    ConvertCheckpoint(convert::Args),
    /// Single-step throughput per stage (ms per slice, slices/s, peak memory).
    Bench(bench::Args),
    /// Train SDSeg (stage 2) in the official checkpoint layout.
    Train(train::TrainArgs),
    /// Train a KL-f8 autoencoder on 3-channel masks.
    TrainAutoencoder(train::AutoencoderArgs),
    /// Print a ready sbatch job-array script for `run` on a Slurm cluster.
    SlurmScript(Box<slurm::Args>),
    /// Write a synthetic abdomen CT phantom as DICOM or NIfTI (developer tool).
    Phantom(phantom::Args),
}

/// The input options every reading command shares (`inspect`, `import`, `run`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct InputArgs {
    /// Read this DICOM series (SeriesInstanceUID) instead of choosing one.
    #[arg(long, value_name = "UID")]
    pub series: Option<String>,
    /// Accept a DICOM series with missing slices / non-uniform spacing (slices are kept as
    /// they are; the affine uses the median spacing).
    #[arg(long)]
    pub allow_gaps: bool,
    /// Accept a DICOM series with gantry tilt (no resampling; sheared affine).
    #[arg(long)]
    pub allow_tilt: bool,
}

impl InputArgs {
    pub fn read_options(&self) -> ReadOptions {
        ReadOptions {
            series: self.series.clone(),
            allow_gaps: self.allow_gaps,
            allow_tilt: self.allow_tilt,
        }
    }
}

/// Options every command shares, resolved once.
#[derive(Clone, Copy, Debug, Default)]
pub struct Globals {
    pub quiet: bool,
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let g = Globals { quiet: cli.quiet };
    match cli.command {
        Command::Run(a) => run::run(*a, g),
        Command::Inspect(a) => inspect::run(a, g),
        Command::Import(a) => import::run(a, g),
        Command::Eval(a) => eval::run(a, g),
        Command::Reproduce(a) => reproduce::run(a, g),
        Command::Review(a) => review::run(a, g),
        Command::Stability(a) => stability::run(a, g),
        Command::Trace(a) => trace::run(a, g),
        Command::ConvertCheckpoint(a) => convert::run(a, g),
        Command::Bench(a) => bench::run(a, g),
        Command::Train(a) => train::run_train(a, g),
        Command::TrainAutoencoder(a) => train::run_autoencoder(a, g),
        Command::SlurmScript(a) => slurm::run(*a, g),
        Command::Phantom(a) => phantom::run(a, g),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn verify_cli() {
        Cli::command().debug_assert();
    }
}
