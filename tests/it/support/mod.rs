//! Helpers shared by the integration tests: where the repository's files are, the binary
//! under test, temporary folders, and (in submodules) the shipped release binary, the Python
//! tools and the `run` test inputs.

pub mod python;
pub mod run_util;
pub mod shipped;
pub mod volume;

use std::path::{Path, PathBuf};
use std::process::Command;

/// The official fixture with one foreground class (`testdata/fixtures/tiny-binary`).
pub const TINY_BINARY: &str = "tiny-binary";
/// The official fixture with several classes (`testdata/fixtures/tiny-multiclass`).
pub const TINY_MULTICLASS: &str = "tiny-multiclass";

/// The repository root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `rel` under `testdata/`.
pub fn testdata(rel: &str) -> PathBuf {
    repo().join("testdata").join(rel)
}

/// The folder of an official fixture ([`TINY_BINARY`], [`TINY_MULTICLASS`]):
/// `checkpoint.ckpt`, `checkpoint.safetensors`, `case.safetensors`, `config.json`, made by the
/// unmodified official PyTorch code (the README.md beside them says how).
pub fn fixture(name: &str) -> PathBuf {
    testdata("fixtures").join(name)
}

/// The debug `sdseg-volume` binary Cargo built for these tests.
pub fn bin_path() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_sdseg-volume"))
}

/// A command running [`bin_path`].
pub fn bin() -> Command {
    Command::new(bin_path())
}

/// A fresh temporary folder, removed when dropped.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("sdseg-test-")
        .tempdir()
        .expect("create a temporary folder")
}
