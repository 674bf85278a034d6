//! SIGKILL in the middle of a run, then a rerun: the outputs must be byte-identical to an
//! uninterrupted run, and no output is ever half-written. The threshold test model sleeps per
//! batch (`--test-segmenter threshold:2:MS`) so the kill lands while cases are in flight; the
//! sleep changes no output.

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::run_util::*;
use crate::support::{bin, tempdir};

const CASES: usize = 6;

fn run_args(out: &str, model: &str) -> Vec<String> {
    [
        "run",
        "data",
        "--out",
        out,
        "--batch-size",
        "2",
        "--quiet",
        "--test-segmenter",
        model,
        "--pipeline",
        "btcv",
        "--noise",
        "per-slice",
        "--seed",
        "3",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn kill_9_mid_run_then_rerun_equals_an_uninterrupted_run() {
    let d = tempdir();
    dataset(&d.path().join("data"), CASES);

    let o = run(
        d.path(),
        &run_args("ref", "threshold")
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>(),
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let reference = outputs(&d.path().join("ref"));
    assert_eq!(reference.len(), CASES);

    let mut child = bin()
        .current_dir(d.path())
        .args(run_args("out", "threshold:2:150"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out_dir = d.path().join("out");
    let t0 = Instant::now();
    loop {
        if !outputs(&out_dir).is_empty() {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before the first output appeared");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no output after 120 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let partial = outputs(&out_dir);
    assert!(
        !partial.is_empty() && partial.len() < CASES,
        "kill landed after {} of {CASES} cases; the test needs it mid-run",
        partial.len()
    );
    for (name, bytes) in &partial {
        assert_eq!(
            bytes, &reference[name],
            "{name} differs right after the kill"
        );
    }

    // Without --quiet: the resume note is information, which --quiet leaves out.
    let o = run(
        d.path(),
        &run_args("out", "threshold")
            .iter()
            .map(|s| s.as_str())
            .filter(|s| *s != "--quiet")
            .collect::<Vec<_>>(),
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(stderr(&o).contains(&format!("{} case(s) already have outputs", partial.len())));
    assert_eq!(outputs(&out_dir), reference, "rerun after kill differs");
    let hidden: Vec<String> = std::fs::read_dir(&out_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(
        hidden.is_empty(),
        "temporary files left after the rerun: {hidden:?}"
    );
}
