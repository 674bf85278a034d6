//! The tools the interoperability tests compare against: a Python interpreter with the
//! reference packages (numpy, scipy, nibabel, pydicom and its pylibjpeg decoders, medpy,
//! highdicom) and dcm2niix. `.ci/run python_venv` installs the pinned versions into `.venv`, and
//! pydicom-seg, which needs older numpy and pydicom, into `.venv-pydicom-seg`. `dciodvfy` comes
//! from the Debian package dicom3tools.
//!
//! A test asks for what it needs with [`require_python`], [`require_dcm2niix`],
//! [`require_pydicom_seg`], [`require_dciodvfy`] or [`require_browser`] (Playwright and
//! Debian's chromium, for the review page). A missing
//! tool fails the test, saying what to do: a green run has checked everything. A run may opt
//! out with `SDSEG_ALLOW_MISSING_TOOLS=1`: the test then returns early (libtest counts it as
//! passed), prints `SKIPPED`, and appends `<test>\t<what is missing>` to
//! [`skipped_tests_file`], which `.ci/run test` empties before the run and counts after it.
//!
//! The interpreter is `$SDSEG_PYTHON`, else the repository's `.venv/bin/python` when it exists,
//! else `python3` on PATH.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Set to `1`, a missing tool skips the test (recorded) instead of failing it.
pub const ALLOW_MISSING_TOOLS: &str = "SDSEG_ALLOW_MISSING_TOOLS";

/// Overrides where skipped tests are recorded (see [`skipped_tests_file`]).
pub const SKIPPED_TESTS_FILE: &str = "SDSEG_SKIPPED_TESTS_FILE";

/// The interpreter the reference scripts run with.
pub fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("SDSEG_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = super::repo().join(".venv/bin/python");
    if venv.is_file() {
        return venv;
    }
    PathBuf::from("python3")
}

/// [`python`] when it imports every one of `modules` (import names: `medpy.metric.binary`,
/// `libjpeg`); `None` when it does not and missing tools are allowed (the skip is recorded).
///
/// # Panics
/// When a module is missing and `SDSEG_ALLOW_MISSING_TOOLS` is not `1`.
pub fn require_python(modules: &[&str]) -> Option<PathBuf> {
    let py = python();
    let import = format!("import {}", modules.join(", "));
    let problem = match Command::new(&py).args(["-c", &import]).output() {
        Ok(o) if o.status.success() => return Some(py),
        Ok(o) => {
            let stderr = String::from_utf8_lossy(&o.stderr);
            let last = stderr.lines().last().unwrap_or("").trim().to_owned();
            format!("`{} -c '{import}'` fails: {last}", py.display())
        }
        Err(e) => format!("cannot start the Python interpreter {}: {e}", py.display()),
    };
    missing_tool(&problem);
    None
}

/// `dcm2niix` beside [`python`] (a venv's `bin/`, where its PyPI wheel installs it), else on
/// PATH; `None` when it is missing and missing tools are allowed (the skip is recorded).
///
/// # Panics
/// When it is missing and `SDSEG_ALLOW_MISSING_TOOLS` is not `1`.
pub fn require_dcm2niix() -> Option<PathBuf> {
    let beside = python()
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(|p| p.join("dcm2niix"))
        .filter(|p| p.exists());
    let dcm2niix = beside.unwrap_or_else(|| PathBuf::from("dcm2niix"));
    // `dcm2niix -v` without a folder prints its version and exits 3.
    let ok = Command::new(&dcm2niix)
        .arg("-v")
        .output()
        .map(|o| !o.stdout.is_empty() || o.status.success())
        .unwrap_or(false);
    if ok {
        return Some(dcm2niix);
    }
    missing_tool(&format!("cannot run `{} -v`", dcm2niix.display()));
    None
}

