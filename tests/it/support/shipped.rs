//! The binary users install. `cargo install --path .` builds the release profile with the
//! default features and the binary's global allocator (jemalloc); the library tests and
//! `CARGO_BIN_EXE_sdseg-volume` use the dev profile, where the test harness and some decoders
//! behave differently (a JPEG 2000 decoder once corrupted jemalloc's heap in the release
//! binary only). Tests of real-world input run this build.
//!
//! `SDSEG_SHIPPED_BIN` names a binary built beforehand (CI builds it once with
//! `cargo build --release --locked`); otherwise the first caller builds it into the same target
//! folder as the tests.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// Path of the release binary, built on first use.
pub fn binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("SDSEG_SHIPPED_BIN") {
            let p = PathBuf::from(p);
            assert!(
                p.is_file(),
                "SDSEG_SHIPPED_BIN={} is not a file",
                p.display()
            );
            return p;
        }
        // target/debug/deps/<test> → target
        let exe = std::env::current_exe().expect("test executable path");
        let target = exe
            .ancestors()
            .nth(3)
            .expect("test executable under target/<profile>/deps")
            .to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--release", "--locked", "--bin", "sdseg-volume"])
            .arg("--target-dir")
            .arg(&target)
            .current_dir(super::repo())
            .status()
            .expect("start cargo to build the release binary");
        assert!(status.success(), "cargo build --release failed");
        let bin = target.join("release").join("sdseg-volume");
        assert!(bin.is_file(), "{} missing after the build", bin.display());
        bin
    })
}
