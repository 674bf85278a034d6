//! Replays the minimized fuzzer findings in `testdata/fuzz-regressions/<target>/` through the
//! same entry points the cargo-fuzz targets call (`sdseg_volume::fuzzing`), on stable, on
//! every `cargo test`. A finding that panics, aborts or exhausts the address-space bound below
//! again fails its target's test. `testdata/fuzz-regressions/README.md` says what each file
//! once triggered.
//!
//! Each target replays in a child process (this test binary again, running just that test):
//! the address-space bound and the panic hook `sdseg_volume::fuzzing` installs are
//! process-wide, and must not reach the other tests of this binary; an abort then fails one
//! test, not the whole binary.
//!
//! `SDSEG_FUZZ_REPLAY=DIR` replays every file under `DIR/<target>/` as well (a fuzz corpus,
//! or `fuzz/findings`), to check a fix against everything the fuzzer has seen.

use sdseg_volume::fuzzing;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::testdata;

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

/// The address space a replaying child may use, like the fuzzers' `-rss_limit_mb`: a reader
/// that allocates gigabytes for a small input fails here instead of swapping the machine.
#[cfg(target_os = "linux")]
const ADDRESS_SPACE_LIMIT: u64 = 4 << 30;

/// Set in the child process that replays one target.
const CHILD: &str = "SDSEG_FUZZ_REPLAY_CHILD";

fn regressions_root() -> PathBuf {
    testdata("fuzz-regressions")
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

/// In the test process: run this test again in a child that replays `target`, and fail with
/// its output unless it replayed everything. In the child: replay.
fn replay(target: &str) {
    if std::env::var_os(CHILD).is_some() {
        replay_here(target);
        return;
    }
    // The test's name as libtest knows it: the module path without the crate name.
    let module = module_path!().split_once("::").map_or("", |(_, m)| m);
    let test = format!("{module}::{target}");
    let out = Command::new(std::env::current_exe().expect("test executable path"))
        .args([test.as_str(), "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .expect("start the test binary again");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "replaying {target} failed ({}):\n{stderr}\n{stdout}",
        out.status
    );
    // A filter that matched no test would pass silently: the child must have replayed.
    let done = format!("{target}: ");
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with(&done) && l.ends_with(" input(s) replayed")),
        "the child did not replay {target}:\n{stderr}\n{stdout}"
    );
    eprint!("{stderr}");
}

fn replay_here(target: &str) {
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
