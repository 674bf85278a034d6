//! Fuzz entry points: one function per reader of untrusted input, shared by the cargo-fuzz
//! targets in `fuzz/` and by the stable regression replay in `tests/it/fuzz_regressions.rs`.
//!
//! Each function feeds arbitrary bytes to the same code the CLI runs on a user's file and
//! ignores `Err`: a malformed input must be refused with an error. A panic, an abort, a hang
//! or a huge allocation is the bug the fuzzer looks for. Readers that only take paths get the
//! bytes through a file in a fresh temporary folder (on `/dev/shm` when there is one, so the
//! fuzzer does not wear the disk).
//!
//! | target            | what the bytes are                      | code under test                          |
//! |-------------------|-----------------------------------------|------------------------------------------|
//! | [`nifti`]         | a `.nii` or `.nii.gz` file              | [`read_volume`], then `read_labels`      |
//! | [`dicom_file`]    | one DICOM file (or a `.zip`, by magic)  | [`read_volume`] on the file: header scan, series assembly (multi-frame), pixel decode |
//! | [`dicom_series`]  | up to [`MAX_SERIES_FILES`] DICOM files  | [`read_volume`] on a folder: the same, across files (grouping, sorting, spacing, tilt) |
//! | [`checkpoint`]    | a `.ckpt` (zip + pickle) or `.safetensors` | `Checkpoint::open`, then every tensor read |
//! | [`pipeline_toml`] | pipeline TOML text                      | `Pipeline::from_toml_str` (schema, validation, variants) |
//!
//! The DICOM targets read with `--allow-gaps --allow-tilt`, as `import` can, so that
//! geometry the default refuses still reaches pixel decoding.
//!
//! # Panics the readers catch
//! Some readers run third-party decoders under `catch_unwind`, so that a damaged file is an
//! error rather than a crash. libfuzzer-sys's panic hook aborts on *every* panic, caught or
//! not, which would report those as findings; [`guarded`] replaces it with one that only
//! records the panic, and a panic that escapes a reader is printed (message, location,
//! backtrace with `RUST_BACKTRACE=1`) and re-raised, which libfuzzer-sys turns into an abort
//! and `cargo test` into a failed test.

use crate::io::{read_volume, ReadOptions};
use crate::model::checkpoint::Checkpoint;
use crate::pipeline::config::{Origin, Pipeline};
use std::backtrace::Backtrace;
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, Once};

/// [`dicom_series`] splits its input into files at each occurrence of this marker.
pub const SERIES_SEPARATOR: &[u8] = b"--sdseg-fuzz-next-file--";

/// At most this many files are written for [`dicom_series`]; the last holds the remainder.
pub const MAX_SERIES_FILES: usize = 6;

/// Tensors read per [`checkpoint`] input (the key index itself is always read whole).
const MAX_TENSORS: usize = 64;

/// The last panic seen by the hook [`guarded`] installs: "thread … panicked at …" and its
/// backtrace, symbolized only if the panic escapes.
static LAST_PANIC: Mutex<Option<(String, Backtrace)>> = Mutex::new(None);

fn last_panic() -> std::sync::MutexGuard<'static, Option<(String, Backtrace)>> {
    LAST_PANIC.lock().unwrap_or_else(|p| p.into_inner())
}

/// Run one input through a reader: a panic the reader catches itself is not a finding; one
/// that escapes is printed and re-raised (see the module doc).
fn guarded(f: impl FnOnce()) {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        panic::set_hook(Box::new(|info| {
            let thread = std::thread::current();
            let text = format!("thread '{}' {info}", thread.name().unwrap_or("<unnamed>"));
            *last_panic() = Some((text, Backtrace::capture()));
        }));
    });
    *last_panic() = None;
    if let Err(payload) = panic::catch_unwind(AssertUnwindSafe(f)) {
        if let Some((text, backtrace)) = last_panic().take() {
            eprintln!("{text}\n{backtrace}");
        }
        eprintln!("sdseg_volume::fuzzing: this panic escaped the reader");
        panic::resume_unwind(payload);
    }
}

/// A fresh temporary folder, on `/dev/shm` when it exists (memory, not disk).
fn scratch() -> Option<tempfile::TempDir> {
    let builder = || {
        let mut b = tempfile::Builder::new();
        b.prefix("sdseg-fuzz-");
        b
    };
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = builder().tempdir_in(shm) {
            return Some(d);
        }
    }
    builder().tempdir().ok()
}

/// Write `data` as `name` in a fresh scratch folder; returns the folder (kept alive by the
/// caller) and the file's path.
fn write_scratch(name: &str, data: &[u8]) -> Option<(tempfile::TempDir, PathBuf)> {
    let dir = scratch()?;
    let path = dir.path().join(name);
    std::fs::write(&path, data).ok()?;
    Some((dir, path))
}