/// The interpreter of pydicom-seg's own environment: `$SDSEG_PYDICOM_SEG_PYTHON`, else
/// `.venv-pydicom-seg/bin/python` in the repository (`.ci/run python_venv` makes it). pydicom-seg
/// 0.4.1, its last release, needs numpy < 2 and pydicom 2 (it imports a module pydicom 3
/// removed), so it cannot share `.venv`. `None` when it is missing and missing tools are
/// allowed (the skip is recorded).
///
/// # Panics
/// When it is missing and `SDSEG_ALLOW_MISSING_TOOLS` is not `1`.
pub fn require_pydicom_seg() -> Option<PathBuf> {
    let py = std::env::var_os("SDSEG_PYDICOM_SEG_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| super::repo().join(".venv-pydicom-seg/bin/python"));
    let import = "import pydicom_seg, SimpleITK";
    let problem = match Command::new(&py).args(["-c", import]).output() {
        Ok(o) if o.status.success() => return Some(py),
        Ok(o) => {
            let stderr = String::from_utf8_lossy(&o.stderr);
            let last = stderr.lines().last().unwrap_or("").trim().to_owned();
            format!("`{} -c '{import}'` fails: {last}", py.display())
        }
        Err(e) => format!(
            "cannot start pydicom-seg's interpreter {}: {e}",
            py.display()
        ),
    };
    missing_tool(&problem);
    None
}

/// `dciodvfy` (Debian package dicom3tools) on PATH; `None` when it is missing and missing
/// tools are allowed (the skip is recorded).
///
/// # Panics
/// When it is missing and `SDSEG_ALLOW_MISSING_TOOLS` is not `1`.
pub fn require_dciodvfy() -> Option<PathBuf> {
    let dciodvfy = PathBuf::from("dciodvfy");
    // Without arguments it prints its usage and exits non-zero; a start failure means missing.
    match Command::new(&dciodvfy).output() {
        Ok(_) => Some(dciodvfy),
        Err(e) => {
            missing_tool(&format!(
                "cannot run `dciodvfy` ({e}); install the Debian package dicom3tools"
            ));
            None
        }
    }
}

/// Python with Playwright, and Chromium to drive (`$SDSEG_CHROMIUM`, default
/// `/usr/bin/chromium`: Debian's package; Playwright downloads no browser here): what the
/// review page tests open pages with. Returns the interpreter; `None` when either is missing
/// and missing tools are allowed (the skip is recorded).
///
/// # Panics
/// When one is missing and `SDSEG_ALLOW_MISSING_TOOLS` is not `1`.
pub fn require_browser() -> Option<PathBuf> {
    let py = require_python(&["playwright.sync_api"])?;
    let chromium = std::env::var_os("SDSEG_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    let problem = match Command::new(&chromium).arg("--version").output() {
        Ok(o) if o.status.success() => return Some(py),
        Ok(o) => format!(
            "`{} --version` fails: {}",
            chromium.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => format!(
            "cannot run {} ({e}); install the Debian package chromium (or set SDSEG_CHROMIUM)",
            chromium.display()
        ),
    };
    missing_tool(&problem);
    None
}

/// Where skipped tests are recorded: `$SDSEG_SKIPPED_TESTS_FILE`, else
/// `skipped-tests.txt` in Cargo's temporary folder for tests (`target/tmp`).
pub fn skipped_tests_file() -> PathBuf {
    std::env::var_os(SKIPPED_TESTS_FILE)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_TARGET_TMPDIR")).join("skipped-tests.txt"))
}

fn missing_tool(problem: &str) {
    let test = current_test();
    if std::env::var(ALLOW_MISSING_TOOLS).as_deref() != Ok("1") {
        panic!(
            "{test} needs a tool that is missing: {problem}\n\
             Run `.ci/run python_venv` (installs the pinned Python tools and dcm2niix into .venv, \
             where the tests find them; or set SDSEG_PYTHON to an interpreter that has them), \
             or set {ALLOW_MISSING_TOOLS}=1 to skip the tests that need a missing tool."
        );
    }
    eprintln!("SKIPPED {test}: {problem}");
    let file = skipped_tests_file();
    if let Some(dir) = file.parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    // One write of one line per skip: appends from parallel tests do not interleave.
    let line = format!("{test}\t{}\n", problem.replace(['\n', '\t'], " "));
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&file)
        .and_then(|mut f| f.write_all(line.as_bytes()))
        .unwrap_or_else(|e| panic!("record the skipped test in {}: {e}", file.display()));
}

/// The running test's name: libtest runs each test on a thread named after it.
fn current_test() -> String {
    match std::thread::current().name() {
        Some(name) if name != "main" => name.to_owned(),
        _ => "<unnamed test>".to_owned(),
    }
}

/// Run `script` with `py` in `dir` (`python -c`); panics with its stderr when it fails.
pub fn run_python(py: &Path, script: &str, dir: &Path) {
    let out = Command::new(py)
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "python failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
