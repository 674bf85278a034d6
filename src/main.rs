//! The `sdseg-volume` binary: parse, run, map the error to an exit code. Nothing else.

// `deny`, not `forbid`: the one exception, jemalloc's configuration symbol below, says why.
#![deny(unsafe_code)]

use clap::Parser;
use sdseg_volume::cli::Cli;
use sdseg_volume::error::{exit_code_for, ExitCode};

/// jemalloc keeps freed pages for reuse: the model allocates and frees tensors of tens of MB
/// every layer, which glibc's malloc serves with fresh mmaps (page faults and zeroing were
/// ~30 % of a training step).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc options (its `MALLOC_CONF`, overridable with `_RJEM_MALLOC_CONF`): freed pages are
/// never handed back (no decay) and arenas use transparent huge pages. Even with jemalloc's
/// default 10 s decay, a full-size bf16 batch-4 bench took 9 M page faults (~20 % of its time);
/// with these, 4 K, and 1.52 → 1.03 s per slice. The cost: the resident set stays at its peak
/// until exit, which for a one-volume run is the peak anyway.
///
/// Exporting a symbol by name is `unsafe_code` (two definitions of one name would be a link-time
/// conflict Rust cannot check): `_rjem_malloc_conf` is the hook tikv-jemalloc-sys documents for
/// this, only the binary defines it, and jemalloc reads it once, as a NUL-terminated string.
#[cfg(all(not(target_env = "msvc"), not(target_os = "macos")))]
#[allow(non_upper_case_globals, unsafe_code)]
#[unsafe(export_name = "_rjem_malloc_conf")]
pub static malloc_conf: &[u8] =
    b"dirty_decay_ms:-1,muzzy_decay_ms:-1,thp:always,metadata_thp:always\0";

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