fn dicom_options() -> ReadOptions {
    ReadOptions {
        allow_gaps: true,
        allow_tilt: true,
        ..Default::default()
    }
}

/// A NIfTI-1 file, plain or gzipped (the reader sniffs the gzip magic, not the name): read as
/// a volume, and when that works also as a label volume (`--labels`, `eval`).
pub fn nifti(data: &[u8]) {
    guarded(|| nifti_unguarded(data));
}

fn nifti_unguarded(data: &[u8]) {
    let Some((_dir, path)) = write_scratch("input.nii", data) else {
        return;
    };
    if read_volume(&path, &ReadOptions::default()).is_ok() {
        let _ = crate::io::nifti::read_labels(&path);
    }
}

/// One DICOM file given as INPUT: a multi-frame file goes through header scan, series
/// assembly and pixel decode; a single-frame file is refused after the header scan. Input
/// starting with a zip local-file magic is named `.zip` instead and read as a zipped folder.
pub fn dicom_file(data: &[u8]) {
    guarded(|| dicom_file_unguarded(data));
}

fn dicom_file_unguarded(data: &[u8]) {
    let name = if data.starts_with(b"PK\x03\x04") {
        "input.zip"
    } else {
        "input.dcm"
    };
    if let Some((_dir, path)) = write_scratch(name, data) {
        let _ = read_volume(&path, &dicom_options());
    }
}

/// Split a [`dicom_series`] input into its files (at most [`MAX_SERIES_FILES`], the last one
/// keeping any further separators). Empty pieces stay: an empty file is input too.
pub fn split_series(data: &[u8]) -> Vec<&[u8]> {
    let mut files = Vec::new();
    let mut rest = data;
    while files.len() + 1 < MAX_SERIES_FILES {
        match find(rest, SERIES_SEPARATOR) {
            Some(at) => {
                files.push(&rest[..at]);
                rest = &rest[at + SERIES_SEPARATOR.len()..];
            }
            None => break,
        }
    }
    files.push(rest);
    files
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Several DICOM files in one folder given as INPUT (the usual case): the bytes are split at
/// [`SERIES_SEPARATOR`] into `IM0001.dcm`, `IM0002.dcm`, … and the folder is read.
pub fn dicom_series(data: &[u8]) {
    guarded(|| dicom_series_unguarded(data));
}

fn dicom_series_unguarded(data: &[u8]) {
    let Some(dir) = scratch() else { return };
    for (i, bytes) in split_series(data).into_iter().enumerate() {
        if std::fs::write(dir.path().join(format!("IM{:04}.dcm", i + 1)), bytes).is_err() {
            return;
        }
    }
    let _ = read_volume(dir.path(), &dicom_options());
}

/// A weights file (`.safetensors` or a torch zip such as a Lightning `.ckpt`, told apart by
/// content): open it (zip, pickle, tensor records, safetensors header), then read the first
/// tensors in key order (strided gather, dtype and shape checks).
pub fn checkpoint(data: &[u8]) {
    guarded(|| checkpoint_unguarded(data));
}

fn checkpoint_unguarded(data: &[u8]) {
    let Some((_dir, path)) = write_scratch("model.ckpt", data) else {
        return;
    };
    let Ok(ckpt) = Checkpoint::open(&path) else {
        return;
    };
    for key in ckpt.keys().keys().take(MAX_TENSORS) {
        let _ = ckpt.tensor(key);
    }
}

/// Pipeline TOML text, parsed and validated as `--pipeline FILE` does (every variant too);
/// bytes that are not UTF-8 are refused before parsing, as when reading the file.
pub fn pipeline_toml(data: &[u8]) {
    guarded(|| pipeline_toml_unguarded(data));
}

fn pipeline_toml_unguarded(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(p) = Pipeline::from_toml_str(text, Origin::File(PathBuf::from("pipeline.toml"))) {
        let _ = p.summary();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_split() {
        let sep = SERIES_SEPARATOR;
        assert_eq!(split_series(b"abc"), vec![&b"abc"[..]]);
        let two = [&b"a"[..], sep, b"b"].concat();
        assert_eq!(split_series(&two), vec![&b"a"[..], b"b"]);
        let many: Vec<u8> = (0..9)
            .flat_map(|i| [vec![b'0' + i], sep.to_vec()].concat())
            .collect();
        let files = split_series(&many);
        assert_eq!(files.len(), MAX_SERIES_FILES);
        assert_eq!(files[0], b"0");
        assert!(files[MAX_SERIES_FILES - 1].starts_with(b"5"));
    }
}
