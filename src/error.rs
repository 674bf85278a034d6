//! Exit codes, and how an error keeps its class on the way to them.
//!
//! Each library boundary owns its `thiserror` type (holding path / tag / expected / got) and
//! says itself, by implementing [`Classify`], whether an error is the user's input (exit 2)
//! or ours (exit 1). The binary works in `anyhow`, which forgets types; so a typed error
//! enters `anyhow` through [`ResultExt::classified`] (or [`classified`]), which wraps it in a
//! [`Classified`] holding its class. [`exit_code_for`] reads the class off the chain without
//! knowing any module's type: a new error type needs no registration here.
//!
//! Two tests keep this honest: `every_error_type_is_classified` (below) fails when a
//! `thiserror` type in `src/` does not implement [`Classify`], and `tests/exit_codes.rs`
//! feeds one bad input per error kind through the binary and checks the code and that the
//! message names the file.

use std::error::Error as StdError;
use std::fmt;

/// Documented process exit codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitCode {
    Ok = 0,
    Internal = 1,
    BadInput = 2,
    Partial = 3,
}

/// Implemented by every library error type: is this the user's input (exit 2) or our bug
/// (exit 1)? The supertraits are what `anyhow` needs to carry the error.
pub trait Classify: StdError + Send + Sync + 'static {
    fn is_input_error(&self) -> bool;
    /// The exit code this error asks for: from [`Self::is_input_error`]; only a batch summary
    /// ([`PartialFailure`]) says otherwise.
    fn exit_code(&self) -> ExitCode {
        if self.is_input_error() {
            ExitCode::BadInput
        } else {
            ExitCode::Internal
        }
    }
}

/// A typed library error inside an `anyhow` chain, with the class it gave itself.
///
/// Transparent: it displays as the error it wraps and has that error's sources, so `{:#}`
/// prints exactly what the bare error would.
pub struct Classified {
    code: ExitCode,
    error: Box<dyn StdError + Send + Sync + 'static>,
}

impl Classified {
    pub fn new<E: Classify>(error: E) -> Classified {
        Classified {
            code: error.exit_code(),
            error: Box::new(error),
        }
    }
    pub fn exit_code(&self) -> ExitCode {
        self.code
    }
    /// The wrapped error, e.g. to downcast it.
    pub fn inner(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &*self.error
    }
}

impl fmt::Debug for Classified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.error, f)
    }
}

impl fmt::Display for Classified {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}

impl StdError for Classified {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.error.source()
    }
}

/// A typed error as an `anyhow` error that keeps its class.
pub fn classified<E: Classify>(error: E) -> anyhow::Error {
    anyhow::Error::new(Classified::new(error))
}

/// The one conversion from a library `Result` into `anyhow` (use it instead of a bare `?`):
/// `read_volume(p, &o).classified().context("reading the input")?`.
pub trait ResultExt<T> {
    fn classified(self) -> anyhow::Result<T>;
}

impl<T, E: Classify> ResultExt<T> for Result<T, E> {
    fn classified(self) -> anyhow::Result<T> {
        self.map_err(classified)
    }
}

/// A mistake in how the program was called that clap could not catch (conflicting inputs,
/// a bad `--shard`, a pipeline file that does not parse). Always exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

impl Classify for UsageError {
    fn is_input_error(&self) -> bool {
        true
    }
}

/// Bad input data found by a module that has no richer error type. Always exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct InputError {
    pub path: std::path::PathBuf,
    pub message: String,
}

impl Classify for InputError {
    fn is_input_error(&self) -> bool {
        true
    }
}

/// Some cases of a batch failed; the others were written. Exit code 3.
#[derive(Debug, thiserror::Error)]
#[error("{failed} of {total} cases failed")]
pub struct PartialFailure {
    pub failed: usize,
    pub total: usize,
}

impl Classify for PartialFailure {
    /// Each failed case was reported with its own class; the batch as a whole exits 3.
    fn is_input_error(&self) -> bool {
        false
    }
    fn exit_code(&self) -> ExitCode {
        ExitCode::Partial
    }
}

