//! Exit codes and the errors that map to them.
//!
//! Library modules define their own `thiserror` enums (holding path / tag / expected / got) and
//! say whether an error is the user's input (`is_input_error`). The binary walks an
//! `anyhow` chain once, in [`exit_code_for`], to pick the code: 2 for bad usage or input,
//! 3 for a batch with failed cases, 1 for everything else.

use std::error::Error as StdError;

/// Documented process exit codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitCode {
    Ok = 0,
    Internal = 1,
    BadInput = 2,
    Partial = 3,
}

/// A mistake in how the program was called that clap could not catch (conflicting inputs,
/// a bad `--shard`, a pipeline file that does not parse). Always exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Bad input data found by a module that has no richer error type. Always exit code 2.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct InputError {
    pub path: std::path::PathBuf,
    pub message: String,
}

/// Some cases of a batch failed; the others were written. Exit code 3.
#[derive(Debug, thiserror::Error)]
#[error("{failed} of {total} cases failed")]
pub struct PartialFailure {
    pub failed: usize,
    pub total: usize,
}

/// Implemented by every library error enum: is this the user's input (exit 2) or our bug (exit 1)?
pub trait Classify {
    fn is_input_error(&self) -> bool;
}

macro_rules! classify_as {
    ($cause:expr; $($ty:ty),* $(,)?) => {
        $(
            if let Some(e) = $cause.downcast_ref::<$ty>() {
                return Some(if Classify::is_input_error(e) { ExitCode::BadInput } else { ExitCode::Internal });
            }
        )*
    };
}

fn classify(cause: &(dyn StdError + 'static)) -> Option<ExitCode> {
    if cause.is::<UsageError>() || cause.is::<InputError>() {
        return Some(ExitCode::BadInput);
    }
    if let Some(e) = cause.downcast_ref::<crate::io::dicom::DicomError>() {
        return Some(if e.is_input_error() {
            ExitCode::BadInput
        } else {
            ExitCode::Internal
        });
    }
    if let Some(e) = cause.downcast_ref::<crate::io::nifti::NiftiError>() {
        return Some(if e.is_input_error() {
            ExitCode::BadInput
        } else {
            ExitCode::Internal
        });
    }
    if cause.is::<PartialFailure>() {
        return Some(ExitCode::Partial);
    }
    // Every library error type that implements `Classify` is listed here.
    classify_as!(cause; crate::volume::VolumeError, crate::io::ReadError);
    classify_as!(cause; crate::pipeline::PipelineError, crate::pipeline::PreprocessError, crate::pipeline::PostprocessError);
    classify_as!(cause; crate::metrics::MetricsError, crate::eval::EvalError);
    classify_as!(cause; crate::model::checkpoint::ModelError, crate::model::config::ConfigError);
    classify_as!(cause; crate::pipeline::engine::CaseError, crate::pipeline::cases::CasesError, crate::pipeline::shard::ShardError);
    classify_as!(cause; crate::train::TrainError, crate::train::DataError);
    None
}

impl Classify for crate::volume::VolumeError {
    fn is_input_error(&self) -> bool {
        true
    }
}

/// The exit code for an error chain: the first cause that knows its category decides.
pub fn exit_code_for(err: &anyhow::Error) -> ExitCode {
    err.chain().find_map(classify).unwrap_or(ExitCode::Internal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

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
        let e = anyhow::anyhow!("something broke");
        assert_eq!(exit_code_for(&e), ExitCode::Internal);
    }
}
