//! Training SDSeg (stage 2) and its KL autoencoder (stage 1), writing checkpoints in the
//! official LDM key layout so that `run` — and the official code — load them directly.
//!
//! * [`data`]: labelled volumes (BTCV, STS-3D, generic `images/` + `labels/`, or generated
//!   phantoms) → slices with the pipeline's preprocessing → deterministic batches prepared on
//!   rayon threads ahead of the optimiser.
//! * [`model`]: the trainable SDSeg (`Var`s named like the checkpoint keys), PyTorch default
//!   initialisation, `--init` from official-layout checkpoints, and the loss of
//!   `SDSeg.p_losses`: L1(ε̂, ε) + L1(ẑ0, z0) through the latent-estimation op.
//! * [`optim`]: AdamW with parameter groups and the linear warm-up schedule; [`ema`]: LitEma.
//! * [`session`]: what both trainings share: the run folder and its state (`--resume`), the
//!   training slices, `log.csv`, and the step loop with its log / validation / checkpoint
//!   cadence; [`sdseg`]: `train` (scale factor from the first batch, EMA, validation Dice);
//!   [`autoencoder`]: `train-autoencoder`.
//! * [`checkpoint`]: writing weights (official keys), optimiser state and `config.json`.
//! * [`validate`]: single-step inference on held-out volumes and 3-D Dice.
//!
//! The bundled demo model (`testdata/demo-model/`, pipeline `demo`) was made with these
//! commands on phantoms; [`crate::phantom::looks_like_demo_phantom`] lets `run` warn when
//! that toy model meets anything else.

pub mod autoencoder;
pub mod checkpoint;
pub mod data;
pub mod ema;
pub mod model;
pub mod optim;
pub mod sdseg;
pub mod session;
pub mod validate;

use std::path::PathBuf;

pub use data::{DataError, DataSource};
pub use sdseg::{train_sdseg, SdsegTrainOptions, SdsegTrainSummary};

/// Errors of training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Model(#[from] crate::model::checkpoint::ModelError),
    #[error(transparent)]
    Postprocess(#[from] crate::pipeline::PostprocessError),
    #[error("--init {path}: {message}")]
    Init { path: PathBuf, message: String },
    #[error("cannot resume the run in {run_dir}: {message}")]
    Resume { run_dir: PathBuf, message: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Usage(String),
    #[error("training diverged at step {step}: loss is {loss}")]
    Diverged { step: u64, loss: f32 },
    #[error("tensor error: {0}")]
    Candle(#[from] candle_core::Error),
    #[error("internal error: {0}")]
    Internal(String),
}

impl crate::error::Classify for TrainError {
    fn is_input_error(&self) -> bool {
        match self {
            TrainError::Data(e) => crate::error::Classify::is_input_error(e),
            TrainError::Model(e) => crate::error::Classify::is_input_error(e),
            TrainError::Postprocess(e) => crate::error::Classify::is_input_error(e),
            TrainError::Init { .. } | TrainError::Resume { .. } | TrainError::Usage(_) => true,
            TrainError::Write { .. }
            | TrainError::Diverged { .. }
            | TrainError::Candle(_)
            | TrainError::Internal(_) => false,
        }
    }
}
