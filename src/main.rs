//! The `sdseg-volume` binary: parse, run, map the error to an exit code. Nothing else.

use clap::Parser;
use sdseg_volume::cli::Cli;
use sdseg_volume::error::{exit_code_for, ExitCode};

/// jemalloc keeps freed pages for reuse (10 s decay): the model allocates and frees tensors of
/// tens of MB every layer, which glibc's malloc serves with fresh mmaps (page faults and
/// zeroing were ~30 % of a training step).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match sdseg_volume::cli::run(cli) {
        Ok(()) => std::process::ExitCode::from(ExitCode::Ok as u8),
        Err(err) => {
            let code = exit_code_for(&err);
            eprintln!("error: {err:#}");
            std::process::ExitCode::from(code as u8)
        }
    }
}
