//! Build script: records the git commit for run reports (`SDSEG_GIT_HASH`, read with
//! `option_env!`). Outside a git checkout (e.g. a crates.io tarball) nothing is set.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if let Some(hash) = git(&["rev-parse", "HEAD"]) {
        println!("cargo:rustc-env=SDSEG_GIT_HASH={hash}");
    }
    // Rebuild when HEAD moves: HEAD itself (branch switches) and the branch's ref (commits),
    // wherever this checkout's git directories are (worktrees keep them apart).
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
    }
    if let (Some(common), Some(head_ref)) = (
        git(&["rev-parse", "--git-common-dir"]),
        git(&["symbolic-ref", "-q", "HEAD"]),
    ) {
        println!("cargo:rerun-if-changed={common}/{head_ref}");
        println!("cargo:rerun-if-changed={common}/packed-refs");
    }
}
