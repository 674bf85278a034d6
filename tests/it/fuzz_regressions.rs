//! Replays the minimized fuzzer findings in `testdata/fuzz-regressions/<target>/` through the
//! same entry points the cargo-fuzz targets call (`sdseg_volume::fuzzing`), on stable, on
//! every `cargo test`. A finding that panics again fails its target's test; one that aborts
//! (or exhausts the address-space bound below) fails the whole test binary.
//! `testdata/fuzz-regressions/README.md` says what each file once triggered.
//!
//! `SDSEG_FUZZ_REPLAY=DIR` replays every file under `DIR/<target>/` as well (a fuzz corpus,
//! or `fuzz/findings`), to check a fix against everything the fuzzer has seen.

use sdseg_volume::fuzzing;
use std::path::{Path, PathBuf};

/// A fuzz target: the function `fuzz/fuzz_targets/<name>.rs` calls.
type Target = (&'static str, fn(&[u8]));

/// The fuzz targets, as named in `fuzz/fuzz_targets/` and the regression folders.
const TARGETS: &[Target] = &[
    ("nifti", fuzzing::nifti),
    ("dicom_file", fuzzing::dicom_file),
    ("dicom_series", fuzzing::dicom_series),
    ("checkpoint", fuzzing::checkpoint),
    ("pipeline_toml", fuzzing::pipeline_toml),
];

/// The address space this test binary may use, like the fuzzers' `-rss_limit_mb`: a reader
/// that allocates gigabytes for a small input fails here instead of swapping the machine.
#[cfg(target_os = "linux")]
const ADDRESS_SPACE_LIMIT: u64 = 4 << 30;

fn regressions_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/fuzz-regressions")
}

/// Lower this process's soft address-space limit to [`ADDRESS_SPACE_LIMIT`] (once).
fn limit_memory() {
    #[cfg(target_os = "linux")]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        ONCE.call_once(|| {
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: get/setrlimit with a valid struct; only the soft limit is lowered.
            unsafe {
                if libc::getrlimit(libc::RLIMIT_AS, &mut lim) == 0
                    && lim.rlim_cur > ADDRESS_SPACE_LIMIT
                {
                    lim.rlim_cur = ADDRESS_SPACE_LIMIT;
                    libc::setrlimit(libc::RLIMIT_AS, &lim);
                }
            }
        });
    }
}

/// Files directly under `dir` (sorted), without README files; none if `dir` is absent.
fn inputs(dir: &Path) -> Vec<PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return vec![];
    };
    let mut files: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| {
            !p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("README"))
        })
        .collect();
    files.sort();
    files
}

fn replay(target: &str) {
    limit_memory();
    let (_, run) = TARGETS.iter().find(|(n, _)| *n == target).unwrap();
    let mut dirs = vec![regressions_root().join(target)];
    if let Some(extra) = std::env::var_os("SDSEG_FUZZ_REPLAY") {
        dirs.push(PathBuf::from(extra).join(target));
    }
    let mut n = 0;
    for dir in dirs {
        for file in inputs(&dir) {
            let data = std::fs::read(&file).unwrap();
            // Printed before the call: when it panics or aborts, the last line names the file.
            eprintln!("{target}: {}", file.display());
            run(&data);
            n += 1;
        }
    }
    eprintln!("{target}: {n} input(s) replayed");
}

#[test]
fn nifti() {
    replay("nifti");
}

#[test]
fn dicom_file() {
    replay("dicom_file");
}

#[test]
fn dicom_series() {
    replay("dicom_series");
}

#[test]
fn checkpoint() {
    replay("checkpoint");
}

#[test]
fn pipeline_toml() {
    replay("pipeline_toml");
}

/// Every folder under testdata/fuzz-regressions/ is a target's (a misspelt one would never
/// be replayed).
#[test]
fn regression_folders_name_targets() {
    for entry in std::fs::read_dir(regressions_root()).unwrap().flatten() {
        if entry.path().is_dir() {
            let name = entry.file_name().to_string_lossy().into_owned();
            assert!(
                TARGETS.iter().any(|(t, _)| *t == name),
                "testdata/fuzz-regressions/{name}: not a fuzz target ({:?})",
                TARGETS.iter().map(|(t, _)| *t).collect::<Vec<_>>()
            );
        }
    }
}
