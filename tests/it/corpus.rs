//! Real-world corpus: every DICOM and NIfTI test file shipped in the pydicom and nibabel
//! packages, and series assembled from them, through `import` of the shipped binary.
//!
//! `tests/it/corpus.py` does the work (its docstring lists the inputs, the references
//! and the outcomes CORRECT, REFUSED, WRONG, CRASH, HANG, RSS); this test finds the
//! interpreter, runs the script with the binary and a work folder, streams its output (one
//! line per input, then tables by outcome and transfer syntax, the refusal reasons and the
//! failures) and fails when the script exits non-zero: an input was WRONG, CRASHed, HUNG or
//! went over the RSS limit.
//!
//! The interpreter (`support::python`) needs numpy, pydicom and nibabel, plus pylibjpeg,
//! pylibjpeg-libjpeg, pylibjpeg-openjpeg and pylibjpeg-rle so that pydicom decodes the
//! compressed files (`.ci/run` pins them); a missing one fails the test unless
//! `SDSEG_ALLOW_MISSING_TOOLS=1`. `SDSEG_CORPUS_OUT=DIR` (new or empty) keeps the work folder:
//! the assembled series, each run's stdout, stderr and output, and `results.json`.

use crate::support::python::require_python;
use crate::support::{repo, shipped, tempdir};

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Import names of the packages the script needs: the references and pydicom's decoder plugins.
const MODULES: &[&str] = &[
    "numpy",
    "pydicom",
    "nibabel",
    "pylibjpeg",
    "libjpeg",
    "openjpeg",
    "rle",
];

#[test]
fn pydicom_and_nibabel_test_files_through_import() {
    let Some(python) = require_python(MODULES) else {
        return;
    };
    let binary = shipped::binary();
    let tmp = tempdir();
    let work = std::env::var_os("SDSEG_CORPUS_OUT")
        .map(PathBuf::from)
        .unwrap_or_else(|| tmp.path().join("work"));
    let script = repo().join("tests/it/corpus.py");
    let mut child = Command::new(&python)
        .arg("-u")
        .arg(&script)
        .arg(binary)
        .arg(&work)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("start {} {}: {e}", python.display(), script.display()));
    let stderr = child.stderr.take().expect("piped stderr");
    let relay = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("{line}");
        }
    });
    let stdout = child.stdout.take().expect("piped stdout");
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        println!("{line}");
    }
    relay.join().expect("stderr relay");
    let status = child.wait().expect("wait for the corpus script");
    assert!(
        status.success(),
        "the corpus script failed ({status}): see FAILURES above (WRONG, CRASH, HANG or RSS \
         inputs) or its error output"
    );
}
