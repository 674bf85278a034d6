//! README's main command with nothing but the installed binary: `cargo install` copies only
//! the binary, so the bundled demo model must come from the binary itself, whatever folder the
//! user is in and whether or not the source tree still exists.

use std::path::Path;
use std::process::{Command, Output};

use crate::support::{repo, shipped, tempdir};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Can this user hide a folder in a private mount namespace (`unshare -r -m`)?
fn can_hide_folders() -> bool {
    Command::new("unshare")
        .args(["-r", "-m", "true"])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `bin args…` in `cwd` with a fresh HOME; with `hide`, the source tree is an empty tmpfs.
fn run(bin: &Path, cwd: &Path, home: &Path, hide: Option<&Path>, args: &[&str]) -> Output {
    let mut cmd = match hide {
        Some(tree) => {
            let mut c = Command::new("unshare");
            c.args([
                "-r",
                "-m",
                "sh",
                "-c",
                r#"mount -t tmpfs tmpfs "$0" && exec "$@""#,
            ])
            .arg(tree)
            .arg(bin);
            c
        }
        None => Command::new(bin),
    };
    cmd.args(args)
        .current_dir(cwd)
        .env("HOME", home)
        .env_remove("XDG_DATA_HOME")
        .env_remove("SDSEG_DATA_DIR")
        .output()
        .unwrap()
}

#[test]
fn the_installed_binary_runs_the_demo_from_any_folder_without_the_source_tree() {
    let tree = repo();
    let d = tempdir();
    assert!(
        !d.path().starts_with(tree),
        "the temp folder must lie outside the source tree"
    );
    let bin = d.path().join("bin/sdseg-volume");
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    std::fs::copy(shipped::binary(), &bin).unwrap();
    let work = d.path().join("work");
    copy_dir(&tree.join("testdata/demo-ct"), &work.join("ct"));
    std::fs::copy(
        tree.join("testdata/demo-ct-labels.nii.gz"),
        work.join("gt.nii.gz"),
    )
    .unwrap();
    let home = d.path().join("home");
    std::fs::create_dir_all(&home).unwrap();

    let hide = can_hide_folders().then_some(tree);
    if hide.is_none() {
        eprintln!("note: no `unshare -r -m` here; the source tree stays visible to the run");
    }
    let o = run(
        &bin,
        &work,
        &home,
        hide,
        &["run", "ct", "--out", "labels.nii.gz"],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    if let Some(tree) = hide {
        // The namespace really hid the tree: the same listing inside it is empty.
        let ls = Command::new("unshare")
            .args([
                "-r",
                "-m",
                "sh",
                "-c",
                r#"mount -t tmpfs tmpfs "$0" && ls -A "$0""#,
            ])
            .arg(tree)
            .output()
            .unwrap();
        assert!(ls.status.success() && ls.stdout.is_empty());
    }
    let unpacked = std::fs::read_dir(home.join(".local/share/sdseg-volume"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect::<Vec<_>>();
    assert_eq!(unpacked.len(), 1, "{unpacked:?}");
    assert_eq!(
        std::fs::read(unpacked[0].join("model.safetensors")).unwrap(),
        std::fs::read(tree.join("testdata/demo-model/model.safetensors")).unwrap()
    );

    // The same labels as the binary gives with the source tree in place, and README's score.
    let o = run(
        &bin,
        &work,
        &home,
        None,
        &["run", "ct", "--out", "again.nii.gz"],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        std::fs::read(work.join("labels.nii.gz")).unwrap(),
        std::fs::read(work.join("again.nii.gz")).unwrap()
    );
    let o = run(
        &bin,
        &work,
        &home,
        hide,
        &[
            "eval",
            "--pred",
            "labels.nii.gz",
            "--gt",
            "gt.nii.gz",
            "--pipeline",
            "demo",
        ],
    );
    let report = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(report.contains("| 0.9398 |"), "{report}");
}
