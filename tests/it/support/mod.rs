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
/// `checkpoint.ckpt`, `checkpoint.safetensors`, `case.safetensors`, `config.json`. All but
/// `checkpoint.safetensors` are the files in `testdata/fixtures/<name>` made by the unmodified
/// official PyTorch code (the README.md there says how); the safetensors copy of the same
/// `state_dict` is not committed (it would double the fixtures' size) but written here, once
/// per test process, from the `.ckpt`: every tensor, its key, dtype and bytes as stored.
pub fn fixture(name: &str) -> PathBuf {
    use std::collections::BTreeMap;
    use std::sync::{Mutex, OnceLock};
    static MADE: OnceLock<Mutex<BTreeMap<String, PathBuf>>> = OnceLock::new();
    let mut made = MADE.get_or_init(Default::default).lock().unwrap();
    if let Some(dir) = made.get(name) {
        return dir.clone();
    }
    let committed = testdata("fixtures").join(name);
    // One folder per fixture, rewritten by every run (each file through a temp name and a
    // rename, so concurrent test processes never read a partial file and none piles up).
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("fixtures")
        .join(name);
    std::fs::create_dir_all(&dir).expect("fixture folder");
    for f in [
        "checkpoint.ckpt",
        "case.safetensors",
        "config.json",
        "README.md",
    ] {
        replace_file(&dir.join(f), |tmp| {
            std::fs::copy(committed.join(f), tmp)
                .unwrap_or_else(|e| panic!("{}: {e}", committed.join(f).display()));
        });
    }
    replace_file(&dir.join("checkpoint.safetensors"), |tmp| {
        write_safetensors_copy(&committed.join("checkpoint.ckpt"), tmp)
    });
    made.insert(name.to_string(), dir.clone());
    dir
}

/// `write` fills a temp file beside `path` (named after this process), which then replaces it.
fn replace_file(path: &Path, write: impl FnOnce(&Path)) {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.part", std::process::id()));
    let tmp = PathBuf::from(tmp);
    write(&tmp);
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

/// Every tensor of a torch checkpoint, as stored (key, dtype, shape, bytes), into a
/// `.safetensors` file: what `safetensors.torch.save_file(state_dict)` writes.
fn write_safetensors_copy(ckpt: &Path, out: &Path) {
    let ck = sdseg_volume::model::checkpoint::Checkpoint::open(ckpt).expect("fixture checkpoint");
    let mut tensors = std::collections::HashMap::new();
    for key in ck.keys().keys() {
        let t = ck
            .tensor(key)
            .unwrap_or_else(|e| panic!("{}: {key}: {e}", ckpt.display()));
        tensors.insert(key.clone(), t);
    }
    candle_core::safetensors::save(&tensors, out).expect("write the safetensors copy");
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