/// The exit code of one link of a chain, when that link knows it. `UsageError`, `InputError`
/// and `PartialFailure` are this module's own and may enter `anyhow` bare.
fn exit_code_of(cause: &(dyn StdError + 'static)) -> Option<ExitCode> {
    if let Some(c) = cause.downcast_ref::<Classified>() {
        return Some(c.exit_code());
    }
    if cause.is::<UsageError>() || cause.is::<InputError>() {
        return Some(ExitCode::BadInput);
    }
    if cause.is::<PartialFailure>() {
        return Some(ExitCode::Partial);
    }
    None
}

/// The exit code for an error chain: the outermost link that knows its class decides; a
/// chain with none (an `anyhow!` message, an io error with context) is internal.
pub fn exit_code_for(err: &anyhow::Error) -> ExitCode {
    err.chain()
        .find_map(exit_code_of)
        .unwrap_or(ExitCode::Internal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;
    use std::path::{Path, PathBuf};

    #[derive(Debug, thiserror::Error)]
    #[error("outer {path}")]
    struct Outer {
        path: String,
        #[source]
        source: std::io::Error,
    }

    impl Classify for Outer {
        fn is_input_error(&self) -> bool {
            true
        }
    }

    #[test]
    fn codes_follow_the_chain() {
        let e: anyhow::Error = Err::<(), _>(UsageError("bad".into()))
            .context("while parsing")
            .unwrap_err();
        assert_eq!(exit_code_for(&e), ExitCode::BadInput);
        let e = anyhow::Error::new(PartialFailure {
            failed: 1,
            total: 3,
        });
        assert_eq!(exit_code_for(&e), ExitCode::Partial);
        assert_eq!(
            exit_code_for(&classified(PartialFailure {
                failed: 1,
                total: 3
            })),
            ExitCode::Partial
        );
        let e = anyhow::anyhow!("something broke");
        assert_eq!(exit_code_for(&e), ExitCode::Internal);
    }

    #[test]
    fn classified_is_transparent() {
        let bare = Outer {
            path: "a.nii".into(),
            source: std::io::Error::other("disk on fire"),
        };
        let want = format!("{:#}", anyhow::Error::new(bare).context("reading"));
        let e = Err::<(), _>(Outer {
            path: "a.nii".into(),
            source: std::io::Error::other("disk on fire"),
        })
        .classified()
        .context("reading")
        .unwrap_err();
        assert_eq!(format!("{e:#}"), want);
        assert_eq!(want, "reading: outer a.nii: disk on fire");
        assert_eq!(exit_code_for(&e), ExitCode::BadInput);
        let c = e.downcast_ref::<Classified>().unwrap();
        assert!(c.inner().is::<Outer>());
    }

    /// Every `thiserror` type in `src/` implements [`Classify`], so it can enter `anyhow`
    /// through [`ResultExt::classified`] and exit with its own code.
    #[test]
    fn every_error_type_is_classified() {
        fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    rust_files(&p, out);
                } else if p.extension().is_some_and(|x| x == "rs") {
                    out.push(p);
                }
            }
        }
        let mut files = Vec::new();
        rust_files(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut files,
        );
        let sources: Vec<(PathBuf, String)> = files
            .into_iter()
            .map(|p| {
                let text = std::fs::read_to_string(&p).unwrap();
                (p, text)
            })
            .collect();
        let all = sources
            .iter()
            .map(|(_, t)| t.as_str())
            .collect::<Vec<_>>()
            .join("\n");
        let mut types = Vec::new();
        let mut missing = Vec::new();
        for (path, text) in &sources {
            let mut lines = text.lines();
            while let Some(line) = lines.next() {
                let l = line.trim();
                // `thiserror::Error`, or `Error` after `use thiserror::Error`.
                let derives_error = l.strip_prefix("#[derive(").is_some_and(|list| {
                    list.trim_end_matches(")]")
                        .split(',')
                        .any(|d| matches!(d.trim(), "thiserror::Error" | "Error"))
                });
                if !derives_error {
                    continue;
                }
                // The item follows its attributes.
                let item = lines
                    .by_ref()
                    .map(str::trim)
                    .find(|l| !l.starts_with("#[") && !l.starts_with("//"))
                    .unwrap_or_default();
                let name = item
                    .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .skip_while(|w| !matches!(*w, "struct" | "enum"))
                    .nth(1)
                    .unwrap_or_default()
                    .to_string();
                assert!(!name.is_empty(), "{}: cannot name `{item}`", path.display());
                if !all.contains(&format!("Classify for {name} ")) {
                    missing.push(format!("{name} ({})", path.display()));
                }
                types.push(name);
            }
        }
        assert!(types.len() >= 20, "found only {types:?}");
        assert!(
            missing.is_empty(),
            "error types without `impl Classify`: {missing:?}"
        );
    }
}
